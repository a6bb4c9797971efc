//! Staged rollouts gated on health, and out-of-band patches.
//!
//! A rollout takes one stored patch through groups in order. The feed
//! consults [`Extra`] (part of the snapshot, so it moves with the feed
//! version): a machine is offered the patch when its group's stage has
//! started and the rollout is not rolled back. Each change of a
//! rollout's state bumps the feed version.
//!
//! The decision ([`tick`]) runs after a check-in from a machine of a
//! group whose stage is under way, and on a timer. A stage is *healthy*
//! when every authorized machine of its group applied the patch (per its
//! last report) and none is stale (not seen within the stale time); the
//! next stage starts when it has been healthy for `soak_secs` (gate
//! `health`), or `soak_secs` after the stage started whatever the health
//! (gate `delay`). A failure reported for the patch by a machine of a
//! started stage pauses the rollout and says where; `resume` ignores
//! failures before it, `rollback` withdraws the patch from every group
//! (machines remove it at their next sync).

use crate::db::{self, bump_feed, i, oi, s, Db};
use crate::error::{Error, Result};
use crate::fleet::{check_sha, Fleet};
use hotsplice_fleet::feed::{FeedEntry, PatchKind};
use hotsplice_fleet::now;
use hotsplice_fleet::report::Report;
use serde::{Deserialize, Serialize};
use sqlx::Row;
use std::collections::{BTreeSet, HashMap, HashSet};

/// What rollouts and out-of-band grants add to the channels' patches.
#[derive(Debug, Default)]
pub struct Extra {
    pub by_group: HashMap<String, Vec<FeedEntry>>,
    pub by_machine: HashMap<String, Vec<FeedEntry>>,
    /// Groups whose stage is under way in a running rollout.
    pub running_groups: HashSet<String>,
}

impl Extra {
    /// Add to `patches` what this machine's group and UUID are granted and
    /// its report's build-ids fit.
    pub fn extend(&self, r: &Report, group: &str, patches: &mut Vec<FeedEntry>) {
        if self.by_group.is_empty() && self.by_machine.is_empty() {
            return;
        }
        let mut have: BTreeSet<String> = patches.iter().map(|p| p.sha256.clone()).collect();
        let kernel = r.kernel.build_id.to_ascii_lowercase();
        let objects: HashSet<String> = r
            .objects
            .iter()
            .map(|o| o.build_id.to_ascii_lowercase())
            .collect();
        let grants = self
            .by_group
            .get(group)
            .into_iter()
            .flatten()
            .chain(self.by_machine.get(&r.uuid).into_iter().flatten());
        for e in grants {
            let fits = match e.kind {
                PatchKind::Kernel => !kernel.is_empty() && e.build_id == kernel,
                PatchKind::User => objects.contains(&e.build_id),
            };
            if fits && have.insert(e.sha256.clone()) {
                patches.push(e.clone());
            }
        }
    }
}

/// A rollout as the API shows it.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Rollout {
    pub id: i64,
    pub sha256: String,
    pub patch_id: String,
    /// Groups, in order.
    pub stages: Vec<String>,
    /// `health` or `delay`.
    pub gate: String,
    pub soak_secs: u64,
    /// `running`, `paused`, `done` or `rolled-back`.
    pub state: String,
    /// Index of the last started stage.
    pub stage: u64,
    pub stage_started_at: u64,
    pub healthy_since: Option<u64>,
    /// Where it stands, in words (why it paused, what it waits for).
    pub message: String,
    pub created_by: String,
    pub created_at: u64,
}

#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewRollout {
    pub sha256: String,
    pub stages: Vec<String>,
    /// `health` (default) or `delay`.
    #[serde(default)]
    pub gate: Option<String>,
    /// Seconds a stage must stay healthy (or, gate `delay`, run) before
    /// the next starts.
    #[serde(default)]
    pub soak_secs: u64,
}

#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct OobRequest {
    /// Machines to offer the patch to (or to stop offering it to).
    pub machines: Vec<String>,
}

const COLS: &str = "id, sha256, patch_id, stages, gate, soak_secs, state, stage, stage_started_at, healthy_since, failures_after, message, created_by, created_at";

fn rollout_of(r: &sqlx::any::AnyRow) -> db::DbResult<(Rollout, i64)> {
    Ok((
        Rollout {
            id: i(r, "id")?,
            sha256: s(r, "sha256")?,
            patch_id: s(r, "patch_id")?,
            stages: serde_json::from_str(&s(r, "stages")?).unwrap_or_default(),
            gate: s(r, "gate")?,
            soak_secs: i(r, "soak_secs")? as u64,
            state: s(r, "state")?,
            stage: i(r, "stage")? as u64,
            stage_started_at: i(r, "stage_started_at")? as u64,
            healthy_since: oi(r, "healthy_since")?.map(|v| v as u64),
            message: s(r, "message")?,
            created_by: s(r, "created_by")?,
            created_at: i(r, "created_at")? as u64,
        },
        i(r, "failures_after")?,
    ))
}

/// The snapshot's part: loaded with each feed version.
pub async fn load(db: &Db) -> db::DbResult<Extra> {
    let mut extra = Extra::default();
    let q = "SELECT r.stages, r.stage, r.state, p.sha256, p.id, p.kind, p.target_name, p.build_id, p.level, p.description, p.cves, p.size FROM rollouts r JOIN patches p ON p.sha256 = r.sha256 WHERE r.state <> 'rolled-back'";
    for row in sqlx::query(q).fetch_all(&db.read).await? {
        let stages: Vec<String> = serde_json::from_str(&s(&row, "stages")?).unwrap_or_default();
        let stage = i(&row, "stage")? as usize;
        let e = crate::fleet::entry_of(&row)?;
        for g in stages.iter().take(stage + 1) {
            extra.by_group.entry(g.clone()).or_default().push(e.clone());
        }
        if s(&row, "state")? == "running" {
            if let Some(g) = stages.get(stage) {
                extra.running_groups.insert(g.clone());
            }
        }
    }
    let q = "SELECT o.uuid, p.sha256, p.id, p.kind, p.target_name, p.build_id, p.level, p.description, p.cves, p.size FROM oob_patches o JOIN patches p ON p.sha256 = o.sha256";
    for row in sqlx::query(q).fetch_all(&db.read).await? {
        extra
            .by_machine
            .entry(s(&row, "uuid")?)
            .or_default()
            .push(crate::fleet::entry_of(&row)?);
    }
    Ok(extra)
}

/// After a check-in: the machine's health row, and a rollout decision
/// when its group's stage is under way. Errors are logged, never the
/// machine's problem.
/// A machine's health row, as the check-in reads it with the machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Health {
    pub failing: i64,
    pub error: String,
    pub out_of_date_since: Option<i64>,
}

/// After a check-in is stored: the rollout decision, when the machine's
/// group is in a running rollout.
pub async fn after_checkin(f: &Fleet, row: &crate::fleet::MachineRow) {
    match f.snapshot_at(row.feed_version).await {
        Ok(snap) if snap.extra.running_groups.contains(&row.group) => {
            if let Err(e) = tick(f).await {
                tracing::error!("rollout decision: {}", e.message);
            }
        }
        Ok(_) => {}
        Err(e) => tracing::error!("rollout decision: {}", e.message),
    }
}

/// The health row (failing / out of date) a check-in with `status`
/// leaves, when it differs from the one read with the machine — compared
/// without a query, so a health row is written only when the machine's
/// health changes, not on every check-in. A run not reported before that
/// failed is alerted here.
pub fn health_change(
    row: &crate::fleet::MachineRow,
    report: &Report,
    status: &str,
) -> Option<crate::checkin_store::HealthWrite> {
    let uuid = row.uuid.as_str();
    let (failing, error) = match &report.last_run {
        Some(r) if !r.failures.is_empty() => {
            let e = &r.failures[0];
            (1i64, format!("{} on {}: {}", e.patch, e.target, e.error))
        }
        _ => (0, String::new()),
    };
    if let Some(r) = &report.last_run {
        if failing == 1 && r.at as i64 > row.last_run_at {
            // A run not reported before failed: alert.
            crate::ops::notify(serde_json::json!({
                "event": "machine_failing",
                "machine": uuid,
                "hostname": report.hostname,
                "error": error,
                "at": r.at,
            }));
        }
    }
    let error: String = error
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(1024)
        .collect();
    let outofdate = status == "outofdate";
    let same = match &row.health {
        None => failing == 0 && !outofdate,
        Some(h) => {
            h.failing == failing && h.error == error && h.out_of_date_since.is_some() == outofdate
        }
    };
    (!same).then(|| crate::checkin_store::HealthWrite {
        uuid: uuid.to_string(),
        failing,
        error,
        at: now() as i64,
    })
}

/// Seconds without a check-in after which a machine counts as stale.
pub fn stale_secs(f: &Fleet) -> u64 {
    (f.settings.checkin_interval * 3).max(300)
}

/// Decide every running rollout: pause on a failure, start the next stage
/// when the gate allows, finish after the last.
pub async fn tick(f: &Fleet) -> Result<()> {
    if crate::ops::settings().webhook.is_some() {
        out_of_date_alerts(f).await?;
    }
    let rows = sqlx::query(&format!(
        "SELECT {COLS} FROM rollouts WHERE state = 'running' ORDER BY id"
    ))
    .fetch_all(&f.db.read)
    .await
    .map_err(db::DbError::from)?;
    for row in rows {
        let (r, failures_after) = rollout_of(&row)?;
        decide(f, &r, failures_after).await?;
    }
    Ok(())
}

async fn decide(f: &Fleet, r: &Rollout, failures_after: i64) -> Result<()> {
    let t = now() as i64;
    let started: Vec<&String> = r.stages.iter().take(r.stage as usize + 1).collect();
    // A failure in any started stage pauses.
    for g in &started {
        let fail = sqlx::query(
            "SELECT h.uuid, h.detail, h.target, m.hostname FROM history h JOIN machines m ON m.uuid = h.uuid WHERE h.event = 'failed' AND h.patch = $1 AND m.group_name = $2 AND h.id > $3 ORDER BY h.id LIMIT 1",
        )
        .bind(&r.patch_id)
        .bind(g.as_str())
        .bind(failures_after)
        .fetch_optional(&f.db.read)
        .await
        .map_err(db::DbError::from)?;
        if let Some(x) = fail {
            let msg = format!(
                "paused at stage {} ({}): machine {} ({}) failed to apply {} on {}: {}",
                r.stage + 1,
                r.stages[r.stage as usize],
                s(&x, "hostname")?,
                s(&x, "uuid")?,
                r.patch_id,
                s(&x, "target")?,
                s(&x, "detail")?
            );
            let change = Change::new(r, "paused", &msg).by_server("rollout pause");
            if set_state(f, change).await? {
                crate::ops::notify(serde_json::json!({
                    "event": "rollout_paused",
                    "rollout": r.id,
                    "patch": r.patch_id,
                    "machine": s(&x, "uuid")?,
                    "message": msg,
                }));
            }
            return Ok(());
        }
    }
    let g = &r.stages[r.stage as usize];
    let stale_before = t - stale_secs(f) as i64;
    let c = sqlx::query(
        "SELECT COUNT(*) AS total, \
                COALESCE(SUM(CASE WHEN applied LIKE $2 THEN 1 ELSE 0 END), 0) AS done, \
                COALESCE(SUM(CASE WHEN last_seen < $3 THEN 1 ELSE 0 END), 0) AS stale \
         FROM machines WHERE group_name = $1 AND authz = 'allowed'",
    )
    .bind(g.as_str())
    .bind(format!("%\"{}\"%", r.patch_id))
    .bind(stale_before)
    .fetch_one(&f.db.read)
    .await
    .map_err(db::DbError::from)?;
    let total: i64 = c.try_get("total").map_err(db::DbError::from)?;
    let done: i64 = c.try_get("done").map_err(db::DbError::from)?;
    let stale: i64 = c.try_get("stale").map_err(db::DbError::from)?;
    let healthy = total > 0 && done == total && stale == 0;
    let last = r.stage as usize + 1 == r.stages.len();
    let ready = if r.gate == "delay" {
        t - r.stage_started_at as i64 >= r.soak_secs as i64
    } else if healthy {
        let since = r.healthy_since.map(|v| v as i64).unwrap_or(t);
        if r.healthy_since.is_none() {
            sqlx::query("UPDATE rollouts SET healthy_since = $1, message = $2 WHERE id = $3")
                .bind(t)
                .bind(format!(
                    "stage {} ({g}): all {total} machines applied {}; healthy since now",
                    r.stage + 1,
                    r.patch_id
                ))
                .bind(r.id)
                .execute(&f.db.write)
                .await
                .map_err(db::DbError::from)?;
        }
        t - since >= r.soak_secs as i64
    } else {
        let msg = format!(
            "stage {} ({g}): {done} of {total} machines applied {}{}",
            r.stage + 1,
            r.patch_id,
            if stale > 0 {
                format!(", {stale} not seen for a while")
            } else {
                String::new()
            }
        );
        if r.healthy_since.is_some() || msg != r.message {
            sqlx::query("UPDATE rollouts SET healthy_since = NULL, message = $1 WHERE id = $2")
                .bind(&msg)
                .bind(r.id)
                .execute(&f.db.write)
                .await
                .map_err(db::DbError::from)?;
        }
        false
    };
    if !ready {
        return Ok(());
    }
    if last {
        let msg = format!(
            "done: every stage ({}) took {}",
            r.stages.join(", "),
            r.patch_id
        );
        let change = Change::new(r, "done", &msg).by_server("rollout done");
        return set_state(f, change).await.map(drop);
    }
    let next = r.stage + 1;
    let msg = format!("stage {} ({}) started", next + 1, r.stages[next as usize]);
    let mut change = Change::new(r, "running", &msg).by_server("rollout advance");
    change.stage = Some((next as i64, t));
    set_state(f, change).await.map(drop)
}

/// A change of a rollout's state, made only if the rollout is still in the
/// state and stage it was read in (two decisions at once — a check-in's
/// and the timer's, or two server instances' — make it once).
struct Change<'a> {
    id: i64,
    patch_id: &'a str,
    from_state: &'a str,
    from_stage: i64,
    state: &'a str,
    message: &'a str,
    /// The next stage and when it starts.
    stage: Option<(i64, i64)>,
    failures_after: Option<i64>,
    /// A decision of the server itself (on a check-in or the timer): its
    /// audit action, written with the change in one transaction, actor
    /// `server`. A person's change is audited by the API's middleware.
    server_action: Option<&'static str>,
}

impl<'a> Change<'a> {
    fn new(r: &'a Rollout, state: &'a str, message: &'a str) -> Change<'a> {
        Change {
            id: r.id,
            patch_id: &r.patch_id,
            from_state: &r.state,
            from_stage: r.stage as i64,
            state,
            message,
            stage: None,
            failures_after: None,
            server_action: None,
        }
    }

    fn by_server(mut self, action: &'static str) -> Self {
        self.server_action = Some(action);
        self
    }
}

/// Make `c`; false when the rollout had changed meanwhile (nothing done).
async fn set_state(f: &Fleet, c: Change<'_>) -> Result<bool> {
    let mut tx = f.db.begin().await?;
    let n = sqlx::query(
        "UPDATE rollouts SET state = $1, message = $2, stage = COALESCE($3, stage), stage_started_at = COALESCE($4, stage_started_at), healthy_since = CASE WHEN $3 IS NULL THEN healthy_since ELSE NULL END, failures_after = COALESCE($5, failures_after) WHERE id = $6 AND state = $7 AND stage = $8",
    )
    .bind(c.state)
    .bind(c.message)
    .bind(c.stage.map(|s| s.0))
    .bind(c.stage.map(|s| s.1))
    .bind(c.failures_after)
    .bind(c.id)
    .bind(c.from_state)
    .bind(c.from_stage)
    .execute(&mut *tx)
    .await
    .map_err(db::DbError::from)?
    .rows_affected();
    if n == 0 {
        return Ok(false);
    }
    bump_feed(&mut tx).await?;
    if let Some(action) = c.server_action {
        let entry = crate::audit::AuditEntry {
            id: 0,
            at: 0,
            actor: "server".into(),
            role: String::new(),
            remote: "local".into(),
            action: action.into(),
            target: format!("rollout {}", c.id),
            detail: format!("{}: {}", c.patch_id, c.message),
            result: "ok".into(),
        };
        crate::audit::insert(&mut tx, &entry).await?;
    }
    tx.commit().await.map_err(db::DbError::from)?;
    Ok(true)
}

/// Machines out of date longer than the threshold, not alerted yet:
/// marked and sent to the webhook.
async fn out_of_date_alerts(f: &Fleet) -> Result<()> {
    let t = now() as i64 - crate::ops::settings().alert_out_of_date as i64;
    let rows = sqlx::query(
        "UPDATE machine_health SET alerted = 1 WHERE alerted = 0 AND out_of_date_since IS NOT NULL AND out_of_date_since <= $1 RETURNING uuid, out_of_date_since",
    )
    .bind(t)
    .fetch_all(&f.db.write)
    .await
    .map_err(db::DbError::from)?;
    for r in rows {
        crate::ops::notify(serde_json::json!({
            "event": "machine_out_of_date",
            "machine": s(&r, "uuid")?,
            "since": i(&r, "out_of_date_since")?,
        }));
    }
    Ok(())
}

/// The last history event's id: failures after it count.
async fn max_history_id(f: &Fleet) -> Result<i64> {
    Ok(sqlx::query("SELECT COALESCE(MAX(id), 0) AS n FROM history")
        .fetch_one(&f.db.read)
        .await
        .map_err(db::DbError::from)?
        .try_get("n")
        .map_err(db::DbError::from)?)
}

/// Run [`tick`] every `every` until the process ends.
pub fn spawn_timer(f: std::sync::Arc<Fleet>, every: std::time::Duration) {
    tokio::spawn(async move {
        let mut iv = tokio::time::interval(every);
        loop {
            iv.tick().await;
            if let Err(e) = tick(&f).await {
                tracing::error!("rollout decision: {}", e.message);
            }
        }
    });
}

impl Fleet {
    pub async fn rollouts(&self) -> Result<Vec<Rollout>> {
        let rows = sqlx::query(&format!("SELECT {COLS} FROM rollouts ORDER BY id DESC"))
            .fetch_all(&self.db.read)
            .await
            .map_err(db::DbError::from)?;
        rows.iter()
            .map(|r| Ok(rollout_of(r)?.0))
            .collect::<std::result::Result<_, db::DbError>>()
            .map_err(Error::from)
    }

    pub async fn rollout(&self, id: i64) -> Result<Rollout> {
        let row = sqlx::query(&format!("SELECT {COLS} FROM rollouts WHERE id = $1"))
            .bind(id)
            .fetch_optional(&self.db.read)
            .await
            .map_err(db::DbError::from)?
            .ok_or_else(|| Error::not_found(format!("no rollout {id}")))?;
        Ok(rollout_of(&row)?.0)
    }

    /// Start a rollout: its first stage starts now.
    pub async fn start_rollout(&self, req: &NewRollout, actor: &str) -> Result<Rollout> {
        check_sha(&req.sha256)?;
        if req.stages.is_empty() || req.stages.len() > 64 {
            return Err(Error::bad("a rollout has 1 to 64 stages (group names)"));
        }
        let mut seen = HashSet::new();
        for g in &req.stages {
            crate::fleet::check_group(g)?;
            if !seen.insert(g) {
                return Err(Error::bad(format!("group {g} is twice in the stages")));
            }
        }
        let gate = req.gate.clone().unwrap_or_else(|| "health".into());
        if gate != "health" && gate != "delay" {
            return Err(Error::bad(format!(
                "gate {gate:?}: use \"health\" or \"delay\""
            )));
        }
        if req.soak_secs > 365 * 86_400 {
            return Err(Error::bad("soak_secs is at most a year"));
        }
        let rec = self.patch_record(&req.sha256).await?;
        let t = now() as i64;
        let after = max_history_id(self).await?;
        let mut tx = self.db.begin().await?;
        let id: i64 = sqlx::query(
            "INSERT INTO rollouts (sha256, patch_id, stages, gate, soak_secs, state, stage, stage_started_at, healthy_since, failures_after, message, created_by, created_at) \
             VALUES ($1, $2, $3, $4, $5, 'running', 0, $6, NULL, $9, $7, $8, $6) RETURNING id",
        )
        .bind(&req.sha256)
        .bind(&rec.id)
        .bind(serde_json::to_string(&req.stages).expect("strings serialize"))
        .bind(&gate)
        .bind(req.soak_secs as i64)
        .bind(t)
        .bind(format!("stage 1 ({}) started", req.stages[0]))
        .bind(actor)
        .bind(after)
        .fetch_one(&mut *tx)
        .await
        .map_err(db::DbError::from)?
        .try_get("id")
        .map_err(db::DbError::from)?;
        bump_feed(&mut tx).await?;
        tx.commit().await.map_err(db::DbError::from)?;
        self.rollout(id).await
    }

    /// `pause`, `resume` or `rollback`.
    pub async fn rollout_action(&self, id: i64, action: &str, actor: &str) -> Result<Rollout> {
        let r = self.rollout(id).await?;
        let made = match (action, r.state.as_str()) {
            ("pause", "running") => {
                let msg = format!("paused by {actor}");
                set_state(self, Change::new(&r, "paused", &msg)).await?
            }
            ("resume", "paused") => {
                let msg = format!("resumed by {actor}; failures before now are not counted");
                let mut c = Change::new(&r, "running", &msg);
                c.failures_after = Some(max_history_id(self).await?);
                set_state(self, c).await?
            }
            ("rollback", "running" | "paused" | "done") => {
                let msg = format!(
                    "rolled back by {actor}: machines remove {} at their next sync",
                    r.patch_id
                );
                set_state(self, Change::new(&r, "rolled-back", &msg)).await?
            }
            ("pause" | "resume" | "rollback", st) => {
                return Err(Error::new(
                    axum::http::StatusCode::CONFLICT,
                    format!("rollout {id} is {st}; cannot {action} it"),
                ))
            }
            _ => {
                return Err(Error::bad(format!(
                    "unknown action {action:?}: use pause, resume or rollback"
                )))
            }
        };
        if !made {
            return Err(Error::new(
                axum::http::StatusCode::CONFLICT,
                format!("rollout {id} changed meanwhile; look at it again before you {action} it"),
            ));
        }
        if action == "resume" {
            tick(self).await?;
        }
        self.rollout(id).await
    }

    /// Offer a stored patch to these machines whatever their channel.
    pub async fn grant_oob(&self, sha: &str, machines: &[String], grant: bool) -> Result<u64> {
        check_sha(sha)?;
        self.patch_record(sha).await?;
        if machines.is_empty() || machines.len() > 10_000 {
            return Err(Error::bad("name 1 to 10000 machines"));
        }
        let mut tx = self.db.begin().await?;
        let mut n = 0;
        for u in machines {
            crate::fleet::check_uuid(u)?;
            let q = if grant {
                "INSERT INTO oob_patches (sha256, uuid, added_at) SELECT $1, uuid, $3 FROM machines WHERE uuid = $2 ON CONFLICT (sha256, uuid) DO NOTHING"
            } else {
                "DELETE FROM oob_patches WHERE sha256 = $1 AND uuid = $2 AND $3 >= 0"
            };
            n += sqlx::query(q)
                .bind(sha)
                .bind(u)
                .bind(now() as i64)
                .execute(&mut *tx)
                .await
                .map_err(db::DbError::from)?
                .rows_affected();
        }
        bump_feed(&mut tx).await?;
        tx.commit().await.map_err(db::DbError::from)?;
        Ok(n)
    }
}
