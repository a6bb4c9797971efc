//! What a run found: the machine, the settings, each benchmark's result,
//! printed as tables or as JSON.

use crate::apply_all::AllResult;
use crate::call_cost::CostResult;
use crate::daemon::DaemonResult;
use crate::stats::Stat;
use crate::stop::StopResult;
use serde::Serialize;
use std::path::Path;
use std::process::Command;

#[derive(Serialize)]
pub struct Machine {
    pub nproc: usize,
    pub kernel: String,
    pub cpu: String,
    pub hotsplice: String,
    /// /proc/loadavg before and after the run (other load shows up as noise).
    pub loadavg_before: String,
    pub loadavg_after: String,
}

#[derive(Serialize)]
pub struct Settings {
    pub reps: usize,
    pub threads: Vec<usize>,
    pub processes: usize,
    pub all_rounds: usize,
    pub calls: u64,
    /// CPU the stop-time spinner had to itself (None: not pinned).
    pub spinner_cpu: Option<usize>,
    /// `exact` or `scan` (`--stack-walk`).
    pub stack_walk: String,
}

#[derive(Serialize)]
pub struct Output {
    pub machine: Machine,
    pub settings: Settings,
    pub stop: Vec<StopResult>,
    /// What registering unwind information with libgcc_s adds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unwind: Option<crate::unwind_reg::UnwindResult>,
    /// The other sections (absent with `--only-stop`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub apply_all: Option<AllResult>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub call_cost: Option<CostResult>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub daemon: Option<DaemonResult>,
}

pub fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

pub fn machine(hotsplice: &Path) -> Machine {
    let kernel = Command::new("uname")
        .arg("-r")
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .filter(|s| !s.is_empty())
        .or_else(|| std::fs::read_to_string("/proc/sys/kernel/osrelease").ok())
        .unwrap_or_else(|| "?".into())
        .trim()
        .to_string();
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_else(|| "?".into());
    Machine {
        nproc: std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1),
        kernel,
        cpu,
        hotsplice: hotsplice.display().to_string(),
        loadavg_before: loadavg(),
        loadavg_after: String::new(),
    }
}

/// A row of a stop-time table: the thread count, four columns 26 wide, then
/// `rest` as it is.
fn stop_row<S: AsRef<str>>(threads: &str, cols: [S; 4], rest: &str) {
    let [a, b, c, d] = cols.each_ref().map(AsRef::as_ref);
    println!("{threads:>16}  {a:<26} {b:<26} {c:<26} {d:<26} {rest}");
}

/// `   LABEL   WALL ms = PER ms per processNOTE`, the values in one column.
fn per_process(label: &str, wall: &Stat, per: f64, note: &str) {
    println!(
        "   {label:<24}{} ms = {per:.3} ms per process{note}",
        wall.show(1)
    );
}

pub fn print_human(o: &Output) {
    let m = &o.machine;
    let s = &o.settings;
    println!("hotsplice-bench");
    println!(
        "machine: {} CPUs ({}), kernel {}; hotsplice: {}",
        m.nproc, m.cpu, m.kernel, m.hotsplice
    );
    println!(
        "load average before / after: {} / {} (other load shows as background gap)",
        m.loadavg_before, m.loadavg_after
    );
    println!("all values: median (min..max) over the repetitions given");
    println!();
    println!(
        "1. Stop time of a one-function apply, {} reps each (in-process engine; µs unless noted)",
        s.reps
    );
    println!("   gap in target = largest gap seen by a thread spinning on CLOCK_MONOTONIC");
    println!(
        "   stopped = engine's Report.stopped; background = largest gap over as long, no apply"
    );
    stop_row(
        "threads",
        [
            "gap in target",
            "Report.stopped",
            "apply() wall",
            "background gap",
        ],
        &format!("{:<26}", "CLI apply wall (ms)"),
    );
    for r in &o.stop {
        let wall = format!("{:<26}", r.cli_apply_wall_ms.show(2));
        stop_row(
            &r.label(),
            [
                &r.apply_gap_us,
                &r.apply_stopped_us,
                &r.apply_wall_us,
                &r.background_gap_us,
            ]
            .map(|v| v.show(1)),
            &wall,
        );
    }
    println!();
    println!("   undo of the same patch, the gap during the CLI apply, and pauses (gaps >= 50 µs)");
    println!("   the spinner saw during apply | undo: median count, median total (µs)");
    stop_row(
        "threads",
        [
            "undo gap in target",
            "undo Report.stopped",
            "undo() wall",
            "CLI apply gap",
        ],
        &format!("{:<9} {:<19} {:>7}", "pauses", "paused total", "retried"),
    );
    for r in &o.stop {
        let pauses = format!("{} | {}", r.apply_pauses.median, r.undo_pauses.median);
        let paused = format!(
            "{:.1} | {:.1}",
            r.apply_paused_us.median, r.undo_paused_us.median
        );
        stop_row(
            &r.label(),
            [
                &r.undo_gap_us,
                &r.undo_stopped_us,
                &r.undo_wall_us,
                &r.cli_apply_gap_us,
            ]
            .map(|v| v.show(1)),
            &format!("{pauses:<9} {paused:<19} {:>7}", r.retried),
        );
    }
    println!();
    println!(
        "   where the apply's stop window went (engine's Report.times, µs; stack walk: {})",
        o.settings.stack_walk
    );
    println!(
        "{:>16}  {:<12} {:<12} {:<12} {:<12} {:<12} {:<12} {:<12} {:<21} stacks exact/scanned",
        "threads",
        "interrupt",
        "wait+regs",
        "read stacks",
        "check",
        "lead out",
        "writes",
        "resume",
        "states before/running"
    );
    for r in &o.stop {
        let p = |i: usize| format!("{:.1}", r.apply_phases_us[i].median);
        println!(
            "{:>16}  {:<12} {:<12} {:<12} {:<12} {:<12} {:<12} {:<12} {:<21} {}/{}",
            r.label(),
            p(0),
            p(1),
            p(2),
            p(3),
            p(4),
            p(5),
            p(6),
            format!("{} / {:.0}", p(7), r.apply_phases_us[8].median),
            r.stacks_exact,
            r.stacks_scanned
        );
    }
    println!();
    println!(
        "   leading busy threads out (Report.lead_out.time, µs; part of the stop of the others); running threads' stop = Report.stopped_running (threads on a CPU when the window began are stopped last, let go first), apply | undo"
    );
    stop_row(
        "threads",
        [
            "apply lead out",
            "undo lead out",
            "check per thread",
            "running threads' stop a | u",
        ],
        "",
    );
    for r in &o.stop {
        stop_row(
            &r.label(),
            [
                r.apply_lead_out_us.show(1),
                r.undo_lead_out_us.show(1),
                r.check_per_thread_us.show(2),
                format!(
                    "{:.1} | {:.1}",
                    r.apply_running_us.median, r.undo_running_us.median
                ),
            ],
            "",
        );
    }
    println!();
    println!(
        "   sleeping threads: parked in their system calls (stopped for their batch only) / kept stopped for the window (Report.times.parked / .kept); longest batch stop; longest any one thread was held (Report.times.held_us), apply | undo; active threads' largest lateness waking from a 10 ms sleep (in the target), apply | undo | background"
    );
    stop_row(
        "threads",
        [
            "parked / kept",
            "batch stop",
            "held a | u",
            "woke late a | u | bg",
        ],
        "",
    );
    for r in &o.stop {
        stop_row(
            &r.label(),
            [
                format!("{:.0} / {:.0}", r.apply_parked.median, r.apply_kept.median),
                r.apply_batch_us.show(1),
                format!(
                    "{:.1} | {:.1}",
                    r.apply_held_us.median, r.undo_held_us.median
                ),
                format!(
                    "{:.0} | {:.0} | {:.0}",
                    r.apply_late_us.median, r.undo_late_us.median, r.background_late_us.median
                ),
            ],
            "",
        );
    }
    println!();
    println!(
        "   the kernel's own stop of the whole process, no tool (SIGSTOP, waitpid until every thread stopped, SIGCONT at once; the floor of any stop of every thread): time until all stopped; the spinner's gap; active threads' largest lateness"
    );
    stop_row(
        "threads",
        ["all stopped", "gap in target", "woke late", ""],
        "",
    );
    for r in &o.stop {
        stop_row(
            &r.label(),
            [
                r.kernel_stop_us.show(1),
                r.kernel_stop_gap_us.show(1),
                r.kernel_stop_late_us.show(0),
                String::new(),
            ],
            "",
        );
    }
    let costs: Vec<String> =
        o.stop
            .iter()
            .filter(|r| r.walk == "scan")
            .filter_map(|scan| {
                let exact = o.stop.iter().find(|r| {
                    r.walk == "exact" && r.mode == scan.mode && r.threads == scan.threads
                })?;
                Some(format!(
                    "{} threads: {:.2} µs (exact {:.2}, scan {:.2})",
                    scan.threads,
                    exact.check_per_thread_us.median - scan.check_per_thread_us.median,
                    exact.check_per_thread_us.median,
                    scan.check_per_thread_us.median
                ))
            })
            .collect();
    if !costs.is_empty() {
        println!(
            "   added cost of the exact walk per thread (check phase, exact - scan, medians): {}",
            costs.join("; ")
        );
    }
    if let Some(u) = &o.unwind {
        println!(
            "   unwind registration ({} threads, idle, {} reps; the stopper with libgcc_s preloaded vs. without):",
            u.threads, u.reps
        );
        println!(
            "     one thread stopped for libgcc's call: {} µs (before the window; the others run)",
            u.call_us.show(1)
        );
        println!(
            "     Report.stopped:         {} µs with, {} µs without",
            u.stopped_us.show(1),
            u.stopped_without_us.show(1)
        );
        println!(
            "     apply() wall:           {} ms with, {} ms without",
            u.apply_wall_ms.show(2),
            u.apply_wall_without_ms.show(2)
        );
    }
    let (Some(a), Some(c), Some(d)) = (&o.apply_all, &o.call_cost, &o.daemon) else {
        return;
    };
    println!();
    println!(
        "2. hotsplice user apply --all over {} single-thread processes ({} round(s))",
        a.processes, a.rounds
    );
    per_process(
        "apply --all wall:",
        &a.apply_wall_ms,
        a.apply_per_process_ms,
        "",
    );
    println!(
        "   stopped per process:    {} µs (Report.stopped, all processes of all rounds)",
        a.stopped_per_process_us.show(1)
    );
    per_process(
        "`-y all upgrade` wall:",
        &a.upgrade_wall_ms,
        a.upgrade_per_process_ms,
        " (from the store)",
    );
    println!(
        "   all flipped:            {} ms after apply returned (targets poll every 20 ms)",
        a.all_flipped_after_ms.show(1)
    );
    per_process(
        "remove ID wall:",
        &a.remove_wall_ms,
        a.remove_per_process_ms,
        "",
    );
    println!();
    println!(
        "3. Cost per call, {} calls per measurement, {} rounds (ns per loop iteration)",
        if c.calls / 1_000_000 * 1_000_000 == c.calls {
            format!("{}M", c.calls / 1_000_000)
        } else {
            c.calls.to_string()
        },
        c.rounds
    );
    println!("   unpatched:              {}", c.unpatched_ns.show(3));
    println!("   patched:                {}", c.patched_ns.show(3));
    println!(
        "   patched - unpatched:    {} (per round; the jump)",
        c.difference_ns.show(3)
    );
    println!();
    println!(
        "4. hotsplice daemon, {} processes started after the patch was installed",
        d.processes
    );
    println!(
        "   exec to patched:        {} ms (daemon's log: netlink exec event to patch in)",
        d.exec_to_patched_ms.show(1)
    );
    println!(
        "   idle CPU:               {:.3} % over {:.0} s",
        d.idle_cpu_percent, d.idle_seconds
    );
}
