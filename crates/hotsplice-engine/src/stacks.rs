//! The stacks of every thread of a process, walked exactly where the
//! unwind tables allow (`hotsplice user stacks`): what the busy check sees.

use crate::objects::loaded_objects;
use crate::safety::stack_spans;
use crate::unwind::{for_process, StackMemory, TableCache};
use crate::Result;
use hotsplice_arch::current::dwarf;
use hotsplice_process::{self as process, Pid, Tracee};
use serde::Serialize;
use std::time::{Duration, Instant};

/// One frame: its pc, and the object and offset (link-time address) it is in.
#[derive(Debug, Clone, Serialize)]
pub struct Frame {
    pub pc: u64,
    /// The address of the code the frame is in: `pc` for the innermost
    /// frame and where a signal interrupted, `pc - 1` (the call) for a
    /// return address.
    pub call_site: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub object: Option<String>,
    /// The pc's link-time address in that object.
    pub vaddr: u64,
}

/// The walk of one thread.
#[derive(Debug, Clone, Serialize)]
pub struct ThreadStack {
    pub tid: Pid,
    pub frames: Vec<Frame>,
    /// Walked to the outermost frame with unwind tables all the way.
    pub exact: bool,
    /// Where and why the walk stopped.
    pub end: String,
}

/// The stacks of a process, and how long its threads were stopped.
#[derive(Debug, Clone, Serialize)]
pub struct ProcessStacks {
    pub pid: Pid,
    pub threads: Vec<ThreadStack>,
    #[serde(serialize_with = "micros")]
    pub stopped: Duration,
}

fn micros<S: serde::Serializer>(d: &Duration, s: S) -> std::result::Result<S::Ok, S::Error> {
    s.serialize_u128(d.as_micros())
}

/// Stop `pid`'s threads, walk each stack, let them go.
pub fn stacks(pid: Pid, cache: &mut TableCache) -> Result<ProcessStacks> {
    let maps = process::read_maps(pid)?;
    let objects = loaded_objects(pid, &maps)?;
    let mut unwinder = for_process(pid, &maps, &objects, cache);
    let mut tracee = Tracee::seize(pid)?;
    let mut buf = Vec::new();
    let t0 = Instant::now();
    let window = tracee.stop_all()?;
    let threads = window.threads().to_vec();
    let spans = stack_spans(&threads, &maps);
    let read = process::read_memory_into(pid, &spans, &mut buf);
    let mem = StackMemory::of(&spans, &read, &buf, |a| {
        crate::unwind::ProcessMemory(pid).word_at(a)
    });
    let mut walks = Vec::with_capacity(threads.len());
    for t in &threads {
        let mut pcs = Vec::new();
        let end = unwinder.walk(&dwarf::initial(&t.regs), &mem, &mut pcs);
        walks.push((t.tid, pcs, end));
    }
    window.resume()?;
    let stopped = t0.elapsed();
    tracee.detach()?;
    // Frames in the code of applied patches are named after the patch,
    // with the offset in its code.
    let patches = crate::state::applied_in(pid, &maps).unwrap_or_default();
    let name = |pc: u64| {
        objects
            .iter()
            .find(|o| o.start <= pc && pc < o.end)
            .map(|o| (Some(o.path.clone()), pc.wrapping_sub(o.bias)))
            .or_else(|| {
                patches
                    .iter()
                    .find(|h| h.code_contains(pc))
                    .map(|h| (Some(format!("patch {}", h.patch_id)), pc - h.code_start))
            })
            .unwrap_or((None, pc))
    };
    Ok(ProcessStacks {
        pid,
        threads: walks
            .into_iter()
            .map(|(tid, pcs, end)| ThreadStack {
                tid,
                frames: pcs
                    .into_iter()
                    .map(|(pc, exact)| {
                        let (object, vaddr) = name(pc);
                        Frame {
                            pc,
                            call_site: if exact { pc } else { pc.wrapping_sub(1) },
                            object,
                            vaddr,
                        }
                    })
                    .collect(),
                exact: end.exact(),
                end: end.to_string(),
            })
            .collect(),
        stopped,
    })
}
