//! The HTTP API: Uptrack's `/api/1/` and hotsplice's `/api/v2/`, their
//! credentials, bounded bodies and JSON errors, and the OpenAPI document
//! generated from the handlers below.

use crate::error::{Error, Result};
use crate::fleet::{check_name, check_sha, check_uuid, rfc3339, Fleet, ACTIVE_SECS};
use crate::types::*;
use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Path, Query, Request, State};
use axum::http::request::Parts;
use axum::http::{header, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use hotsplice_fleet::api::{
    self, CheckinResponse, PatchRecord, RegisterRequest, RegisterResponse, KEY_HEADER, USER_HEADER,
};
use hotsplice_fleet::feed::{SignedFeed, MAX_PATCH_BYTES};
use hotsplice_fleet::report::{Report, MAX_REPORT_BYTES};
use serde::de::DeserializeOwned;
use std::sync::Arc;
use utoipa::OpenApi;

type St = State<Arc<Fleet>>;

// -------------------------------------------------------------------
// Extractors with JSON errors

/// A JSON body, read within the route's body limit; bad JSON and unknown
/// fields are a 400 naming the problem.
pub struct JsonBody<T>(pub T, pub Bytes);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for JsonBody<T> {
    type Rejection = Error;
    async fn from_request(req: Request, state: &S) -> Result<Self> {
        let bytes = Bytes::from_request(req, state).await?;
        let v = serde_json::from_slice(&bytes)
            .map_err(|e| Error::bad(format!("bad JSON body: {e}")))?;
        Ok(JsonBody(v, bytes))
    }
}

/// The raw body, within the route's body limit, with a JSON error.
pub struct RawBody(pub Bytes);

impl<S: Send + Sync> FromRequest<S> for RawBody {
    type Rejection = Error;
    async fn from_request(req: Request, state: &S) -> Result<Self> {
        Ok(RawBody(Bytes::from_request(req, state).await?))
    }
}

/// A path parameter, with a JSON error.
pub struct P<T>(pub T);

impl<T: DeserializeOwned + Send, S: Send + Sync> FromRequestParts<S> for P<T> {
    type Rejection = Error;
    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self> {
        Ok(P(Path::<T>::from_request_parts(parts, state).await?.0))
    }
}

/// A query string, with a JSON error.
pub struct Q<T>(pub T);

impl<T: DeserializeOwned + Send, S: Send + Sync> FromRequestParts<S> for Q<T> {
    type Rejection = Error;
    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self> {
        Ok(Q(Query::<T>::from_request_parts(parts, state).await?.0))
    }
}

// -------------------------------------------------------------------
// Credentials

/// An API user (`X-Uptrack-User` + `X-Uptrack-Key`) and its role.
pub struct ApiUser {
    pub name: String,
    pub role: Role,
}

impl ApiUser {
    pub fn require(&self, role: Role) -> Result<()> {
        if self.role < role {
            return Err(Error::forbidden(format!(
                "API user {} has role {}; this call needs role {} or higher",
                self.name,
                self.role.as_str(),
                role.as_str()
            )));
        }
        Ok(())
    }
}

fn header_str<'a>(parts: &'a Parts, name: &str) -> Result<Option<&'a str>> {
    match parts.headers.get(name) {
        None => Ok(None),
        Some(v) => v
            .to_str()
            .map(Some)
            .map_err(|_| Error::bad(format!("header {name} is not text"))),
    }
}

fn bearer(parts: &Parts) -> Result<Option<&str>> {
    Ok(header_str(parts, header::AUTHORIZATION.as_str())?
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim))
}

impl FromRequestParts<Arc<Fleet>> for ApiUser {
    type Rejection = Error;
    async fn from_request_parts(parts: &mut Parts, fleet: &Arc<Fleet>) -> Result<Self> {
        let user = header_str(parts, USER_HEADER)?;
        let key = header_str(parts, KEY_HEADER)?;
        let (Some(user), Some(key)) = (user, key) else {
            if bearer(parts)?.is_some() {
                return Err(Error::unauthorized(format!(
                    "this call needs an API user ({USER_HEADER} and {KEY_HEADER}); a machine key is not accepted here"
                )));
            }
            return Err(Error::unauthorized(format!(
                "send the API user and key in {USER_HEADER} and {KEY_HEADER}"
            )));
        };
        if user.len() > 128 || key.len() > 256 {
            return Err(Error::unauthorized("unknown API user or wrong key"));
        }
        // Audit hook: who asked (the role stays empty unless the key is right).
        let slot = parts.extensions.get::<crate::audit::AuditSlot>().cloned();
        if let Some(slot) = &slot {
            slot.actor(user, "");
        }
        let role = fleet.api_user(user, key).await?.ok_or_else(|| {
            Error::unauthorized("unknown API user or wrong key (or the user was revoked)")
        })?;
        if let Some(slot) = &slot {
            slot.actor(user, role.as_str());
        }
        let u = ApiUser {
            name: user.to_string(),
            role,
        };
        if parts.method != Method::GET && parts.method != Method::HEAD {
            // Read-only users make GET calls only; handlers ask for more.
            u.require(Role::Operator)?;
        }
        Ok(u)
    }
}

/// A machine key (`Authorization: Bearer KEY`), hashed.
pub struct MachineKey(pub String);

impl<S: Send + Sync> FromRequestParts<S> for MachineKey {
    type Rejection = Error;
    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self> {
        match bearer(parts)? {
            Some(k) if !k.is_empty() && k.len() <= 256 => {
                Ok(MachineKey(hotsplice_fleet::secret_hash(k)))
            }
            _ => Err(Error::unauthorized(
                "this call needs the machine's key: Authorization: Bearer MACHINE_KEY",
            )),
        }
    }
}

// -------------------------------------------------------------------
// The router

/// How long one request may take, body included.
pub const REQUEST_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(300);

pub fn router(fleet: Arc<Fleet>) -> Router {
    use axum::extract::DefaultBodyLimit;
    let v2 = Router::new()
        .route(api::REGISTER, post(register))
        .route(api::FEED_KEY, get(feed_key))
        .route(api::OPENAPI, get(openapi))
        .route("/api/v2/machines", get(list_machines))
        .route("/api/v2/machines/{uuid}", get(machine_detail))
        .route("/api/v2/machines/{uuid}/checkin", post(checkin))
        .route("/api/v2/machines/{uuid}/feed", get(machine_feed))
        .route("/api/v2/machines/{uuid}/history", get(machine_history))
        .route("/api/v2/machines/{uuid}/authorize", post(authorize))
        .route("/api/v2/machines/{uuid}/group", post(set_group))
        .route(
            api::PUBLISH,
            post(publish)
                .get(list_patches)
                .layer(DefaultBodyLimit::max(MAX_PATCH_BYTES as usize)),
        )
        .route("/api/v2/patches/{sha}", get(patch_file))
        .route("/api/v2/patches/{sha}/record", get(patch_record))
        .route("/api/v2/channels", get(list_channels))
        .route(
            "/api/v2/channels/{channel}/patches",
            get(channel_patches).post(promote),
        )
        .route(
            "/api/v2/channels/{channel}/patches/{sha}",
            axum::routing::delete(withdraw),
        )
        .route("/api/v2/channels/{channel}/feed", get(channel_feed))
        .route("/api/v2/groups", get(list_groups))
        .route("/api/v2/groups/{name}", put(put_group))
        .route(
            "/api/v2/publisher-keys",
            get(list_publisher_keys).post(add_publisher_key),
        )
        .route(
            "/api/v2/publisher-keys/{key_id}",
            axum::routing::delete(remove_publisher_key),
        )
        .route("/api/v2/tokens", get(list_tokens).post(create_token))
        .route("/api/v2/tokens/{name}", axum::routing::delete(revoke_token))
        .route(
            "/api/v2/access-keys",
            get(list_access_keys).post(create_access_key),
        )
        .route(
            "/api/v2/access-keys/{id}",
            axum::routing::delete(revoke_access_key),
        )
        .route(api::IMPORT_REPORT, post(import_report))
        // Issue 11: audit, users, rollouts, metrics, VEX, the dashboard.
        .merge(crate::ops::routes());
    let v1 = Router::new()
        .route("/api/1/machines", get(v1_machines))
        .route("/api/1/machine/{uuid}/describe", get(v1_describe))
        .route("/api/1/machine/{uuid}/authorize", post(v1_authorize))
        .route("/api/1/machine/{uuid}/group", post(v1_group));
    v2.merge(v1)
        .fallback(|| async { Error::not_found("no such API path") })
        .method_not_allowed_fallback(|| async {
            Error::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "this path does not take this method",
            )
        })
        .layer(DefaultBodyLimit::max(MAX_REPORT_BYTES))
        // A request (a slow upload included) gets this long, then 408.
        .layer(tower_http::timeout::TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            REQUEST_TIMEOUT,
        ))
        .layer(axum::middleware::from_fn_with_state(
            fleet.clone(),
            crate::audit::layer,
        ))
        .layer(axum::middleware::from_fn_with_state(
            fleet.clone(),
            crate::metrics::layer,
        ))
        .layer(axum::middleware::from_fn(log_request))
        .with_state(fleet)
}

async fn log_request(req: Request, next: axum::middleware::Next) -> Response {
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let res = next.run(req).await;
    let status = res.status();
    if status.is_server_error() {
        tracing::error!(%method, %path, %status);
    } else if status.is_client_error() {
        tracing::info!(%method, %path, %status);
    } else {
        tracing::debug!(%method, %path, %status);
    }
    res
}

// -------------------------------------------------------------------
// Machines' calls

#[utoipa::path(post, path = "/api/v2/register", tag = "machines",
    request_body = RegisterRequest,
    responses((status = 200, body = RegisterResponse), (status = 401, body = api::ApiError), (status = 400, body = api::ApiError)))]
async fn register(
    State(f): St,
    JsonBody(req, _): JsonBody<RegisterRequest>,
) -> Result<Json<RegisterResponse>> {
    Ok(Json(f.register(&req).await?))
}

#[utoipa::path(get, path = "/api/v2/feed-key", tag = "machines",
    responses((status = 200, description = "`hotsplice-ed25519-public HEX`", body = String, content_type = "text/plain")))]
async fn feed_key(State(f): St) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        f.feed_public.to_text(),
    )
}

fn report_from(bytes: &[u8]) -> Result<Report> {
    let r: Report =
        serde_json::from_slice(bytes).map_err(|e| Error::bad(format!("bad report: {e}")))?;
    r.check()
        .map_err(|e| Error::bad(format!("bad report: {e}")))?;
    Ok(r)
}

#[utoipa::path(post, path = "/api/v2/machines/{uuid}/checkin", tag = "machines",
    params(("uuid" = String, Path)), request_body = Report,
    responses((status = 200, body = CheckinResponse), (status = 401, body = api::ApiError), (status = 403, body = api::ApiError), (status = 400, body = api::ApiError)),
    security(("machine" = [])))]
async fn checkin(
    State(f): St,
    P(uuid): P<String>,
    MachineKey(key): MachineKey,
    RawBody(body): RawBody,
) -> Result<Json<CheckinResponse>> {
    check_uuid(&uuid)?;
    let row = f.authenticate_machine(&uuid, &key).await?;
    let report = report_from(&body)?;
    if report.uuid != uuid {
        return Err(Error::bad(format!(
            "the report is for machine {}, not {uuid}",
            report.uuid
        )));
    }
    let raw = std::str::from_utf8(&body).map_err(|_| Error::bad("report is not UTF-8"))?;
    let (feed, _) = f
        .store_report(&row, &report, raw, "", "machine", true)
        .await?;
    // Issue 11 hook: rollout decisions.
    crate::rollout::after_checkin(&f, &row).await;
    Ok(Json(CheckinResponse {
        feed,
        next_checkin: f.settings.checkin_interval,
    }))
}

#[utoipa::path(get, path = "/api/v2/machines/{uuid}/feed", tag = "machines",
    params(("uuid" = String, Path)),
    responses((status = 200, body = SignedFeed), (status = 401, body = api::ApiError), (status = 403, body = api::ApiError)),
    security(("machine" = [])))]
async fn machine_feed(
    State(f): St,
    P(uuid): P<String>,
    MachineKey(key): MachineKey,
) -> Result<Json<SignedFeed>> {
    check_uuid(&uuid)?;
    let row = f.authenticate_machine(&uuid, &key).await?;
    Ok(Json(f.feed_of(&row).await?.0))
}

/// Either credential, for the patch download.
enum AnyCred {
    Api,
    Machine(String),
}

impl FromRequestParts<Arc<Fleet>> for AnyCred {
    type Rejection = Error;
    async fn from_request_parts(parts: &mut Parts, f: &Arc<Fleet>) -> Result<Self> {
        if parts.headers.contains_key(USER_HEADER) || parts.headers.contains_key(KEY_HEADER) {
            ApiUser::from_request_parts(parts, f).await?;
            return Ok(AnyCred::Api);
        }
        Ok(AnyCred::Machine(
            MachineKey::from_request_parts(parts, f).await?.0,
        ))
    }
}

#[utoipa::path(get, path = "/api/v2/patches/{sha}", tag = "machines",
    params(("sha" = String, Path, description = "SHA-256 of the file")),
    responses((status = 200, description = "the patch file", content_type = "application/octet-stream", body = PatchFileBytes), (status = 403, body = api::ApiError), (status = 404, body = api::ApiError)),
    security(("machine" = []), ("uptrack_user" = [], "uptrack_key" = [])))]
async fn patch_file(State(f): St, P(sha): P<String>, cred: AnyCred) -> Result<Response> {
    check_sha(&sha)?;
    if let AnyCred::Machine(key) = cred {
        let uuid = f.machine_of_key(&key).await?.ok_or_else(|| {
            Error::unauthorized("unknown machine key: register the machine again")
        })?;
        let row = f
            .machine_row(&uuid)
            .await?
            .ok_or_else(|| Error::no_machine(&uuid))?;
        let (_, fit) = f.feed_of(&row).await?;
        if !fit.patches.iter().any(|p| p.sha256 == sha) {
            return Err(Error::forbidden(format!(
                "patch {sha} is not in the feed of machine {uuid}"
            )));
        }
    }
    let data = f.patch_blob(&sha).await?;
    Ok(([(header::CONTENT_TYPE, "application/octet-stream")], data).into_response())
}

// -------------------------------------------------------------------
// Patches and channels

#[utoipa::path(post, path = "/api/v2/patches", tag = "patches",
    params(PublishQuery),
    request_body(content = PatchFileBytes, content_type = "application/octet-stream", description = "a signed .hsp file"),
    responses((status = 201, body = PatchRecord, description = "stored"), (status = 200, body = PatchRecord, description = "already stored"),
        (status = 403, body = api::ApiError, description = "signed by a key the server does not trust"), (status = 422, body = api::ApiError, description = "unsigned, altered or not a patch file"), (status = 413, body = api::ApiError)),
    security(("uptrack_user" = [], "uptrack_key" = [])))]
async fn publish(
    State(f): St,
    u: ApiUser,
    Q(q): Q<PublishQuery>,
    RawBody(body): RawBody,
) -> Result<Response> {
    u.require(Role::Operator)?;
    let (rec, new) = f.publish(&body, q.channel.as_deref()).await?;
    tracing::info!(user = %u.name, sha256 = %rec.sha256, id = %rec.id, new, "published");
    let status = if new {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(rec)).into_response())
}

#[utoipa::path(get, path = "/api/v2/patches", tag = "patches",
    responses((status = 200, body = Vec<PatchRecord>)), security(("uptrack_user" = [], "uptrack_key" = [])))]
async fn list_patches(State(f): St, _u: ApiUser) -> Result<Json<Vec<PatchRecord>>> {
    Ok(Json(f.patch_records(None, None).await?))
}

#[utoipa::path(get, path = "/api/v2/patches/{sha}/record", tag = "patches",
    params(("sha" = String, Path)),
    responses((status = 200, body = PatchRecord), (status = 404, body = api::ApiError)), security(("uptrack_user" = [], "uptrack_key" = [])))]
async fn patch_record(State(f): St, _u: ApiUser, P(sha): P<String>) -> Result<Json<PatchRecord>> {
    Ok(Json(f.patch_record(&sha).await?))
}

#[utoipa::path(get, path = "/api/v2/channels", tag = "patches",
    responses((status = 200, body = Vec<ChannelInfo>)), security(("uptrack_user" = [], "uptrack_key" = [])))]
async fn list_channels(State(f): St, _u: ApiUser) -> Result<Json<Vec<ChannelInfo>>> {
    Ok(Json(f.channels().await?))
}

#[utoipa::path(get, path = "/api/v2/channels/{channel}/patches", tag = "patches",
    params(("channel" = String, Path)),
    responses((status = 200, body = Vec<PatchRecord>)), security(("uptrack_user" = [], "uptrack_key" = [])))]
async fn channel_patches(
    State(f): St,
    _u: ApiUser,
    P(channel): P<String>,
) -> Result<Json<Vec<PatchRecord>>> {
    check_name("channel", &channel)?;
    Ok(Json(f.patch_records(Some(&channel), None).await?))
}

#[utoipa::path(post, path = "/api/v2/channels/{channel}/patches", tag = "patches",
    params(("channel" = String, Path)), request_body = PromoteRequest,
    responses((status = 200, body = ChannelChange), (status = 404, body = api::ApiError)), security(("uptrack_user" = [], "uptrack_key" = [])))]
async fn promote(
    State(f): St,
    u: ApiUser,
    P(channel): P<String>,
    JsonBody(req, _): JsonBody<PromoteRequest>,
) -> Result<Json<ChannelChange>> {
    u.require(Role::Operator)?;
    Ok(Json(f.promote(&channel, &req.sha256).await?))
}

#[utoipa::path(delete, path = "/api/v2/channels/{channel}/patches/{sha}", tag = "patches",
    params(("channel" = String, Path), ("sha" = String, Path)),
    responses((status = 200, body = ChannelChange)), security(("uptrack_user" = [], "uptrack_key" = [])))]
async fn withdraw(
    State(f): St,
    u: ApiUser,
    P((channel, sha)): P<(String, String)>,
) -> Result<Json<ChannelChange>> {
    u.require(Role::Operator)?;
    Ok(Json(f.withdraw(&channel, &sha).await?))
}

#[utoipa::path(get, path = "/api/v2/channels/{channel}/feed", tag = "patches",
    params(("channel" = String, Path)),
    responses((status = 200, body = SignedFeed)), security(("uptrack_user" = [], "uptrack_key" = [])))]
async fn channel_feed(
    State(f): St,
    _u: ApiUser,
    P(channel): P<String>,
) -> Result<Json<SignedFeed>> {
    Ok(Json(f.channel_feed(&channel).await?))
}

// -------------------------------------------------------------------
// hotsplice's machine views

#[utoipa::path(get, path = "/api/v2/machines", tag = "fleet",
    params(MachineFilter),
    responses((status = 200, body = Vec<MachineSummary>)), security(("uptrack_user" = [], "uptrack_key" = [])))]
async fn list_machines(
    State(f): St,
    _u: ApiUser,
    Q(q): Q<MachineFilter>,
) -> Result<Json<Vec<MachineSummary>>> {
    Ok(Json(f.machines(&q).await?))
}

#[utoipa::path(get, path = "/api/v2/machines/{uuid}", tag = "fleet",
    params(("uuid" = String, Path)),
    responses((status = 200, body = MachineDetail), (status = 404, body = api::ApiError)), security(("uptrack_user" = [], "uptrack_key" = [])))]
async fn machine_detail(
    State(f): St,
    _u: ApiUser,
    P(uuid): P<String>,
) -> Result<Json<MachineDetail>> {
    check_uuid(&uuid)?;
    let machine = f.summary(&uuid).await?;
    let snap = f.snapshot().await?;
    Ok(Json(MachineDetail {
        channel: snap.channel_of(&machine.group).to_string(),
        machine,
        report: f.stored_report(&uuid).await?,
    }))
}

#[utoipa::path(get, path = "/api/v2/machines/{uuid}/history", tag = "fleet",
    params(("uuid" = String, Path)),
    responses((status = 200, body = Vec<HistoryEvent>), (status = 404, body = api::ApiError)), security(("uptrack_user" = [], "uptrack_key" = [])))]
async fn machine_history(
    State(f): St,
    _u: ApiUser,
    P(uuid): P<String>,
) -> Result<Json<Vec<HistoryEvent>>> {
    check_uuid(&uuid)?;
    Ok(Json(f.history(&uuid).await?))
}

#[utoipa::path(post, path = "/api/v2/machines/{uuid}/authorize", tag = "fleet",
    params(("uuid" = String, Path)), request_body = AuthorizeRequest,
    responses((status = 200, body = MachineSummary), (status = 404, body = api::ApiError)), security(("uptrack_user" = [], "uptrack_key" = [])))]
async fn authorize(
    State(f): St,
    u: ApiUser,
    P(uuid): P<String>,
    JsonBody(req, _): JsonBody<AuthorizeRequest>,
) -> Result<Json<MachineSummary>> {
    u.require(Role::Operator)?;
    check_uuid(&uuid)?;
    f.set_authorization(&uuid, &req.authorization, &u.name)
        .await?;
    Ok(Json(f.summary(&uuid).await?))
}

#[utoipa::path(post, path = "/api/v2/machines/{uuid}/group", tag = "fleet",
    params(("uuid" = String, Path)), request_body = GroupRequest,
    responses((status = 200, body = MachineSummary), (status = 404, body = api::ApiError)), security(("uptrack_user" = [], "uptrack_key" = [])))]
async fn set_group(
    State(f): St,
    u: ApiUser,
    P(uuid): P<String>,
    JsonBody(req, _): JsonBody<GroupRequest>,
) -> Result<Json<MachineSummary>> {
    u.require(Role::Operator)?;
    check_uuid(&uuid)?;
    f.set_group(&uuid, &req.group, &u.name).await?;
    Ok(Json(f.summary(&uuid).await?))
}

#[utoipa::path(post, path = "/api/v2/reports", tag = "fleet",
    request_body = Report,
    responses((status = 204, description = "stored"), (status = 400, body = api::ApiError)), security(("uptrack_user" = [], "uptrack_key" = [])))]
async fn import_report(State(f): St, u: ApiUser, RawBody(body): RawBody) -> Result<StatusCode> {
    u.require(Role::Operator)?;
    let report = report_from(&body)?;
    let raw = std::str::from_utf8(&body).map_err(|_| Error::bad("report is not UTF-8"))?;
    let created = f.import_report(&report, raw, &u.name).await?;
    tracing::info!(user = %u.name, uuid = %report.uuid, created, "imported a report");
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(get, path = "/api/v2/groups", tag = "fleet",
    responses((status = 200, body = Vec<GroupInfo>)), security(("uptrack_user" = [], "uptrack_key" = [])))]
async fn list_groups(State(f): St, _u: ApiUser) -> Result<Json<Vec<GroupInfo>>> {
    Ok(Json(f.groups().await?))
}

#[utoipa::path(put, path = "/api/v2/groups/{name}", tag = "fleet",
    params(("name" = String, Path)), request_body = GroupUpdate,
    responses((status = 200, body = GroupInfo)), security(("uptrack_user" = [], "uptrack_key" = [])))]
async fn put_group(
    State(f): St,
    u: ApiUser,
    P(name): P<String>,
    JsonBody(req, _): JsonBody<GroupUpdate>,
) -> Result<Json<GroupInfo>> {
    u.require(Role::Operator)?;
    Ok(Json(f.set_group_channel(&name, &req.channel).await?))
}

// -------------------------------------------------------------------
// Administration

#[utoipa::path(get, path = "/api/v2/publisher-keys", tag = "admin",
    responses((status = 200, body = Vec<PublisherKey>)), security(("uptrack_user" = [], "uptrack_key" = [])))]
async fn list_publisher_keys(State(f): St, _u: ApiUser) -> Result<Json<Vec<PublisherKey>>> {
    Ok(Json(f.publisher_keys().await?))
}

#[utoipa::path(post, path = "/api/v2/publisher-keys", tag = "admin",
    request_body = AddPublisherKey,
    responses((status = 200, body = PublisherKey)), security(("uptrack_user" = [], "uptrack_key" = [])))]
async fn add_publisher_key(
    State(f): St,
    u: ApiUser,
    JsonBody(req, _): JsonBody<AddPublisherKey>,
) -> Result<Json<PublisherKey>> {
    u.require(Role::Admin)?;
    Ok(Json(
        f.add_publisher_key(&req.public_key, &req.comment).await?,
    ))
}

#[utoipa::path(delete, path = "/api/v2/publisher-keys/{key_id}", tag = "admin",
    params(("key_id" = String, Path)),
    responses((status = 204), (status = 404, body = api::ApiError)), security(("uptrack_user" = [], "uptrack_key" = [])))]
async fn remove_publisher_key(State(f): St, u: ApiUser, P(id): P<String>) -> Result<StatusCode> {
    u.require(Role::Admin)?;
    f.remove_publisher_key(&id).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(get, path = "/api/v2/tokens", tag = "admin",
    responses((status = 200, body = Vec<TokenInfo>)), security(("uptrack_user" = [], "uptrack_key" = [])))]
async fn list_tokens(State(f): St, u: ApiUser) -> Result<Json<Vec<TokenInfo>>> {
    u.require(Role::Admin)?;
    Ok(Json(f.tokens().await?))
}

#[utoipa::path(post, path = "/api/v2/tokens", tag = "admin",
    request_body = TokenRequest,
    responses((status = 200, body = NewToken), (status = 409, body = api::ApiError)), security(("uptrack_user" = [], "uptrack_key" = [])))]
async fn create_token(
    State(f): St,
    u: ApiUser,
    JsonBody(req, _): JsonBody<TokenRequest>,
) -> Result<Json<NewToken>> {
    u.require(Role::Admin)?;
    Ok(Json(f.create_token(req.name.as_deref(), req.role).await?))
}

#[utoipa::path(delete, path = "/api/v2/tokens/{name}", tag = "admin",
    params(("name" = String, Path)),
    responses((status = 204), (status = 404, body = api::ApiError)), security(("uptrack_user" = [], "uptrack_key" = [])))]
async fn revoke_token(State(f): St, u: ApiUser, P(name): P<String>) -> Result<StatusCode> {
    u.require(Role::Admin)?;
    f.revoke_token(&name).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(get, path = "/api/v2/access-keys", tag = "admin",
    responses((status = 200, body = Vec<AccessKeyInfo>)), security(("uptrack_user" = [], "uptrack_key" = [])))]
async fn list_access_keys(State(f): St, u: ApiUser) -> Result<Json<Vec<AccessKeyInfo>>> {
    u.require(Role::Admin)?;
    Ok(Json(f.access_keys().await?))
}

#[utoipa::path(post, path = "/api/v2/access-keys", tag = "admin",
    request_body = AccessKeyRequest,
    responses((status = 200, body = NewAccessKey)), security(("uptrack_user" = [], "uptrack_key" = [])))]
async fn create_access_key(
    State(f): St,
    u: ApiUser,
    JsonBody(req, _): JsonBody<AccessKeyRequest>,
) -> Result<Json<NewAccessKey>> {
    u.require(Role::Admin)?;
    Ok(Json(
        f.create_access_key(req.group.as_deref(), req.pending)
            .await?,
    ))
}

#[utoipa::path(delete, path = "/api/v2/access-keys/{id}", tag = "admin",
    params(("id" = String, Path)),
    responses((status = 204), (status = 404, body = api::ApiError)), security(("uptrack_user" = [], "uptrack_key" = [])))]
async fn revoke_access_key(State(f): St, u: ApiUser, P(id): P<String>) -> Result<StatusCode> {
    u.require(Role::Admin)?;
    f.revoke_access_key(&id).await?;
    Ok(StatusCode::NO_CONTENT)
}

// -------------------------------------------------------------------
// Uptrack API v1

fn uptrack_machine(m: &MachineSummary) -> UptrackMachine {
    UptrackMachine {
        status: m.status.clone(),
        autoinstall: m.autoinstall,
        uuid: m.uuid.clone(),
        mmap_min_addr: m.mmap_min_addr,
        ip: m.ip.clone(),
        hostname: m.hostname.clone(),
        uptrack_client_version: m.client_version.clone(),
        active: m.last_seen > 0 && hotsplice_fleet::now().saturating_sub(m.last_seen) < ACTIVE_SECS,
        authorization: m.authorization.clone(),
        last_seen: rfc3339(m.last_seen),
    }
}

#[utoipa::path(get, path = "/api/1/machines", tag = "uptrack",
    responses((status = 200, body = Vec<UptrackMachine>), (status = 401, body = api::ApiError)), security(("uptrack_user" = [], "uptrack_key" = [])))]
async fn v1_machines(State(f): St, _u: ApiUser) -> Result<Json<Vec<UptrackMachine>>> {
    let ms = f.machines(&MachineFilter::default()).await?;
    Ok(Json(ms.iter().map(uptrack_machine).collect()))
}

#[utoipa::path(get, path = "/api/1/machine/{uuid}/describe", tag = "uptrack",
    params(("uuid" = String, Path)),
    responses((status = 200, body = UptrackDescribe), (status = 404, body = api::ApiError)), security(("uptrack_user" = [], "uptrack_key" = [])))]
async fn v1_describe(
    State(f): St,
    _u: ApiUser,
    P(uuid): P<String>,
) -> Result<Json<UptrackDescribe>> {
    check_uuid(&uuid)?;
    let m = f.summary(&uuid).await?;
    let row = f
        .machine_row(&uuid)
        .await?
        .ok_or_else(|| Error::no_machine(&uuid))?;
    let report = f.stored_report(&uuid).await?;
    let (_, fit) = f.feed_of(&row).await?;
    let installed_updates = report
        .as_ref()
        .map(|r| {
            r.kernel
                .applied
                .iter()
                .map(|p| UptrackUpdate {
                    id: p.id.clone(),
                    name: p.description.clone(),
                })
                .collect()
        })
        .unwrap_or_default();
    let steps = fit
        .missing
        .iter()
        .filter(|p| p.kind == hotsplice_fleet::feed::PatchKind::Kernel)
        .map(|p| {
            (
                "Install".to_string(),
                UptrackUpdate {
                    id: p.id.clone(),
                    name: p.description.clone(),
                },
            )
        })
        .collect();
    Ok(Json(UptrackDescribe {
        machine: uptrack_machine(&m),
        original_kernel: m.original_kernel.clone(),
        effective_kernel: m.effective_kernel.clone(),
        group: (!m.group.is_empty()).then(|| m.group.clone()),
        installed_updates,
        steps,
    }))
}

#[utoipa::path(post, path = "/api/1/machine/{uuid}/authorize", tag = "uptrack",
    params(("uuid" = String, Path)), request_body = UptrackAuthorize,
    responses((status = 200, body = UptrackMachine), (status = 404, body = api::ApiError)), security(("uptrack_user" = [], "uptrack_key" = [])))]
async fn v1_authorize(
    State(f): St,
    u: ApiUser,
    P(uuid): P<String>,
    JsonBody(req, _): JsonBody<UptrackAuthorize>,
) -> Result<Json<UptrackMachine>> {
    u.require(Role::Operator)?;
    check_uuid(&uuid)?;
    let a = if req.authorized { "allowed" } else { "denied" };
    f.set_authorization(&uuid, a, &u.name).await?;
    Ok(Json(uptrack_machine(&f.summary(&uuid).await?)))
}

#[utoipa::path(post, path = "/api/1/machine/{uuid}/group", tag = "uptrack",
    params(("uuid" = String, Path)), request_body = UptrackGroup,
    responses((status = 200, body = UptrackMachine), (status = 404, body = api::ApiError)), security(("uptrack_user" = [], "uptrack_key" = [])))]
async fn v1_group(
    State(f): St,
    u: ApiUser,
    P(uuid): P<String>,
    JsonBody(req, _): JsonBody<UptrackGroup>,
) -> Result<Json<UptrackMachine>> {
    u.require(Role::Operator)?;
    check_uuid(&uuid)?;
    f.set_group(&uuid, &req.group_name, &u.name).await?;
    Ok(Json(uptrack_machine(&f.summary(&uuid).await?)))
}

// -------------------------------------------------------------------
// OpenAPI

struct Security;

impl utoipa::Modify for Security {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{
            ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme,
        };
        let c = doc.components.get_or_insert_with(Default::default);
        c.add_security_scheme(
            "uptrack_user",
            SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::new(USER_HEADER))),
        );
        c.add_security_scheme(
            "uptrack_key",
            SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::new(KEY_HEADER))),
        );
        c.add_security_scheme(
            "machine",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

#[derive(OpenApi)]
#[openapi(
    info(title = "hotsplice-server", description = "hotsplice's fleet API (/api/v2/) and Ksplice Uptrack's API (/api/1/). See docs/api.md."),
    paths(register, feed_key, openapi, checkin, machine_feed, patch_file, publish, list_patches, patch_record,
        list_channels, channel_patches, promote, withdraw, channel_feed, list_machines, machine_detail,
        machine_history, authorize, set_group, import_report, list_groups, put_group,
        list_publisher_keys, add_publisher_key, remove_publisher_key, list_tokens, create_token,
        revoke_token, list_access_keys, create_access_key, revoke_access_key,
        v1_machines, v1_describe, v1_authorize, v1_group),
    modifiers(&Security)
)]
pub struct ApiDoc;

#[utoipa::path(get, path = "/api/v2/openapi.json", tag = "machines",
    responses((status = 200, description = "this document", content_type = "application/json", body = Object)))]
async fn openapi() -> impl IntoResponse {
    let mut doc = ApiDoc::openapi();
    doc.merge(crate::ops::OpsDoc::openapi());
    Json(doc)
}
