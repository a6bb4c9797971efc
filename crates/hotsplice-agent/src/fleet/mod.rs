//! The machine's client of a `hotsplice-server` (the protocol is
//! `hotsplice-fleet`; see `docs/fleet.md`): registration, the check-in
//! report, the sync (the signed feed opened with the pinned key, checked
//! against rollback, freeze and another machine's list; each patch
//! checked against the list's hash and size and the machine's trusted
//! publisher keys), publishing and mirroring a channel.
//!
//! State, under `STATE/fleet/` (each written with `write_atomic`, each
//! read back as untrusted input with a bound):
//! - `uuid`: the machine's UUID (as Uptrack keeps `/var/lib/uptrack/uuid`);
//! - `server.json`: the server URLs, the pinned feed public key, the group;
//! - `machine.key` (0600): the machine's secret for the server;
//! - `feed-state.json`: version and expiry of the last accepted list;
//! - `feed.json`: that list as signed (kept for the record);
//! - `patches/SHA256.hsp`: patch files downloaded and verified;
//! - `last-run.json`: what the last sync did, sent with the next report.

mod http;
mod report;
mod state;
mod sync;

pub use http::{check_url, parse_servers, Auth};
pub use report::hostname;
pub use state::{FleetPaths, FromFleet, ServerFile};
pub use sync::{FeedSummary, PatchState, SyncOptions, SyncPatch, SyncResult};

use crate::error::Result;
use crate::machine::Agent;
use hotsplice_fleet::api::{self, PatchRecord, RegisterRequest, RegisterResponse};
use hotsplice_fleet::feed::{FeedError, SignedFeed, ANY_MACHINE};
use hotsplice_trust::PublicKey;
use serde::Serialize;
use std::path::{Path, PathBuf};

/// What can go wrong talking to a server.
#[derive(Debug, thiserror::Error)]
pub enum FleetError {
    /// The configuration or the arguments.
    #[error("{0}")]
    Config(String),
    #[error("{server}: {request}: the server answered {status}: {message}")]
    Status {
        server: String,
        request: String,
        status: u16,
        message: String,
    },
    #[error("{server}: {why}")]
    Transport { server: String, why: String },
    #[error("{server}: {why}; if the server's certificate comes from a private CA, give its certificate as `ca = \"FILE.pem\"` under [fleet] in the configuration")]
    Tls { server: String, why: String },
    #[error("{server}: the answer is larger than {limit} bytes, refused")]
    TooLarge { server: String, limit: u64 },
    #[error("{server}: {what}: not the answer expected: {why}")]
    BadAnswer {
        server: String,
        what: String,
        why: String,
    },
    #[error("no server answered ({servers}) after {attempts} attempt(s); the last error: {last}; nothing was changed")]
    Unreachable {
        servers: String,
        attempts: u32,
        last: String,
    },
    #[error("this machine is not registered with a hotsplice server: run `hotsplice register --server URL --key ACCESS_KEY` first (or `hotsplice sync --report-to FILE` for a machine without network)")]
    NotRegistered,
    /// The feed or a patch file was refused (rollback, freeze, mix and
    /// match, another machine's list, a bad signature).
    #[error("the server's list was refused, nothing was applied")]
    Feed(#[source] FeedError),
    /// A patch file that is not the one the list names, or not signed
    /// by a publisher this machine trusts.
    #[error("a patch file from the server was refused (it is not used)")]
    Patch(#[source] FeedError),
    /// A validly signed patch that is not the one the list describes.
    #[error("{0}")]
    NotListed(String),
}

impl FleetError {
    /// Worth another try, perhaps at another instance.
    fn is_retryable(&self) -> bool {
        match self {
            FleetError::Transport { .. } => true,
            FleetError::Status { status, .. } => *status >= 500 || *status == 429,
            _ => false,
        }
    }

    /// The HTTP status, when a server answered with an error.
    pub fn status(&self) -> Option<u16> {
        match self {
            FleetError::Status { status, .. } => Some(*status),
            _ => None,
        }
    }
}

/// The outcome of `hotsplice register`.
#[derive(Debug, Clone, Serialize)]
pub struct Registration {
    pub uuid: String,
    pub servers: Vec<String>,
    pub group: String,
    /// `allowed`, or `pending` until an administrator authorizes it.
    pub authorization: String,
    pub feed_key_id: String,
    /// `file` (checked against `--feed-key`), or `first-use` (the key the
    /// server sent, over its TLS connection, pinned from now on).
    pub feed_key_from: &'static str,
    /// An earlier feed key was replaced: the feed state was reset.
    pub feed_key_changed: bool,
}

/// A mirrored channel.
#[derive(Debug, Clone, Serialize)]
pub struct MirrorResult {
    pub dir: PathBuf,
    pub channel: String,
    pub feed_version: u64,
    pub feed_key_id: String,
    /// `(patch id, file)`.
    pub patches: Vec<(String, PathBuf)>,
    /// Files already there with the right hash.
    pub kept: usize,
}

/// `user:key` of an API token.
fn split_token(token: &str) -> std::result::Result<Auth, FleetError> {
    match token.split_once(':') {
        Some((u, k)) if !u.is_empty() && !k.is_empty() => Ok(Auth::User(u.into(), k.into())),
        _ => Err(FleetError::Config(
            "the token must be USER:KEY (an API user and its key, as `hotsplice-server init` printed them)".into(),
        )),
    }
}

impl Agent {
    /// Where the fleet client keeps its state.
    pub fn fleet_paths(&self) -> FleetPaths {
        FleetPaths::new(&self.paths)
    }

    /// A client for `servers`, with the configuration's TLS, timeouts and
    /// retries.
    fn fleet_client(&self, servers: Vec<String>) -> Result<http::Client> {
        Ok(http::Client::new(
            servers,
            &self.config.fleet,
            self.events.clone(),
            self.stop_requested_fn(),
        )?)
    }

    /// Server URLs: the configuration's `[fleet] servers` if set, else
    /// those of the registration.
    fn fleet_servers(&self, reg: &ServerFile) -> Result<Vec<String>> {
        let allow = self.config.fleet.allow_http;
        let list: Vec<String> = if self.config.fleet.servers.is_empty() {
            reg.servers.clone()
        } else {
            self.config.fleet.servers.clone()
        };
        // Each entry may itself be a comma list.
        Ok(parse_servers(&list.join(","), allow)?)
    }

    /// Register with a server (`servers`: one URL or a comma list, the
    /// instances of one fleet) using an access key, joining `group`. The
    /// feed key the server sends is pinned: it must be the one in
    /// `feed_key` when given; otherwise it is trusted on first use (over
    /// TLS, checked against the CA roots). The UUID is kept if the
    /// machine has one (a report written before, or an earlier
    /// registration).
    pub fn register(
        &self,
        servers: &str,
        access_key: &str,
        group: Option<&str>,
        feed_key: Option<&Path>,
    ) -> Result<Registration> {
        let fp = self.fleet_paths();
        let servers = parse_servers(servers, self.config.fleet.allow_http)?;
        let expected = feed_key
            .map(|p| {
                let bytes = hotsplice_store::read_regular(
                    p,
                    "feed key file",
                    64 << 10,
                    hotsplice_store::Links::Follow,
                )?;
                let text = String::from_utf8_lossy(&bytes).into_owned();
                Ok::<_, crate::AgentError>(PublicKey::from_text(&text, &p.display().to_string())?)
            })
            .transpose()?;
        let uuid = fp.read_uuid()?;
        let req = RegisterRequest {
            access_key: access_key.trim().into(),
            hostname: report::hostname(),
            group: group.map(str::to_string),
            uuid,
        };
        let client = self.fleet_client(servers)?;
        let a = client.call(
            "POST",
            api::REGISTER,
            &Auth::None,
            http::Body::Json(serde_json::to_string(&req).expect("a request serializes")),
            64 << 10,
        )?;
        let resp: RegisterResponse = a.json("registration")?;
        if !hotsplice_fleet::is_uuid(&resp.uuid) {
            return Err(FleetError::BadAnswer {
                server: a.server,
                what: "registration".into(),
                why: format!("{:?} is not a UUID", resp.uuid),
            }
            .into());
        }
        let key = PublicKey::from_text(&resp.feed_key, &format!("the feed key of {}", a.server))?;
        if let Some(want) = &expected {
            if want.id() != key.id() {
                return Err(FleetError::Config(format!(
                    "{}: the server's feed key is {}, not {} of the --feed-key file: refusing to register \
                     (the wrong server, or someone in the middle)",
                    a.server,
                    key.id(),
                    want.id()
                ))
                .into());
            }
        }
        let old = fp.read_server().ok().flatten();
        let changed = old.as_ref().is_some_and(|o| o.feed_key != key.to_text());
        if changed || old.as_ref().is_some_and(|o| o.uuid != resp.uuid) {
            // A new server (or a new identity): its versions start anew.
            fp.forget_feed()?;
        }
        let reg = ServerFile {
            servers: client.servers().to_vec(),
            feed_key: key.to_text(),
            group: resp.group.clone(),
            uuid: resp.uuid.clone(),
            registered_at: hotsplice_fleet::now(),
        };
        fp.write_uuid(&resp.uuid)?;
        fp.write_machine_key(&resp.machine_key)?;
        fp.write_server(&reg)?;
        Ok(Registration {
            uuid: resp.uuid,
            servers: reg.servers,
            group: resp.group,
            authorization: resp.authorization,
            feed_key_id: key.id(),
            feed_key_from: if expected.is_some() {
                "file"
            } else {
                "first-use"
            },
            feed_key_changed: changed,
        })
    }

    /// Upload signed patch files to a server (`token`: `USER:KEY` of an
    /// operator or admin), into `channel` if given.
    pub fn publish(
        &self,
        server: &str,
        token: &str,
        channel: Option<&str>,
        files: &[PathBuf],
    ) -> Result<Vec<PatchRecord>> {
        let servers = parse_servers(server, self.config.fleet.allow_http)?;
        let auth = split_token(token)?;
        let client = self.fleet_client(servers)?;
        let path = match channel {
            Some(c) => format!("{}?channel={}", api::PUBLISH, query_escape(c)),
            None => api::PUBLISH.to_string(),
        };
        let mut out = Vec::new();
        for f in files {
            let bytes = self.read_patch_file(f)?;
            let a = client
                .call("POST", &path, &auth, http::Body::Bytes(&bytes), 1 << 20)
                .map_err(|e| crate::AgentError::About {
                    what: format!("publishing {}", f.display()),
                    source: Box::new(e.into()),
                })?;
            out.push(a.json::<PatchRecord>("the published patch's record")?);
        }
        Ok(out)
    }

    /// Copy a channel (its signed list and every patch file) into `dir`,
    /// so that `dir` works as a machine's `feed` directory and can be
    /// imported by another server. The list's signature is checked with
    /// the pinned key of this machine's registration, or else with the
    /// key the server publishes (`/api/v2/feed-key`, trusted on first use).
    pub fn mirror(
        &self,
        server: &str,
        token: &str,
        channel: &str,
        dir: &Path,
    ) -> Result<MirrorResult> {
        let servers = parse_servers(server, self.config.fleet.allow_http)?;
        let auth = split_token(token)?;
        let client = self.fleet_client(servers)?;
        let fp = self.fleet_paths();
        let key = match fp.read_server()? {
            Some(reg) => reg.public_key()?,
            None => {
                let a = client.call("GET", api::FEED_KEY, &Auth::None, http::Body::Empty, 4096)?;
                let text = String::from_utf8_lossy(&a.bytes).into_owned();
                PublicKey::from_text(text.trim(), &format!("the feed key of {}", a.server))?
            }
        };
        let a = client.call(
            "GET",
            &api::channel_feed(&query_escape(channel)),
            &auth,
            http::Body::Empty,
            hotsplice_fleet::feed::MAX_FEED_BYTES as u64 + 4096,
        )?;
        let signed: SignedFeed = a.json("the channel's feed")?;
        let list = signed.open(&key).map_err(FleetError::Feed)?;
        if list.machine != ANY_MACHINE {
            return Err(FleetError::Feed(FeedError::OtherMachine {
                want: ANY_MACHINE.into(),
                got: list.machine,
            })
            .into());
        }
        hotsplice_store::create_private_dir_all(dir)?;
        let mut patches = Vec::new();
        let mut kept = 0;
        for e in &list.patches {
            let file = dir.join(format!("{}.hsp", e.sha256.to_ascii_lowercase()));
            if let Ok(b) = hotsplice_store::read_regular(
                &file,
                "patch file",
                e.size,
                hotsplice_store::Links::Refuse,
            ) {
                if hotsplice_fleet::feed::check_blob(e, &b).is_ok() {
                    kept += 1;
                    patches.push((e.id.clone(), file));
                    continue;
                }
            }
            let a = client.call(
                "GET",
                &api::patch_file(&e.sha256),
                &auth,
                http::Body::Empty,
                e.size,
            )?;
            hotsplice_fleet::feed::check_blob(e, &a.bytes).map_err(FleetError::Patch)?;
            hotsplice_store::write_atomic_mode(&file, &a.bytes, hotsplice_store::PUBLIC_FILE_MODE)?;
            patches.push((e.id.clone(), file));
        }
        hotsplice_store::write_atomic_mode(
            &dir.join("feed.json"),
            serde_json::to_string_pretty(&signed)
                .expect("a feed serializes")
                .as_bytes(),
            hotsplice_store::PUBLIC_FILE_MODE,
        )?;
        hotsplice_store::write_atomic_mode(
            &dir.join("feed-key.pub"),
            format!("{}\n", key.to_text()).as_bytes(),
            hotsplice_store::PUBLIC_FILE_MODE,
        )?;
        Ok(MirrorResult {
            dir: dir.to_path_buf(),
            channel: list.channel,
            feed_version: list.version,
            feed_key_id: key.id(),
            patches,
            kept,
        })
    }
}

/// A path or query component: letters, digits and `-._~` as they are,
/// every other byte percent-encoded.
fn query_escape(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_and_escapes() {
        assert!(
            matches!(split_token("admin:abc"), Ok(Auth::User(u, k)) if u == "admin" && k == "abc")
        );
        assert!(split_token("adminabc").is_err());
        assert!(split_token(":abc").is_err());
        assert_eq!(query_escape("testing"), "testing");
        assert_eq!(query_escape("a b/&"), "a%20b%2F%26");
    }
}
