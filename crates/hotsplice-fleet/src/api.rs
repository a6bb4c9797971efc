//! hotsplice's own API (`/api/v2/`): paths, credentials and bodies that
//! both the server and the machine's client use. The full API, with the
//! administration calls, is in the OpenAPI document the server serves at
//! [`OPENAPI`]; Uptrack's four calls live under `/api/1/` unchanged.
//!
//! Credentials:
//! - people and scripts: the headers [`USER_HEADER`] and [`KEY_HEADER`]
//!   (Uptrack's `X-Uptrack-User` / `X-Uptrack-Key`), an API user and its
//!   key, with a role (`admin`, `operator`, `read-only`);
//! - machines: `Authorization: Bearer MACHINE_KEY`, the key the server
//!   handed out at registration, good only for that machine's own UUID.
//!
//! Errors are JSON [`ApiError`] with a 4xx or 5xx status.

use crate::feed::{PatchKind, SignedFeed};
use crate::report::Report;
use serde::{Deserialize, Serialize};

pub const USER_HEADER: &str = "X-Uptrack-User";
pub const KEY_HEADER: &str = "X-Uptrack-Key";

/// `POST` [`RegisterRequest`] → [`RegisterResponse`]. No credentials but
/// the access key in the body.
pub const REGISTER: &str = "/api/v2/register";
/// `GET`: the server's feed public key, as text (`hotsplice-ed25519-public
/// HEX`). No credentials.
pub const FEED_KEY: &str = "/api/v2/feed-key";
/// The OpenAPI document, JSON. No credentials.
pub const OPENAPI: &str = "/api/v2/openapi.json";

/// `POST` [`Report`] → [`CheckinResponse`], machine credentials.
pub fn checkin(uuid: &str) -> String {
    format!("/api/v2/machines/{uuid}/checkin")
}

/// `GET` → [`SignedFeed`], machine credentials (the same list as the last
/// check-in's answer, made afresh).
pub fn machine_feed(uuid: &str) -> String {
    format!("/api/v2/machines/{uuid}/feed")
}

/// `GET` → the patch file (`application/octet-stream`); machine
/// credentials (an allowed machine, and the patch in its feed) or an API
/// user.
pub fn patch_file(sha256: &str) -> String {
    format!("/api/v2/patches/{sha256}")
}

/// `POST` the patch file as the body (`application/octet-stream`),
/// query `?channel=NAME` (optional) → [`PatchRecord`]; role operator or
/// admin.
pub const PUBLISH: &str = "/api/v2/patches";

/// `GET` → [`SignedFeed`] for [`crate::feed::ANY_MACHINE`]: every patch
/// of the channel, for `hotsplice mirror`; any API user.
pub fn channel_feed(channel: &str) -> String {
    format!("/api/v2/channels/{channel}/feed")
}

/// `POST` [`Report`] → `204`: a report read from a file an air-gapped
/// machine wrote (`hotsplice sync --report-to`); role operator or admin.
pub const IMPORT_REPORT: &str = "/api/v2/reports";

/// A registration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct RegisterRequest {
    /// An access key the server's administrator handed out.
    pub access_key: String,
    pub hostname: String,
    /// The group to join (created if new); the access key's group if none.
    #[serde(default)]
    pub group: Option<String>,
    /// The UUID the machine already has (registering again, e.g. with a
    /// new access key, keeps its history); a new one is made if none.
    #[serde(default)]
    pub uuid: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct RegisterResponse {
    pub uuid: String,
    /// The machine's own secret for every later call. Shown once.
    pub machine_key: String,
    /// The feed public key, text form: the client pins it.
    pub feed_key: String,
    /// `allowed`, or `pending` when the server wants an administrator to
    /// authorize new machines.
    pub authorization: String,
    pub group: String,
}

/// The answer to a check-in.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct CheckinResponse {
    /// The machine's list, made for this report.
    pub feed: SignedFeed,
    /// Suggested seconds until the next check-in (the client adds jitter).
    pub next_checkin: u64,
}

/// A patch the server holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct PatchRecord {
    pub sha256: String,
    pub id: String,
    pub kind: PatchKind,
    pub target_name: String,
    pub build_id: String,
    pub level: u32,
    pub description: String,
    pub cves: Vec<String>,
    pub size: u64,
    /// Key ID of the publisher key that signed it.
    pub key_id: String,
    /// Seconds since the epoch.
    pub uploaded_at: u64,
    /// Channels that hold it.
    pub channels: Vec<String>,
}

/// An error body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ApiError {
    pub error: String,
}

/// A report is made for a check-in; re-exported for the client's use.
pub type CheckinRequest = Report;
