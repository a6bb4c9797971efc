//! The `hotsplice` command: thin over the library crates. Ksplice's
//! grammar: `hotsplice [-y|-n] [-v|-q] {user|kernel|all} SUBCOMMAND`.

#[macro_use]
mod output;
mod app;
mod check;
mod daemon;
mod docs;
mod fleet;
mod journal;
mod kernel;
mod terminate;
mod user;

use anyhow::{Context as _, Result};
use clap::{Args, Parser, Subcommand};
use output::esc;
use std::path::{Path, PathBuf};

#[derive(Parser)]
#[command(
    name = "hotsplice",
    version,
    about = "Live patching of running processes, without restarts"
)]
pub struct Cli {
    /// More output (repeat for debug logs).
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    verbose: u8,
    /// Only errors.
    #[arg(short, long, global = true)]
    quiet: bool,
    /// Answer yes: act without asking.
    #[arg(short = 'y', long = "yes", global = true)]
    yes: bool,
    /// Answer no: show what would be done, change nothing.
    #[arg(short = 'n', long = "dry-run", global = true, conflicts_with = "yes")]
    dry_run: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Build patches from a source tree and a fix (unified diff).
    Create(Box<CreateArgs>),
    /// Show what a patch file contains.
    Info {
        file: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// Make an Ed25519 key pair for signing patches (NAME.key, NAME.pub).
    Keygen {
        /// Directory to write the key pair into.
        #[arg(short = 'o', long = "output", default_value = ".")]
        dir: PathBuf,
        name: String,
    },
    /// Sign patch files in place with a secret key.
    Sign {
        key: PathBuf,
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Patches of running processes.
    #[command(subcommand)]
    User(user::UserCommand),
    /// Patches of the running kernel.
    #[command(subcommand)]
    Kernel(kernel::KernelCommand),
    /// Kernel and userspace together.
    #[command(subcommand)]
    All(user::AllCommand),
    /// Patch processes started later, as soon as they map a patched object.
    Daemon(daemon::DaemonArgs),
    /// Register this machine with a hotsplice fleet server.
    Register(fleet::RegisterArgs),
    /// Check in with the fleet server and fetch (and with autoinstall or
    /// --apply, install and apply) the patches meant for this machine;
    /// with -n, ask the server read-only and show what would be done.
    Sync(fleet::SyncArgs),
    /// Upload signed patch files to a fleet server.
    Publish(fleet::PublishArgs),
    /// Copy a channel of a fleet server (signed list and patches) into a
    /// directory: a machine's `feed`, or another server's import.
    Mirror(fleet::MirrorArgs),
    /// The periodic job (hotsplice-autoinstall.timer), as Ksplice's cron
    /// job: with `autoinstall = true` in the configuration, sync with the
    /// fleet server if registered, then apply the feed's kernel patches and
    /// the installed patches to every process; with it off, say so only.
    Autoinstall,
    /// Is this machine up to date with its patches? One line and a Nagios
    /// exit status, or a Prometheus textfile.
    Check(check::CheckArgs),
    /// The CVEs fixed live on this machine (kernel, and every process that
    /// maps a fixed object), and where a fix is here but not applied;
    /// --vex: a CSAF 2.0 VEX document for vulnerability scanners.
    Vulns {
        #[arg(long, conflicts_with = "vex")]
        json: bool,
        #[arg(long)]
        vex: bool,
    },
    /// Shell completions generated from this command line definition.
    #[command(hide = true)]
    Completions {
        shell: clap_complete::Shell,
        /// The program name to complete (hotsplice, ksplice).
        #[arg(long, default_value = "hotsplice")]
        name: String,
    },
    /// Man pages (section 8) generated from this command line definition.
    #[command(hide = true)]
    Manpages { dir: PathBuf },
}

#[derive(Args)]
struct CreateArgs {
    /// The fix, a unified diff applied with `patch -p1` at the top of SRC_DIR.
    #[arg(long = "patch")]
    diff: PathBuf,
    /// Build command, run with `sh -c` in SRC_DIR (default: make; with
    /// --source-package: the package's build with Debian's flags).
    #[arg(long)]
    build: Option<String>,
    /// Build from this Debian source package, NAME=VERSION (fetched with
    /// apt-get source, built as Debian built it, kept in $HOTSPLICE_CACHE
    /// for further fixes) instead of SRC_DIR; targets the installed files
    /// with the same build-ids unless --target is given. Sources come from
    /// the machine's `deb` lines as `deb-src`, or from the file
    /// $HOTSPLICE_APT_SOURCES names.
    #[arg(long, value_name = "NAME=VERSION", conflicts_with_all = ["kernel", "src"])]
    source_package: Option<String>,
    /// Build the tree before the fix in DIR — the path the installed files
    /// were built at, so they come out the same — and keep it there: a
    /// further fix of the same SRC_DIR then compiles only what it touches.
    /// One create at a time uses a prepared tree (a `.NAME.hotsplice-lock`
    /// beside it); another waits, says so, and stops waiting on SIGTERM.
    #[arg(long, value_name = "DIR", conflicts_with_all = ["kernel", "source_package"])]
    prepared: Option<PathBuf>,
    /// Installed executable or library the patch is for (repeatable).
    #[arg(long = "target")]
    targets: Vec<PathBuf>,
    /// Where to write patch files.
    #[arg(short = 'o', long = "output", default_value = ".")]
    out: PathBuf,
    /// Description stored in the patch (e.g. the CVE it fixes).
    #[arg(long)]
    description: Option<String>,
    /// Level among patches for the same build (a higher one replaces a lower).
    #[arg(long, default_value_t = 1)]
    level: u32,
    /// Sign the patches with this secret key.
    #[arg(long)]
    sign: Option<PathBuf>,
    /// Keep the scratch build trees.
    #[arg(long)]
    keep_work: bool,
    #[arg(long)]
    json: bool,
    /// Build a kernel livepatch module; SRC_DIR is the kernel source tree.
    #[arg(long)]
    kernel: bool,
    /// Kernel configuration (default: /boot/config-$(uname -r)).
    #[arg(long, requires = "kernel")]
    config: Option<PathBuf>,
    /// System.map or a copy of /proc/kallsyms of the target kernel (default: /proc/kallsyms).
    #[arg(long, requires = "kernel")]
    system_map: Option<PathBuf>,
    /// Modules directory of the target kernel, whose .ko symbol tables give
    /// the positions of module symbols (default: /lib/modules/RELEASE if it exists).
    #[arg(long, requires = "kernel")]
    modules: Option<PathBuf>,
    /// Headers (build) directory of the target kernel (default: /lib/modules/$(uname -r)/build).
    #[arg(long, requires = "kernel")]
    kdir: Option<PathBuf>,
    /// GNU build-id of the target kernel (default: the running kernel's).
    #[arg(long, requires = "kernel")]
    build_id: Option<String>,
    /// Release of the target kernel (default: the running kernel's).
    #[arg(long, requires = "kernel")]
    release: Option<String>,
    /// Release the kernel reports once patched (default: RELEASE.hs-ID).
    #[arg(long, requires = "kernel")]
    effective: Option<String>,
    /// The source tree the running binaries were built from.
    #[arg(required_unless_present = "source_package")]
    src: Option<PathBuf>,
}

fn main() {
    output::install_panic_hook();
    let mut args = std::env::args();
    let argv0 = args.next().unwrap_or_default();
    if hotsplice_create::wrapper::invoked_as_wrapper(&argv0) {
        hotsplice_create::wrapper::wrapper_main(&argv0, args.collect());
    }
    // Before any work, the uptrack-* names included.
    terminate::install();
    if let Some(code) = kernel::uptrack_main(&argv0) {
        std::process::exit(code);
    }
    let name = program_name(&argv0);
    let all_args: Vec<String> = std::env::args().collect();
    if let Some(code) = kernel::kernel_uname_main(name, &all_args) {
        std::process::exit(code);
    }
    let cli = parse_cli(name);
    let level = match (cli.quiet, cli.verbose) {
        (true, _) => "error",
        (_, 0) => "warn",
        (_, 1) => "info",
        _ => "debug",
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("HOTSPLICE_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level)),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    if matches!(
        cli.command,
        Command::Check(_) | Command::Completions { .. } | Command::Manpages { .. }
    ) {
        run_direct(cli, name);
    }
    let ok = match run(cli) {
        Ok(ok) => ok,
        Err(e) => {
            show_error(name, &e);
            false
        }
    };
    terminate::exit_if_cut_short(!ok);
    // Output that could not be written (other than to a closed pipe, which
    // just ends it) fails the command: see docs/exit-codes.md.
    if !ok || output::failure().is_some() {
        std::process::exit(1);
    }
}

/// The commands that exit with a status of their own (check) or need no
/// agent (completions, man pages).
fn run_direct(cli: Cli, name: &'static str) -> ! {
    match cli.command {
        Command::Check(a) => {
            let code = match app::App::new(cli.quiet, cli.verbose, cli.yes, cli.dry_run) {
                Ok(ctx) => check::run(&ctx, a),
                Err(e) => {
                    outln!(
                        "HOTSPLICE UNKNOWN - {}",
                        esc(&hotsplice_agent::links(e.as_ref()).join(": "))
                    );
                    3
                }
            };
            std::process::exit(code);
        }
        Command::Completions { shell, name } => {
            let name = if name == "ksplice" {
                "ksplice"
            } else {
                "hotsplice"
            };
            clap_complete::generate(
                shell,
                &mut docs::command(name),
                name,
                &mut std::io::stdout(),
            );
            std::process::exit(0);
        }
        Command::Manpages { dir } => match docs::manpages(&dir) {
            Ok(files) => {
                for f in files {
                    outln!("{}", f.display());
                }
                std::process::exit(0);
            }
            Err(e) => {
                show_error(name, &e);
                std::process::exit(1);
            }
        },
        _ => unreachable!("only check, completions and manpages"),
    }
}

/// The name the command was started as: `ksplice` (Ksplice's Enhanced
/// Client grammar, the same commands) or `hotsplice` for anything else.
fn program_name(argv0: &str) -> &'static str {
    match Path::new(argv0).file_name().and_then(|n| n.to_str()) {
        Some("ksplice") => "ksplice",
        _ => "hotsplice",
    }
}

/// The command line, parsed under the name the command was started as, so
/// that usage and `--help` speak of `ksplice` when it was run as `ksplice`.
fn parse_cli(name: &'static str) -> Cli {
    use clap::FromArgMatches;
    let matches = docs::command(name).get_matches();
    Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit())
}

/// An error as cargo shows one: `NAME: error: what`, then a `Caused by:`
/// line for each cause, none said twice.
pub fn show_error(name: &str, e: &anyhow::Error) {
    // Multi-line messages (a kernel transition report) keep their lines;
    // `errln!` escapes every other control character.
    let links = hotsplice_agent::links(e.as_ref());
    let mut it = links.iter();
    errln!(
        "{name}: error: {}",
        it.next().map_or("(no message)", |l| l.as_str())
    );
    let rest: Vec<_> = it.collect();
    if !rest.is_empty() {
        errln!("Caused by:");
        for l in rest {
            errln!("    {l}");
        }
    }
}

fn run(cli: Cli) -> Result<bool> {
    let ctx = app::App::new(cli.quiet, cli.verbose, cli.yes, cli.dry_run)?;
    match cli.command {
        Command::Create(a) => create(&ctx, *a),
        Command::Info { file, json } => info(&ctx, &file, json),
        Command::Vulns { json, vex } => vulns(&ctx, json, vex),
        Command::Keygen { dir, name } => {
            let key = hotsplice_trust::SecretKey::generate()?;
            hotsplice_trust::write_key_pair(&dir, &name, &key)?;
            outln!(
                "{}\n{}\nkey id {}: copy {name}.pub into {} on machines that should trust it",
                dir.join(format!("{name}.key")).display(),
                dir.join(format!("{name}.pub")).display(),
                key.public().id(),
                ctx.agent.paths.keys_dir().display()
            );
            Ok(true)
        }
        Command::Sign { key, files } => {
            let key = hotsplice_trust::SecretKey::load(&key)?;
            for f in files {
                sign_in_place(&ctx, &f, &key)?;
                if !cli.quiet {
                    outln!("{}: signed by key {}", f.display(), key.public().id());
                }
            }
            Ok(true)
        }
        Command::User(u) => user::run_user(&ctx, u),
        Command::Kernel(k) => kernel::run_kernel(&ctx, k),
        Command::All(a) => user::run_all(&ctx, a),
        Command::Daemon(d) => daemon::run(&ctx, d),
        Command::Register(a) => fleet::register(&ctx, a),
        Command::Sync(a) => fleet::sync(&ctx, a),
        Command::Publish(a) => fleet::publish(&ctx, a),
        Command::Mirror(a) => fleet::mirror(&ctx, a),
        Command::Autoinstall => {
            if !ctx.agent.config.settings.autoinstall {
                if !ctx.quiet {
                    outln!(
                        "autoinstall is off (settings.autoinstall in {}): nothing done",
                        ctx.agent.paths.config_file().display()
                    );
                }
                return Ok(true);
            }
            let mut ok = true;
            if ctx.agent.fleet_paths().uuid().exists() {
                ok &= fleet::autoinstall_sync(&ctx)?;
            }
            ok &= user::upgrade_all(&ctx)?;
            Ok(ok)
        }
        Command::Check(_) | Command::Completions { .. } | Command::Manpages { .. } => {
            unreachable!("handled in main")
        }
    }
}

/// Sign a patch file in place, keeping its permissions.
fn sign_in_place(ctx: &app::App, path: &Path, key: &hotsplice_trust::SecretKey) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let bytes = ctx.agent.read_patch_file(path)?;
    let mode = std::fs::metadata(path)
        .map(|m| m.permissions().mode() & 0o777)
        .unwrap_or(0o644);
    let signed = hotsplice_trust::sign_file(&bytes, key)
        .with_context(|| format!("patch {}", path.display()))?;
    hotsplice_store::write_atomic_mode(path, &signed, mode)?;
    Ok(())
}

/// With `--keep-work`: a new directory for the build's scratch files, left
/// in place, and said where.
fn kept_work_dir(keep: bool, prefix: &str) -> Result<Option<PathBuf>> {
    if !keep {
        return Ok(None);
    }
    let dir = tempfile::Builder::new().prefix(prefix).tempdir()?.keep();
    errln!("hotsplice: keeping scratch files in {}", dir.display());
    Ok(Some(dir))
}

fn create(ctx: &app::App, a: CreateArgs) -> Result<bool> {
    let key = a
        .sign
        .as_ref()
        .map(|k| hotsplice_trust::SecretKey::load(k))
        .transpose()?;
    if a.kernel {
        return create_kernel(ctx, a, key);
    }
    let mut req = hotsplice_create::CreateRequest::new(a.src.unwrap_or_default(), a.diff, a.out);
    if let Some(spec) = &a.source_package {
        req.package = Some(hotsplice_create::PackageSpec {
            package: hotsplice_create::package::SourcePackage::parse(spec)?,
            cache: cache_dir(),
            build: a.build.clone(),
        });
    }
    req.build = a.build.unwrap_or_else(|| "make".into());
    req.prepared = a.prepared;
    req.targets = a.targets;
    req.description = a.description;
    req.keep_work = kept_work_dir(a.keep_work, "hotsplice-create.")?;
    req.level = a.level;
    req.stop_requested = stop_requested;
    let created = hotsplice_create::create(&req)?;
    if let Some(key) = &key {
        for c in &created {
            sign_in_place(ctx, &c.path, key)?;
        }
    }
    if a.json {
        outln!("{}", serde_json::to_string_pretty(&created)?);
    } else {
        for c in created {
            outln!("{}", c.path.display());
        }
    }
    Ok(true)
}

/// Whether SIGTERM (or SIGINT, SIGHUP) asked hotsplice to stop.
fn stop_requested() -> bool {
    terminate::requested().is_some()
}

/// `$HOTSPLICE_CACHE`, else `~/.cache/hotsplice`.
fn cache_dir() -> PathBuf {
    if let Some(c) = std::env::var_os("HOTSPLICE_CACHE") {
        return PathBuf::from(c);
    }
    let home = std::env::var_os("HOME").unwrap_or_else(|| "/root".into());
    PathBuf::from(home).join(".cache/hotsplice")
}

fn create_kernel(
    ctx: &app::App,
    a: CreateArgs,
    key: Option<hotsplice_trust::SecretKey>,
) -> Result<bool> {
    let k = hotsplice_kernel::Kernel::from_env();
    let release = match a.release {
        Some(r) => r,
        None => k.booted_release()?,
    };
    let build_id = match a.build_id {
        Some(b) => b,
        None => k.build_id()?,
    };
    let system_map = a.system_map.or_else(|| {
        let p = PathBuf::from("/proc/kallsyms");
        p.exists().then_some(p)
    });
    let modules = a.modules.or_else(|| {
        let p = PathBuf::from(format!("/lib/modules/{release}"));
        p.join("kernel").is_dir().then_some(p)
    });
    let req = hotsplice_create::kernel::KernelRequest {
        src: a.src.unwrap_or_default(),
        diff: a.diff,
        config: a
            .config
            .unwrap_or_else(|| PathBuf::from(format!("/boot/config-{release}"))),
        kdir: a
            .kdir
            .unwrap_or_else(|| PathBuf::from(format!("/lib/modules/{release}/build"))),
        system_map,
        modules,
        build_id,
        release,
        effective: a.effective,
        description: a.description,
        out_dir: a.out,
        keep_work: kept_work_dir(a.keep_work, "hotsplice-kcreate.")?,
        stop_requested,
    };
    let created = hotsplice_create::kernel::create_kernel(&req)?;
    if let Some(key) = &key {
        sign_in_place(ctx, &created.path, key)?;
    }
    if a.json {
        outln!("{}", serde_json::to_string_pretty(&created)?);
    } else {
        outln!("{}", created.path.display());
    }
    // Notes on stderr: stdout stays the patch's path alone.
    for f in &created.direct {
        errln!(
            "note: `{}` has no ftrace entry call: redirected directly (a jump written at its entry with the machine stopped)",
            esc(f)
        );
    }
    for f in &created.skipped {
        errln!(
            "note: `{}` (__init/__exit) left as it is: only a __LINE__ it uses moved",
            esc(f)
        );
    }
    Ok(true)
}

/// `hotsplice info`: what a patch file holds, and what its signature is
/// worth here: exactly one of trusted, unknown key, bad, unsigned.
fn vulns(ctx: &app::App, json: bool, vex: bool) -> Result<bool> {
    let f = ctx.agent.live_fixes()?;
    if vex {
        outln!(
            "{}",
            serde_json::to_string_pretty(&ctx.agent.live_fixes_vex(&f))?
        );
        return Ok(true);
    }
    if json {
        outln!("{}", serde_json::to_string_pretty(&f)?);
        return Ok(true);
    }
    if f.kernel.is_empty() && f.userspace.is_empty() {
        outln!("no installed or applied patch names a CVE");
        return Ok(true);
    }
    let procs = |v: &[hotsplice_agent::ProcessRef]| {
        v.iter()
            .map(|p| format!("{} ({})", p.pid, esc(&p.comm)))
            .collect::<Vec<_>>()
            .join(", ")
    };
    for k in &f.kernel {
        if k.applied {
            outln!(
                "{}: fixed live in the kernel ({})",
                esc(&k.cve),
                esc(&k.patch)
            );
        } else {
            outln!(
                "{}: NOT fixed: kernel patch {} is in the feed, not applied",
                esc(&k.cve),
                esc(&k.patch)
            );
        }
    }
    for u in &f.userspace {
        if u.fixed_in.is_empty() && u.lacking.is_empty() {
            outln!(
                "{}: {}: no running process maps it",
                esc(&u.cve),
                esc(&u.target)
            );
        } else if u.lacking.is_empty() {
            outln!(
                "{}: fixed live in {}: every process mapping it ({})",
                esc(&u.cve),
                esc(&u.target),
                u.fixed_in.len()
            );
        } else {
            outln!(
                "{}: {}: NOT fixed in {}; fixed in {} process(es)",
                esc(&u.cve),
                esc(&u.target),
                procs(&u.lacking),
                u.fixed_in.len()
            );
        }
    }
    outln!(
        "{} CVE(s) fixed live, {} with a fix not applied",
        f.fixed.len(),
        f.not_fixed.len()
    );
    Ok(true)
}

fn info(ctx: &app::App, file: &Path, json: bool) -> Result<bool> {
    let info = ctx.agent.info(file)?;
    if json {
        outln!("{}", serde_json::to_string_pretty(&info)?);
        return Ok(true);
    }
    let m = &info.meta;
    let key = info.key_id.as_deref().map(esc).unwrap_or_default();
    let signature = match info.signature {
        "trusted" => format!("signed by a trusted key {key}"),
        "unknown-key" => format!("signed by an unknown key {key}"),
        "bad" => format!(
            "bad signature (claims key {key}: {})",
            esc(info.signature_problem.as_deref().unwrap_or("?"))
        ),
        _ => "unsigned".into(),
    };
    outln!("id:          {}", esc(&m.id));
    outln!("description: {}", esc(&m.description));
    outln!("level:       {}", m.level);
    outln!(
        "target:      {} (build-id {}, {:?})",
        esc(&m.target.name),
        esc(&m.target.build_id),
        m.target.kind
    );
    outln!("made by:     {}", esc(&m.tool));
    outln!("signature:   {signature}");
    outln!(
        "code:        {} bytes, data {} bytes, {} relocations",
        m.code_size,
        m.data_size,
        m.relocations.len()
    );
    if let Some(eh) = &m.eh_frame {
        outln!("unwind:      {} bytes of .eh_frame", eh.size);
    }
    outln!("replaces:");
    for f in &m.functions {
        outln!(
            "  {:<30} {:#x} {} bytes{}",
            esc(&f.name),
            f.vaddr,
            f.size,
            f.file
                .as_ref()
                .map(|s| format!(" ({})", esc(s)))
                .unwrap_or_default()
        );
    }
    if !m.symbols.is_empty() {
        outln!("adds:");
        for s in &m.symbols {
            outln!("  {:<30} {} {} bytes", esc(&s.name), esc(&s.kind), s.size);
        }
    }
    Ok(true)
}
