//! The check-in report, built from the agent's own views of the machine.

use crate::error::{AgentError, Result};
use crate::machine::{printable, Agent};
use hotsplice_fleet::report::{
    AppliedKernelPatch, KernelState, ObjectInUse, ProcessPatches, Report, MAX_ADDRESSES,
    MAX_KERNEL_PATCHES, MAX_OBJECTS, MAX_PER_PROCESS, MAX_PROCESSES, MAX_STRING, REPORT_FORMAT,
};

/// This machine's name, `?` if it has none.
pub fn hostname() -> String {
    nix::unistd::gethostname()
        .map(|h| fit(&h.to_string_lossy()))
        .unwrap_or_else(|_| "?".into())
}

/// The machine's addresses, loopback left out, IPv4 first, each once.
pub fn addresses() -> Vec<String> {
    let mut v4 = Vec::new();
    let mut v6 = Vec::new();
    if let Ok(addrs) = nix::ifaddrs::getifaddrs() {
        for a in addrs {
            if a.flags
                .contains(nix::net::if_::InterfaceFlags::IFF_LOOPBACK)
            {
                continue;
            }
            let Some(sa) = a.address else { continue };
            if let Some(s) = sa.as_sockaddr_in() {
                let ip = std::net::IpAddr::V4(s.ip());
                if !ip.is_loopback() {
                    v4.push(ip.to_string());
                }
            } else if let Some(s) = sa.as_sockaddr_in6() {
                let ip = std::net::IpAddr::V6(s.ip());
                if !ip.is_loopback() {
                    v6.push(ip.to_string());
                }
            }
        }
    }
    let mut out: Vec<String> = Vec::new();
    for a in v4.into_iter().chain(v6) {
        if !out.contains(&a) {
            out.push(a);
        }
    }
    out.truncate(MAX_ADDRESSES);
    out
}

/// `/proc/sys/vm/mmap_min_addr` (Uptrack reports it), `None` when it
/// cannot be read or is not a number.
pub fn mmap_min_addr() -> Option<u64> {
    mmap_min_addr_from(std::path::Path::new("/proc/sys/vm/mmap_min_addr"))
}

fn mmap_min_addr_from(path: &std::path::Path) -> Option<u64> {
    use std::io::Read;
    let mut text = String::new();
    std::fs::File::open(path)
        .ok()?
        .take(64)
        .read_to_string(&mut text)
        .ok()?;
    text.trim()
        .parse::<u64>()
        .ok()
        .filter(|a| *a <= i64::MAX as u64)
}

/// Text from the machine, fit for a report: control characters escaped,
/// cut to [`MAX_STRING`] bytes.
fn fit(s: &str) -> String {
    let mut s = printable(s);
    if s.len() > MAX_STRING {
        let mut end = MAX_STRING;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
    }
    s
}

impl Agent {
    /// The check-in report of this machine: its kernel (releases, build-id,
    /// applied patches; `livepatch: false` when the kernel cannot be live
    /// patched), the patchable objects processes map, the patches applied
    /// in each process, and what the last sync did. The UUID is made on
    /// first use (a machine that only writes reports to files has one too).
    pub fn fleet_report(&self) -> Result<Report> {
        let fp = self.fleet_paths();
        let uuid = fp.uuid_or_new()?;
        let k = self.kernel();
        let booted = k.booted_release().unwrap_or_else(|_| {
            nix::sys::utsname::uname()
                .map(|u| u.release().to_string_lossy().into_owned())
                .unwrap_or_default()
        });
        let applied = k.applied().unwrap_or_default();
        let build_id = k.build_id().unwrap_or_default();
        let kernel = KernelState {
            effective_release: fit(&k.effective_release().unwrap_or_else(|_| booted.clone())),
            original_release: fit(&booted),
            build_id: if build_id.len() <= 128 && build_id.bytes().all(|b| b.is_ascii_hexdigit()) {
                build_id
            } else {
                String::new()
            },
            livepatch: std::path::Path::new("/sys/kernel/livepatch").is_dir() && !k.disabled(),
            applied: applied
                .iter()
                .filter(|p| hotsplice_patch::is_valid_id(&p.id))
                .take(MAX_KERNEL_PATCHES)
                .map(|p| AppliedKernelPatch {
                    id: p.id.clone(),
                    description: fit(&p.description),
                })
                .collect(),
        };
        let objects = self
            .targets()
            .into_iter()
            .filter(|t| !t.build_id.as_str().is_empty() && t.build_id.as_str().len() <= 128)
            .take(MAX_OBJECTS)
            .map(|t| ObjectInUse {
                path: fit(&t.path),
                build_id: t.build_id.as_str().to_string(),
                processes: t.pids.len().min(u32::MAX as usize) as u32,
            })
            .collect();
        let processes = self
            .applied(None)?
            .into_iter()
            .filter(|p| !p.patches.is_empty())
            .take(MAX_PROCESSES)
            .map(|p| ProcessPatches {
                pid: p.pid,
                comm: fit(&p.command),
                patches: p
                    .patches
                    .iter()
                    .map(|a| a.id.as_str().to_string())
                    .filter(|id| hotsplice_patch::is_valid_id(id))
                    .take(MAX_PER_PROCESS)
                    .collect(),
            })
            .collect();
        let last_run = match fp.read_last_run() {
            Ok(r) => r,
            Err(e) => {
                self.warn(format!(
                    "the last run's record is not sent: {}",
                    crate::error::chain(&e)
                ));
                None
            }
        };
        let r = Report {
            format: REPORT_FORMAT,
            uuid,
            hostname: hostname(),
            addresses: addresses(),
            client_version: env!("CARGO_PKG_VERSION").into(),
            autoinstall: self.config.settings.autoinstall,
            made_at: hotsplice_fleet::now(),
            kernel,
            objects,
            processes,
            last_run,
            mmap_min_addr: mmap_min_addr(),
        };
        // What the server would refuse is caught here, with the field named.
        r.check()
            .map_err(|e| AgentError::Request(format!("the check-in report is not valid: {e}")))?;
        Ok(r)
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn mmap_min_addr_is_read_and_bad_text_is_none() {
        let a = super::mmap_min_addr();
        let text = std::fs::read_to_string("/proc/sys/vm/mmap_min_addr").unwrap();
        assert_eq!(a, Some(text.trim().parse().unwrap()));
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("m");
        for bad in ["", "x", "-1", "99999999999999999999"] {
            std::fs::write(&p, bad).unwrap();
            assert_eq!(super::mmap_min_addr_from(&p), None, "{bad:?}");
        }
        std::fs::write(&p, "4096\n").unwrap();
        assert_eq!(super::mmap_min_addr_from(&p), Some(4096));
        assert_eq!(super::mmap_min_addr_from(&d.path().join("none")), None);
    }
}
