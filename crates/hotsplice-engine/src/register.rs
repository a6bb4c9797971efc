//! The patch's unwind information and the program's own unwinder: libgcc's
//! (`libgcc_s.so.1`), which `backtrace()`, C++ exceptions and
//! `pthread_cancel` use, finds the FDEs of code that no loaded object
//! covers — the patch's anonymous mapping — only among frames registered
//! with `__register_frame_info`. Apply registers the patch's `.eh_frame`
//! before any jump leads into its code; whatever unmaps the code
//! deregisters it first.
//!
//! libgcc aborts the program when asked to deregister what it does not
//! hold, and links the same object twice into a loop when asked to
//! register it twice: whether a registration was made must be known
//! exactly, also after hotsplice was killed at any instant. So both calls
//! go through a thunk in the patch's mapping that stores, in the target's
//! own memory, a state word before and after libgcc's call
//! ([`UnwindState`]): the target itself writes it, and a call started by a
//! hotsplice that died is finished by the thread alone and leaves the word
//! true. Registration happens only from a fresh word, deregistration only
//! from "registered"; a word in between means a call is running (or
//! crashed): the mapping is then left in place, never unmapped under
//! libgcc.
//!
//! libgcc's calls take its `object_mutex`, and deregistration may `free()`
//! the table libgcc sorted: the thread that makes them must hold neither
//! lock nor be inside malloc. The thread borrowed is one that waits in a
//! system call that neither allocator nor unwinder makes while holding a
//! lock (sleeps, polls, reads, futex waits), whose stack is walked whole
//! to its outermost frame, with no frame in libgcc_s and no signal frame
//! (a handler may have interrupted malloc or the unwinder with their lock
//! held).

use crate::objects::{exports_of, LoadedObject};
use crate::state::read_maps;
use crate::unwind::ProcessMemory;
use crate::{EngineError, Result};
use hotsplice_arch::current::{self as arch, dwarf};
use hotsplice_patch::{AppliedRecord, PatchId, UnwindRecord, UnwindState};
use hotsplice_process::{self as process, Mapping, Pid, RemoteThread, Tracee};
use serde::Serialize;
use std::time::{Duration, Instant};

/// libgcc's unwinder as mapped in a process.
pub(crate) struct Libgcc {
    pub path: String,
    start: u64,
    end: u64,
    register: u64,
    deregister: u64,
}

/// What became of a patch's unwind information in the program's unwinder.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Registration {
    /// The patch carries none (made before hotsplice carried it).
    None,
    /// Registered with libgcc_s: `backtrace()`, C++ exceptions and
    /// `pthread_cancel` walk through the patch's frames.
    Registered,
    /// The process does not map libgcc_s: hotsplice's own walks use the
    /// information, the program's unwinder (were it loaded later) does not
    /// know it. A later `user apply`, upgrade, daemon pass or `user show`
    /// registers it once libgcc_s is mapped ([`register_pending`]).
    NoLibgcc,
    /// libgcc_s is mapped, but no thread was fit to make the call (none
    /// waited in a suitable system call, outside signal handlers, for 2 s)
    /// and the apply was asked to go ahead (`unwind_later`): the next
    /// `user apply`, upgrade, daemon pass or `user show` registers it.
    Deferred,
}

impl std::fmt::Display for Registration {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Registration::None => "the patch carries no unwind information",
            Registration::Registered => "unwind information registered with libgcc_s",
            Registration::NoLibgcc => {
                "unwind information not registered: the process does not map libgcc_s (backtrace(), C++ exceptions and pthread_cancel would not walk through the patch's frames); registered when a later command finds it mapped"
            }
            Registration::Deferred => {
                "unwind information not registered yet: no thread was fit to make libgcc's call; the next `hotsplice user` command or daemon pass that finds one registers it"
            }
        })
    }
}

/// libgcc_s in `objects`, with its registration functions.
pub(crate) fn libgcc(pid: Pid, objects: &[LoadedObject]) -> Option<Libgcc> {
    let o = objects.iter().find(|o| {
        let name = o.path.rsplit('/').next().unwrap_or("");
        name.starts_with("libgcc_s.so")
    })?;
    let e = exports_of(pid, o)?;
    let f = |name: &str| {
        e.get(name)
            .filter(|x| !x.tls && !x.ifunc)
            .map(|x| o.bias.wrapping_add(x.value))
    };
    Some(Libgcc {
        path: o.path.clone(),
        start: o.start,
        end: o.end,
        register: f("__register_frame_info")?,
        deregister: f("__deregister_frame_info")?,
    })
}

/// System calls in which a thread holds none of the locks libgcc's
/// registration takes (or malloc's, which deregistration may take).
fn waiting(nr: i64) -> bool {
    [
        libc::SYS_read,
        libc::SYS_poll,
        libc::SYS_ppoll,
        libc::SYS_select,
        libc::SYS_pselect6,
        libc::SYS_epoll_wait,
        libc::SYS_epoll_pwait,
        libc::SYS_nanosleep,
        libc::SYS_clock_nanosleep,
        libc::SYS_pause,
        libc::SYS_rt_sigsuspend,
        libc::SYS_rt_sigtimedwait,
        libc::SYS_futex,
        libc::SYS_wait4,
        libc::SYS_waitid,
        libc::SYS_accept,
        libc::SYS_accept4,
        libc::SYS_recvfrom,
        libc::SYS_recvmsg,
    ]
    .contains(&nr)
}

/// The system call thread `tid` waits in, from `/proc` (`None` when it
/// runs or is not in one).
fn syscall_of(pid: Pid, tid: Pid) -> Option<i64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/syscall")).ok()?;
    text.split_whitespace().next()?.parse().ok()
}

/// How long to look for a thread that waits in a suitable system call.
const FIND_THREAD: Duration = Duration::from_secs(2);

/// One call of libgcc's through the thunk: `func(a0, a1)`, the state word
/// set to `before`, then to `after`.
#[derive(Clone, Copy)]
struct Marked {
    a0: u64,
    a1: u64,
    func: u64,
    before: u64,
    after: u64,
}

/// A call libgcc made on a borrowed thread.
#[derive(Debug, Clone, Copy)]
struct Called {
    /// The state word afterwards.
    word: u64,
    /// The thread borrowed.
    tid: Pid,
    /// How long that thread was stopped (interrupt, checks, the call,
    /// resume); the other threads ran on.
    time: Duration,
}

/// Run the thunk on a suitable thread of `tracee`. `Ok(Err(why))`: no
/// thread was fit for 2 s (nothing was called).
fn marked_call(
    pid: Pid,
    tracee: &mut Tracee,
    lib: &Libgcc,
    (objects, maps): (&[LoadedObject], &[Mapping]),
    u: &UnwindRecord,
    m: &Marked,
) -> Result<std::result::Result<Called, String>> {
    let Marked {
        a0,
        a1,
        func,
        before,
        after,
    } = *m;
    // The thunk is ours, as written at install: the record that names it
    // was read from the process, which may have written anything there.
    let thunk = &arch::remote::MARKED_CALL;
    if process::read_memory(pid, u.thunk, thunk.len())
        .ok()
        .as_deref()
        != Some(&thunk[..])
    {
        return Err(EngineError::Refused {
            pid,
            why: format!(
                "the registration thunk at {:#x} is not the one hotsplice wrote; leaving the patch's unwind information alone",
                u.thunk
            ),
        });
    }
    let mut unwinder = {
        let mut cache = crate::unwind::shared_cache()
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        crate::unwind::for_process(pid, maps, objects, &mut cache)
    };
    let deadline = Instant::now() + FIND_THREAD;
    // Why each thread was passed over, in the last round.
    let mut unfit: Vec<(Pid, String)> = Vec::new();
    loop {
        let mut tids = tracee.tids();
        // The main thread first, as other remote operations do.
        tids.sort_by_key(|&t| t != pid);
        unfit.clear();
        for tid in tids {
            match syscall_of(pid, tid) {
                Some(nr) if waiting(nr) => {}
                Some(nr) => {
                    unfit.push((
                        tid,
                        format!(
                            "in {}, not a waiting system call",
                            arch::syscalls::describe(nr)
                        ),
                    ));
                    continue;
                }
                None => {
                    unfit.push((tid, "running, not in a system call".into()));
                    continue;
                }
            }
            let t0 = Instant::now();
            let r = tracee.with_specific_thread(tid, |t: &mut RemoteThread<'_>| {
                let regs = *t.regs();
                let nr = arch::remote::syscall_number(&regs) as i64;
                if !arch::remote::in_syscall(&regs) || !waiting(nr) {
                    return Ok(Err("left its system call".to_string()));
                }
                let mut frames = Vec::new();
                let stop = unwinder.walk(&dwarf::initial(&regs), &ProcessMemory(pid), &mut frames);
                // Only a thread whose whole stack is known: every frame
                // walked to the outermost one, none in libgcc_s, and no
                // signal frame (a handler may have interrupted code holding
                // malloc's or libgcc's lock, which the call would then wait
                // for forever).
                if frames.iter().skip(1).any(|&(_, after_signal)| after_signal) {
                    return Ok(Err("inside a signal handler".to_string()));
                }
                if frames
                    .iter()
                    .any(|&(pc, _)| (lib.start..lib.end).contains(&pc))
                {
                    return Ok(Err("inside libgcc_s".to_string()));
                }
                if !matches!(stop, crate::unwind::Stop::Outermost) {
                    return Ok(Err(format!("its stack cannot be walked whole ({stop})")));
                }
                t.call(u.thunk, &[a0, a1, func, u.state, before, after])
                    .map(Ok)
            });
            match r {
                Ok(Ok(_)) => {
                    let time = t0.elapsed();
                    let word = state_word(pid, u)?;
                    return Ok(Ok(Called { word, tid, time }));
                }
                Ok(Err(why)) => unfit.push((tid, why)),
                Err(e) => {
                    // The call may have run: the state word says.
                    let word = state_word(pid, u)?;
                    if word != 0 && word != before {
                        let time = t0.elapsed();
                        return Ok(Ok(Called { word, tid, time }));
                    }
                    return Err(e.into());
                }
            }
        }
        if Instant::now() >= deadline {
            let mut why: Vec<String> = unfit
                .iter()
                .take(8)
                .map(|(tid, why)| format!("thread {tid} {why}"))
                .collect();
            if unfit.len() > 8 {
                why.push(format!("{} more", unfit.len() - 8));
            }
            return Ok(Err(format!(
                "no thread of the process was fit to call {} for {} s ({}); a thread interrupted elsewhere, or inside a signal handler, may hold the locks libgcc and malloc take",
                lib.path,
                FIND_THREAD.as_secs(),
                why.join("; ")
            )));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// The registration state word of `u`, as the target holds it.
pub(crate) fn state_word(pid: Pid, u: &UnwindRecord) -> Result<u64> {
    let b = process::read_memory(pid, u.state, 8)?;
    let w: [u8; 8] =
        b.get(..8)
            .and_then(|b| b.try_into().ok())
            .ok_or_else(|| EngineError::Refused {
                pid,
                why: format!("the unwind state word at {:#x} cannot be read", u.state),
            })?;
    Ok(u64::from_le_bytes(w))
}

/// What became of a registration, with the thread borrowed for it.
#[derive(Debug, Clone)]
pub(crate) struct Registered {
    pub what: Registration,
    /// The thread that made libgcc's call, and how long it was stopped.
    pub call: Option<(Pid, Duration)>,
    /// Why no thread could make the call (`Registration::Deferred`).
    pub deferred: Option<String>,
}

impl Registered {
    fn without_call(what: Registration) -> Registered {
        Registered {
            what,
            call: None,
            deferred: None,
        }
    }
}

/// Register `u` with libgcc_s, if the process maps it (apply, after the
/// record is written and before any jump leads into the code). When no
/// thread is fit to make the call: refused (nothing changed), unless
/// `later`, when the apply goes ahead `Deferred`.
pub(crate) fn register(
    pid: Pid,
    tracee: &mut Tracee,
    objects: &[LoadedObject],
    maps: &[Mapping],
    u: Option<&UnwindRecord>,
    later: bool,
) -> Result<Registered> {
    let Some(u) = u else {
        return Ok(Registered::without_call(Registration::None));
    };
    let Some(lib) = libgcc(pid, objects) else {
        return Ok(Registered::without_call(Registration::NoLibgcc));
    };
    match register_with(pid, tracee, &lib, (objects, maps), u)? {
        Ok(call) => Ok(Registered {
            what: Registration::Registered,
            call: Some(call),
            deferred: None,
        }),
        Err(why) if later => Ok(Registered {
            what: Registration::Deferred,
            call: None,
            deferred: Some(why),
        }),
        Err(why) => Err(EngineError::Refused {
            pid,
            why: format!(
                "without registering the patch's unwind information: {why}; a C++ exception thrown through a patched function would end the program. Nothing was changed: retry when a thread waits, or apply with --register-unwind-later to register it at the next command that finds one"
            ),
        }),
    }
}

/// Register `u` (state word 0) on a fit thread: `Ok(Err(why))` when none
/// was found.
fn register_with(
    pid: Pid,
    tracee: &mut Tracee,
    lib: &Libgcc,
    (objects, maps): (&[LoadedObject], &[Mapping]),
    u: &UnwindRecord,
) -> Result<std::result::Result<(Pid, Duration), String>> {
    if state_word(pid, u)? != 0 {
        return Err(EngineError::Refused {
            pid,
            why: format!(
                "the unwind state word at {:#x} of an unregistered mapping is not zero",
                u.state
            ),
        });
    }
    let call = Marked {
        a0: u.eh_frame,
        a1: u.object,
        func: lib.register,
        before: UnwindState::REGISTERING,
        after: UnwindState::REGISTERED,
    };
    let c = match marked_call(pid, tracee, lib, (objects, maps), u, &call)? {
        Ok(c) => c,
        Err(why) => return Ok(Err(why)),
    };
    match UnwindState::of(c.word) {
        UnwindState::Registered => Ok(Ok((c.tid, c.time))),
        other => Err(EngineError::Refused {
            pid,
            why: format!(
                "registering the patch's unwind information with {} left its state {other:?}",
                lib.path
            ),
        }),
    }
}

/// A registration made after the apply ([`register_pending`]).
#[derive(Debug, Clone, Serialize)]
pub struct LateRegistration {
    /// The patch whose unwind information it is.
    pub patch: PatchId,
    /// Registered now (`Ok`: the thread borrowed), or why not yet.
    #[serde(flatten)]
    pub outcome: LateOutcome,
}

/// The outcome of one [`LateRegistration`].
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "kebab-case", tag = "result")]
pub enum LateOutcome {
    /// Registered with libgcc_s by thread `tid`.
    Registered { tid: Pid },
    /// Not yet (no thread fit to make the call): the next command retries.
    NotYet { why: String },
}

/// Whether some applied patch of `pid` waits for its unwind information
/// to be registered and libgcc_s is mapped now (cheap: reads the process,
/// stops nothing).
pub fn registration_pending(pid: Pid) -> bool {
    pending(pid).is_some_and(|(_, _, _, p)| !p.is_empty())
}

type Pending = (Vec<Mapping>, Vec<LoadedObject>, Libgcc, Vec<AppliedRecord>);

fn pending(pid: Pid) -> Option<Pending> {
    let maps = read_maps(pid).ok()?;
    let applied = crate::state::applied_in(pid, &maps).ok()?;
    if !applied.iter().any(|h| h.unwind.is_some()) {
        return None;
    }
    let objects = crate::objects::loaded_objects(pid, &maps).ok()?;
    let lib = libgcc(pid, &objects)?;
    let waiting: Vec<AppliedRecord> = applied
        .into_iter()
        .filter(|h| {
            h.unwind
                .as_ref()
                .is_some_and(|u| state_word(pid, u).is_ok_and(|w| w == 0))
        })
        .collect();
    Some((maps, objects, lib, waiting))
}

/// Register the unwind information of every applied patch of `pid` that
/// was applied without it (libgcc_s was not mapped then — a C program
/// that loads it later for `backtrace()` or `pthread_cancel`, a C++
/// plugin opened later — or no thread was fit to make the call). The
/// caller holds the process's lock, so that no undo unmaps a patch
/// meanwhile. Jumps into the code are in already: registering late only
/// makes the program's unwinder know frames it did not know before.
pub fn register_pending(pid: Pid) -> Result<Vec<LateRegistration>> {
    if !registration_pending(pid) {
        return Ok(Vec::new());
    }
    let mut tracee = Tracee::seize(pid)?;
    // Read again once seized: what is applied and unregistered now.
    let Some((maps, objects, lib, waiting)) = pending(pid) else {
        let _ = tracee.detach();
        return Ok(Vec::new());
    };
    let mut out = Vec::new();
    let mut result = Ok(());
    for h in &waiting {
        let Some(u) = h.unwind.as_ref() else { continue };
        match register_with(pid, &mut tracee, &lib, (&objects, &maps), u) {
            Ok(Ok((tid, _))) => out.push(LateRegistration {
                patch: h.patch_id.clone(),
                outcome: LateOutcome::Registered { tid },
            }),
            Ok(Err(why)) => out.push(LateRegistration {
                patch: h.patch_id.clone(),
                outcome: LateOutcome::NotYet { why },
            }),
            Err(e) => {
                result = Err(e);
                break;
            }
        }
    }
    let _ = tracee.detach();
    result.map(|()| out)
}

/// How long to wait for a registration call that is still running.
const SETTLE: Duration = Duration::from_secs(2);

/// Make the mapping of `h` safe to unmap as far as libgcc is concerned:
/// deregister its unwind information if it is registered. `Err` (a reason)
/// when it must stay mapped. `tracee` is the caller's, if it holds one.
pub(crate) fn release(
    pid: Pid,
    u: Option<&UnwindRecord>,
    tracee: Option<&mut Tracee>,
) -> std::result::Result<(), String> {
    let Some(u) = u else { return Ok(()) };
    let settle = Instant::now() + SETTLE;
    let word = loop {
        let w = state_word(pid, u).map_err(|e| e.to_string())?;
        match UnwindState::of(w) {
            UnwindState::Registering | UnwindState::Deregistering if Instant::now() < settle => {
                std::thread::sleep(Duration::from_millis(10));
            }
            _ => break w,
        }
    };
    match UnwindState::of(word) {
        UnwindState::None | UnwindState::Deregistered => return Ok(()),
        UnwindState::Registered => {}
        other => {
            return Err(format!(
                "its unwind information's registration is in state {other:?} (a call into libgcc_s did not finish)"
            ))
        }
    }
    let maps = read_maps(pid).map_err(|e| e.to_string())?;
    let objects = crate::objects::loaded_objects(pid, &maps).map_err(|e| e.to_string())?;
    let lib = libgcc(pid, &objects)
        .ok_or("its unwind information is registered but libgcc_s is no longer found")?;
    let call = Marked {
        a0: u.eh_frame,
        a1: 0,
        func: lib.deregister,
        before: UnwindState::DEREGISTERING,
        after: UnwindState::DEREGISTERED,
    };
    let word = match tracee {
        Some(t) => marked_call(pid, t, &lib, (&objects, &maps), u, &call),
        None => {
            let mut t = Tracee::seize(pid).map_err(|e| e.to_string())?;
            let r = marked_call(pid, &mut t, &lib, (&objects, &maps), u, &call);
            let _ = t.detach();
            r
        }
    }
    .map_err(|e| format!("deregistering its unwind information failed: {e}"))?
    .map_err(|why| format!("its unwind information cannot be deregistered yet: {why}"))?
    .word;
    match UnwindState::of(word) {
        UnwindState::Deregistered => Ok(()),
        other => Err(format!(
            "deregistering its unwind information left its state {other:?}"
        )),
    }
}

/// [`release`] for an applied or retired record.
pub(crate) fn release_record(pid: Pid, h: &AppliedRecord) -> std::result::Result<(), String> {
    release(pid, h.unwind.as_ref(), None)
}
