//! Section 1, stop time: how long a one-function apply (and its undo) stops the
//! target's threads, seen from inside the target, by thread count.

use crate::procs::{self, AvoidCpu};
use crate::stats::Stat;
use crate::targets::{self, Built};
use crate::{micros, millis, ANSWER};
use anyhow::{bail, ensure, Context, Result};
use hotsplice_engine::ApplyOptions;
use hotsplice_testsupport::Target;
use serde::Serialize;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Section 1, one thread count. Times in microseconds unless named `_ms`.
#[derive(Serialize)]
pub struct StopResult {
    pub threads: usize,
    /// What the threads other than main and the spinner do: `idle`
    /// (waiting on a condition variable), `active` (waking every 10 ms),
    /// `hot` (calling the patched function in a tight loop).
    pub mode: &'static str,
    /// How the busy check read the stacks (`exact` or `scan`).
    pub walk: &'static str,
    pub reps: usize,
    pub apply_gap_us: Stat,
    pub apply_stopped_us: Stat,
    pub apply_wall_us: Stat,
    pub background_gap_us: Stat,
    pub undo_gap_us: Stat,
    pub undo_stopped_us: Stat,
    pub undo_wall_us: Stat,
    /// Gaps of 50 µs or more the spinner saw during apply / undo, and their sum.
    pub apply_pauses: Stat,
    pub apply_paused_us: Stat,
    pub undo_pauses: Stat,
    pub undo_paused_us: Stat,
    pub cli_apply_wall_ms: Stat,
    pub cli_apply_gap_us: Stat,
    /// Applies/undos that needed more than one stop window (code busy).
    pub retried: usize,
    /// Where the apply's window went (the engine's `Report.times`), µs:
    /// interrupt, wait, stacks, check, lead out, writes, resume; then,
    /// before the window, reading the threads' states, and the number of
    /// threads found running.
    pub apply_phases_us: Vec<Stat>,
    /// How the apply checked the stacks: threads walked exactly, scanned.
    pub stacks_exact: usize,
    pub stacks_scanned: usize,
    /// Time spent leading busy threads out (`Report.lead_out.time`), part
    /// of `stopped` for the other threads; apply and undo.
    pub apply_lead_out_us: Stat,
    pub undo_lead_out_us: Stat,
    /// The apply window's check phase divided by the thread count.
    pub check_per_thread_us: Stat,
    /// How long the threads that were running stayed stopped
    /// (`Report.stopped_running`: stopped last, let go first; 0 when none
    /// was), apply and undo. The spinner is one of them.
    pub apply_running_us: Stat,
    pub undo_running_us: Stat,
    /// Active threads: the largest lateness of one's 10 ms sleep during the
    /// apply, the undo, and as long with no patching (the stopper's `late`).
    pub apply_late_us: Stat,
    pub undo_late_us: Stat,
    pub background_late_us: Stat,
    /// Sleeping threads parked in their system calls by the apply's window,
    /// and kept stopped for all of it (`Report.times.parked`, `.kept`).
    pub apply_parked: Stat,
    pub apply_kept: Stat,
    /// The longest stop of a batch of sleeping threads, and the longest any
    /// one thread was held (`Report.times.batch_us`, `.held_us`), apply.
    pub apply_batch_us: Stat,
    pub apply_held_us: Stat,
    pub undo_held_us: Stat,
    /// The kernel's own stop of the whole process, as a floor for any tool
    /// that stops every thread (no tracer; see [`group_stop`]): how long
    /// until every thread was stopped, and what the target saw — the
    /// spinner's largest gap, and how late an active thread woke, at most.
    pub kernel_stop_us: Stat,
    pub kernel_stop_gap_us: Stat,
    pub kernel_stop_late_us: Stat,
}

/// What the stopper's other threads do (see [`StopResult::mode`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Idle,
    Active,
    Hot,
}

impl Mode {
    pub fn name(self) -> &'static str {
        match self {
            Mode::Idle => "idle",
            Mode::Active => "active",
            Mode::Hot => "hot",
        }
    }
}

impl StopResult {
    /// `1000 idle`, `6 hot`, `1000 idle scan`: the row's name in tables.
    pub fn label(&self) -> String {
        let walk = if self.walk == "exact" { "" } else { " scan" };
        format!("{} {}{walk}", self.threads, self.mode)
    }
}

/// The stopper target's commands.
struct Stopper(Target);

impl Stopper {
    fn reset(&mut self) -> Result<()> {
        let a = self.0.ask("r", ANSWER)?;
        ensure!(a == "ok", "stopper: unexpected answer {a:?} to reset");
        Ok(())
    }

    /// What the spinner saw since the last reset.
    fn gap(&mut self) -> Result<Gap> {
        let a = self.0.ask("g", ANSWER)?;
        let v: Vec<&str> = a.split_whitespace().collect();
        ensure!(v.len() == 5, "stopper: unexpected answer {a:?}");
        Ok(Gap {
            max_us: v[0].parse::<f64>()? / 1e3,
            result: v[1].parse()?,
            pauses: v[2].parse()?,
            paused_us: v[3].parse::<f64>()? / 1e3,
            late_us: v[4].parse::<f64>()? / 1e3,
        })
    }
}

/// The spinner's view of an interval.
struct Gap {
    /// Largest gap between two clock readings.
    max_us: f64,
    /// The last compute() result.
    result: i64,
    /// How late an active thread woke, at most (0 for idle threads).
    late_us: f64,
    /// Gaps of 50 µs or more, and their sum.
    pauses: f64,
    paused_us: f64,
}

fn thread_count(pid: i32) -> Result<usize> {
    Ok(hotsplice_testsupport::proc::status(pid)
        .with_context(|| format!("/proc/{pid}/status"))?
        .threads)
}

/// The stop bench for `n` threads doing `mode`, the busy check walking
/// stacks as `walk` says.
pub fn bench_stop(
    built: &Built,
    hotsplice: &Path,
    (n, mode): (usize, Mode),
    reps: usize,
    pin: Option<usize>,
    walk: hotsplice_engine::StackWalk,
) -> Result<StopResult> {
    ensure!(
        n >= 2,
        "a stop-time target needs at least 2 threads (main and the spinner)"
    );
    let _avoid = pin.map(AvoidCpu::new).transpose()?;
    let argv = vec![
        n.to_string(),
        pin.map_or(-1, |c| c as i64).to_string(),
        mode.name().to_string(),
    ];
    let target = procs::driven(&built.exe, &argv, &format!("stopper {n} {}", mode.name()))?;
    let mut t = Stopper(target);
    let ready = t.0.line(Duration::from_secs(60))?;
    ensure!(ready.starts_with("ready"), "stopper: unexpected {ready:?}");
    let pid = t.0.pid_i32();
    let have = thread_count(pid)?;
    ensure!(have == n, "stopper has {have} threads, expected {n}");
    let opts = ApplyOptions {
        stack_walk: walk,
        // Hot threads: leading them out may take several windows.
        busy_timeout: Duration::from_secs(30),
        ..ApplyOptions::default()
    };
    let r = t.gap()?.result;
    ensure!(
        r == targets::STOPPER_BEFORE,
        "stopper: compute() = {r} before patching"
    );

    let mut retried = 0;
    let mut phases: Vec<[f64; 9]> = Vec::with_capacity(reps);
    let mut leads: Vec<[f64; 5]> = Vec::with_capacity(reps);
    let mut sleepers: Vec<[f64; 11]> = Vec::with_capacity(reps);
    let mut stacks = (0, 0);
    let mut cycle = |t: &mut Stopper, rec: &mut Option<&mut Vec<[f64; 11]>>| -> Result<()> {
        t.reset()?;
        let t0 = Instant::now();
        let a = hotsplice_engine::apply(pid, &built.patch, &opts)
            .with_context(|| format!("apply to stopper {n}"))?;
        let wall = t0.elapsed();
        let ag = t.gap()?;
        let r = ag.result;
        ensure!(
            r == targets::STOPPER_AFTER,
            "stopper: compute() = {r} after apply"
        );
        t.reset()?;
        let t1 = Instant::now();
        let u = hotsplice_engine::undo(pid, &built.patch.meta.id, &opts)
            .with_context(|| format!("undo in stopper {n}"))?;
        let uwall = t1.elapsed();
        let ug = t.gap()?;
        let r = ug.result;
        ensure!(
            r == targets::STOPPER_BEFORE,
            "stopper: compute() = {r} after undo"
        );
        ensure!(
            a.threads == n && u.threads == n,
            "engine saw {} / {} threads, expected {n}",
            a.threads,
            u.threads
        );
        t.reset()?;
        std::thread::sleep(wall);
        let bgg = t.gap()?;
        let bg = bgg.max_us;
        t.reset()?;
        let kernel = group_stop(t.0.pid_i32())?;
        let kg = t.gap()?;
        if let Some(rec) = rec {
            let w = &a.times;
            phases.push([
                w.interrupt_us,
                w.wait_us,
                w.stacks_us,
                w.check_us,
                w.lead_out_us,
                w.writes_us,
                w.resume_us,
                w.states_us,
                w.running as f64,
            ]);
            stacks = (a.stacks.exact, a.stacks.scanned);
            leads.push([
                micros(a.lead_out.time),
                micros(u.lead_out.time),
                w.check_us / n as f64,
                a.stopped_running.map_or(0.0, micros),
                u.stopped_running.map_or(0.0, micros),
            ]);
            sleepers.push([
                ag.late_us,
                ug.late_us,
                bgg.late_us,
                w.parked as f64,
                w.kept as f64,
                w.batch_us,
                w.held_us,
                u.times.held_us,
                micros(kernel),
                kg.max_us,
                kg.late_us,
            ]);
            retried += usize::from(a.attempts > 1) + usize::from(u.attempts > 1);
            rec.push([
                ag.max_us,
                micros(a.stopped),
                micros(wall),
                bg,
                ug.max_us,
                micros(u.stopped),
                micros(uwall),
                ag.pauses,
                ag.paused_us,
                ug.pauses,
                ug.paused_us,
            ]);
        }
        Ok(())
    };
    cycle(&mut t, &mut None)?;
    let mut rows = Vec::with_capacity(reps);
    for _ in 0..reps {
        cycle(&mut t, &mut Some(&mut rows))?;
    }
    let col = |i: usize| Stat::of(&rows.iter().map(|r| r[i]).collect::<Vec<_>>());
    let lead = |i: usize| Stat::of(&leads.iter().map(|r| r[i]).collect::<Vec<_>>());
    let sl = |i: usize| Stat::of(&sleepers.iter().map(|r| r[i]).collect::<Vec<_>>());
    let apply_phases_us: Vec<Stat> = (0..9)
        .map(|i| Stat::of(&phases.iter().map(|p| p[i]).collect::<Vec<_>>()))
        .collect();

    let mut cli_wall = Vec::with_capacity(reps);
    let mut cli_gap = Vec::with_capacity(reps);
    for _ in 0..reps {
        t.reset()?;
        let t0 = Instant::now();
        let out = Command::new(hotsplice)
            .args([
                "user",
                "apply",
                "--allow-unsigned",
                "-y",
                "--pid",
                &pid.to_string(),
            ])
            .arg(&built.patch_file)
            .env(
                "HOTSPLICE_STACK_WALK",
                if walk == hotsplice_engine::StackWalk::Scan {
                    "scan"
                } else {
                    "exact"
                },
            )
            .stdin(Stdio::null())
            .output()
            .context("running hotsplice user apply")?;
        let wall = t0.elapsed();
        let g = t.gap()?;
        let (gap, r) = (g.max_us, g.result);
        if !out.status.success() {
            bail!(
                "hotsplice user apply --pid {pid} failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        ensure!(
            r == targets::STOPPER_AFTER,
            "stopper: compute() = {r} after CLI apply"
        );
        hotsplice_engine::undo(pid, &built.patch.meta.id, &opts)
            .with_context(|| format!("undo in stopper {n}"))?;
        cli_wall.push(millis(wall));
        cli_gap.push(gap);
    }
    let _ = t.0.ask("q", Duration::from_millis(1));
    Ok(StopResult {
        threads: n,
        mode: mode.name(),
        walk: match walk {
            hotsplice_engine::StackWalk::Exact => "exact",
            hotsplice_engine::StackWalk::Scan => "scan",
        },
        apply_lead_out_us: lead(0),
        undo_lead_out_us: lead(1),
        check_per_thread_us: lead(2),
        apply_running_us: lead(3),
        undo_running_us: lead(4),
        apply_late_us: sl(0),
        undo_late_us: sl(1),
        background_late_us: sl(2),
        apply_parked: sl(3),
        apply_kept: sl(4),
        apply_batch_us: sl(5),
        apply_held_us: sl(6),
        undo_held_us: sl(7),
        kernel_stop_us: sl(8),
        kernel_stop_gap_us: sl(9),
        kernel_stop_late_us: sl(10),
        reps,
        apply_gap_us: col(0),
        apply_stopped_us: col(1),
        apply_wall_us: col(2),
        background_gap_us: col(3),
        undo_gap_us: col(4),
        undo_stopped_us: col(5),
        undo_wall_us: col(6),
        apply_pauses: col(7),
        apply_paused_us: col(8),
        undo_pauses: col(9),
        undo_paused_us: col(10),
        cli_apply_wall_ms: Stat::of(&cli_wall),
        cli_apply_gap_us: Stat::of(&cli_gap),
        retried,
        apply_phases_us,
        stacks_exact: stacks.0,
        stacks_scanned: stacks.1,
    })
}

/// The kernel's own stop of every thread of `pid` (our child, not traced): `SIGSTOP`, wait until
/// the group stop is complete (`waitpid` with `WUNTRACED` reports it once every thread stopped),
/// then `SIGCONT` at once. Returns how long the stop took to complete. It is the least any tool
/// that stops every thread can cost the target: each thread must get a CPU to stop, and again to
/// go on, and with busy workers they all wake together afterwards — with no tracer, no register
/// or stack read and no hold.
fn group_stop(pid: i32) -> Result<Duration> {
    use nix::sys::signal::{kill, Signal};
    use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
    use nix::unistd::Pid;
    /// Sends `SIGCONT` however the wait ends.
    struct Cont(Pid);
    impl Drop for Cont {
        fn drop(&mut self) {
            let _ = kill(self.0, Signal::SIGCONT);
        }
    }
    let pid = Pid::from_raw(pid);
    let t0 = Instant::now();
    kill(pid, Signal::SIGSTOP).with_context(|| format!("SIGSTOP to the stopper {pid}"))?;
    let _cont = Cont(pid);
    let status = loop {
        match waitpid(pid, Some(WaitPidFlag::WUNTRACED)) {
            Err(nix::errno::Errno::EINTR) => continue,
            r => break r.with_context(|| format!("waiting for the stopper {pid} to stop"))?,
        }
    };
    let took = t0.elapsed();
    ensure!(
        matches!(status, WaitStatus::Stopped(..)),
        "the stopper {pid} did not stop ({status:?})"
    );
    Ok(took)
}

/// The stack walk the bench was asked for (`--stack-walk`, passed on as
/// HOTSPLICE_STACK_WALK so the CLI runs use it too).
pub fn stack_walk() -> hotsplice_engine::StackWalk {
    match std::env::var("HOTSPLICE_STACK_WALK").as_deref() {
        Ok("scan") => hotsplice_engine::StackWalk::Scan,
        _ => hotsplice_engine::StackWalk::Exact,
    }
}
