//! Bringing processes up to the installed patch levels: plan (what each
//! process needs, read without changing anything), then execute (apply,
//! replacing lower levels in the same stop window).

use crate::error::{chain, Result};
use crate::event::Event;
use crate::machine::{exe, Agent};
use crate::pool::run_parallel;
use hotsplice_engine::{self as engine, ApplyOptions};
use hotsplice_patch::PatchId;
use hotsplice_store::{Blacklist, Entry};
use hotsplice_trust::Verified;
use serde::Serialize;

/// What upgrade decided or did for one process and patch.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
#[serde(tag = "result", rename_all = "kebab-case")]
pub enum Outcome {
    Patched {
        pid: i32,
        id: PatchId,
        replaced: Option<PatchId>,
        stopped_us: u128,
    },
    AlreadyPatched {
        pid: i32,
        id: PatchId,
    },
    Skipped {
        pid: i32,
        why: String,
    },
    Failed {
        pid: i32,
        id: PatchId,
        why: String,
    },
    /// To be done (a plan, or a dry run).
    Planned {
        pid: i32,
        id: PatchId,
        replaces: Option<PatchId>,
    },
}

impl Outcome {
    pub fn pid(&self) -> i32 {
        match self {
            Outcome::Patched { pid, .. }
            | Outcome::AlreadyPatched { pid, .. }
            | Outcome::Skipped { pid, .. }
            | Outcome::Failed { pid, .. }
            | Outcome::Planned { pid, .. } => *pid,
        }
    }
}

/// The installed patches (highest level per target), verified again on
/// use, and the blacklist: what an upgrade works from.
pub struct Installed {
    pub patches: Vec<(Entry, Verified)>,
    pub blacklist: Blacklist,
}

/// The result of an upgrade over many processes.
#[derive(Debug, Default, Serialize)]
pub struct UpgradeRun {
    pub outcomes: Vec<Outcome>,
    /// Processes not started because a stop was requested.
    pub not_started: usize,
}

impl UpgradeRun {
    pub fn count(&self, f: fn(&Outcome) -> bool) -> usize {
        self.outcomes.iter().filter(|o| f(o)).count()
    }

    pub fn failed(&self) -> bool {
        self.outcomes
            .iter()
            .any(|o| matches!(o, Outcome::Failed { .. }))
    }
}

impl Agent {
    /// Installed patches (highest level per target), verified again on use:
    /// unsigned ones only with `allow_unsigned` (the explicit flag), whatever
    /// the store's index says; and the blacklist.
    pub fn installed_patches(&self, allow_unsigned: bool) -> Result<Installed> {
        let store = self.store()?;
        let mut patches = Vec::new();
        for e in store.current_levels()? {
            let patch = self.installed(&store, &e, allow_unsigned)?;
            patches.push((e, patch));
        }
        Ok(Installed {
            patches,
            blacklist: self.blacklist()?,
        })
    }

    /// What `pid` needs (as [`Outcome::Planned`]) and what is already done
    /// or skipped. Reads the process; changes nothing.
    pub fn plan_process(&self, pid: i32, inst: &Installed) -> Vec<Outcome> {
        match relevant(pid, inst) {
            Some(objects) => plan_for(pid, inst, &objects),
            None => vec![],
        }
    }

    /// Bring one process up to the installed levels: plan under the
    /// process's lock, then carry out each planned step (a lower level is
    /// replaced in the same stop window). With `dry_run`, only the plan.
    pub fn upgrade_process(
        &self,
        pid: i32,
        inst: &Installed,
        opts: &ApplyOptions,
        dry_run: bool,
    ) -> Vec<Outcome> {
        let Some(objects) = relevant(pid, inst) else {
            return vec![];
        };
        if dry_run {
            return plan_for(pid, inst, &objects);
        }
        let _lock = match self.lock_process(pid) {
            Ok(l) => l,
            Err(e) => {
                return plan_for(pid, inst, &objects)
                    .into_iter()
                    .map(|o| match o {
                        Outcome::Planned { pid, id, .. } => Outcome::Failed {
                            pid,
                            id,
                            why: format!("cannot take the process lock: {}", chain(&e)),
                        },
                        o => o,
                    })
                    .collect();
            }
        };
        // Patches applied before libgcc_s was loaded: register their
        // unwind information now.
        self.register_late(pid);
        // What is applied is read under the lock.
        plan_for(pid, inst, &objects)
            .into_iter()
            .map(|o| self.execute(o, inst, opts))
            .collect()
    }

    /// Carry out one planned step (other outcomes pass through).
    fn execute(&self, o: Outcome, inst: &Installed, opts: &ApplyOptions) -> Outcome {
        let Outcome::Planned { pid, id, replaces } = o else {
            return o;
        };
        let Some((_, patch)) = inst.patches.iter().find(|(e, _)| e.id == id) else {
            return Outcome::Failed {
                pid,
                id,
                why: "the plan names a patch that is not installed".into(),
            };
        };
        match engine::apply_replacing(pid, patch, replaces.as_ref(), opts) {
            Ok(r) => Outcome::Patched {
                pid,
                id: r.id,
                replaced: r.replaced,
                stopped_us: r.stopped.as_micros(),
            },
            Err(err) => Outcome::Failed {
                pid,
                id,
                why: err.to_string(),
            },
        }
    }

    /// The plan for `pids` (for a confirmation, or a dry run).
    pub fn plan_upgrade(&self, pids: &[i32], inst: &Installed) -> Vec<Outcome> {
        pids.iter()
            .flat_map(|&p| self.plan_process(p, inst))
            .collect()
    }

    /// Upgrade every process of `pids`, on worker threads, with an
    /// [`Event::Progress`] after each.
    pub fn upgrade(
        &self,
        pids: &[i32],
        inst: &Installed,
        opts: &ApplyOptions,
        dry_run: bool,
    ) -> UpgradeRun {
        let total = pids.len();
        self.upgrade_with_progress(pids, inst, opts, dry_run, |done| {
            self.emit(Event::Progress { done, total })
        })
    }

    /// As [`Agent::upgrade`], calling `progress(processes done)` after each
    /// process instead of sending an event.
    pub fn upgrade_with_progress(
        &self,
        pids: &[i32],
        inst: &Installed,
        opts: &ApplyOptions,
        dry_run: bool,
        progress: impl Fn(usize) + Sync,
    ) -> UpgradeRun {
        let done = std::sync::atomic::AtomicUsize::new(0);
        let run = run_parallel(pids, self.stop_requested_fn(), |&p| {
            let r = self.upgrade_process(p, inst, opts, dry_run);
            progress(done.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1);
            r
        });
        UpgradeRun {
            outcomes: run.results.into_iter().flatten().collect(),
            not_started: run.not_started,
        }
    }
}

/// The objects of `pid` when it maps a target of an installed patch.
fn relevant(pid: i32, inst: &Installed) -> Option<Vec<engine::LoadedObject>> {
    let me = std::process::id() as i32;
    if pid == 1 || pid == me {
        return None;
    }
    let maps = hotsplice_process::read_maps(pid).ok()?;
    let objects = engine::loaded_objects(pid, &maps).ok()?;
    inst.patches
        .iter()
        .any(|(e, _)| objects.iter().any(|o| o.build_id == e.target.build_id))
        .then_some(objects)
}

/// The plan for a process that maps `objects` (see [`relevant`]).
fn plan_for(pid: i32, inst: &Installed, objects: &[engine::LoadedObject]) -> Vec<Outcome> {
    let exe_path = exe(pid);
    if let Some(pat) = inst.blacklist.executable(&exe_path) {
        return vec![Outcome::Skipped {
            pid,
            why: format!("executable {exe_path} matches blacklist pattern `{pat}`"),
        }];
    }
    let applied = engine::applied(pid).unwrap_or_default();
    let mut out = Vec::new();
    for (e, _) in &inst.patches {
        let Some(o) = objects.iter().find(|o| o.build_id == e.target.build_id) else {
            continue;
        };
        if let Some(pat) = inst.blacklist.target(&o.path) {
            out.push(Outcome::Skipped {
                pid,
                why: format!("{} matches blacklist pattern `{pat}`", o.path),
            });
            continue;
        }
        if applied.iter().any(|h| h.patch_id == e.id) {
            out.push(Outcome::AlreadyPatched {
                pid,
                id: e.id.clone(),
            });
            continue;
        }
        let lower = applied
            .iter()
            .rfind(|h| h.target_build_id == e.target.build_id)
            .map(|h| h.patch_id.clone());
        out.push(Outcome::Planned {
            pid,
            id: e.id.clone(),
            replaces: lower,
        });
    }
    out
}
