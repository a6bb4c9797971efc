//! The safety check, run while every thread is stopped: no thread may be
//! executing, or have a return address into, code that is being replaced
//! (apply) or removed (undo). Stacks are scanned conservatively (every
//! aligned word from the stack pointer to the end of the stack mapping), as
//! Ksplice does: a stale value costs a retry, never a crash. A thread in a
//! signal handler on an alternate signal stack has the frames it
//! interrupted on another stack: the signal frames found on the scanned
//! stack name it, and it is scanned too ([`interrupted_spans`]). A thread
//! whose stack cannot be read counts as busy.

use crate::unwind::{ProcessMemory, StackMemory, Unwinder};
use hotsplice_arch::current::{dwarf, sigframe};
use hotsplice_process::{Mapping, Pid, StoppedThread};

/// Largest stack slice scanned per thread.
const MAX_STACK: u64 = 8 << 20;

/// Address ranges that must be idle, each with a name for messages.
pub struct Ranges {
    /// (start, end, name, entry_ok): with `entry_ok` the range is a whole
    /// function whose entry stays valid (the jump goes there), so a stack
    /// word equal to the entry is a function pointer (or a frame that
    /// resumes by entering the function anew), not a thread inside it.
    spans: Vec<(u64, u64, usize, bool)>,
    names: Vec<String>,
    /// With `let_running_finish`: a thread inside a whole replaced
    /// function (`entry_ok`) past its first `guard` bytes (those the jump
    /// overwrites) is not busy; it finishes that call in the old code.
    guard: Option<u64>,
}

impl Ranges {
    /// `(start, end, name, entry_ok)` each.
    pub fn new(items: impl IntoIterator<Item = (u64, u64, String, bool)>) -> Ranges {
        let mut spans = Vec::new();
        let mut names = Vec::new();
        for (start, end, name, entry_ok) in items {
            spans.push((start, end, names.len(), entry_ok));
            names.push(name);
        }
        spans.sort_unstable();
        Ranges {
            spans,
            names,
            guard: None,
        }
    }

    /// Let threads inside replaced functions finish there, except within
    /// the first `guard` bytes of each (what the jump overwrites).
    pub fn let_running_finish(mut self, guard: u64) -> Ranges {
        self.guard = Some(guard);
        self
    }

    /// Whether a thread at (or returning to) `addr` in span `s` may stay.
    fn may_stay(&self, s: (u64, u64, usize, bool), addr: u64) -> bool {
        match self.guard {
            Some(g) => s.3 && addr >= s.0.saturating_add(g),
            None => false,
        }
    }

    fn find(&self, addr: u64) -> Option<(u64, u64, usize, bool)> {
        let i = self.spans.partition_point(|s| s.0 <= addr);
        let span = *self.spans.get(i.checked_sub(1)?)?;
        (addr < span.1).then_some(span)
    }

    /// The range `addr` is in: `Err(name)` when a thread there makes the
    /// code busy, `Ok(name)` when it may stay (see [`Ranges::let_running_finish`]).
    fn hit(&self, addr: u64) -> Option<Result<usize, usize>> {
        self.find(addr).map(|s| {
            if self.may_stay(s, addr) {
                Ok(s.2)
            } else {
                Err(s.2)
            }
        })
    }

    /// Whether stack word `v` means a thread is inside a range (as [`Ranges::hit`]).
    fn hit_stack(&self, v: u64) -> Option<Result<usize, usize>> {
        self.find(v)
            .filter(|&(start, _, _, entry_ok)| !(entry_ok && v == start))
            .map(|s| {
                if self.may_stay(s, v) {
                    Ok(s.2)
                } else {
                    Err(s.2)
                }
            })
    }

    fn bounds(&self) -> (u64, u64) {
        let lo = self.spans.first().map(|s| s.0).unwrap_or(0);
        let hi = self.spans.iter().map(|s| s.1).max().unwrap_or(0);
        (lo, hi)
    }
}

/// A thread inside a replaced function that finishes its call there
/// (`let_running_finish`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Lingering {
    pub tid: Pid,
    pub function: String,
}

/// A thread found inside a range.
pub struct BusyThread {
    pub tid: Pid,
    pub function: String,
    /// "executing" (instruction pointer) or "returning into" (stack word).
    pub frame: &'static str,
    /// Running it alone for a while may bring it out (it is in the code;
    /// not a stack that cannot be read).
    pub can_lead_out: bool,
}

/// For each thread, the live part of its stack: from the stack pointer to
/// the end of the mapping that holds it.
pub fn stack_spans(threads: &[StoppedThread], maps: &[Mapping]) -> Vec<(u64, usize)> {
    threads
        .iter()
        .map(|t| {
            let sp = t.regs.rsp;
            let i = maps.partition_point(|m| m.start <= sp);
            match i.checked_sub(1).map(|i| &maps[i]) {
                Some(m) if sp < m.end => (sp, (m.end - sp).min(MAX_STACK) as usize),
                _ => (sp, 0),
            }
        })
        .collect()
}

/// The first thread found busy, if any. In the same pass over each stack,
/// the stack pointers saved by signal frames found on it go into `frames`
/// (with the thread's index): see [`interrupted_spans`].
pub fn find_busy(
    threads: &[StoppedThread],
    stacks: &[Option<(usize, usize)>],
    buf: &[u8],
    ranges: &Ranges,
    frames: &mut Vec<(usize, u64)>,
    lingering: &mut Vec<Lingering>,
) -> Option<BusyThread> {
    find_busy_walking(threads, stacks, buf, ranges, frames, None, lingering)
}

/// Exact walks for the busy check: the unwinder, where the stacks read lie
/// in memory, and what the walks found.
pub struct Walker<'a> {
    pub unwinder: &'a mut Unwinder,
    pub pid: Pid,
    /// The address each thread's stack was read from (`stack_spans`).
    pub spans: &'a [(u64, usize)],
    pcs: Vec<(u64, bool)>,
    pub check: StackCheck,
}

impl<'a> Walker<'a> {
    pub fn new(unwinder: &'a mut Unwinder, pid: Pid, spans: &'a [(u64, usize)]) -> Walker<'a> {
        Walker {
            unwinder,
            pid,
            spans,
            pcs: Vec::with_capacity(64),
            check: StackCheck::default(),
        }
    }
}

/// How the stacks of a stop window were checked.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct StackCheck {
    /// Threads whose stack was walked exactly (unwind tables all the way).
    pub exact: usize,
    /// Threads scanned conservatively instead (every stack word), because
    /// an exact walk was not possible for them.
    pub scanned: usize,
    /// Why, for the first few of those.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub fallbacks: Vec<String>,
}

impl StackCheck {
    /// The counts of two checks of different threads, together.
    pub fn merge(mut self, other: StackCheck) -> StackCheck {
        self.exact += other.exact;
        self.scanned += other.scanned;
        let room = 4usize.saturating_sub(self.fallbacks.len());
        self.fallbacks
            .extend(other.fallbacks.into_iter().take(room));
        self
    }
}

/// As [`find_busy`]; with a `walker`, each thread's stack is first walked
/// exactly, and scanned conservatively only when the walk cannot finish.
pub fn find_busy_walking(
    threads: &[StoppedThread],
    stacks: &[Option<(usize, usize)>],
    buf: &[u8],
    ranges: &Ranges,
    frames: &mut Vec<(usize, u64)>,
    mut walker: Option<&mut Walker<'_>>,
    lingering: &mut Vec<Lingering>,
) -> Option<BusyThread> {
    // What a hit means: busy (returned), or a thread that may stay.
    let mut judge = |tid: Pid, hit: Option<Result<usize, usize>>, frame: &'static str| match hit {
        Some(Err(n)) => Some(BusyThread {
            tid,
            function: ranges.names[n].clone(),
            frame,
            can_lead_out: true,
        }),
        Some(Ok(n)) => {
            if !lingering.iter().any(|l| l.tid == tid) {
                lingering.push(Lingering {
                    tid,
                    function: ranges.names[n].clone(),
                });
            }
            None
        }
        None => None,
    };
    let (lo, hi) = ranges.bounds();
    // The stacks read, by address, for the walks.
    let mem = walker.as_ref().map(|w| {
        let pid = w.pid;
        StackMemory::of(w.spans, stacks, buf, move |a| ProcessMemory(pid).word_at(a))
    });
    for (k, (t, stack)) in threads.iter().zip(stacks).enumerate() {
        let stack = stack.map(|(o, l)| &buf[o..o + l]);
        if let Some(b) = judge(t.tid, ranges.hit(t.regs.rip), "executing") {
            return Some(b);
        }
        let Some(stack) = stack.filter(|s| !s.is_empty()) else {
            // Fail closed: what cannot be read may hold a return address.
            return Some(BusyThread {
                tid: t.tid,
                function: "code being changed (its stack cannot be read, so it may be inside)"
                    .into(),
                frame: "stopped with an unreadable stack,",
                can_lead_out: false,
            });
        };
        if let (Some(w), Some(mem)) = (walker.as_deref_mut(), mem.as_ref()) {
            w.pcs.clear();
            let end = w.unwinder.walk(&dwarf::initial(&t.regs), mem, &mut w.pcs);
            // Every frame found, even by a walk that stopped early, is real.
            for &(pc, exact_pc) in w.pcs.iter().skip(1) {
                let at = if exact_pc { pc } else { pc.wrapping_sub(1) };
                let frame = "inside (a frame of its stack returns into)";
                if let Some(b) = judge(t.tid, ranges.hit(at), frame) {
                    return Some(b);
                }
            }
            if end.exact() {
                w.check.exact += 1;
                continue;
            }
            // Never less safe than a scan: this thread gets one.
            w.check.scanned += 1;
            if w.check.fallbacks.len() < 4 {
                w.check
                    .fallbacks
                    .push(format!("thread {}: {end}; its stack was scanned", t.tid));
            }
        }
        let sp = t.regs.rsp;
        for (i, w) in stack.chunks_exact(8).enumerate() {
            let v = u64::from_le_bytes(w.try_into().unwrap());
            // Cheap first test of a signal frame's `uc_stack.ss_sp`.
            if v <= sp {
                if let Some(saved) = sigframe::interrupted_at(stack, i, sp) {
                    frames.push((k, saved));
                }
            }
            if v < lo || v >= hi {
                continue;
            }
            let frame = "inside (a return address on its stack points into)";
            if let Some(b) = judge(t.tid, ranges.hit_stack(v), frame) {
                return Some(b);
            }
        }
    }
    None
}

/// The stacks that signal handlers interrupted, from the saved stack
/// pointers [`find_busy`] found (`frames`, indices into `threads`, whose
/// stacks were read as `spans`): for each, the thread and the span from the
/// saved stack pointer to the end of its mapping. Spans inside a stack
/// already read are left out.
pub fn interrupted_spans(
    spans: &[(u64, usize)],
    frames: &[(usize, u64)],
    maps: &[Mapping],
) -> Vec<(usize, (u64, usize))> {
    let mut out: Vec<(usize, (u64, usize))> = Vec::new();
    for &(i, sp) in frames {
        let inside = |s: &(u64, usize)| sp >= s.0 && sp - s.0 < s.1 as u64;
        if inside(&spans[i]) || out.iter().any(|(_, s)| inside(s)) {
            continue;
        }
        let k = maps.partition_point(|m| m.start <= sp);
        match k.checked_sub(1).map(|k| &maps[k]).filter(|m| sp < m.end) {
            Some(m) if m.read && m.write && !m.exec => {
                let at = sp & !7;
                out.push((i, (at, (m.end - at).min(MAX_STACK) as usize)));
            }
            // Not a stack: a stale frame.
            Some(_) => {}
            // Not mapped as far as we know: fail closed (an empty span
            // counts as unreadable, so busy).
            None => out.push((i, (sp, 0))),
        }
    }
    out
}

/// Whether any thread's stack pointer lies outside the known mappings
/// (a thread created after the maps were read).
pub fn needs_fresh_maps(spans: &[(u64, usize)]) -> bool {
    spans.iter().any(|s| s.1 == 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn thread(rip: u64) -> StoppedThread {
        // SAFETY: an all-zero register set is a valid value of this plain struct.
        let mut regs: libc::user_regs_struct = unsafe { std::mem::zeroed() };
        regs.rip = rip;
        StoppedThread { tid: 7, regs }
    }

    /// `find_busy` with throwaway frame and lingering lists.
    fn busy_in(
        threads: &[StoppedThread],
        stacks: &[Option<(usize, usize)>],
        buf: &[u8],
        r: &Ranges,
    ) -> Option<BusyThread> {
        find_busy(threads, stacks, buf, r, &mut Vec::new(), &mut Vec::new())
    }

    fn stack(words: &[u64]) -> (Vec<Option<(usize, usize)>>, Vec<u8>) {
        let buf: Vec<u8> = words.iter().flat_map(|w| w.to_le_bytes()).collect();
        (vec![Some((0, buf.len()))], buf)
    }

    #[test]
    fn return_address_inside_a_replaced_function_is_busy() {
        let r = Ranges::new([(0x1000, 0x1100, "f".to_string(), true)]);
        let (s, b) = stack(&[0x5, 0x1010]);
        let busy = busy_in(&[thread(0x9000)], &s, &b, &r).unwrap();
        assert_eq!(busy.function, "f");
    }

    #[test]
    fn pointer_to_a_function_entry_is_not_a_frame() {
        let r = Ranges::new([(0x1000, 0x1100, "f".to_string(), true)]);
        let (s, b) = stack(&[0x1000]);
        assert!(busy_in(&[thread(0x9000)], &s, &b, &r).is_none());
        // ...unless the code goes away (undo): then it counts.
        let r = Ranges::new([(0x1000, 0x1100, "patch".to_string(), false)]);
        assert!(busy_in(&[thread(0x9000)], &s, &b, &r).is_some());
    }

    #[test]
    fn unreadable_stack_is_busy() {
        let r = Ranges::new([(0x1000, 0x1100, "f".to_string(), true)]);
        assert!(busy_in(&[thread(0x9000)], &[None], &[], &r).is_some());
    }

    #[test]
    fn stack_outside_every_known_mapping_is_busy() {
        // A thread started after the maps were read: its stack pointer is in
        // none of them; its span is empty, which the check counts as busy.
        let maps = [Mapping {
            start: 0x7000,
            end: 0x8000,
            read: true,
            write: true,
            exec: false,
            shared: false,
            offset: 0,
            dev: "00:00".into(),
            inode: 0,
            path: None,
        }];
        let mut t = thread(0x9000);
        t.regs.rsp = 0x10_0000;
        let spans = stack_spans(&[t], &maps);
        assert_eq!(spans, vec![(0x10_0000, 0)]);
        assert!(needs_fresh_maps(&spans));
        let r = Ranges::new([(0x1000, 0x1100, "f".to_string(), true)]);
        let busy = busy_in(&[t], &[Some((0, 0))], &[], &r).unwrap();
        assert!(busy.frame.contains("unreadable"), "{}", busy.frame);
        // A signal frame naming an unmapped stack: scanned as unreadable.
        let extra = interrupted_spans(&[(0x7800, 0x800)], &[(0, 0x20_0000)], &maps);
        assert_eq!(extra, vec![(0, (0x20_0000, 0))]);
    }

    #[test]
    fn instruction_pointer_inside_is_busy_even_at_the_entry() {
        let r = Ranges::new([(0x1000, 0x1100, "f".to_string(), true)]);
        let (s, b) = stack(&[]);
        assert_eq!(
            busy_in(&[thread(0x1000)], &s, &b, &r).unwrap().frame,
            "executing"
        );
    }
}
