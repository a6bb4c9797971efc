//! `hotsplice kernel ...` and the `uptrack-*` commands: the agent's kernel
//! answers, rendered.

use crate::app::App;
use crate::journal::{self, Stream};
use crate::output::esc;
use anyhow::{bail, Context as _, Result};
use clap::{Args, Parser, Subcommand};
use hotsplice_kernel::Kernel;
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
    /// The running kernel as a patch target: release, build-id, and the
    /// patch modules loaded into it.
    ListTargets {
        #[arg(long)]
        json: bool,
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
    /// Like uname, with the effective kernel release: uname's own flags
    /// (-a, -r, -v the version, -s, -n the node name, -m), parsed apart from
    /// the global -v/-n.
    Uname {
        #[arg(
            allow_hyphen_values = true,
            trailing_var_arg = true,
            value_name = "UNAME_FLAGS"
        )]
        flags: Vec<String>,
    },
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
    /// All of the below.
    #[arg(short = 'a')]
    all: bool,
    /// The effective kernel release.
    #[arg(short = 'r')]
    release: bool,
    /// The kernel version.
    #[arg(short = 'v')]
    version: bool,
    /// The kernel name (Linux).
    #[arg(short = 's')]
    sysname: bool,
    /// The node name.
    #[arg(short = 'n')]
    nodename: bool,
    /// The machine (x86_64).
    #[arg(short = 'm')]
    machine: bool,
}

fn apply_one(app: &App, k: &Kernel, path: &Path, allow_unsigned: bool) -> Result<()> {
    let (id, report) = app
        .agent
        .kernel_apply(k, path, allow_unsigned, app.dry_run)?;
    let Some(r) = report else {
        outln!("would apply {}", esc(&id));
        return Ok(());
    };
    let message = transition_message("applied", &r, &k.effective_release()?);
    kernel_line(k, Stream::Out, !app.quiet, &message, &r.id, "applied");
    Ok(())
}

/// `VERB ID (MODULE): transition … ms, … ms in all; effective kernel …`.
fn transition_message(verb: &str, r: &hotsplice_kernel::KernelReport, effective: &str) -> String {
    format!(
        "{verb} {} ({}): transition {:.1} ms, {:.1} ms in all; effective kernel {}",
        esc(&r.id),
        esc(&r.module),
        r.transition_ms,
        r.total_ms,
        esc(effective)
    )
}

/// A result line about patch `id` in the kernel (see [`journal::line`]).
fn kernel_line(k: &Kernel, stream: Stream, print: bool, message: &str, id: &str, result: &str) {
    let release = k.booted_release().unwrap_or_default();
    let record = journal::Record {
        patch_id: id,
        target: journal::Target::Kernel(&release),
        result,
    };
    journal::line(stream, print, message, &record);
}

pub fn run_kernel(app: &App, cmd: KernelCommand) -> Result<bool> {
    let agent = &app.agent;
    let k = agent.kernel();
    match cmd {
        KernelCommand::Show {
            available,
            count,
            from,
        } => {
            if available {
                let todo = agent.kernel_available(from.as_deref(), &k)?;
                if count {
                    outln!("{}", todo.len());
                } else {
                    outln!("Available updates:");
                    for f in todo {
                        outln!("[{}] {}", esc(&f.id), esc(&f.path.display().to_string()));
                    }
                }
                return Ok(true);
            }
            let applied = k.applied()?;
            if count {
                outln!("{}", applied.len());
                return Ok(true);
            }
            outln!("Installed updates:");
            for p in &applied {
                outln!("[{}] {}", esc(&p.id), esc(&p.description));
            }
            outln!(
                "Effective kernel version is {}",
                esc(&k.effective_release()?)
            );
            Ok(true)
        }
        KernelCommand::Apply {
            allow_unsigned,
            from,
            patches,
        } => {
            for p in patches {
                let path = agent.kernel_patch_path(&p, from.as_deref(), &k)?;
                apply_one(app, &k, &path, allow_unsigned)?;
            }
            Ok(true)
        }
        KernelCommand::Undo { id } => {
            let r = k.undo(&id)?;
            let message = transition_message("removed", &r, &k.effective_release()?);
            kernel_line(&k, Stream::Out, !app.quiet, &message, &r.id, "removed");
            Ok(true)
        }
        KernelCommand::Remove { all, ids } => {
            if !all && ids.is_empty() {
                bail!("say which patches to remove: IDs, or --all");
            }
            let applied = k.applied()?;
            for p in applied.iter().rev() {
                if all || ids.contains(&p.id) {
                    if app.dry_run {
                        outln!("would remove {}", esc(&p.id));
                        continue;
                    }
                    let r = k.undo(&p.id)?;
                    let message = format!("removed {} ({:.1} ms)", esc(&r.id), r.total_ms);
                    kernel_line(&k, Stream::Out, !app.quiet, &message, &r.id, "removed");
                }
            }
            if !app.quiet {
                outln!(
                    "Effective kernel version is {}",
                    esc(&k.effective_release()?)
                );
            }
            Ok(true)
        }
        KernelCommand::Upgrade {
            from,
            allow_unsigned,
        } => {
            let todo = agent.kernel_available(from.as_deref(), &k)?;
            if todo.is_empty() {
                if !app.quiet {
                    outln!("Nothing to be done: the kernel has every available update");
                }
                return Ok(true);
            }
            for f in todo {
                apply_one(app, &k, &f.path, allow_unsigned)?;
            }
            Ok(true)
        }
        KernelCommand::Uname { flags } => {
            let mut argv = vec!["uname".to_string()];
            argv.extend(flags);
            let u = UptrackUname::try_parse_from(argv).unwrap_or_else(|e| e.exit());
            uname(app, &k, &u.uname)
        }
        KernelCommand::ListTargets { json } => {
            let release = k.booted_release()?;
            let build_id = k.build_id().unwrap_or_default();
            let applied = k.applied()?;
            if json {
                let patches: Vec<_> = applied
                    .iter()
                    .map(|p| serde_json::json!({"id": p.id, "description": p.description}))
                    .collect();
                outln!(
                    "{}",
                    serde_json::to_string_pretty(&serde_json::json!([{
                        "kind": "kernel",
                        "release": release,
                        "build_id": build_id,
                        "effective": k.effective_release()?,
                        "patches": patches,
                    }]))?
                );
            } else {
                outln!("{:<48} {:<42} PATCHES", "KERNEL", "BUILD-ID");
                let ids: Vec<String> = applied.iter().map(|p| esc(&p.id).into_owned()).collect();
                outln!(
                    "{:<48} {:<42} {}",
                    esc(&release),
                    esc(&build_id),
                    ids.join(",")
                );
            }
            Ok(true)
        }
        KernelCommand::Wrap { module, out, sign } => {
            let ko =
                std::fs::read(&module).with_context(|| format!("reading {}", module.display()))?;
            let patch =
                hotsplice_agent::wrap_module(&ko, &module.display().to_string(), Vec::new())?;
            let path = out.join(format!("vmlinux-{}.hsp", patch.meta.id));
            std::fs::create_dir_all(&out)?;
            let mut bytes = patch.to_bytes();
            if let Some(k) = sign {
                bytes = hotsplice_trust::sign_file(&bytes, &hotsplice_trust::SecretKey::load(&k)?)?;
            }
            hotsplice_store::write_atomic(&path, &bytes)?;
            outln!("{}", path.display());
            Ok(true)
        }
        KernelCommand::Boot { from } => {
            let r = agent.kernel_boot(from.as_deref())?;
            for line in &r.recorded {
                let message = format!("hotsplice boot: {}", esc(&line.text));
                match (&line.id, line.result) {
                    (Some(id), Some(result)) => {
                        kernel_line(&k, Stream::Out, true, &message, id, result)
                    }
                    _ => outln!("{message}"),
                }
            }
            for (id, result) in &r.from_feed {
                match result {
                    Ok(a) => {
                        if !app.quiet {
                            outln!(
                                "applied {} ({}): transition {:.1} ms, {:.1} ms in all",
                                esc(&a.id),
                                esc(&a.module),
                                a.transition_ms,
                                a.total_ms
                            );
                        }
                        let message = format!("hotsplice boot: {}: applied from the feed", esc(id));
                        kernel_line(&k, Stream::Out, true, &message, id, "applied");
                    }
                    Err(e) => {
                        let message = format!("hotsplice boot: {}: FAILED: {}", esc(id), esc(e));
                        kernel_line(&k, Stream::Out, true, &message, id, "failed");
                    }
                }
            }
            outln!("hotsplice boot: effective kernel {}", esc(&r.effective));
            Ok(true)
        }
    }
}

fn uname(app: &App, k: &Kernel, u: &UnameArgs) -> Result<bool> {
    let un = app.agent.uname(k)?;
    let mut parts = Vec::new();
    let none = !(u.all || u.release || u.version || u.sysname || u.nodename || u.machine);
    if u.all || u.sysname || none {
        parts.push(un.sysname);
    }
    if u.all || u.nodename {
        parts.push(un.nodename);
    }
    if u.all || u.release {
        parts.push(un.release);
    }
    if u.all || u.version {
        parts.push(un.version);
    }
    if u.all || u.machine {
        parts.push(un.machine);
    }
    outln!("{}", esc(&parts.join(" ")));
    Ok(true)
}

/// `uptrack-*`: the Ksplice Uptrack client's commands, by program name.
#[derive(Parser)]
#[command(
    disable_version_flag = true,
    about = "Ksplice Uptrack's kernel commands: uptrack-upgrade (-n: list, -y: apply the feed's updates), \
             uptrack-install ID..., uptrack-remove ID... | --all, uptrack-show [--available] [--count]"
)]
pub struct Uptrack {
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
#[command(
    disable_version_flag = true,
    about = "Like uname, but the release (-r) and version (-v) are those of the effective kernel: \
             the booted one plus the applied patches"
)]
pub struct UptrackUname {
    #[command(flatten)]
    uname: UnameArgs,
}

/// `NAME [GLOBAL FLAGS] kernel uname FLAGS...`: uname's -v and -n are not
/// the global --verbose and --dry-run, so this line is parsed here, before
/// the main parser sees it. None when the line is something else.
pub fn kernel_uname_main(name: &str, args: &[String]) -> Option<i32> {
    let at = args.iter().skip(1).position(|a| !a.starts_with('-'))? + 1;
    if args.get(at)? != "kernel" || args.get(at + 1)? != "uname" {
        return None;
    }
    let mut argv = vec![format!("{name} kernel uname")];
    argv.extend(args[at + 2..].iter().cloned());
    let u: UptrackUname = parse_documented(argv);
    Some(
        match App::new(false, 0, false, false).and_then(|app| {
            let k = app.agent.kernel();
            uname(&app, &k, &u.uname)
        }) {
            Ok(true) => 0,
            Ok(false) => 1,
            Err(e) => {
                crate::show_error(name, &e);
                1
            }
        },
    )
}

/// Parses `argv` with `T`'s parser, its help ending with the exit codes.
fn parse_documented<
    T: clap::Parser,
    I: IntoIterator<Item = S>,
    S: Into<std::ffi::OsString> + Clone,
>(
    argv: I,
) -> T {
    T::command()
        .after_help(crate::docs::EXIT_CODES)
        .try_get_matches_from(argv)
        .and_then(|m| T::from_arg_matches(&m))
        .unwrap_or_else(|e| e.exit())
}

/// Run as `uptrack-NAME` if `argv0` says so.
pub fn uptrack_main(argv0: &str) -> Option<i32> {
    let name = Path::new(argv0).file_name()?.to_str()?.to_string();
    let what = name.strip_prefix("uptrack-")?.to_string();
    let args: Vec<String> = std::env::args().collect();
    if what == "uname" {
        let u: UptrackUname = parse_documented(&args);
        return Some(
            match App::new(false, 0, false, false).and_then(|app| {
                let k = app.agent.kernel();
                uname(&app, &k, &u.uname)
            }) {
                Ok(true) => 0,
                Ok(false) => 1,
                Err(e) => {
                    crate::show_error(&name, &e);
                    1
                }
            },
        );
    }
    let u: Uptrack = parse_documented(&args);
    let app = match App::new(u.quiet, u.verbose, u.yes, u.no && what != "uname") {
        Ok(c) => c,
        Err(e) => {
            crate::show_error(&name, &e);
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
    Some(match run_kernel(&app, cmd) {
        Ok(true) => 0,
        Ok(false) => 1,
        Err(e) => {
            crate::show_error(&name, &e);
            1
        }
    })
}
