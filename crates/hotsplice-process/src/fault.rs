//! Kill points for tests (compiled in only with the `fault-injection`
//! feature): every ptrace request and every write into a target's memory is
//! a numbered point, so a test can kill hotsplice just before any one of
//! them and check that the target survives.
//!
//! * `HOTSPLICE_KILL_AT=K` — at the K-th point, send hotsplice
//!   `HOTSPLICE_KILL_SIGNAL` (`KILL` by default; `TERM`, `INT`, `HUP`).
//! * `HOTSPLICE_KILL_FIRED=FILE` — write "K what" to FILE when it fires.
//! * `HOTSPLICE_KILL_COUNT=FILE` — write the number of points reached to
//!   FILE when hotsplice exits normally.

#[cfg(feature = "fault-injection")]
mod on {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::OnceLock;

    use nix::sys::signal::{kill, Signal};
    use nix::unistd::getpid;

    static HITS: AtomicU64 = AtomicU64::new(0);

    struct Spec {
        at: Option<u64>,
        signal: Signal,
        fired: Option<String>,
    }

    fn spec() -> &'static Spec {
        static SPEC: OnceLock<Spec> = OnceLock::new();
        SPEC.get_or_init(|| {
            if std::env::var_os("HOTSPLICE_KILL_COUNT").is_some() {
                extern "C" fn write_count() {
                    if let Some(p) = std::env::var_os("HOTSPLICE_KILL_COUNT") {
                        let _ = std::fs::write(p, HITS.load(Ordering::SeqCst).to_string());
                    }
                }
                crate::sys::at_exit(write_count);
            }
            Spec {
                at: std::env::var("HOTSPLICE_KILL_AT")
                    .ok()
                    .and_then(|v| v.parse().ok()),
                signal: match std::env::var("HOTSPLICE_KILL_SIGNAL").as_deref() {
                    Ok("TERM") => Signal::SIGTERM,
                    Ok("INT") => Signal::SIGINT,
                    Ok("HUP") => Signal::SIGHUP,
                    _ => Signal::SIGKILL,
                },
                fired: std::env::var("HOTSPLICE_KILL_FIRED").ok(),
            }
        })
    }

    pub(crate) fn point(what: &str) {
        let s = spec();
        let n = HITS.fetch_add(1, Ordering::SeqCst) + 1;
        if s.at == Some(n) {
            if let Some(f) = &s.fired {
                let _ = std::fs::write(f, format!("{n} {what}\n"));
            }
            let _ = kill(getpid(), s.signal);
        }
    }
}

#[cfg(feature = "fault-injection")]
pub(crate) use on::point;

#[cfg(not(feature = "fault-injection"))]
#[inline(always)]
pub(crate) fn point(_what: &str) {}
