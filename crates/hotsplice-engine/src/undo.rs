//! Undo, and finishing or rolling back what an interrupted run left.

use crate::journal::{fault, in_flight, record, InFlight, Op, Step};
use crate::safety::Ranges;
use crate::state::{applied_in, read_maps, refuse_special, retired_in, saved_bytes, state_in};
use crate::window::{stop_and_write, Outcome, Write};
use crate::{ApplyOptions, EngineError, Journal, Report, Result};
use hotsplice_arch::current as arch;
use hotsplice_patch::{AppliedRecord, PatchId, IMAGE_MAGIC, RETIRED_MAGIC};
use hotsplice_process::{self as process, Mapping, MemWriter, Pid, Tracee};

/// The write that retires the record of `h` (see [`RETIRED_MAGIC`]): the
/// last of the window that takes `h` out, so that it is in only when every
/// jump is.
pub(crate) fn retirement(h: &AppliedRecord) -> Write {
    Write {
        addr: h.map_start,
        new: RETIRED_MAGIC.to_vec(),
        expect: IMAGE_MAGIC.to_vec(),
        name: format!("the record of patch {}", h.patch_id),
    }
}

/// After the window that took `h` out: tell the journal, then unmap `h`.
/// The change is made whatever happens here, so a failure is not an error
/// but the warning returned (the journal record stays, for the next
/// command's recovery to unmap the retired mapping).
pub(crate) fn unmap_retired(
    pid: Pid,
    h: &AppliedRecord,
    journal: Option<&dyn Journal>,
) -> Option<String> {
    if let Some(j) = journal {
        let p = in_flight(
            Op::Undo,
            pid,
            &h.patch_id,
            (h.map_start, h.map_len),
            Step::Unmapping,
        );
        if let Err(e) = j.record(&p) {
            // The record of the window stays, which recovery treats alike.
            tracing::warn!(pid, id = %h.patch_id, "cannot record the unmapping step: {e}");
        }
    }
    fault("undo:restored");
    // Why the code stays mapped, as the report's warning.
    let stays = |why: String| {
        let w = format!(
            "patch {} is out, but its code at {:#x}-{:#x} stays mapped ({why}); the next `hotsplice user` command that changes patches unmaps it",
            h.patch_id,
            h.map_start,
            h.map_start.saturating_add(h.map_len)
        );
        tracing::warn!(pid, "{w}");
        Some(w)
    };
    if let Err(why) = crate::register::release_record(pid, h) {
        return stays(why);
    }
    fault("undo:released");
    match process::with_main_thread(pid, |t| t.munmap(h.map_start, h.map_len)) {
        Ok(()) => {
            fault("undo:unmapped");
            if let Some(j) = journal {
                j.clear(pid, &h.patch_id);
            }
            None
        }
        Err(e) => stays(format!("unmapping failed: {e}")),
    }
}

/// The writes that put back what patch `h` overwrote. `current` holds the
/// first bytes of each of its jumped functions, in order. Strict: every
/// jump must still be there (else someone stacked on it or changed it);
/// tolerant (recovery): entries without our jump are left alone.
pub(crate) fn removal_writes(
    pid: Pid,
    h: &AppliedRecord,
    applied: &[AppliedRecord],
    current: &[Option<Vec<u8>>],
    tolerant: bool,
) -> Result<Vec<Write>> {
    let mut writes = Vec::new();
    let jumped = h.functions.iter().filter(|f| f.jumped());
    for (f, cur) in jumped.zip(current) {
        // What cannot be read may hold our jump: never unmap under it.
        let Some(cur) = cur.clone() else {
            return Err(EngineError::Refused {
                pid,
                why: format!(
                    "to take out patch {}: the entry of `{}` at {:#x} cannot be read; nothing was changed",
                    h.patch_id, f.name, f.addr
                ),
            });
        };
        let ours = arch::encode_jump(f.addr, f.new_addr).map(|j| j.to_vec());
        if Some(&cur) != ours.as_ref() {
            if tolerant {
                continue;
            }
            let over = applied.iter().find(|o| {
                o.sequence > h.sequence && o.functions.iter().any(|of| of.addr == f.addr)
            });
            return Err(match over {
                Some(o) => EngineError::Stacked {
                    pid,
                    id: h.patch_id.clone(),
                    over: o.patch_id.clone(),
                    function: f.name.clone(),
                },
                None => EngineError::ForeignChange {
                    pid,
                    function: f.name.clone(),
                    addr: f.addr,
                },
            });
        }
        writes.push(Write {
            addr: f.addr,
            new: saved_bytes(pid, h.map_start, f)?,
            expect: cur,
            name: f.name.clone(),
        });
    }
    Ok(writes)
}

/// The first bytes of each function `h` jumps from, as they are now.
pub(crate) fn jumped_entries(pid: Pid, h: &AppliedRecord) -> Vec<Option<Vec<u8>>> {
    process::read_memory_many(
        pid,
        &h.functions
            .iter()
            .filter(|f| f.jumped())
            .map(|f| (f.addr, arch::JUMP_LEN))
            .collect::<Vec<_>>(),
    )
}

/// Undo patch `id` in process `pid`: restore the original entries (after
/// the same safety check, against the patch's own code), then unmap it.
pub fn undo(pid: Pid, id: &PatchId, opts: &ApplyOptions) -> Result<Report> {
    refuse_special(pid)?;
    let maps = read_maps(pid)?;
    let state = state_in(pid, &maps)?;
    // A forged or damaged record is never acted upon, whatever it says.
    if let Some(c) = state
        .corrupt
        .iter()
        .find(|c| c.patch_id.as_ref() == Some(id))
    {
        return Err(EngineError::CorruptRecord(c.clone()));
    }
    let applied = state.patches;
    let Some(h) = applied.iter().find(|h| h.patch_id == *id) else {
        return Err(EngineError::NotApplied {
            pid,
            id: id.clone(),
            applied: if applied.is_empty() {
                "none".into()
            } else {
                applied
                    .iter()
                    .map(|h| h.patch_id.clone())
                    .collect::<Vec<_>>()
                    .join(", ")
            },
        });
    };
    remove(pid, h, &applied, &maps, false, opts)
}

fn remove(
    pid: Pid,
    h: &AppliedRecord,
    applied: &[AppliedRecord],
    maps: &[Mapping],
    tolerant: bool,
    opts: &ApplyOptions,
) -> Result<Report> {
    let mut writes = removal_writes(pid, h, applied, &jumped_entries(pid, h), tolerant)?;
    writes.push(retirement(h));
    let ranges = Ranges::new([(
        h.code_start,
        h.code_end(),
        format!("code of patch {}", h.patch_id),
        false,
    )]);
    let journal = opts.journal.as_deref();
    let window = in_flight(
        Op::Undo,
        pid,
        &h.patch_id,
        (h.map_start, h.map_len),
        Step::Window,
    );
    record(journal, &window)?;
    let outcome = match Tracee::seize(pid).and_then(|t| Ok((t, MemWriter::open(pid)?))) {
        Ok((mut tracee, mem)) => stop_and_write(
            pid,
            &mut tracee,
            &mem,
            maps,
            None,
            &ranges,
            opts,
            &writes,
            "undo:restore",
            (),
        ),
        Err(e) => Outcome::Unchanged(e.into(), ()),
    };
    let w = match outcome {
        Outcome::Committed(w) => w,
        // Nothing changed (code busy, process gone, ...): the record goes
        // too, or the next command's recovery would carry out the undo
        // that was just refused.
        Outcome::Unchanged(e, ()) => {
            if let Some(j) = journal {
                j.clear(pid, &h.patch_id);
            }
            return Err(e);
        }
        // Some entries are back, some not: the record stays for recovery.
        Outcome::PartlyApplied(e) => return Err(e),
    };
    let warning = unmap_retired(pid, h, journal);
    Ok(Report {
        pid,
        id: h.patch_id.clone(),
        target: h.target_name.clone(),
        threads: w.threads,
        attempts: w.attempts,
        stopped: w.stopped,
        stopped_running: w.stopped_running,
        stacks: w.stacks,
        lead_out: w.lead_out,
        times: w.times,
        still_in_old: Vec::new(),
        unwind: None,
        unwind_call: None,
        functions: h.functions.len(),
        replaced: None,
        warning,
    })
}

/// What recovery did with a record left by an interrupted run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recovery {
    /// The process is gone: nothing to do.
    Gone,
    /// The change had completed; the record was stale.
    Completed,
    /// The interrupted change was finished (undo).
    Finished,
    /// The interrupted change was rolled back (apply).
    RolledBack,
}

/// Finish or roll back a change recorded by a run that did not complete:
/// an interrupted apply is rolled back unless every jump was written; an
/// interrupted undo is finished. The caller checks the record is about this
/// very process (start time) and clears the record afterwards.
pub fn recover(p: &InFlight, opts: &ApplyOptions) -> Result<Recovery> {
    let no_journal = ApplyOptions {
        journal: None,
        ..opts.clone()
    };
    let maps = match read_maps(p.pid) {
        Ok(m) => m,
        Err(EngineError::Process(
            process::Error::NoSuchProcess { .. } | process::Error::ProcessExited { .. },
        )) => return Ok(Recovery::Gone),
        Err(e) => return Err(e),
    };
    let applied = applied_in(p.pid, &maps)?;
    let header = applied
        .iter()
        .find(|h| h.patch_id == p.id && h.map_start == p.map_start);
    match (p.op, header) {
        (Op::Apply, None) => {
            // Killed before the header was written: unmap what we mapped,
            // if it is there and is ours (anonymous, executable, no file).
            let ours = maps.iter().any(|m| {
                m.start == p.map_start
                    && m.inode == 0
                    && m.exec
                    && m.path.as_deref().is_none_or(|n| n.starts_with("[anon:"))
            });
            if ours {
                // Only what is readable and still blank (an unreadable
                // head may be a record): the rest is left alone.
                let blank = process::read_memory(p.pid, p.map_start, 16)
                    .is_ok_and(|head| head.iter().all(|&b| b == 0));
                if blank {
                    process::with_main_thread(p.pid, |t| t.munmap(p.map_start, p.map_len))?;
                }
            }
            Ok(Recovery::RolledBack)
        }
        (Op::Apply, Some(h)) => {
            let current = jumped_entries(p.pid, h);
            let jumps: Vec<bool> = h
                .functions
                .iter()
                .filter(|f| f.jumped())
                .zip(&current)
                .map(|(f, c)| {
                    c.as_deref()
                        == arch::encode_jump(f.addr, f.new_addr)
                            .as_ref()
                            .map(|j| &j[..])
                })
                .collect();
            if !jumps.is_empty() && jumps.iter().all(|&j| j) {
                return Ok(Recovery::Completed);
            }
            remove(p.pid, h, &applied, &maps, true, &no_journal)?;
            Ok(Recovery::RolledBack)
        }
        // The window that took it out was done; unmapping may not have been.
        (Op::Undo, None) => match retired_in(p.pid, &maps, p.map_start, &p.id) {
            Some(h) => {
                crate::register::release_record(p.pid, &h).map_err(|why| EngineError::Refused {
                    pid: p.pid,
                    why: format!(
                        "to unmap the retired patch {} at {:#x}: {why}; it stays mapped",
                        h.patch_id, h.map_start
                    ),
                })?;
                process::with_main_thread(p.pid, |t| t.munmap(h.map_start, h.map_len))?;
                Ok(Recovery::Finished)
            }
            None => Ok(Recovery::Completed),
        },
        (Op::Undo, Some(h)) => {
            remove(p.pid, h, &applied, &maps, true, &no_journal)?;
            Ok(Recovery::Finished)
        }
    }
}
