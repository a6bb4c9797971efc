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
    /// interrupt, wait, stacks, check, lead out, writes, resume.
    pub apply_phases_us: Vec<Stat>,
    /// How the apply checked the stacks: threads walked exactly, scanned.
    pub stacks_exact: usize,
    pub stacks_scanned: usize,
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
        ensure!(v.len() == 4, "stopper: unexpected answer {a:?}");
        Ok(Gap {
            max_us: v[0].parse::<f64>()? / 1e3,
            result: v[1].parse()?,
            pauses: v[2].parse()?,
            paused_us: v[3].parse::<f64>()? / 1e3,
        })
    }
}

/// The spinner's view of an interval.
struct Gap {
    /// Largest gap between two clock readings.
    max_us: f64,
    /// The last compute() result.
    result: i64,
    /// Gaps of 50 µs or more, and their sum.
    pauses: f64,
    paused_us: f64,
}

fn thread_count(pid: i32) -> Result<usize> {
    Ok(hotsplice_testsupport::proc::status(pid)
        .with_context(|| format!("/proc/{pid}/status"))?
        .threads)
}

pub fn bench_stop(
    built: &Built,
    hotsplice: &Path,
    n: usize,
    reps: usize,
    pin: Option<usize>,
) -> Result<StopResult> {
    ensure!(
        n >= 2,
        "a stop-time target needs at least 2 threads (main and the spinner)"
    );
    let _avoid = pin.map(AvoidCpu::new).transpose()?;
    let mut argv = vec![n.to_string()];
    argv.extend(pin.map(|c| c.to_string()));
    let target = procs::driven(&built.exe, &argv, &format!("stopper {n}"))?;
    let mut t = Stopper(target);
    let ready = t.0.line(Duration::from_secs(60))?;
    ensure!(ready.starts_with("ready"), "stopper: unexpected {ready:?}");
    let pid = t.0.pid_i32();
    let have = thread_count(pid)?;
    ensure!(have == n, "stopper has {have} threads, expected {n}");
    let opts = ApplyOptions {
        stack_walk: stack_walk(),
        ..ApplyOptions::default()
    };
    let r = t.gap()?.result;
    ensure!(
        r == targets::STOPPER_BEFORE,
        "stopper: compute() = {r} before patching"
    );

    let mut retried = 0;
    let mut phases: Vec<[f64; 7]> = Vec::with_capacity(reps);
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
        let bg = t.gap()?.max_us;
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
            ]);
            stacks = (a.stacks.exact, a.stacks.scanned);
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
    let apply_phases_us: Vec<Stat> = (0..7)
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

/// The stack walk the bench was asked for (`--stack-walk`, passed on as
/// HOTSPLICE_STACK_WALK so the CLI runs use it too).
pub fn stack_walk() -> hotsplice_engine::StackWalk {
    match std::env::var("HOTSPLICE_STACK_WALK").as_deref() {
        Ok("scan") => hotsplice_engine::StackWalk::Scan,
        _ => hotsplice_engine::StackWalk::Exact,
    }
}
