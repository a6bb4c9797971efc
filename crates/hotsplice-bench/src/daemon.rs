//! Section 4, the daemon: processes started after the patch was installed.

use crate::procs;
use crate::stats::Stat;
use crate::targets::{self, private_store, Built};
use crate::ANSWER;
use anyhow::{ensure, Context, Result};
use serde::Serialize;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

#[derive(Serialize)]
pub struct DaemonResult {
    pub processes: usize,
    pub exec_to_patched_ms: Stat,
    pub idle_cpu_percent: f64,
    pub idle_seconds: f64,
}

fn cpu_ticks(pid: u32) -> Result<u64> {
    Ok(hotsplice_testsupport::proc::cpu_ticks(&pid.to_string())?)
}

pub fn bench_daemon(
    built: &Built,
    hotsplice: &Path,
    dir: &Path,
    count: usize,
    idle: Duration,
) -> Result<DaemonResult> {
    let vars = private_store(hotsplice, built, &dir.join("daemon-env"))?;
    let mut cmd = Command::new(hotsplice);
    cmd.args(["daemon", "--rescan", "60"])
        .envs(vars.iter().map(|(k, v)| (k, v)));
    let mut daemon = procs::watched(cmd, "hotsplice daemon")?;
    let mut wait_line = |pred: &dyn Fn(&str) -> bool| -> Result<String> {
        daemon
            .next_matching(ANSWER, pred)
            .context("waiting for the daemon")
    };
    wait_line(&|l| l.starts_with("hotsplice daemon: watching"))?;
    let state = dir.join("daemon-slots");
    std::fs::File::create(&state)?.set_len(4 * count as u64)?;
    let mut delays = Vec::new();
    for i in 0..count {
        let mut cmd = Command::new(&built.exe);
        cmd.arg(&state).arg(i.to_string());
        let p = procs::quiet(cmd, &format!("flipper {i}"))?;
        let pid = p.pid();
        let line = wait_line(&|l| l.starts_with(&format!("patched pid {pid} ")))?;
        let ms: f64 = line
            .split(" ms after exec")
            .next()
            .and_then(|head| head.rsplit(' ').next())
            .filter(|_| line.contains(" ms after exec"))
            .with_context(|| format!("no delay in the daemon's log line {line:?}"))?
            .parse()?;
        delays.push(ms);
        // The process really runs the new code.
        let deadline = Instant::now() + ANSWER;
        loop {
            let bytes = std::fs::read(&state)?;
            let v = i32::from_ne_bytes(bytes[4 * i..4 * i + 4].try_into().unwrap());
            if v == targets::FLIPPER_AFTER {
                break;
            }
            ensure!(Instant::now() < deadline, "process {pid} was not patched");
            std::thread::sleep(Duration::from_millis(5));
        }
        drop(p);
    }
    let t0 = cpu_ticks(daemon.pid())?;
    std::thread::sleep(idle);
    let t1 = cpu_ticks(daemon.pid())?;
    let hz = hotsplice_testsupport::proc::clock_ticks_per_second();
    Ok(DaemonResult {
        processes: count,
        exec_to_patched_ms: Stat::of(&delays),
        idle_cpu_percent: (t1 - t0) as f64 / hz / idle.as_secs_f64() * 100.0,
        idle_seconds: idle.as_secs_f64(),
    })
}
