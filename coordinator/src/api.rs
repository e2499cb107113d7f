//! The admin REST API (`/api/v1/...`) behind the bearer admin token, plus the open
//! `/metrics`, `/healthz` and `/readyz`.

use std::{
    sync::{atomic::Ordering, Arc},
    time::{Duration, Instant},
};

use axum::{
    extract::{rejection::PathRejection, Path, Request, State},
    http::{header, StatusCode},
    middleware::{self, Next},
    response::{IntoResponse, Response},
    routing::{get, post},
    Json, Router,
};
use tokio_util::sync::CancellationToken;

use crate::{
    api_types::{ErrorBody, ErrorDetail, EventView, List, NodeDetail, TokenRequest},
    registry::{NodeAction, RegistryError},
    server::Shared,
    time::rfc3339_ms,
};

/// Shortest join-token lifetime accepted by the API.
pub const MIN_TOKEN_TTL: Duration = Duration::from_secs(60);
/// Longest join-token lifetime.
pub const MAX_TOKEN_TTL: Duration = Duration::from_secs(30 * 24 * 3600);

/// An API error: status, stable code, message (and, for manifests, every problem).
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
    pub(crate) problems: Vec<crate::api_types::ProblemView>,
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl ApiError {
    pub(crate) fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            problems: Vec::new(),
        }
    }

    /// Whether this is a 404.
    pub(crate) fn is_not_found(&self) -> bool {
        self.status == StatusCode::NOT_FOUND
    }

    pub(crate) fn internal(error: impl std::fmt::Display) -> Self {
        tracing::error!(error = %error, "admin API internal error");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            format!("internal error: {error}"),
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: ErrorDetail {
                code: self.code.to_string(),
                message: self.message,
                problems: self.problems,
            },
        };
        (self.status, Json(body)).into_response()
    }
}

impl From<RegistryError> for ApiError {
    fn from(e: RegistryError) -> Self {
        match e {
            RegistryError::NotFound(_) => Self::new(StatusCode::NOT_FOUND, "not_found", e.to_string()),
            _ => Self::new(StatusCode::CONFLICT, "conflict", e.to_string()),
        }
    }
}

/// Serves until `shutdown`.
pub async fn serve(listener: tokio::net::TcpListener, shared: Arc<Shared>, shutdown: CancellationToken) {
    if let Err(e) = axum::serve(listener, router(shared))
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await
    {
        tracing::error!(error = %e, "admin API failed");
    }
}

/// Largest request body the admin API takes (manifests for `apply`, for the most part).
pub const ADMIN_BODY_LIMIT: usize = 16 << 20;

/// 413 in the API's error shape.
pub fn body_too_large() -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "bad_request",
        format!(
            "the request body is larger than the admin API takes ({} MiB); apply the manifests in several parts",
            ADMIN_BODY_LIMIT >> 20
        ),
    )
}

/// The full router.
pub fn router(shared: Arc<Shared>) -> Router {
    let admin = Router::new()
        .route("/api/v1/tokens", post(create_token).get(list_tokens))
        .route("/api/v1/tokens/{id}", axum::routing::delete(delete_token))
        .route("/api/v1/nodes", get(list_nodes))
        .route("/api/v1/nodes/{name}", get(get_node).delete(delete_node))
        .route("/api/v1/nodes/{name}/{action}", post(node_action))
        .route("/api/v1/replicas", get(list_replicas))
        .route("/api/v1/replicas/{name}", get(get_replica))
        .merge(crate::api_objects::routes())
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::extract::DefaultBodyLimit::max(ADMIN_BODY_LIMIT))
        .layer(middleware::from_fn_with_state(shared.clone(), require_admin));
    Router::new()
        .route("/healthz", get(|| async { Json(serde_json::json!({"status": "ok"})) }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .merge(admin)
        .with_state(shared)
}

async fn not_found(request: Request) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "not_found",
        format!("no such endpoint: {} {}", request.method(), request.uri().path()),
    )
}

async fn method_not_allowed(request: Request) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        format!(
            "{} is not allowed on {} (see docs/api.md)",
            request.method(),
            request.uri().path()
        ),
    )
}

async fn require_admin(State(shared): State<Arc<Shared>>, request: Request, next: Next) -> Result<Response, ApiError> {
    let presented = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")));
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    match presented {
        // Refused before a byte of it is read.
        Some(token) if shared.check_admin_token(token) && declared.is_some_and(|n| n > ADMIN_BODY_LIMIT as u64) => {
            Err(body_too_large())
        }
        Some(token) if shared.check_admin_token(token) => Ok(next.run(request).await),
        Some(_) => Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "the admin token is wrong; it is in DATA_DIR/admin-token on the coordinator host",
        )),
        None => Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "missing 'Authorization: Bearer <admin token>'; the token is in DATA_DIR/admin-token on the coordinator host",
        )),
    }
}

async fn readyz(State(shared): State<Arc<Shared>>) -> Response {
    if shared.ready.load(Ordering::Relaxed) {
        Json(serde_json::json!({"status": "ready"})).into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(serde_json::json!({"status": "not ready"})),
        )
            .into_response()
    }
}

async fn metrics(State(shared): State<Arc<Shared>>) -> Response {
    (
        [(header::CONTENT_TYPE, pyxis_agent::prom::CONTENT_TYPE)],
        crate::metrics::render(&shared),
    )
        .into_response()
}

async fn create_token(
    State(shared): State<Arc<Shared>>,
    headers: axum::http::HeaderMap,
    body: Result<axum::body::Bytes, axum::extract::rejection::BytesRejection>,
) -> Result<Response, ApiError> {
    let body = body.map_err(|e| ApiError::new(e.status(), "bad_request", e.body_text()))?;
    let request: TokenRequest = if body.iter().all(u8::is_ascii_whitespace) {
        TokenRequest { ttl: None, uses: None }
    } else {
        match serde_json::from_slice::<serde_json::Value>(&body) {
            Ok(serde_json::Value::Object(_)) => serde_json::from_slice(&body).map_err(|e| {
                ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "bad_request",
                    format!("invalid token request: {e}"),
                )
            })?,
            Ok(_) => {
                return Err(ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "bad_request",
                    "the body must be a JSON object such as {\"ttl\": \"1h\", \"uses\": 1}",
                ))
            }
            Err(e) => {
                return Err(ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "bad_request",
                    format!("the body is not JSON: {e}"),
                ))
            }
        }
    };
    let ttl = match request.ttl.as_deref() {
        None => Duration::from_secs(3600),
        Some(text) => humantime::parse_duration(text).map_err(|e| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "bad_request",
                format!("ttl {text:?} is not a duration like 1h or 30m ({e})"),
            )
        })?,
    };
    if ttl < MIN_TOKEN_TTL || ttl > MAX_TOKEN_TTL {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_request",
            "ttl must be between 1m and 720h",
        ));
    }
    let uses = request.uses.unwrap_or(1);
    if uses == 0 || uses > 100_000 {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_request",
            "uses must be between 1 and 100000",
        ));
    }
    let shared2 = shared.clone();
    let mut created = tokio::task::spawn_blocking(move || shared2.create_join_token(ttl, uses))
        .await
        .map_err(ApiError::internal)?
        .map_err(ApiError::internal)?;
    created.coordinator = join_hint(&headers, shared.quic_port);
    Ok((StatusCode::CREATED, Json(created)).into_response())
}

async fn list_tokens(State(shared): State<Arc<Shared>>) -> Result<Json<List<crate::api_types::TokenInfo>>, ApiError> {
    let shared2 = shared.clone();
    let rows = tokio::task::spawn_blocking(move || shared2.store.tokens())
        .await
        .map_err(ApiError::internal)?
        .map_err(ApiError::internal)?;
    let now = crate::time::now_ms();
    let items = rows
        .into_iter()
        .map(|(row, created)| crate::api_types::TokenInfo {
            id: row.id,
            created_at: rfc3339_ms(created),
            expires_at: rfc3339_ms(row.expires_at_ms),
            uses_left: row.uses_left,
            expired: now > row.expires_at_ms,
        })
        .collect();
    Ok(Json(List { items }))
}

async fn delete_token(
    State(shared): State<Arc<Shared>>,
    path: Result<Path<String>, PathRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let Path(id) = path.map_err(path_error)?;
    // Accept the whole token too: only its id part is used.
    let id = id.split('.').next().unwrap_or_default().to_string();
    let shared2 = shared.clone();
    let id2 = id.clone();
    let existed = tokio::task::spawn_blocking(move || shared2.store.delete_token(&id2))
        .await
        .map_err(ApiError::internal)?
        .map_err(ApiError::internal)?;
    if !existed {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("join token {id} not found (see `pyxis token list`)"),
        ));
    }
    tracing::info!(token_id = %id, "join token deleted by an operator");
    Ok(Json(serde_json::json!({"deleted": id})))
}

/// `HOST:QUIC_PORT` from the Host header the API was reached by.
fn join_hint(headers: &axum::http::HeaderMap, quic_port: u16) -> Option<String> {
    let host = headers.get(header::HOST)?.to_str().ok()?;
    let name = match host.strip_prefix('[') {
        Some(rest) => format!("[{}]", rest.split(']').next()?),
        None => host.split(':').next()?.to_string(),
    };
    (!name.is_empty()).then(|| format!("{name}:{quic_port}"))
}

async fn list_nodes(State(shared): State<Arc<Shared>>) -> Json<List<crate::api_types::NodeView>> {
    let mut items = shared.registry().views(Instant::now(), shared.config.liveness_timeout);
    let catalog = shared.catalog();
    for node in &mut items {
        effective_classes(&catalog, node);
    }
    Json(List { items })
}

/// Devices show the class placement uses: the first `HardwareClass` whose rules fit them,
/// else the class their agent derived.
fn effective_classes(catalog: &crate::objects::Catalog, node: &mut crate::api_types::NodeView) {
    if catalog.classes.is_empty() {
        return;
    }
    for a in &mut node.accelerators {
        a.hardware_class = catalog.device_class(&a.vendor, &a.model, a.memory_bytes, &a.hardware_class);
    }
}

/// Replicas show the class placement saw for their devices.
fn replica_classes(shared: &Shared, replicas: &mut [crate::api_types::ReplicaView]) {
    let state = shared.placement_state();
    for r in replicas {
        if let Some(class) = state.known_class(&r.gpus) {
            r.hardware_class = class;
        }
    }
}

/// `?namespace=TENANT` filters namespaced lists.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct NamespaceQuery {
    namespace: Option<String>,
}

async fn list_replicas(
    State(shared): State<Arc<Shared>>,
    query: Result<axum::extract::Query<NamespaceQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<List<crate::api_types::ReplicaView>>, ApiError> {
    let axum::extract::Query(query) =
        query.map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "bad_request", e.body_text()))?;
    let mut items: Vec<_> = shared
        .registry()
        .replica_views()
        .into_iter()
        .filter(|r| query.namespace.as_ref().is_none_or(|t| *t == r.tenant))
        .collect();
    replica_classes(&shared, &mut items);
    Ok(Json(List { items }))
}

async fn get_replica(
    State(shared): State<Arc<Shared>>,
    path: Result<Path<String>, PathRejection>,
) -> Result<Json<crate::api_types::ReplicaDetail>, ApiError> {
    let Path(name) = path.map_err(path_error)?;
    let mut replica = shared
        .registry()
        .replica_views()
        .into_iter()
        .find(|r| r.name == name)
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::NOT_FOUND,
                "not_found",
                format!("replica {name} not found; `pyxis get replicas` lists them"),
            )
        })?;
    let events = recent_events(&shared, &format!("replica/{name}"), 20)?;
    replica_classes(&shared, std::slice::from_mut(&mut replica));
    Ok(Json(crate::api_types::ReplicaDetail { replica, events }))
}

async fn get_node(
    State(shared): State<Arc<Shared>>,
    path: Result<Path<String>, PathRejection>,
) -> Result<Json<NodeDetail>, ApiError> {
    let Path(name) = path.map_err(path_error)?;
    let mut view = shared
        .registry()
        .view(&name, Instant::now(), shared.config.liveness_timeout)
        .ok_or_else(|| ApiError::from(RegistryError::NotFound(name.clone())))?;
    effective_classes(&shared.catalog(), &mut view);
    let events = recent_events(&shared, &format!("node/{name}"), 20)?;
    Ok(Json(NodeDetail { node: view, events }))
}

async fn node_action(
    State(shared): State<Arc<Shared>>,
    path: Result<Path<(String, String)>, PathRejection>,
) -> Result<Json<crate::api_types::NodeView>, ApiError> {
    let Path((name, action)) = path.map_err(path_error)?;
    let action = NodeAction::parse(&action).ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("unknown node action {action:?}; use cordon, uncordon, drain or revoke"),
        )
    })?;
    let (row, close, changed) = shared.registry().act(&name, action)?;
    if let Some(connection) = close {
        connection.close(
            quinn::VarInt::from_u32(pyxis_agent::link::close_code::REVOKED),
            format!("node {name} is revoked").as_bytes(),
        );
    }
    if changed {
        let shared2 = shared.clone();
        tokio::task::spawn_blocking(move || shared2.store.set_flags(&row))
            .await
            .map_err(ApiError::internal)?
            .map_err(ApiError::internal)?;
        let (kind, reason, message) = match action {
            NodeAction::Cordon => ("Normal", "Cordoned", "cordoned by an operator"),
            NodeAction::Uncordon => ("Normal", "Uncordoned", "uncordoned by an operator"),
            NodeAction::Drain => ("Normal", "Draining", "drain requested by an operator"),
            NodeAction::Revoke => (
                "Warning",
                "Revoked",
                "revoked by an operator: certificate refused, connection dropped",
            ),
        };
        if action == NodeAction::Revoke {
            tracing::warn!(node = %name, "{message}");
        } else {
            tracing::info!(node = %name, "{message}");
        }
        shared.event(&format!("node/{name}"), kind, reason, message);
        shared.wake_reconciler();
    }
    let view = shared
        .registry()
        .view(&name, Instant::now(), shared.config.liveness_timeout)
        .ok_or_else(|| ApiError::from(RegistryError::NotFound(name.clone())))?;
    Ok(Json(view))
}

async fn delete_node(
    State(shared): State<Arc<Shared>>,
    path: Result<Path<String>, PathRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let Path(name) = path.map_err(path_error)?;
    let close = shared.registry().delete(&name)?;
    if let Some(connection) = close {
        connection.close(
            quinn::VarInt::from_u32(pyxis_agent::link::close_code::REVOKED),
            format!("node {name} was deleted").as_bytes(),
        );
    }
    let shared2 = shared.clone();
    let name2 = name.clone();
    tokio::task::spawn_blocking(move || shared2.store.delete_node(&name2))
        .await
        .map_err(ApiError::internal)?
        .map_err(ApiError::internal)?;
    shared.wake_reconciler();
    tracing::warn!(node = %name, "node deleted by an operator: its certificate no longer works; the name may join again with a new token");
    Ok(Json(serde_json::json!({"deleted": name})))
}

/// The latest `limit` events of `object`, oldest first.
pub(crate) fn recent_events(shared: &Shared, object: &str, limit: usize) -> Result<Vec<EventView>, ApiError> {
    Ok(shared
        .store
        .events(object, limit)
        .map_err(ApiError::internal)?
        .into_iter()
        .map(|e| EventView {
            time: rfc3339_ms(e.at_ms),
            kind: e.kind,
            reason: e.reason,
            message: e.message,
        })
        .collect())
}

pub(crate) fn path_error(rejection: PathRejection) -> ApiError {
    ApiError::new(
        StatusCode::BAD_REQUEST,
        "bad_request",
        format!("invalid path: {}", rejection.body_text()),
    )
}
