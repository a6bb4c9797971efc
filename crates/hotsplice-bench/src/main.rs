//! `hotsplice-bench`: what live patching costs a running process.
//!
//! ```text
//! cargo build --release -p hotsplice-bench -p hotsplice-cli
//! target/release/hotsplice-bench [--quick] [--reps N] [--threads 2,10,100,1000] [--json]
//! ```
//!
//! Needs root (ptrace), `cc`, `make` and `patch`. The harness writes three
//! small C programs into a temporary directory, builds each with `make`
//! (`-O2`, two objects) and makes a one-function patch for each with
//! `hotsplice create` (found next to this binary, or at `$HOTSPLICE_BIN`).
//! Every process it starts is killed and reaped when done, also on panic,
//! and dies with the harness (PR_SET_PDEATHSIG).
//!
//! # 1. Stop time (threads stopped while a one-function patch goes in)
//!
//! Target `stopper N` has N threads: the main thread (blocked reading
//! commands on stdin), one *spinner* and N-2 idle threads blocked in
//! `pthread_cond_wait`. The spinner reads `clock_gettime(CLOCK_MONOTONIC)` in
//! a loop and keeps the largest gap between two consecutive readings, and
//! calls the patched function `compute()` every 1024 readings (so it is a
//! real, live function, but no thread sits in it for long). A stop of the
//! process shows up inside the target as a gap in the spinner's readings,
//! so the gap is the stop time as the program itself experiences it, not
//! as the tool reports it.
//!
//! Each repetition, with the engine library called in-process (so process
//! start-up does not count):
//! * reset the target's max gap (`r`, answered once the spinner did it),
//!   `hotsplice_engine::apply`, then read the max gap (`g`, answered after
//!   the spinner went round 2048 more times, so it includes the stop that
//!   just ended and a `compute()` call after it, whose result is checked to
//!   be the patched one). Recorded: (a) that in-target max gap, (b) the
//!   engine's own `Report::stopped`, (c) the wall time of the `apply` call;
//! * the same for `hotsplice_engine::undo` (shown on a second table: undo
//!   also stops the process a second time, to detach, outside
//!   `Report::stopped`);
//! * *background*: reset, sleep as long as that apply took, read: the
//!   largest gap with no patching at all over an equal period (scheduler
//!   and interrupt noise; with 2 CPUs the spinner shares them with the
//!   harness and everything else).
//!
//! The spinner is created last, so it is last in thread-id order, the
//! order in which the engine interrupts threads and later resumes them: it
//! is stopped from the end of the interrupt loop to the end of the resume
//! loop. `Report.stopped` spans both loops whole, so at many threads it is
//! larger than the spinner's gap by about the time the interrupt loop takes.
//! By default the spinner gets a CPU to itself (the harness, the CLI and the
//! target's other threads are kept off it, `--no-pin` to not do so): on a
//! small machine it would otherwise also measure being preempted by the
//! tool's own work (about 0.3 ms extra per apply on 2 CPUs).
//!
//! Then, R more times, (d) the wall time of one `hotsplice user apply --pid`
//! process (start-up, reading the patch, applying, printing), each undone
//! in-process. One untimed apply+undo warms up first. Medians, minimum and
//! maximum over R repetitions (R=11, `--quick` 3).
//!
//! The same is measured with the other threads *active* (each waking every
//! 10 ms, as a server's workers do: `--active-threads`), with four threads
//! calling `compute()` in a tight loop (*hot*: some thread is always inside
//! it, so apply and undo lead it out; the time that takes is reported on
//! its own, `Report.lead_out`), and, at `--walk-cost-threads`, once more
//! with the conservative scan instead of the exact walk: the difference of
//! the check phase per thread is the added cost of the exact walk.
//! `--only-stop` runs this section alone.
//!
//! Then the cost of registering the patch's unwind information with
//! libgcc_s (`unwind_reg`): the stopper at 10 idle threads as built (a C
//! program: nothing to register) and with libgcc_s preloaded (apply
//! registers by a remote call on one waiting thread before the window):
//! that thread's stop for the call (`Report.unwind_call`), `Report.stopped`
//! and the apply's wall time, each with and without (`--no-unwind` skips
//! it).
//!
//! # 2. `hotsplice user apply --all` over many processes
//!
//! 200 (`--quick`: 50) single-threaded `flipper` processes, each storing
//! `answer()`'s result every 20 ms into its own slot of a shared memory
//! mapped file. Timed: one `hotsplice user apply --all` (which finds the
//! processes by build-id among all processes of the machine, then patches
//! them, 8 at a time), and one `hotsplice user remove ID` to take it out
//! again (`remove ID` rather than `remove --all`, so patches of anything
//! else on the machine are left alone). Both are checked: every process is
//! reported, and every file flips to the new value and back. Reported:
//! median wall time over 3 rounds (`--quick`: 1), per process, the median of
//! the per-process `stopped` times in apply's JSON report, and how long it
//! took until all slots showed the new value after apply returned (includes
//! the targets' 20 ms polling). Then the same patch installed in a private
//! store, and `hotsplice -y all upgrade` timed over the same processes.
//!
//! # 3. Cost per call of a patched function
//!
//! Target `caller` runs `s += work(arg)` 200M times (`--quick`: 50M), `arg`
//! volatile and `work()` noinline in another object, and reports ns per
//! iteration (loop overhead included, the same on both sides). Each round
//! measures unpatched, applies, measures patched (the patch only changes a
//! constant, so the same work is done, plus the jump at the old entry),
//! undoes. Median over R rounds of both, and of the per-round difference:
//! the cost of the jump.
//!
//! # 4. The daemon: processes started later
//!
//! The flipper's patch is installed in a private store and `hotsplice
//! daemon` is started on it; then 20 (`--quick`: 5) flippers are started one
//! after the other. The daemon logs, per process, the time from the exec
//! event (netlink) to the patch being in; the harness also checks that each
//! one flipped. Reported: the median delay, and the daemon's CPU use while
//! idle (user+system time over 10 s, `--quick`: 3 s, with nothing starting).

mod apply_all;
mod call_cost;
mod daemon;
mod procs;
mod report;
mod stats;
mod stop;
mod targets;
mod unwind_reg;

use anyhow::{ensure, Context, Result};
use clap::Parser;
use procs::AvoidCpu;
use report::{Output, Settings};
use std::path::PathBuf;
use std::time::Duration;

#[derive(Parser)]
#[command(
    name = "hotsplice-bench",
    about = "Benchmarks of hotsplice on real processes (needs root, cc, make, patch)"
)]
struct Args {
    /// Fewer repetitions, 50 processes, 50M calls.
    #[arg(long)]
    quick: bool,
    /// Repetitions per measurement (default 11, --quick 3).
    #[arg(long)]
    reps: Option<usize>,
    /// Thread counts of the stop-time targets (idle threads).
    #[arg(long, value_delimiter = ',', default_value = "2,10,100,1000")]
    threads: Vec<usize>,
    /// Thread counts of the stop-time targets whose threads wake every
    /// 10 ms (`0` for none).
    #[arg(long, value_delimiter = ',', default_value = "2,10,100,1000")]
    active_threads: Vec<usize>,
    /// Thread counts at which the stop is measured again with the
    /// conservative scan, for the cost of the exact walk (`0` for none).
    #[arg(long, value_delimiter = ',', default_value = "100,1000")]
    walk_cost_threads: Vec<usize>,
    /// Skip the target whose four threads call the patched function in a
    /// tight loop.
    #[arg(long)]
    no_hot: bool,
    /// Only the stop-time section (with the registration's cost).
    #[arg(long)]
    only_stop: bool,
    /// Skip the cost of registering unwind information with libgcc_s.
    #[arg(long)]
    no_unwind: bool,
    /// Processes for apply --all (default 200, --quick 50).
    #[arg(long)]
    procs: Option<usize>,
    /// Calls per call-cost measurement (default 200M, --quick 50M).
    #[arg(long)]
    calls: Option<u64>,
    /// Do not keep the stop-time spinner on a CPU of its own.
    #[arg(long)]
    no_pin: bool,
    /// Machine-readable output (JSON on stdout; progress still on stderr).
    #[arg(long)]
    json: bool,
    /// How the busy check reads stacks: `exact` (unwind tables, the
    /// default) or `scan` (every stack word), to measure what the exact
    /// walk costs. Passed to the CLI runs as HOTSPLICE_STACK_WALK.
    #[arg(long, default_value = "exact", value_parser = ["exact", "scan"])]
    stack_walk: String,
}

const ANSWER: Duration = Duration::from_secs(20);

fn micros(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

fn millis(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn progress(msg: &str) {
    eprintln!("[hotsplice-bench] {msg}");
}

fn hotsplice_bin() -> Result<PathBuf> {
    let p = match std::env::var_os("HOTSPLICE_BIN") {
        Some(p) => PathBuf::from(p),
        None => std::env::current_exe()?.with_file_name("hotsplice"),
    };
    ensure!(
        p.is_file(),
        "hotsplice binary not found at {} (build it with `cargo build --release -p hotsplice-cli`, or set HOTSPLICE_BIN)",
        p.display()
    );
    Ok(p)
}

fn main() {
    if let Err(e) = run() {
        eprintln!("hotsplice-bench: error: {e:#}");
        std::process::exit(1);
    }
}

fn run() -> Result<()> {
    let args = Args::parse();
    std::env::set_var("HOTSPLICE_STACK_WALK", &args.stack_walk);
    let reps = args.reps.unwrap_or(if args.quick { 3 } else { 11 }).max(1);
    let count = args
        .procs
        .unwrap_or(if args.quick { 50 } else { 200 })
        .max(1);
    let calls = args
        .calls
        .unwrap_or(if args.quick { 50_000_000 } else { 200_000_000 })
        .max(1);
    let all_rounds = if args.quick { 1 } else { 3 };
    let pin = if args.no_pin { None } else { AvoidCpu::pick() };
    let hotsplice = hotsplice_bin()?;
    let mut machine = report::machine(&hotsplice);

    let tmp = tempfile::Builder::new()
        .prefix("hotsplice-bench-")
        .tempdir()
        .context("creating a temporary directory")?;
    progress(&format!("building targets in {}", tmp.path().display()));
    let stopper = targets::build(tmp.path(), &targets::STOPPER, &hotsplice)?;
    let flipper = targets::build(tmp.path(), &targets::FLIPPER, &hotsplice)?;
    let caller = targets::build(tmp.path(), &targets::CALLER, &hotsplice)?;

    let mut stop = Vec::new();
    let walk = stop::stack_walk();
    let mut rows: Vec<(usize, stop::Mode, hotsplice_engine::StackWalk)> = Vec::new();
    rows.extend(args.threads.iter().map(|&n| (n, stop::Mode::Idle, walk)));
    rows.extend(
        args.active_threads
            .iter()
            .filter(|&&n| n > 0)
            .map(|&n| (n, stop::Mode::Active, walk)),
    );
    if !args.no_hot {
        // Main, the spinner and four threads hammering compute().
        rows.push((6, stop::Mode::Hot, walk));
    }
    if walk == hotsplice_engine::StackWalk::Exact {
        rows.extend(
            args.walk_cost_threads
                .iter()
                .filter(|&&n| n > 0)
                .map(|&n| (n, stop::Mode::Idle, hotsplice_engine::StackWalk::Scan)),
        );
    }
    for (n, mode, w) in rows {
        progress(&format!(
            "stop time, {n} threads {}, {:?} walk, {reps} reps",
            mode.name(),
            w
        ));
        stop.push(stop::bench_stop(
            &stopper,
            &hotsplice,
            (n, mode),
            reps,
            pin,
            w,
        )?);
    }
    let unwind = if args.no_unwind {
        None
    } else {
        progress(&format!(
            "unwind registration, with and without libgcc_s, {reps} reps"
        ));
        Some(unwind_reg::bench_unwind(&stopper, reps)?)
    };
    let (apply_all, call_cost, daemon) = if args.only_stop {
        (None, None, None)
    } else {
        progress(&format!(
            "apply --all over {count} processes, {all_rounds} round(s)"
        ));
        let apply_all = apply_all::bench_all(&flipper, &hotsplice, tmp.path(), count, all_rounds)?;
        progress(&format!("call cost, {calls} calls, {reps} rounds"));
        let call_cost = call_cost::bench_cost(&caller, calls, reps)?;
        let daemon_n = if args.quick { 5 } else { 20 };
        progress(&format!("daemon, {daemon_n} new processes"));
        let idle = Duration::from_secs(if args.quick { 3 } else { 10 });
        let daemon = daemon::bench_daemon(&flipper, &hotsplice, tmp.path(), daemon_n, idle)?;
        (Some(apply_all), Some(call_cost), Some(daemon))
    };

    machine.loadavg_after = report::loadavg();
    let out = Output {
        machine,
        settings: Settings {
            reps,
            threads: args.threads.clone(),
            processes: count,
            all_rounds,
            calls,
            spinner_cpu: pin,
            stack_walk: args.stack_walk.clone(),
        },
        stop,
        unwind,
        apply_all,
        call_cost,
        daemon,
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        report::print_human(&out);
    }
    Ok(())
}
