//! Which CVEs this machine has fixed live, and where a fix is present but
//! not applied: the answer vulnerability scanners get wrong when they judge
//! by `uname -r` and package versions (`hotsplice vulns`, `--vex` for a
//! CSAF 2.0 VEX document, see `hotsplice_fleet::vex`).
//!
//! The CVEs are those the patches name (`PatchMeta::cves`): the kernel's
//! applied patches and the kernel feed's not applied; every installed
//! userspace patch. A userspace CVE is fixed in a process that maps the
//! patch's target when a patch for that target at least at the lowest
//! level naming the CVE is applied there (levels are cumulative).

use crate::error::Result;
use crate::machine::Agent;
use hotsplice_engine as engine;
use hotsplice_patch::PatchFile;
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};

/// A process, for people.
#[derive(Debug, Clone, Serialize)]
pub struct ProcessRef {
    pub pid: i32,
    pub comm: String,
}

/// A CVE a kernel patch fixes.
#[derive(Debug, Clone, Serialize)]
pub struct KernelFix {
    pub cve: String,
    pub patch: String,
    pub applied: bool,
}

/// A CVE a userspace patch fixes, and where.
#[derive(Debug, Clone, Serialize)]
pub struct UserFix {
    pub cve: String,
    /// The object it is fixed in (name and build-id).
    pub target: String,
    pub build_id: String,
    /// The patches naming it.
    pub patches: Vec<String>,
    pub fixed_in: Vec<ProcessRef>,
    pub lacking: Vec<ProcessRef>,
}

/// The machine's answer.
#[derive(Debug, Clone, Serialize)]
pub struct LiveFixes {
    pub kernel: Vec<KernelFix>,
    pub userspace: Vec<UserFix>,
    /// Fixed everywhere it matters: applied in the kernel, or in every
    /// process that maps the fixed object (and at least one does).
    pub fixed: Vec<String>,
    /// A fix is here but not applied (everywhere).
    pub not_fixed: Vec<String>,
}

fn cves_of_file(bytes: &[u8]) -> Vec<String> {
    PatchFile::parse(bytes)
        .map(|f| f.patch.meta.cves)
        .unwrap_or_default()
}

impl Agent {
    /// What is fixed live on this machine, CVE by CVE.
    pub fn live_fixes(&self) -> Result<LiveFixes> {
        let mut kernel = Vec::new();
        let k = self.kernel();
        let applied = k.applied().unwrap_or_default();
        for p in &applied {
            if let Ok((_, bytes)) = k.state.patch_file(p) {
                for cve in cves_of_file(&bytes) {
                    kernel.push(KernelFix {
                        cve,
                        patch: p.id.clone(),
                        applied: true,
                    });
                }
            }
        }
        if let Ok(feed) = self.kernel_available(None, &k) {
            for f in feed {
                if let Ok(bytes) = self.read_patch_file(&f.path) {
                    for cve in cves_of_file(&bytes) {
                        kernel.push(KernelFix {
                            cve,
                            patch: f.id.to_string(),
                            applied: false,
                        });
                    }
                }
            }
        }

        // Userspace: (build-id, cve) -> (target name, lowest level, patches).
        let store = self.store()?;
        let entries = store.list()?;
        let mut by_cve: BTreeMap<(String, String), (String, u32, Vec<String>)> = BTreeMap::new();
        for e in &entries {
            let Ok(bytes) = store.read_patch(e) else {
                continue;
            };
            for cve in cves_of_file(&bytes) {
                let slot = by_cve
                    .entry((e.target.build_id.to_string(), cve))
                    .or_insert_with(|| (e.target.name.clone(), e.level, Vec::new()));
                slot.1 = slot.1.min(e.level);
                slot.2.push(e.id.to_string());
            }
        }
        let level_of: BTreeMap<String, u32> = entries
            .iter()
            .map(|e| (e.id.to_string(), e.level))
            .collect();
        let mut userspace = Vec::new();
        for ((build_id, cve), (target, min_level, patches)) in by_cve {
            let bid = hotsplice_patch::BuildId::unchecked(build_id.clone());
            let mut fixed_in = Vec::new();
            let mut lacking = Vec::new();
            for pid in engine::processes_mapping(&bid) {
                let best = engine::applied(pid)
                    .unwrap_or_default()
                    .iter()
                    .filter(|r| r.target_build_id == bid)
                    .filter_map(|r| level_of.get(r.patch_id.as_str()).copied())
                    .max();
                let who = ProcessRef {
                    pid,
                    comm: crate::machine::comm(pid),
                };
                if best.is_some_and(|l| l >= min_level) {
                    fixed_in.push(who);
                } else {
                    lacking.push(who);
                }
            }
            userspace.push(UserFix {
                cve,
                target,
                build_id,
                patches,
                fixed_in,
                lacking,
            });
        }

        let mut fixed = BTreeSet::new();
        let mut not_fixed = BTreeSet::new();
        for f in &kernel {
            if f.applied {
                fixed.insert(f.cve.clone());
            } else {
                not_fixed.insert(f.cve.clone());
            }
        }
        for u in &userspace {
            if !u.lacking.is_empty() {
                not_fixed.insert(u.cve.clone());
            } else if !u.fixed_in.is_empty() {
                fixed.insert(u.cve.clone());
            }
        }
        let fixed: Vec<String> = fixed
            .into_iter()
            .filter(|c| !not_fixed.contains(c))
            .collect();
        Ok(LiveFixes {
            kernel,
            userspace,
            fixed,
            not_fixed: not_fixed.into_iter().collect(),
        })
    }

    /// [`Agent::live_fixes`] as a CSAF 2.0 VEX document about this machine
    /// (its fleet UUID when it has one).
    pub fn live_fixes_vex(&self, f: &LiveFixes) -> serde_json::Value {
        let host = crate::fleet::hostname();
        let uuid = self
            .fleet_paths()
            .read_uuid()
            .ok()
            .flatten()
            .unwrap_or_else(|| host.clone());
        let pid = format!("hotsplice-machine-{uuid}");
        let now = hotsplice_fleet::vex::rfc3339(hotsplice_fleet::now());
        let fixed: Vec<(String, String)> = f
            .fixed
            .iter()
            .map(|c| {
                (
                    c.clone(),
                    format!("{c} is fixed on this machine by a live patch applied by hotsplice (kernel, or every running process that maps the fixed object); the package version and `uname -r` do not show it."),
                )
            })
            .collect();
        let affected: Vec<(String, String, String)> = f
            .not_fixed
            .iter()
            .map(|c| {
                let lacking: Vec<String> = f
                    .userspace
                    .iter()
                    .filter(|u| &u.cve == c)
                    .flat_map(|u| u.lacking.iter().map(|p| format!("{} ({})", p.pid, p.comm)))
                    .collect();
                let why = if lacking.is_empty() {
                    format!("a live patch fixing {c} is here but not applied to the kernel")
                } else {
                    format!(
                        "a live patch fixing {c} is installed but not applied in: {}",
                        lacking.join(", ")
                    )
                };
                (
                    c.clone(),
                    why,
                    "run `hotsplice -y all upgrade` to apply the installed live patches"
                        .to_string(),
                )
            })
            .collect();
        hotsplice_fleet::vex::document(&hotsplice_fleet::vex::VexInput {
            product_id: &pid,
            product_name: &format!("{host} ({uuid})"),
            publisher: "hotsplice",
            title: &format!("Live patch status of {host}"),
            tracking_id: &format!("hotsplice-vex-{uuid}-{}", hotsplice_fleet::now()),
            initial: &now,
            current: &now,
            fixed: &fixed,
            affected: &affected,
        })
    }
}
