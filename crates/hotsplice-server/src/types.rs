//! Bodies of the administration API (`/api/v2/`) and of Uptrack's API
//! (`/api/1/`) that are the server's alone (what machines send and get is
//! in `hotsplice_fleet::api`).

use hotsplice_fleet::report::Report;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// A role of an API user.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    /// GET calls only.
    ReadOnly,
    /// Also publish, promote, authorize, groups, import reports.
    Operator,
    /// Also tokens, publisher keys, access keys.
    Admin,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::ReadOnly => "read-only",
            Role::Operator => "operator",
            Role::Admin => "admin",
        }
    }
    pub fn parse(s: &str) -> Option<Role> {
        match s {
            "read-only" | "readonly" => Some(Role::ReadOnly),
            "operator" => Some(Role::Operator),
            "admin" => Some(Role::Admin),
            _ => None,
        }
    }
}

/// One machine in Uptrack's `GET /api/1/machines`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct UptrackMachine {
    /// `outofdate`, `uptodate` or `unsupported`.
    pub status: String,
    pub autoinstall: bool,
    pub uuid: String,
    /// `/proc/sys/vm/mmap_min_addr` from the machine's last report; `null`
    /// before its first check-in and for clients that do not send it.
    pub mmap_min_addr: Option<u64>,
    pub ip: String,
    pub hostname: String,
    pub uptrack_client_version: String,
    /// Seen within the last day.
    pub active: bool,
    /// `allowed`, `denied` or `pending`.
    pub authorization: String,
    /// `2025-05-12T11:19:21Z`.
    pub last_seen: String,
}

/// `{"ID": …, "Name": …}` of Uptrack's describe.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct UptrackUpdate {
    #[serde(rename = "ID")]
    pub id: String,
    #[serde(rename = "Name")]
    pub name: String,
}

/// Uptrack's `GET /api/1/machine/UUID/describe`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct UptrackDescribe {
    #[serde(flatten)]
    pub machine: UptrackMachine,
    pub original_kernel: String,
    pub effective_kernel: String,
    /// The machine's group, `null` when ungrouped.
    pub group: Option<String>,
    pub installed_updates: Vec<UptrackUpdate>,
    /// What upgrading would do: `["Install", {"ID", "Name"}]` pairs.
    #[schema(value_type = Vec<Object>)]
    pub steps: Vec<(String, UptrackUpdate)>,
}

/// Uptrack's authorize body.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UptrackAuthorize {
    pub authorized: bool,
}

/// Uptrack's group body.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UptrackGroup {
    pub group_name: String,
}

/// A machine in hotsplice's list.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct MachineSummary {
    pub uuid: String,
    pub hostname: String,
    pub ip: String,
    pub status: String,
    pub authorization: String,
    /// Empty when ungrouped.
    pub group: String,
    pub original_kernel: String,
    pub effective_kernel: String,
    pub kernel_build_id: String,
    pub client_version: String,
    pub autoinstall: bool,
    /// Seconds since the epoch; 0 when it never checked in.
    pub last_seen: u64,
    pub registered_at: u64,
    /// Feed version of the last list it was sent.
    pub feed_version: u64,
    /// Patch IDs applied (kernel and processes).
    pub applied: Vec<String>,
    /// CVEs fixed by what it applied, of the patches its channel has for it.
    pub fixed_cves: Vec<String>,
    /// CVEs its channel has fixes for that it did not apply.
    pub missing_cves: Vec<String>,
    /// `vm.mmap_min_addr` from its last report; `null` when not reported.
    pub mmap_min_addr: Option<u64>,
}

/// A machine with its last report (userspace objects, processes and
/// their patches).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct MachineDetail {
    #[serde(flatten)]
    pub machine: MachineSummary,
    /// The channel its group takes patches from.
    pub channel: String,
    pub report: Option<Report>,
}

/// One event of a machine's history.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct HistoryEvent {
    pub id: i64,
    /// Seconds since the epoch.
    pub at: u64,
    /// `registered`, `applied`, `removed`, `failed`, `authorization`,
    /// `group`, `imported`.
    pub event: String,
    pub patch: String,
    pub target: String,
    pub detail: String,
    /// Who caused it: `machine` (its own check-in or registration) or the
    /// API user's name.
    pub actor: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AuthorizeRequest {
    /// `allowed`, `denied` or `pending`.
    pub authorization: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct GroupRequest {
    /// The group (created if new); empty ungroups.
    pub group: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct GroupInfo {
    pub name: String,
    pub channel: String,
    pub machines: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct GroupUpdate {
    pub channel: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ChannelInfo {
    pub name: String,
    pub patches: u64,
    /// Groups bound to it.
    pub groups: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PromoteRequest {
    pub sha256: String,
}

/// The answer to a change of a channel.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ChannelChange {
    pub channel: String,
    pub sha256: String,
    /// False when nothing changed (already there, or already gone).
    pub changed: bool,
    pub feed_version: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct PublisherKey {
    pub key_id: String,
    /// `hotsplice-ed25519-public HEX`.
    pub public_key: String,
    pub comment: String,
    pub added_at: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AddPublisherKey {
    /// The text of a `.pub` file.
    pub public_key: String,
    #[serde(default)]
    pub comment: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TokenRequest {
    /// The API user name (`X-Uptrack-User`); made up when absent.
    #[serde(default)]
    pub name: Option<String>,
    pub role: Role,
}

/// A new API user and its key, shown once.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct NewToken {
    pub name: String,
    /// `X-Uptrack-Key`.
    pub key: String,
    pub role: Role,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct TokenInfo {
    pub name: String,
    pub role: Role,
    pub created_at: u64,
    pub revoked: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AccessKeyRequest {
    /// The group machines registering with it join ("default" if absent).
    #[serde(default)]
    pub group: Option<String>,
    /// Machines registering with it wait for an operator's authorization.
    #[serde(default)]
    pub pending: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct NewAccessKey {
    pub id: String,
    /// Shown once.
    pub key: String,
    pub group: String,
    pub pending: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct AccessKeyInfo {
    pub id: String,
    pub group: String,
    pub pending: bool,
    pub created_at: u64,
    pub revoked: bool,
}

/// Filters of `GET /api/v2/machines`.
#[derive(Debug, Clone, Default, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct MachineFilter {
    /// `uptodate`, `outofdate` or `unsupported`.
    pub status: Option<String>,
    /// Group name (empty: ungrouped machines).
    pub group: Option<String>,
    /// `allowed`, `denied` or `pending`.
    pub authorization: Option<String>,
    /// Original or effective kernel release, exactly.
    pub kernel: Option<String>,
    /// Machines that applied a fix for this CVE.
    pub cve_fixed: Option<String>,
    /// Machines whose channel has a fix for this CVE they did not apply.
    pub cve_missing: Option<String>,
    /// Machines seen within this many seconds.
    pub seen_within: Option<u64>,
}

/// `?channel=` of a publish.
#[derive(Debug, Clone, Default, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct PublishQuery {
    /// A channel to add the patch to.
    pub channel: Option<String>,
}

/// A patch file's bytes (`application/octet-stream`).
#[derive(Debug, Clone, ToSchema)]
#[schema(value_type = String, format = Binary)]
pub struct PatchFileBytes(pub Vec<u8>);
