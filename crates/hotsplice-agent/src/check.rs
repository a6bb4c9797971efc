//! Is this machine up to date with what it has? The kernel against the
//! feed, every process against the installed patches (what `upgrade` would
//! do, blacklist and levels included), and operations a killed hotsplice
//! left in flight. The `check` command renders it as a Nagios plugin line
//! or a Prometheus textfile.

use crate::error::Result;
use crate::machine::Agent;
use crate::upgrade::Outcome;
use serde::Serialize;
use std::path::Path;

/// Nagios plugin states, with their exit codes.
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq, PartialOrd, Ord)]
#[serde(rename_all = "UPPERCASE")]
pub enum CheckStatus {
    Ok = 0,
    Warning = 1,
    Critical = 2,
    Unknown = 3,
}

impl CheckStatus {
    pub fn code(self) -> i32 {
        self as i32
    }
    pub fn name(self) -> &'static str {
        match self {
            CheckStatus::Ok => "OK",
            CheckStatus::Warning => "WARNING",
            CheckStatus::Critical => "CRITICAL",
            CheckStatus::Unknown => "UNKNOWN",
        }
    }
}

/// The kernel's part of a check.
#[derive(Debug, Clone, Serialize)]
pub struct KernelCheck {
    pub release: String,
    pub effective: String,
    /// Applied patch IDs, in order.
    pub applied: Vec<String>,
    /// Feed patches for this kernel not applied (what `kernel upgrade` would apply).
    pub missing: Vec<String>,
    /// `nouptrack`/`nohotsplice` on the kernel command line.
    pub disabled: bool,
}

/// A process that lacks an installed patch.
#[derive(Debug, Clone, Serialize)]
pub struct MissingPatch {
    pub pid: i32,
    pub id: String,
    pub replaces: Option<String>,
}

/// The processes' part of a check.
#[derive(Debug, Clone, Serialize)]
pub struct UserCheck {
    /// Installed patches (highest level per target).
    pub installed: usize,
    /// Process/patch pairs where the patch is applied.
    pub applied: usize,
    /// What `user upgrade` would do.
    pub missing: Vec<MissingPatch>,
}

/// The whole check: a status, and why.
#[derive(Debug, Clone, Serialize)]
pub struct CheckReport {
    pub status: CheckStatus,
    /// One line for people, without the status word.
    pub summary: String,
    /// None when the kernel has no livepatch support or cannot be read.
    pub kernel: Option<KernelCheck>,
    pub user: Option<UserCheck>,
    /// Operations an interrupted hotsplice left in flight.
    pub interrupted: usize,
    /// What could not be checked (each makes the status UNKNOWN).
    pub problems: Vec<String>,
}

impl Agent {
    /// Check the kernel (against the feed `from` or the configured one)
    /// and every process (against the installed patches). Never fails:
    /// what cannot be read is a problem of the report (UNKNOWN).
    pub fn check(&self, from: Option<&Path>) -> CheckReport {
        let mut problems = Vec::new();
        let k = self.kernel();
        let kernel = if Path::new("/sys/kernel/livepatch").exists() {
            let r = (|| -> Result<KernelCheck> {
                Ok(KernelCheck {
                    release: k.booted_release()?,
                    effective: k.effective_release()?,
                    applied: k.applied()?.into_iter().map(|p| p.id).collect(),
                    missing: self
                        .kernel_available(from, &k)?
                        .into_iter()
                        .map(|f| f.id.to_string())
                        .collect(),
                    disabled: k.disabled(),
                })
            })();
            match r {
                Ok(c) => Some(c),
                Err(e) => {
                    problems.push(format!("kernel: {}", crate::chain(&e)));
                    None
                }
            }
        } else {
            None
        };
        let user = match self.installed_patches(false) {
            Ok(inst) => {
                let pids = crate::user::pids(None);
                let plan = self.plan_upgrade(&pids, &inst);
                let mut missing = Vec::new();
                let mut applied = 0;
                for o in plan {
                    match o {
                        Outcome::Planned { pid, id, replaces } => missing.push(MissingPatch {
                            pid,
                            id: id.to_string(),
                            replaces: replaces.map(|r| r.to_string()),
                        }),
                        Outcome::AlreadyPatched { .. } => applied += 1,
                        _ => {}
                    }
                }
                Some(UserCheck {
                    installed: inst.patches.len(),
                    applied,
                    missing,
                })
            }
            Err(e) => {
                problems.push(format!("installed patches: {}", crate::chain(&e)));
                None
            }
        };
        let interrupted = self.interrupted().len();

        let mut status = CheckStatus::Ok;
        let mut parts = Vec::new();
        if kernel.is_none() && problems.is_empty() {
            parts.push("kernel not checked (no livepatch support)".to_string());
        }
        if let Some(k) = &kernel {
            if !k.missing.is_empty() {
                status = status.max(CheckStatus::Critical);
                parts.push(format!(
                    "kernel {} lacks {} available patch(es): {}",
                    k.effective,
                    k.missing.len(),
                    k.missing.join(",")
                ));
            } else {
                parts.push(format!(
                    "kernel {} up to date ({} patch(es) applied)",
                    k.effective,
                    k.applied.len()
                ));
            }
            if k.disabled {
                status = status.max(CheckStatus::Warning);
                parts.push("hotsplice disabled on the kernel command line".into());
            }
        }
        if let Some(u) = &user {
            if u.missing.is_empty() {
                parts.push(format!(
                    "processes up to date ({} installed patch(es), applied {} time(s))",
                    u.installed, u.applied
                ));
            } else {
                status = status.max(CheckStatus::Critical);
                let mut pids: Vec<i32> = u.missing.iter().map(|m| m.pid).collect();
                pids.dedup();
                let mut ids: Vec<&str> = u.missing.iter().map(|m| m.id.as_str()).collect();
                ids.sort();
                ids.dedup();
                parts.push(format!(
                    "{} process(es) lack installed patch(es) {} (pids {})",
                    pids.len(),
                    ids.join(","),
                    pids.iter()
                        .map(|p| p.to_string())
                        .collect::<Vec<_>>()
                        .join(",")
                ));
            }
        }
        if interrupted > 0 {
            status = status.max(CheckStatus::Warning);
            parts.push(format!(
                "{interrupted} interrupted operation(s) to recover (run any hotsplice user command)"
            ));
        }
        if !problems.is_empty() {
            status = CheckStatus::Unknown;
            parts.extend(problems.iter().cloned());
        }
        CheckReport {
            status,
            summary: parts.join("; "),
            kernel,
            user,
            interrupted,
            problems,
        }
    }
}
