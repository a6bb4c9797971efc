//! The stop window, retried while code is busy.

use crate::journal::fault;
use crate::safety::{
    find_busy, find_busy_walking, interrupted_spans, needs_fresh_maps, stack_spans, Lingering,
    Ranges, StackCheck, Walker,
};
use crate::state::read_maps;
use crate::{ApplyOptions, EngineError, StackWalk};
use hotsplice_process::{
    self as process, Mapping, MemWriter, Pid, RunAlone, StoppedThread, Tracee,
};
use std::time::{Duration, Instant};

/// One write of the window: at `addr`, replace `expect` with `new`.
pub(crate) struct Write {
    pub addr: u64,
    pub new: Vec<u8>,
    pub expect: Vec<u8>,
    pub name: String,
}

/// Every write of a window is in: the change took effect.
pub(crate) struct Committed {
    pub threads: usize,
    pub attempts: u32,
    pub stopped: Duration,
    /// How long the threads that were running stayed stopped (stopped
    /// last, let go first), if any was.
    pub stopped_running: Option<Duration>,
    /// How the stacks were checked in the window that committed.
    pub stacks: StackCheck,
    /// Threads led out of busy code, over all windows.
    pub lead_out: LeadOut,
    /// Where the time of the committing window went.
    pub times: WindowTimes,
    /// Threads left in replaced functions (`let_running_finish`).
    pub lingering: Vec<Lingering>,
}

/// Proof that no jump leads into a patch mapping, so that it may be
/// unmapped. Made once, when the mapping is new
/// ([`Unreachable::fresh_mapping`]); a window that writes jumps takes it,
/// and gives it back only when it left the process unchanged.
#[must_use]
pub(crate) struct Unreachable(());

impl Unreachable {
    /// For a mapping just made, which nothing can jump into yet.
    pub(crate) fn fresh_mapping() -> Unreachable {
        Unreachable(())
    }
}

/// How a stop window ended. `held` is what the caller gave the window to
/// keep (an [`Unreachable`] for the new code of an apply): it comes back
/// only with [`Outcome::Unchanged`].
#[must_use]
pub(crate) enum Outcome<T> {
    /// Every write is in (a detach error after that is only logged: the
    /// change counts as made).
    Committed(Committed),
    /// The process is as before the window: nothing was written, or what
    /// was written was put back before any thread ran.
    Unchanged(EngineError, T),
    /// A write failed and one already made could not be put back
    /// ([`EngineError::PartlyApplied`]): what it leads into must stay.
    PartlyApplied(EngineError),
}

/// Let the process run for `backoff` (at most until `deadline`, or until the caller stops
/// waiting) before the next window. While seized, a thread that gets a signal or starts a thread
/// waits for us: such stops are collected meanwhile.
fn wait_running(
    tracee: &mut Tracee,
    deadline: Instant,
    backoff: Duration,
    opts: &ApplyOptions,
) -> hotsplice_process::Result<()> {
    let until = Instant::now() + backoff.min(deadline.saturating_duration_since(Instant::now()));
    while Instant::now() < until && !opts.stop_waiting.is_some_and(|stop| stop()) {
        tracee.service_events()?;
        std::thread::sleep(
            Duration::from_millis(2).min(until.saturating_duration_since(Instant::now())),
        );
    }
    Ok(())
}

/// Stop all threads, check none is inside `ranges`, check the bytes to
/// overwrite are still what they were, write, detach. While busy, let the
/// process run and retry until the timeout. `maps` (read before, sorted)
/// locate the stacks; when a thread's stack is not in them (a thread
/// started since), the threads are let go, the maps read again and the
/// window retried: no `/proc` read happens while threads are stopped.
#[allow(clippy::too_many_arguments)]
pub(crate) fn stop_and_write<T>(
    pid: Pid,
    tracee: &mut Tracee,
    mem: &MemWriter,
    maps: &[Mapping],
    objects: Option<&[crate::LoadedObject]>,
    ranges: &Ranges,
    opts: &ApplyOptions,
    writes: &[Write],
    fault_point: &str,
    held: T,
) -> Outcome<T> {
    macro_rules! unchanged {
        ($e:expr) => {
            match $e {
                Ok(v) => v,
                Err(e) => return Outcome::Unchanged(e.into(), held),
            }
        };
    }
    let started = Instant::now();
    let deadline = started + opts.busy_timeout;
    let mut backoff = Duration::from_millis(5);
    let mut maps = maps.to_vec();
    let checks: Vec<(u64, usize)> = writes.iter().map(|w| (w.addr, w.expect.len())).collect();
    let mut attempts = 0u32;
    // Stacks are read into one buffer, sized before the window so the
    // window itself does not allocate.
    let mut stack_buf: Vec<u8> = Vec::with_capacity(tracee.thread_count().max(1) * 32 * 1024);
    let mut extra_buf: Vec<u8> = Vec::new();
    // Stack pointers saved by signal frames, found during the busy scan.
    let mut frames: Vec<(usize, u64)> = Vec::with_capacity(16);
    // Whether `maps` were read after the last window (then a stack still
    // not in them counts as unreadable, so busy).
    let mut fresh = false;
    let mut led = LeadOut::default();
    // Threads being led out together, and what their last slice took.
    let mut led_set: Vec<Pid> = Vec::with_capacity(LEAD_TOGETHER);
    let mut slices: Vec<hotsplice_process::Slice> = Vec::with_capacity(LEAD_TOGETHER);
    let mut lingering: Vec<Lingering> = Vec::new();
    // Unwind tables, read now, with every thread running.
    let mut unwinder = match opts.stack_walk {
        StackWalk::Exact => {
            // The caller's, when it read them (apply); else read now.
            let read;
            let objects = match objects {
                Some(o) => o,
                None => {
                    read = crate::objects::loaded_objects(pid, &maps).unwrap_or_default();
                    &read
                }
            };
            let mut cache = crate::unwind::shared_cache()
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            Some(crate::unwind::for_process(pid, &maps, objects, &mut cache))
        }
        StackWalk::Scan => None,
    };
    loop {
        attempts += 1;
        let mut bufs = Buffers {
            stack: &mut stack_buf,
            extra: &mut extra_buf,
            frames: &mut frames,
            lingering: &mut lingering,
            read: Duration::ZERO,
            check: Duration::ZERO,
        };
        // The sleeping threads' stacks are checked batch by batch as soon
        // as they are stopped, while the running threads still run: off
        // their stop. A batch found clean may be parked in its system
        // calls (see `Tracee::stop_all_then`): those threads are not
        // stopped for the rest of the window.
        let mut early_busy: Option<crate::safety::BusyThread> = None;
        let mut early_check = StackCheck::default();
        let mut early_all = true;
        let mut early_any = false;
        let mut early_lingering: Vec<Lingering> = Vec::new();
        let window = tracee.stop_all_then(&mut |batch| {
            if early_busy.is_some() || !early_all || batch.is_empty() {
                return false;
            }
            if needs_fresh_maps(&stack_spans(batch, &maps)) {
                early_all = false;
                return false;
            }
            let (b, c) = check_threads(pid, batch, &maps, ranges, unwinder.as_mut(), &mut bufs);
            early_lingering.append(bufs.lingering);
            early_check = std::mem::take(&mut early_check).merge(c);
            early_any = true;
            if b.is_some() {
                early_busy = b;
                return false;
            }
            // A parked thread executes its `syscall` instruction again:
            // never one this window rewrites.
            !batch.iter().any(|t| {
                let at = process::syscall_insn(&t.regs);
                writes
                    .iter()
                    .any(|w| at < w.addr + w.new.len() as u64 && w.addr < at + 2)
            })
        });
        let asleep_for_good = match &window {
            Err(hotsplice_process::Error::Uninterruptible { tid, .. }) => Some(*tid),
            _ => None,
        };
        // No thread was stopped: wait with the process running, as for busy code.
        if let Some(tid) = asleep_for_good {
            drop(window);
            let waited_ms = started.elapsed().as_millis();
            if Instant::now() >= deadline || opts.stop_waiting.is_some_and(|stop| stop()) {
                let e = EngineError::Uninterruptible {
                    pid,
                    tid,
                    waited_ms,
                };
                return Outcome::Unchanged(e, held);
            }
            unchanged!(wait_running(tracee, deadline, backoff, opts));
            backoff = (backoff * 2).min(Duration::from_millis(200));
            continue;
        }
        let mut window = unchanged!({ window });
        // From the first interrupt (not the states read before it).
        let t0 = window.started();
        let spans = stack_spans(window.threads(), &maps);
        if needs_fresh_maps(&spans) && !fresh {
            unchanged!(window.resume());
            maps = unchanged!(read_maps(pid));
            fresh = true;
            continue;
        }
        fresh = false;
        let (interrupt, wait) = window.stop_times();
        let (states, running) = (window.states_read(), window.running());
        let k = window.early_count();
        let (mut busy, mut check) = if early_busy.is_some() {
            // Busy already: the rest is not looked at (as in one check).
            (early_busy.take(), early_check)
        } else if early_all && early_any && k <= window.threads().len() {
            let rest = &window.threads()[k..];
            let (b, more) = check_threads(pid, rest, &maps, ranges, unwinder.as_mut(), &mut bufs);
            early_lingering.append(bufs.lingering);
            *bufs.lingering = early_lingering;
            (b, early_check.merge(more))
        } else {
            check_threads(
                pid,
                window.threads(),
                &maps,
                ranges,
                unwinder.as_mut(),
                &mut bufs,
            )
        };
        let (first_read, first_check) = (bufs.read, bufs.check);
        // Lead busy threads out: the busy ones run alone together, the
        // others stopped, in short slices; each stays stopped as soon as
        // its stack no longer holds busy code; then everything is checked
        // again. Bounded; a thread that does not come out (it waits for a
        // lock a stopped thread holds, or never returns) ends it, and the
        // process runs while we retry.
        let mut lead = LeadBudget::start();
        'lead: while let Some(b) = busy.as_ref() {
            if !b.can_lead_out || lead.spent() || opts.stop_waiting.is_some_and(|stop| stop()) {
                break;
            }
            // Every busy thread, not only the first one found: their waits
            // for a CPU overlap on a loaded machine.
            led_set.clear();
            led_set.push(b.tid);
            let mut from = position(window.threads(), b.tid) + 1;
            while led_set.len() < LEAD_TOGETHER && from < window.threads().len() {
                let tail = &window.threads()[from..];
                match check_threads(pid, tail, &maps, ranges, unwinder.as_mut(), &mut bufs).0 {
                    None => break,
                    Some(m) if !m.can_lead_out => break 'lead,
                    Some(m) => {
                        from = position(window.threads(), m.tid) + 1;
                        led_set.push(m.tid);
                    }
                }
            }
            while !led_set.is_empty() {
                if lead.spent() {
                    break 'lead;
                }
                match unchanged!(window.run_alone(&led_set, LEAD_SLICE, &mut slices)) {
                    RunAlone::Stopped => lead.round(&slices),
                    RunAlone::Changed => break 'lead,
                }
                led.slices += led_set.len();
                let mut k = 0;
                while k < led_set.len() {
                    let Some(&t) = window.threads().get(position(window.threads(), led_set[k]))
                    else {
                        break 'lead;
                    };
                    let one = std::slice::from_ref(&t);
                    match check_threads(pid, one, &maps, ranges, unwinder.as_mut(), &mut bufs).0 {
                        None => {
                            // Out: it stays stopped from now on.
                            led_set.swap_remove(k);
                            led.threads += 1;
                        }
                        Some(b) if !b.can_lead_out => break 'lead,
                        Some(_) => k += 1,
                    }
                }
            }
            // Their stacks moved and they may have written memory: all
            // again, the parked threads too (they ran no user code, but
            // their stacks are memory the led threads could write).
            let spans = stack_spans(window.threads(), &maps);
            if needs_fresh_maps(&spans)
                || needs_fresh_maps(&stack_spans(window.parked_threads(), &maps))
            {
                break;
            }
            (busy, check) = check_threads(
                pid,
                window.threads(),
                &maps,
                ranges,
                unwinder.as_mut(),
                &mut bufs,
            );
            if busy.is_none() && !window.parked_threads().is_empty() {
                let seen = std::mem::take(bufs.lingering);
                let (b, more) = check_threads(
                    pid,
                    window.parked_threads(),
                    &maps,
                    ranges,
                    unwinder.as_mut(),
                    &mut bufs,
                );
                let mut all = seen;
                all.append(bufs.lingering);
                *bufs.lingering = all;
                busy = b;
                check = check.merge(more);
            }
        }
        let lead_time = lead.started.elapsed();
        led.time += lead_time;
        led.waited += lead.waited;
        if busy.is_some() && lead.slices > 0 {
            tracing::debug!(
                pid,
                slices = lead.slices,
                wall_us = lead_time.as_micros() as u64,
                waited_us = lead.waited.as_micros() as u64,
                ran_us = lead.ran.as_micros() as u64,
                "leading out did not finish in this window"
            );
        }
        let threads = window.threads();
        if let Some(busy) = busy {
            unchanged!(window.resume());
            if attempts == 1 {
                // Said once, with every thread running again (`-v`).
                for f in &check.fallbacks {
                    tracing::info!(pid, "{f}");
                }
            }
            if opts.stop_waiting.is_some_and(|stop| stop()) {
                let e = EngineError::StoppedWaiting {
                    pid,
                    tid: busy.tid,
                    function: busy.function,
                    frame: busy.frame,
                };
                return Outcome::Unchanged(e, held);
            }
            if Instant::now() >= deadline {
                let e = EngineError::Busy {
                    pid,
                    tid: busy.tid,
                    function: busy.function,
                    frame: busy.frame,
                    waited_ms: started.elapsed().as_millis(),
                };
                return Outcome::Unchanged(e, held);
            }
            unchanged!(wait_running(tracee, deadline, backoff, opts));
            backoff = (backoff * 2).min(Duration::from_millis(200));
            continue;
        }
        let t_writes = Instant::now();
        let now = process::read_memory_many(pid, &checks);
        if let Some(w) = writes
            .iter()
            .zip(&now)
            .find(|(w, cur)| cur.as_deref() != Some(w.expect.as_slice()))
            .map(|(w, _)| w)
        {
            unchanged!(window.resume());
            let e = EngineError::ForeignChange {
                pid,
                function: w.name.clone(),
                addr: w.addr,
            };
            return Outcome::Unchanged(e, held);
        }
        let mut done = 0;
        let mut failure = None;
        for w in writes {
            match mem.write(w.addr, &w.new) {
                Ok(()) => done += 1,
                Err(e) => {
                    failure = Some(e);
                    break;
                }
            }
            fault(fault_point);
        }
        if let Some(e) = failure {
            // Back to fully old before anything runs.
            let mut stuck = None;
            for w in writes[..done].iter().rev() {
                if mem.write(w.addr, &w.expect).is_err() {
                    stuck.get_or_insert(w);
                }
            }
            // Resuming or not, the bytes are as they were (a thread left
            // stopped is resumed when the window is dropped or we exit).
            let _ = window.resume();
            return match stuck {
                // The caller must not unmap the code this jumps into.
                Some(w) => Outcome::PartlyApplied(EngineError::PartlyApplied {
                    pid,
                    function: w.name.clone(),
                    addr: w.addr,
                    cause: e.to_string(),
                }),
                None => Outcome::Unchanged(e.into(), held),
            };
        }
        let n = threads.len() + window.parked_threads().len();
        let writes_time = t_writes.elapsed();
        let t_resume = Instant::now();
        // The jumps are in: whatever detaching says, the change took effect
        // (and exiting lets the kernel detach what is left), so it is not
        // reported as a failure, which would make the caller unmap live code.
        if let Err(e) = window.detach_all() {
            tracing::warn!(pid, error = %e, "detaching after the jumps were written");
        }
        let stopped = t0.elapsed();
        let park = tracee.last_park();
        return Outcome::Committed(Committed {
            threads: n,
            attempts,
            stopped,
            stopped_running: tracee.last_running_stop(),
            stacks: check,
            lead_out: led,
            times: WindowTimes {
                states_us: us(states),
                running,
                interrupt_us: us(interrupt),
                wait_us: us(wait),
                stacks_us: us(first_read),
                check_us: us(first_check),
                lead_out_us: us(lead_time),
                writes_us: us(writes_time),
                resume_us: us(t_resume.elapsed()),
                parked: park.parked,
                woke: park.woke + park.awake,
                kept: park.kept,
                parking_gave_up: park.gave_up,
                batch_us: us(park.longest_batch),
                parking_us: us(park.parking),
                held_us: us(park.longest_held),
            },
            lingering: std::mem::take(bufs.lingering),
        });
    }
}

/// Where the time of the window that made the change went, in µs.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct WindowTimes {
    /// Before the window, the threads running: reading each thread's state
    /// (which are on a CPU, to be stopped last and let go first).
    pub states_us: f64,
    /// Threads found on a CPU or runnable then.
    pub running: usize,
    /// Sending every thread its interrupt.
    pub interrupt_us: f64,
    /// Collecting every stop, with the thread's registers.
    pub wait_us: f64,
    /// Reading the stacks.
    pub stacks_us: f64,
    /// Walking (or scanning) them.
    pub check_us: f64,
    /// Leading busy threads out (see `LeadOut`).
    pub lead_out_us: f64,
    /// Re-reading the bytes to overwrite, and writing.
    pub writes_us: f64,
    /// Letting every thread go (detaching), parked threads included.
    pub resume_us: f64,
    /// Sleeping threads parked in their system calls (see
    /// `hotsplice_process::Tracee::stop_all_then`): stopped only for their
    /// batch, not for the window.
    pub parked: usize,
    /// Sleeping threads let go at once during the window, stopped again
    /// with the running ones: parked ones whose call ended, and ones found
    /// in user code at their stop (woken since their state was read).
    pub woke: usize,
    /// Sleeping threads that stayed stopped for the window (not in a
    /// system call the kernel restarts by itself, e.g. `epoll_wait`, which
    /// returns `EINTR`; or the main thread when its stop came late).
    pub kept: usize,
    /// Parking stopped partway: more than one in eight of the parked
    /// threads woke during the window (busy workers), so the rest stayed
    /// stopped.
    pub parking_gave_up: bool,
    /// The longest stop of a batch of threads: before it was parked or
    /// let go, or when parked threads are let go at the end.
    pub batch_us: f64,
    /// Parking and un-parking, all in all (no thread stopped for it but
    /// each batch's own).
    pub parking_us: f64,
    /// The longest any one thread was kept from running: a batch's stop,
    /// a kept thread's (first interrupt to its release), or the running
    /// threads' (`Report.stopped_running`).
    pub held_us: f64,
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

/// How long a window may lead busy threads out, all in all, not counting
/// the time the led-out thread waited for a CPU (see [`LeadBudget`]).
const LEAD_OUT: Duration = Duration::from_millis(10);
/// However long the led-out threads waited for a CPU: the hard cap on the
/// wall time a window leads out, so the others' stop stays bounded.
const LEAD_OUT_WALL: Duration = Duration::from_millis(100);
/// How long busy threads run alone before they are looked at again.
const LEAD_SLICE: Duration = Duration::from_micros(30);
/// At most this many busy threads run alone together.
const LEAD_TOGETHER: usize = 16;

/// Where thread `tid` is among the window's threads (it is: the caller
/// found it there, and a window's threads only change by ending it).
fn position(threads: &[StoppedThread], tid: Pid) -> usize {
    threads
        .iter()
        .position(|t| t.tid == tid)
        .unwrap_or(threads.len())
}

/// The lead-out budget of one window. On an idle machine it is wall time
/// ([`LEAD_OUT`]). On a loaded one, a thread let run alone mostly waits in
/// the run queue for a CPU (and again, once interrupted, to enter its
/// stop), so a wall-time budget leaves it a few slices of running and the
/// window gives up on a thread that would have come out: the time each led
/// thread was runnable but waited for a CPU, as the kernel accounts it
/// (`schedstat`), is not charged. A thread that waits for a lock is not
/// runnable, so its wait is charged in full and it ends the lead-out as
/// soon as on an idle machine. [`LEAD_OUT_WALL`] bounds the wall time in
/// every case.
struct LeadBudget {
    started: Instant,
    slices: usize,
    /// Sums over the slices of the led threads' time waiting for a CPU, and
    /// on one.
    waited: Duration,
    ran: Duration,
}

impl LeadBudget {
    fn start() -> LeadBudget {
        LeadBudget {
            started: Instant::now(),
            slices: 0,
            waited: Duration::ZERO,
            ran: Duration::ZERO,
        }
    }

    /// One round of threads run together: the time not charged is the
    /// longest any of them waited for a CPU (never more than the round:
    /// the two clocks differ a little).
    fn round(&mut self, slices: &[hotsplice_process::Slice]) {
        let Some(wall) = slices.first().map(|s| s.wall) else {
            return;
        };
        self.slices += slices.len();
        let waited = slices
            .iter()
            .map(|s| s.waited.unwrap_or_default())
            .max()
            .unwrap_or_default();
        self.waited += waited.min(wall);
        self.ran += slices
            .iter()
            .map(|s| s.ran.unwrap_or_default())
            .sum::<Duration>();
    }

    /// Whether this window is done leading out.
    fn spent(&self) -> bool {
        let wall = self.started.elapsed();
        wall >= LEAD_OUT_WALL || wall.saturating_sub(self.waited) >= LEAD_OUT
    }
}

/// What leading threads out of busy code took.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct LeadOut {
    /// Threads that came out of busy code while the others were stopped.
    pub threads: usize,
    /// Slices they ran alone.
    pub slices: usize,
    /// Time spent so, in every window (part of the stop for the others).
    #[serde(serialize_with = "micros")]
    pub time: Duration,
    /// Of `time`, how long the led-out threads waited for a CPU (a loaded
    /// machine; not charged to the lead-out budget).
    #[serde(serialize_with = "micros")]
    pub waited: Duration,
}

fn micros<S: serde::Serializer>(d: &Duration, s: S) -> std::result::Result<S::Ok, S::Error> {
    s.serialize_u128(d.as_micros())
}

/// The window's buffers, allocated before it.
struct Buffers<'a> {
    stack: &'a mut Vec<u8>,
    extra: &'a mut Vec<u8>,
    frames: &'a mut Vec<(usize, u64)>,
    /// Threads that may finish in old code, found by the last check.
    lingering: &'a mut Vec<Lingering>,
    /// Time spent reading stacks, and checking them, since the last reset.
    read: Duration,
    check: Duration,
}

/// The busy check of `threads` (stopped): read their stacks, walk or scan
/// them, follow signal frames to the stacks they interrupted.
fn check_threads(
    pid: Pid,
    threads: &[StoppedThread],
    maps: &[Mapping],
    ranges: &Ranges,
    unwinder: Option<&mut crate::unwind::Unwinder>,
    bufs: &mut Buffers<'_>,
) -> (Option<crate::safety::BusyThread>, StackCheck) {
    let t0 = Instant::now();
    let spans = stack_spans(threads, maps);
    let stacks = process::read_memory_into(pid, &spans, bufs.stack);
    let t1 = Instant::now();
    bufs.read += t1 - t0;
    bufs.frames.clear();
    let mut walker = unwinder.map(|u| Walker::new(u, pid, &spans));
    bufs.lingering.clear();
    let mut busy = find_busy_walking(
        threads,
        &stacks,
        bufs.stack,
        ranges,
        bufs.frames,
        walker.as_mut(),
        bufs.lingering,
    );
    let check = walker.map(|w| w.check).unwrap_or_else(|| StackCheck {
        scanned: threads.len(),
        ..StackCheck::default()
    });
    if busy.is_none() && !bufs.frames.is_empty() {
        // Threads in handlers on alternate signal stacks: the stacks they
        // interrupted too (and those these name, for nested signals).
        // Allocates only when there are such frames.
        let mut extra = interrupted_spans(&spans, bufs.frames, maps);
        let mut owners: Vec<StoppedThread> = Vec::new();
        for _ in 0..4 {
            if extra.is_empty() || busy.is_some() {
                break;
            }
            let prev = if owners.is_empty() {
                threads
            } else {
                &owners[..]
            };
            let next: Vec<StoppedThread> = extra.iter().map(|(i, _)| prev[*i]).collect();
            let more: Vec<(u64, usize)> = extra.iter().map(|(_, s)| *s).collect();
            let got = process::read_memory_into(pid, &more, bufs.extra);
            bufs.frames.clear();
            busy = find_busy(&next, &got, bufs.extra, ranges, bufs.frames, bufs.lingering);
            extra = interrupted_spans(&more, bufs.frames, maps);
            owners = next;
        }
    }
    bufs.check += t1.elapsed();
    (busy, check)
}
