//! What the agent tells its caller while it works: warnings, recoveries,
//! progress, the daemon's doings. The agent never prints; the caller (the
//! CLI, a server) renders these or logs them. Every text field comes from
//! patches, processes or disk: escape it before showing it on a terminal.

use crate::upgrade::Outcome;
use hotsplice_patch::{Op, PatchId};
use serde::Serialize;
use std::time::Duration;

#[derive(Debug, Clone, Serialize)]
#[serde(tag = "event", rename_all = "kebab-case")]
pub enum Event {
    /// Something the user should know that did not stop the work.
    Warning { message: String },
    /// `--allow-unsigned` let a patch with no signature through.
    UnsignedAllowed { what: String },
    /// An operation a killed hotsplice left half done was finished or
    /// rolled back.
    Recovered {
        op: Op,
        id: PatchId,
        pid: i32,
        result: String,
    },
    /// Such an operation could not be recovered yet (retried next time).
    RecoveryPending {
        op: Op,
        id: PatchId,
        pid: i32,
        why: String,
    },
    /// `done` of `total` processes handled (upgrade).
    Progress { done: usize, total: usize },
    /// The daemon started watching.
    DaemonWatching { patches: usize, netlink: bool },
    /// The daemon has no process events and scans only.
    DaemonScanOnly {
        why: String,
        #[serde(serialize_with = "secs")]
        rescan: Duration,
    },
    /// The daemon re-read the store or the blacklist and failed.
    DaemonReloadFailed { why: String },
    /// The daemon did this for a process (`since_exec`: for a new process).
    DaemonOutcome {
        outcome: Outcome,
        #[serde(skip_serializing_if = "Option::is_none", serialize_with = "opt_secs")]
        since_exec: Option<Duration>,
    },
    /// The daemon stops on a termination request.
    DaemonStopping,
    /// No fleet server answered; trying again after `wait_s` seconds
    /// (round `attempt` of `of` retries).
    FleetRetry {
        attempt: u32,
        of: u32,
        wait_s: f64,
        why: String,
    },
    /// The daemon synced with the fleet server.
    FleetSynced {
        server: String,
        feed_version: u64,
        patches: usize,
        applied: usize,
        failures: Vec<String>,
    },
    /// The daemon's sync failed (tried again at the next interval).
    FleetSyncFailed { why: String },
}

fn secs<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64())
}

fn opt_secs<S: serde::Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
    match d {
        Some(d) => s.serialize_f64(d.as_secs_f64()),
        None => s.serialize_none(),
    }
}

/// Where events go. Called from worker threads too.
pub type Sink = std::sync::Arc<dyn Fn(Event) + Send + Sync>;
