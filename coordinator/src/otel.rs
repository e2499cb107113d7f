//! A small OpenTelemetry trace exporter: OTLP over HTTP with JSON encoding.
//!
//! What it does:
//! - W3C trace context: [`SpanContext`], [`parse_traceparent`] and [`SpanContext::traceparent`], so a request's
//!   trace continues across the coordinator and the runtimes behind it.
//! - [`Tracer::record`] takes a finished [`Span`] and pushes it onto a bounded in-memory queue (capacity 8192)
//!   without blocking or awaiting; when the queue is full the span is dropped and counted in [`ExportStats`].
//! - One tokio task drains the queue and POSTs batches (up to 512 spans, or whatever is queued every second, and
//!   everything on [`Tracer::shutdown`]) as an `ExportTraceServiceRequest` in the OTLP/JSON mapping to
//!   `{endpoint}/v1/traces`, with a 5 s timeout per request.
//!
//! What it deliberately does not do (hand-written to keep the request path and the build light):
//! - No metrics or logs export, only traces; no OTLP/gRPC, no protobuf encoding, no https.
//! - No sampling beyond the sampled flag of the incoming (or root) context: unsampled spans are not exported.
//! - No retry queue: a batch that fails (connect error, timeout, non-2xx) is counted as failed and dropped; the
//!   failure is logged with `tracing::warn!` at most once every 30 s.
//! - No span builder, scope or context propagation machinery: callers fill in [`Span`] themselves.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::{json, Value};
use tokio::sync::{mpsc, watch, Notify};

/// Spans the queue holds before [`Tracer::record`] starts dropping.
const QUEUE_CAPACITY: usize = 8192;
/// Most spans in one export request.
const MAX_BATCH: usize = 512;
/// How often a partial batch is exported.
const FLUSH_INTERVAL: Duration = Duration::from_secs(1);
/// Limit on one export request, connect included.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Least time between two warnings about failed exports.
const WARN_INTERVAL: Duration = Duration::from_secs(30);
/// The instrumentation scope named in every export.
const SCOPE_NAME: &str = "pyxis-coordinator";
/// The path of the OTLP/HTTP traces signal.
const TRACES_PATH: &str = "/v1/traces";

/// W3C trace context of a span.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpanContext {
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
    pub sampled: bool,
}

impl SpanContext {
    /// The trace id as 32 lowercase hex digits.
    pub fn trace_id_hex(&self) -> String {
        crate::tokens::hex_lower(&self.trace_id)
    }

    /// The span id as 16 lowercase hex digits.
    pub fn span_id_hex(&self) -> String {
        crate::tokens::hex_lower(&self.span_id)
    }

    /// The `traceparent` header value naming this span as the parent: `00-{trace}-{span}-{01|00}`.
    pub fn traceparent(&self) -> String {
        let flags = if self.sampled { "01" } else { "00" };
        format!("00-{}-{}-{flags}", self.trace_id_hex(), self.span_id_hex())
    }

    /// A child context: the same trace and sampled flag, a new random span id.
    pub fn child(&self) -> SpanContext {
        SpanContext {
            trace_id: self.trace_id,
            span_id: random_span_id(),
            sampled: self.sampled,
        }
    }

    /// A new trace: random non-zero trace and span ids, sampled.
    pub fn new_root() -> SpanContext {
        let mut trace = 0u128;
        while trace == 0 {
            trace = fastrand::u128(..);
        }
        SpanContext {
            trace_id: trace.to_be_bytes(),
            span_id: random_span_id(),
            sampled: true,
        }
    }
}

fn random_span_id() -> [u8; 8] {
    let mut span = 0u64;
    while span == 0 {
        span = fastrand::u64(..);
    }
    span.to_be_bytes()
}

/// Parses a `traceparent` header; `None` when it is invalid.
///
/// Follows the W3C Trace Context rules: version `00` is exactly `00-{32 hex}-{16 hex}-{2 hex}`; version `ff` is
/// invalid; a later version is read by the version-00 layout, with anything after a further `-` ignored. Hex must
/// be lowercase; an all-zero trace id or span id is invalid. Surrounding whitespace is ignored.
pub fn parse_traceparent(value: &str) -> Option<SpanContext> {
    let value = value.trim();
    let bytes = value.as_bytes();
    // version(2) - trace(32) - span(16) - flags(2)
    const LEN: usize = 55;
    if bytes.len() < LEN {
        return None;
    }
    let version = parse_hex::<1>(bytes.get(0..2)?)?[0];
    if version == 0xff {
        return None;
    }
    if version == 0 && bytes.len() != LEN {
        return None;
    }
    if bytes.len() > LEN && bytes.get(LEN) != Some(&b'-') {
        return None;
    }
    if bytes[2] != b'-' || bytes[35] != b'-' || bytes[52] != b'-' {
        return None;
    }
    let trace_id = parse_hex::<16>(bytes.get(3..35)?)?;
    let span_id = parse_hex::<8>(bytes.get(36..52)?)?;
    let flags = parse_hex::<1>(bytes.get(53..55)?)?[0];
    if trace_id == [0; 16] || span_id == [0; 8] {
        return None;
    }
    Some(SpanContext {
        trace_id,
        span_id,
        sampled: flags & 0x01 != 0,
    })
}

/// Decodes exactly `2 * N` lowercase hex digits.
fn parse_hex<const N: usize>(digits: &[u8]) -> Option<[u8; N]> {
    if digits.len() != 2 * N || !digits.iter().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f')) {
        return None;
    }
    let mut out = [0u8; N];
    hex::decode_to_slice(digits, &mut out).ok()?;
    Some(out)
}

/// The kind of a span (OTLP `SpanKind`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpanKind {
    Internal,
    Server,
    Client,
}

impl SpanKind {
    /// The OTLP enum value.
    fn otlp(self) -> u8 {
        match self {
            SpanKind::Internal => 1,
            SpanKind::Server => 2,
            SpanKind::Client => 3,
        }
    }
}

/// The value of a span or resource attribute.
#[derive(Debug, Clone, PartialEq)]
pub enum AttrValue {
    Str(String),
    Int(i64),
    Double(f64),
    Bool(bool),
}

impl From<&str> for AttrValue {
    fn from(v: &str) -> Self {
        AttrValue::Str(v.to_owned())
    }
}

impl From<String> for AttrValue {
    fn from(v: String) -> Self {
        AttrValue::Str(v)
    }
}

impl From<i64> for AttrValue {
    fn from(v: i64) -> Self {
        AttrValue::Int(v)
    }
}

/// Saturates at `i64::MAX`.
impl From<u64> for AttrValue {
    fn from(v: u64) -> Self {
        AttrValue::Int(i64::try_from(v).unwrap_or(i64::MAX))
    }
}

impl From<f64> for AttrValue {
    fn from(v: f64) -> Self {
        AttrValue::Double(v)
    }
}

impl From<bool> for AttrValue {
    fn from(v: bool) -> Self {
        AttrValue::Bool(v)
    }
}

impl AttrValue {
    /// The OTLP/JSON `AnyValue`: 64-bit integers as decimal strings, non-finite doubles as "NaN"/"Infinity".
    fn to_json(&self) -> Value {
        match self {
            AttrValue::Str(s) => json!({ "stringValue": s }),
            AttrValue::Int(i) => json!({ "intValue": i.to_string() }),
            AttrValue::Double(d) if d.is_finite() => json!({ "doubleValue": d }),
            AttrValue::Double(d) => {
                let s = if d.is_nan() {
                    "NaN"
                } else if *d > 0.0 {
                    "Infinity"
                } else {
                    "-Infinity"
                };
                json!({ "doubleValue": s })
            }
            AttrValue::Bool(b) => json!({ "boolValue": b }),
        }
    }
}

/// A finished span, ready for [`Tracer::record`].
#[derive(Debug, Clone, PartialEq)]
pub struct Span {
    pub context: SpanContext,
    pub parent_span_id: Option<[u8; 8]>,
    pub name: String,
    pub kind: SpanKind,
    pub start_unix_nanos: u64,
    pub end_unix_nanos: u64,
    pub attributes: Vec<(&'static str, AttrValue)>,
    /// Status ERROR with this message when set; status UNSET otherwise.
    pub error: Option<String>,
}

impl Span {
    /// The OTLP/JSON `Span`.
    fn to_json(&self) -> Value {
        let mut span = serde_json::Map::new();
        span.insert("traceId".into(), self.context.trace_id_hex().into());
        span.insert("spanId".into(), self.context.span_id_hex().into());
        if let Some(parent) = self.parent_span_id {
            span.insert("parentSpanId".into(), hex::encode(parent).into());
        }
        span.insert("name".into(), self.name.clone().into());
        span.insert("kind".into(), self.kind.otlp().into());
        span.insert("startTimeUnixNano".into(), self.start_unix_nanos.to_string().into());
        span.insert("endTimeUnixNano".into(), self.end_unix_nanos.to_string().into());
        span.insert("attributes".into(), attributes_json(&self.attributes));
        let status = match &self.error {
            Some(message) => json!({ "code": 2, "message": message }),
            None => json!({ "code": 0 }),
        };
        span.insert("status".into(), status);
        Value::Object(span)
    }
}

fn attributes_json(attributes: &[(&'static str, AttrValue)]) -> Value {
    attributes
        .iter()
        .map(|(key, value)| json!({ "key": key, "value": value.to_json() }))
        .collect()
}

/// The body of one export request: an OTLP/JSON `ExportTraceServiceRequest`.
fn export_request_json(resource: &Value, spans: &[Span]) -> Value {
    json!({
        "resourceSpans": [{
            "resource": { "attributes": resource },
            "scopeSpans": [{
                "scope": { "name": SCOPE_NAME, "version": env!("CARGO_PKG_VERSION") },
                "spans": spans.iter().map(Span::to_json).collect::<Vec<_>>(),
            }],
        }],
    })
}

/// Nanoseconds since the Unix epoch by the wall clock (0 if the clock is before 1970).
pub fn unix_nanos_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// Counts of spans, since the tracer started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ExportStats {
    /// Accepted by the collector (2xx).
    pub exported: u64,
    /// Dropped before export: the queue was full, or the exporter had stopped.
    pub dropped: u64,
    /// In batches that failed to export (connect error, timeout, non-2xx).
    pub failed: u64,
}

/// Why a tracer could not start.
#[derive(Debug, thiserror::Error)]
pub enum OtelError {
    #[error("invalid OTLP endpoint {endpoint:?}: {reason} (expected a URL like http://127.0.0.1:4318)")]
    InvalidEndpoint { endpoint: String, reason: String },
    #[error(
        "OTLP endpoint {endpoint:?} uses https, which this exporter does not support; use an http:// endpoint \
         (for example a local collector on http://127.0.0.1:4318)"
    )]
    HttpsUnsupported { endpoint: String },
    #[error("cannot start the OTLP exporter for {endpoint:?}: not inside a tokio runtime")]
    NoRuntime { endpoint: String },
}

/// Resolves the configured endpoint to the URL spans are POSTed to.
fn traces_url(endpoint: &str) -> Result<hyper::Uri, OtelError> {
    let invalid = |reason: &str| OtelError::InvalidEndpoint {
        endpoint: endpoint.to_owned(),
        reason: reason.to_owned(),
    };
    let trimmed = endpoint.trim();
    let scheme_end = trimmed
        .find("://")
        .ok_or_else(|| invalid("no scheme; it must start with http://"))?;
    let scheme = trimmed[..scheme_end].to_ascii_lowercase();
    if scheme == "https" {
        return Err(OtelError::HttpsUnsupported {
            endpoint: endpoint.to_owned(),
        });
    }
    if scheme != "http" {
        return Err(invalid("only http:// is supported"));
    }
    if trimmed.contains(['?', '#']) {
        return Err(invalid("it must not have a query or fragment"));
    }
    let base = trimmed.trim_end_matches('/');
    let url = if base.ends_with(TRACES_PATH) {
        base.to_owned()
    } else {
        format!("{base}{TRACES_PATH}")
    };
    let uri: hyper::Uri = url
        .parse()
        .map_err(|e: hyper::http::uri::InvalidUri| invalid(&e.to_string()))?;
    if uri.host().is_none_or(str::is_empty) {
        return Err(invalid("no host"));
    }
    Ok(uri)
}

/// Tunables; the public constructor uses the module constants, tests shrink them.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ExporterConfig {
    pub(crate) queue_capacity: usize,
    pub(crate) max_batch: usize,
    pub(crate) flush_interval: Duration,
    pub(crate) request_timeout: Duration,
}

impl Default for ExporterConfig {
    fn default() -> Self {
        ExporterConfig {
            queue_capacity: QUEUE_CAPACITY,
            max_batch: MAX_BATCH,
            flush_interval: FLUSH_INTERVAL,
            request_timeout: REQUEST_TIMEOUT,
        }
    }
}

#[derive(Debug, Default)]
struct Counters {
    exported: AtomicU64,
    dropped: AtomicU64,
    failed: AtomicU64,
}

#[derive(Debug)]
struct Shared {
    queue: mpsc::Sender<Span>,
    counters: Arc<Counters>,
    stop: Arc<Notify>,
    /// Becomes true when the exporter task has finished.
    done: watch::Receiver<bool>,
}

/// Records finished spans and exports them in the background. Cheap to clone; a disabled tracer does nothing.
#[derive(Clone, Debug)]
pub struct Tracer {
    shared: Option<Arc<Shared>>,
}

impl Tracer {
    /// A tracer that records nothing.
    pub fn disabled() -> Tracer {
        Tracer { shared: None }
    }

    /// Starts the exporter task on the current tokio runtime.
    ///
    /// `endpoint` is a base URL like `http://127.0.0.1:4318` (spans go to `{endpoint}/v1/traces`) or a full URL
    /// ending in `/v1/traces` (used as is); only `http://` is supported. `resource` adds resource attributes;
    /// `service.name` is always `service_name`.
    pub fn start(
        endpoint: &str,
        service_name: &str,
        resource: Vec<(&'static str, AttrValue)>,
    ) -> Result<Tracer, OtelError> {
        Self::start_with(endpoint, service_name, resource, ExporterConfig::default())
    }

    pub(crate) fn start_with(
        endpoint: &str,
        service_name: &str,
        resource: Vec<(&'static str, AttrValue)>,
        config: ExporterConfig,
    ) -> Result<Tracer, OtelError> {
        let url = traces_url(endpoint)?;
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| OtelError::NoRuntime {
            endpoint: endpoint.to_owned(),
        })?;
        let mut attributes = vec![("service.name", AttrValue::from(service_name))];
        attributes.extend(resource.into_iter().filter(|(key, _)| *key != "service.name"));
        let (queue, rx) = mpsc::channel(config.queue_capacity.max(1));
        let counters = Arc::new(Counters::default());
        let stop = Arc::new(Notify::new());
        let (done_tx, done) = watch::channel(false);
        let exporter = Exporter {
            url,
            resource: attributes_json(&attributes),
            client: http_client(config.request_timeout),
            counters: counters.clone(),
            config,
            last_warn: None,
            failed_since_warn: 0,
        };
        runtime.spawn(exporter.run(rx, stop.clone(), done_tx));
        Ok(Tracer {
            shared: Some(Arc::new(Shared {
                queue,
                counters,
                stop,
                done,
            })),
        })
    }

    /// Whether spans are exported at all.
    pub fn enabled(&self) -> bool {
        self.shared.is_some()
    }

    /// Queues a finished span for export. Never blocks or awaits: when the queue is full the span is dropped and
    /// counted. Unsampled spans are ignored.
    pub fn record(&self, span: Span) {
        let Some(shared) = &self.shared else { return };
        if !span.context.sampled {
            return;
        }
        if shared.queue.try_send(span).is_err() {
            shared.counters.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Span counts so far.
    pub fn stats(&self) -> ExportStats {
        match &self.shared {
            None => ExportStats::default(),
            Some(shared) => ExportStats {
                exported: shared.counters.exported.load(Ordering::Relaxed),
                dropped: shared.counters.dropped.load(Ordering::Relaxed),
                failed: shared.counters.failed.load(Ordering::Relaxed),
            },
        }
    }

    /// Exports what is queued, then stops the exporter task; waits at most `timeout`. Spans recorded afterwards are
    /// dropped (and counted).
    pub async fn shutdown(&self, timeout: Duration) {
        let Some(shared) = &self.shared else { return };
        shared.stop.notify_one();
        let mut done = shared.done.clone();
        // An error means the task is gone (it finished or its runtime shut down): nothing left to wait for.
        let _ = tokio::time::timeout(timeout, done.wait_for(|finished| *finished)).await;
    }
}

fn http_client(timeout: Duration) -> Client<HttpConnector, Full<Bytes>> {
    let mut connector = HttpConnector::new();
    connector.set_connect_timeout(Some(timeout));
    connector.set_nodelay(true);
    Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(30))
        .pool_max_idle_per_host(1)
        .build(connector)
}

/// The state of the exporter task.
struct Exporter {
    url: hyper::Uri,
    resource: Value,
    client: Client<HttpConnector, Full<Bytes>>,
    counters: Arc<Counters>,
    config: ExporterConfig,
    last_warn: Option<Instant>,
    /// Spans failed since the last warning, the warned batch included.
    failed_since_warn: u64,
}

impl Exporter {
    async fn run(mut self, mut rx: mpsc::Receiver<Span>, stop: Arc<Notify>, done: watch::Sender<bool>) {
        let max_batch = self.config.max_batch.max(1);
        let mut batch: Vec<Span> = Vec::with_capacity(max_batch);
        let mut tick = tokio::time::interval(self.config.flush_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            // Always at least 1: a full batch is exported as soon as it fills (a limit of 0 would read as "closed").
            let room = max_batch.saturating_sub(batch.len()).max(1);
            tokio::select! {
                biased;
                () = stop.notified() => break,
                received = rx.recv_many(&mut batch, room) => {
                    if received == 0 {
                        // Every Tracer handle is gone.
                        break;
                    }
                    if batch.len() >= max_batch {
                        self.export(&mut batch).await;
                    }
                }
                _ = tick.tick() => {
                    if !batch.is_empty() {
                        self.export(&mut batch).await;
                    }
                }
            }
        }
        // Refuse further spans (record() counts them as dropped), then export everything already queued.
        rx.close();
        while let Some(span) = rx.recv().await {
            batch.push(span);
            if batch.len() >= max_batch {
                self.export(&mut batch).await;
            }
        }
        if !batch.is_empty() {
            self.export(&mut batch).await;
        }
        let _ = done.send(true);
    }

    /// Sends one batch and empties it, counting the spans as exported or failed.
    async fn export(&mut self, batch: &mut Vec<Span>) {
        let count = batch.len() as u64;
        let body = export_request_json(&self.resource, batch);
        batch.clear();
        match self.post(body.to_string()).await {
            Ok(()) => {
                self.counters.exported.fetch_add(count, Ordering::Relaxed);
            }
            Err(reason) => {
                self.counters.failed.fetch_add(count, Ordering::Relaxed);
                self.failed_since_warn = self.failed_since_warn.saturating_add(count);
                let due = self.last_warn.is_none_or(|at| at.elapsed() >= WARN_INTERVAL);
                if due {
                    tracing::warn!(
                        endpoint = %self.url,
                        failed_spans = self.failed_since_warn,
                        "OTLP trace export to {} failed: {reason}; the spans were dropped. Check that an \
                         OTLP/HTTP collector listens there and accepts JSON on /v1/traces (further failures are \
                         logged at most every {} s)",
                        self.url,
                        WARN_INTERVAL.as_secs(),
                    );
                    self.last_warn = Some(Instant::now());
                    self.failed_since_warn = 0;
                }
            }
        }
    }

    async fn post(&self, body: String) -> Result<(), String> {
        let request = hyper::Request::post(self.url.clone())
            .header(hyper::header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| format!("building the request: {e}"))?;
        let exchange = async {
            let response = self
                .client
                .request(request)
                .await
                .map_err(|e| pyxis_agent::runtime::probe::error_chain(&e))?;
            let status = response.status();
            // Read the body so the connection can be reused; keep a little of it for the warning.
            let body = response
                .into_body()
                .collect()
                .await
                .map(|b| b.to_bytes())
                .unwrap_or_default();
            if status.is_success() {
                Ok(())
            } else {
                let text = String::from_utf8_lossy(&body[..body.len().min(200)]).trim().to_owned();
                Err(if text.is_empty() {
                    format!("collector answered {status}")
                } else {
                    format!("collector answered {status}: {text}")
                })
            }
        };
        match tokio::time::timeout(self.config.request_timeout, exchange).await {
            Ok(result) => result,
            Err(_) => Err(format!("no answer within {:?}", self.config.request_timeout)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
    const SPAN: &str = "00f067aa0ba902b7";

    #[test]
    fn traceparent_round_trip() {
        let header = format!("00-{TRACE}-{SPAN}-01");
        let ctx = parse_traceparent(&header).unwrap();
        assert_eq!(ctx.trace_id_hex(), TRACE);
        assert_eq!(ctx.span_id_hex(), SPAN);
        assert!(ctx.sampled);
        assert_eq!(ctx.traceparent(), header);

        let unsampled = parse_traceparent(&format!("00-{TRACE}-{SPAN}-00")).unwrap();
        assert!(!unsampled.sampled);
        assert_eq!(unsampled.traceparent(), format!("00-{TRACE}-{SPAN}-00"));

        // Other flag bits are ignored, only "sampled" is kept.
        assert!(parse_traceparent(&format!("00-{TRACE}-{SPAN}-03")).unwrap().sampled);
        assert!(!parse_traceparent(&format!("00-{TRACE}-{SPAN}-02")).unwrap().sampled);
        // Surrounding whitespace.
        assert_eq!(parse_traceparent(&format!("  {header} ")), Some(ctx));
        // A future version may carry more fields.
        let future = parse_traceparent(&format!("cc-{TRACE}-{SPAN}-01-what-the-future-holds")).unwrap();
        assert_eq!(future.trace_id_hex(), TRACE);

        for _ in 0..100 {
            let root = SpanContext::new_root();
            assert_eq!(parse_traceparent(&root.traceparent()), Some(root));
            let child = root.child();
            assert_eq!(child.trace_id, root.trace_id);
            assert_ne!(child.span_id, root.span_id);
            assert_ne!(child.span_id, [0; 8]);
            assert_eq!(child.sampled, root.sampled);
            assert_eq!(root.trace_id_hex().len(), 32);
            assert_eq!(root.span_id_hex().len(), 16);
        }
    }

    #[test]
    fn traceparent_rejections() {
        let zero_trace = "0".repeat(32);
        let zero_span = "0".repeat(16);
        let upper = TRACE.to_uppercase();
        let bad = [
            String::new(),
            "00".to_owned(),
            format!("ff-{TRACE}-{SPAN}-01"),
            format!("00-{zero_trace}-{SPAN}-01"),
            format!("00-{TRACE}-{zero_span}-01"),
            format!("00-{upper}-{SPAN}-01"),
            format!("00-{}-{SPAN}-01", &TRACE[..31]),
            format!("00-{TRACE}0-{SPAN}-01"),
            format!("00-{TRACE}-{}-01", &SPAN[..15]),
            format!("00-{TRACE}-{SPAN}-1"),
            format!("00-{TRACE}-{SPAN}-01-extra"),
            format!("00-{TRACE}-{SPAN}-0g"),
            format!("0g-{TRACE}-{SPAN}-01"),
            format!("00-{}x-{SPAN}-01", &TRACE[..31]),
            format!("00_{TRACE}-{SPAN}-01"),
            format!("00-{TRACE}_{SPAN}-01"),
            format!("00-{TRACE}-{SPAN}_01"),
            format!("cc-{TRACE}-{SPAN}-01x"),
            format!("00-{TRACE}-{SPAN}-é"),
            format!("00-{}é-{SPAN}-01", &TRACE[..30]),
        ];
        for value in bad {
            assert_eq!(parse_traceparent(&value), None, "{value:?}");
        }
    }

    #[test]
    fn attr_value_conversions() {
        assert_eq!(AttrValue::from("a"), AttrValue::Str("a".into()));
        assert_eq!(AttrValue::from(String::from("b")), AttrValue::Str("b".into()));
        assert_eq!(AttrValue::from(-3i64), AttrValue::Int(-3));
        assert_eq!(AttrValue::from(7u64), AttrValue::Int(7));
        assert_eq!(AttrValue::from(u64::MAX), AttrValue::Int(i64::MAX));
        assert_eq!(AttrValue::from(1.5), AttrValue::Double(1.5));
        assert_eq!(AttrValue::from(true), AttrValue::Bool(true));
        assert_eq!(AttrValue::Double(f64::NAN).to_json(), json!({ "doubleValue": "NaN" }));
        assert_eq!(
            AttrValue::Double(f64::INFINITY).to_json(),
            json!({ "doubleValue": "Infinity" })
        );
        assert_eq!(
            AttrValue::Double(f64::NEG_INFINITY).to_json(),
            json!({ "doubleValue": "-Infinity" })
        );
        assert_eq!(
            AttrValue::Int(i64::MIN).to_json(),
            json!({ "intValue": "-9223372036854775808" })
        );
    }

    #[test]
    fn endpoint_resolution() {
        let url = |e: &str| traces_url(e).map(|u| u.to_string());
        assert_eq!(url("http://127.0.0.1:4318").unwrap(), "http://127.0.0.1:4318/v1/traces");
        assert_eq!(
            url("http://127.0.0.1:4318/").unwrap(),
            "http://127.0.0.1:4318/v1/traces"
        );
        assert_eq!(
            url("http://collector:4318/otlp").unwrap(),
            "http://collector:4318/otlp/v1/traces"
        );
        assert_eq!(url("http://collector/v1/traces").unwrap(), "http://collector/v1/traces");
        assert_eq!(url("HTTP://collector:4318").unwrap(), "http://collector:4318/v1/traces");

        let err = traces_url("https://collector:4318").unwrap_err();
        assert!(matches!(err, OtelError::HttpsUnsupported { .. }));
        let message = err.to_string();
        assert!(
            message.contains("https://collector:4318") && message.contains("http://"),
            "{message}"
        );

        for bad in [
            "",
            "collector:4318",
            "ftp://collector",
            "http://",
            "http://a b",
            "http://c/?x=1",
        ] {
            let err = traces_url(bad).unwrap_err();
            assert!(matches!(err, OtelError::InvalidEndpoint { .. }), "{bad:?}: {err}");
            assert!(err.to_string().contains(&format!("{bad:?}")), "{err}");
        }
    }

    #[test]
    fn start_outside_runtime_is_an_error() {
        let err = Tracer::start("http://127.0.0.1:4318", "svc", vec![]).unwrap_err();
        assert!(matches!(err, OtelError::NoRuntime { .. }), "{err}");
    }

    #[tokio::test]
    async fn disabled_tracer_is_a_no_op() {
        let tracer = Tracer::disabled();
        assert!(!tracer.enabled());
        tracer.record(span(SpanContext::new_root(), None, "x"));
        tracer.shutdown(Duration::from_secs(1)).await;
        assert_eq!(tracer.stats(), ExportStats::default());
    }

    fn span(context: SpanContext, parent: Option<[u8; 8]>, name: &str) -> Span {
        Span {
            context,
            parent_span_id: parent,
            name: name.to_owned(),
            kind: SpanKind::Internal,
            start_unix_nanos: 1_000,
            end_unix_nanos: 2_000,
            attributes: vec![],
            error: None,
        }
    }

    /// An OTLP/HTTP receiver on 127.0.0.1 that stores the JSON bodies POSTed to /v1/traces, answering `status`.
    async fn receiver(status: axum::http::StatusCode) -> (String, Arc<Mutex<Vec<Value>>>) {
        let bodies: Arc<Mutex<Vec<Value>>> = Arc::default();
        let store = bodies.clone();
        let app = axum::Router::new().route(
            "/v1/traces",
            axum::routing::post(move |axum::Json(body): axum::Json<Value>| {
                let store = store.clone();
                async move {
                    store.lock().unwrap().push(body);
                    status
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        (format!("http://{addr}"), bodies)
    }

    /// Polls `check` until it holds or `limit` passes.
    async fn eventually(limit: Duration, mut check: impl FnMut() -> bool) -> bool {
        let deadline = Instant::now() + limit;
        loop {
            if check() {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    fn all_spans(bodies: &[Value]) -> Vec<Value> {
        bodies
            .iter()
            .flat_map(|b| b["resourceSpans"].as_array().cloned().unwrap_or_default())
            .flat_map(|rs| rs["scopeSpans"].as_array().cloned().unwrap_or_default())
            .flat_map(|ss| ss["spans"].as_array().cloned().unwrap_or_default())
            .collect()
    }

    fn attr<'a>(attributes: &'a Value, key: &str) -> &'a Value {
        attributes
            .as_array()
            .unwrap()
            .iter()
            .find(|a| a["key"] == key)
            .map(|a| &a["value"])
            .unwrap_or(&Value::Null)
    }

    #[tokio::test]
    async fn exports_spans_end_to_end() {
        let (endpoint, bodies) = receiver(axum::http::StatusCode::OK).await;
        let tracer = Tracer::start(
            &endpoint,
            "pyxis-test",
            vec![
                ("deployment.environment", "test".into()),
                ("service.name", "ignored".into()),
            ],
        )
        .unwrap();
        assert!(tracer.enabled());

        let root = parse_traceparent(&format!("00-{TRACE}-{SPAN}-01")).unwrap();
        let parent_ctx = root.child();
        let child_ctx = parent_ctx.child();
        let start = unix_nanos_now();
        let parent = Span {
            context: parent_ctx,
            parent_span_id: None,
            name: "POST /v1/chat/completions".into(),
            kind: SpanKind::Server,
            start_unix_nanos: start,
            end_unix_nanos: start + 5_000_000,
            attributes: vec![
                ("http.request.method", "POST".into()),
                ("http.response.status_code", 502i64.into()),
                ("pyxis.ratio", 0.25.into()),
                ("pyxis.streamed", true.into()),
                ("pyxis.bytes", u64::MAX.into()),
            ],
            error: Some("upstream failed".into()),
        };
        let child = Span {
            context: child_ctx,
            parent_span_id: Some(parent_ctx.span_id),
            name: "upstream".into(),
            kind: SpanKind::Client,
            start_unix_nanos: start + 1_000,
            end_unix_nanos: start + 4_000_000,
            attributes: vec![("server.address", String::from("10.0.0.7").into())],
            error: None,
        };
        // Unsampled spans are not exported.
        let unsampled = SpanContext {
            sampled: false,
            ..SpanContext::new_root()
        };
        tracer.record(span(unsampled, None, "not sampled"));
        tracer.record(child.clone());
        tracer.record(parent.clone());
        tracer.shutdown(Duration::from_secs(10)).await;

        assert_eq!(
            tracer.stats(),
            ExportStats {
                exported: 2,
                dropped: 0,
                failed: 0
            }
        );
        assert!(
            eventually(Duration::from_secs(10), || all_spans(&bodies.lock().unwrap()).len()
                == 2)
            .await
        );
        let bodies = bodies.lock().unwrap().clone();

        let resource_spans = &bodies[0]["resourceSpans"][0];
        let resource = &resource_spans["resource"]["attributes"];
        assert_eq!(attr(resource, "service.name"), &json!({ "stringValue": "pyxis-test" }));
        assert_eq!(
            attr(resource, "deployment.environment"),
            &json!({ "stringValue": "test" })
        );
        assert_eq!(resource.as_array().unwrap().len(), 2, "{resource}");
        let scope = &resource_spans["scopeSpans"][0]["scope"];
        assert_eq!(
            scope,
            &json!({ "name": "pyxis-coordinator", "version": env!("CARGO_PKG_VERSION") })
        );

        let spans = all_spans(&bodies);
        let find = |name: &str| spans.iter().find(|s| s["name"] == name).cloned().unwrap();
        let p = find("POST /v1/chat/completions");
        let c = find("upstream");

        assert_eq!(p["traceId"], TRACE);
        assert_eq!(c["traceId"], TRACE);
        assert_eq!(p["spanId"], parent_ctx.span_id_hex());
        assert_eq!(c["spanId"], child_ctx.span_id_hex());
        assert!(p.get("parentSpanId").is_none(), "{p}");
        assert_eq!(c["parentSpanId"], parent_ctx.span_id_hex());
        assert_eq!(p["kind"], 2);
        assert_eq!(c["kind"], 3);
        assert_eq!(p["startTimeUnixNano"], start.to_string());
        assert_eq!(p["endTimeUnixNano"], (start + 5_000_000).to_string());
        assert_eq!(c["startTimeUnixNano"], (start + 1_000).to_string());

        let attrs = &p["attributes"];
        assert_eq!(attr(attrs, "http.request.method"), &json!({ "stringValue": "POST" }));
        assert_eq!(attr(attrs, "http.response.status_code"), &json!({ "intValue": "502" }));
        assert_eq!(attr(attrs, "pyxis.ratio"), &json!({ "doubleValue": 0.25 }));
        assert_eq!(attr(attrs, "pyxis.streamed"), &json!({ "boolValue": true }));
        assert_eq!(attr(attrs, "pyxis.bytes"), &json!({ "intValue": i64::MAX.to_string() }));
        assert_eq!(
            attr(&c["attributes"], "server.address"),
            &json!({ "stringValue": "10.0.0.7" })
        );

        assert_eq!(p["status"], json!({ "code": 2, "message": "upstream failed" }));
        assert_eq!(c["status"], json!({ "code": 0 }));

        // After shutdown, spans are refused and counted as dropped.
        tracer.record(child);
        assert_eq!(tracer.stats().dropped, 1);
    }

    #[tokio::test]
    async fn exports_on_the_flush_interval_and_in_batches() {
        let (endpoint, bodies) = receiver(axum::http::StatusCode::OK).await;
        let config = ExporterConfig {
            max_batch: 3,
            flush_interval: Duration::from_millis(50),
            ..ExporterConfig::default()
        };
        let tracer = Tracer::start_with(&endpoint, "svc", vec![], config).unwrap();
        let root = SpanContext::new_root();
        for i in 0..7 {
            tracer.record(span(root.child(), Some(root.span_id), &format!("s{i}")));
        }
        // No shutdown: the interval flush has to deliver them.
        assert!(eventually(Duration::from_secs(10), || tracer.stats().exported == 7).await);
        let bodies = bodies.lock().unwrap().clone();
        assert_eq!(all_spans(&bodies).len(), 7);
        assert!(bodies.iter().all(|b| all_spans(std::slice::from_ref(b)).len() <= 3));
        tracer.shutdown(Duration::from_secs(5)).await;
    }

    #[tokio::test]
    async fn collector_errors_count_as_failed() {
        let (endpoint, bodies) = receiver(axum::http::StatusCode::INTERNAL_SERVER_ERROR).await;
        let tracer = Tracer::start(&format!("{endpoint}/v1/traces"), "svc", vec![]).unwrap();
        for _ in 0..3 {
            tracer.record(span(SpanContext::new_root(), None, "s"));
        }
        tracer.shutdown(Duration::from_secs(10)).await;
        assert_eq!(
            tracer.stats(),
            ExportStats {
                exported: 0,
                dropped: 0,
                failed: 3
            }
        );
        assert_eq!(all_spans(&bodies.lock().unwrap()).len(), 3);
    }

    #[tokio::test]
    async fn closed_port_counts_failures_without_blocking() {
        // A port nothing listens on: bind, note it, close.
        let port = {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            listener.local_addr().unwrap().port()
        };
        let tracer = Tracer::start(&format!("http://127.0.0.1:{port}"), "svc", vec![]).unwrap();
        let started = Instant::now();
        for _ in 0..1000 {
            tracer.record(span(SpanContext::new_root(), None, "s"));
        }
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "record() took {:?}",
            started.elapsed()
        );
        tracer.shutdown(Duration::from_secs(10)).await;
        assert!(
            eventually(Duration::from_secs(10), || tracer.stats().failed == 1000).await,
            "{:?}",
            tracer.stats()
        );
        assert_eq!(
            tracer.stats(),
            ExportStats {
                exported: 0,
                dropped: 0,
                failed: 1000
            }
        );
    }

    #[tokio::test]
    async fn full_queue_drops_and_counts() {
        let (endpoint, bodies) = receiver(axum::http::StatusCode::OK).await;
        let config = ExporterConfig {
            queue_capacity: 4,
            ..ExporterConfig::default()
        };
        let tracer = Tracer::start_with(&endpoint, "svc", vec![], config).unwrap();
        // The test runs on a current-thread runtime: the exporter cannot drain the queue until this test awaits.
        for _ in 0..10 {
            tracer.record(span(SpanContext::new_root(), None, "s"));
        }
        assert_eq!(tracer.stats().dropped, 6);
        tracer.shutdown(Duration::from_secs(10)).await;
        assert_eq!(
            tracer.stats(),
            ExportStats {
                exported: 4,
                dropped: 6,
                failed: 0
            }
        );
        assert_eq!(all_spans(&bodies.lock().unwrap()).len(), 4);
    }

    #[tokio::test]
    async fn shutdown_is_bounded_and_idempotent() {
        // A peer that accepts connections and never answers: shutdown must return after its timeout.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let held = tokio::spawn(async move {
            let mut conns = Vec::new();
            while let Ok((conn, _)) = listener.accept().await {
                conns.push(conn);
            }
        });
        let tracer = Tracer::start(&format!("http://{addr}"), "svc", vec![]).unwrap();
        let clone = tracer.clone();
        clone.record(span(SpanContext::new_root(), None, "s"));
        let started = Instant::now();
        tracer.shutdown(Duration::from_millis(200)).await;
        assert!(started.elapsed() < Duration::from_secs(3), "{:?}", started.elapsed());
        tracer.shutdown(Duration::from_millis(50)).await;
        held.abort();
    }
}
