//! Fleet operations (issue 11): the API of the audit log, dashboard
//! users, rollouts, out-of-band patches, `/metrics` and VEX; the
//! dashboard's status of a machine, shared by the pages and the metrics;
//! the operations settings (alert threshold, webhook).

use crate::audit::{AuditEntry, AuditFilter};
use crate::db;
use crate::error::Result;
use crate::fleet::Fleet;
use crate::http::{ApiUser, JsonBody, P, Q};
use crate::rollout::{NewRollout, OobRequest, Rollout};
use crate::types::Role;
use crate::users::UserInfo;
use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use sqlx::Row;
use std::collections::BTreeMap;
use std::sync::{Arc, OnceLock};

type St = State<Arc<Fleet>>;

/// Operations settings of a running server.
#[derive(Debug, Clone)]
pub struct OpsSettings {
    /// A machine out of date longer than this (seconds) is alerting.
    pub alert_out_of_date: u64,
    /// `http://HOST:PORT/PATH` or `https://…` to POST alert events to
    /// (JSON).
    pub webhook: Option<String>,
    /// The TLS client of an `https://` webhook (the system's roots and
    /// the `--webhook-ca` file's certificates), made once at start by
    /// [`webhook_tls`].
    pub webhook_tls: Option<Arc<rustls::ClientConfig>>,
    /// How often running rollouts are decided on a timer.
    pub rollout_interval: std::time::Duration,
}

impl Default for OpsSettings {
    fn default() -> Self {
        OpsSettings {
            alert_out_of_date: 86_400,
            webhook: None,
            webhook_tls: None,
            rollout_interval: std::time::Duration::from_secs(10),
        }
    }
}

static SETTINGS: OnceLock<OpsSettings> = OnceLock::new();

/// Set once, at start.
pub fn configure(s: OpsSettings) {
    let _ = SETTINGS.set(s);
}

pub fn settings() -> OpsSettings {
    SETTINGS.get().cloned().unwrap_or_default()
}

/// The dashboard's statuses, in display order.
pub const STATUSES: [&str; 7] = [
    "uptodate",
    "outofdate",
    "failing",
    "stale",
    "denied",
    "pending",
    "unsupported",
];

pub fn status_label(s: &str) -> &'static str {
    match s {
        "uptodate" => "up to date",
        "outofdate" => "out of date",
        "failing" => "failing",
        "stale" => "not seen for a while",
        "denied" => "denied",
        "pending" => "pending",
        _ => "unsupported",
    }
}

/// The SQL expression of a machine's dashboard status (`m` machines,
/// `h` its machine_health row).
pub fn status_sql(f: &Fleet) -> String {
    let stale = hotsplice_fleet::now() as i64 - crate::rollout::stale_secs(f) as i64;
    format!(
        "CASE WHEN m.authz = 'denied' THEN 'denied' WHEN m.authz = 'pending' THEN 'pending' \
         WHEN m.last_seen < {stale} THEN 'stale' WHEN COALESCE(h.failing, 0) = 1 THEN 'failing' \
         WHEN m.status = 'outofdate' THEN 'outofdate' WHEN m.status = 'unsupported' THEN 'unsupported' ELSE 'uptodate' END"
    )
}

/// The SQL condition of an alerting machine.
pub fn alert_sql() -> String {
    let t = hotsplice_fleet::now() as i64 - settings().alert_out_of_date as i64;
    format!("(COALESCE(h.failing, 0) = 1 OR (h.out_of_date_since IS NOT NULL AND h.out_of_date_since <= {t}))")
}

/// Counts per status.
#[derive(Debug, Clone, Default)]
pub struct StatusCounts(pub BTreeMap<String, i64>);

impl StatusCounts {
    pub fn iter(&self) -> impl Iterator<Item = (&str, i64)> {
        STATUSES
            .iter()
            .map(|s| (*s, self.0.get(*s).copied().unwrap_or(0)))
    }
    pub fn add(&mut self, o: &StatusCounts) {
        for (k, v) in &o.0 {
            *self.0.entry(k.clone()).or_default() += v;
        }
    }
    pub fn total(&self) -> i64 {
        self.0.values().sum()
    }
}

pub async fn status_by_group(f: &Fleet) -> Result<BTreeMap<String, StatusCounts>> {
    // Counted without joining every machine to its health row: first by
    // the machine's own columns, then the (few) failing machines move
    // from their status to `failing`. Same result as `status_sql`.
    let stale = hotsplice_fleet::now() as i64 - crate::rollout::stale_secs(f) as i64;
    let plain = |authz: &str, status: &str, is_stale: bool| -> &'static str {
        match (authz, is_stale, status) {
            ("denied", _, _) => "denied",
            ("pending", _, _) => "pending",
            (_, true, _) => "stale",
            (_, _, "outofdate") => "outofdate",
            (_, _, "unsupported") => "unsupported",
            _ => "uptodate",
        }
    };
    let q = format!(
        "SELECT group_name AS g, authz, status, CASE WHEN last_seen < {stale} THEN 1 ELSE 0 END AS stale, COUNT(*) AS n FROM machines GROUP BY group_name, authz, status, stale"
    );
    let fq = format!(
        "SELECT m.group_name AS g, m.authz, m.status, COUNT(*) AS n FROM machine_health h JOIN machines m ON m.uuid = h.uuid \
         WHERE h.failing = 1 AND m.authz <> 'denied' AND m.authz <> 'pending' AND m.last_seen >= {stale} GROUP BY m.group_name, m.authz, m.status"
    );
    let (rows, failing) = tokio::join!(
        sqlx::query(&q).fetch_all(&f.db.read),
        sqlx::query(&fq).fetch_all(&f.db.read)
    );
    let mut out: BTreeMap<String, StatusCounts> = BTreeMap::new();
    for r in rows.map_err(db::DbError::from)? {
        let st = plain(
            &db::s(&r, "authz")?,
            &db::s(&r, "status")?,
            db::i(&r, "stale")? != 0,
        );
        *out.entry(db::s(&r, "g")?)
            .or_default()
            .0
            .entry(st.to_string())
            .or_default() += db::i(&r, "n")?;
    }
    for r in failing.map_err(db::DbError::from)? {
        let st = plain(&db::s(&r, "authz")?, &db::s(&r, "status")?, false);
        let n = db::i(&r, "n")?;
        let c = out.entry(db::s(&r, "g")?).or_default();
        *c.0.entry(st.to_string()).or_default() -= n;
        *c.0.entry("failing".to_string()).or_default() += n;
    }
    Ok(out)
}

pub async fn alerting_count(f: &Fleet) -> Result<i64> {
    let q = format!(
        "SELECT COUNT(*) AS n FROM machine_health h WHERE {}",
        alert_sql()
    );
    Ok(sqlx::query(&q)
        .fetch_one(&f.db.read)
        .await
        .map_err(db::DbError::from)?
        .try_get("n")
        .map_err(db::DbError::from)?)
}

/// CVE → (machines protected, machines offered a fix that did not apply it).
pub async fn cve_counts(f: &Fleet) -> Result<BTreeMap<String, (i64, i64)>> {
    let mut out: BTreeMap<String, (i64, i64)> = BTreeMap::new();
    for r in sqlx::query("SELECT cves FROM patches")
        .fetch_all(&f.db.read)
        .await
        .map_err(db::DbError::from)?
    {
        let cves: Vec<String> = serde_json::from_str(&db::s(&r, "cves")?).unwrap_or_default();
        for c in cves {
            out.entry(c).or_default();
        }
    }
    let rows = sqlx::query(
        "SELECT fixed_cves, missing_cves FROM machines WHERE fixed_cves <> '' OR missing_cves <> ''",
    )
    .fetch_all(&f.db.read)
    .await
    .map_err(db::DbError::from)?;
    for r in rows {
        for c in db::s(&r, "fixed_cves")?
            .split(',')
            .filter(|c| !c.is_empty())
        {
            out.entry(c.to_string()).or_default().0 += 1;
        }
        for c in db::s(&r, "missing_cves")?
            .split(',')
            .filter(|c| !c.is_empty())
        {
            out.entry(c.to_string()).or_default().1 += 1;
        }
    }
    Ok(out)
}

// -------------------------------------------------------------------
// The API

pub fn routes() -> Router<Arc<Fleet>> {
    Router::new()
        .route("/api/v2/audit", get(audit_list))
        .route("/api/v2/audit/export", get(audit_export))
        .route("/api/v2/users", get(list_users).post(add_user))
        .route("/api/v2/rollouts", get(list_rollouts).post(start_rollout))
        .route("/api/v2/rollouts/{id}", get(get_rollout))
        .route("/api/v2/rollouts/{id}/{action}", post(rollout_action))
        .route(
            "/api/v2/patches/{sha}/machines",
            post(grant_oob).delete(revoke_oob),
        )
        .route("/api/v2/machines/{uuid}/vex", get(machine_vex))
        .route("/metrics", get(metrics))
        .merge(crate::dashboard::routes())
}

#[utoipa::path(get, path = "/api/v2/audit", tag = "audit", params(AuditFilter),
    responses((status = 200, body = Vec<AuditEntry>)), security(("uptrack_user" = [], "uptrack_key" = [])))]
async fn audit_list(
    State(f): St,
    _u: ApiUser,
    Q(q): Q<AuditFilter>,
) -> Result<Json<Vec<AuditEntry>>> {
    Ok(Json(f.audit_entries(&q).await?))
}

#[utoipa::path(get, path = "/api/v2/audit/export", tag = "audit", params(AuditFilter),
    responses((status = 200, description = "one JSON entry a line", content_type = "application/x-ndjson", body = String)),
    security(("uptrack_user" = [], "uptrack_key" = [])))]
async fn audit_export(
    State(f): St,
    _u: ApiUser,
    Q(mut q): Q<AuditFilter>,
) -> Result<impl IntoResponse> {
    q.limit = Some(q.limit.unwrap_or(10_000));
    let mut out = String::new();
    for e in f.audit_entries(&q).await? {
        out.push_str(&serde_json::to_string(&e).expect("entries serialize"));
        out.push('\n');
    }
    Ok(([(header::CONTENT_TYPE, "application/x-ndjson")], out))
}

#[utoipa::path(get, path = "/api/v2/users", tag = "admin",
    responses((status = 200, body = Vec<UserInfo>)), security(("uptrack_user" = [], "uptrack_key" = [])))]
async fn list_users(State(f): St, u: ApiUser) -> Result<Json<Vec<UserInfo>>> {
    u.require(Role::Admin)?;
    Ok(Json(f.users().await?))
}

/// A new dashboard user.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewUser {
    pub name: String,
    pub role: Role,
    pub password: String,
}

#[utoipa::path(post, path = "/api/v2/users", tag = "admin", request_body = NewUser,
    responses((status = 200, body = UserInfo), (status = 409, body = hotsplice_fleet::api::ApiError)), security(("uptrack_user" = [], "uptrack_key" = [])))]
async fn add_user(
    State(f): St,
    u: ApiUser,
    slot: Option<axum::Extension<crate::audit::AuditSlot>>,
    JsonBody(req, _): JsonBody<NewUser>,
) -> Result<Json<UserInfo>> {
    u.require(Role::Admin)?;
    if let Some(s) = slot {
        s.target(&req.name, &format!("role {}", req.role.as_str()));
    }
    Ok(Json(f.add_user(&req.name, req.role, &req.password).await?))
}

#[utoipa::path(get, path = "/api/v2/rollouts", tag = "rollouts",
    responses((status = 200, body = Vec<Rollout>)), security(("uptrack_user" = [], "uptrack_key" = [])))]
async fn list_rollouts(State(f): St, _u: ApiUser) -> Result<Json<Vec<Rollout>>> {
    Ok(Json(f.rollouts().await?))
}

#[utoipa::path(get, path = "/api/v2/rollouts/{id}", tag = "rollouts", params(("id" = i64, Path)),
    responses((status = 200, body = Rollout), (status = 404, body = hotsplice_fleet::api::ApiError)), security(("uptrack_user" = [], "uptrack_key" = [])))]
async fn get_rollout(State(f): St, _u: ApiUser, P(id): P<i64>) -> Result<Json<Rollout>> {
    Ok(Json(f.rollout(id).await?))
}

#[utoipa::path(post, path = "/api/v2/rollouts", tag = "rollouts", request_body = NewRollout,
    responses((status = 200, body = Rollout)), security(("uptrack_user" = [], "uptrack_key" = [])))]
async fn start_rollout(
    State(f): St,
    u: ApiUser,
    slot: Option<axum::Extension<crate::audit::AuditSlot>>,
    JsonBody(req, _): JsonBody<NewRollout>,
) -> Result<Json<Rollout>> {
    u.require(Role::Operator)?;
    if let Some(s) = slot {
        s.target(&req.sha256, &format!("stages {}", req.stages.join(",")));
    }
    Ok(Json(f.start_rollout(&req, &u.name).await?))
}

#[utoipa::path(post, path = "/api/v2/rollouts/{id}/{action}", tag = "rollouts",
    params(("id" = i64, Path), ("action" = String, Path, description = "pause, resume or rollback")),
    responses((status = 200, body = Rollout), (status = 409, body = hotsplice_fleet::api::ApiError)), security(("uptrack_user" = [], "uptrack_key" = [])))]
async fn rollout_action(
    State(f): St,
    u: ApiUser,
    P((id, action)): P<(i64, String)>,
) -> Result<Json<Rollout>> {
    u.require(Role::Operator)?;
    Ok(Json(f.rollout_action(id, &action, &u.name).await?))
}

#[utoipa::path(post, path = "/api/v2/patches/{sha}/machines", tag = "rollouts", params(("sha" = String, Path)),
    request_body = OobRequest, responses((status = 200, body = u64, description = "machines newly granted")), security(("uptrack_user" = [], "uptrack_key" = [])))]
async fn grant_oob(
    State(f): St,
    u: ApiUser,
    P(sha): P<String>,
    JsonBody(req, _): JsonBody<OobRequest>,
) -> Result<Json<u64>> {
    u.require(Role::Operator)?;
    Ok(Json(f.grant_oob(&sha, &req.machines, true).await?))
}

#[utoipa::path(delete, path = "/api/v2/patches/{sha}/machines", tag = "rollouts", params(("sha" = String, Path)),
    request_body = OobRequest, responses((status = 200, body = u64, description = "grants removed")), security(("uptrack_user" = [], "uptrack_key" = [])))]
async fn revoke_oob(
    State(f): St,
    u: ApiUser,
    P(sha): P<String>,
    JsonBody(req, _): JsonBody<OobRequest>,
) -> Result<Json<u64>> {
    u.require(Role::Operator)?;
    Ok(Json(f.grant_oob(&sha, &req.machines, false).await?))
}

#[utoipa::path(get, path = "/api/v2/machines/{uuid}/vex", tag = "fleet", params(("uuid" = String, Path)),
    responses((status = 200, description = "a CSAF 2.0 VEX document", body = Object), (status = 404, body = hotsplice_fleet::api::ApiError)),
    security(("uptrack_user" = [], "uptrack_key" = [])))]
async fn machine_vex(
    State(f): St,
    _u: ApiUser,
    P(uuid): P<String>,
) -> Result<Json<serde_json::Value>> {
    crate::fleet::check_uuid(&uuid)?;
    Ok(Json(crate::vex::machine_vex(&f, &uuid).await?))
}

/// `/metrics` takes an API user like the rest (Prometheus sends them as
/// headers, `http_headers` in its scrape config).
async fn metrics(State(f): St, _u: ApiUser) -> Result<impl IntoResponse> {
    let text = crate::metrics::render(&f).await?;
    Ok((
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    ))
}

#[derive(utoipa::OpenApi)]
#[openapi(paths(
    audit_list,
    audit_export,
    list_users,
    add_user,
    list_rollouts,
    get_rollout,
    start_rollout,
    rollout_action,
    grant_oob,
    revoke_oob,
    machine_vex
))]
pub struct OpsDoc;

// -------------------------------------------------------------------
// The webhook

/// A webhook URL taken apart: `https`, `host:port` and the path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookUrl {
    pub tls: bool,
    /// `HOST:PORT`, as given (the port is added when missing).
    pub authority: String,
    /// The host name or address the certificate must be for (IPv6
    /// without its brackets).
    pub host: String,
    pub path: String,
}

/// Parse `http://HOST[:PORT]/PATH` or `https://…`; the error says what
/// to give.
pub fn webhook_url(url: &str) -> std::result::Result<WebhookUrl, String> {
    let bad = |why: &str| {
        format!("--webhook {url}: {why}; give http://HOST:PORT/PATH or https://HOST:PORT/PATH")
    };
    let (tls, rest) = if let Some(r) = url.strip_prefix("https://") {
        (true, r)
    } else if let Some(r) = url.strip_prefix("http://") {
        (false, r)
    } else {
        return Err(bad("not an http:// or https:// URL"));
    };
    let (auth, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    if auth.is_empty() || auth.contains('@') {
        return Err(bad("no host (or user information, which is not supported)"));
    }
    if path.chars().any(|c| c.is_control() || c == ' ') {
        return Err(bad("the path has spaces or control characters"));
    }
    let (host, port) = if let Some(r) = auth.strip_prefix('[') {
        let (h, after) = r
            .split_once(']')
            .ok_or_else(|| bad("an IPv6 address without its ']'"))?;
        (h, after.strip_prefix(':'))
    } else {
        match auth.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (auth, None),
        }
    };
    if host.is_empty() {
        return Err(bad("no host"));
    }
    let port: u16 = match port {
        Some(p) => p.parse().map_err(|_| bad("the port is not a number"))?,
        None if tls => 443,
        None => 80,
    };
    let authority = if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    };
    Ok(WebhookUrl {
        tls,
        authority,
        host: host.to_string(),
        path: path.to_string(),
    })
}

/// Check `--webhook` and, for `https://`, make its TLS client (with
/// `--webhook-ca`): what `run` does before it serves.
pub fn webhook_client(
    url: Option<&str>,
    ca: Option<&std::path::Path>,
) -> std::result::Result<Option<Arc<rustls::ClientConfig>>, String> {
    let Some(url) = url else { return Ok(None) };
    if webhook_url(url)?.tls {
        return webhook_tls(ca).map(Some);
    }
    if let Some(ca) = ca {
        return Err(format!(
            "--webhook-ca {}: the webhook {url} is not https://",
            ca.display()
        ));
    }
    Ok(None)
}

/// The TLS client of an `https://` webhook: the system's roots
/// (rustls-native-certs) and the certificates of `ca` (PEM), if given.
pub fn webhook_tls(
    ca: Option<&std::path::Path>,
) -> std::result::Result<Arc<rustls::ClientConfig>, String> {
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_native_certs::load_native_certs().certs {
        let _ = roots.add(c);
    }
    if let Some(ca) = ca {
        let what = format!("--webhook-ca {}", ca.display());
        let bytes = hotsplice_store::read_regular(
            ca,
            "CA certificate file",
            hotsplice_store::MAX_CONFIG_FILE,
            hotsplice_store::Links::Follow,
        )
        .map_err(|e| format!("{what}: {e}"))?;
        let mut n = 0;
        for c in rustls_pemfile::certs(&mut &bytes[..]) {
            let c = c.map_err(|e| format!("{what}: {e}"))?;
            roots.add(c).map_err(|e| format!("{what}: {e}"))?;
            n += 1;
        }
        if n == 0 {
            return Err(format!(
                "{what}: no PEM certificate (-----BEGIN CERTIFICATE-----) in the file"
            ));
        }
    }
    if roots.is_empty() {
        return Err("an https:// webhook needs a CA: the system has none installed (ca-certificates) and --webhook-ca is not given".into());
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(cfg))
}

/// POST `event` (JSON) to the configured webhook, in the background; the
/// outcome is logged. Over `https://` the receiver's certificate is
/// checked against the system's roots and `--webhook-ca`.
pub fn notify(event: serde_json::Value) {
    let s = settings();
    let Some(url) = s.webhook else {
        return;
    };
    tokio::spawn(async move {
        match post_json(&url, s.webhook_tls, &event.to_string()).await {
            Ok(status) if (200..300).contains(&status) => {
                tracing::debug!(%url, status, "webhook delivered")
            }
            Ok(status) => tracing::warn!(%url, status, "the webhook answered with an error"),
            Err(e) => tracing::warn!(%url, "the webhook failed: {e}"),
        }
    });
}

/// A minimal HTTP/1.1 POST, over TLS for `https://` (with `tls`); the
/// answer's status code.
pub async fn post_json(
    url: &str,
    tls: Option<Arc<rustls::ClientConfig>>,
    body: &str,
) -> std::io::Result<u16> {
    let u = webhook_url(url).map_err(std::io::Error::other)?;
    let io = async {
        let tcp = tokio::net::TcpStream::connect(&u.authority).await?;
        if u.tls {
            let cfg = tls.ok_or_else(|| {
                std::io::Error::other("an https:// webhook without a TLS configuration")
            })?;
            let name = rustls::pki_types::ServerName::try_from(u.host.clone())
                .map_err(|e| std::io::Error::other(format!("host {}: {e}", u.host)))?;
            let s = tokio_rustls::TlsConnector::from(cfg)
                .connect(name, tcp)
                .await
                .map_err(|e| std::io::Error::other(format!("TLS with {}: {e}", u.authority)))?;
            exchange(s, &u, body).await
        } else {
            exchange(tcp, &u, body).await
        }
    };
    tokio::time::timeout(std::time::Duration::from_secs(10), io)
        .await
        .map_err(|_| std::io::Error::other("the webhook did not answer within 10 s"))?
}

/// Write the request, read the status line.
async fn exchange<S>(mut s: S, u: &WebhookUrl, body: &str) -> std::io::Result<u16>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let req = format!(
        "POST {} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\nUser-Agent: hotsplice-server\r\n\r\n{body}",
        u.path,
        u.authority,
        body.len()
    );
    s.write_all(req.as_bytes()).await?;
    s.flush().await?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 1024];
    while buf.len() < 4096 {
        let n = s.read(&mut chunk).await?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
        if buf.windows(2).any(|w| w == b"\r\n") {
            break;
        }
    }
    let line = String::from_utf8_lossy(&buf);
    line.split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| std::io::Error::other("the webhook's answer is not HTTP"))
}

#[cfg(test)]
mod tests {
    use super::webhook_url;

    #[test]
    fn webhook_urls() {
        let u = webhook_url("https://hooks.example.org/a/b?x=1").unwrap();
        assert!(u.tls);
        assert_eq!(u.authority, "hooks.example.org:443");
        assert_eq!(u.host, "hooks.example.org");
        assert_eq!(u.path, "/a/b?x=1");
        let u = webhook_url("http://127.0.0.1:9000").unwrap();
        assert!(!u.tls);
        assert_eq!(
            (u.authority.as_str(), u.path.as_str()),
            ("127.0.0.1:9000", "/")
        );
        let u = webhook_url("https://[::1]:8443/h").unwrap();
        assert_eq!(
            (u.authority.as_str(), u.host.as_str()),
            ("[::1]:8443", "::1")
        );
        for bad in [
            "ftp://x/",
            "https:///p",
            "http://user@host/",
            "http://host:port/",
            "https://[::1/",
            "http://h/a b",
        ] {
            assert!(webhook_url(bad).is_err(), "{bad}");
        }
    }
}
