//! What every command of the binary holds: the agent (the library that
//! does the work) and the global flags; and how the agent's events are
//! shown.

use crate::journal::{self, Stream};
use crate::output::esc;
use anyhow::Result;
use hotsplice_agent::{Agent, AgentOptions, Event, Outcome};
use std::sync::Arc;

pub struct App {
    pub agent: Agent,
    pub quiet: bool,
    pub verbose: u8,
    pub yes: bool,
    pub dry_run: bool,
}

impl App {
    pub fn new(quiet: bool, verbose: u8, yes: bool, dry_run: bool) -> Result<App> {
        let agent = Agent::new(AgentOptions {
            events: Arc::new(move |e| show_event(&e, quiet)),
            // SIGTERM & co.: finish what is in flight, start nothing new,
            // end a wait for busy code at once.
            stop_requested: || crate::terminate::requested().is_some(),
        })?;
        Ok(App {
            agent,
            quiet,
            verbose,
            yes,
            dry_run,
        })
    }
}

/// How an event the agent sends is shown on standard error / output.
fn show_event(e: &Event, quiet: bool) {
    match e {
        Event::Warning { message } => errln!("hotsplice: warning: {}", esc(message)),
        Event::UnsignedAllowed { what } => errln!(
            "hotsplice: WARNING: --allow-unsigned: using {}, whose origin is NOT verified; \
             never do this outside development",
            esc(what)
        ),
        Event::Recovered {
            op,
            id,
            pid,
            result,
        } => {
            if !quiet {
                errln!(
                    "hotsplice: recovered an interrupted {} of {} in pid {pid}: {}",
                    op.name(),
                    esc(id),
                    esc(result)
                )
            }
        }
        Event::RecoveryPending { op, id, pid, why } => errln!(
            "hotsplice: warning: cannot yet recover the interrupted {} of {} in pid {pid}: {}; will retry",
            op.name(),
            esc(id),
            esc(why)
        ),
        // Drawn by the command that asked for it (it knows the terminal).
        Event::Progress { .. } => {}
        Event::DaemonWatching { patches, netlink } => outln!(
            "hotsplice daemon: watching {patches} installed patch(es){}",
            if *netlink {
                ", process events on"
            } else {
                ""
            }
        ),
        Event::DaemonScanOnly { why, rescan } => errln!(
            "hotsplice daemon: no process events ({}); scanning every {rescan:?}",
            esc(why)
        ),
        Event::DaemonReloadFailed { why } => errln!("hotsplice daemon: reload: {}", esc(why)),
        Event::DaemonOutcome {
            outcome,
            since_exec,
        } => show_daemon_outcome(outcome, *since_exec),
        Event::FleetRetry {
            attempt,
            of,
            wait_s,
            why,
        } => {
            if !quiet {
                errln!(
                    "hotsplice: no fleet server answered ({}); retry {attempt} of {of} in {wait_s:.1} s",
                    esc(why)
                )
            }
        }
        Event::FleetSynced {
            server,
            feed_version,
            patches,
            applied,
            failures,
        } => {
            outln!(
                "hotsplice daemon: synced with {} (feed version {feed_version}, {patches} patch(es)), applied {applied}",
                esc(server)
            );
            for f in failures {
                errln!("hotsplice daemon: sync: {}", esc(f));
            }
        }
        Event::FleetSyncFailed { why } => errln!("hotsplice daemon: sync failed: {}", esc(why)),
        Event::DaemonStopping => outln!(
            "hotsplice daemon: stopping on {}; no operation was in flight",
            crate::terminate::requested().map_or("a signal", crate::terminate::name)
        ),
    }
}

fn show_daemon_outcome(o: &Outcome, since: Option<std::time::Duration>) {
    match o {
        Outcome::Patched {
            pid,
            id,
            replaced,
            stopped_us,
        } => {
            let comm = hotsplice_agent::comm(*pid);
            let message = format!(
                "patched pid {pid} ({}) with {}{}{}; threads stopped {stopped_us} us",
                esc(&comm),
                esc(id),
                replaced
                    .as_ref()
                    .map(|r| format!(" replacing {}", esc(r)))
                    .unwrap_or_default(),
                since
                    .map(|d| format!(", {:.1} ms after exec", d.as_secs_f64() * 1e3))
                    .unwrap_or_default()
            );
            process_line(Stream::Out, true, &message, id, *pid, &comm, "applied");
        }
        Outcome::Failed { pid, id, why } => {
            let comm = hotsplice_agent::comm(*pid);
            let message = format!(
                "failed: {} in pid {pid} ({}): {}",
                esc(id),
                esc(&comm),
                esc(why)
            );
            process_line(Stream::Err, true, &message, id, *pid, &comm, "failed");
        }
        Outcome::Skipped { pid, why } => outln!("skipped pid {pid}: {}", esc(why)),
        _ => {}
    }
}

/// A result line about patch `id` in process `pid` (see [`journal::line`]).
pub fn process_line(
    stream: Stream,
    print: bool,
    message: &str,
    id: &str,
    pid: i32,
    comm: &str,
    result: &str,
) {
    let record = journal::Record {
        patch_id: id,
        target: journal::Target::Process { pid, comm },
        result,
    };
    journal::line(stream, print, message, &record);
}
