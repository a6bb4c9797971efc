//! Section 3: Cost per call of a patched function (the jump at its old entry).

use crate::procs;
use crate::stats::Stat;
use crate::targets::{self, Built};
use anyhow::{ensure, Context, Result};
use hotsplice_engine::ApplyOptions;
use hotsplice_testsupport::Target;
use serde::Serialize;
use std::time::Duration;

#[derive(Serialize)]
pub struct CostResult {
    pub calls: u64,
    pub rounds: usize,
    pub unpatched_ns: Stat,
    pub patched_ns: Stat,
    pub difference_ns: Stat,
}

fn measure_calls(t: &mut Target, calls: u64, want: i64) -> Result<f64> {
    let a = t.ask(&format!("m {calls}"), Duration::from_secs(120))?;
    let mut it = a.split_whitespace();
    let ns: f64 = it.next().context("ns")?.parse()?;
    let v: i64 = it.next().context("value")?.parse()?;
    ensure!(v == want, "caller: work() = {v}, expected {want}");
    Ok(ns)
}

pub fn bench_cost(built: &Built, calls: u64, rounds: usize) -> Result<CostResult> {
    let mut t = procs::driven(&built.exe, &[], "caller")?;
    let ready = t.line(Duration::from_secs(20))?;
    ensure!(ready == "ready", "caller: unexpected {ready:?}");
    let pid = t.pid_i32();
    let opts = ApplyOptions::default();
    // Warm up (CPU frequency, page faults).
    measure_calls(&mut t, calls / 4 + 1, targets::CALLER_BEFORE)?;
    let mut before = Vec::with_capacity(rounds);
    let mut after = Vec::with_capacity(rounds);
    let mut diff = Vec::with_capacity(rounds);
    for _ in 0..rounds {
        let u = measure_calls(&mut t, calls, targets::CALLER_BEFORE)?;
        hotsplice_engine::apply(pid, &built.patch, &opts).context("apply to caller")?;
        let p = measure_calls(&mut t, calls, targets::CALLER_AFTER)?;
        hotsplice_engine::undo(pid, &built.patch.meta.id, &opts).context("undo in caller")?;
        before.push(u);
        after.push(p);
        diff.push(p - u);
    }
    let _ = t.ask("q", Duration::from_millis(1));
    Ok(CostResult {
        calls,
        rounds,
        unpatched_ns: Stat::of(&before),
        patched_ns: Stat::of(&after),
        difference_ns: Stat::of(&diff),
    })
}
