//! The `hotsplice` command.

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use hotsplice_engine::{self as engine, ApplyOptions, Report};
use hotsplice_patch::{Patch, PatchFile};
use std::path::PathBuf;
use std::time::Duration;

#[derive(Parser)]
#[command(
    name = "hotsplice",
    version,
    about = "Live patching of running processes, without restarts"
)]
struct Cli {
    /// More output (repeat for debug logs).
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    verbose: u8,
    /// Only errors.
    #[arg(short, long, global = true)]
    quiet: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Build patches from a source tree and a fix (unified diff).
    Create(CreateArgs),
    /// Show what a patch file contains.
    Info {
        file: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// Patches of running processes.
    #[command(subcommand)]
    User(UserCommand),
}

#[derive(Args)]
struct CreateArgs {
    /// The fix, a unified diff applied with `patch -p1` at the top of SRC_DIR.
    #[arg(long = "patch")]
    diff: PathBuf,
    /// Build command, run with `sh -c` in SRC_DIR.
    #[arg(long, default_value = "make")]
    build: String,
    /// Installed executable or library the patch is for (repeatable).
    #[arg(long = "target")]
    targets: Vec<PathBuf>,
    /// Where to write patch files.
    #[arg(short = 'o', long = "output", default_value = ".")]
    out: PathBuf,
    /// Description stored in the patch (e.g. the CVE it fixes).
    #[arg(long)]
    description: Option<String>,
    /// Keep the scratch build trees.
    #[arg(long)]
    keep_work: bool,
    #[arg(long)]
    json: bool,
    /// The source tree the running binaries were built from.
    src: PathBuf,
}

#[derive(Args)]
struct Wait {
    /// Seconds to keep retrying while a thread is inside code being replaced.
    #[arg(long, default_value_t = 5.0)]
    busy_timeout: f64,
}

impl Wait {
    fn options(&self) -> ApplyOptions {
        ApplyOptions {
            busy_timeout: Duration::from_secs_f64(self.busy_timeout.max(0.0)),
        }
    }
}

#[derive(Subcommand)]
enum UserCommand {
    /// Apply patch files to running processes.
    Apply {
        #[arg(long, required_unless_present = "all", conflicts_with = "all")]
        pid: Option<i32>,
        /// Every process that maps a patch's target.
        #[arg(long)]
        all: bool,
        #[command(flatten)]
        wait: Wait,
        #[arg(long)]
        json: bool,
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Undo one applied patch in a process.
    Undo {
        #[arg(long)]
        pid: i32,
        id: String,
        #[command(flatten)]
        wait: Wait,
    },
    /// Undo patches: all of them (--all), in one process or in every one.
    Remove {
        #[arg(long)]
        all: bool,
        #[arg(long)]
        pid: Option<i32>,
        /// Patch IDs to remove (instead of --all).
        ids: Vec<String>,
        #[command(flatten)]
        wait: Wait,
    },
    /// Patches applied, per process.
    Show {
        #[arg(long)]
        pid: Option<i32>,
        #[arg(long)]
        json: bool,
    },
    /// Processes and the patchable objects they map, with build-ids.
    ListTargets {
        #[arg(long)]
        json: bool,
    },
}

fn main() {
    let mut args = std::env::args();
    let argv0 = args.next().unwrap_or_default();
    if hotsplice_create::wrapper::invoked_as_wrapper(&argv0) {
        hotsplice_create::wrapper::wrapper_main(&argv0, args.collect());
    }
    let cli = Cli::parse();
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
        .init();
    match run(cli) {
        Ok(true) => {}
        Ok(false) => std::process::exit(1),
        Err(e) => {
            eprintln!("hotsplice: error: {e:#}");
            std::process::exit(1);
        }
    }
}

fn read_patch(path: &PathBuf) -> Result<Patch> {
    let bytes = std::fs::read(path).with_context(|| format!("reading patch {}", path.display()))?;
    let file = PatchFile::parse(&bytes).with_context(|| format!("patch {}", path.display()))?;
    Ok(file.patch)
}

fn comm(pid: i32) -> String {
    hotsplice_process::process_name(pid).unwrap_or_else(|| "?".into())
}

fn print_report(verb: &str, r: &Report, quiet: bool) {
    if !quiet {
        println!(
            "pid {} ({}): {verb} {} ({}): {} function(s); {} thread(s) stopped for {:.3} ms{}",
            r.pid,
            comm(r.pid),
            r.id,
            r.target,
            r.functions,
            r.threads,
            r.stopped.as_secs_f64() * 1e3,
            if r.attempts > 1 {
                format!(" (after {} tries: code was busy)", r.attempts)
            } else {
                String::new()
            }
        );
    }
}

fn run(cli: Cli) -> Result<bool> {
    let quiet = cli.quiet;
    match cli.command {
        Command::Create(a) => {
            let mut req = hotsplice_create::CreateRequest::new(a.src, a.diff, a.out);
            req.build = a.build;
            req.targets = a.targets;
            req.description = a.description;
            req.keep_work = a.keep_work;
            let created = hotsplice_create::create(&req)?;
            if a.json {
                println!("{}", serde_json::to_string_pretty(&created)?);
            } else {
                for c in created {
                    println!("{}", c.path.display());
                }
            }
            Ok(true)
        }
        Command::Info { file, json } => {
            let bytes =
                std::fs::read(&file).with_context(|| format!("reading {}", file.display()))?;
            let pf =
                PatchFile::parse(&bytes).with_context(|| format!("patch {}", file.display()))?;
            let m = &pf.patch.meta;
            if json {
                let v = serde_json::json!({
                    "id": m.id,
                    "description": m.description,
                    "tool": m.tool,
                    "target": m.target,
                    "functions": m.functions.iter().map(|f| &f.name).collect::<Vec<_>>(),
                    "new_symbols": m.symbols.iter().map(|s| &s.name).collect::<Vec<_>>(),
                    "code_size": m.code_size,
                    "data_size": m.data_size,
                    "relocations": m.relocations.len(),
                    "signed": pf.signature.is_some(),
                });
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                println!("id:          {}", m.id);
                println!("description: {}", m.description);
                println!(
                    "target:      {} (build-id {}, {:?})",
                    m.target.name, m.target.build_id, m.target.kind
                );
                println!("made by:     {}", m.tool);
                println!(
                    "signed:      {}",
                    if pf.signature.is_some() { "yes" } else { "no" }
                );
                println!(
                    "code:        {} bytes, data {} bytes, {} relocations",
                    m.code_size,
                    m.data_size,
                    m.relocations.len()
                );
                println!("replaces:");
                for f in &m.functions {
                    println!(
                        "  {:<30} {:#x} {} bytes{}",
                        f.name,
                        f.vaddr,
                        f.size,
                        f.file
                            .as_ref()
                            .map(|s| format!(" ({s})"))
                            .unwrap_or_default()
                    );
                }
                if !m.symbols.is_empty() {
                    println!("adds:");
                    for s in &m.symbols {
                        println!("  {:<30} {} {} bytes", s.name, s.kind, s.size);
                    }
                }
            }
            Ok(true)
        }
        Command::User(u) => run_user(u, quiet),
    }
}

fn run_user(cmd: UserCommand, quiet: bool) -> Result<bool> {
    match cmd {
        UserCommand::Apply {
            pid,
            all: _,
            wait,
            json,
            files,
        } => {
            let opts = wait.options();
            let patches: Vec<Patch> = files.iter().map(read_patch).collect::<Result<_>>()?;
            let mut jobs: Vec<(i32, usize)> = Vec::new();
            for (i, p) in patches.iter().enumerate() {
                match pid {
                    Some(pid) => jobs.push((pid, i)),
                    None => {
                        let pids = engine::processes_mapping(&p.meta.target.build_id);
                        if pids.is_empty() && !quiet {
                            eprintln!(
                                "hotsplice: no running process maps {} (build-id {})",
                                p.meta.target.name, p.meta.target.build_id
                            );
                        }
                        jobs.extend(pids.into_iter().map(|pid| (pid, i)));
                    }
                }
            }
            // One process's patches in order on one thread; processes in parallel.
            let mut by_pid: Vec<(i32, Vec<usize>)> = Vec::new();
            for (p, i) in jobs {
                match by_pid.iter_mut().find(|(q, _)| *q == p) {
                    Some((_, v)) => v.push(i),
                    None => by_pid.push((p, vec![i])),
                }
            }
            let results = run_parallel(&by_pid, |(p, list)| {
                let mut reports = Vec::new();
                for &i in list {
                    reports.push(engine::apply(*p, &patches[i], &opts)?);
                }
                Ok(reports)
            });
            report_all("applied", flatten(results), json, quiet)
        }
        UserCommand::Undo { pid, id, wait } => {
            let r = engine::undo(pid, &id, &wait.options())?;
            print_report("undid", &r, quiet);
            Ok(true)
        }
        UserCommand::Remove {
            all,
            pid,
            ids,
            wait,
        } => {
            if !all && ids.is_empty() {
                bail!("say which patches to remove: IDs, or --all");
            }
            let opts = wait.options();
            let pids = match pid {
                Some(p) => vec![p],
                None => hotsplice_process::all_pids(),
            };
            let mut jobs = Vec::new();
            for p in pids {
                let Ok(applied) = engine::applied(p) else {
                    continue;
                };
                // Newest first, so stacked patches come off in order.
                for h in applied.iter().rev() {
                    if all || ids.contains(&h.patch_id) {
                        jobs.push((p, h.patch_id.clone()));
                    }
                }
            }
            // One process's patches in sequence; processes in parallel.
            let mut by_pid: Vec<(i32, Vec<String>)> = Vec::new();
            for (p, id) in jobs {
                match by_pid.iter_mut().find(|(q, _)| *q == p) {
                    Some((_, v)) => v.push(id),
                    None => by_pid.push((p, vec![id])),
                }
            }
            let results = run_parallel(&by_pid, |(p, ids)| {
                let mut reports = Vec::new();
                for id in ids {
                    reports.push(engine::undo(*p, id, &opts)?);
                }
                Ok(reports)
            });
            report_all("undid", flatten(results), false, quiet)
        }
        UserCommand::Show { pid, json } => {
            let pids = match pid {
                Some(p) => vec![p],
                None => hotsplice_process::all_pids(),
            };
            let mut rows = Vec::new();
            for p in pids {
                match engine::applied(p) {
                    Ok(h) if !h.is_empty() || pid.is_some() => rows.push((p, h)),
                    Ok(_) => {}
                    Err(e) if pid.is_some() => return Err(e.into()),
                    Err(_) => {}
                }
            }
            if json {
                let v: Vec<_> = rows
                    .iter()
                    .map(|(p, hs)| serde_json::json!({
                        "pid": p,
                        "command": comm(*p),
                        "patches": hs.iter().map(|h| serde_json::json!({
                            "id": h.patch_id,
                            "target": h.target_name,
                            "build_id": h.target_build_id,
                            "description": h.description,
                            "applied_at": h.applied_at,
                            "functions": h.functions.iter().map(|f| &f.name).collect::<Vec<_>>(),
                        })).collect::<Vec<_>>(),
                    }))
                    .collect();
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else if rows.is_empty() {
                println!("no patches applied");
            } else {
                println!(
                    "{:<8} {:<16} {:<9} {:<20} FUNCTIONS",
                    "PID", "COMMAND", "ID", "TARGET"
                );
                for (p, hs) in &rows {
                    if hs.is_empty() {
                        println!("{:<8} {:<16} (none)", p, comm(*p));
                    }
                    for h in hs {
                        let names: Vec<&str> =
                            h.functions.iter().map(|f| f.name.as_str()).collect();
                        println!(
                            "{:<8} {:<16} {:<9} {:<20} {}",
                            p,
                            comm(*p),
                            h.patch_id,
                            h.target_name,
                            names.join(",")
                        );
                    }
                }
            }
            Ok(true)
        }
        UserCommand::ListTargets { json } => {
            let me = std::process::id() as i32;
            let mut by_object: std::collections::BTreeMap<(String, String), Vec<i32>> =
                Default::default();
            for p in hotsplice_process::all_pids() {
                if p == me {
                    continue;
                }
                let Ok(maps) = hotsplice_process::read_maps(p) else {
                    continue;
                };
                let Ok(objs) = engine::loaded_objects(p, &maps) else {
                    continue;
                };
                for o in objs {
                    by_object.entry((o.path, o.build_id)).or_default().push(p);
                }
            }
            if json {
                let v: Vec<_> = by_object
                    .iter()
                    .map(|((path, id), pids)| serde_json::json!({"path": path, "build_id": id, "pids": pids}))
                    .collect();
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                println!("{:<48} {:<42} PIDS", "OBJECT", "BUILD-ID");
                for ((path, id), pids) in &by_object {
                    let list: Vec<String> = pids.iter().map(|p| p.to_string()).collect();
                    println!("{:<48} {:<42} {}", path, id, list.join(","));
                }
            }
            Ok(true)
        }
    }
}

/// Run `f` for each job on a few worker threads (each process is handled
/// start to end by one thread, as ptrace requires).
fn run_parallel<J: Sync, T: Send>(
    jobs: &[J],
    f: impl Fn(&J) -> engine::Result<T> + Sync,
) -> Vec<(&J, engine::Result<T>)> {
    let workers = jobs.len().clamp(1, 8);
    let next = std::sync::atomic::AtomicUsize::new(0);
    let mut out: Vec<(usize, engine::Result<T>)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..workers)
            .map(|_| {
                s.spawn(|| {
                    let mut mine = Vec::new();
                    loop {
                        let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        if i >= jobs.len() {
                            break;
                        }
                        mine.push((i, f(&jobs[i])));
                    }
                    mine
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().expect("worker"))
            .collect()
    });
    out.sort_by_key(|(i, _)| *i);
    out.into_iter().map(|(i, r)| (&jobs[i], r)).collect()
}

fn flatten<J, T>(results: Vec<(J, engine::Result<Vec<T>>)>) -> Vec<(J, engine::Result<T>)>
where
    J: Copy,
{
    results
        .into_iter()
        .flat_map(|(job, r)| match r {
            Ok(v) => v.into_iter().map(|x| (job, Ok(x))).collect::<Vec<_>>(),
            Err(e) => vec![(job, Err(e))],
        })
        .collect()
}

fn report_all<J>(
    verb: &str,
    results: Vec<(J, engine::Result<Report>)>,
    json: bool,
    quiet: bool,
) -> Result<bool> {
    let mut ok = true;
    let mut reports = Vec::new();
    for (_, r) in results {
        match r {
            Ok(r) => {
                if !json {
                    print_report(verb, &r, quiet);
                }
                reports.push(r);
            }
            Err(e) => {
                ok = false;
                eprintln!("hotsplice: error: {e}");
            }
        }
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&reports)?);
    }
    Ok(ok)
}
