//! The running kernel: the feed of kernel patches, applying from files or
//! the feed, the boot policy, the effective `uname`, and wrapping a
//! livepatch module into a patch file.

use crate::error::{About as _, AgentError, Result};
use crate::machine::Agent;
use hotsplice_kernel::{Kernel, KernelReport};
use hotsplice_patch::{ObjectKind, PatchId};
use serde::Serialize;
use std::path::{Path, PathBuf};

/// A kernel patch of the feed made for the running kernel.
#[derive(Debug, Clone, Serialize)]
pub struct FeedPatch {
    pub id: PatchId,
    pub path: PathBuf,
}

/// What the boot hook did, one line per patch or decision.
#[derive(Debug, Clone, Serialize)]
pub struct BootReport {
    /// Re-applying the recorded patches.
    pub recorded: Vec<hotsplice_kernel::BootLine>,
    /// Patches applied from the feed (`upgrade_on_reboot`, or `first_boot`
    /// on the first boot): what each did, or why it failed.
    pub from_feed: Vec<(PatchId, std::result::Result<KernelReport, String>)>,
    pub effective: String,
}

/// uname's fields, the release being the effective one.
#[derive(Debug, Clone, Serialize)]
pub struct Uname {
    pub sysname: String,
    pub nodename: String,
    pub release: String,
    /// The version, with the number of hotsplice updates when there are some.
    pub version: String,
    pub machine: String,
}

impl Agent {
    /// The kernel client, with `HOTSPLICE_TRANSITION_TIMEOUT` (seconds)
    /// if set.
    pub fn kernel(&self) -> Kernel {
        let mut k = Kernel::from_env();
        if let Some(t) = std::env::var("HOTSPLICE_TRANSITION_TIMEOUT")
            .ok()
            .and_then(|v| v.parse::<f64>().ok())
        {
            k.transition_timeout = std::time::Duration::from_secs_f64(t.max(0.0));
        }
        k
    }

    fn feed_dir(&self, from: Option<&Path>) -> Option<PathBuf> {
        from.map(Path::to_path_buf)
            .or_else(|| self.config.settings.feed.clone().map(PathBuf::from))
    }

    /// Kernel patches in the feed (`from`, or the configured one, and the
    /// patches a fleet server sent, `STATE/fleet/patches/`) for the
    /// running kernel. Unreadable or foreign files are passed over; each
    /// is verified when used.
    pub fn feed(&self, from: Option<&Path>, k: &Kernel) -> Result<Vec<FeedPatch>> {
        let mut dirs: Vec<(PathBuf, bool)> = Vec::new();
        if let Some(dir) = self.feed_dir(from) {
            dirs.push((dir, true));
        }
        if from.is_none() {
            let fleet = self.fleet_paths().patches();
            if fleet.is_dir() {
                dirs.push((fleet, false));
            }
        }
        if dirs.is_empty() {
            return Ok(Vec::new());
        }
        let me = k.build_id()?;
        let mut out: Vec<FeedPatch> = Vec::new();
        for (dir, must_exist) in dirs {
            let rd = match std::fs::read_dir(&dir) {
                Ok(rd) => rd,
                Err(e) if must_exist => {
                    return Err(AgentError::io(format!("feed {}", dir.display()), e))
                }
                Err(_) => continue,
            };
            let mut paths: Vec<PathBuf> = rd
                .flatten()
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|e| e == "hsp"))
                .collect();
            paths.sort();
            for p in paths {
                let Ok(bytes) = self.read_patch_file(&p) else {
                    continue;
                };
                let Ok(file) = hotsplice_patch::PatchFile::parse(&bytes) else {
                    continue;
                };
                let m = &file.patch.meta;
                if m.target.kind == ObjectKind::Kernel
                    && m.target.build_id == me
                    && !out.iter().any(|f| f.id == m.id)
                {
                    out.push(FeedPatch {
                        id: m.id.clone(),
                        path: p,
                    });
                }
            }
        }
        Ok(out)
    }

    /// Feed patches not applied yet.
    pub fn kernel_available(&self, from: Option<&Path>, k: &Kernel) -> Result<Vec<FeedPatch>> {
        let applied: Vec<String> = k.applied()?.into_iter().map(|p| p.id).collect();
        Ok(self
            .feed(from, k)?
            .into_iter()
            .filter(|f| !applied.iter().any(|a| a.as_str() == f.id.as_ref()))
            .collect())
    }

    /// A patch named by the caller: a file, or an id in the feed.
    pub fn kernel_patch_path(
        &self,
        name: &str,
        from: Option<&Path>,
        k: &Kernel,
    ) -> Result<PathBuf> {
        let path = PathBuf::from(name);
        if path.exists() {
            return Ok(path);
        }
        self.feed(from, k)?
            .into_iter()
            .find(|f| f.id == name)
            .map(|f| f.path)
            .ok_or_else(|| {
                AgentError::Request(format!(
                    "{name}: no such file, and no patch with that ID in the feed"
                ))
            })
    }

    /// Verify a kernel patch file and apply it. With `dry_run`, only verify
    /// it; `Ok(None)` then.
    pub fn kernel_apply(
        &self,
        k: &Kernel,
        path: &Path,
        allow_unsigned: bool,
        dry_run: bool,
    ) -> Result<(String, Option<KernelReport>)> {
        let patch = self.read_verified(path, allow_unsigned)?;
        if dry_run {
            return Ok((patch.meta.id.to_string(), None));
        }
        let r = k.apply(&patch, &path.display().to_string())?;
        Ok((r.id.clone(), Some(r)))
    }

    /// The boot hook: re-apply the recorded patches (`install_on_reboot`),
    /// each verified again; then, with `upgrade_on_reboot` (or `first_boot`
    /// on the machine's first boot with hotsplice), the feed's.
    pub fn kernel_boot(&self, from: Option<&Path>) -> Result<BootReport> {
        let k = self.kernel();
        let verify = |bytes: &[u8], what: &str| {
            self.verified(bytes, what, false)
                .map_err(|e| crate::error::chain(&e))
        };
        let recorded = k.reapply_at_boot(self.config.settings.install_on_reboot, &verify)?;
        let marker = self.paths.state_dir.join("kernel/booted-before");
        let first = !marker.exists();
        if first {
            // Best effort: without it, the next boot counts as first too.
            let _ = hotsplice_store::write_atomic(&marker, b"");
        }
        let mut from_feed = Vec::new();
        let s = &self.config.settings;
        if (s.upgrade_on_reboot || (first && s.first_boot)) && !k.disabled() {
            for f in self.kernel_available(from, &k)? {
                let r = match self.kernel_apply(&k, &f.path, false, false) {
                    Ok((_, Some(r))) => Ok(r),
                    Ok((id, None)) => Err(format!("{id} was not applied")),
                    Err(e) => Err(crate::error::chain(&e)),
                };
                from_feed.push((f.id, r));
            }
        }
        Ok(BootReport {
            recorded,
            from_feed,
            effective: k.effective_release()?,
        })
    }

    /// uname, with the effective kernel release.
    pub fn uname(&self, k: &Kernel) -> Result<Uname> {
        let un = nix::sys::utsname::uname()
            .map_err(|e| AgentError::io("uname", std::io::Error::from(e)))?;
        let s = |f: &std::ffi::OsStr| f.to_string_lossy().into_owned();
        let applied = k.applied()?;
        let mut version = s(un.version());
        if !applied.is_empty() {
            version = format!("{version} (hotsplice: {} update(s))", applied.len());
        }
        Ok(Uname {
            sysname: s(un.sysname()),
            nodename: s(un.nodename()),
            release: k.effective_release()?,
            version,
            machine: s(un.machine()),
        })
    }
}

/// A kernel patch file around a livepatch module: the module is the image;
/// its modinfo says which kernel build it is for.
pub fn wrap_module(
    ko: &[u8],
    origin: &str,
    functions: Vec<String>,
) -> Result<hotsplice_patch::Patch> {
    let info = hotsplice_kernel::modinfo(ko).map_err(|e| {
        AgentError::Request(format!(
            "{origin} is not a hotsplice kernel patch module: {e}"
        ))
    })?;
    let patch = hotsplice_create::kernel::kernel_patch(
        ko,
        &info.id,
        &info.description,
        &info.build_id,
        &info.release,
        functions,
    );
    patch.validate().about(|| origin.to_string())?;
    Ok(patch)
}
