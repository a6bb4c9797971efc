//! The audit log: every change made through the server (who, what, when,
//! from where, with which result), in an append-only table. Nothing in
//! the API updates or deletes a row; `GET /api/v2/audit` lists them and
//! `GET /api/v2/audit/export` gives JSON lines.
//!
//! A middleware ([`layer`]) records every request that is not a read
//! (GET/HEAD) and not a machine's check-in (those are the machine's own
//! history): the handler's credential extractor names the actor through
//! an [`AuditSlot`] in the request's extensions, and a handler may add a
//! target and detail.

use crate::db::{self, i, s};
use crate::error::{Error, Result};
use crate::fleet::Fleet;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::Method;
use axum::middleware::Next;
use axum::response::Response;
use hotsplice_fleet::now;
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

/// One entry of the audit log.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct AuditEntry {
    pub id: i64,
    /// Seconds since the epoch.
    pub at: u64,
    /// The API user, the dashboard user, `machine`, `cli`, `server` (a
    /// rollout's stage decided by the server itself) or `anonymous`.
    pub actor: String,
    /// The actor's role (empty when none).
    pub role: String,
    /// The peer's address (`local` for the command line).
    pub remote: String,
    /// What was asked: `METHOD /path` or a named action.
    pub action: String,
    /// What it was asked of (a machine, a patch, a user…), when known.
    pub target: String,
    pub detail: String,
    /// The HTTP status, and the error message when it failed.
    pub result: String,
}

/// What the middleware learns from the handler.
#[derive(Debug, Default, Clone)]
pub struct AuditInfo {
    pub actor: Option<String>,
    pub role: Option<String>,
    pub target: String,
    pub detail: String,
}

/// Shared between the middleware and the handler.
#[derive(Debug, Default, Clone)]
pub struct AuditSlot(pub Arc<Mutex<AuditInfo>>);

impl AuditSlot {
    pub fn actor(&self, name: &str, role: &str) {
        let mut g = self.0.lock().expect("audit slot");
        g.actor = Some(name.to_string());
        g.role = Some(role.to_string());
    }
    pub fn target(&self, target: &str, detail: &str) {
        let mut g = self.0.lock().expect("audit slot");
        g.target = target.to_string();
        g.detail = detail.to_string();
    }
}

/// Filters of `GET /api/v2/audit`.
#[derive(Debug, Clone, Default, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct AuditFilter {
    pub actor: Option<String>,
    /// Entries whose action contains this text.
    pub action: Option<String>,
    /// Entries whose target is this.
    pub target: Option<String>,
    /// Entries at or after (seconds since the epoch).
    pub since: Option<u64>,
    /// Entries before.
    pub until: Option<u64>,
    /// Entries with an id above this (paging).
    pub after_id: Option<i64>,
    /// At most this many (default 1000, at most 10000).
    pub limit: Option<u32>,
}

fn is_machine_checkin(path: &str) -> bool {
    path.starts_with("/api/v2/machines/") && path.ends_with("/checkin")
}

/// The middleware.
pub async fn layer(State(f): State<Arc<Fleet>>, mut req: Request, next: Next) -> Response {
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    if method == Method::GET || method == Method::HEAD || is_machine_checkin(&path) {
        return next.run(req).await;
    }
    let remote = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip().to_string())
        .unwrap_or_else(|| "unknown".into());
    let slot = AuditSlot::default();
    // The user a request claims to be (role empty: not verified); the
    // credential extractor replaces it with the verified user and role.
    if let Some(u) = req
        .headers()
        .get(hotsplice_fleet::api::USER_HEADER)
        .and_then(|v| v.to_str().ok())
    {
        slot.actor(&u.chars().take(128).collect::<String>(), "");
    }
    req.extensions_mut().insert(slot.clone());
    let res = next.run(req).await;
    let status = res.status();
    let (res, result) = if status.is_client_error() || status.is_server_error() {
        let (parts, body) = res.into_parts();
        let bytes = axum::body::to_bytes(body, 64 * 1024)
            .await
            .unwrap_or_default();
        let msg = serde_json::from_slice::<serde_json::Value>(&bytes)
            .ok()
            .and_then(|v| v["error"].as_str().map(String::from))
            .unwrap_or_default();
        (
            Response::from_parts(parts, axum::body::Body::from(bytes)),
            format!("{} {msg}", status.as_u16()).trim().to_string(),
        )
    } else {
        (res, status.as_u16().to_string())
    };
    let info = slot.0.lock().expect("audit slot").clone();
    let actor = info.actor.unwrap_or_else(|| {
        if path == hotsplice_fleet::api::REGISTER {
            "machine".into()
        } else {
            "anonymous".into()
        }
    });
    let entry = AuditEntry {
        id: 0,
        at: now(),
        actor,
        role: info.role.unwrap_or_default(),
        remote,
        action: format!("{method} {path}"),
        target: info.target,
        detail: info.detail,
        result,
    };
    if let Err(e) = f.audit(&entry).await {
        tracing::error!("cannot write the audit log: {}", e.message);
    }
    res
}

fn insert_query(
    e: &AuditEntry,
) -> sqlx::query::Query<'static, sqlx::Any, sqlx::any::AnyArguments<'static>> {
    sqlx::query(
        "INSERT INTO audit (at, actor, role, remote, action, target, detail, result) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
    )
    .bind(now() as i64)
    .bind(clean(&e.actor))
    .bind(clean(&e.role))
    .bind(clean(&e.remote))
    .bind(clean(&e.action))
    .bind(clean(&e.target))
    .bind(clean(&e.detail))
    .bind(clean(&e.result))
}

/// Append an entry inside `tx`, with the change it records.
pub async fn insert(tx: &mut db::Tx, e: &AuditEntry) -> Result<()> {
    insert_query(e)
        .execute(&mut **tx)
        .await
        .map_err(db::DbError::from)?;
    Ok(())
}

fn clean(t: &str) -> String {
    t.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(2048)
        .collect()
}

impl Fleet {
    /// Append an entry (its `id` and `at` are the database's and now).
    pub async fn audit(&self, e: &AuditEntry) -> Result<()> {
        insert_query(e)
            .execute(&self.db.write)
            .await
            .map_err(db::DbError::from)?;
        Ok(())
    }

    pub async fn audit_entries(&self, f: &AuditFilter) -> Result<Vec<AuditEntry>> {
        for v in [&f.actor, &f.action, &f.target].into_iter().flatten() {
            crate::fleet::check_text("audit filter", v)?;
        }
        let limit = f.limit.unwrap_or(1000).min(10_000) as i64;
        let mut q = String::from(
            "SELECT id, at, actor, role, remote, action, target, detail, result FROM audit WHERE 1 = 1",
        );
        let mut texts: Vec<String> = Vec::new();
        let mut nums: Vec<i64> = Vec::new();
        let mut n = 0;
        let mut next = || {
            n += 1;
            n
        };
        // Text arguments first, then numbers: placeholders are numbered in
        // the order they are bound.
        if let Some(v) = &f.actor {
            q.push_str(&format!(" AND actor = ${}", next()));
            texts.push(v.clone());
        }
        if let Some(v) = &f.action {
            q.push_str(&format!(" AND action LIKE ${}", next()));
            texts.push(format!("%{}%", v.replace(['%', '_', '\\'], "")));
        }
        if let Some(v) = &f.target {
            q.push_str(&format!(" AND target = ${}", next()));
            texts.push(v.clone());
        }
        if let Some(v) = f.since {
            q.push_str(&format!(" AND at >= ${}", next()));
            nums.push(v as i64);
        }
        if let Some(v) = f.until {
            q.push_str(&format!(" AND at < ${}", next()));
            nums.push(v as i64);
        }
        if let Some(v) = f.after_id {
            q.push_str(&format!(" AND id > ${}", next()));
            nums.push(v);
        }
        q.push_str(&format!(" ORDER BY id LIMIT ${}", next()));
        nums.push(limit);
        let mut query = sqlx::query(&q);
        for t in texts {
            query = query.bind(t);
        }
        for v in nums {
            query = query.bind(v);
        }
        let rows = query
            .fetch_all(&self.db.read)
            .await
            .map_err(db::DbError::from)?;
        rows.iter()
            .map(|r| {
                Ok(AuditEntry {
                    id: i(r, "id")?,
                    at: i(r, "at")? as u64,
                    actor: s(r, "actor")?,
                    role: s(r, "role")?,
                    remote: s(r, "remote")?,
                    action: s(r, "action")?,
                    target: s(r, "target")?,
                    detail: s(r, "detail")?,
                    result: s(r, "result")?,
                })
            })
            .collect::<std::result::Result<_, db::DbError>>()
            .map_err(Error::from)
    }
}
