//! What the server knows and does: machines, their reports and feeds,
//! patches and channels, groups, credentials. Handlers (`http`) and the
//! administration commands (`main`) both call these; nothing here speaks
//! HTTP, except that errors carry the status they answer with.

use crate::db::{self, bump_feed, history, i, oi, os, s, Db, Tx};
use crate::error::{Error, Result};
use crate::types::*;
use hotsplice_fleet::api::{PatchRecord, RegisterRequest, RegisterResponse};
use hotsplice_fleet::feed::{FeedEntry, FeedList, PatchKind, SignedFeed, ANY_MACHINE, FEED_FORMAT};
use hotsplice_fleet::report::Report;
use hotsplice_fleet::{now, secret_hash};
use hotsplice_trust::{PublicKey, SecretKey};
use sqlx::any::AnyRow;
use sqlx::Row;
use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};

/// The channel of machines in no group (and of the `default` group).
pub const DEFAULT_CHANNEL: &str = "stable";
pub const DEFAULT_GROUP: &str = "default";

/// Seconds a machine counts as `active` after its last check-in.
pub const ACTIVE_SECS: u64 = 86_400;

/// Settings of a running server.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Seconds a signed list stays valid.
    pub feed_validity: u64,
    /// Suggested seconds between check-ins.
    pub checkin_interval: u64,
    /// Mark the dashboard's session cookie `Secure` (the server runs TLS).
    pub secure_cookies: bool,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            feed_validity: 7 * 86_400,
            checkin_interval: 3600,
            secure_cookies: false,
        }
    }
}

/// The patches of every channel and the channel of every group, as of one
/// feed version: what check-ins compute lists from without asking the
/// database again until the version moves.
#[derive(Debug, Default)]
pub struct Snapshot {
    pub version: i64,
    pub groups: HashMap<String, String>,
    pub channels: HashMap<String, Channel>,
    /// Patches rollouts and out-of-band grants add (issue 11).
    pub extra: crate::rollout::Extra,
}

#[derive(Debug, Default)]
pub struct Channel {
    pub patches: Vec<FeedEntry>,
    /// build-id → indexes into `patches`.
    pub by_build_id: HashMap<String, Vec<usize>>,
}

impl Snapshot {
    pub fn channel_of(&self, group: &str) -> &str {
        self.groups
            .get(group)
            .map(String::as_str)
            .unwrap_or(DEFAULT_CHANNEL)
    }
}

/// The server: the store, the feed key, settings and caches.
pub struct Fleet {
    pub db: Db,
    pub feed_key: SecretKey,
    pub feed_public: PublicKey,
    pub settings: Settings,
    snapshot: Mutex<Option<Arc<Snapshot>>>,
    /// Started on the first check-in (inside the runtime).
    writer: tokio::sync::OnceCell<crate::checkin_writer::Writer>,
    /// SQLite: the check-in path's own connection and thread, opened on
    /// first use (retried on the next check-in if that fails).
    hot: std::sync::OnceLock<crate::checkin_store::CheckinStore>,
}

/// The machine's row, its health row and the feed version in one
/// statement (both query layers run this text).
pub const MACHINE_ROW_SQL: &str = "SELECT m.uuid, m.key_hash, m.authz, m.group_name, m.applied, m.last_run_at, (SELECT value FROM counters WHERE name = 'feed') AS fv, h.failing AS h_failing, h.error AS h_error, h.out_of_date_since AS h_since FROM machines m LEFT JOIN machine_health h ON h.uuid = m.uuid WHERE m.uuid = $1";

fn hot_failed(log: &str) -> Error {
    tracing::error!("check-in store: {log}");
    Error::new(
        axum::http::StatusCode::SERVICE_UNAVAILABLE,
        "the server's database failed; see the server's log, retry later",
    )
}

/// A machine's row, as the feed and the check-in need it.
pub struct MachineRow {
    pub uuid: String,
    pub key_hash: Option<String>,
    pub authorization: String,
    pub group: String,
    pub applied: Vec<String>,
    pub last_run_at: i64,
    /// The feed version when the row was read (read with it, in the same
    /// statement, to save a round trip).
    pub feed_version: i64,
    /// Its health row (issue 11), read in the same statement.
    pub health: Option<crate::rollout::Health>,
}

/// What fits a machine: its list, and what it applied or lacks.
pub struct Fit {
    pub channel: String,
    pub patches: Vec<FeedEntry>,
    pub status: &'static str,
    pub fixed_cves: Vec<String>,
    pub missing_cves: Vec<String>,
    /// Highest level per target not applied: what upgrading would install.
    pub missing: Vec<FeedEntry>,
}

fn cve_column(v: &[String]) -> String {
    if v.is_empty() {
        String::new()
    } else {
        format!(",{},", v.join(","))
    }
}

fn cve_list(col: &str) -> Vec<String> {
    col.split(',')
        .filter(|s| !s.is_empty())
        .map(String::from)
        .collect()
}

pub fn kind_str(k: PatchKind) -> &'static str {
    match k {
        PatchKind::Kernel => "kernel",
        PatchKind::User => "user",
    }
}

/// A name people give (group, channel, API user): 1-128 characters,
/// letters, digits and `._-@+`, as a path segment is safe.
pub fn check_name(what: &str, name: &str) -> Result<()> {
    if name.is_empty()
        || name.len() > 128
        || !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-@+".contains(&b))
    {
        return Err(Error::bad(format!(
            "{what} {name:?}: use 1 to 128 letters, digits and ._-@+"
        )));
    }
    Ok(())
}

/// A group name: as Uptrack's, free text (spaces allowed), 1-128 bytes,
/// no control characters, no space at either end.
pub fn check_group(name: &str) -> Result<()> {
    if name.is_empty()
        || name.len() > 128
        || name.chars().any(char::is_control)
        || name.trim() != name
    {
        return Err(Error::bad(format!(
            "group {name:?}: use 1 to 128 bytes of text without control characters or spaces at the ends"
        )));
    }
    Ok(())
}

pub fn check_uuid(uuid: &str) -> Result<()> {
    if !hotsplice_fleet::is_uuid(uuid) {
        return Err(Error::not_found(format!(
            "no machine with UUID {uuid:?} (not a UUID)"
        )));
    }
    Ok(())
}

pub fn check_sha(sha: &str) -> Result<()> {
    if sha.len() != 64
        || !sha
            .bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
    {
        return Err(Error::bad(format!(
            "{sha:?} is not a SHA-256 (64 lowercase hex digits)"
        )));
    }
    Ok(())
}

fn check_authorization(a: &str) -> Result<()> {
    match a {
        "allowed" | "denied" | "pending" => Ok(()),
        _ => Err(Error::bad(format!(
            "authorization {a:?}: use allowed, denied or pending"
        ))),
    }
}

/// A feed entry from a row of `patches` (the columns of `PATCH_COLS`).
pub(crate) fn entry_of(row: &AnyRow) -> db::DbResult<FeedEntry> {
    Ok(FeedEntry {
        sha256: s(row, "sha256")?,
        size: i(row, "size")? as u64,
        id: s(row, "id")?,
        kind: if s(row, "kind")? == "kernel" {
            PatchKind::Kernel
        } else {
            PatchKind::User
        },
        target_name: s(row, "target_name")?,
        build_id: s(row, "build_id")?,
        level: i(row, "level")? as u32,
        description: s(row, "description")?,
        cves: serde_json::from_str(&s(row, "cves")?).unwrap_or_default(),
    })
}

const PATCH_COLS: &str =
    "p.sha256, p.id, p.kind, p.target_name, p.build_id, p.level, p.description, p.cves, p.size, p.key_id, p.uploaded_at";

const MACHINE_COLS: &str = "uuid, hostname, ip, status, authz, group_name, original_kernel, effective_kernel, kernel_build_id, client_version, autoinstall, last_seen, registered_at, feed_version, applied, fixed_cves, missing_cves, mmap_min_addr";

fn summary_of(row: &AnyRow) -> db::DbResult<MachineSummary> {
    Ok(MachineSummary {
        uuid: s(row, "uuid")?,
        hostname: s(row, "hostname")?,
        ip: s(row, "ip")?,
        status: s(row, "status")?,
        authorization: s(row, "authz")?,
        group: s(row, "group_name")?,
        original_kernel: s(row, "original_kernel")?,
        effective_kernel: s(row, "effective_kernel")?,
        kernel_build_id: s(row, "kernel_build_id")?,
        client_version: s(row, "client_version")?,
        autoinstall: i(row, "autoinstall")? != 0,
        last_seen: i(row, "last_seen")? as u64,
        registered_at: i(row, "registered_at")? as u64,
        feed_version: i(row, "feed_version")? as u64,
        applied: serde_json::from_str(&s(row, "applied")?).unwrap_or_default(),
        fixed_cves: cve_list(&s(row, "fixed_cves")?),
        missing_cves: cve_list(&s(row, "missing_cves")?),
        mmap_min_addr: oi(row, "mmap_min_addr")?.map(|a| a as u64),
    })
}

/// `2025-05-12T11:19:21Z` for seconds since the epoch.
pub fn rfc3339(secs: u64) -> String {
    hotsplice_fleet::vex::rfc3339(secs)
}

impl Fleet {
    pub fn new(db: Db, feed_key: SecretKey, settings: Settings) -> Fleet {
        let feed_public = feed_key.public();
        Fleet {
            db,
            feed_key,
            feed_public,
            settings,
            snapshot: Mutex::new(None),
            writer: tokio::sync::OnceCell::new(),
            hot: std::sync::OnceLock::new(),
        }
    }

    /// The check-in path's SQLite connection; `None` on PostgreSQL.
    pub(crate) fn hot(&self) -> Result<Option<&crate::checkin_store::CheckinStore>> {
        let Some(path) = &self.db.sqlite_path else {
            return Ok(None);
        };
        if let Some(h) = self.hot.get() {
            return Ok(Some(h));
        }
        // A failure to open is not kept: the next check-in tries again
        // (a full disk or a lock held at start must not mean 503 for the
        // life of the process). Two first check-ins may both open; the
        // loser's store is dropped, which ends its thread.
        let opened = crate::checkin_store::CheckinStore::open(path).map_err(|e| hot_failed(&e))?;
        let _ = self.hot.set(opened);
        Ok(self.hot.get())
    }

    /// The snapshot for the current feed version (loaded when it moved).
    pub async fn snapshot(&self) -> Result<Arc<Snapshot>> {
        let version = self.db.feed_version().await?;
        self.snapshot_at(version).await
    }

    /// The snapshot for feed version `version` (just read), or a newer one.
    pub async fn snapshot_at(&self, version: i64) -> Result<Arc<Snapshot>> {
        if let Some(s) = self.snapshot.lock().expect("snapshot lock").as_ref() {
            if s.version == version {
                return Ok(s.clone());
            }
        }
        let snap = Arc::new(self.load_snapshot(version).await?);
        let mut g = self.snapshot.lock().expect("snapshot lock");
        if g.as_ref().is_none_or(|s| s.version <= snap.version) {
            *g = Some(snap.clone());
        }
        Ok(snap)
    }

    async fn load_snapshot(&self, version: i64) -> Result<Snapshot> {
        let mut snap = Snapshot {
            version,
            ..Default::default()
        };
        for row in sqlx::query("SELECT name, channel FROM groups")
            .fetch_all(&self.db.read)
            .await
            .map_err(db::DbError::from)?
        {
            snap.groups.insert(s(&row, "name")?, s(&row, "channel")?);
        }
        let q = format!(
            "SELECT c.channel, {PATCH_COLS} FROM channel_patches c JOIN patches p ON p.sha256 = c.sha256 ORDER BY c.channel, p.build_id, p.level, p.sha256"
        );
        for row in sqlx::query(&q)
            .fetch_all(&self.db.read)
            .await
            .map_err(db::DbError::from)?
        {
            let ch = snap.channels.entry(s(&row, "channel")?).or_default();
            let e = entry_of(&row)?;
            ch.by_build_id
                .entry(e.build_id.clone())
                .or_default()
                .push(ch.patches.len());
            ch.patches.push(e);
        }
        snap.extra = crate::rollout::load(&self.db).await?;
        Ok(snap)
    }

    /// The patches of `snap` meant for a machine with this
    /// authorization, group, kernel build-id and object build-ids, and what
    /// it applied of them.
    pub fn fit(
        &self,
        snap: &Snapshot,
        authorization: &str,
        group: &str,
        report: Option<&Report>,
        applied: &[String],
    ) -> Fit {
        let channel = snap.channel_of(group).to_string();
        let mut patches = Vec::new();
        if let (Some(ch), Some(r), "allowed") = (snap.channels.get(&channel), report, authorization)
        {
            let mut seen = BTreeSet::new();
            let kernel = std::iter::once((r.kernel.build_id.as_str(), PatchKind::Kernel));
            let user = r
                .objects
                .iter()
                .map(|o| (o.build_id.as_str(), PatchKind::User));
            for (bid, kind) in kernel.chain(user) {
                if bid.is_empty() {
                    continue;
                }
                for &ix in ch
                    .by_build_id
                    .get(&bid.to_ascii_lowercase())
                    .into_iter()
                    .flatten()
                {
                    let e = &ch.patches[ix];
                    if e.kind == kind && seen.insert(ix) {
                        patches.push(e.clone());
                    }
                }
            }
        }
        if let (Some(r), "allowed") = (report, authorization) {
            // Issue 11 hook: rollout stages and out-of-band patches.
            snap.extra.extend(r, group, &mut patches);
        }
        // Per target: the highest level applied, and the highest listed.
        let applied: BTreeSet<&str> = applied.iter().map(String::as_str).collect();
        let mut best_applied: HashMap<&str, u32> = HashMap::new();
        let mut best: HashMap<&str, &FeedEntry> = HashMap::new();
        for p in &patches {
            if applied.contains(p.id.as_str()) {
                let l = best_applied.entry(&p.build_id).or_insert(0);
                *l = (*l).max(p.level);
            }
            let b = best.entry(&p.build_id).or_insert(p);
            if p.level > b.level {
                *b = p;
            }
        }
        let mut fixed = BTreeSet::new();
        let mut missing_cves = BTreeSet::new();
        for p in &patches {
            let done = best_applied
                .get(p.build_id.as_str())
                .is_some_and(|&l| l >= p.level);
            for c in &p.cves {
                if done {
                    fixed.insert(c.clone());
                }
            }
        }
        for p in &patches {
            let done = best_applied
                .get(p.build_id.as_str())
                .is_some_and(|&l| l >= p.level);
            if !done {
                for c in &p.cves {
                    if !fixed.contains(c) {
                        missing_cves.insert(c.clone());
                    }
                }
            }
        }
        let mut missing: Vec<FeedEntry> = best
            .values()
            .filter(|b| {
                best_applied
                    .get(b.build_id.as_str())
                    .is_none_or(|&l| l < b.level)
            })
            .map(|b| (*b).clone())
            .collect();
        missing.sort_by(|a, b| a.id.cmp(&b.id));
        let status = if !missing.is_empty() {
            "outofdate"
        } else if report.is_some_and(|r| !r.kernel.livepatch) && patches.is_empty() {
            "unsupported"
        } else {
            "uptodate"
        };
        Fit {
            channel,
            patches,
            status,
            fixed_cves: fixed.into_iter().collect(),
            missing_cves: missing_cves.into_iter().collect(),
            missing,
        }
    }

    pub fn sign(&self, machine: &str, fit: &Fit, version: i64, authorization: &str) -> SignedFeed {
        let issued_at = now();
        let list = FeedList {
            format: FEED_FORMAT,
            machine: machine.into(),
            channel: fit.channel.clone(),
            version: version as u64,
            issued_at,
            expires_at: issued_at + self.settings.feed_validity,
            authorization: authorization.into(),
            patches: fit.patches.clone(),
        };
        SignedFeed::sign(&list, &self.feed_key)
    }

    // ---------------------------------------------------------------
    // Machines

    pub async fn machine_row(&self, uuid: &str) -> Result<Option<MachineRow>> {
        if let Some(hot) = self.hot()? {
            return hot.machine(uuid).await.map_err(|e| hot_failed(&e));
        }
        let row = sqlx::query(MACHINE_ROW_SQL)
            .bind(uuid)
            .fetch_optional(&self.db.read)
            .await
            .map_err(db::DbError::from)?;
        let Some(row) = row else { return Ok(None) };
        Ok(Some(MachineRow {
            uuid: s(&row, "uuid")?,
            key_hash: os(&row, "key_hash")?,
            authorization: s(&row, "authz")?,
            group: s(&row, "group_name")?,
            applied: serde_json::from_str(&s(&row, "applied")?).unwrap_or_default(),
            last_run_at: i(&row, "last_run_at")?,
            feed_version: i(&row, "fv")?,
            health: match row
                .try_get::<Option<i64>, _>("h_failing")
                .map_err(db::DbError::from)?
            {
                None => None,
                Some(failing) => Some(crate::rollout::Health {
                    failing,
                    error: row
                        .try_get::<Option<String>, _>("h_error")
                        .map_err(db::DbError::from)?
                        .unwrap_or_default(),
                    out_of_date_since: oi(&row, "h_since")?,
                }),
            },
        }))
    }

    /// The machine a machine key belongs to.
    pub async fn machine_of_key(&self, key_hash: &str) -> Result<Option<String>> {
        let row = sqlx::query("SELECT uuid FROM machines WHERE key_hash = $1")
            .bind(key_hash)
            .fetch_optional(&self.db.read)
            .await
            .map_err(db::DbError::from)?;
        Ok(row.map(|r| s(&r, "uuid")).transpose()?)
    }

    /// The machine `uuid`, if `key_hash` is its key: 401 when the key is
    /// nobody's, 403 when it is another machine's.
    pub async fn authenticate_machine(&self, uuid: &str, key_hash: &str) -> Result<MachineRow> {
        if let Some(row) = self.machine_row(uuid).await? {
            if row.key_hash.as_deref() == Some(key_hash) {
                return Ok(row);
            }
        }
        match self.machine_of_key(key_hash).await? {
            None => Err(Error::unauthorized(
                "unknown machine key: register the machine again",
            )),
            Some(_) => Err(Error::forbidden(format!(
                "this machine key is not the key of machine {uuid}: a machine may only use its own UUID"
            ))),
        }
    }

    pub async fn register(&self, req: &RegisterRequest) -> Result<RegisterResponse> {
        crate::fleet::check_text("hostname", &req.hostname)?;
        let key = sqlx::query(
            "SELECT group_name, pending FROM access_keys WHERE key_hash = $1 AND revoked_at IS NULL",
        )
        .bind(secret_hash(&req.access_key))
        .fetch_optional(&self.db.read)
        .await
        .map_err(db::DbError::from)?
        .ok_or_else(|| Error::unauthorized("unknown or revoked access key"))?;
        let key_group = s(&key, "group_name")?;
        let pending = i(&key, "pending")? != 0;
        if let Some(g) = &req.group {
            if !g.is_empty() {
                check_group(g)?;
            }
        }
        let uuid = match &req.uuid {
            Some(u) => {
                if !hotsplice_fleet::is_uuid(u) {
                    return Err(Error::bad(format!(
                        "uuid {u:?} is not a UUID (8-4-4-4-12 lowercase hex)"
                    )));
                }
                u.clone()
            }
            None => hotsplice_fleet::new_uuid().map_err(|e| {
                Error::new(
                    axum::http::StatusCode::INTERNAL_SERVER_ERROR,
                    format!("cannot make a UUID: {e}"),
                )
            })?,
        };
        let machine_key = hotsplice_fleet::new_secret().map_err(|e| {
            Error::new(
                axum::http::StatusCode::INTERNAL_SERVER_ERROR,
                format!("cannot make a key: {e}"),
            )
        })?;
        let t = now() as i64;
        let mut tx = self.db.begin().await?;
        let existing = sqlx::query("SELECT authz, group_name FROM machines WHERE uuid = $1")
            .bind(&uuid)
            .fetch_optional(&mut *tx)
            .await
            .map_err(db::DbError::from)?;
        let (authorization, group) = match existing {
            Some(row) => {
                let authorization = s(&row, "authz")?;
                let old_group = s(&row, "group_name")?;
                let group = req.group.clone().unwrap_or(old_group.clone());
                sqlx::query("UPDATE machines SET key_hash = $1, hostname = $2, group_name = $3 WHERE uuid = $4")
                    .bind(secret_hash(&machine_key))
                    .bind(&req.hostname)
                    .bind(&group)
                    .bind(&uuid)
                    .execute(&mut *tx)
                    .await
                    .map_err(db::DbError::from)?;
                if group != old_group {
                    ensure_group(&mut tx, &group).await?;
                    bump_feed(&mut tx).await?;
                    history(&mut tx, &uuid, t, "group", "", "", &group, "machine").await?;
                }
                (authorization, group)
            }
            None => {
                let authorization = if pending { "pending" } else { "allowed" };
                let group = req.group.clone().unwrap_or(key_group);
                ensure_group(&mut tx, &group).await?;
                sqlx::query(
                    "INSERT INTO machines (uuid, key_hash, hostname, ip, original_kernel, effective_kernel, kernel_build_id, client_version, autoinstall, authz, group_name, status, registered_at, last_seen, feed_version, last_run_at, applied, fixed_cves, missing_cves, report) \
                     VALUES ($1, $2, $3, '', '', '', '', '', 0, $4, $5, 'unsupported', $6, 0, 0, 0, '[]', '', '', NULL)",
                )
                .bind(&uuid)
                .bind(secret_hash(&machine_key))
                .bind(&req.hostname)
                .bind(authorization)
                .bind(&group)
                .bind(t)
                .execute(&mut *tx)
                .await
                .map_err(db::DbError::from)?;
                (authorization.to_string(), group)
            }
        };
        history(
            &mut tx,
            &uuid,
            t,
            "registered",
            "",
            "",
            &req.hostname,
            "machine",
        )
        .await?;
        tx.commit().await.map_err(db::DbError::from)?;
        Ok(RegisterResponse {
            uuid,
            machine_key,
            feed_key: self.feed_public.to_text().trim_end().to_string(),
            authorization,
            group,
        })
    }

    /// Store a report (a check-in, or an imported one) and answer with the
    /// machine's list. A check-in (`checkin`) also updates the machine's
    /// health row (issue 11) when its health changed.
    pub async fn store_report(
        &self,
        row: &MachineRow,
        report: &Report,
        raw: &str,
        event_detail: &str,
        actor: &str,
        checkin: bool,
    ) -> Result<(SignedFeed, &'static str)> {
        let snap = self.snapshot_at(row.feed_version).await?;
        let applied = report.applied_ids();
        let fit = self.fit(
            &snap,
            &row.authorization,
            &row.group,
            Some(report),
            &applied,
        );
        let t = now() as i64;
        let ip = report.addresses.first().cloned().unwrap_or_default();
        let last_run_at = report
            .last_run
            .as_ref()
            .map(|r| r.at as i64)
            .unwrap_or(row.last_run_at)
            .max(row.last_run_at);
        // History: what changed since the previous report, and the
        // failures of a run not reported before.
        let mut events: Vec<crate::checkin_store::Event> = Vec::new();
        let before: BTreeSet<&String> = row.applied.iter().collect();
        let after: BTreeSet<&String> = applied.iter().collect();
        for p in after.difference(&before) {
            events.push((
                t,
                "applied",
                p.to_string(),
                String::new(),
                event_detail.into(),
            ));
        }
        for p in before.difference(&after) {
            events.push((
                t,
                "removed",
                p.to_string(),
                String::new(),
                event_detail.into(),
            ));
        }
        if let Some(r) = &report.last_run {
            if (r.at as i64) > row.last_run_at {
                for f in &r.failures {
                    // PostgreSQL's TEXT takes no NUL; errors are for people.
                    let error = f.error.replace(|c: char| c.is_control() && c != '\n', " ");
                    events.push((
                        r.at as i64,
                        "failed",
                        f.patch.clone(),
                        f.target.clone(),
                        error,
                    ));
                }
            }
        }
        let columns = crate::checkin_writer::Row {
            uuid: row.uuid.clone(),
            hostname: report.hostname.clone(),
            ip,
            original_kernel: report.kernel.original_release.clone(),
            effective_kernel: report.kernel.effective_release.clone(),
            kernel_build_id: report.kernel.build_id.to_ascii_lowercase(),
            client_version: report.client_version.clone(),
            autoinstall: report.autoinstall as i64,
            status: fit.status.to_string(),
            last_seen: t,
            feed_version: snap.version,
            last_run_at,
            applied: serde_json::to_string(&applied).expect("strings serialize"),
            fixed_cves: cve_column(&fit.fixed_cves),
            missing_cves: cve_column(&fit.missing_cves),
            report: raw.to_string(),
            mmap_min_addr: report.mmap_min_addr.map(|a| a as i64),
        };
        let mut health = if checkin {
            crate::rollout::health_change(row, report, fit.status)
        } else {
            None
        };
        if let Some(hot) = self.hot()? {
            // SQLite: the row, its events and its health in one job of the
            // check-in thread's next batch; answered once committed.
            hot.checkin(crate::checkin_store::CheckinWrite {
                row: columns,
                events,
                actor: actor.to_string(),
                health: health.take(),
            })
            .await
            .map_err(|e| hot_failed(&format!("storing a check-in: {e}")))?;
        } else if events.is_empty() {
            // The common case: only the row changes. Written with the
            // rows of other check-ins in one statement (group commit);
            // answered once committed.
            let writer = self
                .writer
                .get_or_init(|| async { crate::checkin_writer::Writer::start(self.db.clone()) })
                .await;
            writer.write(columns, health.take()).await?;
        } else {
            let mut tx = self.db.begin().await?;
            crate::checkin_writer::update_one(&mut tx, &columns).await?;
            for (at, event, patch, target, detail) in &events {
                history(&mut tx, &row.uuid, *at, event, patch, target, detail, actor).await?;
            }
            tx.commit().await.map_err(db::DbError::from)?;
        }
        if let Some(h) = &health {
            // PostgreSQL: after the check-in, in its own statement; a
            // failure is logged, the check-in stands (as on SQLite).
            if let Err(e) = crate::checkin_writer::write_health(&self.db, &[h]).await {
                tracing::error!("health of {}: {e}", row.uuid);
            }
        }
        Ok((
            self.sign(&row.uuid, &fit, snap.version, &row.authorization),
            fit.status,
        ))
    }

    /// The list of a machine as of its stored report.
    pub async fn feed_of(&self, row: &MachineRow) -> Result<(SignedFeed, Fit)> {
        let snap = self.snapshot().await?;
        let report = self.stored_report(&row.uuid).await?;
        let fit = self.fit(
            &snap,
            &row.authorization,
            &row.group,
            report.as_ref(),
            &row.applied,
        );
        Ok((
            self.sign(&row.uuid, &fit, snap.version, &row.authorization),
            fit,
        ))
    }

    pub async fn stored_report(&self, uuid: &str) -> Result<Option<Report>> {
        let row = sqlx::query("SELECT report FROM machines WHERE uuid = $1")
            .bind(uuid)
            .fetch_optional(&self.db.read)
            .await
            .map_err(db::DbError::from)?;
        Ok(row
            .and_then(|r| r.try_get::<Option<String>, _>("report").ok().flatten())
            .and_then(|t| serde_json::from_str(&t).ok()))
    }

    /// An air-gapped machine's report: stored like a check-in; a machine
    /// the server does not know is created (allowed, in the default
    /// group, without a machine key: registering with its UUID later
    /// gives it one).
    pub async fn import_report(&self, report: &Report, raw: &str, actor: &str) -> Result<bool> {
        let created = if self.machine_row(&report.uuid).await?.is_none() {
            let t = now() as i64;
            let mut tx = self.db.begin().await?;
            let n = sqlx::query(
                "INSERT INTO machines (uuid, key_hash, hostname, ip, original_kernel, effective_kernel, kernel_build_id, client_version, autoinstall, authz, group_name, status, registered_at, last_seen, feed_version, last_run_at, applied, fixed_cves, missing_cves, report) \
                 VALUES ($1, NULL, $2, '', '', '', '', '', 0, 'allowed', $3, 'unsupported', $4, 0, 0, 0, '[]', '', '', NULL) ON CONFLICT (uuid) DO NOTHING",
            )
            .bind(&report.uuid)
            .bind(&report.hostname)
            .bind(DEFAULT_GROUP)
            .bind(t)
            .execute(&mut *tx)
            .await
            .map_err(db::DbError::from)?
            .rows_affected();
            history(
                &mut tx,
                &report.uuid,
                t,
                "imported",
                "",
                "",
                "created by an imported report",
                actor,
            )
            .await?;
            tx.commit().await.map_err(db::DbError::from)?;
            n > 0
        } else {
            false
        };
        let row = self
            .machine_row(&report.uuid)
            .await?
            .ok_or_else(|| Error::no_machine(&report.uuid))?;
        self.store_report(&row, report, raw, "imported", actor, false)
            .await?;
        Ok(created)
    }

    pub async fn summary(&self, uuid: &str) -> Result<MachineSummary> {
        let row = sqlx::query(&format!(
            "SELECT {MACHINE_COLS} FROM machines WHERE uuid = $1"
        ))
        .bind(uuid)
        .fetch_optional(&self.db.read)
        .await
        .map_err(db::DbError::from)?
        .ok_or_else(|| Error::no_machine(uuid))?;
        Ok(summary_of(&row)?)
    }

    pub async fn machines(&self, f: &MachineFilter) -> Result<Vec<MachineSummary>> {
        for (what, v) in [
            ("status", &f.status),
            ("group", &f.group),
            ("authorization", &f.authorization),
            ("kernel", &f.kernel),
            ("cve_fixed", &f.cve_fixed),
            ("cve_missing", &f.cve_missing),
        ] {
            if let Some(v) = v {
                check_text(what, v)?;
            }
        }
        let mut q = format!("SELECT {MACHINE_COLS} FROM machines WHERE 1 = 1");
        let mut args: Vec<String> = Vec::new();
        let mut n = 0;
        let mut arg = |q: &mut String, clause: &str, v: String| {
            n += 1;
            q.push_str(&clause.replace("$?", &format!("${n}")));
            args.push(v);
        };
        if let Some(v) = &f.status {
            arg(&mut q, " AND status = $?", v.clone());
        }
        if let Some(v) = &f.group {
            arg(&mut q, " AND group_name = $?", v.clone());
        }
        if let Some(v) = &f.authorization {
            arg(&mut q, " AND authz = $?", v.clone());
        }
        if let Some(v) = &f.kernel {
            arg(&mut q, " AND (original_kernel = $?", v.clone());
            arg(&mut q, " OR effective_kernel = $?)", v.clone());
        }
        if let Some(v) = &f.cve_fixed {
            arg(
                &mut q,
                " AND fixed_cves LIKE $?",
                format!("%,{},%", like_escape(v)),
            );
        }
        if let Some(v) = &f.cve_missing {
            arg(
                &mut q,
                " AND missing_cves LIKE $?",
                format!("%,{},%", like_escape(v)),
            );
        }
        let seen = f.seen_within.map(|w| now().saturating_sub(w) as i64);
        if seen.is_some() {
            n += 1;
            q.push_str(&format!(" AND last_seen >= ${n}"));
        }
        q.push_str(" ORDER BY uuid");
        let mut query = sqlx::query(&q);
        for a in &args {
            query = query.bind(a.clone());
        }
        if let Some(t) = seen {
            query = query.bind(t);
        }
        let rows = query
            .fetch_all(&self.db.read)
            .await
            .map_err(db::DbError::from)?;
        Ok(rows
            .iter()
            .map(summary_of)
            .collect::<std::result::Result<_, _>>()?)
    }

    pub async fn history(&self, uuid: &str) -> Result<Vec<HistoryEvent>> {
        self.summary(uuid).await?;
        let rows = sqlx::query(
            "SELECT id, at, event, patch, target, detail, actor FROM history WHERE uuid = $1 ORDER BY id",
        )
        .bind(uuid)
        .fetch_all(&self.db.read)
        .await
        .map_err(db::DbError::from)?;
        rows.iter()
            .map(|r| {
                Ok(HistoryEvent {
                    id: i(r, "id")?,
                    at: i(r, "at")? as u64,
                    event: s(r, "event")?,
                    patch: s(r, "patch")?,
                    target: s(r, "target")?,
                    detail: s(r, "detail")?,
                    actor: s(r, "actor")?,
                })
            })
            .collect()
    }

    pub async fn set_authorization(
        &self,
        uuid: &str,
        authorization: &str,
        actor: &str,
    ) -> Result<()> {
        check_authorization(authorization)?;
        let mut tx = self.db.begin().await?;
        let n = sqlx::query("UPDATE machines SET authz = $1 WHERE uuid = $2")
            .bind(authorization)
            .bind(uuid)
            .execute(&mut *tx)
            .await
            .map_err(db::DbError::from)?
            .rows_affected();
        if n == 0 {
            return Err(Error::no_machine(uuid));
        }
        bump_feed(&mut tx).await?;
        history(
            &mut tx,
            uuid,
            now() as i64,
            "authorization",
            "",
            "",
            authorization,
            actor,
        )
        .await?;
        tx.commit().await.map_err(db::DbError::from)?;
        Ok(())
    }

    /// Move a machine to `group` (created if new, bound to the default
    /// channel); empty ungroups.
    pub async fn set_group(&self, uuid: &str, group: &str, actor: &str) -> Result<()> {
        if !group.is_empty() {
            check_group(group)?;
        }
        let mut tx = self.db.begin().await?;
        let n = sqlx::query("UPDATE machines SET group_name = $1 WHERE uuid = $2")
            .bind(group)
            .bind(uuid)
            .execute(&mut *tx)
            .await
            .map_err(db::DbError::from)?
            .rows_affected();
        if n == 0 {
            return Err(Error::no_machine(uuid));
        }
        ensure_group(&mut tx, group).await?;
        bump_feed(&mut tx).await?;
        history(&mut tx, uuid, now() as i64, "group", "", "", group, actor).await?;
        tx.commit().await.map_err(db::DbError::from)?;
        Ok(())
    }

    // ---------------------------------------------------------------
    // Groups and channels

    pub async fn groups(&self) -> Result<Vec<GroupInfo>> {
        let rows = sqlx::query(
            "SELECT g.name, g.channel, (SELECT COUNT(*) FROM machines m WHERE m.group_name = g.name) AS n FROM groups g ORDER BY g.name",
        )
        .fetch_all(&self.db.read)
        .await
        .map_err(db::DbError::from)?;
        rows.iter()
            .map(|r| {
                Ok(GroupInfo {
                    name: s(r, "name")?,
                    channel: s(r, "channel")?,
                    machines: i(r, "n")? as u64,
                })
            })
            .collect()
    }

    pub async fn set_group_channel(&self, group: &str, channel: &str) -> Result<GroupInfo> {
        check_group(group)?;
        check_name("channel", channel)?;
        let mut tx = self.db.begin().await?;
        sqlx::query(
            "INSERT INTO groups (name, channel, created_at) VALUES ($1, $2, $3) ON CONFLICT (name) DO UPDATE SET channel = excluded.channel",
        )
        .bind(group)
        .bind(channel)
        .bind(now() as i64)
        .execute(&mut *tx)
        .await
        .map_err(db::DbError::from)?;
        bump_feed(&mut tx).await?;
        tx.commit().await.map_err(db::DbError::from)?;
        self.groups()
            .await?
            .into_iter()
            .find(|g| g.name == group)
            .ok_or_else(|| Error::not_found(format!("no group {group}")))
    }

    pub async fn channels(&self) -> Result<Vec<ChannelInfo>> {
        let mut map: std::collections::BTreeMap<String, ChannelInfo> = Default::default();
        let info = |name: &str| ChannelInfo {
            name: name.to_string(),
            patches: 0,
            groups: vec![],
        };
        map.insert(DEFAULT_CHANNEL.into(), info(DEFAULT_CHANNEL));
        for r in sqlx::query("SELECT channel, COUNT(*) AS n FROM channel_patches GROUP BY channel")
            .fetch_all(&self.db.read)
            .await
            .map_err(db::DbError::from)?
        {
            let ch = s(&r, "channel")?;
            map.entry(ch.clone()).or_insert_with(|| info(&ch)).patches = i(&r, "n")? as u64;
        }
        for g in self.groups().await? {
            map.entry(g.channel.clone())
                .or_insert_with(|| info(&g.channel))
                .groups
                .push(g.name);
        }
        Ok(map.into_values().collect())
    }

    pub async fn patch_records(
        &self,
        channel: Option<&str>,
        sha: Option<&str>,
    ) -> Result<Vec<PatchRecord>> {
        let mut q = format!("SELECT {PATCH_COLS} FROM patches p");
        if channel.is_some() {
            q.push_str(" JOIN channel_patches c ON c.sha256 = p.sha256 AND c.channel = $1");
        } else if sha.is_some() {
            q.push_str(" WHERE p.sha256 = $1");
        }
        q.push_str(" ORDER BY p.uploaded_at, p.sha256");
        let mut query = sqlx::query(&q);
        if let Some(c) = channel.or(sha) {
            query = query.bind(c.to_string());
        }
        let rows = query
            .fetch_all(&self.db.read)
            .await
            .map_err(db::DbError::from)?;
        let mut chans: HashMap<String, Vec<String>> = HashMap::new();
        for r in sqlx::query("SELECT channel, sha256 FROM channel_patches ORDER BY channel")
            .fetch_all(&self.db.read)
            .await
            .map_err(db::DbError::from)?
        {
            chans
                .entry(s(&r, "sha256")?)
                .or_default()
                .push(s(&r, "channel")?);
        }
        rows.iter()
            .map(|r| {
                let e = entry_of(r)?;
                Ok(PatchRecord {
                    channels: chans.remove(&e.sha256).unwrap_or_default(),
                    sha256: e.sha256,
                    id: e.id,
                    kind: e.kind,
                    target_name: e.target_name,
                    build_id: e.build_id,
                    level: e.level,
                    description: e.description,
                    cves: e.cves,
                    size: e.size,
                    key_id: s(r, "key_id")?,
                    uploaded_at: i(r, "uploaded_at")? as u64,
                })
            })
            .collect()
    }

    pub async fn patch_record(&self, sha: &str) -> Result<PatchRecord> {
        check_sha(sha)?;
        self.patch_records(None, Some(sha))
            .await?
            .pop()
            .ok_or_else(|| Error::not_found(format!("no patch with SHA-256 {sha}")))
    }

    pub async fn patch_blob(&self, sha: &str) -> Result<Vec<u8>> {
        let row = sqlx::query("SELECT data FROM patch_blobs WHERE sha256 = $1")
            .bind(sha)
            .fetch_optional(&self.db.read)
            .await
            .map_err(db::DbError::from)?
            .ok_or_else(|| Error::not_found(format!("no patch with SHA-256 {sha}")))?;
        Ok(row
            .try_get::<Vec<u8>, _>("data")
            .map_err(db::DbError::from)?)
    }

    /// Verify and store an uploaded patch file; with `channel`, add it.
    /// Returns the record and whether the file is new.
    pub async fn publish(
        &self,
        bytes: &[u8],
        channel: Option<&str>,
    ) -> Result<(PatchRecord, bool)> {
        if let Some(c) = channel {
            check_name("channel", c)?;
        }
        let keys = self.publisher_public_keys().await?;
        let (patch, key) = hotsplice_trust::verify_file_in(
            bytes,
            &keys,
            "the server's publisher keys (hotsplice-server key add-publisher, or POST /api/v2/publisher-keys)",
        )
        .map_err(|e| match e {
            hotsplice_trust::TrustError::UnknownKey { .. } => Error::forbidden(e.to_string()),
            other => Error::new(
                axum::http::StatusCode::UNPROCESSABLE_ENTITY,
                format!("refused: {other}"),
            ),
        })?;
        let sha = hotsplice_fleet::sha256_hex(bytes);
        let m = &patch.meta;
        let kind = if m.target.kind == hotsplice_patch::ObjectKind::Kernel {
            "kernel"
        } else {
            "user"
        };
        let t = now() as i64;
        let mut tx = self.db.begin().await?;
        let new = sqlx::query(
            "INSERT INTO patches (sha256, id, kind, target_name, build_id, level, description, cves, size, key_id, uploaded_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) ON CONFLICT (sha256) DO NOTHING",
        )
        .bind(&sha)
        .bind(m.id.as_str())
        .bind(kind)
        .bind(&m.target.name)
        .bind(m.target.build_id.as_str().to_ascii_lowercase())
        .bind(m.level as i64)
        .bind(&m.description)
        .bind(serde_json::to_string(&m.cves).expect("strings serialize"))
        .bind(bytes.len() as i64)
        .bind(key.id())
        .bind(t)
        .execute(&mut *tx)
        .await
        .map_err(db::DbError::from)?
        .rows_affected()
            > 0;
        if new {
            sqlx::query("INSERT INTO patch_blobs (sha256, data) VALUES ($1, $2)")
                .bind(&sha)
                .bind(bytes.to_vec())
                .execute(&mut *tx)
                .await
                .map_err(db::DbError::from)?;
        }
        if let Some(c) = channel {
            add_to_channel(&mut tx, c, &sha).await?;
        }
        tx.commit().await.map_err(db::DbError::from)?;
        Ok((self.patch_record(&sha).await?, new))
    }

    pub async fn promote(&self, channel: &str, sha: &str) -> Result<ChannelChange> {
        check_name("channel", channel)?;
        check_sha(sha)?;
        self.patch_record(sha).await?;
        let mut tx = self.db.begin().await?;
        let changed = add_to_channel(&mut tx, channel, sha).await?;
        tx.commit().await.map_err(db::DbError::from)?;
        Ok(ChannelChange {
            channel: channel.into(),
            sha256: sha.into(),
            changed,
            feed_version: self.db.feed_version().await? as u64,
        })
    }

    pub async fn withdraw(&self, channel: &str, sha: &str) -> Result<ChannelChange> {
        check_name("channel", channel)?;
        check_sha(sha)?;
        let mut tx = self.db.begin().await?;
        let changed = sqlx::query("DELETE FROM channel_patches WHERE channel = $1 AND sha256 = $2")
            .bind(channel)
            .bind(sha)
            .execute(&mut *tx)
            .await
            .map_err(db::DbError::from)?
            .rows_affected()
            > 0;
        if changed {
            bump_feed(&mut tx).await?;
        }
        tx.commit().await.map_err(db::DbError::from)?;
        Ok(ChannelChange {
            channel: channel.into(),
            sha256: sha.into(),
            changed,
            feed_version: self.db.feed_version().await? as u64,
        })
    }

    /// Every patch of `channel`, signed for any machine (a mirror's copy).
    pub async fn channel_feed(&self, channel: &str) -> Result<SignedFeed> {
        check_name("channel", channel)?;
        let snap = self.snapshot().await?;
        let patches = snap
            .channels
            .get(channel)
            .map(|c| c.patches.clone())
            .unwrap_or_default();
        let fit = Fit {
            channel: channel.into(),
            patches,
            status: "uptodate",
            fixed_cves: vec![],
            missing_cves: vec![],
            missing: vec![],
        };
        Ok(self.sign(ANY_MACHINE, &fit, snap.version, "allowed"))
    }

    // ---------------------------------------------------------------
    // Credentials

    /// The role of an API user whose key this is.
    pub async fn api_user(&self, name: &str, key: &str) -> Result<Option<Role>> {
        let row = sqlx::query(
            "SELECT role FROM api_users WHERE name = $1 AND key_hash = $2 AND revoked_at IS NULL",
        )
        .bind(name)
        .bind(secret_hash(key))
        .fetch_optional(&self.db.read)
        .await
        .map_err(db::DbError::from)?;
        Ok(row.and_then(|r| Role::parse(&s(&r, "role").ok()?)))
    }

    pub async fn create_token(&self, name: Option<&str>, role: Role) -> Result<NewToken> {
        let key = hotsplice_fleet::new_secret().map_err(internal)?;
        let name = match name {
            Some(n) => {
                check_name("API user", n)?;
                n.to_string()
            }
            None => format!("token-{}", &secret_hash(&key)[..12]),
        };
        let mut tx = self.db.begin().await?;
        let n = sqlx::query(
            "INSERT INTO api_users (name, key_hash, role, created_at, revoked_at) VALUES ($1, $2, $3, $4, NULL) ON CONFLICT (name) DO NOTHING",
        )
        .bind(&name)
        .bind(secret_hash(&key))
        .bind(role.as_str())
        .bind(now() as i64)
        .execute(&mut *tx)
        .await
        .map_err(db::DbError::from)?
        .rows_affected();
        if n == 0 {
            return Err(Error::new(
                axum::http::StatusCode::CONFLICT,
                format!("API user {name} exists already: choose another name, or revoke it first"),
            ));
        }
        tx.commit().await.map_err(db::DbError::from)?;
        Ok(NewToken { name, key, role })
    }

    pub async fn tokens(&self) -> Result<Vec<TokenInfo>> {
        let rows =
            sqlx::query("SELECT name, role, created_at, revoked_at FROM api_users ORDER BY name")
                .fetch_all(&self.db.read)
                .await
                .map_err(db::DbError::from)?;
        rows.iter()
            .map(|r| {
                Ok(TokenInfo {
                    name: s(r, "name")?,
                    role: Role::parse(&s(r, "role")?).unwrap_or(Role::ReadOnly),
                    created_at: i(r, "created_at")? as u64,
                    revoked: oi(r, "revoked_at")?.is_some(),
                })
            })
            .collect()
    }

    /// Revoke an API user (the row stays, for the audit trail).
    pub async fn revoke_token(&self, name: &str) -> Result<()> {
        if check_name("API user", name).is_err() {
            return Err(Error::not_found(format!("no active API user {name:?}")));
        }
        let n = sqlx::query(
            "UPDATE api_users SET revoked_at = $1 WHERE name = $2 AND revoked_at IS NULL",
        )
        .bind(now() as i64)
        .bind(name)
        .execute(&self.db.write)
        .await
        .map_err(db::DbError::from)?
        .rows_affected();
        if n == 0 {
            return Err(Error::not_found(format!("no active API user {name}")));
        }
        Ok(())
    }

    pub async fn create_access_key(
        &self,
        group: Option<&str>,
        pending: bool,
    ) -> Result<NewAccessKey> {
        let group = group.unwrap_or(DEFAULT_GROUP).to_string();
        check_group(&group)?;
        let key = hotsplice_fleet::new_secret().map_err(internal)?;
        let hash = secret_hash(&key);
        let id = hash[..12].to_string();
        let mut tx = self.db.begin().await?;
        ensure_group(&mut tx, &group).await?;
        sqlx::query(
            "INSERT INTO access_keys (id, key_hash, group_name, pending, created_at, revoked_at) VALUES ($1, $2, $3, $4, $5, NULL)",
        )
        .bind(&id)
        .bind(&hash)
        .bind(&group)
        .bind(pending as i64)
        .bind(now() as i64)
        .execute(&mut *tx)
        .await
        .map_err(db::DbError::from)?;
        tx.commit().await.map_err(db::DbError::from)?;
        Ok(NewAccessKey {
            id,
            key,
            group,
            pending,
        })
    }

    pub async fn access_keys(&self) -> Result<Vec<AccessKeyInfo>> {
        let rows = sqlx::query(
            "SELECT id, group_name, pending, created_at, revoked_at FROM access_keys ORDER BY created_at, id",
        )
        .fetch_all(&self.db.read)
        .await
        .map_err(db::DbError::from)?;
        rows.iter()
            .map(|r| {
                Ok(AccessKeyInfo {
                    id: s(r, "id")?,
                    group: s(r, "group_name")?,
                    pending: i(r, "pending")? != 0,
                    created_at: i(r, "created_at")? as u64,
                    revoked: oi(r, "revoked_at")?.is_some(),
                })
            })
            .collect()
    }

    pub async fn revoke_access_key(&self, id: &str) -> Result<()> {
        if id.len() > 64 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(Error::not_found(format!("no active access key {id:?}")));
        }
        let n = sqlx::query(
            "UPDATE access_keys SET revoked_at = $1 WHERE id = $2 AND revoked_at IS NULL",
        )
        .bind(now() as i64)
        .bind(id)
        .execute(&self.db.write)
        .await
        .map_err(db::DbError::from)?
        .rows_affected();
        if n == 0 {
            return Err(Error::not_found(format!("no active access key {id}")));
        }
        Ok(())
    }

    pub async fn publisher_keys(&self) -> Result<Vec<PublisherKey>> {
        let rows = sqlx::query(
            "SELECT key_id, public_text, comment, added_at FROM publisher_keys ORDER BY key_id",
        )
        .fetch_all(&self.db.read)
        .await
        .map_err(db::DbError::from)?;
        rows.iter()
            .map(|r| {
                Ok(PublisherKey {
                    key_id: s(r, "key_id")?,
                    public_key: s(r, "public_text")?,
                    comment: s(r, "comment")?,
                    added_at: i(r, "added_at")? as u64,
                })
            })
            .collect()
    }

    async fn publisher_public_keys(&self) -> Result<Vec<PublicKey>> {
        self.publisher_keys()
            .await?
            .iter()
            .map(|k| {
                PublicKey::from_text(&k.public_key, &format!("publisher key {}", k.key_id)).map_err(
                    |e| Error::new(axum::http::StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
                )
            })
            .collect()
    }

    pub async fn add_publisher_key(&self, text: &str, comment: &str) -> Result<PublisherKey> {
        check_text("comment", comment)?;
        if text.len() > 4096 {
            return Err(Error::bad("public key: longer than 4096 bytes"));
        }
        let key = PublicKey::from_text(text, "the public key given")
            .map_err(|e| Error::bad(format!("{e} (expected `hotsplice-ed25519-public HEX`)")))?;
        let k = PublisherKey {
            key_id: key.id(),
            public_key: key.to_text().trim_end().to_string(),
            comment: comment.to_string(),
            added_at: now(),
        };
        sqlx::query(
            "INSERT INTO publisher_keys (key_id, public_text, comment, added_at) VALUES ($1, $2, $3, $4) ON CONFLICT (key_id) DO UPDATE SET comment = excluded.comment",
        )
        .bind(&k.key_id)
        .bind(&k.public_key)
        .bind(&k.comment)
        .bind(k.added_at as i64)
        .execute(&self.db.write)
        .await
        .map_err(db::DbError::from)?;
        Ok(k)
    }

    pub async fn remove_publisher_key(&self, key_id: &str) -> Result<()> {
        if key_id.len() > 64 || !key_id.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(Error::not_found(format!("no publisher key {key_id:?}")));
        }
        let n = sqlx::query("DELETE FROM publisher_keys WHERE key_id = $1")
            .bind(key_id)
            .execute(&self.db.write)
            .await
            .map_err(db::DbError::from)?
            .rows_affected();
        if n == 0 {
            return Err(Error::not_found(format!("no publisher key {key_id}")));
        }
        Ok(())
    }
}

fn internal(e: std::io::Error) -> Error {
    Error::new(
        axum::http::StatusCode::INTERNAL_SERVER_ERROR,
        format!("cannot read random bytes: {e}"),
    )
}

fn like_escape(s: &str) -> String {
    s.chars()
        .filter(|c| !matches!(c, '%' | '_' | ',' | '\\'))
        .collect()
}

/// Free text (host names, comments): bounded, no control characters.
pub fn check_text(what: &str, t: &str) -> Result<()> {
    if t.len() > hotsplice_fleet::report::MAX_STRING || t.chars().any(char::is_control) {
        return Err(Error::bad(format!(
            "{what}: at most {} bytes, no control characters",
            hotsplice_fleet::report::MAX_STRING
        )));
    }
    Ok(())
}

async fn ensure_group(tx: &mut Tx, group: &str) -> Result<()> {
    if group.is_empty() {
        return Ok(());
    }
    sqlx::query(
        "INSERT INTO groups (name, channel, created_at) VALUES ($1, $2, $3) ON CONFLICT (name) DO NOTHING",
    )
    .bind(group)
    .bind(DEFAULT_CHANNEL)
    .bind(now() as i64)
    .execute(&mut **tx)
    .await
    .map_err(db::DbError::from)?;
    Ok(())
}

async fn add_to_channel(tx: &mut Tx, channel: &str, sha: &str) -> Result<bool> {
    let changed = sqlx::query(
        "INSERT INTO channel_patches (channel, sha256, added_at) VALUES ($1, $2, $3) ON CONFLICT (channel, sha256) DO NOTHING",
    )
    .bind(channel)
    .bind(sha)
    .bind(now() as i64)
    .execute(&mut **tx)
    .await
    .map_err(db::DbError::from)?
    .rows_affected()
        > 0;
    if changed {
        bump_feed(tx).await?;
    }
    Ok(changed)
}

#[cfg(test)]
mod tests {
    #[test]
    fn rfc3339_dates() {
        assert_eq!(super::rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(super::rfc3339(1_747_048_761), "2025-05-12T11:19:21Z");
        assert_eq!(super::rfc3339(951_782_400), "2000-02-29T00:00:00Z");
    }
}
