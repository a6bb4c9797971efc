//! The daemon loop: keeps every process patched, including processes
//! started later. Listens to the kernel's process-event connector for
//! `exec`; a new process is checked at once and then at short, growing
//! intervals while its dynamic loader maps libraries, and patched as soon
//! as it maps a target. A full scan every `rescan` catches `dlopen` and
//! anything the event stream missed; without netlink (no CAP_NET_ADMIN, or
//! a kernel without the connector) the scans alone run.

use crate::error::{chain, Result};
use crate::event::Event;
use crate::machine::Agent;
use crate::netlink::ProcEvents;
use crate::upgrade::{Installed, Outcome};
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// How the daemon runs.
#[derive(Debug, Clone, Default)]
pub struct DaemonOptions {
    /// One recovery and one full scan, then return (e.g. at boot).
    pub once: bool,
    /// Time between full scans (default: the configuration's).
    pub rescan: Option<Duration>,
    /// Do not use the process-event connector; scan only.
    pub no_netlink: bool,
    /// Use installed patches without a signature (development only).
    pub allow_unsigned: bool,
    /// Do not sync with the fleet server even when registered.
    pub no_fleet: bool,
}

/// How long after an exec a process is watched for libraries to appear.
const WATCH_FOR: Duration = Duration::from_secs(2);

impl Agent {
    /// Run the daemon until a stop is requested (or once). Every outcome is
    /// an [`Event::DaemonOutcome`].
    ///
    /// When the machine is registered with a fleet server (and
    /// `[fleet] daemon_sync` is on), a sync runs at the start (boot) and
    /// then periodically beside the watch (see [`Agent::fleet_loop`]).
    pub fn run_daemon(&self, d: &DaemonOptions) -> Result<()> {
        let fleet =
            !d.no_fleet && self.config.fleet.daemon_sync && self.fleet_paths().server().exists();
        if !fleet {
            return self.watch(d);
        }
        let done = std::sync::atomic::AtomicBool::new(false);
        if d.once {
            self.fleet_loop(true, &done);
            return self.watch(d);
        }
        std::thread::scope(|s| {
            s.spawn(|| self.fleet_loop(false, &done));
            let r = self.watch(d);
            done.store(true, std::sync::atomic::Ordering::Relaxed);
            r
        })
    }

    fn watch(&self, d: &DaemonOptions) -> Result<()> {
        self.recover()?;
        let opts = self.options(None);
        let mut inst = self.installed_patches(d.allow_unsigned)?;
        let mut stamp_seen = self.store_stamp();
        let tell = |o: Outcome, since_exec: Option<Duration>| {
            self.emit(Event::DaemonOutcome {
                outcome: o,
                since_exec,
            })
        };
        let scan = |inst: &Installed| {
            for pid in hotsplice_process::all_pids() {
                if self.stop_requested() {
                    return;
                }
                for o in self.upgrade_process(pid, inst, &opts, false) {
                    tell(o, None);
                }
            }
        };
        scan(&inst);
        if d.once {
            return Ok(());
        }
        let rescan = d
            .rescan
            .unwrap_or(Duration::from_secs_f64(
                self.config.daemon.rescan_interval.max(0.0),
            ))
            .max(Duration::from_millis(50));
        let netlink = if d.no_netlink || !self.config.daemon.netlink {
            None
        } else {
            match ProcEvents::open() {
                Ok(n) => Some(n),
                Err(e) => {
                    self.emit(Event::DaemonScanOnly {
                        why: e.to_string(),
                        rescan,
                    });
                    None
                }
            }
        };
        self.emit(Event::DaemonWatching {
            patches: inst.patches.len(),
            netlink: netlink.is_some(),
        });
        // New processes under watch: pid -> (exec time, next check, interval).
        let mut watch: HashMap<i32, (Instant, Instant, Duration)> = HashMap::new();
        let mut next_scan = Instant::now() + rescan;
        loop {
            if self.stop_requested() {
                self.emit(Event::DaemonStopping);
                return Ok(());
            }
            let now = Instant::now();
            let next_watch = watch.values().map(|w| w.1).min();
            let wake = next_watch.map_or(next_scan, |w| w.min(next_scan));
            let timeout = wake.saturating_duration_since(now);
            match &netlink {
                Some(n) => {
                    let pids = n
                        .wait(timeout)
                        .map_err(|e| crate::AgentError::io("process events", e))?;
                    for pid in pids {
                        let t = Instant::now();
                        watch.insert(pid, (t, t, Duration::from_millis(1)));
                    }
                }
                // In short steps, so that a stop request is seen soon.
                None => std::thread::sleep(timeout.min(Duration::from_millis(100))),
            }
            let now = Instant::now();
            let due: Vec<i32> = watch
                .iter()
                .filter(|(_, w)| w.1 <= now)
                .map(|(p, _)| *p)
                .collect();
            for pid in due {
                if self.stop_requested() {
                    break;
                }
                let (born, _, interval) = watch[&pid];
                let outcomes = self.upgrade_process(pid, &inst, &opts, false);
                let patched = outcomes
                    .iter()
                    .any(|o| matches!(o, Outcome::Patched { .. }));
                for o in outcomes {
                    tell(o, Some(born.elapsed()));
                }
                if patched || now.duration_since(born) > WATCH_FOR || !alive(pid) {
                    watch.remove(&pid);
                } else {
                    let next = (interval * 2).min(Duration::from_millis(200));
                    watch.insert(pid, (born, now + interval, next));
                }
            }
            if now >= next_scan {
                let stamp = self.store_stamp();
                if stamp != stamp_seen {
                    stamp_seen = stamp;
                    match self.installed_patches(d.allow_unsigned) {
                        Ok(i) => inst = i,
                        Err(e) => self.emit(Event::DaemonReloadFailed { why: chain(&e) }),
                    }
                }
                scan(&inst);
                next_scan = Instant::now() + rescan;
            }
        }
    }

    /// When the store's index or the blacklist last changed.
    fn store_stamp(&self) -> Option<std::time::SystemTime> {
        let a = std::fs::metadata(self.paths.state_dir.join("store.json"))
            .and_then(|m| m.modified())
            .ok();
        let b = std::fs::read_dir(self.paths.blacklist_dir())
            .ok()
            .and_then(|d| {
                d.flatten()
                    .filter_map(|e| e.metadata().and_then(|m| m.modified()).ok())
                    .max()
            });
        a.max(b)
    }
}

fn alive(pid: i32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
}
