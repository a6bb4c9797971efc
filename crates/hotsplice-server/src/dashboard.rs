//! The dashboard: server-rendered HTML under `/ui/`, a stylesheet and one
//! small script embedded in the binary. Login opens a server-side session
//! (cookie `hs_session`: random, HttpOnly, SameSite=Strict); every form
//! post carries the session's CSRF token. Buttons a role may not use are
//! not rendered, and the handlers refuse them (403) anyway.

use crate::audit::AuditSlot;
use crate::db;
use crate::error::{Error, Result};
use crate::fleet::{check_uuid, rfc3339, Fleet};
use crate::ops::{self, status_label, STATUSES};
use crate::types::Role;
use crate::users::{Session, SESSION_COOKIE, SESSION_SECS};
use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::Router;
use serde::Deserialize;
use std::collections::HashMap;
use std::fmt::Write;
use std::sync::Arc;

type St = State<Arc<Fleet>>;

pub const CSS: &str = include_str!("../assets/dashboard.css");
pub const JS: &str = include_str!("../assets/dashboard.js");
/// Machines per page of the list.
pub const PAGE: i64 = 50;

pub fn routes() -> Router<Arc<Fleet>> {
    Router::new()
        .route("/", get(|| async { Redirect::to("/ui/") }))
        .route("/ui", get(|| async { Redirect::to("/ui/") }))
        .route("/ui/", get(overview))
        .route("/ui/assets/dashboard.css", get(css))
        .route("/ui/assets/dashboard.js", get(js))
        .route("/ui/login", get(login_page).post(login))
        .route("/ui/logout", post(logout))
        .route("/ui/machines/{uuid}", get(machine_page))
        .route("/ui/machines/{uuid}/authorize", post(ui_authorize))
        .route("/ui/machines/{uuid}/group", post(ui_group))
        .route("/ui/cves/{cve}", get(cve_page))
        .route("/ui/patches", get(patches_page))
        .route("/ui/patches/promote", post(ui_promote))
        .route(
            "/ui/patches/upload",
            post(ui_upload).layer(axum::extract::DefaultBodyLimit::max(
                hotsplice_fleet::feed::MAX_PATCH_BYTES as usize,
            )),
        )
        .route("/ui/rollouts", get(rollouts_page).post(ui_start_rollout))
        .route("/ui/rollouts/{id}/{action}", post(ui_rollout_action))
        .route("/ui/audit", get(audit_page))
}

async fn css() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "text/css; charset=utf-8")], CSS)
}
async fn js() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
        JS,
    )
}

/// HTML-escape.
pub fn esc(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => o.push_str("&amp;"),
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '"' => o.push_str("&quot;"),
            '\'' => o.push_str("&#39;"),
            c => o.push(c),
        }
    }
    o
}

/// Percent-encode for a query string.
pub fn enc(s: &str) -> String {
    let mut o = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            o.push(b as char);
        } else {
            let _ = write!(o, "%{b:02X}");
        }
    }
    o
}

fn cookie<'a>(h: &'a HeaderMap, name: &str) -> Option<&'a str> {
    h.get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// A logged-in dashboard user.
pub struct UiUser(pub Session);

impl UiUser {
    fn may(&self, r: Role) -> bool {
        self.0.role >= r
    }
    fn need(&self, r: Role) -> Result<()> {
        if !self.may(r) {
            return Err(Error::forbidden(format!(
                "user {} has role {}; this needs role {} or higher",
                self.0.user,
                self.0.role.as_str(),
                r.as_str()
            )));
        }
        Ok(())
    }
    fn csrf(&self, token: &str) -> Result<()> {
        if token.is_empty() || token != self.0.csrf {
            return Err(Error::forbidden(
                "missing or wrong CSRF token: reload the page and submit again",
            ));
        }
        Ok(())
    }
    fn field(&self) -> String {
        format!(
            "<input type=\"hidden\" name=\"csrf\" value=\"{}\">",
            esc(&self.0.csrf)
        )
    }
}

impl FromRequestParts<Arc<Fleet>> for UiUser {
    type Rejection = Response;
    async fn from_request_parts(
        parts: &mut Parts,
        f: &Arc<Fleet>,
    ) -> std::result::Result<Self, Response> {
        let c = cookie(&parts.headers, SESSION_COOKIE).unwrap_or("");
        match f.session(c).await {
            Ok(Some(s)) => {
                if let Some(slot) = parts.extensions.get::<AuditSlot>() {
                    slot.actor(&s.user, s.role.as_str());
                }
                Ok(UiUser(s))
            }
            Ok(None) => Err(Redirect::to("/ui/login").into_response()),
            Err(e) => Err(e.into_response()),
        }
    }
}

/// A url-encoded form, with a JSON error.
pub struct UiForm<T>(pub T);

impl<T: serde::de::DeserializeOwned, S: Send + Sync> FromRequest<S> for UiForm<T> {
    type Rejection = Error;
    async fn from_request(req: Request, state: &S) -> Result<Self> {
        let axum::Form(v) = axum::Form::<T>::from_request(req, state)
            .await
            .map_err(|e| Error::bad(format!("bad form: {}", e.body_text())))?;
        Ok(UiForm(v))
    }
}

fn page(u: Option<&UiUser>, title: &str, body: &str) -> Html<String> {
    let nav = match u {
        Some(u) => format!(
            "<a href=\"/ui/\">Fleet</a><a href=\"/ui/patches\">Patches</a><a href=\"/ui/rollouts\">Rollouts</a><a href=\"/ui/audit\">Audit</a>\
             <span class=\"who\">{} <small>({})</small> <form class=\"inline\" method=\"post\" action=\"/ui/logout\">{}<button id=\"logout\">Log out</button></form></span>",
            esc(&u.0.user),
            u.0.role.as_str(),
            u.field()
        ),
        None => String::new(),
    };
    Html(format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>{} · hotsplice</title>\
         <link rel=\"stylesheet\" href=\"/ui/assets/dashboard.css\"><script src=\"/ui/assets/dashboard.js\" defer></script></head>\
         <body><header><strong>hotsplice</strong>{nav}</header><main><h1>{}</h1>{body}</main></body></html>",
        esc(title),
        esc(title)
    ))
}

fn badge(st: &str) -> String {
    format!(
        "<span class=\"st st-{st}\" data-status=\"{st}\">{}</span>",
        status_label(st)
    )
}

fn when(t: u64) -> String {
    if t == 0 {
        "never".into()
    } else {
        rfc3339(t)
    }
}

// -------------------------------------------------------------------
// Login

async fn login_page() -> Html<String> {
    login_form("")
}

fn login_form(err: &str) -> Html<String> {
    let e = if err.is_empty() {
        String::new()
    } else {
        format!("<p class=\"error\">{}</p>", esc(err))
    };
    page(
        None,
        "Log in",
        &format!(
            "<div class=\"login\">{e}<form method=\"post\" action=\"/ui/login\">\
             <label>User <input name=\"user\" id=\"user\" autocomplete=\"username\" required></label>\
             <label>Password <input name=\"password\" id=\"password\" type=\"password\" autocomplete=\"current-password\" required></label>\
             <button id=\"login\">Log in</button></form></div>"
        ),
    )
}

#[derive(Deserialize)]
struct LoginForm {
    user: String,
    password: String,
}

async fn login(
    State(f): St,
    slot: Option<axum::Extension<AuditSlot>>,
    UiForm(form): UiForm<LoginForm>,
) -> Response {
    if let Some(s) = &slot {
        s.actor(&form.user.chars().take(128).collect::<String>(), "");
        s.target(&form.user.chars().take(128).collect::<String>(), "login");
    }
    match f.login(&form.user, &form.password).await {
        Ok((sess, role)) => {
            if let Some(s) = &slot {
                s.actor(&form.user, role.as_str());
            }
            let c = format!(
                "{SESSION_COOKIE}={}; Path=/; HttpOnly; SameSite=Strict; Max-Age={SESSION_SECS}{}",
                sess.cookie,
                if f.settings.secure_cookies {
                    "; Secure"
                } else {
                    ""
                }
            );
            (
                StatusCode::SEE_OTHER,
                [(header::SET_COOKIE, c), (header::LOCATION, "/ui/".into())],
            )
                .into_response()
        }
        Err(e) if e.status == StatusCode::UNAUTHORIZED => (
            StatusCode::UNAUTHORIZED,
            login_form("Unknown user or wrong password."),
        )
            .into_response(),
        Err(e) => e.into_response(),
    }
}

#[derive(Deserialize)]
struct CsrfForm {
    #[serde(default)]
    csrf: String,
}

async fn logout(
    State(f): St,
    u: UiUser,
    headers: HeaderMap,
    UiForm(form): UiForm<CsrfForm>,
) -> Result<Response> {
    u.csrf(&form.csrf)?;
    f.logout(cookie(&headers, SESSION_COOKIE).unwrap_or(""))
        .await?;
    Ok((
        StatusCode::SEE_OTHER,
        [
            (
                header::SET_COOKIE,
                format!("{SESSION_COOKIE}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0"),
            ),
            (header::LOCATION, "/ui/login".into()),
        ],
    )
        .into_response())
}

// -------------------------------------------------------------------
// Overview and the machine list

/// The list's filters, sort and page.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct ListQuery {
    pub status: Option<String>,
    pub group: Option<String>,
    pub kernel: Option<String>,
    pub cve: Option<String>,
    pub q: Option<String>,
    pub sort: Option<String>,
    pub dir: Option<String>,
    pub page: Option<i64>,
}

impl ListQuery {
    fn link(&self, change: &[(&str, &str)]) -> String {
        let mut m: Vec<(String, String)> = [
            ("status", &self.status),
            ("group", &self.group),
            ("kernel", &self.kernel),
            ("cve", &self.cve),
            ("q", &self.q),
            ("sort", &self.sort),
            ("dir", &self.dir),
        ]
        .iter()
        .filter_map(|(k, v)| {
            v.as_ref()
                .filter(|v| !v.is_empty())
                .map(|v| (k.to_string(), v.clone()))
        })
        .collect();
        if let Some(p) = self.page {
            m.push(("page".into(), p.to_string()));
        }
        for (k, v) in change {
            m.retain(|(a, _)| a != k);
            if !v.is_empty() {
                m.push((k.to_string(), v.to_string()));
            }
        }
        let qs: Vec<String> = m.iter().map(|(k, v)| format!("{k}={}", enc(v))).collect();
        format!("/ui/?{}", qs.join("&"))
    }
}

/// A row of the list.
#[derive(Debug, Clone)]
pub struct ListRow {
    pub uuid: String,
    pub hostname: String,
    pub group: String,
    pub kernel: String,
    pub last_seen: u64,
    pub status: String,
    pub alert: bool,
    pub fixed_cves: String,
    pub missing_cves: String,
}

fn nonempty(v: &Option<String>) -> Option<&str> {
    v.as_deref().map(str::trim).filter(|v| !v.is_empty())
}

/// One page of the filtered, sorted list, and whether there is more.
pub async fn list_page(f: &Fleet, q: &ListQuery) -> Result<(Vec<ListRow>, bool)> {
    // Without a status filter or order, the page is chosen from the
    // machines alone and the health of its rows looked up after (no join
    // of every machine).
    let light = nonempty(&q.status).is_none() && q.sort.as_deref() != Some("status");
    let full = ops::status_sql(f);
    let mut sql = if light {
        let plain = full.replace("WHEN COALESCE(h.failing, 0) = 1 THEN 'failing' ", "");
        format!(
            "SELECT m.uuid, m.hostname, m.group_name, m.effective_kernel, m.last_seen, m.fixed_cves, m.missing_cves, {plain} AS st, 0 AS alert FROM machines m WHERE 1 = 1"
        )
    } else {
        format!(
            "SELECT m.uuid, m.hostname, m.group_name, m.effective_kernel, m.last_seen, m.fixed_cves, m.missing_cves, {full} AS st, CASE WHEN {} THEN 1 ELSE 0 END AS alert \
             FROM machines m LEFT JOIN machine_health h ON h.uuid = m.uuid WHERE 1 = 1",
            ops::alert_sql()
        )
    };
    let st = full;
    let mut args: Vec<String> = Vec::new();
    let mut n = 0;
    let mut arg = |sql: &mut String, clause: &str, v: String, times: usize| {
        let mut c = clause.to_string();
        for _ in 0..times {
            n += 1;
            c = c.replacen("$?", &format!("${n}"), 1);
            args.push(v.clone());
        }
        sql.push_str(&c);
    };
    for v in [&q.status, &q.group, &q.kernel, &q.cve, &q.q]
        .into_iter()
        .filter_map(nonempty)
    {
        crate::fleet::check_text("filter", v)?;
    }
    if let Some(v) = nonempty(&q.status) {
        if !STATUSES.contains(&v) {
            return Err(Error::bad(format!(
                "status {v:?}: use one of {}",
                STATUSES.join(", ")
            )));
        }
        arg(&mut sql, &format!(" AND ({st}) = $?"), v.into(), 1);
    }
    if let Some(v) = nonempty(&q.group) {
        arg(&mut sql, " AND m.group_name = $?", v.into(), 1);
    }
    if let Some(v) = nonempty(&q.kernel) {
        arg(
            &mut sql,
            " AND (m.original_kernel = $? OR m.effective_kernel = $?)",
            v.into(),
            2,
        );
    }
    if let Some(v) = nonempty(&q.cve) {
        let pat = format!("%,{},%", v.replace(['%', '_', '\\'], ""));
        arg(
            &mut sql,
            " AND (m.fixed_cves LIKE $? OR m.missing_cves LIKE $?)",
            pat,
            2,
        );
    }
    if let Some(v) = nonempty(&q.q) {
        arg(
            &mut sql,
            " AND m.hostname LIKE $?",
            format!("%{}%", v.replace(['%', '_', '\\'], "")),
            1,
        );
    }
    let col = match q.sort.as_deref().unwrap_or("hostname") {
        "group" => "m.group_name",
        "kernel" => "m.effective_kernel",
        "last_seen" => "m.last_seen",
        "status" => "st",
        _ => "m.hostname",
    };
    let dir = if q.dir.as_deref() == Some("desc") {
        "DESC"
    } else {
        "ASC"
    };
    let page = q.page.unwrap_or(0).clamp(0, 1_000_000);
    let _ = write!(
        sql,
        " ORDER BY {col} {dir}, m.uuid LIMIT {} OFFSET {}",
        PAGE + 1,
        page * PAGE
    );
    let mut query = sqlx::query(&sql);
    for a in args {
        query = query.bind(a);
    }
    let rows = query
        .fetch_all(&f.db.read)
        .await
        .map_err(db::DbError::from)?;
    let more = rows.len() as i64 > PAGE;
    let mut out = Vec::new();
    for r in rows.iter().take(PAGE as usize) {
        out.push(ListRow {
            uuid: db::s(r, "uuid")?,
            hostname: db::s(r, "hostname")?,
            group: db::s(r, "group_name")?,
            kernel: db::s(r, "effective_kernel")?,
            last_seen: db::i(r, "last_seen")? as u64,
            status: db::s(r, "st")?,
            alert: db::i(r, "alert")? != 0,
            fixed_cves: db::s(r, "fixed_cves")?,
            missing_cves: db::s(r, "missing_cves")?,
        });
    }
    if light && !out.is_empty() {
        let marks: Vec<String> = (1..=out.len()).map(|k| format!("${k}")).collect();
        let hq = format!(
            "SELECT uuid, failing, out_of_date_since FROM machine_health WHERE uuid IN ({})",
            marks.join(", ")
        );
        let mut query = sqlx::query(&hq);
        for r in &out {
            query = query.bind(r.uuid.clone());
        }
        let alert_before = hotsplice_fleet::now() as i64 - ops::settings().alert_out_of_date as i64;
        let mut health = HashMap::new();
        for h in query
            .fetch_all(&f.db.read)
            .await
            .map_err(db::DbError::from)?
        {
            let failing = db::i(&h, "failing")? != 0;
            let ood = db::oi(&h, "out_of_date_since")?;
            health.insert(
                db::s(&h, "uuid")?,
                (failing, failing || ood.is_some_and(|t| t <= alert_before)),
            );
        }
        for r in &mut out {
            if let Some(&(failing, alert)) = health.get(&r.uuid) {
                r.alert = alert;
                if failing && !["denied", "pending", "stale"].contains(&r.status.as_str()) {
                    r.status = "failing".into();
                }
            }
        }
    }
    Ok((out, more))
}

/// The overview page's HTML (also used by the bench).
pub async fn overview_html(f: &Fleet, u: Option<&UiUser>, q: &ListQuery) -> Result<String> {
    // The counts and the page are independent reads: run them at once
    // (separate read connections).
    let (by, alerting, page_rows) = tokio::join!(
        ops::status_by_group(f),
        ops::alerting_count(f),
        list_page(f, q)
    );
    let (by, alerting) = (by?, alerting?);
    let mut total = ops::StatusCounts::default();
    for c in by.values() {
        total.add(c);
    }
    let mut b = String::new();
    if alerting > 0 {
        let _ = write!(
            b,
            "<div class=\"banner\" id=\"alerts\">{alerting} machine(s) alerting: last sync failed, or out of date longer than {} s.</div>",
            ops::settings().alert_out_of_date
        );
    }
    let _ = write!(
        b,
        "<div class=\"cards\"><a class=\"card\" href=\"/ui/\" id=\"count-all\"><span class=\"n\">{}</span>all machines</a>",
        total.total()
    );
    for (st, n) in total.iter() {
        let _ = write!(
            b,
            "<a class=\"card\" id=\"count-{st}\" href=\"/ui/?status={st}\"><span class=\"n\">{n}</span>{}</a>",
            status_label(st)
        );
    }
    b.push_str("</div>");
    // Filters.
    let opt = |v: &Option<String>| esc(v.as_deref().unwrap_or(""));
    let _ = write!(
        b,
        "<form class=\"filters\" method=\"get\" action=\"/ui/\" id=\"filters\">\
        <label>Status <select name=\"status\"><option value=\"\">any</option>"
    );
    for st in STATUSES {
        let sel = if q.status.as_deref() == Some(st) {
            " selected"
        } else {
            ""
        };
        let _ = write!(
            b,
            "<option value=\"{st}\"{sel}>{}</option>",
            status_label(st)
        );
    }
    let _ = write!(
        b,
        "</select></label><label>Group <select name=\"group\"><option value=\"\">any</option>"
    );
    for g in by.keys() {
        let sel = if q.group.as_deref() == Some(g.as_str()) {
            " selected"
        } else {
            ""
        };
        let _ = write!(
            b,
            "<option value=\"{}\"{sel}>{}</option>",
            esc(g),
            if g.is_empty() {
                "(none)".to_string()
            } else {
                esc(g)
            }
        );
    }
    let _ = write!(
        b,
        "</select></label><label>Kernel <input name=\"kernel\" value=\"{}\"></label>\
         <label>CVE <input name=\"cve\" id=\"filter-cve\" value=\"{}\" placeholder=\"CVE-2024-1234\"></label>\
         <label>Host <input name=\"q\" value=\"{}\"></label><button id=\"apply\">Filter</button></form>",
        opt(&q.kernel),
        opt(&q.cve),
        opt(&q.q)
    );
    let (rows, more) = page_rows?;
    let head = |key: &str, name: &str| {
        let dir = if q.sort.as_deref() == Some(key) && q.dir.as_deref() != Some("desc") {
            "desc"
        } else {
            "asc"
        };
        format!(
            "<th><a href=\"{}\">{name}</a></th>",
            esc(&q.link(&[("sort", key), ("dir", dir), ("page", "")]))
        )
    };
    let _ = write!(
        b,
        "<table id=\"machines\"><thead><tr>{}{}{}{}{}<th>CVEs</th></tr></thead><tbody>",
        head("hostname", "Machine"),
        head("status", "Status"),
        head("group", "Group"),
        head("kernel", "Kernel"),
        head("last_seen", "Last seen")
    );
    for r in &rows {
        let cves = match nonempty(&q.cve) {
            Some(c) if r.fixed_cves.contains(&format!(",{c},")) => {
                format!("{} protected", esc(c))
            }
            Some(c) => format!("{} <span class=\"alert\">not applied</span>", esc(c)),
            None => {
                let fixed = r.fixed_cves.split(',').filter(|c| !c.is_empty()).count();
                let missing = r.missing_cves.split(',').filter(|c| !c.is_empty()).count();
                format!("{fixed} fixed, {missing} open")
            }
        };
        let _ = write!(
            b,
            "<tr data-uuid=\"{u}\"><td><a href=\"/ui/machines/{u}\">{}</a><br><small><code>{u}</code></small></td><td>{}{}</td><td>{}</td><td>{}</td><td>{}</td><td>{cves}</td></tr>",
            esc(&r.hostname),
            badge(&r.status),
            if r.alert { " <span class=\"alert\" title=\"alerting\">⚠ alert</span>" } else { "" },
            esc(&r.group),
            esc(&r.kernel),
            when(r.last_seen),
            u = esc(&r.uuid),
        );
    }
    if rows.is_empty() {
        b.push_str("<tr><td colspan=\"6\">No machine matches.</td></tr>");
    }
    b.push_str("</tbody></table><div class=\"pager\">");
    let p = q.page.unwrap_or(0).max(0);
    if p > 0 {
        let _ = write!(
            b,
            "<a href=\"{}\">← previous</a>",
            esc(&q.link(&[("page", &(p - 1).to_string())]))
        );
    }
    let _ = write!(b, "<span>page {}</span>", p + 1);
    if more {
        let _ = write!(
            b,
            "<a id=\"next\" href=\"{}\">next →</a>",
            esc(&q.link(&[("page", &(p + 1).to_string())]))
        );
    }
    b.push_str("</div>");
    if let Some(c) = nonempty(&q.cve) {
        let _ = write!(
            b,
            "<p><a href=\"/ui/cves/{}\">Who is protected from {}, and why not →</a></p>",
            enc(c),
            esc(c)
        );
    }
    Ok(page(u, "Fleet", &b).0)
}

async fn overview(
    State(f): St,
    u: UiUser,
    axum::extract::Query(q): axum::extract::Query<ListQuery>,
) -> Result<Html<String>> {
    Ok(Html(overview_html(&f, Some(&u), &q).await?))
}

// -------------------------------------------------------------------
// A machine

/// A machine's page's HTML (also used by the bench).
pub async fn machine_html(f: &Fleet, u: Option<&UiUser>, uuid: &str) -> Result<String> {
    check_uuid(uuid)?;
    let m = f.summary(uuid).await?;
    let h = sqlx::query(&format!(
        "SELECT {} AS st, CASE WHEN {} THEN 1 ELSE 0 END AS alert, COALESCE(h.error, '') AS error, h.out_of_date_since FROM machines m LEFT JOIN machine_health h ON h.uuid = m.uuid WHERE m.uuid = $1",
        ops::status_sql(f),
        ops::alert_sql()
    ))
    .bind(uuid)
    .fetch_one(&f.db.read)
    .await
    .map_err(db::DbError::from)?;
    let st = db::s(&h, "st")?;
    let alert = db::i(&h, "alert")? != 0;
    let error = db::s(&h, "error")?;
    let ood = db::oi(&h, "out_of_date_since")?;
    let report = f.stored_report(uuid).await?;
    let history = f.history(uuid).await?;
    let mut b = String::new();
    if alert {
        let why = if !error.is_empty() {
            format!("last sync failed: {}", esc(&error))
        } else {
            format!("out of date since {}", when(ood.unwrap_or(0) as u64))
        };
        let _ = write!(b, "<div class=\"banner\" id=\"alert\">Alert: {why}</div>");
    }
    let _ = write!(
        b,
        "<table id=\"facts\"><tbody>\
         <tr><th>Status</th><td id=\"status\">{}</td></tr>\
         <tr><th>UUID</th><td><code>{}</code></td></tr>\
         <tr><th>Authorization</th><td id=\"authorization\">{}</td></tr>\
         <tr><th>Group</th><td id=\"group\">{}</td></tr>\
         <tr><th>Address</th><td>{}</td></tr>\
         <tr><th>Booted kernel</th><td>{}</td></tr>\
         <tr><th>Effective kernel</th><td>{}</td></tr>\
         <tr><th>Last seen</th><td>{}</td></tr>\
         <tr><th>CVEs fixed live</th><td>{}</td></tr>\
         <tr><th>CVEs with a fix not applied</th><td>{}</td></tr>\
         </tbody></table>",
        badge(&st),
        esc(uuid),
        esc(&m.authorization),
        esc(&m.group),
        esc(&m.ip),
        esc(&m.original_kernel),
        esc(&m.effective_kernel),
        when(m.last_seen),
        cve_links(&m.fixed_cves),
        cve_links(&m.missing_cves),
    );
    if let Some(u) = u.filter(|u| u.may(Role::Operator)) {
        let mut opts = String::new();
        for a in ["allowed", "denied", "pending"] {
            let sel = if a == m.authorization {
                " selected"
            } else {
                ""
            };
            let _ = write!(opts, "<option{sel}>{a}</option>");
        }
        let _ = write!(
            b,
            "<h2>Actions</h2><form class=\"inline\" method=\"post\" action=\"/ui/machines/{u8}/authorize\" id=\"authorize-form\">{c}\
             <select name=\"authorization\" id=\"authorization-select\">{opts}</select> <button id=\"authorize\">Set authorization</button></form> \
             <form class=\"inline\" method=\"post\" action=\"/ui/machines/{u8}/group\" id=\"group-form\">{c}\
             <input name=\"group\" id=\"group-input\" value=\"{g}\"> <button id=\"move\">Move to group</button></form>",
            u8 = esc(uuid),
            c = u.field(),
            g = esc(&m.group)
        );
    }
    match &report {
        None => b.push_str("<p>No report yet.</p>"),
        Some(r) => {
            b.push_str("<h2>Kernel patches</h2><table id=\"kernel-patches\"><tbody>");
            for p in &r.kernel.applied {
                let _ = write!(
                    b,
                    "<tr><td><code>{}</code></td><td>{}</td></tr>",
                    esc(&p.id),
                    esc(&p.description)
                );
            }
            if r.kernel.applied.is_empty() {
                b.push_str("<tr><td>none</td></tr>");
            }
            b.push_str("</tbody></table><h2>Userspace objects</h2><table id=\"objects\"><thead><tr><th>Object</th><th>Build-id</th><th>Processes</th></tr></thead><tbody>");
            for o in r.objects.iter().take(500) {
                let _ = write!(
                    b,
                    "<tr><td>{}</td><td><code>{}</code></td><td>{}</td></tr>",
                    esc(&o.path),
                    esc(&o.build_id),
                    o.processes
                );
            }
            b.push_str("</tbody></table><h2>Processes with patches</h2><table id=\"processes\"><thead><tr><th>PID</th><th>Command</th><th>Patches applied</th></tr></thead><tbody>");
            for p in r.processes.iter().take(500) {
                let _ = write!(
                    b,
                    "<tr><td>{}</td><td>{}</td><td>{}</td></tr>",
                    p.pid,
                    esc(&p.comm),
                    esc(&p.patches.join(", "))
                );
            }
            b.push_str("</tbody></table>");
            if let Some(run) = &r.last_run {
                let _ = write!(
                    b,
                    "<h2>Last sync ({})</h2><ul id=\"last-run\">",
                    when(run.at)
                );
                for a in &run.applied {
                    let _ = write!(
                        b,
                        "<li>applied {} on {}</li>",
                        esc(&a.patch),
                        esc(&a.target)
                    );
                }
                for a in &run.removed {
                    let _ = write!(
                        b,
                        "<li>removed {} from {}</li>",
                        esc(&a.patch),
                        esc(&a.target)
                    );
                }
                for x in &run.failures {
                    let _ = write!(
                        b,
                        "<li class=\"alert\">failed {} on {}: {}</li>",
                        esc(&x.patch),
                        esc(&x.target),
                        esc(&x.error)
                    );
                }
                b.push_str("</ul>");
            }
        }
    }
    b.push_str("<h2>History</h2><table id=\"history\"><thead><tr><th>When</th><th>Event</th><th>Patch</th><th>Target</th><th>Detail</th><th>By</th></tr></thead><tbody>");
    for e in history.iter().rev().take(200) {
        let _ = write!(
            b,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            when(e.at),
            esc(&e.event),
            esc(&e.patch),
            esc(&e.target),
            esc(&e.detail),
            esc(&e.actor)
        );
    }
    b.push_str("</tbody></table>");
    Ok(page(u, &m.hostname, &b).0)
}

fn cve_links(cves: &[String]) -> String {
    if cves.is_empty() {
        return "none".into();
    }
    cves.iter()
        .map(|c| format!("<a href=\"/ui/cves/{}\">{}</a>", enc(c), esc(c)))
        .collect::<Vec<_>>()
        .join(", ")
}

async fn machine_page(
    State(f): St,
    u: UiUser,
    crate::http::P(uuid): crate::http::P<String>,
) -> Result<Html<String>> {
    Ok(Html(machine_html(&f, Some(&u), &uuid).await?))
}

#[derive(Deserialize)]
struct AuthorizeForm {
    #[serde(default)]
    csrf: String,
    authorization: String,
}

async fn ui_authorize(
    State(f): St,
    u: UiUser,
    slot: Option<axum::Extension<AuditSlot>>,
    crate::http::P(uuid): crate::http::P<String>,
    UiForm(form): UiForm<AuthorizeForm>,
) -> Result<Response> {
    if let Some(s) = slot {
        s.target(&uuid, &format!("authorization {}", form.authorization));
    }
    u.csrf(&form.csrf)?;
    u.need(Role::Operator)?;
    check_uuid(&uuid)?;
    f.set_authorization(&uuid, &form.authorization, &u.0.user)
        .await?;
    Ok(Redirect::to(&format!("/ui/machines/{uuid}")).into_response())
}

#[derive(Deserialize)]
struct GroupForm {
    #[serde(default)]
    csrf: String,
    group: String,
}

async fn ui_group(
    State(f): St,
    u: UiUser,
    slot: Option<axum::Extension<AuditSlot>>,
    crate::http::P(uuid): crate::http::P<String>,
    UiForm(form): UiForm<GroupForm>,
) -> Result<Response> {
    if let Some(s) = slot {
        s.target(&uuid, &format!("group {}", form.group));
    }
    u.csrf(&form.csrf)?;
    u.need(Role::Operator)?;
    check_uuid(&uuid)?;
    f.set_group(&uuid, form.group.trim(), &u.0.user).await?;
    Ok(Redirect::to(&format!("/ui/machines/{uuid}")).into_response())
}

// -------------------------------------------------------------------
// A CVE

async fn cve_page(
    State(f): St,
    u: UiUser,
    crate::http::P(cve): crate::http::P<String>,
) -> Result<Html<String>> {
    crate::fleet::check_text("cve", &cve)?;
    let like = format!("%,{},%", cve.replace(['%', '_', '\\'], ""));
    // The patches that fix it, and the objects they fix.
    let patches: Vec<_> = f
        .patch_records(None, None)
        .await?
        .into_iter()
        .filter(|p| p.cves.contains(&cve))
        .collect();
    let user_ids: HashMap<String, String> = patches
        .iter()
        .filter(|p| p.kind == hotsplice_fleet::feed::PatchKind::User)
        .map(|p| (p.id.clone(), p.build_id.clone()))
        .collect();
    let mut b = String::new();
    let _ = write!(b, "<p>Fixed by: {}</p>", {
        let v: Vec<String> = patches
            .iter()
            .map(|p| {
                format!(
                    "<code>{}</code> ({}, {})",
                    esc(&p.id),
                    esc(&p.target_name),
                    crate::fleet::kind_str(p.kind)
                )
            })
            .collect();
        if v.is_empty() {
            "no stored patch".into()
        } else {
            v.join(", ")
        }
    });
    let q = "SELECT m.uuid, m.hostname, m.group_name, m.authz, m.fixed_cves, m.missing_cves, COALESCE(h.error, '') AS error, COALESCE(h.failing, 0) AS failing \
         FROM machines m LEFT JOIN machine_health h ON h.uuid = m.uuid WHERE m.fixed_cves LIKE $1 OR m.missing_cves LIKE $2 ORDER BY m.hostname, m.uuid LIMIT 1000";
    let rows = sqlx::query(q)
        .bind(&like)
        .bind(&like)
        .fetch_all(&f.db.read)
        .await
        .map_err(db::DbError::from)?;
    let mut protected = String::new();
    let mut open = String::new();
    let (mut np, mut no) = (0, 0);
    let tag = format!(",{cve},");
    for r in &rows {
        let uuid = db::s(r, "uuid")?;
        let host = db::s(r, "hostname")?;
        let line = |why: &str| {
            format!(
                "<tr data-uuid=\"{u}\"><td><a href=\"/ui/machines/{u}\">{}</a></td><td>{}</td><td>{why}</td></tr>",
                esc(&host),
                esc(&db::s(r, "group_name").unwrap_or_default()),
                u = esc(&uuid)
            )
        };
        if db::s(r, "fixed_cves")?.contains(&tag) {
            // A userspace fix protects only when every process mapping
            // the object has it.
            let mut partial = None;
            if !user_ids.is_empty() {
                if let Some(rep) = f.stored_report(&uuid).await? {
                    for (pid, bid) in &user_ids {
                        let mapped: u32 = rep
                            .objects
                            .iter()
                            .filter(|o| o.build_id.eq_ignore_ascii_case(bid))
                            .map(|o| o.processes)
                            .sum();
                        let with = rep
                            .processes
                            .iter()
                            .filter(|p| p.patches.contains(pid))
                            .count() as u32;
                        if mapped > 0 && with > 0 && with < mapped {
                            partial = Some(format!(
                                "{pid} applied in {with} of {mapped} processes mapping the object (the others were busy or started since)"
                            ));
                        }
                    }
                }
            }
            match partial {
                Some(why) => {
                    no += 1;
                    open.push_str(&line(&esc(&why)));
                }
                None => {
                    np += 1;
                    protected.push_str(&line("applied"));
                }
            }
        } else {
            no += 1;
            let err = db::s(r, "error")?;
            let why = if db::s(r, "authz")? != "allowed" {
                "not authorized".to_string()
            } else if db::i(r, "failing")? != 0 {
                if err.to_lowercase().contains("busy") {
                    format!("process busy: {}", esc(&err))
                } else {
                    format!("patch failed: {}", esc(&err))
                }
            } else {
                "not applied yet".to_string()
            };
            open.push_str(&line(&why));
        }
    }
    // Machines that would get the fix but may not: not authorized.
    let kernel_bids: Vec<&str> = patches
        .iter()
        .filter(|p| p.kind == hotsplice_fleet::feed::PatchKind::Kernel)
        .map(|p| p.build_id.as_str())
        .collect();
    for bid in kernel_bids {
        for r in sqlx::query(
            "SELECT uuid, hostname, group_name, authz FROM machines WHERE kernel_build_id = $1 AND authz <> 'allowed' ORDER BY hostname LIMIT 500",
        )
        .bind(bid)
        .fetch_all(&f.db.read)
        .await
        .map_err(db::DbError::from)?
        {
            no += 1;
            let uuid = db::s(&r, "uuid")?;
            let _ = write!(
                open,
                "<tr data-uuid=\"{u}\"><td><a href=\"/ui/machines/{u}\">{}</a></td><td>{}</td><td>not authorized ({})</td></tr>",
                esc(&db::s(&r, "hostname")?),
                esc(&db::s(&r, "group_name")?),
                esc(&db::s(&r, "authz")?),
                u = esc(&uuid)
            );
        }
    }
    let _ = write!(
        b,
        "<h2>Protected (<span id=\"protected-count\">{np}</span>)</h2><table id=\"protected\"><thead><tr><th>Machine</th><th>Group</th><th></th></tr></thead><tbody>{protected}</tbody></table>\
         <h2>Not protected (<span id=\"unprotected-count\">{no}</span>)</h2><table id=\"unprotected\"><thead><tr><th>Machine</th><th>Group</th><th>Why</th></tr></thead><tbody>{open}</tbody></table>"
    );
    Ok(page(Some(&u), &cve, &b))
}

// -------------------------------------------------------------------
// Patches

async fn patches_page(State(f): St, u: UiUser) -> Result<Html<String>> {
    let mut b = String::new();
    if u.may(Role::Operator) {
        let _ = write!(
            b,
            "<form id=\"upload\">{}<label>Signed patch file <input type=\"file\" accept=\".hsp\"></label> <label>Channel <input name=\"channel\" value=\"\"></label> <button id=\"upload-button\">Upload</button> <span id=\"upload-result\"></span></form>",
            u.field()
        );
    }
    b.push_str("<table id=\"patches\"><thead><tr><th>Patch</th><th>Kind</th><th>Target</th><th>Level</th><th>CVEs</th><th>Channels</th><th>SHA-256</th><th></th></tr></thead><tbody>");
    for p in f.patch_records(None, None).await? {
        let promote = if u.may(Role::Operator) {
            format!(
                "<form class=\"inline\" method=\"post\" action=\"/ui/patches/promote\">{}<input type=\"hidden\" name=\"sha256\" value=\"{}\"><input name=\"channel\" size=\"8\" placeholder=\"channel\"> <button class=\"promote\">Promote</button></form>",
                u.field(),
                esc(&p.sha256)
            )
        } else {
            String::new()
        };
        let _ = write!(
            b,
            "<tr><td><code>{}</code><br><small>{}</small></td><td>{}</td><td>{}<br><small><code>{}</code></small></td><td>{}</td><td>{}</td><td>{}</td><td><small><code>{}</code></small></td><td>{promote}</td></tr>",
            esc(&p.id),
            esc(&p.description),
            crate::fleet::kind_str(p.kind),
            esc(&p.target_name),
            esc(&p.build_id),
            p.level,
            cve_links(&p.cves),
            esc(&p.channels.join(", ")),
            esc(&p.sha256)
        );
    }
    b.push_str("</tbody></table>");
    Ok(page(Some(&u), "Patches", &b))
}

#[derive(Deserialize)]
struct PromoteForm {
    #[serde(default)]
    csrf: String,
    sha256: String,
    channel: String,
}

async fn ui_promote(
    State(f): St,
    u: UiUser,
    slot: Option<axum::Extension<AuditSlot>>,
    UiForm(form): UiForm<PromoteForm>,
) -> Result<Response> {
    if let Some(s) = slot {
        s.target(&form.sha256, &format!("promote to {}", form.channel));
    }
    u.csrf(&form.csrf)?;
    u.need(Role::Operator)?;
    f.promote(form.channel.trim(), &form.sha256).await?;
    Ok(Redirect::to("/ui/patches").into_response())
}

#[derive(Deserialize)]
struct UploadQuery {
    channel: Option<String>,
}

async fn ui_upload(
    State(f): St,
    u: UiUser,
    headers: HeaderMap,
    axum::extract::Query(q): axum::extract::Query<UploadQuery>,
    body: Bytes,
) -> Result<Response> {
    let token = headers
        .get("x-csrf-token")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    u.csrf(token)?;
    u.need(Role::Operator)?;
    let channel = q
        .channel
        .as_deref()
        .map(str::trim)
        .filter(|c| !c.is_empty());
    let (rec, _) = f.publish(&body, channel).await?;
    Ok(format!("{} {}", rec.id, rec.sha256).into_response())
}

// -------------------------------------------------------------------
// Rollouts

async fn rollouts_page(State(f): St, u: UiUser) -> Result<Html<String>> {
    let mut b = String::new();
    if u.may(Role::Operator) {
        let mut opts = String::new();
        for p in f.patch_records(None, None).await? {
            let _ = write!(
                opts,
                "<option value=\"{}\">{} ({})</option>",
                esc(&p.sha256),
                esc(&p.id),
                esc(&p.cves.join(" "))
            );
        }
        let _ = write!(
            b,
            "<form class=\"filters\" method=\"post\" action=\"/ui/rollouts\" id=\"new-rollout\">{}\
             <label>Patch <select name=\"sha256\" id=\"rollout-patch\">{opts}</select></label>\
             <label>Stages (groups, in order) <input name=\"stages\" id=\"rollout-stages\" value=\"canary,web,db\"></label>\
             <label>Gate <select name=\"gate\"><option value=\"health\">healthy for</option><option value=\"delay\">fixed delay</option></select></label>\
             <label>Seconds <input name=\"soak_secs\" id=\"rollout-soak\" value=\"3600\" size=\"7\"></label>\
             <button id=\"start-rollout\">Start rollout</button></form>",
            u.field()
        );
    }
    b.push_str("<table id=\"rollouts\"><thead><tr><th>#</th><th>Patch</th><th>Stages</th><th>State</th><th>Where</th><th></th></tr></thead><tbody>");
    for r in f.rollouts().await? {
        let stages: Vec<String> = r
            .stages
            .iter()
            .enumerate()
            .map(|(k, g)| {
                if (k as u64) <= r.stage && r.state != "rolled-back" {
                    format!("<strong>{}</strong>", esc(g))
                } else {
                    esc(g)
                }
            })
            .collect();
        let mut actions = String::new();
        if u.may(Role::Operator) {
            let acts: &[&str] = match r.state.as_str() {
                "running" => &["pause", "rollback"],
                "paused" => &["resume", "rollback"],
                "done" => &["rollback"],
                _ => &[],
            };
            for a in acts {
                let _ = write!(
                    actions,
                    "<form class=\"inline\" method=\"post\" action=\"/ui/rollouts/{}/{a}\">{}<button class=\"{a}\">{a}</button></form> ",
                    r.id,
                    u.field()
                );
            }
        }
        let _ = write!(
            b,
            "<tr data-rollout=\"{id}\"><td>{id}</td><td><code>{}</code></td><td>{}</td><td class=\"state\" data-state=\"{st}\">{st} (stage {}/{})</td><td class=\"message\">{}</td><td>{actions}</td></tr>",
            esc(&r.patch_id),
            stages.join(" → "),
            r.stage + 1,
            r.stages.len(),
            esc(&r.message),
            id = r.id,
            st = esc(&r.state),
        );
    }
    b.push_str("</tbody></table>");
    Ok(page(Some(&u), "Rollouts", &b))
}

#[derive(Deserialize)]
struct RolloutForm {
    #[serde(default)]
    csrf: String,
    sha256: String,
    stages: String,
    gate: String,
    soak_secs: String,
}

async fn ui_start_rollout(
    State(f): St,
    u: UiUser,
    slot: Option<axum::Extension<AuditSlot>>,
    UiForm(form): UiForm<RolloutForm>,
) -> Result<Response> {
    if let Some(s) = slot {
        s.target(&form.sha256, &format!("stages {}", form.stages));
    }
    u.csrf(&form.csrf)?;
    u.need(Role::Operator)?;
    let soak = form
        .soak_secs
        .trim()
        .parse()
        .map_err(|_| Error::bad("seconds: a whole number"))?;
    let req = crate::rollout::NewRollout {
        sha256: form.sha256,
        stages: form
            .stages
            .split(',')
            .map(|g| g.trim().to_string())
            .filter(|g| !g.is_empty())
            .collect(),
        gate: Some(form.gate),
        soak_secs: soak,
    };
    f.start_rollout(&req, &u.0.user).await?;
    Ok(Redirect::to("/ui/rollouts").into_response())
}

async fn ui_rollout_action(
    State(f): St,
    u: UiUser,
    slot: Option<axum::Extension<AuditSlot>>,
    crate::http::P((id, action)): crate::http::P<(i64, String)>,
    UiForm(form): UiForm<CsrfForm>,
) -> Result<Response> {
    if let Some(s) = slot {
        s.target(&format!("rollout {id}"), &action);
    }
    u.csrf(&form.csrf)?;
    u.need(Role::Operator)?;
    f.rollout_action(id, &action, &u.0.user).await?;
    Ok(Redirect::to("/ui/rollouts").into_response())
}

// -------------------------------------------------------------------
// Audit

async fn audit_page(
    State(f): St,
    u: UiUser,
    axum::extract::Query(q): axum::extract::Query<HashMap<String, String>>,
) -> Result<Html<String>> {
    let filter = crate::audit::AuditFilter {
        actor: q.get("actor").filter(|v| !v.is_empty()).cloned(),
        action: q.get("action").filter(|v| !v.is_empty()).cloned(),
        limit: Some(10_000),
        ..Default::default()
    };
    let entries = f.audit_entries(&filter).await?;
    let mut b = format!(
        "<form class=\"filters\" method=\"get\" action=\"/ui/audit\"><label>Who <input name=\"actor\" value=\"{}\"></label><label>Action contains <input name=\"action\" value=\"{}\"></label><button>Filter</button> <a href=\"/api/v2/audit/export\">JSON lines (API)</a></form>",
        esc(q.get("actor").map(String::as_str).unwrap_or("")),
        esc(q.get("action").map(String::as_str).unwrap_or(""))
    );
    b.push_str("<table id=\"audit\"><thead><tr><th>#</th><th>When</th><th>Who</th><th>From</th><th>What</th><th>Target</th><th>Detail</th><th>Result</th></tr></thead><tbody>");
    for e in entries.iter().rev().take(500) {
        let _ = write!(
            b,
            "<tr><td>{}</td><td>{}</td><td>{} <small>{}</small></td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            e.id,
            when(e.at),
            esc(&e.actor),
            esc(&e.role),
            esc(&e.remote),
            esc(&e.action),
            esc(&e.target),
            esc(&e.detail),
            esc(&e.result)
        );
    }
    b.push_str("</tbody></table>");
    Ok(page(Some(&u), "Audit log", &b))
}
