//! Section 2: `hotsplice user apply --all`, `remove ID` and `-y all upgrade` over
//! many processes.

use crate::millis;
use crate::procs;
use crate::stats::Stat;
use crate::targets::{self, private_store, Built};
use anyhow::{bail, ensure, Context, Result};
use hotsplice_testsupport::Target;
use serde::Serialize;
use std::collections::HashSet;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[derive(Serialize)]
pub struct AllResult {
    pub processes: usize,
    pub rounds: usize,
    pub apply_wall_ms: Stat,
    pub apply_per_process_ms: f64,
    pub stopped_per_process_us: Stat,
    pub all_flipped_after_ms: Stat,
    pub remove_wall_ms: Stat,
    pub remove_per_process_ms: f64,
    /// `hotsplice -y all upgrade` from a store holding the patch.
    pub upgrade_wall_ms: Stat,
    pub upgrade_per_process_ms: f64,
}

/// Waits until every slot of the shared state file holds `want`; returns
/// how long that took.
fn wait_slots(state: &Path, want: i32, procs: &mut [Target]) -> Result<Duration> {
    let t0 = Instant::now();
    loop {
        let bytes = std::fs::read(state)?;
        let pending: Vec<usize> = bytes
            .chunks_exact(4)
            .enumerate()
            .filter(|(_, c)| i32::from_ne_bytes([c[0], c[1], c[2], c[3]]) != want)
            .map(|(i, _)| i)
            .take(procs.len())
            .collect();
        if pending.is_empty() {
            return Ok(t0.elapsed());
        }
        if t0.elapsed() > Duration::from_secs(30) {
            let i = pending[0];
            procs[i].check_alive()?;
            bail!(
                "{} of {} processes did not show {want} within 30 s (e.g. pid {})",
                pending.len(),
                procs.len(),
                procs[i].pid(),
            );
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

pub fn bench_all(
    built: &Built,
    hotsplice: &Path,
    dir: &Path,
    count: usize,
    rounds: usize,
) -> Result<AllResult> {
    let state = dir.join("flipper-state");
    std::fs::File::create(&state)?.set_len(4 * count as u64)?;
    let mut procs = Vec::with_capacity(count);
    for i in 0..count {
        let mut cmd = Command::new(&built.exe);
        cmd.arg(&state).arg(i.to_string());
        procs.push(procs::quiet(cmd, &format!("flipper {i}"))?);
    }
    wait_slots(&state, targets::FLIPPER_BEFORE, &mut procs)?;
    let ours: HashSet<i32> = procs.iter().map(Target::pid_i32).collect();

    let mut apply_wall = Vec::new();
    let mut stopped = Vec::new();
    let mut flipped = Vec::new();
    let mut remove_wall = Vec::new();
    for _ in 0..rounds {
        let t0 = Instant::now();
        let out = Command::new(hotsplice)
            .args(["user", "apply", "--allow-unsigned", "-y", "--all", "--json"])
            .arg(&built.patch_file)
            .stdin(Stdio::null())
            .output()
            .context("running hotsplice user apply --all")?;
        let wall = t0.elapsed();
        if !out.status.success() {
            bail!(
                "hotsplice user apply --all failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let reports: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout)
            .context("parsing the JSON report of apply --all")?;
        let mut seen = HashSet::new();
        for r in &reports {
            let pid = r["pid"].as_i64().unwrap_or(0) as i32;
            if ours.contains(&pid) {
                seen.insert(pid);
                if let Some(us) = r["stopped"].as_f64() {
                    stopped.push(us);
                }
            }
        }
        ensure!(
            seen.len() == count,
            "apply --all patched {} of our {count} processes",
            seen.len()
        );
        flipped.push(millis(wait_slots(
            &state,
            targets::FLIPPER_AFTER,
            &mut procs,
        )?));
        apply_wall.push(millis(wall));

        let t0 = Instant::now();
        let out = Command::new(hotsplice)
            .args(["user", "remove", "-y", &built.id])
            .stdin(Stdio::null())
            .output()
            .context("running hotsplice user remove")?;
        let wall = t0.elapsed();
        if !out.status.success() {
            bail!(
                "hotsplice user remove {} failed: {}",
                built.id,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        wait_slots(&state, targets::FLIPPER_BEFORE, &mut procs)?;
        remove_wall.push(millis(wall));
    }
    // The same through the store: install, then `all upgrade` (kernel part
    // included; it has nothing to do on a host without livepatch patches).
    let vars = private_store(hotsplice, built, &dir.join("upgrade-env"))?;
    let mut upgrade_wall = Vec::new();
    for _ in 0..rounds {
        let t0 = Instant::now();
        let out = Command::new(hotsplice)
            .args(["-y", "all", "upgrade"])
            .envs(vars.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .output()
            .context("running hotsplice all upgrade")?;
        let wall = t0.elapsed();
        let text = String::from_utf8_lossy(&out.stdout);
        ensure!(
            out.status.success() && text.contains(&format!("{count} patched")),
            "all upgrade did not patch our {count} processes: {text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        wait_slots(&state, targets::FLIPPER_AFTER, &mut procs)?;
        upgrade_wall.push(millis(wall));
        let out = Command::new(hotsplice)
            .args(["user", "remove", "-y", &built.id])
            .stdin(Stdio::null())
            .output()?;
        ensure!(
            out.status.success(),
            "remove: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        wait_slots(&state, targets::FLIPPER_BEFORE, &mut procs)?;
    }
    drop(procs);
    let upgrade_wall = Stat::of(&upgrade_wall);
    let apply_wall = Stat::of(&apply_wall);
    let remove_wall = Stat::of(&remove_wall);
    Ok(AllResult {
        processes: count,
        rounds,
        apply_per_process_ms: apply_wall.median / count as f64,
        apply_wall_ms: apply_wall,
        stopped_per_process_us: Stat::of(&stopped),
        all_flipped_after_ms: Stat::of(&flipped),
        remove_per_process_ms: remove_wall.median / count as f64,
        remove_wall_ms: remove_wall,
        upgrade_per_process_ms: upgrade_wall.median / count as f64,
        upgrade_wall_ms: upgrade_wall,
    })
}
