//! `hotsplice daemon`: the agent's daemon loop (see
//! `hotsplice_agent::DaemonOptions`), its events shown as log lines.

use crate::app::App;
use anyhow::Result;
use clap::Args;
use std::time::Duration;

#[derive(Args)]
pub struct DaemonArgs {
    /// Do one recovery and one full scan, then exit (e.g. at boot).
    #[arg(long)]
    once: bool,
    /// Seconds between full scans (default: the configuration's daemon.rescan_interval).
    #[arg(long)]
    rescan: Option<f64>,
    /// Do not use the netlink process-event connector; scan only.
    #[arg(long)]
    no_netlink: bool,
    /// Use installed patches without a signature (development only):
    /// every patch is verified again on use, whatever the store says.
    #[arg(long)]
    allow_unsigned: bool,
    /// Do not sync with the fleet server, even when registered.
    #[arg(long)]
    no_fleet: bool,
}

pub fn run(app: &App, a: DaemonArgs) -> Result<bool> {
    app.agent.run_daemon(&hotsplice_agent::DaemonOptions {
        once: a.once,
        rescan: a.rescan.map(|s| Duration::from_secs_f64(s.max(0.0))),
        no_netlink: a.no_netlink,
        allow_unsigned: a.allow_unsigned,
        no_fleet: a.no_fleet,
    })?;
    Ok(true)
}
