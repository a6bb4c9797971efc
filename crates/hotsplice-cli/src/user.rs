//! `hotsplice user|kernel|all ...`.

use crate::context::{comm, exe, exited, Ctx};
use crate::output::esc;
use anyhow::{bail, Result};
use clap::{Args, Subcommand};
use hotsplice_engine::{self as engine, Report};
use hotsplice_store::Entry;
use hotsplice_trust::Verified;
use std::io::IsTerminal;
use std::path::PathBuf;

#[derive(Args, Clone)]
pub struct Wait {
    /// Seconds to keep retrying while a thread is inside code being replaced
    /// (default: `busy_timeout` of the configuration, 5).
    #[arg(long)]
    busy_timeout: Option<f64>,
}

#[derive(Subcommand)]
pub enum UserCommand {
    /// Verify patch files and put them into the local store.
    Install {
        #[arg(long)]
        allow_unsigned: bool,
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Drop patches from the store (they stay applied where they are).
    Uninstall {
        #[arg(required = true)]
        ids: Vec<String>,
    },
    /// Apply patch files to running processes.
    Apply {
        #[arg(long, required_unless_present = "all", conflicts_with = "all")]
        pid: Option<i32>,
        /// Every process that maps a patch's target.
        #[arg(long)]
        all: bool,
        /// Use patches without a trusted signature (development only).
        #[arg(long)]
        allow_unsigned: bool,
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
    /// Undo patches: those named, or all (--all); in one process or everywhere.
    Remove {
        #[arg(long)]
        all: bool,
        #[arg(long)]
        pid: Option<i32>,
        ids: Vec<String>,
        #[command(flatten)]
        wait: Wait,
    },
    /// Patches applied, per process; --available: installed ones and where they apply.
    Show {
        #[arg(long)]
        pid: Option<i32>,
        #[arg(long)]
        available: bool,
        #[arg(long)]
        json: bool,
    },
    /// Processes and the patchable objects they map, with build-ids.
    ListTargets {
        #[arg(long)]
        json: bool,
    },
    /// Apply every installed patch to every process that needs it.
    Upgrade {
        #[arg(long)]
        pid: Option<i32>,
        /// Use installed patches without a signature (development only):
        /// every patch is verified again on use, whatever the store says.
        #[arg(long)]
        allow_unsigned: bool,
        #[command(flatten)]
        wait: Wait,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
pub enum AllCommand {
    Show {
        #[arg(long)]
        available: bool,
    },
    Upgrade {
        #[command(flatten)]
        wait: Wait,
    },
    Remove {
        #[arg(long)]
        all: bool,
        #[command(flatten)]
        wait: Wait,
    },
    ListTargets,
}

pub fn run_all(ctx: &Ctx, cmd: AllCommand) -> Result<bool> {
    use crate::kernel::{run_kernel, KernelCommand};
    let kernel_cmd = match &cmd {
        AllCommand::Show { available } => Some(KernelCommand::Show {
            available: *available,
            count: false,
            from: None,
        }),
        AllCommand::Upgrade { .. } => Some(KernelCommand::Upgrade {
            from: None,
            allow_unsigned: false,
        }),
        AllCommand::Remove { all, .. } => Some(KernelCommand::Remove {
            all: *all,
            ids: vec![],
        }),
        AllCommand::ListTargets => None,
    };
    let mut ok = true;
    if let Some(k) = kernel_cmd {
        if std::path::Path::new("/sys/kernel/livepatch").exists() {
            outln!("== kernel");
            ok &= run_kernel(ctx, k)?;
        } else if !ctx.quiet {
            outln!("== kernel: no livepatch support in this kernel (CONFIG_LIVEPATCH); skipped");
        }
        outln!("== user");
    }
    ok &= run_user(
        ctx,
        match cmd {
            AllCommand::Show { available } => UserCommand::Show {
                pid: None,
                available,
                json: false,
            },
            AllCommand::Upgrade { wait } => UserCommand::Upgrade {
                pid: None,
                allow_unsigned: false,
                wait,
                json: false,
            },
            AllCommand::Remove { all, wait } => UserCommand::Remove {
                all,
                pid: None,
                ids: vec![],
                wait,
            },
            AllCommand::ListTargets => UserCommand::ListTargets { json: false },
        },
    )?;
    Ok(ok)
}

fn print_report(verb: &str, r: &Report, quiet: bool) {
    if quiet {
        return;
    }
    outln!(
        "pid {} ({}): {verb} {} ({}){}: {} function(s); {} thread(s) stopped for {:.3} ms{}",
        r.pid,
        esc(&comm(r.pid)),
        esc(&r.id),
        esc(&r.target),
        r.replaced
            .as_ref()
            .map(|o| format!(", replacing {}", esc(o)))
            .unwrap_or_default(),
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

/// Run `f` for each job on a few worker threads (each process is handled
/// start to end by one thread, as ptrace requires). After a termination
/// request no job starts; the results are those of the jobs that ran.
fn run_parallel<J: Sync, T: Send>(jobs: &[J], f: impl Fn(&J) -> T + Sync) -> Vec<T> {
    // More workers than CPUs only stretches each process's stop window.
    let cpus = std::thread::available_parallelism().map_or(2, |n| n.get());
    let workers = jobs.len().clamp(1, cpus.clamp(1, 8));
    let next = std::sync::atomic::AtomicUsize::new(0);
    let mut out: Vec<(usize, T)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..workers)
            .map(|_| {
                s.spawn(|| {
                    let mut mine = Vec::new();
                    loop {
                        let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        if i >= jobs.len() {
                            break;
                        }
                        if crate::terminate::requested().is_some() {
                            // Finish what is in flight, start nothing new.
                            crate::terminate::left_undone(1);
                            continue;
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
    out.into_iter().map(|(_, r)| r).collect()
}

/// Group `(pid, item)` jobs per process, keeping order.
fn by_pid<T>(jobs: Vec<(i32, T)>) -> Vec<(i32, Vec<T>)> {
    let mut out: Vec<(i32, Vec<T>)> = Vec::new();
    for (p, t) in jobs {
        match out.iter_mut().find(|(q, _)| *q == p) {
            Some((_, v)) => v.push(t),
            None => out.push((p, vec![t])),
        }
    }
    out
}

pub fn run_user(ctx: &Ctx, cmd: UserCommand) -> Result<bool> {
    if !matches!(
        cmd,
        UserCommand::ListTargets { .. } | UserCommand::Show { .. }
    ) {
        ctx.recover()?;
    }
    let quiet = ctx.quiet;
    match cmd {
        UserCommand::Install {
            allow_unsigned,
            files,
        } => {
            let store = ctx.store()?;
            for f in files {
                let patch = ctx.read_verified(&f, allow_unsigned)?;
                let e = store.install(patch.file(), &patch, &patch.signer().key_id())?;
                if !quiet {
                    outln!(
                        "installed {} (level {}) for {} build-id {}",
                        esc(&e.id),
                        e.level,
                        esc(&e.target.name),
                        esc(&e.target.build_id)
                    );
                }
            }
            Ok(true)
        }
        UserCommand::Uninstall { ids } => {
            let store = ctx.store()?;
            for id in ids {
                let removed = store.uninstall(&id)?;
                if !quiet {
                    match removed {
                        Some(_) => outln!("uninstalled {}", esc(&id)),
                        None => outln!(
                            "removed the invalid index entry for {} (no file deleted)",
                            esc(&id)
                        ),
                    }
                }
            }
            Ok(true)
        }
        UserCommand::Apply {
            pid,
            all,
            allow_unsigned,
            wait,
            json,
            files,
        } => {
            if let Some(why) = pid.and_then(exited) {
                bail!("{why}");
            }
            let opts = ctx.options(wait.busy_timeout);
            let mut patches: Vec<Verified> = Vec::new();
            for f in &files {
                patches.push(ctx.read_verified(f, allow_unsigned)?);
            }
            let mut jobs: Vec<(i32, usize)> = Vec::new();
            for (i, p) in patches.iter().enumerate() {
                match pid {
                    Some(pid) => jobs.push((pid, i)),
                    None => {
                        let pids = engine::processes_mapping(&p.meta.target.build_id);
                        if pids.is_empty() && !quiet {
                            errln!(
                                "hotsplice: no running process maps {} (build-id {})",
                                esc(&p.meta.target.name),
                                esc(&p.meta.target.build_id)
                            );
                        }
                        jobs.extend(pids.into_iter().map(|pid| (pid, i)));
                    }
                }
            }
            let _ = all;
            if ctx.dry_run {
                for (p, i) in &jobs {
                    outln!(
                        "would apply {} to pid {p} ({})",
                        esc(&patches[*i].meta.id),
                        esc(&comm(*p))
                    );
                }
                return Ok(true);
            }
            let grouped = by_pid(jobs);
            let results = run_parallel(&grouped, |(p, list)| {
                let _lock = ctx.lock_process(*p);
                list.iter()
                    .map(|&i| engine::apply(*p, &patches[i], &opts))
                    .collect::<Vec<_>>()
            });
            report_all(
                "applied",
                results.into_iter().flatten().collect(),
                json,
                quiet,
            )
        }
        UserCommand::Undo { pid, id, wait } => {
            if let Some(why) = exited(pid) {
                bail!("{why}");
            }
            let _lock = ctx.lock_process(pid)?;
            // As typed: the engine says whether such a patch is applied.
            let id = hotsplice_patch::PatchId::unchecked(id);
            let r = engine::undo(pid, &id, &ctx.options(wait.busy_timeout))?;
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
            let opts = ctx.options(wait.busy_timeout);
            let pids = match pid {
                Some(p) => vec![p],
                None => hotsplice_process::all_pids(),
            };
            let mut jobs = Vec::new();
            let mut refused = Vec::new();
            for p in pids {
                let Ok(state) = engine::state(p) else {
                    continue;
                };
                // A forged or damaged record is reported, never acted upon:
                // an error for the process asked about, a warning when
                // going over the machine (any user can forge one in their
                // own process; that must not fail root's removal).
                for c in state.corrupt {
                    if all
                        || c.patch_id
                            .as_ref()
                            .is_some_and(|id| ids.iter().any(|i| id == i))
                    {
                        if pid.is_some() {
                            refused.push(Err(engine::EngineError::CorruptRecord(c)));
                        } else {
                            errln!("hotsplice: warning: {}", esc(&c.to_string()));
                        }
                    }
                }
                // Newest first, so stacked patches come off in order.
                for h in state.patches.iter().rev() {
                    if all || ids.iter().any(|i| h.patch_id == *i) {
                        jobs.push((p, h.patch_id.clone()));
                    }
                }
            }
            if ctx.dry_run {
                for (p, id) in &jobs {
                    outln!("would undo {} in pid {p} ({})", esc(id), esc(&comm(*p)));
                }
                return report_all("undid", refused, false, quiet);
            }
            let grouped = by_pid(jobs);
            let results = run_parallel(&grouped, |(p, ids)| {
                let _lock = ctx.lock_process(*p);
                ids.iter()
                    .map(|id| engine::undo(*p, id, &opts))
                    .collect::<Vec<_>>()
            });
            report_all(
                "undid",
                refused
                    .into_iter()
                    .chain(results.into_iter().flatten())
                    .collect(),
                false,
                quiet,
            )
        }
        UserCommand::Show {
            pid,
            available,
            json,
        } => {
            if available {
                show_available(ctx, json)
            } else {
                show_applied(ctx, pid, json)
            }
        }
        UserCommand::ListTargets { json } => list_targets(json),
        UserCommand::Upgrade {
            pid,
            allow_unsigned,
            wait,
            json,
        } => upgrade(ctx, pid, allow_unsigned, wait, json),
    }
}

fn report_all(
    verb: &str,
    results: Vec<engine::Result<Report>>,
    json: bool,
    quiet: bool,
) -> Result<bool> {
    let mut ok = true;
    let mut reports = Vec::new();
    for r in results {
        match r {
            Ok(r) => {
                if !json {
                    print_report(verb, &r, quiet);
                }
                reports.push(r);
            }
            Err(e) => {
                ok = false;
                errln!("hotsplice: error: {e}");
            }
        }
    }
    if json {
        outln!("{}", serde_json::to_string_pretty(&reports)?);
    }
    Ok(ok)
}

fn show_applied(ctx: &Ctx, pid: Option<i32>, json: bool) -> Result<bool> {
    let pids = match pid {
        Some(p) => vec![p],
        None => hotsplice_process::all_pids(),
    };
    // What a killed hotsplice left half done: shown as such, so that a
    // patch is never reported as applied while old code runs.
    let interrupted = ctx.interrupted();
    let in_flight = |p: i32| interrupted.iter().filter(move |e| e.pid == p);
    let mut rows = Vec::new();
    for p in pids {
        match engine::state(p) {
            Ok(st)
                if !st.patches.is_empty()
                    || !st.corrupt.is_empty()
                    || in_flight(p).next().is_some()
                    || pid.is_some() =>
            {
                rows.push((p, st))
            }
            Ok(_) => {}
            Err(e) if pid.is_some() => return Err(e.into()),
            Err(_) => {}
        }
    }
    if json {
        let v: Vec<_> = rows
            .iter()
            .map(|(p, st)| {
                let hs = &st.patches;
                serde_json::json!({
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
                    // Left half done by a killed hotsplice; the next
                    // command that changes patches finishes or rolls back.
                    "interrupted": in_flight(*p).map(|e| serde_json::json!({
                        "op": e.op,
                        "id": e.id,
                        "step": e.step,
                    })).collect::<Vec<_>>(),
                    // Forged or damaged records: reported, never acted upon.
                    "corrupt": st.corrupt.iter().map(|c| serde_json::json!({
                        "map_start": c.map_start,
                        "patch_id": c.patch_id,
                        "why": c.why,
                    })).collect::<Vec<_>>(),
                })
            })
            .collect();
        outln!("{}", serde_json::to_string_pretty(&v)?);
    } else if rows.is_empty() {
        outln!("no patches applied");
    } else {
        outln!(
            "{:<8} {:<16} {:<9} {:<20} FUNCTIONS",
            "PID",
            "COMMAND",
            "ID",
            "TARGET"
        );
        for (p, st) in &rows {
            let hs = &st.patches;
            for c in &st.corrupt {
                corrupt_row(c);
            }
            let mut half_done = false;
            for e in in_flight(*p) {
                half_done = true;
                outln!(
                    "{:<8} {:<16} {:<9} interrupted {} (hotsplice was stopped at step {}): some functions may be old, some new; the next `hotsplice user` command that changes patches finishes or rolls it back",
                    p,
                    esc(&comm(*p)),
                    esc(&e.id),
                    e.op,
                    e.step
                );
            }
            if hs.is_empty() && st.corrupt.is_empty() && !half_done {
                outln!("{:<8} {:<16} (none)", p, esc(&comm(*p)));
            }
            for h in hs {
                let names: Vec<&str> = h.functions.iter().map(|f| f.name.as_str()).collect();
                outln!(
                    "{:<8} {:<16} {:<9} {:<20} {}",
                    p,
                    esc(&comm(*p)),
                    esc(&h.patch_id),
                    esc(&h.target_name),
                    esc(&names.join(","))
                );
            }
        }
    }
    Ok(true)
}

/// The line `show` prints for a forged or damaged record.
fn corrupt_row(c: &engine::Corrupt) {
    outln!(
        "{:<8} {:<16} {:<9} forged or corrupt patch record at {:#x}, not acted upon: {}",
        c.pid,
        esc(&comm(c.pid)),
        c.patch_id.as_deref().map_or("?".into(), esc),
        c.map_start,
        esc(&c.why)
    );
}

fn list_targets(json: bool) -> Result<bool> {
    let me = std::process::id() as i32;
    let mut by_object: std::collections::BTreeMap<(String, String), Vec<i32>> = Default::default();
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
            by_object
                .entry((o.path, o.build_id.into()))
                .or_default()
                .push(p);
        }
    }
    if json {
        let v: Vec<_> = by_object
            .iter()
            .map(|((path, id), pids)| serde_json::json!({"path": path, "build_id": id, "pids": pids}))
            .collect();
        outln!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        outln!("{:<48} {:<42} PIDS", "OBJECT", "BUILD-ID");
        for ((path, id), pids) in &by_object {
            let list: Vec<String> = pids.iter().map(|p| p.to_string()).collect();
            outln!("{:<48} {:<42} {}", esc(path), esc(id), list.join(","));
        }
    }
    Ok(true)
}

/// What `upgrade` decided or did for one process and patch.
#[derive(Debug, serde::Serialize)]
#[serde(tag = "result", rename_all = "kebab-case")]
pub enum Outcome {
    Patched {
        pid: i32,
        id: String,
        replaced: Option<String>,
        stopped_us: u128,
    },
    AlreadyPatched {
        pid: i32,
        id: String,
    },
    Skipped {
        pid: i32,
        why: String,
    },
    Failed {
        pid: i32,
        id: String,
        why: String,
    },
    Planned {
        pid: i32,
        id: String,
        replaces: Option<String>,
    },
}

/// Installed patches (highest level per target), verified again on use:
/// unsigned ones only with `allow_unsigned` (the explicit flag), whatever
/// the store's index says.
pub fn current_patches(ctx: &Ctx, allow_unsigned: bool) -> Result<Vec<(Entry, Verified)>> {
    let store = ctx.store()?;
    let mut out = Vec::new();
    for e in store.current_levels()? {
        let patch = ctx.installed(&store, &e, allow_unsigned)?;
        out.push((e, patch));
    }
    Ok(out)
}

/// Bring one process up to the installed levels: apply what it needs,
/// replacing lower levels in the same stop window.
pub fn upgrade_process(
    ctx: &Ctx,
    pid: i32,
    patches: &[(Entry, Verified)],
    blacklist: &hotsplice_store::Blacklist,
    opts: &engine::ApplyOptions,
    dry_run: bool,
) -> Vec<Outcome> {
    let me = std::process::id() as i32;
    if pid == 1 || pid == me {
        return vec![];
    }
    let Ok(maps) = hotsplice_process::read_maps(pid) else {
        return vec![];
    };
    let Ok(objects) = engine::loaded_objects(pid, &maps) else {
        return vec![];
    };
    let wanted: Vec<&(Entry, Verified)> = patches
        .iter()
        .filter(|(e, _)| objects.iter().any(|o| o.build_id == e.target.build_id))
        .collect();
    if wanted.is_empty() {
        return vec![];
    }
    let exe_path = exe(pid);
    if let Some(pat) = blacklist.executable(&exe_path) {
        return vec![Outcome::Skipped {
            pid,
            why: format!("executable {exe_path} matches blacklist pattern `{pat}`"),
        }];
    }
    let _lock = ctx.lock_process(pid).ok();
    let applied = engine::applied(pid).unwrap_or_default();
    let mut out = Vec::new();
    for (e, patch) in wanted {
        if let Some(o) = objects.iter().find(|o| o.build_id == e.target.build_id) {
            if let Some(pat) = blacklist.target(&o.path) {
                out.push(Outcome::Skipped {
                    pid,
                    why: format!("{} matches blacklist pattern `{pat}`", o.path),
                });
                continue;
            }
        }
        if applied.iter().any(|h| h.patch_id == e.id) {
            out.push(Outcome::AlreadyPatched {
                pid,
                id: e.id.to_string(),
            });
            continue;
        }
        let lower = applied
            .iter()
            .rfind(|h| h.target_build_id == e.target.build_id)
            .map(|h| h.patch_id.clone());
        if dry_run {
            out.push(Outcome::Planned {
                pid,
                id: e.id.to_string(),
                replaces: lower.map(String::from),
            });
            continue;
        }
        out.push(
            match engine::apply_replacing(pid, patch, lower.as_ref(), opts) {
                Ok(r) => Outcome::Patched {
                    pid,
                    id: r.id.into(),
                    replaced: r.replaced.map(String::from),
                    stopped_us: r.stopped.as_micros(),
                },
                Err(err) => Outcome::Failed {
                    pid,
                    id: e.id.to_string(),
                    why: err.to_string(),
                },
            },
        );
    }
    out
}

fn upgrade(
    ctx: &Ctx,
    pid: Option<i32>,
    allow_unsigned: bool,
    wait: Wait,
    json: bool,
) -> Result<bool> {
    let patches = current_patches(ctx, allow_unsigned)?;
    if patches.is_empty() {
        if !ctx.quiet {
            outln!("no patches installed (hotsplice user install FILE...)");
        }
        return Ok(true);
    }
    let blacklist = ctx.blacklist()?;
    let opts = ctx.options(wait.busy_timeout);
    let pids = match pid {
        Some(p) => vec![p],
        None => hotsplice_process::all_pids(),
    };
    let interactive = std::io::stdin().is_terminal() && std::io::stderr().is_terminal();
    if interactive && !ctx.yes && !ctx.dry_run {
        let plan: Vec<Outcome> = pids
            .iter()
            .flat_map(|&p| upgrade_process(ctx, p, &patches, &blacklist, &opts, true))
            .collect();
        let n = plan
            .iter()
            .filter(|o| matches!(o, Outcome::Planned { .. }))
            .count();
        crate::output::progress(format_args!(
            "{n} patch application(s) to make. Go ahead [y/N]? "
        ));
        let mut answer = String::new();
        std::io::stdin().read_line(&mut answer)?;
        if !answer.trim().eq_ignore_ascii_case("y") {
            outln!("nothing done");
            return Ok(true);
        }
    }
    let done = std::sync::atomic::AtomicUsize::new(0);
    let total = pids.len();
    let progress = !ctx.quiet && !json && std::io::stderr().is_terminal();
    let outcomes: Vec<Outcome> = run_parallel(&pids, |&p| {
        let r = upgrade_process(ctx, p, &patches, &blacklist, &opts, ctx.dry_run);
        let k = done.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
        if progress {
            let width = 30;
            let filled = k * width / total.max(1);
            crate::output::progress(format_args!(
                "\r[{}{}] {k}/{total} processes",
                "#".repeat(filled),
                " ".repeat(width - filled)
            ));
        }
        r
    })
    .into_iter()
    .flatten()
    .collect();
    if progress {
        crate::output::progress(format_args!("\n"));
    }
    let ok = !outcomes.iter().any(|o| matches!(o, Outcome::Failed { .. }));
    if json {
        outln!("{}", serde_json::to_string_pretty(&outcomes)?);
        return Ok(ok);
    }
    let count = |f: fn(&Outcome) -> bool| outcomes.iter().filter(|o| f(o)).count();
    for o in &outcomes {
        match o {
            Outcome::Planned { pid, id, replaces } if !ctx.quiet => outln!(
                "would apply {} to pid {pid} ({}){}",
                esc(id),
                esc(&comm(*pid)),
                replaces
                    .as_ref()
                    .map(|r| format!(", replacing {}", esc(r)))
                    .unwrap_or_default()
            ),
            Outcome::Skipped { pid, why } if !ctx.quiet => {
                outln!("skipped pid {pid} ({}): {}", esc(&comm(*pid)), esc(why))
            }
            Outcome::Failed { pid, id, why } => {
                errln!(
                    "failed: {} in pid {pid} ({}): {}",
                    esc(id),
                    esc(&comm(*pid)),
                    esc(why)
                )
            }
            Outcome::Patched {
                pid,
                id,
                replaced,
                stopped_us,
            } if ctx.verbose > 0 => outln!(
                "patched pid {pid} ({}) with {}{}; stopped {stopped_us} us",
                esc(&comm(*pid)),
                esc(id),
                replaced
                    .as_ref()
                    .map(|r| format!(" replacing {}", esc(r)))
                    .unwrap_or_default()
            ),
            _ => {}
        }
    }
    if !ctx.quiet {
        outln!(
            "summary: {} patched, {} already patched, {} skipped, {} failed{}",
            count(|o| matches!(o, Outcome::Patched { .. })),
            count(|o| matches!(o, Outcome::AlreadyPatched { .. })),
            count(|o| matches!(o, Outcome::Skipped { .. })),
            count(|o| matches!(o, Outcome::Failed { .. })),
            if ctx.dry_run {
                format!(
                    ", {} planned (dry run: nothing changed)",
                    count(|o| matches!(o, Outcome::Planned { .. }))
                )
            } else {
                String::new()
            }
        );
    }
    Ok(ok)
}

fn show_available(ctx: &Ctx, json: bool) -> Result<bool> {
    let store = ctx.store()?;
    let entries = store.list()?;
    let current = store.current_levels()?;
    let mut rows = Vec::new();
    for e in &entries {
        let pids = engine::processes_mapping(&e.target.build_id);
        let applied_in: Vec<i32> = pids
            .iter()
            .copied()
            .filter(|&p| {
                engine::applied(p)
                    .map(|hs| hs.iter().any(|h| h.patch_id == e.id))
                    .unwrap_or(false)
            })
            .collect();
        let is_current = current.iter().any(|c| c.id == e.id);
        rows.push((e, pids, applied_in, is_current));
    }
    if json {
        let v: Vec<_> = rows
            .iter()
            .map(|(e, pids, applied, cur)| {
                serde_json::json!({
                    "id": e.id, "level": e.level, "target": e.target, "description": e.description,
                    "current": cur, "processes": pids, "applied_in": applied,
                    "needed_by": pids.iter().filter(|p| !applied.contains(p)).collect::<Vec<_>>(),
                })
            })
            .collect();
        outln!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(true);
    }
    if rows.is_empty() {
        outln!("no patches installed");
        return Ok(true);
    }
    outln!(
        "{:<9} {:<6} {:<20} {:<10} {:<10} DESCRIPTION",
        "ID",
        "LEVEL",
        "TARGET",
        "APPLIED",
        "NEEDED"
    );
    for (e, pids, applied, cur) in rows {
        let needed = if cur { pids.len() - applied.len() } else { 0 };
        outln!(
            "{:<9} {:<6} {:<20} {:<10} {:<10} {}",
            e.id,
            e.level,
            esc(&e.target.name),
            applied.len(),
            needed,
            esc(&e.description)
        );
    }
    Ok(true)
}
