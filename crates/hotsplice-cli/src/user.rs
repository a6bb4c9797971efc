//! `hotsplice user ...` and `hotsplice all ...`: the agent's answers, rendered.

use crate::app::App;
use crate::journal::Stream;
use crate::output::esc;
use anyhow::Result;
use clap::{Args, Subcommand};
use hotsplice_agent::{comm, pids, Outcome, ProcessPatches, Run};
use hotsplice_engine::Report;
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
    /// Apply patch files to running processes: the one of --pid, else
    /// every process that maps a patch's target.
    Apply {
        #[arg(long, conflicts_with = "all")]
        pid: Option<i32>,
        /// Every process that maps a patch's target (the default).
        #[arg(long)]
        all: bool,
        /// Use patches without a trusted signature (development only).
        #[arg(long)]
        allow_unsigned: bool,
        /// Apply even while threads are inside a replaced function (one
        /// that never returns, a main loop): they finish that call in the
        /// old code, every new call takes the new code. Only for patches
        /// whose author accepts old and new running side by side.
        #[arg(long)]
        let_running_finish: bool,
        /// In a process that maps libgcc_s, apply even when no thread can
        /// make the call that registers the patch's unwind information
        /// (none waits in a system call, outside signal handlers, for
        /// 2 s): the next `hotsplice user` command or daemon pass that
        /// finds one registers it. Until then a C++ exception thrown
        /// through a patched function ends the program.
        #[arg(long)]
        register_unwind_later: bool,
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
    /// Each thread's stack as the busy check walks it (unwind tables);
    /// without --pid, a summary over every process.
    Stacks {
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
    /// Applied kernel patches, then the patches applied in each process.
    Show {
        #[arg(long)]
        available: bool,
    },
    /// Apply the feed's kernel patches, then the installed patches to
    /// every process that needs them.
    Upgrade {
        #[command(flatten)]
        wait: Wait,
    },
    /// Remove kernel patches and the patches applied in processes.
    Remove {
        #[arg(long)]
        all: bool,
        #[command(flatten)]
        wait: Wait,
    },
    /// Processes and the patchable objects they map.
    ListTargets,
}

pub fn run_all(app: &App, cmd: AllCommand) -> Result<bool> {
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
            ok &= run_kernel(app, k)?;
        } else if !app.quiet {
            outln!("== kernel: no livepatch support in this kernel (CONFIG_LIVEPATCH); skipped");
        }
        outln!("== user");
    }
    ok &= run_user(
        app,
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

fn print_report(verb: &str, r: &Report, quiet: bool, verbose: bool) {
    let name = comm(r.pid);
    let message = format!(
        "pid {} ({}): {verb} {} ({}){}: {} function(s); {} thread(s) stopped for {:.3} ms{}{}{}",
        r.pid,
        esc(&name),
        esc(&r.id),
        esc(&r.target),
        r.replaced
            .as_ref()
            .map(|o| format!(", replacing {}", esc(o)))
            .unwrap_or_default(),
        r.functions,
        r.threads,
        r.stopped.as_secs_f64() * 1e3,
        r.stopped_running
            .map(|d| format!(" (those running {:.3} ms)", d.as_secs_f64() * 1e3))
            .unwrap_or_default(),
        if r.times.parked > 0 {
            format!(
                ", {} sleeping one(s) parked in their calls after {:.3} ms at most",
                r.times.parked,
                r.times.batch_us / 1e3
            )
        } else {
            String::new()
        },
        if r.attempts > 1 {
            format!(" (after {} tries: code was busy)", r.attempts)
        } else {
            String::new()
        }
    );
    let result = if verb == "undid" { "removed" } else { verb };
    crate::app::process_line(Stream::Out, !quiet, &message, &r.id, r.pid, &name, result);
    if quiet {
        return;
    }
    if r.lead_out.threads > 0 {
        outln!(
            "  led {} thread(s) out of busy code first ({} slice(s), {:.3} ms, the other threads stopped)",
            r.lead_out.threads,
            r.lead_out.slices,
            r.lead_out.time.as_secs_f64() * 1e3
        );
    }
    for l in &r.still_in_old {
        outln!(
            "  thread {} is still inside `{}`: it finishes that call in the old code",
            l.tid,
            esc(&l.function)
        );
    }
    if let Some(w) = &r.warning {
        errln!("hotsplice: warning: pid {}: {}", r.pid, esc(w));
    }
    if let Some(u) = r.unwind.as_ref().filter(|_| verbose) {
        match &r.unwind_call {
            Some(c) => outln!(
                "  {u} (by thread {}, stopped alone for {:.3} ms before the window)",
                c.tid,
                c.stopped.as_secs_f64() * 1e3
            ),
            None => outln!("  {u}"),
        }
    }
    if verbose {
        outln!(
            "  stacks: {} walked exactly, {} scanned conservatively",
            r.stacks.exact,
            r.stacks.scanned
        );
        for f in &r.stacks.fallbacks {
            outln!("    {}", esc(f));
        }
    }
}

pub fn run_user(app: &App, cmd: UserCommand) -> Result<bool> {
    let agent = &app.agent;
    if !matches!(
        cmd,
        UserCommand::ListTargets { .. } | UserCommand::Show { .. } | UserCommand::Stacks { .. }
    ) {
        // Finish or roll back what a killed hotsplice left half done.
        agent.recover()?;
    }
    let quiet = app.quiet;
    match cmd {
        UserCommand::Install {
            allow_unsigned,
            files,
        } => {
            for e in agent.install(&files, allow_unsigned)? {
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
            for id in ids {
                let removed = agent.uninstall(&id)?;
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
            all: _,
            allow_unsigned,
            let_running_finish,
            register_unwind_later,
            wait,
            json,
            files,
        } => {
            let mut opts = agent.options(wait.busy_timeout);
            opts.let_running_finish = let_running_finish;
            opts.unwind_later = register_unwind_later;
            let plan = agent.plan_apply(pid, &files, allow_unsigned)?;
            if !quiet {
                for &i in &plan.unused {
                    let m = &plan.patches[i].meta;
                    errln!(
                        "hotsplice: no running process maps {} (build-id {})",
                        esc(&m.target.name),
                        esc(&m.target.build_id)
                    );
                }
            }
            if app.dry_run {
                for (p, i) in &plan.jobs {
                    outln!(
                        "would apply {} to pid {p} ({})",
                        esc(&plan.patches[*i].meta.id),
                        esc(&comm(*p))
                    );
                }
                return Ok(true);
            }
            report_all(
                "applied",
                agent.apply(&plan, &opts),
                json,
                quiet,
                app.verbose > 0,
            )
        }
        UserCommand::Undo { pid, id, wait } => {
            // Any text: an id that names nothing gets the engine's "not applied".
            let id = hotsplice_patch::PatchId::unchecked(id);
            let r = agent.undo(pid, &id, &agent.options(wait.busy_timeout))?;
            print_report("undid", &r, quiet, app.verbose > 0);
            Ok(true)
        }
        UserCommand::Remove {
            all,
            pid,
            ids,
            wait,
        } => {
            let opts = agent.options(wait.busy_timeout);
            let ids: Vec<_> = ids
                .into_iter()
                .map(hotsplice_patch::PatchId::unchecked)
                .collect();
            let mut plan = agent.plan_removal(all, pid, &ids)?;
            for c in &plan.warnings {
                errln!("hotsplice: warning: {}", esc(&c.to_string()));
            }
            let refused: Vec<_> = plan.refused.drain(..).map(Err).collect();
            if app.dry_run {
                for (p, id) in &plan.jobs {
                    outln!("would undo {} in pid {p} ({})", esc(id), esc(&comm(*p)));
                }
                return report_all(
                    "undid",
                    Run {
                        results: refused,
                        not_started: 0,
                    },
                    false,
                    quiet,
                    false,
                );
            }
            let mut run = agent.remove(&plan, &opts);
            run.results.splice(0..0, refused);
            report_all("undid", run, false, quiet, app.verbose > 0)
        }
        UserCommand::Show {
            pid,
            available,
            json,
        } => {
            if available {
                show_available(app, json)
            } else {
                show_applied(app, pid, json)
            }
        }
        UserCommand::ListTargets { json } => list_targets(app, json),
        UserCommand::Stacks { pid, json } => show_stacks(app, pid, json),
        UserCommand::Upgrade {
            pid,
            allow_unsigned,
            wait,
            json,
        } => upgrade(app, pid, allow_unsigned, wait, json),
    }
}

fn report_all(verb: &str, run: Run, json: bool, quiet: bool, verbose: bool) -> Result<bool> {
    crate::terminate::left_undone(run.not_started);
    let mut ok = true;
    let mut reports = Vec::new();
    for r in run.results {
        match r {
            Ok(r) => {
                if !json {
                    print_report(verb, &r, quiet, verbose);
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

fn show_applied(app: &App, pid: Option<i32>, json: bool) -> Result<bool> {
    let rows = app.agent.applied(pid)?;
    if json {
        outln!("{}", serde_json::to_string_pretty(&rows)?);
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
        for row in &rows {
            applied_rows(row);
        }
    }
    Ok(true)
}

/// The lines `show` prints for one process.
fn applied_rows(row: &ProcessPatches) {
    let (p, cmd) = (row.pid, esc(&row.command));
    for c in &row.corrupt {
        outln!(
            "{:<8} {:<16} {:<9} forged or corrupt patch record at {:#x}, not acted upon: {}",
            p,
            cmd,
            c.patch_id.as_deref().map_or("?".into(), esc),
            c.map_start,
            esc(&c.why)
        );
    }
    for e in &row.interrupted {
        outln!(
            "{:<8} {:<16} {:<9} interrupted {} (hotsplice was stopped at step {}): some functions may be old, some new; the next `hotsplice user` command that changes patches finishes or rolls it back",
            p,
            cmd,
            esc(&e.id),
            e.op.name(),
            e.step.name()
        );
    }
    for u in &row.unwind_registered {
        match &u.outcome {
            hotsplice_engine::LateOutcome::Registered { tid } => outln!(
                "{:<8} {:<16} {:<9} registered its unwind information with libgcc_s now (thread {tid})",
                p,
                cmd,
                esc(&u.patch)
            ),
            hotsplice_engine::LateOutcome::NotYet { why } => outln!(
                "{:<8} {:<16} {:<9} unwind information not registered yet: {}",
                p,
                cmd,
                esc(&u.patch),
                esc(why)
            ),
        }
    }
    for s in &row.still_in_old {
        outln!(
            "{:<8} {:<16} {:<9} thread {} still runs the old `{}` (until that call returns)",
            p,
            cmd,
            esc(&s.patch),
            s.tid,
            esc(&s.function)
        );
    }
    if row.patches.is_empty() && row.corrupt.is_empty() && row.interrupted.is_empty() {
        outln!("{:<8} {:<16} (none)", p, cmd);
    }
    for h in &row.patches {
        outln!(
            "{:<8} {:<16} {:<9} {:<20} {}",
            p,
            cmd,
            esc(&h.id),
            esc(&h.target),
            esc(&h.functions.join(","))
        );
    }
}

fn list_targets(app: &App, json: bool) -> Result<bool> {
    let targets = app.agent.targets();
    if json {
        outln!("{}", serde_json::to_string_pretty(&targets)?);
    } else {
        outln!("{:<48} {:<42} PIDS", "OBJECT", "BUILD-ID");
        for t in &targets {
            let list: Vec<String> = t.pids.iter().map(|p| p.to_string()).collect();
            outln!(
                "{:<48} {:<42} {}",
                esc(&t.path),
                esc(&t.build_id),
                list.join(",")
            );
        }
    }
    Ok(true)
}

fn upgrade(
    app: &App,
    pid: Option<i32>,
    allow_unsigned: bool,
    wait: Wait,
    json: bool,
) -> Result<bool> {
    let agent = &app.agent;
    let inst = agent.installed_patches(allow_unsigned)?;
    if inst.patches.is_empty() {
        if !app.quiet {
            outln!("no patches installed (hotsplice user install FILE...)");
        }
        return Ok(true);
    }
    let opts = agent.options(wait.busy_timeout);
    let pids = pids(pid);
    let interactive = std::io::stdin().is_terminal() && std::io::stderr().is_terminal();
    if interactive && !app.yes && !app.dry_run {
        let n = agent
            .plan_upgrade(&pids, &inst)
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
    let progress = !app.quiet && !json && std::io::stderr().is_terminal();
    let bar = progress.then(|| progress_bar(pids.len()));
    let run = agent.upgrade_with_progress(&pids, &inst, &opts, app.dry_run, |done| {
        if let Some(b) = &bar {
            b.set_position(done as u64)
        }
    });
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    crate::terminate::left_undone(run.not_started);
    let ok = !run.failed();
    if json {
        outln!("{}", serde_json::to_string_pretty(&run.outcomes)?);
        return Ok(ok);
    }
    for o in &run.outcomes {
        match o {
            Outcome::Planned { pid, id, replaces } if !app.quiet => outln!(
                "would apply {} to pid {pid} ({}){}",
                esc(id),
                esc(&comm(*pid)),
                replaces
                    .as_ref()
                    .map(|r| format!(", replacing {}", esc(r)))
                    .unwrap_or_default()
            ),
            Outcome::Skipped { pid, why } if !app.quiet => {
                outln!("skipped pid {pid} ({}): {}", esc(&comm(*pid)), esc(why))
            }
            Outcome::Failed { pid, id, why } => {
                let name = comm(*pid);
                let message = format!(
                    "failed: {} in pid {pid} ({}): {}",
                    esc(id),
                    esc(&name),
                    esc(why)
                );
                crate::app::process_line(Stream::Err, true, &message, id, *pid, &name, "failed");
            }
            Outcome::Patched {
                pid,
                id,
                replaced,
                stopped_us,
            } => {
                let name = comm(*pid);
                let message = format!(
                    "patched pid {pid} ({}) with {}{}; stopped {stopped_us} us",
                    esc(&name),
                    esc(id),
                    replaced
                        .as_ref()
                        .map(|r| format!(" replacing {}", esc(r)))
                        .unwrap_or_default()
                );
                let print = app.verbose > 0;
                crate::app::process_line(Stream::Out, print, &message, id, *pid, &name, "applied");
            }
            _ => {}
        }
    }
    if !app.quiet {
        outln!(
            "summary: {} patched, {} already patched, {} skipped, {} failed{}",
            run.count(|o| matches!(o, Outcome::Patched { .. })),
            run.count(|o| matches!(o, Outcome::AlreadyPatched { .. })),
            run.count(|o| matches!(o, Outcome::Skipped { .. })),
            run.count(|o| matches!(o, Outcome::Failed { .. })),
            if app.dry_run {
                format!(
                    ", {} planned (dry run: nothing changed)",
                    run.count(|o| matches!(o, Outcome::Planned { .. }))
                )
            } else {
                String::new()
            }
        );
    }
    Ok(ok)
}

/// A progress bar on standard error (indicatif; drawn only on a
/// terminal): `[####    ] k/n processes`.
fn progress_bar(total: usize) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::with_draw_target(
        Some(total as u64),
        indicatif::ProgressDrawTarget::stderr(),
    );
    if let Ok(style) =
        indicatif::ProgressStyle::with_template("[{bar:30}] {pos}/{len} processes {elapsed}")
    {
        bar.set_style(style.progress_chars("## "));
    }
    bar
}

fn show_available(app: &App, json: bool) -> Result<bool> {
    let rows = app.agent.available()?;
    if json {
        outln!("{}", serde_json::to_string_pretty(&rows)?);
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
    for r in rows {
        let needed = if r.current { r.needed_by.len() } else { 0 };
        outln!(
            "{:<9} {:<6} {:<20} {:<10} {:<10} {}",
            r.id,
            r.level,
            esc(&r.target.name),
            r.applied_in.len(),
            needed,
            esc(&r.description)
        );
    }
    Ok(true)
}

fn show_stacks(app: &App, pid: Option<i32>, json: bool) -> Result<bool> {
    let all = app.agent.stacks(pid)?;
    if json {
        outln!("{}", serde_json::to_string_pretty(&all)?);
        return Ok(true);
    }
    if pid.is_some() {
        for p in &all {
            for t in &p.threads {
                outln!(
                    "thread {} ({}): {}",
                    t.tid,
                    if t.exact { "exact" } else { "incomplete" },
                    esc(&t.end)
                );
                for (i, f) in t.frames.iter().enumerate() {
                    outln!(
                        "  #{i:<3} {:#018x} {}+{:#x}",
                        f.pc,
                        esc(f.object.as_deref().unwrap_or("?")),
                        f.vaddr
                    );
                }
            }
            outln!(
                "threads stopped for {:.3} ms",
                p.stopped.as_secs_f64() * 1e3
            );
        }
        return Ok(true);
    }
    // Over the machine: how many stacks walked exactly, and why not.
    let mut why: std::collections::BTreeMap<String, usize> = Default::default();
    let (mut threads, mut exact) = (0, 0);
    for p in &all {
        for t in &p.threads {
            threads += 1;
            if t.exact {
                exact += 1;
            } else {
                // The reason with its addresses as "PC", to group by.
                let key = reason_key(&t.end);
                *why.entry(key).or_default() += 1;
            }
        }
    }
    outln!(
        "{} processes, {threads} threads: {exact} stacks walked exactly, {} not",
        all.len(),
        threads - exact
    );
    for (w, n) in why {
        outln!("  {n:>5}  {}", esc(&w));
    }
    Ok(true)
}

/// Where a walk stopped, its addresses replaced by `PC` (to group the
/// threads of every process by reason).
fn reason_key(end: &str) -> String {
    end.split_whitespace()
        .map(|w| {
            let open = if w.starts_with('(') { "(" } else { "" };
            match w[open.len()..].strip_prefix("0x") {
                Some(hex) => {
                    let rest = hex.trim_start_matches(|c: char| c.is_ascii_hexdigit());
                    format!("{open}PC{rest}")
                }
                None => w.to_string(),
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// `all upgrade` as the autoinstall job runs it.
pub fn upgrade_all(app: &App) -> Result<bool> {
    run_all(
        app,
        AllCommand::Upgrade {
            wait: Wait { busy_timeout: None },
        },
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_reason_keeps_its_words_with_addresses_as_pc() {
        assert_eq!(
            super::reason_key("no unwind information for 0x7f00a1 in /lib/x.so (no FDE covers it)"),
            "no unwind information for PC in /lib/x.so (no FDE covers it)"
        );
        assert_eq!(
            super::reason_key("at 0x401000: the frame does not move up the stack"),
            "at PC: the frame does not move up the stack"
        );
        assert_eq!(
            super::reason_key("0xdead is in no mapped object"),
            "PC is in no mapped object"
        );
    }
}
