//! Termination requests: SIGTERM (what `systemctl stop` sends), SIGINT and
//! SIGHUP. They never cut an operation short. The operation in flight on
//! each process finishes (or rolls back: a wait for busy code ends at once,
//! leaving that process unchanged), no new operation starts, and hotsplice
//! then exits with status 128 + the signal number when it left work undone,
//! or 0 for the daemon, whose work is never done. The handler only records the signal; system calls hotsplice is
//! blocked in are restarted (`SA_RESTART`), except `poll`, which the daemon
//! uses to notice the request at once.

use std::sync::atomic::{AtomicI32, Ordering};

static REQUESTED: AtomicI32 = AtomicI32::new(0);

extern "C" fn on_signal(sig: i32) {
    REQUESTED.store(sig, Ordering::SeqCst);
}

/// Install the handlers. Call once, before any work starts.
pub fn install() {
    use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet, Signal};
    let action = SigAction::new(
        SigHandler::Handler(on_signal),
        SaFlags::SA_RESTART,
        SigSet::empty(),
    );
    for s in [Signal::SIGTERM, Signal::SIGINT, Signal::SIGHUP] {
        // SAFETY: the handler only stores into an atomic, which is
        // async-signal-safe.
        if let Err(e) = unsafe { sigaction(s, &action) } {
            tracing::warn!(signal = ?s, error = %e, "cannot handle signal");
        }
    }
}

/// The termination signal received, if any.
pub fn requested() -> Option<i32> {
    match REQUESTED.load(Ordering::SeqCst) {
        0 => None,
        s => Some(s),
    }
}

/// The signal's name, for messages.
pub fn name(sig: i32) -> &'static str {
    use nix::sys::signal::Signal;
    match Signal::try_from(sig) {
        Ok(s @ (Signal::SIGTERM | Signal::SIGINT | Signal::SIGHUP)) => s.as_str(),
        _ => "a signal",
    }
}

static LEFT_UNDONE: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// Note that `n` jobs were not started because of a termination request.
pub fn left_undone(n: usize) {
    LEFT_UNDONE.fetch_add(n, Ordering::SeqCst);
}

/// If a termination request left work undone (processes not started, or,
/// with `failed`, an operation given up, such as a wait for busy code),
/// say so and exit with 128 + the signal number.
pub fn exit_if_cut_short(failed: bool) {
    let undone = LEFT_UNDONE.load(Ordering::SeqCst);
    if let (Some(sig), true) = (requested(), undone > 0 || failed) {
        if undone > 0 {
            eprintln!(
                "hotsplice: stopped by {}: the operations in flight were finished or rolled back; {undone} more process(es) were left as they were",
                name(sig)
            );
        } else {
            eprintln!(
                "hotsplice: stopped by {}: the operation in flight was finished or rolled back",
                name(sig)
            );
        }
        std::process::exit(128 + sig);
    }
}
