//! `hotsplice kernel ...` and the `uptrack-*` commands.

use crate::context::Ctx;
use anyhow::{bail, Context as _, Result};
use clap::{Args, Parser, Subcommand};
use hotsplice_kernel::Kernel;
use hotsplice_patch::ObjectKind;
use std::path::{Path, PathBuf};

#[derive(Subcommand)]
pub enum KernelCommand {
    /// Applied kernel patches; --available: those in the feed not applied yet.
    Show {
        #[arg(long)]
        available: bool,
        #[arg(long)]
        count: bool,
        /// Feed directory (default: `feed` of the configuration).
        #[arg(long)]
        from: Option<PathBuf>,
    },
    /// Apply kernel patch files (or IDs from the feed).
    Apply {
        #[arg(long)]
        allow_unsigned: bool,
        #[arg(long)]
        from: Option<PathBuf>,
        #[arg(required = true)]
        patches: Vec<String>,
    },
    /// Remove one applied patch (the most recent first).
    Undo { id: String },
    /// Remove applied patches, newest first.
    Remove {
        #[arg(long)]
        all: bool,
        ids: Vec<String>,
    },
    /// Apply every patch of the feed made for this kernel.
    Upgrade {
        #[arg(long)]
        from: Option<PathBuf>,
        #[arg(long)]
        allow_unsigned: bool,
    },
    /// Like uname, with the effective kernel release.
    Uname(UnameArgs),
    /// Wrap a livepatch module (with hotsplice_* modinfo) into a patch file.
    Wrap {
        module: PathBuf,
        #[arg(short = 'o', long = "output", default_value = ".")]
        out: PathBuf,
        #[arg(long)]
        sign: Option<PathBuf>,
    },
    /// Boot-time hook: re-apply recorded patches (install_on_reboot), then
    /// the feed's (upgrade_on_reboot).
    Boot {
        #[arg(long)]
        from: Option<PathBuf>,
    },
}

#[derive(Args, Clone, Default)]
pub struct UnameArgs {
    #[arg(short = 'a')]
    all: bool,
    #[arg(short = 'r')]
    release: bool,
    #[arg(short = 'v')]
    version: bool,
    #[arg(short = 's')]
    sysname: bool,
    #[arg(short = 'n')]
    nodename: bool,
    #[arg(short = 'm')]
    machine: bool,
}

fn kernel() -> Kernel {
    let mut k = Kernel::from_env();
    if let Some(t) = std::env::var("HOTSPLICE_TRANSITION_TIMEOUT")
        .ok()
        .and_then(|v| v.parse::<f64>().ok())
    {
        k.transition_timeout = std::time::Duration::from_secs_f64(t);
    }
    k
}

fn feed_dir(ctx: &Ctx, from: &Option<PathBuf>) -> Option<PathBuf> {
    from.clone()
        .or_else(|| ctx.config.settings.feed.clone().map(PathBuf::from))
}

/// Kernel patches in the feed: `(id, path)` of those for this kernel.
fn feed(ctx: &Ctx, from: &Option<PathBuf>, k: &Kernel) -> Result<Vec<(String, PathBuf)>> {
    let Some(dir) = feed_dir(ctx, from) else {
        return Ok(Vec::new());
    };
    let me = k.build_id()?;
    let mut out = Vec::new();
    let mut paths: Vec<PathBuf> = std::fs::read_dir(&dir)
        .with_context(|| format!("feed {}", dir.display()))?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "hsp"))
        .collect();
    paths.sort();
    for p in paths {
        let Ok(bytes) = std::fs::read(&p) else {
            continue;
        };
        let Ok(file) = hotsplice_patch::PatchFile::parse(&bytes) else {
            continue;
        };
        let m = &file.patch.meta;
        if m.target.kind == ObjectKind::Kernel && m.target.build_id == me {
            out.push((m.id.to_string(), p));
        }
    }
    Ok(out)
}

fn apply_one(ctx: &Ctx, k: &Kernel, path: &Path, allow_unsigned: bool) -> Result<()> {
    let patch = ctx.read_verified(path, allow_unsigned)?;
    if ctx.dry_run {
        println!("would apply {}", patch.meta.id);
        return Ok(());
    }
    let r = k.apply(&patch, &path.display().to_string())?;
    if !ctx.quiet {
        println!(
            "applied {} ({}): transition {:.1} ms, {:.1} ms in all; effective kernel {}",
            r.id,
            r.module,
            r.transition_ms,
            r.total_ms,
            k.effective_release()?
        );
    }
    Ok(())
}

pub fn run_kernel(ctx: &Ctx, cmd: KernelCommand) -> Result<bool> {
    let k = kernel();
    match cmd {
        KernelCommand::Show {
            available,
            count,
            from,
        } => {
            if available {
                let applied: Vec<String> = k.applied()?.into_iter().map(|p| p.id).collect();
                let todo: Vec<(String, PathBuf)> = feed(ctx, &from, &k)?
                    .into_iter()
                    .filter(|(id, _)| !applied.contains(id))
                    .collect();
                if count {
                    println!("{}", todo.len());
                } else {
                    println!("Available updates:");
                    for (id, p) in todo {
                        println!("[{id}] {}", p.display());
                    }
                }
                return Ok(true);
            }
            let applied = k.applied()?;
            if count {
                println!("{}", applied.len());
                return Ok(true);
            }
            println!("Installed updates:");
            for p in &applied {
                println!("[{}] {}", p.id, p.description);
            }
            println!("Effective kernel version is {}", k.effective_release()?);
            Ok(true)
        }
        KernelCommand::Apply {
            allow_unsigned,
            from,
            patches,
        } => {
            for p in patches {
                let path = PathBuf::from(&p);
                let path = if path.exists() {
                    path
                } else {
                    feed(ctx, &from, &k)?
                        .into_iter()
                        .find(|(id, _)| *id == p)
                        .map(|(_, f)| f)
                        .with_context(|| {
                            format!("{p}: no such file, and no patch with that ID in the feed")
                        })?
                };
                apply_one(ctx, &k, &path, allow_unsigned)?;
            }
            Ok(true)
        }
        KernelCommand::Undo { id } => {
            let r = k.undo(&id)?;
            if !ctx.quiet {
                println!(
                    "removed {} ({}): transition {:.1} ms, {:.1} ms in all; effective kernel {}",
                    r.id,
                    r.module,
                    r.transition_ms,
                    r.total_ms,
                    k.effective_release()?
                );
            }
            Ok(true)
        }
        KernelCommand::Remove { all, ids } => {
            if !all && ids.is_empty() {
                bail!("say which patches to remove: IDs, or --all");
            }
            let applied = k.applied()?;
            for p in applied.iter().rev() {
                if all || ids.contains(&p.id) {
                    if ctx.dry_run {
                        println!("would remove {}", p.id);
                        continue;
                    }
                    let r = k.undo(&p.id)?;
                    if !ctx.quiet {
                        println!("removed {} ({:.1} ms)", r.id, r.total_ms);
                    }
                }
            }
            if !ctx.quiet {
                println!("Effective kernel version is {}", k.effective_release()?);
            }
            Ok(true)
        }
        KernelCommand::Upgrade {
            from,
            allow_unsigned,
        } => {
            let applied: Vec<String> = k.applied()?.into_iter().map(|p| p.id).collect();
            let todo: Vec<(String, PathBuf)> = feed(ctx, &from, &k)?
                .into_iter()
                .filter(|(id, _)| !applied.contains(id))
                .collect();
            if todo.is_empty() {
                if !ctx.quiet {
                    println!("Nothing to be done: the kernel has every available update");
                }
                return Ok(true);
            }
            for (_, p) in todo {
                apply_one(ctx, &k, &p, allow_unsigned)?;
            }
            Ok(true)
        }
        KernelCommand::Uname(u) => uname(&k, &u),
        KernelCommand::Wrap { module, out, sign } => {
            let ko =
                std::fs::read(&module).with_context(|| format!("reading {}", module.display()))?;
            let patch = wrap_module(&ko, &module.display().to_string(), Vec::new())?;
            let path = out.join(format!("vmlinux-{}.hsp", patch.meta.id));
            std::fs::create_dir_all(&out)?;
            let mut bytes = patch.to_bytes();
            if let Some(k) = sign {
                bytes = hotsplice_trust::sign_file(&bytes, &hotsplice_trust::SecretKey::load(&k)?)?;
            }
            hotsplice_store::write_atomic(&path, &bytes)?;
            println!("{}", path.display());
            Ok(true)
        }
        KernelCommand::Boot { from } => {
            // Verified again, as on every use.
            let verify = |bytes: &[u8], what: &str| {
                ctx.verified(bytes, what, false)
                    .map_err(|e| format!("{e:#}"))
            };
            for line in k.reapply_at_boot(ctx.config.settings.install_on_reboot, &verify)? {
                println!("hotsplice boot: {line}");
            }
            // The machine's first boot with hotsplice: `first_boot` says
            // whether to bring the kernel up to date from the feed then.
            let marker = ctx.paths.state_dir.join("kernel/booted-before");
            let first = !marker.exists();
            if first {
                let _ = hotsplice_store::write_atomic(&marker, b"");
            }
            let from_feed =
                ctx.config.settings.upgrade_on_reboot || (first && ctx.config.settings.first_boot);
            if from_feed && !k.disabled() {
                let applied: Vec<String> = k.applied()?.into_iter().map(|p| p.id).collect();
                for (id, p) in feed(ctx, &from, &k)? {
                    if !applied.contains(&id) {
                        match apply_one(ctx, &k, &p, false) {
                            Ok(()) => println!("hotsplice boot: {id}: applied from the feed"),
                            Err(e) => println!("hotsplice boot: {id}: FAILED: {e:#}"),
                        }
                    }
                }
            }
            println!(
                "hotsplice boot: effective kernel {}",
                k.effective_release()?
            );
            Ok(true)
        }
    }
}

fn uname(k: &Kernel, u: &UnameArgs) -> Result<bool> {
    // SAFETY: uname fills a struct we own.
    let mut un: libc::utsname = unsafe { std::mem::zeroed() };
    unsafe { libc::uname(&mut un) };
    let field = |f: &[libc::c_char]| {
        // SAFETY: utsname fields are NUL-terminated.
        unsafe { std::ffi::CStr::from_ptr(f.as_ptr()) }
            .to_string_lossy()
            .into_owned()
    };
    let release = k.effective_release()?;
    let mut version = field(&un.version);
    let applied = k.applied()?;
    if !applied.is_empty() {
        version = format!("{version} (hotsplice: {} update(s))", applied.len());
    }
    let mut parts = Vec::new();
    let none = !(u.all || u.release || u.version || u.sysname || u.nodename || u.machine);
    if u.all || u.sysname || none {
        parts.push(field(&un.sysname));
    }
    if u.all || u.nodename {
        parts.push(field(&un.nodename));
    }
    if u.all || u.release {
        parts.push(release);
    }
    if u.all || u.version {
        parts.push(version);
    }
    if u.all || u.machine {
        parts.push(field(&un.machine));
    }
    println!("{}", parts.join(" "));
    Ok(true)
}

/// `uptrack-*`: the Ksplice Uptrack client's commands, by program name.
#[derive(Parser)]
#[command(disable_version_flag = true)]
struct Uptrack {
    #[arg(short = 'y')]
    yes: bool,
    #[arg(short = 'n')]
    no: bool,
    #[arg(short = 'q')]
    quiet: bool,
    #[arg(short = 'v', action = clap::ArgAction::Count)]
    verbose: u8,
    #[arg(long)]
    all: bool,
    #[arg(long)]
    available: bool,
    #[arg(long)]
    count: bool,
    /// Seconds to wait between updates (accepted for compatibility).
    #[arg(long)]
    wait: Option<f64>,
    args: Vec<String>,
}

/// `uptrack-uname`: uname's flags (-n is nodename, -v the version).
#[derive(Parser)]
#[command(disable_version_flag = true)]
struct UptrackUname {
    #[command(flatten)]
    uname: UnameArgs,
}

/// Run as `uptrack-NAME` if `argv0` says so.
pub fn uptrack_main(argv0: &str) -> Option<i32> {
    let name = Path::new(argv0).file_name()?.to_str()?.to_string();
    let what = name.strip_prefix("uptrack-")?.to_string();
    let args: Vec<String> = std::env::args().collect();
    if what == "uname" {
        let u = match UptrackUname::try_parse_from(&args) {
            Ok(u) => u,
            Err(e) => e.exit(),
        };
        return Some(
            match Ctx::new(false, 0, false, false)
                .and_then(|ctx| run_kernel(&ctx, KernelCommand::Uname(u.uname)))
            {
                Ok(true) => 0,
                Ok(false) => 1,
                Err(e) => {
                    eprintln!("{name}: error: {e:#}");
                    1
                }
            },
        );
    }
    let u = match Uptrack::try_parse_from(&args) {
        Ok(u) => u,
        Err(e) => e.exit(),
    };
    let ctx = match Ctx::new(u.quiet, u.verbose, u.yes, u.no && what != "uname") {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{name}: {e:#}");
            return Some(1);
        }
    };
    let cmd = match what.as_str() {
        "install" => KernelCommand::Apply {
            allow_unsigned: false,
            from: None,
            patches: u.args.clone(),
        },
        "remove" => KernelCommand::Remove {
            all: u.all,
            ids: u.args.clone(),
        },
        "show" => KernelCommand::Show {
            available: u.available,
            count: u.count,
            from: None,
        },
        "upgrade" => {
            if u.no || !u.yes {
                KernelCommand::Show {
                    available: true,
                    count: false,
                    from: None,
                }
            } else {
                KernelCommand::Upgrade {
                    from: None,
                    allow_unsigned: false,
                }
            }
        }
        _ => {
            eprintln!("{name}: unknown uptrack command");
            return Some(2);
        }
    };
    Some(match run_kernel(&ctx, cmd) {
        Ok(true) => 0,
        Ok(false) => 1,
        Err(e) => {
            eprintln!("{name}: error: {e:#}");
            1
        }
    })
}

/// A kernel patch file around a livepatch module: the module is the image;
/// its modinfo says which kernel build it is for.
pub fn wrap_module(
    ko: &[u8],
    origin: &str,
    functions: Vec<String>,
) -> Result<hotsplice_patch::Patch> {
    let info = hotsplice_kernel::modinfo(ko)
        .map_err(|e| anyhow::anyhow!("{origin} is not a hotsplice kernel patch module: {e}"))?;
    let patch = hotsplice_create::kernel::kernel_patch(
        ko,
        &info.id,
        &info.description,
        &info.build_id,
        &info.release,
        functions,
    );
    patch
        .validate()
        .map_err(|e| anyhow::anyhow!("{origin}: {e}"))?;
    Ok(patch)
}
