//! The check-in report: what a machine tells the server about itself.
//!
//! Built by the machine's client from `hotsplice-agent`'s views (the
//! kernel's `uname` and applied patches, `targets()`, `applied()`), sent
//! on every check-in or written to a file for an air-gapped machine
//! (`hotsplice sync --report-to FILE`). The server treats it as untrusted
//! input: [`Report::check`] bounds every count and string before anything
//! is stored.

use serde::{Deserialize, Serialize};

/// Format of [`Report`] written by this build.
pub const REPORT_FORMAT: u32 = 1;
/// Largest report body the server accepts, in bytes.
pub const MAX_REPORT_BYTES: usize = 4 << 20;
/// At most this many objects, processes, addresses or kernel patches.
pub const MAX_OBJECTS: usize = 20_000;
pub const MAX_PROCESSES: usize = 100_000;
pub const MAX_ADDRESSES: usize = 256;
pub const MAX_KERNEL_PATCHES: usize = 1_000;
/// At most this many patches listed per process, and failures per run.
pub const MAX_PER_PROCESS: usize = 1_000;
pub const MAX_FAILURES: usize = 10_000;
/// Longest string field (paths, errors are cut to this by the client).
pub const MAX_STRING: usize = 4096;

/// One check-in.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct Report {
    /// [`REPORT_FORMAT`].
    pub format: u32,
    /// The machine's UUID (kept in the state directory, `fleet/uuid`).
    pub uuid: String,
    pub hostname: String,
    /// The machine's addresses (IPv4 and IPv6, no loopback), first the one
    /// a person would name.
    pub addresses: Vec<String>,
    /// hotsplice version of the client, e.g. `0.1.0`.
    pub client_version: String,
    /// The machine's `autoinstall` setting.
    pub autoinstall: bool,
    /// When the report was made, seconds since the epoch (the machine's
    /// clock).
    pub made_at: u64,
    pub kernel: KernelState,
    /// Patchable objects mapped by processes.
    pub objects: Vec<ObjectInUse>,
    /// Processes with at least one hotsplice patch applied.
    pub processes: Vec<ProcessPatches>,
    /// What the last `sync` did, when it applied or removed anything or
    /// failed.
    #[serde(default)]
    pub last_run: Option<RunReport>,
    /// `/proc/sys/vm/mmap_min_addr` (Uptrack's `mmap_min_addr`); absent in
    /// reports of older clients and when the file cannot be read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mmap_min_addr: Option<u64>,
}

/// The kernel as the machine sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct KernelState {
    /// `uname -r` of the booted kernel.
    pub original_release: String,
    /// The release with hotsplice's updates counted in (`uptrack-uname -r`).
    pub effective_release: String,
    /// GNU build-id of the running kernel (hex), empty when unknown.
    pub build_id: String,
    /// Live patching is possible (the kernel has livepatch and it is not
    /// disabled).
    pub livepatch: bool,
    /// Kernel patches applied, by patch ID.
    pub applied: Vec<AppliedKernelPatch>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct AppliedKernelPatch {
    pub id: String,
    #[serde(default)]
    pub description: String,
}

/// A patchable object (executable or library) and how many processes map it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct ObjectInUse {
    pub path: String,
    /// GNU build-id, hex.
    pub build_id: String,
    pub processes: u32,
}

/// The hotsplice patches applied in one process.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct ProcessPatches {
    pub pid: i32,
    /// The command name (`/proc/PID/comm`).
    pub comm: String,
    /// Patch IDs.
    pub patches: Vec<String>,
}

/// The outcome of one `sync` run on the machine.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct RunReport {
    /// When it ran, seconds since the epoch.
    pub at: u64,
    /// Feed version it worked from.
    pub feed_version: u64,
    /// Patches newly applied, each with where (`kernel` or a PID).
    pub applied: Vec<RunItem>,
    /// Patches removed because the feed no longer lists them.
    #[serde(default)]
    pub removed: Vec<RunItem>,
    /// What failed, and why.
    pub failures: Vec<RunFailure>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct RunItem {
    pub patch: String,
    /// `kernel`, or `pid:N`.
    pub target: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct RunFailure {
    pub patch: String,
    /// `kernel`, `pid:N`, or `download`.
    pub target: String,
    /// The error, as the client rendered its chain.
    pub error: String,
}

/// Why a report was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("report field {field}: {why}")]
pub struct BadReport {
    pub field: String,
    pub why: String,
}

fn bad(field: impl Into<String>, why: impl Into<String>) -> BadReport {
    BadReport {
        field: field.into(),
        why: why.into(),
    }
}

fn short(field: &str, s: &str) -> Result<(), BadReport> {
    if s.len() > MAX_STRING {
        return Err(bad(field, format!("longer than {MAX_STRING} bytes")));
    }
    if s.chars().any(|c| c.is_control()) {
        return Err(bad(field, "contains control characters"));
    }
    Ok(())
}

fn at_most<T>(field: &str, v: &[T], max: usize) -> Result<(), BadReport> {
    if v.len() > max {
        return Err(bad(field, format!("{} entries, at most {max}", v.len())));
    }
    Ok(())
}

fn hex_id(field: &str, s: &str) -> Result<(), BadReport> {
    if s.len() > 128 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(bad(field, format!("{s:?} is not a hex build-id")));
    }
    Ok(())
}

fn patch_id(field: &str, s: &str) -> Result<(), BadReport> {
    if !hotsplice_patch::is_valid_id(s) {
        return Err(bad(field, format!("{s:?} is not a patch ID")));
    }
    Ok(())
}

impl Report {
    /// Every bound and format a server relies on. (Unknown fields were
    /// already refused when the JSON was read.)
    pub fn check(&self) -> Result<(), BadReport> {
        if self.format != REPORT_FORMAT {
            return Err(bad(
                "format",
                format!(
                    "{} is not a report format this server reads ({REPORT_FORMAT})",
                    self.format
                ),
            ));
        }
        if !crate::is_uuid(&self.uuid) {
            return Err(bad("uuid", format!("{:?} is not a UUID", self.uuid)));
        }
        short("hostname", &self.hostname)?;
        short("client_version", &self.client_version)?;
        at_most("addresses", &self.addresses, MAX_ADDRESSES)?;
        for a in &self.addresses {
            if a.parse::<std::net::IpAddr>().is_err() {
                return Err(bad("addresses", format!("{a:?} is not an IP address")));
            }
        }
        let k = &self.kernel;
        short("kernel.original_release", &k.original_release)?;
        short("kernel.effective_release", &k.effective_release)?;
        hex_id("kernel.build_id", &k.build_id)?;
        at_most("kernel.applied", &k.applied, MAX_KERNEL_PATCHES)?;
        for p in &k.applied {
            patch_id("kernel.applied.id", &p.id)?;
            short("kernel.applied.description", &p.description)?;
        }
        at_most("objects", &self.objects, MAX_OBJECTS)?;
        for o in &self.objects {
            short("objects.path", &o.path)?;
            hex_id("objects.build_id", &o.build_id)?;
        }
        if let Some(a) = self.mmap_min_addr {
            if a > i64::MAX as u64 {
                return Err(bad("mmap_min_addr", format!("{a} is not an address")));
            }
        }
        at_most("processes", &self.processes, MAX_PROCESSES)?;
        for p in &self.processes {
            short("processes.comm", &p.comm)?;
            at_most("processes.patches", &p.patches, MAX_PER_PROCESS)?;
            for id in &p.patches {
                patch_id("processes.patches", id)?;
            }
        }
        if let Some(r) = &self.last_run {
            at_most("last_run.applied", &r.applied, MAX_FAILURES)?;
            at_most("last_run.removed", &r.removed, MAX_FAILURES)?;
            at_most("last_run.failures", &r.failures, MAX_FAILURES)?;
            for i in r.applied.iter().chain(&r.removed) {
                short("last_run.patch", &i.patch)?;
                short("last_run.target", &i.target)?;
            }
            for f in &r.failures {
                short("last_run.failures.patch", &f.patch)?;
                short("last_run.failures.target", &f.target)?;
                if f.error.len() > MAX_STRING {
                    return Err(bad("last_run.failures.error", "too long"));
                }
            }
        }
        Ok(())
    }

    /// Every patch ID applied somewhere on the machine (kernel and
    /// processes), each once, sorted.
    pub fn applied_ids(&self) -> Vec<String> {
        let mut ids: Vec<String> = self
            .kernel
            .applied
            .iter()
            .map(|p| p.id.clone())
            .chain(
                self.processes
                    .iter()
                    .flat_map(|p| p.patches.iter().cloned()),
            )
            .collect();
        ids.sort();
        ids.dedup();
        ids
    }

    /// A small valid report, for examples and tests.
    pub fn example(uuid: &str) -> Report {
        Report {
            format: REPORT_FORMAT,
            uuid: uuid.into(),
            hostname: "host1.example.com".into(),
            addresses: vec!["192.0.2.10".into()],
            client_version: env!("CARGO_PKG_VERSION").into(),
            autoinstall: true,
            made_at: crate::now(),
            kernel: KernelState {
                original_release: "6.1.0-28-amd64".into(),
                effective_release: "6.1.0-28-amd64".into(),
                build_id: "ab".repeat(20),
                livepatch: true,
                applied: vec![],
            },
            objects: vec![ObjectInUse {
                path: "/usr/lib/x86_64-linux-gnu/libc.so.6".into(),
                build_id: "cd".repeat(20),
                processes: 3,
            }],
            processes: vec![],
            last_run: None,
            mmap_min_addr: Some(65536),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn example_passes_and_bounds_hold() {
        let u = "00086980-47cb-4486-81c0-4fe3299bad90";
        let r = Report::example(u);
        r.check().unwrap();
        let mut b = r.clone();
        b.uuid = "x".into();
        assert_eq!(b.check().unwrap_err().field, "uuid");
        let mut b = r.clone();
        b.addresses = vec!["not-an-ip".into()];
        assert_eq!(b.check().unwrap_err().field, "addresses");
        let mut b = r.clone();
        b.objects[0].build_id = "zz".into();
        assert_eq!(b.check().unwrap_err().field, "objects.build_id");
        let mut b = r.clone();
        b.hostname = "a\nb".into();
        assert_eq!(b.check().unwrap_err().field, "hostname");
        let text = serde_json::to_string(&r).unwrap();
        let with_extra = text.replacen('{', "{\"extra\":1,", 1);
        assert!(serde_json::from_str::<Report>(&with_extra).is_err());
        let mut b = r.clone();
        b.mmap_min_addr = Some(u64::MAX);
        assert_eq!(b.check().unwrap_err().field, "mmap_min_addr");
    }

    #[test]
    fn a_report_without_mmap_min_addr_stays_valid() {
        let mut r = Report::example("00086980-47cb-4486-81c0-4fe3299bad90");
        let text = serde_json::to_string(&r).unwrap();
        assert!(text.contains("\"mmap_min_addr\":65536"), "{text}");
        r.mmap_min_addr = None;
        let old = serde_json::to_string(&r).unwrap();
        assert!(!old.contains("mmap_min_addr"), "{old}");
        let back: Report = serde_json::from_str(&old).unwrap();
        back.check().unwrap();
        assert_eq!(back.mmap_min_addr, None);
    }
}
