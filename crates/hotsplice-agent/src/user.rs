//! Patches of running processes: install into the store, apply, undo,
//! remove, and what is applied, available and patchable — as data.

use crate::error::{AgentError, Result};
use crate::machine::{comm, exited, Agent};
use crate::pool::{by_pid, run_parallel, PoolRun};
use hotsplice_engine::{self as engine, ApplyOptions, EngineError, Report};
use hotsplice_patch::{BuildId, Op, PatchId, Step};
use hotsplice_store::Entry;
use hotsplice_trust::Verified;
use serde::Serialize;
use std::path::PathBuf;

/// One engine operation on one process: its report or why it failed.
pub type OpResult = std::result::Result<Report, EngineError>;

/// Work over many processes: what each operation did, how many processes
/// were not started because a stop was requested.
pub struct Run {
    pub results: Vec<OpResult>,
    pub not_started: usize,
}

/// Applying patch files: which process gets which patch.
pub struct ApplyPlan {
    pub patches: Vec<Verified>,
    /// `(pid, index into patches)`, in order.
    pub jobs: Vec<(i32, usize)>,
    /// Patches no running process maps (with `--all`).
    pub unused: Vec<usize>,
}

/// Removing patches: which are to be undone where, newest first.
pub struct RemovalPlan {
    /// `(pid, patch id)`.
    pub jobs: Vec<(i32, PatchId)>,
    /// Forged or damaged records in the process asked about: refused.
    pub refused: Vec<EngineError>,
    /// Such records met while going over the machine: reported only (any
    /// user can forge one in their own process; that must not fail root's
    /// removal).
    pub warnings: Vec<engine::Corrupt>,
}

/// A patch applied in a process, as `show` reports it.
#[derive(Debug, Clone, Serialize)]
pub struct AppliedView {
    pub id: PatchId,
    pub target: String,
    pub build_id: BuildId,
    pub description: String,
    pub applied_at: u64,
    pub functions: Vec<String>,
}

/// An operation a killed hotsplice left half done in a process.
#[derive(Debug, Clone, Serialize)]
pub struct InterruptedView {
    pub op: Op,
    pub id: PatchId,
    pub step: Step,
}

/// A forged or damaged record: reported, never acted upon.
#[derive(Debug, Clone, Serialize)]
pub struct CorruptView {
    pub map_start: u64,
    pub patch_id: Option<PatchId>,
    pub why: String,
}

/// What is applied in one process.
#[derive(Debug, Clone, Serialize)]
pub struct ProcessPatches {
    pub pid: i32,
    pub command: String,
    pub patches: Vec<AppliedView>,
    /// Left half done by a killed hotsplice; the next command that changes
    /// patches finishes or rolls back.
    pub interrupted: Vec<InterruptedView>,
    pub corrupt: Vec<CorruptView>,
    /// Threads still running a call of a replaced function in the old code
    /// (patches applied with `--let-running-finish`), until they leave.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub still_in_old: Vec<StillInOld>,
    /// Unwind information of applied patches registered with libgcc_s
    /// only now (libgcc_s was loaded after the apply, or no thread was fit
    /// then), or why not yet.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub unwind_registered: Vec<engine::LateRegistration>,
}

/// A thread still in the old code of a replaced function.
#[derive(Debug, Clone, Serialize)]
pub struct StillInOld {
    pub tid: i32,
    pub patch: PatchId,
    pub function: String,
}

/// A patchable object and the processes mapping it.
#[derive(Debug, Clone, Serialize)]
pub struct TargetObject {
    pub path: String,
    pub build_id: BuildId,
    pub pids: Vec<i32>,
}

/// An installed patch and where it applies.
#[derive(Debug, Clone, Serialize)]
pub struct AvailablePatch {
    pub id: PatchId,
    pub level: u32,
    pub target: hotsplice_patch::Target,
    pub description: String,
    /// The highest installed level for its target (lower ones are kept
    /// for the record, not applied).
    pub current: bool,
    pub processes: Vec<i32>,
    pub applied_in: Vec<i32>,
    pub needed_by: Vec<i32>,
}

/// Which processes: one, or all.
pub fn pids(pid: Option<i32>) -> Vec<i32> {
    match pid {
        Some(p) => vec![p],
        None => hotsplice_process::all_pids(),
    }
}

impl Agent {
    /// Verify patch files and put them into the store.
    pub fn install(&self, files: &[PathBuf], allow_unsigned: bool) -> Result<Vec<Entry>> {
        let store = self.store()?;
        let mut out = Vec::new();
        for f in files {
            let patch = self.read_verified(f, allow_unsigned)?;
            out.push(store.install(patch.file(), &patch, &patch.signer().key_id())?);
        }
        Ok(out)
    }

    /// Drop a patch from the store: `Some` when its file was removed, `None`
    /// when only an invalid index entry was (no file deleted).
    pub fn uninstall(&self, id: &str) -> Result<Option<Entry>> {
        Ok(self.store()?.uninstall(id)?)
    }

    /// Which processes each patch file goes to: `pid`, or every process
    /// that maps the patch's target.
    pub fn plan_apply(
        &self,
        pid: Option<i32>,
        files: &[PathBuf],
        allow_unsigned: bool,
    ) -> Result<ApplyPlan> {
        if let Some(why) = pid.and_then(exited) {
            return Err(AgentError::Request(why));
        }
        let mut patches = Vec::new();
        for f in files {
            patches.push(self.read_verified(f, allow_unsigned)?);
        }
        let mut jobs = Vec::new();
        let mut unused = Vec::new();
        for (i, p) in patches.iter().enumerate() {
            match pid {
                Some(pid) => jobs.push((pid, i)),
                None => {
                    let pids = engine::processes_mapping(&p.meta.target.build_id);
                    if pids.is_empty() {
                        unused.push(i);
                    }
                    jobs.extend(pids.into_iter().map(|pid| (pid, i)));
                }
            }
        }
        Ok(ApplyPlan {
            patches,
            jobs,
            unused,
        })
    }

    /// Carry out an apply plan, each process under its lock.
    pub fn apply(&self, plan: &ApplyPlan, opts: &ApplyOptions) -> Run {
        let grouped = by_pid(plan.jobs.clone());
        self.per_process(&grouped, |p, list: &Vec<usize>| {
            self.register_late(p);
            list.iter()
                .map(|&i| engine::apply(p, &plan.patches[i], opts))
                .collect()
        })
    }

    /// Undo one applied patch in a process.
    pub fn undo(&self, pid: i32, id: &PatchId, opts: &ApplyOptions) -> Result<Report> {
        if let Some(why) = exited(pid) {
            return Err(AgentError::Request(why));
        }
        let _lock = self.lock_process(pid)?;
        Ok(engine::undo(pid, id, opts)?)
    }

    /// Which patches to undo where: those named (or all), in `pid` or in
    /// every process, newest first so stacked patches come off in order.
    pub fn plan_removal(
        &self,
        all: bool,
        pid: Option<i32>,
        ids: &[PatchId],
    ) -> Result<RemovalPlan> {
        if !all && ids.is_empty() {
            return Err(AgentError::Request(
                "say which patches to remove: IDs, or --all".into(),
            ));
        }
        let mut plan = RemovalPlan {
            jobs: Vec::new(),
            refused: Vec::new(),
            warnings: Vec::new(),
        };
        for p in pids(pid) {
            let Ok(state) = engine::state(p) else {
                continue;
            };
            for c in state.corrupt {
                if all || c.patch_id.as_ref().is_some_and(|id| ids.contains(id)) {
                    if pid.is_some() {
                        plan.refused.push(EngineError::CorruptRecord(c));
                    } else {
                        plan.warnings.push(c);
                    }
                }
            }
            for h in state.patches.iter().rev() {
                if all || ids.contains(&h.patch_id) {
                    plan.jobs.push((p, h.patch_id.clone()));
                }
            }
        }
        Ok(plan)
    }

    /// Carry out a removal plan, each process under its lock.
    pub fn remove(&self, plan: &RemovalPlan, opts: &ApplyOptions) -> Run {
        let grouped = by_pid(plan.jobs.clone());
        self.per_process(&grouped, |p, ids: &Vec<PatchId>| {
            ids.iter().map(|id| engine::undo(p, id, opts)).collect()
        })
    }

    /// Run `f` for each process on the worker pool, holding its lock; a
    /// process whose lock cannot be taken is left alone, with an error for
    /// each of its jobs.
    fn per_process<T: Sync>(
        &self,
        grouped: &[(i32, Vec<T>)],
        f: impl Fn(i32, &Vec<T>) -> Vec<OpResult> + Sync,
    ) -> Run {
        let PoolRun {
            results,
            not_started,
        } = run_parallel(grouped, self.stop_requested_fn(), |(p, list)| {
            match self.lock_process(*p) {
                Ok(_lock) => f(*p, list),
                Err(e) => list
                    .iter()
                    .map(|_| {
                        Err(EngineError::Refused {
                            pid: *p,
                            why: format!(
                                "without the process lock, which cannot be taken: {}",
                                crate::error::chain(&e)
                            ),
                        })
                    })
                    .collect(),
            }
        });
        Run {
            results: results.into_iter().flatten().collect(),
            not_started,
        }
    }

    /// What is applied: in `pid` (always listed, an error if it cannot be
    /// read), or in every process that has patches, damaged records or
    /// operations left half done.
    pub fn applied(&self, pid: Option<i32>) -> Result<Vec<ProcessPatches>> {
        let interrupted = self.interrupted();
        let mut rows = Vec::new();
        for p in pids(pid) {
            let in_flight: Vec<InterruptedView> = interrupted
                .iter()
                .filter(|e| e.pid == p)
                .map(|e| InterruptedView {
                    op: e.op,
                    id: e.id.clone(),
                    step: e.step,
                })
                .collect();
            let settled = in_flight.is_empty();
            match engine::state(p) {
                Ok(st)
                    if !st.patches.is_empty()
                        || !st.corrupt.is_empty()
                        || !in_flight.is_empty()
                        || pid.is_some() =>
                {
                    rows.push(ProcessPatches {
                        pid: p,
                        command: comm(p),
                        patches: st
                            .patches
                            .iter()
                            .map(|h| AppliedView {
                                id: h.patch_id.clone(),
                                target: h.target_name.clone(),
                                build_id: h.target_build_id.clone(),
                                description: h.description.clone(),
                                applied_at: h.applied_at,
                                functions: h.functions.iter().map(|f| f.name.clone()).collect(),
                            })
                            .collect(),
                        interrupted: in_flight,
                        corrupt: st
                            .corrupt
                            .iter()
                            .map(|c| CorruptView {
                                map_start: c.map_start,
                                patch_id: c.patch_id.clone(),
                                why: c.why.clone(),
                            })
                            .collect(),
                        still_in_old: still_in_old(p, &st.patches),
                        // Not while an operation is left half done: the
                        // next command's recovery comes first.
                        unwind_registered: if settled && engine::registration_pending(p) {
                            match self.lock_process(p) {
                                Ok(_lock) => self.register_late(p),
                                Err(_) => Vec::new(),
                            }
                        } else {
                            Vec::new()
                        },
                    })
                }
                Ok(_) => {}
                Err(e) if pid.is_some() => return Err(e.into()),
                Err(_) => {}
            }
        }
        Ok(rows)
    }

    /// Register the unwind information of patches applied in `pid` before
    /// libgcc_s was mapped, or while no thread was fit to make the call
    /// (see [`engine::register_pending`]). The caller holds the process's
    /// lock. Failures are logged: the patches stay applied as they were.
    pub fn register_late(&self, pid: i32) -> Vec<engine::LateRegistration> {
        match engine::register_pending(pid) {
            Ok(done) => {
                for d in &done {
                    tracing::info!(pid, patch = %d.patch, outcome = ?d.outcome, "late unwind registration");
                }
                done
            }
            Err(e) => {
                tracing::warn!(pid, "cannot register unwind information late: {e}");
                Vec::new()
            }
        }
    }

    /// Every patchable object mapped by a process, with the processes.
    pub fn targets(&self) -> Vec<TargetObject> {
        let me = std::process::id() as i32;
        let mut by_object: std::collections::BTreeMap<(String, BuildId), Vec<i32>> =
            Default::default();
        for p in hotsplice_process::all_pids() {
            if p == me {
                continue;
            }
            let Ok(maps) = hotsplice_process::read_maps(p) else {
                continue;
            };
            let Ok(objs) = engine::loaded_objects(p, &maps) else {
                continue;
            };
            for o in objs {
                by_object.entry((o.path, o.build_id)).or_default().push(p);
            }
        }
        by_object
            .into_iter()
            .map(|((path, build_id), pids)| TargetObject {
                path,
                build_id,
                pids,
            })
            .collect()
    }

    /// The installed patches and where each applies.
    pub fn available(&self) -> Result<Vec<AvailablePatch>> {
        let store = self.store()?;
        let entries = store.list()?;
        let current = store.current_levels()?;
        let mut rows = Vec::new();
        for e in entries {
            let processes = engine::processes_mapping(&e.target.build_id);
            let applied_in: Vec<i32> = processes
                .iter()
                .copied()
                .filter(|&p| {
                    engine::applied(p)
                        .map(|hs| hs.iter().any(|h| h.patch_id == e.id))
                        .unwrap_or(false)
                })
                .collect();
            let needed_by = processes
                .iter()
                .copied()
                .filter(|p| !applied_in.contains(p))
                .collect();
            rows.push(AvailablePatch {
                current: current.iter().any(|c| c.id == e.id),
                id: e.id,
                level: e.level,
                target: e.target,
                description: e.description,
                processes,
                applied_in,
                needed_by,
            });
        }
        Ok(rows)
    }

    /// The stacks of `pid`'s threads (or of every process but this one),
    /// walked as the busy check walks them: each thread stopped for the
    /// walk, then let go. Processes that cannot be read are left out.
    pub fn stacks(&self, pid: Option<i32>) -> Result<Vec<engine::ProcessStacks>> {
        let me = std::process::id() as i32;
        let mut out = Vec::new();
        for p in pids(pid) {
            // This process, and init unless asked for by name (as upgrade
            // leaves it alone).
            if p == me || (p == 1 && pid.is_none()) {
                continue;
            }
            match walk(p) {
                Ok(s) => out.push(s),
                Err(e) if pid.is_some() => return Err(e.into()),
                Err(_) => {}
            }
        }
        Ok(out)
    }
}

/// For patches applied with `--let-running-finish`: the threads that still
/// have a frame in a replaced function's old code (found by walking their
/// stacks, which stops the process for a moment; only then).
fn still_in_old(pid: i32, patches: &[hotsplice_patch::AppliedRecord]) -> Vec<StillInOld> {
    let olds: Vec<(&PatchId, &hotsplice_patch::AppliedFunction)> = patches
        .iter()
        .filter(|h| h.running_may_finish)
        .flat_map(|h| h.functions.iter().map(move |f| (&h.patch_id, f)))
        .collect();
    if olds.is_empty() {
        return Vec::new();
    }
    let Ok(stacks) = walk(pid) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for t in &stacks.threads {
        for fr in &t.frames {
            let at = fr.call_site;
            if let Some((id, f)) = olds
                .iter()
                .find(|(_, f)| at >= f.addr && at - f.addr < f.size)
            {
                if !out.iter().any(|o: &StillInOld| o.tid == t.tid) {
                    out.push(StillInOld {
                        tid: t.tid,
                        patch: (*id).clone(),
                        function: f.name.clone(),
                    });
                }
            }
        }
    }
    out
}

/// The stacks of `pid`, with the unwind tables the engine keeps for this
/// process's lifetime (shared with the busy check).
fn walk(pid: i32) -> std::result::Result<engine::ProcessStacks, EngineError> {
    let mut cache = engine::unwind::shared_cache()
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    engine::stacks(pid, &mut cache)
}
