//! What registering a patch's unwind information with libgcc_s adds: the
//! stopper (10 threads, idle) once as built (a C program, libgcc_s not
//! mapped: nothing registered) and once with libgcc_s preloaded (apply
//! registers the patch's `.eh_frame` by a remote call on one waiting
//! thread, before the stop window). Per apply: the time that one thread
//! was stopped for the call (`Report.unwind_call`), the all-thread stop
//! (`Report.stopped`) and the wall time of the engine's apply, each
//! undone (undo deregisters).

use crate::stats::Stat;
use crate::targets::Built;
use crate::{micros, millis};
use anyhow::{ensure, Result};
use hotsplice_engine::{ApplyOptions, Registration};
use hotsplice_testsupport::{Options, Output, Target};
use serde::Serialize;
use std::process::Command;
use std::time::{Duration, Instant};

/// Threads of the target (main, the spinner, idle ones).
const THREADS: usize = 10;

#[derive(Debug, Clone, Serialize)]
pub struct UnwindResult {
    pub threads: usize,
    pub reps: usize,
    /// The borrowed thread's stop for libgcc's registration call.
    pub call_us: Stat,
    /// `Report.stopped`, with and without the registration.
    pub stopped_us: Stat,
    pub stopped_without_us: Stat,
    /// The engine's apply, with and without.
    pub apply_wall_ms: Stat,
    pub apply_wall_without_ms: Stat,
}

struct Sample {
    call_us: Option<f64>,
    stopped_us: f64,
    wall_ms: f64,
}

fn samples(built: &Built, preload: bool, reps: usize) -> Result<Vec<Sample>> {
    let mut cmd = Command::new(&built.exe);
    cmd.args([THREADS.to_string(), "-1".into(), "idle".into()]);
    if preload {
        cmd.env("LD_PRELOAD", "libgcc_s.so.1");
    }
    let opts = Options {
        stdin: true,
        stdout: Output::Lines,
        stderr: Output::Inherit,
        die_with_parent: true,
    };
    let mut t = Target::start(cmd, "stopper (unwind)", opts)?;
    let ready = t.line(Duration::from_secs(60))?;
    ensure!(ready.starts_with("ready"), "stopper: unexpected {ready:?}");
    let pid = t.pid_i32();
    let opts = ApplyOptions {
        busy_timeout: Duration::from_secs(30),
        ..ApplyOptions::default()
    };
    let want = if preload {
        Registration::Registered
    } else {
        Registration::NoLibgcc
    };
    let mut out = Vec::new();
    // One untimed round first (tables read and cached).
    for i in 0..=reps {
        let start = Instant::now();
        let r = hotsplice_engine::apply(pid, &built.patch, &opts)?;
        let wall = start.elapsed();
        hotsplice_engine::undo(pid, &built.patch.meta.id, &opts)?;
        ensure!(
            r.unwind.as_ref() == Some(&want),
            "stopper: unwind {:?}, expected {want:?}",
            r.unwind
        );
        if i > 0 {
            out.push(Sample {
                call_us: r.unwind_call.map(|c| micros(c.stopped)),
                stopped_us: micros(r.stopped),
                wall_ms: millis(wall),
            });
        }
    }
    Ok(out)
}

pub fn bench_unwind(built: &Built, reps: usize) -> Result<UnwindResult> {
    let with = samples(built, true, reps)?;
    let without = samples(built, false, reps)?;
    let calls: Vec<f64> = with.iter().filter_map(|s| s.call_us).collect();
    ensure!(calls.len() == with.len(), "a registration without its call");
    let of = |v: &[Sample], f: fn(&Sample) -> f64| Stat::of(&v.iter().map(f).collect::<Vec<_>>());
    Ok(UnwindResult {
        threads: THREADS,
        reps,
        call_us: Stat::of(&calls),
        stopped_us: of(&with, |s| s.stopped_us),
        stopped_without_us: of(&without, |s| s.stopped_us),
        apply_wall_ms: of(&with, |s| s.wall_ms),
        apply_wall_without_ms: of(&without, |s| s.wall_ms),
    })
}
