//! The safety check, run while every thread is stopped: no thread may be
//! executing, or have a return address into, code that is being replaced
//! (apply) or removed (undo). Stacks are scanned conservatively (every
//! aligned word from the stack pointer to the end of the stack mapping), as
//! Ksplice does: a stale value costs a retry, never a crash.

use hotsplice_process::{Mapping, Pid, StoppedThread};

/// Largest stack slice scanned per thread.
const MAX_STACK: u64 = 8 << 20;

/// Address ranges that must be idle, each with a name for messages.
pub struct Ranges {
    spans: Vec<(u64, u64, usize)>,
    names: Vec<String>,
}

impl Ranges {
    pub fn new(items: impl IntoIterator<Item = (u64, u64, String)>) -> Ranges {
        let mut spans = Vec::new();
        let mut names = Vec::new();
        for (start, end, name) in items {
            spans.push((start, end, names.len()));
            names.push(name);
        }
        spans.sort_unstable();
        Ranges { spans, names }
    }

    fn hit(&self, addr: u64) -> Option<usize> {
        let i = self.spans.partition_point(|s| s.0 <= addr);
        if i == 0 {
            return None;
        }
        let (start, end, name) = self.spans[i - 1];
        (addr >= start && addr < end).then_some(name)
    }

    fn bounds(&self) -> (u64, u64) {
        let lo = self.spans.first().map(|s| s.0).unwrap_or(0);
        let hi = self.spans.iter().map(|s| s.1).max().unwrap_or(0);
        (lo, hi)
    }
}

/// A thread found inside a range.
pub struct BusyThread {
    pub tid: Pid,
    pub function: String,
    /// "executing" (instruction pointer) or "returning into" (stack word).
    pub frame: &'static str,
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

/// The first thread found busy, if any.
pub fn find_busy(
    threads: &[StoppedThread],
    stacks: &[Option<(usize, usize)>],
    buf: &[u8],
    ranges: &Ranges,
) -> Option<BusyThread> {
    let (lo, hi) = ranges.bounds();
    for (t, stack) in threads.iter().zip(stacks) {
        let stack = stack.map(|(o, l)| &buf[o..o + l]);
        if let Some(n) = ranges.hit(t.regs.rip) {
            return Some(BusyThread {
                tid: t.tid,
                function: ranges.names[n].clone(),
                frame: "executing",
            });
        }
        let Some(stack) = stack else { continue };
        for w in stack.chunks_exact(8) {
            let v = u64::from_le_bytes(w.try_into().unwrap());
            if v < lo || v >= hi {
                continue;
            }
            if let Some(n) = ranges.hit(v) {
                return Some(BusyThread {
                    tid: t.tid,
                    function: ranges.names[n].clone(),
                    frame: "inside (a return address on its stack points into)",
                });
            }
        }
    }
    None
}

/// Whether any thread's stack pointer lies outside the known mappings
/// (a thread created after the maps were read).
pub fn needs_fresh_maps(spans: &[(u64, usize)]) -> bool {
    spans.iter().any(|s| s.1 == 0)
}
