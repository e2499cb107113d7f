//! The OpenAI-compatible HTTP side of the gateway: `/v1/chat/completions`,
//! `/v1/completions`, `/v1/embeddings` and `/v1/models`, with tenant API keys, lineage
//! headers on every response, OpenAI-shaped errors, the single retry, streaming passed
//! through frame by frame, and one audit record, one metrics observation and one trace per
//! call.

use std::{
    future::Future,
    pin::Pin,
    sync::{atomic::Ordering, Arc},
    task::{Context, Poll},
    time::{Duration, Instant},
};

use axum::{
    body::Body,
    extract::{DefaultBodyLimit, State},
    http::{header, HeaderMap, HeaderName, HeaderValue, Request, StatusCode},
    response::{IntoResponse, Response},
    routing::{get, post},
    Router,
};
use bytes::Bytes;
use http_body::{Body as _, Frame};
use http_body_util::Full;
use hyper_util::{
    client::legacy::{connect::HttpConnector, Client},
    rt::TokioExecutor,
};
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use super::{
    metrics::{CallLabels, Observation},
    queue::QueuedCall,
    routing::{prefix_key, Failure, RequestFacts, RetryPolicy, DEFAULT_PREFIX_BYTES},
    service::{Gateway, KeyError, Outcome, Route, Slot, Waiter},
    Grant,
};
use crate::{
    audit::AuditRecord,
    manifest::QuotaMode,
    otel::{unix_nanos_now, AttrValue, Span, SpanContext, SpanKind},
};

/// A call that finds no deployment or no ready replica rebuilds the snapshot first when it
/// is older than this.
const STALE_SNAPSHOT: Duration = Duration::from_millis(50);

/// Largest request body accepted.
pub const MAX_BODY_BYTES: usize = 32 << 20;

/// Output tokens assumed for a call that does not set `max_tokens` (for its budget estimate).
pub const DEFAULT_EXPECTED_TOKENS: u64 = 256;

/// Most bytes of a non-streamed answer kept to read its `usage` (the answer itself is
/// passed on as it arrives either way).
const USAGE_COPY_LIMIT: usize = 4 << 20;

/// Bytes of the end of a stream kept to find its `usage` event.
const STREAM_TAIL: usize = 16 << 10;

type Upstream = Client<HttpConnector, Full<Bytes>>;

/// Shared by the handlers.
#[derive(Debug, Clone)]
pub struct GatewayState {
    gateway: Arc<Gateway>,
    client: Upstream,
}

/// The upstream client: pooled keep-alive HTTP/1 connections to the runtimes.
fn upstream_client() -> Upstream {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    connector.set_connect_timeout(Some(Duration::from_secs(5)));
    Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(90))
        .pool_max_idle_per_host(1024)
        .build(connector)
}

/// Serves the gateway until `shutdown`, refreshing its route snapshot meanwhile.
pub async fn serve(listener: tokio::net::TcpListener, gateway: Arc<Gateway>, shutdown: CancellationToken) {
    let refresher = {
        let gateway = gateway.clone();
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            let mut ticker = tokio::time::interval(super::service::REFRESH_INTERVAL);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = ticker.tick() => {}
                }
                gateway.refresh();
            }
        })
    };
    // TCP_NODELAY: streamed answers are many small writes, which Nagle would hold for the
    // client's delayed ACK (about 40 ms on Linux).
    let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
        let _ = tcp.set_nodelay(true);
    });
    if let Err(e) = axum::serve(listener, router(gateway))
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await
    {
        tracing::error!(error = %e, "gateway failed");
    }
    refresher.abort();
}

/// The gateway's routes.
pub fn router(gateway: Arc<Gateway>) -> Router {
    let state = GatewayState {
        gateway,
        client: upstream_client(),
    };
    Router::new()
        .route("/v1/chat/completions", post(chat))
        .route("/v1/completions", post(completions))
        .route("/v1/embeddings", post(embeddings))
        .route("/v1/models", get(models))
        .route("/v1/models/{*id}", get(model))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(state)
}

/// The OpenAI operation of a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Operation {
    Chat,
    Completion,
    Embeddings,
}

impl Operation {
    fn path(self) -> &'static str {
        match self {
            Operation::Chat => "/chat/completions",
            Operation::Completion => "/completions",
            Operation::Embeddings => "/embeddings",
        }
    }

    /// `gen_ai.operation.name`.
    fn gen_ai_name(self) -> &'static str {
        match self {
            Operation::Chat => "chat",
            Operation::Completion => "text_completion",
            Operation::Embeddings => "embeddings",
        }
    }
}

/// An OpenAI-shaped error.
#[derive(Debug)]
struct ApiError {
    status: StatusCode,
    kind: &'static str,
    code: &'static str,
    message: String,
    retry_after: Option<u64>,
}

impl ApiError {
    fn new(status: StatusCode, kind: &'static str, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            kind,
            code,
            message: message.into(),
            retry_after: None,
        }
    }

    fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_request_error", code, message)
    }

    fn unavailable(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, "server_error", code, message)
    }

    fn into_response(self) -> Response {
        let body = serde_json::json!({
            "error": {"message": self.message, "type": self.kind, "param": null, "code": self.code}
        });
        let mut response = (self.status, axum::Json(body)).into_response();
        if let Some(secs) = self.retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        response
    }
}

async fn not_found(request: Request<Body>) -> Response {
    let mut response = ApiError::new(
        StatusCode::NOT_FOUND,
        "invalid_request_error",
        "unknown_url",
        format!(
            "no such endpoint: {} {}; the gateway serves POST /v1/chat/completions, POST /v1/completions, POST /v1/embeddings, GET /v1/models and GET /v1/models/{{id}}",
            request.method(),
            request.uri().path()
        ),
    )
    .into_response();
    lineage(response.headers_mut(), &new_request_id(), None, None, None);
    response
}

async fn method_not_allowed(request: Request<Body>) -> Response {
    let mut response = ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "invalid_request_error",
        "method_not_allowed",
        format!("{} is not allowed on {}", request.method(), request.uri().path()),
    )
    .into_response();
    lineage(response.headers_mut(), &new_request_id(), None, None, None);
    response
}

fn new_request_id() -> String {
    format!("{:016x}{:016x}", fastrand::u64(..), fastrand::u64(..))
}

const H_REQUEST_ID: HeaderName = HeaderName::from_static("x-pyxis-request-id");
const H_TENANT: HeaderName = HeaderName::from_static("x-pyxis-tenant");
const H_DEPLOYMENT: HeaderName = HeaderName::from_static("x-pyxis-deployment");
const H_MODEL_VERSION: HeaderName = HeaderName::from_static("x-pyxis-model-version");
const H_RUNTIME: HeaderName = HeaderName::from_static("x-pyxis-runtime");
const H_CLASS: HeaderName = HeaderName::from_static("x-pyxis-hardware-class");
const H_NODE: HeaderName = HeaderName::from_static("x-pyxis-node");

fn header_value(text: &str) -> HeaderValue {
    HeaderValue::from_str(text).unwrap_or_else(|_| HeaderValue::from_static("-"))
}

/// The lineage headers: every one is present; `-` where the call never got that far.
fn lineage(
    headers: &mut HeaderMap,
    request_id: &str,
    tenant: Option<&str>,
    route: Option<&Route>,
    slot: Option<&Slot>,
) {
    let dash = || HeaderValue::from_static("-");
    headers.insert(H_REQUEST_ID, header_value(request_id));
    headers.insert(H_TENANT, tenant.map_or_else(dash, header_value));
    headers.insert(
        H_DEPLOYMENT,
        route.map_or_else(dash, |r| header_value(&r.id_for(tenant.unwrap_or_default()))),
    );
    headers.insert(
        H_MODEL_VERSION,
        route.map_or_else(dash, |r| header_value(&r.model_version)),
    );
    headers.insert(
        H_RUNTIME,
        slot.map_or_else(dash, |s| {
            header_value(&format!("{}/{}", s.replica.runtime_kind, s.replica.runtime_version))
        }),
    );
    headers.insert(
        H_CLASS,
        slot.map_or_else(dash, |s| header_value(&s.replica.hardware_class)),
    );
    headers.insert(H_NODE, slot.map_or_else(dash, |s| header_value(&s.replica.node)));
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, rest) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| rest.trim())
}

async fn authenticate(gateway: &Arc<Gateway>, headers: &HeaderMap) -> Result<(String, String), ApiError> {
    let unauthorized = |message: &str| {
        ApiError::new(
            StatusCode::UNAUTHORIZED,
            "invalid_request_error",
            "invalid_api_key",
            message.to_string(),
        )
    };
    let key = bearer(headers).ok_or_else(|| {
        unauthorized(
            "missing 'Authorization: Bearer <api key>'; an operator creates keys with `pyxis apikey create --tenant T`",
        )
    })?;
    // A cache hit is answered here; a miss reads the store on the blocking pool, never on
    // the async workers.
    let row = match gateway.authenticate_cached(key) {
        Some(result) => result,
        None => {
            let (g, k) = (gateway.clone(), key.to_string());
            tokio::task::spawn_blocking(move || g.authenticate(&k))
                .await
                .unwrap_or_else(|e| Err(KeyError::Store(e.to_string())))
        }
    };
    let row = row.map_err(|e| match e {
        KeyError::Missing | KeyError::Invalid => unauthorized(
            "the API key is not valid (unknown, mistyped or revoked); `pyxis apikey list` shows a tenant's keys",
        ),
        KeyError::Store(reason) => {
            ApiError::unavailable("store_unavailable", format!("cannot check the API key: {reason}"))
        }
    })?;
    // The snapshot may be a moment older than an apply: ask the catalog before refusing.
    if !gateway.table().tenants.contains_key(&row.tenant) && !gateway.shared.catalog().tenants.contains_key(&row.tenant)
    {
        return Err(unauthorized(&format!(
            "the API key's tenant {} no longer exists; its keys no longer work",
            row.tenant
        )));
    }
    Ok((row.tenant.clone(), row.id.clone()))
}

/// The model list's endpoints: authenticate, answer for the tenant, add lineage.
async fn model_listing(
    state: &GatewayState,
    headers: &HeaderMap,
    answer: impl FnOnce(&str) -> (Response, Option<Arc<Route>>),
) -> Response {
    let request_id = new_request_id();
    let (mut response, tenant, route) = match authenticate(&state.gateway, headers).await {
        Ok((tenant, _)) => {
            let (response, route) = answer(&tenant);
            (response, Some(tenant), route)
        }
        Err(e) => {
            state.gateway.metrics.error("-", "unknown", e.code);
            (e.into_response(), None, None)
        }
    };
    lineage(
        response.headers_mut(),
        &request_id,
        tenant.as_deref(),
        route.as_deref(),
        None,
    );
    response
}

async fn models(State(state): State<GatewayState>, headers: HeaderMap) -> Response {
    let gateway = state.gateway.clone();
    model_listing(&state, &headers, |tenant| {
        let data: Vec<Value> = gateway
            .table()
            .of_tenant(tenant)
            .iter()
            .map(|r| model_json(r, tenant))
            .collect();
        (
            axum::Json(serde_json::json!({"object": "list", "data": data})).into_response(),
            None,
        )
    })
    .await
}

async fn model(
    State(state): State<GatewayState>,
    axum::extract::Path(id): axum::extract::Path<String>,
    headers: HeaderMap,
) -> Response {
    let gateway = state.gateway.clone();
    model_listing(&state, &headers, |tenant| match gateway.table().resolve(tenant, &id) {
        Some(route) => (axum::Json(model_json(&route, tenant)).into_response(), Some(route)),
        None => (unknown_model(&gateway, tenant, &id).into_response(), None),
    })
    .await
}

fn model_json(route: &Route, tenant: &str) -> Value {
    let ready = route.live().replicas.iter().filter(|r| r.ready).count();
    serde_json::json!({
        "id": route.id_for(tenant),
        "object": "model",
        "created": 0,
        "owned_by": route.tenant,
        "root": route.model_name,
        "version": route.model_version,
        "ready_replicas": ready,
    })
}

fn unknown_model(gateway: &Gateway, tenant: &str, asked: &str) -> ApiError {
    let known: Vec<String> = gateway
        .table()
        .of_tenant(tenant)
        .iter()
        .map(|r| r.id_for(tenant))
        .collect();
    let hint = if known.is_empty() {
        format!("tenant {tenant} has no deployments")
    } else {
        format!("tenant {tenant} can call: {}", known.join(", "))
    };
    ApiError::new(
        StatusCode::NOT_FOUND,
        "invalid_request_error",
        "model_not_found",
        format!("the model {asked:?} does not exist for this API key ({hint}; GET /v1/models lists them)"),
    )
}

async fn chat(state: State<GatewayState>, headers: HeaderMap, body: Body) -> Response {
    call(state, Operation::Chat, headers, body).await
}

async fn completions(state: State<GatewayState>, headers: HeaderMap, body: Body) -> Response {
    call(state, Operation::Completion, headers, body).await
}

async fn embeddings(state: State<GatewayState>, headers: HeaderMap, body: Body) -> Response {
    call(state, Operation::Embeddings, headers, body).await
}

/// What one call knows as it goes; turned into the audit record, metrics and spans when
/// it ends.
#[derive(Debug)]
struct Call {
    gateway: Arc<Gateway>,
    operation: Operation,
    request_id: String,
    arrived: Instant,
    arrived_ms: i64,
    arrived_nanos: u64,
    trace: SpanContext,
    parent_span: Option<[u8; 8]>,
    tenant: String,
    key_id: String,
    model_asked: String,
    route: Option<Arc<Route>>,
    caller: super::service::Caller,
    grant: Option<Grant>,
    /// Estimated prompt tokens (used when the runtime does not report usage).
    prompt_estimate: u64,
    streaming: bool,
    routing_span: Option<(u64, u64, &'static str)>,
    /// The gateway's error code when it answered with an error of its own.
    error_code: Option<&'static str>,
    /// Recorded (audit, metrics, spans); a call dropped before that is recorded as 499.
    finished: bool,
}

impl Drop for Call {
    fn drop(&mut self) {
        if !self.finished && !self.tenant.is_empty() {
            let answer = Answer {
                status: 499,
                ..Answer::default()
            };
            self.finish(None, answer, Some("the client went away before an answer"));
        }
    }
}

/// Usage and timing of an answer.
#[derive(Debug, Default, Clone, Copy)]
struct Answer {
    status: u16,
    prompt_tokens: Option<u64>,
    completion_tokens: Option<u64>,
    first_byte: Option<Instant>,
    events: u64,
    upstream_start_nanos: u64,
    upstream_error: bool,
}

impl Call {
    fn labels(&self, slot: Option<&Slot>) -> CallLabels {
        CallLabels {
            tenant: self.tenant.clone(),
            // A name no deployment has stays out of the labels: clients choose it, and
            // every new label set is a new series kept for the process's life.
            model: self
                .route
                .as_ref()
                .map_or_else(|| "unknown".to_string(), |r| r.model_name.clone()),
            runtime: slot.map_or_else(|| "none".to_string(), |s| s.replica.runtime_kind.clone()),
            hardware_class: slot.map_or_else(|| "none".to_string(), |s| s.replica.hardware_class.clone()),
        }
    }

    /// Answers an error, recording it.
    fn fail(mut self, error: ApiError) -> Response {
        let status = error.status.as_u16();
        self.error_code = Some(error.code);
        let answer = Answer {
            status,
            ..Answer::default()
        };
        let grant = self.grant.take();
        if grant.is_some() {
            // Nothing was used: give the estimate back.
            self.gateway.settle(grant, &self.tenant, 0);
        }
        let mut response = error.into_response();
        lineage(
            response.headers_mut(),
            &self.request_id,
            Some(&self.tenant),
            self.route.as_deref(),
            None,
        );
        self.finish(None, answer, Some(&response_message(&response)));
        response
    }

    /// Records the call: audit, metrics, spans, budget.
    fn finish(&mut self, slot: Option<&Slot>, answer: Answer, error: Option<&str>) {
        self.finished = true;
        let now = Instant::now();
        let latency = now.saturating_duration_since(self.arrived);
        let ttft = answer.first_byte.map(|t| t.saturating_duration_since(self.arrived));
        let completion = answer.completion_tokens.unwrap_or(answer.events);
        // A call that reached a replica pays for its prompt even when the client went away
        // (499) or the answer broke off (502): the runtime processed it.
        let reached = slot.is_some() && (answer.status < 400 || answer.status == 499 || answer.status == 502);
        let prompt = answer
            .prompt_tokens
            .unwrap_or(if reached { self.prompt_estimate } else { 0 });
        if answer.status >= 400 {
            // Every error answer is counted once, here: the gateway's own by its code, the
            // rest by what happened.
            let code = self.error_code.unwrap_or(match answer.status {
                499 => "client_closed_request",
                _ if answer.upstream_error => "upstream_interrupted",
                _ => "runtime_error",
            });
            let model = self.route.as_ref().map_or("unknown", |r| r.model_name.as_str());
            self.gateway.metrics.error(&self.tenant, model, code);
        }
        self.gateway.metrics.observe(
            &self.labels(slot),
            Observation {
                status: answer.status,
                latency_s: latency.as_secs_f64(),
                ttft_s: ttft.map(|t| t.as_secs_f64()),
                prompt_tokens: prompt,
                completion_tokens: completion,
            },
        );
        if self.route.is_some() {
            if let Some(grant) = self.grant.take() {
                self.gateway.settle(Some(grant), &self.tenant, prompt + completion);
            } else if self.caller.quota_mode == QuotaMode::DryRun && reached {
                self.gateway.settle(None, &self.tenant, prompt + completion);
            }
        }
        let record = AuditRecord {
            request_id: self.request_id.clone(),
            at_ms: self.arrived_ms,
            tenant: self.tenant.clone(),
            key_id: self.key_id.clone(),
            deployment: self.route.as_ref().map_or_else(String::new, |r| r.id_for(&self.tenant)),
            model: self
                .route
                .as_ref()
                .map_or_else(|| self.model_asked.clone(), |r| r.model_name.clone()),
            model_version: self
                .route
                .as_ref()
                .map_or_else(String::new, |r| r.model_version.clone()),
            model_digest: self.route.as_ref().and_then(|r| r.model_digest.clone()),
            runtime_kind: slot.map_or_else(String::new, |s| s.replica.runtime_kind.clone()),
            runtime_version: slot.map_or_else(String::new, |s| s.replica.runtime_version.clone()),
            hardware_class: slot.map_or_else(String::new, |s| s.replica.hardware_class.clone()),
            node: slot.map_or_else(String::new, |s| s.replica.node.clone()),
            gpus: slot.map_or_else(Vec::new, |s| s.replica.gpus.clone()),
            prompt_tokens: prompt,
            completion_tokens: completion,
            status: answer.status,
            latency_ms: latency.as_millis() as u64,
            ttft_ms: ttft.map(|t| t.as_millis() as u64),
            trace_id: self.trace.trace_id_hex(),
        };
        if let Some(audit) = &self.gateway.audit {
            if let Err(e) = audit.submit(record) {
                tracing::warn!(request_id = %self.request_id, error = %e, "audit record not written");
            }
        }
        if self.gateway.tracer.enabled() {
            self.spans(slot, &answer, prompt, completion, error);
        }
    }

    fn spans(&self, slot: Option<&Slot>, answer: &Answer, prompt: u64, completion: u64, error: Option<&str>) {
        let end = unix_nanos_now();
        let tracer = &self.gateway.tracer;
        let model = self
            .route
            .as_ref()
            .map_or_else(|| self.model_asked.clone(), |r| r.model_name.clone());
        let mut attributes: Vec<(&'static str, AttrValue)> = vec![
            ("gen_ai.operation.name", self.operation.gen_ai_name().into()),
            ("gen_ai.system", "pyxis".into()),
            ("gen_ai.request.model", model.clone().into()),
            ("gen_ai.usage.input_tokens", prompt.into()),
            ("gen_ai.usage.output_tokens", completion.into()),
            ("http.response.status_code", i64::from(answer.status).into()),
            ("pyxis.request_id", self.request_id.clone().into()),
            ("pyxis.tenant", self.tenant.clone().into()),
            ("pyxis.streaming", self.streaming.into()),
        ];
        if let Some(route) = &self.route {
            attributes.push(("gen_ai.response.model", route.model_name.clone().into()));
            attributes.push(("pyxis.deployment", route.deployment.clone().into()));
            attributes.push(("pyxis.model_version", route.model_version.clone().into()));
        }
        if let Some(slot) = slot {
            attributes.push(("pyxis.runtime", slot.replica.runtime_kind.clone().into()));
            attributes.push(("pyxis.runtime_version", slot.replica.runtime_version.clone().into()));
            attributes.push(("pyxis.hardware_class", slot.replica.hardware_class.clone().into()));
            attributes.push(("pyxis.node", slot.replica.node.clone().into()));
            attributes.push(("pyxis.replica", slot.replica.name.clone().into()));
        }
        if let Some(first) = answer.first_byte {
            attributes.push((
                "pyxis.time_to_first_token_ms",
                (first.saturating_duration_since(self.arrived).as_secs_f64() * 1000.0).into(),
            ));
        }
        let request_error = error
            .map(str::to_string)
            .or_else(|| (answer.status >= 500).then(|| format!("HTTP {}", answer.status)));
        tracer.record(Span {
            context: self.trace,
            parent_span_id: self.parent_span,
            name: format!("{} {}", self.operation.gen_ai_name(), model),
            kind: SpanKind::Server,
            start_unix_nanos: self.arrived_nanos,
            end_unix_nanos: end,
            attributes,
            error: request_error.clone(),
        });
        if let Some((start, stop, reason)) = self.routing_span {
            let mut attributes: Vec<(&'static str, AttrValue)> = vec![("pyxis.routing.reason", reason.into())];
            if let Some(route) = &self.route {
                attributes.push(("pyxis.routing.policy", route_policy(route).into()));
            }
            if let Some(slot) = slot {
                attributes.push(("pyxis.replica", slot.replica.name.clone().into()));
            }
            tracer.record(Span {
                context: self.trace.child(),
                parent_span_id: Some(self.trace.span_id),
                name: "route".to_string(),
                kind: SpanKind::Internal,
                start_unix_nanos: start,
                end_unix_nanos: stop,
                attributes,
                error: None,
            });
        }
        if let Some(slot) = slot {
            tracer.record(Span {
                context: upstream_context(&self.trace),
                parent_span_id: Some(self.trace.span_id),
                name: format!("POST {}", self.operation.path()),
                kind: SpanKind::Client,
                start_unix_nanos: answer.upstream_start_nanos,
                end_unix_nanos: end,
                attributes: vec![
                    ("gen_ai.request.model", model.into()),
                    ("server.address", slot.replica.base_url.clone().into()),
                    ("http.response.status_code", i64::from(answer.status).into()),
                    ("gen_ai.usage.input_tokens", prompt.into()),
                    ("gen_ai.usage.output_tokens", completion.into()),
                ],
                error: request_error.filter(|_| answer.upstream_error || answer.status >= 500),
            });
        }
    }
}

fn route_policy(route: &Route) -> &'static str {
    match route.routing {
        crate::manifest::RoutingPolicy::LeastOutstanding => "least-outstanding",
        crate::manifest::RoutingPolicy::KvAware => "kv-aware",
        crate::manifest::RoutingPolicy::PrefixAffinity => "prefix-affinity",
        crate::manifest::RoutingPolicy::LatencyBudget => "latency-budget",
    }
}

/// The upstream call's span id: derived from the request's so that the traceparent sent to
/// the runtime and the span exported later agree without storing it.
fn upstream_context(trace: &SpanContext) -> SpanContext {
    let mut span_id = trace.span_id;
    span_id[0] ^= 0x5a;
    span_id[7] ^= 0xa5;
    SpanContext { span_id, ..*trace }
}

fn response_message(response: &Response) -> String {
    response.status().canonical_reason().unwrap_or("error").to_string()
}

/// Text of a request whose first bytes key prefix affinity and whose length estimates its
/// prompt tokens.
fn prompt_text(operation: Operation, body: &serde_json::Map<String, Value>) -> String {
    fn push(out: &mut String, v: &Value) {
        match v {
            Value::String(s) => out.push_str(s),
            Value::Array(items) => {
                for item in items {
                    match item {
                        Value::Object(part) => {
                            if let Some(Value::String(t)) = part.get("text") {
                                out.push_str(t);
                            }
                        }
                        other => push(out, other),
                    }
                }
            }
            Value::Number(n) => out.push_str(&n.to_string()),
            _ => {}
        }
    }
    let mut text = String::new();
    match operation {
        Operation::Chat => {
            if let Some(Value::Array(messages)) = body.get("messages") {
                for m in messages {
                    if let Some(content) = m.get("content") {
                        push(&mut text, content);
                        text.push('\n');
                    }
                }
            }
        }
        Operation::Completion => {
            if let Some(p) = body.get("prompt") {
                push(&mut text, p);
            }
        }
        Operation::Embeddings => {
            if let Some(p) = body.get("input") {
                push(&mut text, p);
            }
        }
    }
    text
}

/// A JSON value for an error message, cut to 80 characters.
fn short(v: &Value) -> String {
    let text = v.to_string();
    match text.char_indices().nth(80) {
        Some((at, _)) => format!("{}...", &text[..at]),
        None => text,
    }
}

fn validate(operation: Operation, body: &serde_json::Map<String, Value>) -> Result<(), ApiError> {
    let need = |field: &'static str, ok: bool, what: &str| {
        if ok {
            Ok(())
        } else {
            Err(ApiError::bad_request("invalid_request", format!("'{field}' {what}")))
        }
    };
    // What was sent instead, for the message.
    let found = |field: &str| match body.get(field) {
        None | Some(Value::Null) => "it is missing".to_string(),
        Some(v) => format!("found {}", short(v)),
    };
    match operation {
        Operation::Chat => need(
            "messages",
            matches!(body.get("messages"), Some(Value::Array(m)) if !m.is_empty()),
            &format!(
                "must be a non-empty array of {{role, content}} messages; {}",
                found("messages")
            ),
        )?,
        Operation::Completion => need(
            "prompt",
            matches!(body.get("prompt"), Some(Value::String(_) | Value::Array(_))),
            &format!("must be a string or an array; {}", found("prompt")),
        )?,
        Operation::Embeddings => need(
            "input",
            matches!(body.get("input"), Some(Value::String(_) | Value::Array(_))),
            &format!("must be a string or an array; {}", found("input")),
        )?,
    }
    for field in ["max_tokens", "max_completion_tokens", "n"] {
        if let Some(v) = body.get(field) {
            if !v.is_null() && v.as_u64().is_none() {
                return Err(ApiError::bad_request(
                    "invalid_request",
                    format!("'{field}' must be a non-negative integer, found {v}"),
                ));
            }
        }
    }
    if let Some(v) = body.get("stream") {
        if !v.is_null() && !v.is_boolean() {
            return Err(ApiError::bad_request(
                "invalid_request",
                format!("'stream' must be true or false, found {v}"),
            ));
        }
    }
    Ok(())
}

async fn call(State(state): State<GatewayState>, operation: Operation, headers: HeaderMap, body: Body) -> Response {
    let gateway = state.gateway.clone();
    let parent = headers
        .get("traceparent")
        .and_then(|v| v.to_str().ok())
        .and_then(crate::otel::parse_traceparent);
    let trace = parent.map_or_else(SpanContext::new_root, |p| p.child());
    let mut call = Call {
        gateway: gateway.clone(),
        operation,
        request_id: new_request_id(),
        arrived: Instant::now(),
        arrived_ms: crate::time::now_ms(),
        arrived_nanos: unix_nanos_now(),
        trace,
        parent_span: parent.map(|p| p.span_id),
        tenant: String::new(),
        key_id: String::new(),
        model_asked: String::new(),
        route: None,
        caller: super::service::Caller::default(),
        grant: None,
        prompt_estimate: 0,
        streaming: false,
        routing_span: None,
        error_code: None,
        finished: false,
    };
    let (tenant, key_id) = match authenticate(&gateway, &headers).await {
        Ok(t) => t,
        Err(e) => {
            // Unauthenticated calls are counted, not audited (they are no tenant's calls,
            // and a flood of them must not fill the audit log).
            gateway.metrics.error("-", "unknown", e.code);
            let mut response = e.into_response();
            lineage(response.headers_mut(), &call.request_id, None, None, None);
            return response;
        }
    };
    call.tenant = tenant;
    call.key_id = key_id;
    if let Some(reason) = gateway.audit_refusal() {
        // Not audited: the audit log is what cannot be written.
        call.finished = true;
        gateway.metrics.audit_refusals.fetch_add(1, Ordering::Relaxed);
        gateway.metrics.error(&call.tenant, "unknown", "audit_unavailable");
        let mut response = ApiError::unavailable("audit_unavailable", reason).into_response();
        lineage(response.headers_mut(), &call.request_id, Some(&call.tenant), None, None);
        return response;
    }
    // A declared length over the limit is refused before a byte of the body is read.
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_BODY_BYTES as u64) {
        return call.fail(too_large());
    }
    // Read only now, after the key was checked: an unauthenticated client cannot make the
    // gateway hold a large body.
    let body = match axum::body::to_bytes(body, MAX_BODY_BYTES).await {
        Ok(body) => body,
        Err(e) => {
            if std::error::Error::source(&e).is_some_and(|s| s.to_string().contains("length limit")) {
                return call.fail(too_large());
            }
            // The client stopped sending (it went away, or its connection broke): nobody
            // is left to answer, and the call is recorded as the client's (499).
            tracing::debug!(request_id = %call.request_id, error = %e, "the client went away while sending its request body");
            let mut response =
                ApiError::bad_request("invalid_request", format!("cannot read the request body: {e}")).into_response();
            lineage(response.headers_mut(), &call.request_id, Some(&call.tenant), None, None);
            let answer = Answer {
                status: 499,
                ..Answer::default()
            };
            call.finish(
                None,
                answer,
                Some("the client went away while sending its request body"),
            );
            return response;
        }
    };
    let mut json: serde_json::Map<String, Value> = match serde_json::from_slice(&body) {
        Ok(Value::Object(map)) => map,
        Ok(_) => {
            return call.fail(ApiError::bad_request(
                "invalid_request",
                "the request body must be a JSON object",
            ))
        }
        Err(e) => {
            return call.fail(ApiError::bad_request(
                "invalid_json",
                format!("the request body is not valid JSON: {e}"),
            ))
        }
    };
    let model = match json.get("model") {
        Some(Value::String(m)) if !m.is_empty() => m.clone(),
        other => {
            let found = match other {
                None | Some(Value::Null) => "it is missing".to_string(),
                Some(Value::String(_)) => "it is empty".to_string(),
                Some(v) => format!("found {v}"),
            };
            return call.fail(ApiError::bad_request(
                "invalid_request",
                format!("'model' must be a deployment (or model) name as GET /v1/models lists them; {found}"),
            ));
        }
    };
    call.model_asked = model.clone();
    let resolved = gateway.table().resolve(&call.tenant, &model).or_else(|| {
        // Applied a moment ago? Look again before saying no.
        gateway.refresh_if_older(STALE_SNAPSHOT);
        gateway.table().resolve(&call.tenant, &model)
    });
    let Some(mut route) = resolved else {
        let error = unknown_model(&gateway, &call.tenant, &model);
        return call.fail(error);
    };
    call.caller = gateway.caller(&call.tenant);
    // Known from here on: a bad body is recorded against the deployment it named.
    call.route = Some(route.clone());
    if let Err(e) = validate(operation, &json) {
        return call.fail(e);
    }
    call.streaming = operation != Operation::Embeddings && json.get("stream").and_then(Value::as_bool).unwrap_or(false);
    let text = prompt_text(operation, &json);
    let prompt_estimate = (text.len() as u64).div_ceil(4).max(1);
    call.prompt_estimate = prompt_estimate;
    let expected = match operation {
        Operation::Embeddings => 0,
        _ => json
            .get("max_completion_tokens")
            .or_else(|| json.get("max_tokens"))
            .and_then(Value::as_u64)
            .unwrap_or(DEFAULT_EXPECTED_TOKENS),
    };
    let estimate = prompt_estimate.saturating_add(expected);
    match gateway.admit(&call.tenant, estimate) {
        Ok(grant) => call.grant = Some(grant),
        Err(over) => {
            if call.caller.quota_mode == QuotaMode::DryRun {
                gateway.metrics.budget_rejection(&call.tenant, false);
                tracing::debug!(tenant = %call.tenant, "over the token budget; served (quotaMode: dry-run)");
            } else {
                gateway.metrics.budget_rejection(&call.tenant, true);
                let mut error = ApiError::new(
                    StatusCode::TOO_MANY_REQUESTS,
                    "tokens",
                    "rate_limit_exceeded",
                    format!(
                        "tenant {} is over its token budget ({} tokens per minute); this call needs about {estimate}; retry after {} s",
                        call.tenant,
                        gateway_limit(&gateway, &call.tenant),
                        over.retry_after_secs()
                    ),
                );
                error.retry_after = Some(over.retry_after_secs());
                return call.fail(error);
            }
        }
    }
    // The runtime serves the model under its model name.
    let body = if model != route.model_name {
        json.insert("model".into(), Value::String(route.model_name.clone()));
        match serde_json::to_vec(&json) {
            Ok(v) => Bytes::from(v),
            Err(e) => return call.fail(ApiError::bad_request("invalid_request", e.to_string())),
        }
    } else {
        body
    };
    let facts_key = prefix_key(&text, DEFAULT_PREFIX_BYTES);
    let expected_u32 = u32::try_from(expected).unwrap_or(u32::MAX);
    gateway.note_demand(&route);
    gateway.metrics.in_flight.fetch_add(1, Ordering::Relaxed);
    let mut in_flight = Some(InFlight(gateway.clone()));

    let mut excluded: Vec<String> = Vec::new();
    let mut attempt = 1u32;
    loop {
        let routing_start = unix_nanos_now();
        let slot = match acquire(&gateway, &route, &call, facts_key, expected_u32, &excluded).await {
            Ok((current, slot)) => {
                // The slot belongs to the deployment as it is now (a newer snapshot after
                // a wait): release into it and record what actually served the call.
                if !Arc::ptr_eq(&current, &route) {
                    route = current;
                    call.route = Some(route.clone());
                }
                slot
            }
            Err(e) => return call.fail(e),
        };
        call.routing_span = Some((routing_start, unix_nanos_now(), slot.reason));
        // Frees the slot if this future is dropped (the client went away) before the
        // answer's body takes it over.
        let mut held = Held {
            gateway: gateway.clone(),
            route: route.clone(),
            slot: Some(slot.clone()),
        };
        let upstream_start_nanos = unix_nanos_now();
        let upstream_start = (Instant::now(), upstream_start_nanos);
        let uri = format!("{}{}", slot.replica.base_url, operation.path());
        let request = match hyper::Request::post(&uri)
            .header(header::CONTENT_TYPE, "application/json")
            .header("traceparent", upstream_context(&call.trace).traceparent())
            .header("x-request-id", call.request_id.as_str())
            .body(Full::new(body.clone()))
        {
            Ok(r) => r,
            Err(e) => {
                held.release();
                return call.fail(ApiError::new(
                    StatusCode::BAD_GATEWAY,
                    "server_error",
                    "bad_upstream",
                    format!("replica {} has an unusable endpoint {uri:?}: {e}", slot.replica.name),
                ));
            }
        };
        let retry = RetryPolicy::default();
        let silence = gateway.shared.config.gateway.upstream_timeout;
        let Ok(sent) = tokio::time::timeout(silence, state.client.request(request)).await else {
            // Not retried: the replica took the call and may still be working on it.
            held.release();
            return silent_replica(call, &route, &slot, upstream_start_nanos, silence);
        };
        match sent {
            Err(e) => {
                held.release();
                let connect = e.is_connect();
                let others = route
                    .live()
                    .replicas
                    .iter()
                    .any(|r| r.ready && r.name != slot.replica.name);
                if connect && others && retry.may_retry(attempt, Failure::ConnectFailed) {
                    tracing::warn!(replica = %slot.replica.name, error = %e, "cannot connect to the replica; retrying on another");
                    gateway.metrics.retries.fetch_add(1, Ordering::Relaxed);
                    excluded.push(slot.replica.name.clone());
                    attempt += 1;
                    continue;
                }
                let message = format!(
                    "replica {} on node {} did not answer: {e}",
                    slot.replica.name, slot.replica.node
                );
                let error = ApiError::new(StatusCode::BAD_GATEWAY, "server_error", "upstream_unreachable", message);
                return upstream_failed(call, &route, &slot, upstream_start_nanos, error);
            }
            Ok(upstream) => {
                let status = upstream.status();
                if status.is_server_error() && retry.may_retry(attempt, Failure::Status5xxBeforeFirstByte) && {
                    let others = route
                        .live()
                        .replicas
                        .iter()
                        .any(|r| r.ready && r.name != slot.replica.name);
                    others
                } {
                    held.release();
                    tracing::warn!(replica = %slot.replica.name, status = status.as_u16(), "the replica answered 5xx; retrying on another");
                    gateway.metrics.retries.fetch_add(1, Ordering::Relaxed);
                    excluded.push(slot.replica.name.clone());
                    attempt += 1;
                    continue;
                }
                held.slot = None;
                let counted = in_flight.take();
                return respond(call, route, slot, upstream, (upstream_start, silence), counted);
            }
        }
    }
}

/// 413 for a body above [`MAX_BODY_BYTES`].
fn too_large() -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "invalid_request_error",
        "invalid_request",
        format!("the request body is larger than the gateway accepts ({MAX_BODY_BYTES} bytes)"),
    )
}

/// 504 for a replica that sent no answer within `gateway.upstream_timeout`.
fn silent_replica(
    call: Call,
    route: &Arc<Route>,
    slot: &Slot,
    upstream_start_nanos: u64,
    silence: Duration,
) -> Response {
    let message = format!(
        "replica {} on node {} sent no answer within {} (gateway.upstream_timeout); the call was not retried, since the replica may still be working on it",
        slot.replica.name,
        slot.replica.node,
        humantime::format_duration(silence)
    );
    let error = ApiError::new(StatusCode::GATEWAY_TIMEOUT, "server_error", "upstream_timeout", message);
    upstream_failed(call, route, slot, upstream_start_nanos, error)
}

/// Answers `error` for a call the replica failed before its answer began, with the
/// replica's lineage, and records it as the replica's failure.
fn upstream_failed(
    mut call: Call,
    route: &Arc<Route>,
    slot: &Slot,
    upstream_start_nanos: u64,
    error: ApiError,
) -> Response {
    let answer = Answer {
        status: error.status.as_u16(),
        upstream_start_nanos,
        upstream_error: true,
        ..Answer::default()
    };
    call.error_code = Some(error.code);
    let message = error.message.clone();
    let mut response = error.into_response();
    lineage(
        response.headers_mut(),
        &call.request_id,
        Some(&call.tenant),
        Some(route),
        Some(slot),
    );
    call.finish(Some(slot), answer, Some(&message));
    response
}

fn gateway_limit(gateway: &Gateway, tenant: &str) -> String {
    gateway
        .shared
        .catalog()
        .tenants
        .get(tenant)
        .and_then(|t| t.object.spec.tokens_per_minute)
        .map_or_else(|| "unlimited".to_string(), |n| n.to_string())
}

fn failed() -> Outcome {
    Outcome {
        ok: false,
        ttft_ms: None,
        tpot_ms: None,
    }
}

/// A slot between acquire and the answer's body.
struct Held {
    gateway: Arc<Gateway>,
    route: Arc<Route>,
    slot: Option<Slot>,
}

impl Held {
    fn release(&mut self) {
        if let Some(slot) = self.slot.take() {
            self.gateway.release(&self.route, &slot, failed());
        }
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        self.release();
    }
}

/// Decrements the in-flight gauge when the call's future ends, however it ends.
struct InFlight(Arc<Gateway>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.metrics.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Gets a replica slot: at once when one is free and nobody is queued; else in the fair
/// queue until the deployment's queue timeout; when no replica is ready and the deployment
/// may scale from zero, after waiting for one to start.
async fn acquire(
    gateway: &Arc<Gateway>,
    route: &Arc<Route>,
    call: &Call,
    prefix: u64,
    expected: u32,
    excluded: &[String],
) -> Result<(Arc<Route>, Slot), ApiError> {
    let exclude: Vec<&str> = excluded.iter().map(String::as_str).collect();
    let facts = RequestFacts {
        prefix_key: prefix,
        expected_tokens: expected,
        latency_budget: route.latency_budget,
        preferred_classes: &route.classes,
    };
    // Scale from zero, or wait for a replica that is starting.
    let mut route = route.clone();
    if !route.live().any_ready() {
        gateway.refresh_if_older(STALE_SNAPSHOT);
        if let Some(current) = gateway
            .table()
            .routes
            .get(&(route.tenant.clone(), route.deployment.clone()))
        {
            route = current.clone();
        }
    }
    if !route.live().any_ready() {
        let wait = if route.scales_from_zero {
            Some(gateway.shared.config.gateway.scale_from_zero_timeout)
        } else if starting(gateway, &route) {
            Some(route.queue_timeout)
        } else {
            None
        };
        match wait {
            Some(limit) => {
                // Bounded per tenant, as queued calls are: one tenant's flood of calls to
                // a deployment that is starting cannot pile up without end.
                let Some(_waiting) = gateway.start_waiting(&call.tenant, &route, super::queue::DEFAULT_MAX_PER_TENANT)
                else {
                    let mut error = ApiError::new(
                        StatusCode::TOO_MANY_REQUESTS,
                        "requests",
                        "queue_full",
                        format!(
                            "{} has no ready replica yet and tenant {} already has {} calls waiting for one to start; retry later",
                            route.id_for(&call.tenant),
                            call.tenant,
                            super::queue::DEFAULT_MAX_PER_TENANT
                        ),
                    );
                    error.retry_after = Some(1);
                    return Err(error);
                };
                route = wait_for_replica(gateway, &route, limit).await?;
            }
            None => return Err(no_ready_replica(gateway, &route)),
        }
    }
    let (receiver, ticket) = {
        let mut live = route.live();
        if live.queue.is_empty() {
            if let Some(slot) = live.acquire(&route, &facts, &exclude) {
                drop(live);
                return Ok((route, slot));
            }
        }
        if !live.any_ready() {
            drop(live);
            return Err(no_ready_replica(gateway, &route));
        }
        drop(live);
        let (wake, receiver) = tokio::sync::oneshot::channel();
        let queued = QueuedCall {
            tenant: call.tenant.clone(),
            band: call.caller.band,
            weight: call.caller.weight,
            tokens: call.prompt_estimate.saturating_add(u64::from(expected)),
            deadline: Instant::now() + route.queue_timeout,
            payload: Waiter {
                wake,
                prefix_key: prefix,
                expected_tokens: expected,
                exclude: excluded.last().cloned(),
            },
        };
        match gateway.enqueue(&route, queued) {
            Ok(ticket) => (receiver, ticket),
            Err(e) => {
                let mut error = ApiError::new(
                    StatusCode::TOO_MANY_REQUESTS,
                    "requests",
                    "queue_full",
                    format!("every replica of {} is busy and {e}", route.id_for(&call.tenant)),
                );
                error.retry_after = Some(1);
                return Err(error);
            }
        }
    };
    // Gives back a slot handed over after this future is dropped (the client went away
    // between the hand-over and this task running again).
    let mut pending = Pending {
        receiver,
        gateway: gateway.clone(),
        route: route.clone(),
    };
    match tokio::time::timeout(route.queue_timeout, &mut pending.receiver).await {
        Ok(Ok(slot)) => Ok((route, slot)),
        Ok(Err(_)) | Err(_) => {
            if !gateway.cancel(&route, ticket) {
                if let Ok(slot) = pending.receiver.try_recv() {
                    return Ok((route, slot));
                }
            }
            let mut error = ApiError::unavailable(
                "queue_timeout",
                format!(
                    "every replica of {} stayed busy for the queue timeout ({}); add replicas, raise maxConcurrentRequests or retry later",
                    route.id_for(&call.tenant),
                    humantime::format_duration(route.queue_timeout)
                ),
            );
            error.retry_after = Some(1);
            Err(error)
        }
    }
}

/// A queued call's receiver: on drop, a slot already sent to it is given back.
struct Pending {
    receiver: tokio::sync::oneshot::Receiver<Slot>,
    gateway: Arc<Gateway>,
    route: Arc<Route>,
}

impl Drop for Pending {
    fn drop(&mut self) {
        self.receiver.close();
        if let Ok(slot) = self.receiver.try_recv() {
            self.gateway.release(&self.route, &slot, failed());
        }
    }
}

fn no_ready_replica(gateway: &Gateway, route: &Route) -> ApiError {
    let placed = gateway
        .shared
        .registry()
        .replica_views()
        .into_iter()
        .filter(|r| r.tenant == route.tenant && r.deployment == route.deployment)
        .map(|r| format!("{} {}", r.name, r.phase))
        .collect::<Vec<_>>();
    let detail = if placed.is_empty() {
        "none is placed".to_string()
    } else {
        format!("replicas: {}", placed.join(", "))
    };
    no_replica(route, &format!("({detail})"), 5)
}

/// 503 `no_ready_replica`: `deployment T/D has no ready replica {why}`, pointing to
/// `pyxis explain`, with `Retry-After`.
fn no_replica(route: &Route, why: &str, retry_after: u64) -> ApiError {
    let mut error = ApiError::unavailable(
        "no_ready_replica",
        format!(
            "deployment {}/{} has no ready replica {why}; `pyxis explain deployment {} -n {}` says why, node by node",
            route.tenant, route.deployment, route.deployment, route.tenant
        ),
    );
    error.retry_after = Some(retry_after);
    error
}

/// Whether a replica of the deployment is placed and on its way to ready.
fn starting(gateway: &Gateway, route: &Route) -> bool {
    gateway.shared.registry().replica_views().iter().any(|r| {
        r.tenant == route.tenant && r.deployment == route.deployment && (r.phase == "Pending" || r.phase == "Starting")
    })
}

/// Why placement cannot start a replica of the deployment, once a whole placement pass
/// ran after the call's demand was noted (`passes_before`) and placed none of it.
fn unplaceable(gateway: &Gateway, route: &Route, passes_before: u64) -> Option<String> {
    let state = gateway.shared.placement_state();
    // The pass running when the demand was noted may have missed it: wait for the next.
    if state.passes < passes_before + 2 {
        return None;
    }
    let placement = state.placement.as_ref()?;
    let mine = |tenant: &str, deployment: &str| tenant == route.tenant && deployment == route.deployment;
    if placement.replicas.iter().any(|r| mine(&r.tenant, &r.deployment)) {
        return None; // placed: it is starting
    }
    let explanation = placement.explanations.iter().find(|e| mine(&e.tenant, &e.deployment))?;
    (explanation.placed == 0 && explanation.pending > 0).then(|| crate::reconciler::summary(explanation))
}

/// Waits, up to `timeout`, for the deployment to have a ready replica (scaling from zero,
/// or replicas starting).
async fn wait_for_replica(
    gateway: &Arc<Gateway>,
    route: &Arc<Route>,
    timeout: Duration,
) -> Result<Arc<Route>, ApiError> {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut updates = gateway.subscribe();
    let passes_before = gateway.shared.placement_state().passes;
    // Placement passes that place nothing change no route: look at them too.
    let mut look = tokio::time::interval(Duration::from_millis(250));
    look.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let current = gateway
            .table()
            .routes
            .get(&(route.tenant.clone(), route.deployment.clone()))
            .cloned();
        let Some(current) = current else {
            return Err(ApiError::new(
                StatusCode::NOT_FOUND,
                "invalid_request_error",
                "model_not_found",
                format!("deployment {} was deleted while the call waited", route.deployment),
            ));
        };
        if current.live().any_ready() {
            return Ok(current);
        }
        gateway.note_demand(&current);
        if let Some(why) = unplaceable(gateway, &current, passes_before) {
            return Err(no_replica(
                route,
                &format!("and placement cannot start one now ({why})"),
                10,
            ));
        }
        let woken = tokio::select! {
            changed = updates.changed() => changed.is_ok(),
            _ = look.tick() => true,
            _ = tokio::time::sleep_until(deadline) => false,
        };
        if !woken {
            let why = format!("and none became ready within {}", humantime::format_duration(timeout));
            return Err(no_replica(route, &why, 10));
        }
    }
}

/// Passes the replica's answer on, frame by frame.
fn respond(
    call: Call,
    route: Arc<Route>,
    slot: Slot,
    upstream: hyper::Response<hyper::body::Incoming>,
    ((upstream_sent, upstream_start_nanos), silence): ((Instant, u64), Duration),
    in_flight: Option<InFlight>,
) -> Response {
    let (parts, incoming) = upstream.into_parts();
    let sse = parts
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/event-stream"));
    let mut builder = Response::builder().status(parts.status);
    if let Some(headers) = builder.headers_mut() {
        for name in [
            header::CONTENT_TYPE,
            header::CACHE_CONTROL,
            header::CONTENT_ENCODING,
            header::RETRY_AFTER,
        ] {
            if let Some(v) = parts.headers.get(&name) {
                headers.insert(name, v.clone());
            }
        }
        if sse {
            headers.insert(
                HeaderName::from_static("x-accel-buffering"),
                HeaderValue::from_static("no"),
            );
        }
        lineage(headers, &call.request_id, Some(&call.tenant), Some(&route), Some(&slot));
    }
    let body = Tracked {
        inner: incoming,
        sse,
        copy: Vec::new(),
        copy_overflow: false,
        tail: Vec::new(),
        answer: Answer {
            status: parts.status.as_u16(),
            upstream_start_nanos,
            ..Answer::default()
        },
        upstream_sent,
        silence,
        quiet: None,
        finish: Some((call, route, slot)),
        _in_flight: in_flight,
    };
    builder.body(Body::new(body)).unwrap_or_else(|e| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "server_error",
            "internal",
            e.to_string(),
        )
        .into_response()
    })
}

/// The replica's body on its way to the client: counts events and keeps what it needs to
/// read usage, and records the call when it ends (or when the client goes away).
struct Tracked {
    inner: hyper::body::Incoming,
    sse: bool,
    copy: Vec<u8>,
    copy_overflow: bool,
    tail: Vec<u8>,
    answer: Answer,
    /// When the call went to the replica (its latency estimates are measured from here,
    /// not from arrival: queueing and an earlier attempt are not the replica's).
    upstream_sent: Instant,
    /// `gateway.upstream_timeout`: the longest the replica may send nothing.
    silence: Duration,
    /// Runs while the replica is silent; reset by every chunk.
    quiet: Option<Pin<Box<tokio::time::Sleep>>>,
    finish: Option<(Call, Arc<Route>, Slot)>,
    /// Counted in `pyxis_gateway_in_flight` until the body ends.
    _in_flight: Option<InFlight>,
}

impl std::fmt::Debug for Tracked {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tracked")
            .field("sse", &self.sse)
            .finish_non_exhaustive()
    }
}

impl Tracked {
    fn see(&mut self, data: &Bytes) {
        if data.is_empty() {
            return;
        }
        if self.answer.first_byte.is_none() {
            self.answer.first_byte = Some(Instant::now());
        }
        if self.sse {
            // Token chunks: one `data:` event each (except the final usage event and [DONE]).
            self.answer.events += token_events(data);
            self.tail.extend_from_slice(data);
            if self.tail.len() > STREAM_TAIL {
                let cut = self.tail.len() - STREAM_TAIL;
                self.tail.drain(..cut);
            }
        } else if !self.copy_overflow && self.copy.len() + data.len() <= USAGE_COPY_LIMIT {
            self.copy.extend_from_slice(data);
        } else {
            // Too large to keep: usage is not read from this answer (a partial copy is not
            // JSON); the prompt estimate and no completion count stand in.
            self.copy = Vec::new();
            self.copy_overflow = true;
        }
    }

    fn done(&mut self, error: Option<String>, client_gone: bool) {
        let Some((mut call, route, slot)) = self.finish.take() else {
            return;
        };
        let usage = if self.sse {
            stream_usage(&self.tail)
        } else {
            usage_of(&self.copy)
        };
        if let Some((prompt, completion)) = usage {
            self.answer.prompt_tokens = Some(prompt);
            self.answer.completion_tokens = Some(completion);
        } else if !self.sse {
            // A non-streamed answer without usage: one "event" is not a token count.
            self.answer.events = 0;
        }
        if client_gone {
            // nginx's code for "client closed the request".
            self.answer.status = 499;
        }
        if error.is_some() {
            // The answer broke off: the client got a truncated body, whatever the status
            // line said.
            self.answer.upstream_error = true;
            self.answer.status = 502;
        }
        let ok = error.is_none() && !client_gone && self.answer.status < 400;
        let completion = self.answer.completion_tokens.unwrap_or(self.answer.events);
        let sent = self.upstream_sent;
        let ttft_ms = self
            .answer
            .first_byte
            .map(|t| t.saturating_duration_since(sent).as_secs_f64() * 1000.0);
        let tpot_ms = match (self.answer.first_byte, completion) {
            (Some(first), n) if n > 1 && call.streaming => {
                Some(first.elapsed().as_secs_f64() * 1000.0 / (n - 1) as f64)
            }
            _ => None,
        };
        call.gateway.release(&route, &slot, Outcome { ok, ttft_ms, tpot_ms });
        call.finish(Some(&slot), self.answer, error.as_deref());
    }
}

impl http_body::Body for Tracked {
    type Data = Bytes;
    type Error = axum::BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(quiet) = &mut this.quiet {
                    quiet.as_mut().reset(tokio::time::Instant::now() + this.silence);
                }
                if let Some(data) = frame.data_ref() {
                    this.see(data);
                }
                // A body of known length ends with its last frame: the server may never
                // poll again for the end.
                if this.inner.is_end_stream() {
                    this.done(None, false);
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => {
                this.done(Some(format!("the replica's answer broke off: {e}")), false);
                Poll::Ready(Some(Err(e.into())))
            }
            Poll::Ready(None) => {
                this.done(None, false);
                Poll::Ready(None)
            }
            Poll::Pending => {
                // The timer exists only while the replica keeps the client waiting: an
                // answer that arrives whole never starts one.
                let silence = this.silence;
                let quiet = this.quiet.get_or_insert_with(|| Box::pin(tokio::time::sleep(silence)));
                if quiet.as_mut().poll(cx).is_pending() {
                    return Poll::Pending;
                }
                let message = format!(
                    "the replica sent nothing for {} (gateway.upstream_timeout); the answer was cut off",
                    humantime::format_duration(silence)
                );
                if let Some((call, _, _)) = &mut this.finish {
                    call.error_code = Some("upstream_timeout");
                }
                this.done(Some(message.clone()), false);
                Poll::Ready(Some(Err(message.into())))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for Tracked {
    fn drop(&mut self) {
        if self.finish.is_some() {
            let ended = self.inner.is_end_stream();
            self.done(None, !ended);
        }
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Stream events in `data` that carry generated text (a non-empty `content` or `text`):
/// about one token each. The count stands in for usage when the runtime reports none.
fn token_events(data: &[u8]) -> u64 {
    let mut n = 0;
    let mut rest = data;
    while let Some(at) = find(rest, b"data:") {
        let after = &rest[at + 5..];
        let end = find(after, b"data:").unwrap_or(after.len());
        let event = &after[..end];
        let has_text = [&b"\"content\":\""[..], &b"\"text\":\""[..]]
            .iter()
            .any(|key| find(event, key).is_some_and(|i| event.get(i + key.len()).is_some_and(|c| *c != b'"')));
        if has_text {
            n += 1;
        }
        rest = &after[end..];
    }
    n
}

/// An answer (or stream event) read only for its `usage`: every other field is skipped
/// without being built, so reading usage costs a scan of the answer, not a copy of it.
#[derive(serde::Deserialize)]
struct WithUsage {
    usage: Option<UsageCounts>,
}

#[derive(serde::Deserialize)]
struct UsageCounts {
    prompt_tokens: u64,
    completion_tokens: Option<u64>,
}

/// `(prompt, completion)` tokens from an answer's `usage`, when it has one with a prompt count.
fn usage_of(answer: &[u8]) -> Option<(u64, u64)> {
    let usage = serde_json::from_slice::<WithUsage>(answer).ok()?.usage?;
    Some((usage.prompt_tokens, usage.completion_tokens.unwrap_or(0)))
}

/// The usage of a stream: from its last `data:` event that carries one.
fn stream_usage(tail: &[u8]) -> Option<(u64, u64)> {
    let text = String::from_utf8_lossy(tail);
    text.lines()
        .rev()
        .filter_map(|line| line.strip_prefix("data:"))
        .map(str::trim)
        .filter(|d| d.contains("\"usage\""))
        .find_map(|d| usage_of(d.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_usage_is_read_from_the_last_usage_event() {
        let tail = b"data: {\"choices\":[{\"delta\":{\"content\":\"a\"}}]}\n\ndata: {\"choices\":[],\"usage\":{\"prompt_tokens\":7,\"completion_tokens\":3}}\n\ndata: [DONE]\n\n";
        assert_eq!(stream_usage(tail), Some((7, 3)));
        assert_eq!(stream_usage(b"data: {\"choices\":[]}\n\n"), None);
    }

    #[test]
    fn usage_is_read_from_an_answer_whatever_else_it_holds() {
        let answer = br#"{"id":"x","choices":[{"message":{"content":"a \"quoted\" text"}}],"usage":{"prompt_tokens":12,"completion_tokens":5,"total_tokens":17}}"#;
        assert_eq!(usage_of(answer), Some((12, 5)));
        assert_eq!(
            usage_of(br#"{"usage":{"prompt_tokens":4,"completion_tokens":null}}"#),
            Some((4, 0))
        );
        assert_eq!(
            usage_of(br#"{"data":[{"embedding":[0.1,0.2]}],"usage":{"prompt_tokens":3}}"#),
            Some((3, 0))
        );
        for none in [
            &br#"{"choices":[]}"#[..],
            br#"{"usage":null}"#,
            br#"{"usage":{"completion_tokens":2}}"#,
            b"not json",
            b"",
        ] {
            assert_eq!(usage_of(none), None, "{}", String::from_utf8_lossy(none));
        }
    }

    #[test]
    fn token_events_count_only_generated_text() {
        let chunk = b"data: {\"choices\":[{\"delta\":{\"role\":\"assistant\",\"content\":\"\"}}]}\n\ndata: {\"choices\":[{\"delta\":{\"content\":\"hi\"}}]}\n\ndata: {\"choices\":[{\"text\":\" there\"}]}\n\ndata: {\"choices\":[{\"delta\":{},\"finish_reason\":\"stop\"}]}\n\ndata: [DONE]\n\n";
        assert_eq!(token_events(chunk), 2);
    }

    #[test]
    fn prompt_text_covers_every_operation() {
        let chat: serde_json::Map<String, Value> = serde_json::from_str(
            r#"{"messages":[{"role":"system","content":"be brief"},{"role":"user","content":[{"type":"text","text":"hi"}]}]}"#,
        )
        .unwrap_or_default();
        assert_eq!(prompt_text(Operation::Chat, &chat), "be brief\nhi\n");
        let completion: serde_json::Map<String, Value> =
            serde_json::from_str(r#"{"prompt":["a","b"]}"#).unwrap_or_default();
        assert_eq!(prompt_text(Operation::Completion, &completion), "ab");
    }

    #[test]
    fn bad_bodies_name_the_field() {
        let body: serde_json::Map<String, Value> =
            serde_json::from_str(r#"{"model":"m","messages":[],"max_tokens":-1}"#).unwrap_or_default();
        let e = validate(Operation::Chat, &body)
            .err()
            .map(|e| e.message)
            .unwrap_or_default();
        assert!(e.contains("'messages'"), "{e}");
        let body: serde_json::Map<String, Value> =
            serde_json::from_str(r#"{"model":"m","messages":[{"role":"user","content":"x"}],"max_tokens":-1}"#)
                .unwrap_or_default();
        let e = validate(Operation::Chat, &body)
            .err()
            .map(|e| e.message)
            .unwrap_or_default();
        assert!(e.contains("'max_tokens'"), "{e}");
        // A wrong type is named as such, not as a missing field.
        for (operation, body, want) in [
            (
                Operation::Chat,
                r#"{"messages":"hi"}"#,
                "'messages' must be a non-empty array of {role, content} messages; found \"hi\"",
            ),
            (
                Operation::Chat,
                r#"{}"#,
                "'messages' must be a non-empty array of {role, content} messages; it is missing",
            ),
            (
                Operation::Completion,
                r#"{"prompt":5}"#,
                "'prompt' must be a string or an array; found 5",
            ),
            (
                Operation::Embeddings,
                r#"{"input":{}}"#,
                "'input' must be a string or an array; found {}",
            ),
        ] {
            let body: serde_json::Map<String, Value> = serde_json::from_str(body).unwrap_or_default();
            let e = validate(operation, &body).err().map(|e| e.message).unwrap_or_default();
            assert_eq!(e, want);
        }
        assert_eq!(short(&Value::String("x".repeat(200))).chars().count(), 83);
    }

    #[test]
    fn bearer_is_case_insensitive() {
        let mut h = HeaderMap::new();
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("bearer  k"));
        assert_eq!(bearer(&h), Some("k"));
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("Basic k"));
        assert_eq!(bearer(&h), None);
    }
}
