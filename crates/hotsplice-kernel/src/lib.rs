//! Kernel live patches, applied through the kernel's livepatch engine
//! (`CONFIG_LIVEPATCH`): a patch is a livepatch module that `hotsplice
//! create --kernel` made; applying loads it and follows
//! `/sys/kernel/livepatch/<module>/transition` until every task runs the new
//! code; a transition that cannot finish is reported (which tasks, their
//! stacks) and reverted. Applied patches are recorded so the same patches
//! can be re-applied at boot while the same kernel build runs.
//!
//! ```no_run
//! let k = hotsplice_kernel::Kernel::from_env();
//! println!("effective: {}", k.effective_release().unwrap());
//! ```

mod modinfo;
mod state;

pub use modinfo::{modinfo, ModInfo};
pub use state::{AppliedPatch, KernelState};

use hotsplice_patch::{ObjectKind, Patch};
use hotsplice_trust::Verified;
use std::path::PathBuf;
use std::time::{Duration, Instant};

#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    /// A recorded patch that cannot be verified, so it is not loaded.
    #[error("recorded kernel patch {id} not re-applied: {why}")]
    Unverifiable { id: String, why: String },
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("{0} is not a hotsplice kernel patch: {1}")]
    NotAPatch(String, String),
    #[error("{origin} is a userspace patch (for {target}): use `hotsplice user apply`")]
    NotKernelPatch { origin: String, target: String },
    #[error("patch {id} is for kernel build {want} ({release}); this kernel is build {have} ({running}); refusing")]
    WrongKernel {
        id: String,
        want: String,
        release: String,
        have: String,
        running: String,
    },
    #[error("this kernel has no livepatch support (no /sys/kernel/livepatch): CONFIG_LIVEPATCH is needed")]
    NoLivepatch,
    #[error("loading {module} failed: {source} (a damaged or foreign module, a missing symbol, or module signatures enforced: see the kernel log)")]
    Load {
        module: String,
        source: std::io::Error,
    },
    #[error("unloading {module} failed: {source}")]
    Unload {
        module: String,
        source: std::io::Error,
    },
    #[error(
        "patch {id} is disabled, but its module {module} stays loaded with a reference held: a hotsplice \
         module pins itself when it cannot put back the functions it redirected without ftrace (a task \
         stayed inside their new code), so those stay patched until the next boot; the kernel log names \
         them (\"stays redirected\"). The patch is no longer recorded and will not be re-applied at boot"
    )]
    Pinned { id: String, module: String },
    #[error("patch {id} is already applied")]
    AlreadyApplied { id: String },
    #[error("patch {0} is not applied")]
    NotApplied(String),
    #[error("patch {id} cannot be removed while {above} (applied later) is applied; remove {above} first")]
    NotTopmost { id: String, above: String },
    #[error("the transition of {module} did not finish within {waited:?}; it was reverted. Tasks holding it:\n{report}")]
    Stuck {
        module: String,
        waited: Duration,
        report: String,
    },
    #[error("{module} loaded and its transition finished, but the kernel reports these loaded objects not patched: {}; it was reverted (a livepatch object name that is not the kernel's name of the module, e.g. with `-` for `_`?)", objects.join(", "))]
    NotPatched {
        module: String,
        objects: Vec<String>,
    },
    #[error("live patching is disabled by `nouptrack` on the kernel command line")]
    Disabled,
    #[error(transparent)]
    Store(#[from] hotsplice_store::StoreError),
}

pub type Result<T> = std::result::Result<T, KernelError>;

pub(crate) fn io(path: impl Into<String>) -> impl FnOnce(std::io::Error) -> KernelError {
    let path = path.into();
    move |source| KernelError::Io { path, source }
}

/// The running kernel and where its interfaces are (overridable for tests).
#[derive(Debug, Clone)]
pub struct Kernel {
    pub sys_livepatch: PathBuf,
    pub notes: PathBuf,
    pub proc_dir: PathBuf,
    pub state: KernelState,
    /// How long a transition may take before it is reverted.
    pub transition_timeout: Duration,
}

/// What an apply or undo did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct KernelReport {
    pub id: String,
    pub module: String,
    /// Milliseconds from load (or disable) to transition complete.
    pub transition_ms: f64,
    /// Milliseconds from the start to the end of the whole operation.
    pub total_ms: f64,
}

impl Kernel {
    pub fn from_env() -> Kernel {
        let paths = hotsplice_store::Paths::from_env();
        Kernel {
            sys_livepatch: PathBuf::from("/sys/kernel/livepatch"),
            notes: PathBuf::from("/sys/kernel/notes"),
            proc_dir: PathBuf::from("/proc"),
            state: KernelState::new(paths.state_dir.join("kernel")),
            transition_timeout: Duration::from_secs(15),
        }
    }

    /// GNU build-id of the running kernel (hex), from `/sys/kernel/notes`.
    pub fn build_id(&self) -> Result<String> {
        let notes = std::fs::read(&self.notes).map_err(io(self.notes.display().to_string()))?;
        Ok(hotsplice_elf::build_id_from_notes(&notes)
            .map(hex::encode)
            .unwrap_or_default())
    }

    /// `uname -r` of the booted kernel.
    pub fn booted_release(&self) -> Result<String> {
        let p = self.proc_dir.join("sys/kernel/osrelease");
        Ok(std::fs::read_to_string(&p)
            .map_err(io(p.display().to_string()))?
            .trim()
            .to_string())
    }

    /// `nouptrack` (or `nohotsplice`) on the kernel command line.
    pub fn disabled(&self) -> bool {
        std::fs::read_to_string(self.proc_dir.join("cmdline"))
            .map(|c| {
                c.split_whitespace()
                    .any(|w| w == "nouptrack" || w == "nohotsplice")
            })
            .unwrap_or(false)
    }

    /// The release the kernel has with the applied patches: the effective
    /// version of the last one applied, or the booted release.
    pub fn effective_release(&self) -> Result<String> {
        let applied = self.applied()?;
        match applied.last() {
            Some(p) if !p.effective.is_empty() => Ok(p.effective.clone()),
            _ => self.booted_release(),
        }
    }

    /// Patches applied now, in order (recorded ones whose module is live).
    pub fn applied(&self) -> Result<Vec<AppliedPatch>> {
        let recorded = self.state.load()?;
        let booted = self.build_id().unwrap_or_default();
        Ok(recorded
            .into_iter()
            .filter(|p| p.build_id == booted && self.sys_livepatch.join(&p.module).exists())
            .collect())
    }

    fn read_flag(&self, module: &str, what: &str) -> Option<bool> {
        std::fs::read_to_string(self.sys_livepatch.join(module).join(what))
            .ok()
            .map(|s| s.trim() == "1")
    }

    /// Wait for the module's transition to finish.
    fn wait_transition(
        &self,
        module: &str,
        timeout: Duration,
    ) -> std::result::Result<Duration, Duration> {
        let start = Instant::now();
        loop {
            match self.read_flag(module, "transition") {
                Some(false) | None => return Ok(start.elapsed()),
                Some(true) => {}
            }
            if start.elapsed() >= timeout {
                return Err(start.elapsed());
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// Tasks not yet switched, with their kernel stacks.
    pub fn stuck_tasks(&self, want_state: &str) -> String {
        let mut out = String::new();
        let Ok(procs) = std::fs::read_dir(&self.proc_dir) else {
            return out;
        };
        for p in procs.flatten() {
            let Ok(pid) = p.file_name().to_string_lossy().parse::<u32>() else {
                continue;
            };
            let Ok(tasks) = std::fs::read_dir(p.path().join("task")) else {
                continue;
            };
            for t in tasks.flatten() {
                let state =
                    std::fs::read_to_string(t.path().join("patch_state")).unwrap_or_default();
                let state = state.trim();
                if state.is_empty() || state == "-1" || state == want_state {
                    continue;
                }
                let comm = std::fs::read_to_string(t.path().join("comm")).unwrap_or_default();
                let stack = std::fs::read_to_string(t.path().join("stack")).unwrap_or_default();
                out.push_str(&format!(
                    "  pid {pid} tid {} ({}) patch_state {state}\n{}",
                    t.file_name().to_string_lossy(),
                    comm.trim(),
                    stack
                        .lines()
                        .map(|l| format!("      {l}\n"))
                        .collect::<String>()
                ));
            }
        }
        out
    }

    /// Apply a verified kernel patch: load the livepatch module it
    /// carries, and record the patch file (so that the boot hook verifies
    /// it again). `origin` names where it came from, for messages.
    pub fn apply(&self, patch: &Verified<Patch>, origin: &str) -> Result<KernelReport> {
        let ko = kernel_module(patch, origin)?;
        self.apply_inner(ko, Some(patch.file()), origin)
    }

    /// With `record` (the signed patch file), add it to the applied list
    /// first (and take it out again if it fails); None when re-applying
    /// recorded patches at boot.
    fn apply_inner(&self, ko: &[u8], record: Option<&[u8]>, origin: &str) -> Result<KernelReport> {
        let t0 = Instant::now();
        if self.disabled() {
            return Err(KernelError::Disabled);
        }
        let info = modinfo(ko).map_err(|e| KernelError::NotAPatch(origin.into(), e))?;
        let have = self.build_id()?;
        if info.build_id != have {
            return Err(KernelError::WrongKernel {
                id: info.id,
                want: info.build_id,
                release: info.release,
                have,
                running: self.booted_release()?,
            });
        }
        if !self.sys_livepatch.exists() {
            return Err(KernelError::NoLivepatch);
        }
        if self.sys_livepatch.join(&info.module).exists() {
            return Err(KernelError::AlreadyApplied { id: info.id });
        }
        // Recorded first: if we die during the load, boot re-applies and
        // `show` still knows the module.
        if let Some(file) = record {
            self.state.add(&info, file)?;
        }
        let forget = |k: &Kernel| -> Result<()> {
            if record.is_some() {
                k.state.remove(&info.id)?;
            }
            Ok(())
        };
        let load = load_module(ko);
        if let Err(source) = load {
            forget(self)?;
            return Err(KernelError::Load {
                module: info.module,
                source,
            });
        }
        let t1 = Instant::now();
        match self.wait_transition(&info.module, self.transition_timeout) {
            Ok(_) => {
                // The transition finishing says nothing of objects the
                // patch names wrongly: every object that is loaded must
                // say it is patched, or the patch is taken out again.
                let objects = self.unpatched_objects(&info.module);
                if !objects.is_empty() {
                    let _ =
                        std::fs::write(self.sys_livepatch.join(&info.module).join("enabled"), "0");
                    let _ = self.wait_transition(&info.module, self.transition_timeout);
                    let _ = self.unload_when_released(&info.module);
                    forget(self)?;
                    return Err(KernelError::NotPatched {
                        module: info.module,
                        objects,
                    });
                }
            }
            Err(waited) => {
                let mut report = self.stuck_tasks("1");
                // Reverse the transition, then take the module out.
                let _ = std::fs::write(self.sys_livepatch.join(&info.module).join("enabled"), "0");
                let _ = self.wait_transition(&info.module, self.transition_timeout);
                if let Err(e) = self.unload_when_released(&info.module) {
                    report.push_str(&format!(
                        "  (the reverted module could not be unloaded: {e}; run `rmmod {}` later)\n",
                        info.module
                    ));
                }
                forget(self)?;
                return Err(KernelError::Stuck {
                    module: info.module,
                    waited,
                    report: if report.is_empty() {
                        "  (none found)".into()
                    } else {
                        report
                    },
                });
            }
        }
        Ok(KernelReport {
            id: info.id,
            module: info.module,
            transition_ms: t1.elapsed().as_secs_f64() * 1e3,
            total_ms: t0.elapsed().as_secs_f64() * 1e3,
        })
    }

    /// The objects of livepatch `module` (`vmlinux`, module names) that
    /// are loaded but whose `patched` flag is not 1.
    pub fn unpatched_objects(&self, module: &str) -> Vec<String> {
        let modules = std::fs::read_to_string(self.proc_dir.join("modules")).unwrap_or_default();
        let loaded = |name: &str| {
            name == "vmlinux"
                || modules
                    .lines()
                    .any(|l| l.split_whitespace().next() == Some(name))
        };
        let Ok(dir) = std::fs::read_dir(self.sys_livepatch.join(module)) else {
            return Vec::new();
        };
        let mut out: Vec<String> = dir
            .flatten()
            .filter_map(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                let flag = std::fs::read_to_string(e.path().join("patched")).ok()?;
                (loaded(&name) && flag.trim() != "1").then_some(name)
            })
            .collect();
        out.sort();
        out
    }

    /// Remove an applied patch: disable, wait for the transition, unload.
    pub fn undo(&self, id: &str) -> Result<KernelReport> {
        let t0 = Instant::now();
        let applied = self.applied()?;
        let pos = applied
            .iter()
            .position(|p| p.id == id || p.module == id)
            .ok_or_else(|| KernelError::NotApplied(id.into()))?;
        if let Some(above) = applied.get(pos + 1) {
            return Err(KernelError::NotTopmost {
                id: id.into(),
                above: above.id.clone(),
            });
        }
        let p = &applied[pos];
        let enabled = self.sys_livepatch.join(&p.module).join("enabled");
        std::fs::write(&enabled, "0").map_err(io(enabled.display().to_string()))?;
        let t1 = Instant::now();
        if let Err(waited) = self.wait_transition(&p.module, self.transition_timeout) {
            let mut report = self.stuck_tasks("0");
            if report.is_empty() {
                report = "  (none found)".into();
            }
            // Back to patched: the undo did not happen.
            let _ = std::fs::write(&enabled, "1");
            let _ = self.wait_transition(&p.module, self.transition_timeout);
            return Err(KernelError::Stuck {
                module: p.module.clone(),
                waited,
                report,
            });
        }
        let transition = t1.elapsed();
        if let Err(source) = self.unload_when_released(&p.module) {
            if self.module_refcnt(&p.module).is_some_and(|n| n > 0) {
                self.state.remove(&p.id)?;
                return Err(KernelError::Pinned {
                    id: p.id.clone(),
                    module: p.module.clone(),
                });
            }
            return Err(KernelError::Unload {
                module: p.module.clone(),
                source,
            });
        }
        self.state.remove(&p.id)?;
        Ok(KernelReport {
            id: p.id.clone(),
            module: p.module.clone(),
            transition_ms: transition.as_secs_f64() * 1e3,
            total_ms: t0.elapsed().as_secs_f64() * 1e3,
        })
    }

    /// The references held on a loaded module (`/sys/module/NAME/refcnt`).
    fn module_refcnt(&self, module: &str) -> Option<u64> {
        let sys = self.sys_livepatch.parent()?.parent()?;
        std::fs::read_to_string(sys.join("module").join(module).join("refcnt"))
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    /// Unload a disabled livepatch module once the livepatch core has let
    /// go of it (its sysfs directory goes, then its reference is dropped by
    /// deferred work: until then the unload says busy or try again).
    fn unload_when_released(&self, module: &str) -> std::io::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.sys_livepatch.join(module).exists() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(2));
        }
        loop {
            match unload_module(module) {
                Ok(()) => return Ok(()),
                Err(e)
                    if Instant::now() < deadline
                        && matches!(e.raw_os_error(), Some(libc::EBUSY) | Some(libc::EAGAIN)) =>
                {
                    std::thread::sleep(Duration::from_millis(5))
                }
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(()),
                Err(e) => return Err(e),
            }
        }
    }

    /// At boot: re-apply the recorded patches, in order, if the booted
    /// kernel is the build they were made for; otherwise apply nothing and
    /// say why. Returns a line per patch for the log.
    ///
    /// Each recorded patch file is verified again by `verify` (which checks
    /// its signature against the trusted keys and returns its module), as
    /// on every other use: nothing on disk is loaded into the kernel
    /// unverified.
    pub fn reapply_at_boot(
        &self,
        install_on_reboot: bool,
        verify: &VerifyPatch<'_>,
    ) -> Result<Vec<BootLine>> {
        if self.disabled() {
            return Ok(vec![BootLine::all(
                "nouptrack on the kernel command line: no patches applied".into(),
            )]);
        }
        if !install_on_reboot {
            return Ok(vec![BootLine::all(
                "install_on_reboot is off: no patches applied".into(),
            )]);
        }
        let booted = self.build_id()?;
        let recorded = self.state.load()?;
        let mut lines = Vec::new();
        let (same, other): (Vec<_>, Vec<_>) =
            recorded.into_iter().partition(|p| p.build_id == booted);
        if !other.is_empty() {
            lines.push(BootLine::all(format!(
                "{} recorded patch(es) are for another kernel build; not applied (booted {})",
                other.len(),
                self.booted_release().unwrap_or_default()
            )));
        }
        for (i, p) in same.iter().enumerate() {
            if self.sys_livepatch.join(&p.module).exists() {
                lines.push(BootLine::patch(
                    &p.id,
                    "already-applied",
                    format!("{}: already applied", p.id),
                ));
                continue;
            }
            let result = self.state.patch_file(p).and_then(|(path, bytes)| {
                let patch = verify(&bytes, &path).map_err(|why| KernelError::Unverifiable {
                    id: p.id.clone(),
                    why,
                })?;
                let ko = kernel_module(&patch, &path)?;
                let id = modinfo(ko).map(|m| m.id).unwrap_or_default();
                if id != p.id {
                    return Err(KernelError::Unverifiable {
                        id: p.id.clone(),
                        why: format!("{path} holds patch {id:?}, not {}", p.id),
                    });
                }
                self.apply_inner(ko, None, &p.id)
            });
            match result {
                Ok(r) => lines.push(BootLine::patch(
                    &p.id,
                    "re-applied",
                    format!("{}: re-applied ({:.1} ms)", p.id, r.total_ms),
                )),
                Err(e) => {
                    // Patches stack: the ones above need this one. The
                    // records stay, for the next boot or a manual retry.
                    lines.push(BootLine::patch(
                        &p.id,
                        "failed",
                        format!("{}: FAILED: {e}", p.id),
                    ));
                    if i + 1 < same.len() {
                        lines.push(BootLine::all(format!(
                            "{} later patch(es) not applied because {} failed",
                            same.len() - i - 1,
                            p.id
                        )));
                    }
                    break;
                }
            }
        }
        Ok(lines)
    }
}

/// One line of the boot hook's log ([`Kernel::reapply_at_boot`]): about
/// one recorded patch and what happened to it, or about all of them.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct BootLine {
    /// The patch the line is about.
    pub id: Option<String>,
    /// What happened to it: `re-applied`, `already-applied` or `failed`.
    pub result: Option<&'static str>,
    /// The line for people.
    pub text: String,
}

impl BootLine {
    fn all(text: String) -> BootLine {
        BootLine {
            id: None,
            result: None,
            text,
        }
    }

    fn patch(id: &str, result: &'static str, text: String) -> BootLine {
        BootLine {
            id: Some(id.to_string()),
            result: Some(result),
            text,
        }
    }
}

impl std::fmt::Display for BootLine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.text)
    }
}

/// Verifies a recorded patch file (bytes, and where it was read from for
/// messages) against the trust policy, or says why not.
pub type VerifyPatch<'a> = dyn Fn(&[u8], &str) -> std::result::Result<Verified<Patch>, String> + 'a;

/// The livepatch module a verified kernel patch carries.
fn kernel_module<'a>(patch: &'a Verified<Patch>, origin: &str) -> Result<&'a [u8]> {
    let meta = &patch.meta;
    if meta.target.kind != ObjectKind::Kernel {
        return Err(KernelError::NotKernelPatch {
            origin: origin.into(),
            target: meta.target.name.clone(),
        });
    }
    Ok(&patch.image)
}

fn load_module(ko: &[u8]) -> std::io::Result<()> {
    Ok(nix::kmod::init_module(ko, c"")?)
}

fn unload_module(name: &str) -> std::io::Result<()> {
    let c = std::ffi::CString::new(name).map_err(std::io::Error::other)?;
    Ok(nix::kmod::delete_module(
        &c,
        nix::kmod::DeleteModuleFlags::O_NONBLOCK,
    )?)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A kernel whose /sys and /proc are files in `dir`, with build-id `id`.
    fn fake_kernel(dir: &std::path::Path, id: &[u8; 20]) -> Kernel {
        let mut note = Vec::new();
        note.extend(4u32.to_le_bytes());
        note.extend(20u32.to_le_bytes());
        note.extend(3u32.to_le_bytes()); // NT_GNU_BUILD_ID
        note.extend(b"GNU\0");
        note.extend(id);
        std::fs::write(dir.join("notes"), note).unwrap();
        std::fs::create_dir_all(dir.join("proc/sys/kernel")).unwrap();
        std::fs::write(dir.join("proc/cmdline"), "quiet\n").unwrap();
        std::fs::write(dir.join("proc/sys/kernel/osrelease"), "6.1.0-test\n").unwrap();
        std::fs::create_dir_all(dir.join("livepatch")).unwrap();
        Kernel {
            sys_livepatch: dir.join("livepatch"),
            notes: dir.join("notes"),
            proc_dir: dir.join("proc"),
            state: KernelState::new(dir.join("state")),
            transition_timeout: Duration::from_secs(1),
        }
    }

    #[test]
    fn loaded_objects_not_patched_are_found() {
        let t = tempfile::tempdir().unwrap();
        let k = fake_kernel(t.path(), &[7; 20]);
        let lp = k.sys_livepatch.join("hs_abcd1234");
        for (obj, flag) in [("vmlinux", "1"), ("snd_usb_audio", "0"), ("btrfs", "0")] {
            std::fs::create_dir_all(lp.join(obj).join("f,1")).unwrap();
            std::fs::write(lp.join(obj).join("patched"), format!("{flag}\n")).unwrap();
        }
        // btrfs is not loaded: not patched is right for it.
        std::fs::write(
            k.proc_dir.join("modules"),
            "snd_usb_audio 123 0 - Live 0x0\nhs_abcd1234 1 1 - Live 0x0 (K)\n",
        )
        .unwrap();
        assert_eq!(k.unpatched_objects("hs_abcd1234"), vec!["snd_usb_audio"]);
        std::fs::write(lp.join("snd_usb_audio/patched"), "1\n").unwrap();
        assert!(k.unpatched_objects("hs_abcd1234").is_empty());
        std::fs::write(lp.join("vmlinux/patched"), "0\n").unwrap();
        assert_eq!(k.unpatched_objects("hs_abcd1234"), vec!["vmlinux"]);
    }

    fn dir_of(k: &Kernel) -> std::path::PathBuf {
        k.notes.parent().unwrap().join("state")
    }

    fn record(k: &Kernel, id: &str, file: &str, build_id: &str) {
        let info = ModInfo {
            id: id.into(),
            module: format!("hs_{id}"),
            description: String::new(),
            build_id: build_id.into(),
            release: "6.1.0-test".into(),
            effective: String::new(),
        };
        k.state.add(&info, b"signed patch bytes").unwrap();
        if file != format!("{id}.hsp") {
            // An edited record, or one of an earlier version.
            let index = dir_of(k).join("applied.json");
            let text = std::fs::read_to_string(&index).unwrap();
            std::fs::write(&index, text.replace(&format!("{id}.hsp"), file)).unwrap();
        }
    }

    #[test]
    fn boot_verifies_every_recorded_patch_and_loads_nothing_unverified() {
        let dir = tempfile::tempdir().unwrap();
        let k = fake_kernel(dir.path(), &[0xab; 20]);
        let build = hex::encode([0xab; 20]);
        record(&k, "aaaa1111", "aaaa1111.hsp", &build);
        let refused = |bytes: &[u8], what: &str| -> std::result::Result<Verified, String> {
            assert_eq!(bytes, b"signed patch bytes");
            Err(format!("{what}: bad signature"))
        };
        let lines = k.reapply_at_boot(true, &refused).unwrap();
        assert!(
            lines[0]
                .text
                .starts_with("aaaa1111: FAILED: recorded kernel patch aaaa1111 not re-applied:")
                && lines[0].text.ends_with("bad signature")
                && lines[0].id.as_deref() == Some("aaaa1111")
                && lines[0].result == Some("failed"),
            "{lines:?}"
        );
        // A record naming a path, or a bare module of an earlier version,
        // is never read or loaded.
        for file in ["../../etc/x.hsp", "bbbb2222.ko"] {
            let dir = tempfile::tempdir().unwrap();
            let k = fake_kernel(dir.path(), &[0xab; 20]);
            record(&k, "bbbb2222", file, &build);
            let never = |_: &[u8], _: &str| -> std::result::Result<Verified, String> {
                panic!("verify called for {file}")
            };
            let lines = k.reapply_at_boot(true, &never).unwrap();
            assert!(
                lines[0].text.contains("not re-applied")
                    && lines[0].text.contains("apply the patch again"),
                "{file}: {lines:?}"
            );
        }
    }

    #[test]
    fn a_damaged_record_is_an_error_and_is_never_overwritten() {
        let dir = tempfile::tempdir().unwrap();
        let k = fake_kernel(dir.path(), &[0xab; 20]);
        let build = hex::encode([0xab; 20]);
        record(&k, "aaaa1111", "aaaa1111.hsp", &build);
        let index = dir_of(&k).join("applied.json");
        let good = std::fs::read(&index).unwrap();
        for (bad, says) in [
            (&good[..good.len() / 2], "not a kernel patch record"),
            (
                &b"{\"version\": 9, \"applied\": []}"[..],
                "record version 9",
            ),
        ] {
            std::fs::write(&index, bad).unwrap();
            let e = k.state.load().unwrap_err().to_string();
            assert!(
                e.contains(&index.display().to_string()) && e.contains(says),
                "{e}"
            );
            let info = ModInfo {
                id: "cccc3333".into(),
                module: "hs_cccc3333".into(),
                description: String::new(),
                build_id: build.clone(),
                release: "6.1.0-test".into(),
                effective: String::new(),
            };
            assert!(k.state.add(&info, b"x").is_err());
            assert_eq!(std::fs::read(&index).unwrap(), bad, "left as it was");
        }
    }
}
