//! The load generator: raw HTTP/1.1 keep-alive connections (one per worker task, opened
//! before the clock starts), open loop at a fixed rate or closed loop back to back.

use std::{
    net::SocketAddr,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use anyhow::{anyhow, bail, Context, Result};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{client::conn::http1::SendRequest, header, Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// The longest one call may take; longer counts as an error (and the connection is
/// replaced).
pub const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// Where a target's requests go.
#[derive(Debug, Clone)]
pub struct Endpoint {
    /// Label in reports.
    pub name: String,
    /// Address to connect to.
    pub addr: SocketAddr,
    /// Request path (`/v1/chat/completions`).
    pub path: String,
    /// `Authorization: Bearer` value, if any.
    pub bearer: Option<String>,
}

impl Endpoint {
    /// A POST of `body` to the endpoint's path.
    pub fn request(&self, body: Bytes) -> Result<Request<Full<Bytes>>> {
        let mut builder = Request::builder()
            .method(Method::POST)
            .uri(&self.path)
            .header(header::HOST, self.addr.to_string())
            .header(header::CONTENT_TYPE, "application/json")
            .header(header::ACCEPT, "*/*");
        if let Some(token) = &self.bearer {
            builder = builder.header(header::AUTHORIZATION, format!("Bearer {token}"));
        }
        builder
            .body(Full::new(body))
            .with_context(|| format!("building a request for {}", self.name))
    }
}

/// One keep-alive HTTP/1.1 connection.
pub struct Conn {
    sender: SendRequest<Full<Bytes>>,
}

impl Conn {
    /// Connects and hands the connection's I/O to a task on the current runtime.
    pub async fn open(addr: SocketAddr) -> Result<Self> {
        let stream = tokio::time::timeout(Duration::from_secs(5), TcpStream::connect(addr))
            .await
            .map_err(|_| anyhow!("connecting to {addr}: timed out after 5 s"))?
            .with_context(|| format!("connecting to {addr}"))?;
        stream.set_nodelay(true).context("TCP_NODELAY")?;
        let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .with_context(|| format!("HTTP/1.1 handshake with {addr}"))?;
        tokio::spawn(async move {
            // An error here shows up as a failed request on the sender.
            let _ = connection.await;
        });
        Ok(Self { sender })
    }

    /// Sends one request and reads the whole response body, within [`CALL_TIMEOUT`].
    pub async fn call(&mut self, request: Request<Full<Bytes>>) -> Result<(StatusCode, Bytes)> {
        tokio::time::timeout(CALL_TIMEOUT, self.call_inner(request))
            .await
            .map_err(|_| anyhow!("no complete answer within {CALL_TIMEOUT:?}"))?
    }

    async fn call_inner(&mut self, request: Request<Full<Bytes>>) -> Result<(StatusCode, Bytes)> {
        self.sender.ready().await.context("connection closed")?;
        let response = self.sender.send_request(request).await.context("sending the request")?;
        let status = response.status();
        let body = response
            .into_body()
            .collect()
            .await
            .context("reading the response body")?
            .to_bytes();
        Ok((status, body))
    }

    /// Sends one streaming request; returns the status, the time from `start` to the first
    /// SSE chunk carrying a token (or the end of the body if none does), and the body.
    /// Fails after [`CALL_TIMEOUT`].
    pub async fn call_streaming(
        &mut self,
        request: Request<Full<Bytes>>,
        start: Instant,
    ) -> Result<(StatusCode, Duration, Bytes)> {
        tokio::time::timeout(CALL_TIMEOUT, self.call_streaming_inner(request, start))
            .await
            .map_err(|_| anyhow!("no complete answer within {CALL_TIMEOUT:?}"))?
    }

    async fn call_streaming_inner(
        &mut self,
        request: Request<Full<Bytes>>,
        start: Instant,
    ) -> Result<(StatusCode, Duration, Bytes)> {
        self.sender.ready().await.context("connection closed")?;
        let response = self.sender.send_request(request).await.context("sending the request")?;
        let status = response.status();
        let mut body = response.into_body();
        let mut first = None;
        let mut all = Vec::new();
        while let Some(frame) = body.frame().await {
            let frame = frame.context("reading the response body")?;
            if let Ok(data) = frame.into_data() {
                if first.is_none() && carries_token(&data) {
                    first = Some(start.elapsed());
                }
                all.extend_from_slice(&data);
            }
        }
        Ok((status, first.unwrap_or_else(|| start.elapsed()), Bytes::from(all)))
    }
}

/// Whether an SSE chunk carries a generated token: a `data:` line with non-empty delta
/// content or text (the role-only first chunk of a chat stream does not count), or the end.
fn carries_token(data: &[u8]) -> bool {
    let text = String::from_utf8_lossy(data);
    text.lines().filter_map(|l| l.strip_prefix("data:")).any(|payload| {
        let payload = payload.trim();
        payload == "[DONE]"
            || ["\"content\":\"", "\"text\":\""].iter().any(|key| {
                payload
                    .match_indices(key)
                    .any(|(at, _)| payload[at + key.len()..].chars().next().is_some_and(|c| c != '"'))
            })
    })
}

/// What one open-loop run measured.
#[derive(Debug, Default)]
pub struct OpenLoop {
    /// Latency of every successful request, ns.
    pub latencies_ns: Vec<u64>,
    /// Requests scheduled.
    pub scheduled: u64,
    /// Non-2xx answers and transport failures.
    pub errors: u64,
    /// The first error, for the report.
    pub first_error: Option<String>,
    /// From the first scheduled request to the last answer.
    pub elapsed: Duration,
}

/// What one closed-loop run measured.
#[derive(Debug, Default)]
pub struct ClosedLoop {
    /// Successful requests.
    pub ok: u64,
    /// Non-2xx answers and transport failures.
    pub errors: u64,
    /// The first error, for the report.
    pub first_error: Option<String>,
    /// Measured window.
    pub elapsed: Duration,
}

impl ClosedLoop {
    /// Successful requests per second.
    pub fn rps(&self) -> f64 {
        self.ok as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

fn describe(status: StatusCode, body: &[u8]) -> String {
    let body = String::from_utf8_lossy(body);
    let body: String = body.chars().take(300).collect();
    format!("HTTP {status}: {body}")
}

/// Opens `n` connections to `addr`.
async fn open_all(addr: SocketAddr, n: usize) -> Result<Vec<Conn>> {
    let mut conns = Vec::with_capacity(n);
    for _ in 0..n {
        conns.push(Conn::open(addr).await?);
    }
    Ok(conns)
}

/// Open loop: request `i` is due at `t0 + i / rate`, for `duration`, on up to
/// `connections` connections. A worker claims the next due request when it is free.
///
/// Latency runs from when the request was due when no connection was free then (the
/// target held every connection: coordinated omission is counted), else from when the
/// worker's timer fired and it sent (the timer's slack, up to a millisecond, is the
/// client's, not the target's).
pub async fn open_loop(
    endpoint: &Endpoint,
    body: &Bytes,
    rate: f64,
    duration: Duration,
    connections: usize,
) -> Result<OpenLoop> {
    if !(rate.is_finite() && rate > 0.0) {
        bail!("the rate must be positive, not {rate}");
    }
    let total = (rate * duration.as_secs_f64()).round() as u64;
    let conns = open_all(endpoint.addr, connections).await?;
    let next = Arc::new(AtomicU64::new(0));
    let t0 = Instant::now() + Duration::from_millis(20);
    let mut workers = Vec::new();
    for mut conn in conns {
        let next = next.clone();
        let endpoint = endpoint.clone();
        let body = body.clone();
        workers.push(tokio::spawn(async move {
            let mut out = OpenLoop::default();
            loop {
                let claimed = Instant::now();
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= total {
                    break;
                }
                let due = t0 + Duration::from_secs_f64(i as f64 / rate);
                let start = if claimed < due {
                    tokio::time::sleep_until(due.into()).await;
                    Instant::now()
                } else {
                    due
                };
                if send(&mut conn, &endpoint, &body, &mut out.errors, &mut out.first_error).await? {
                    out.latencies_ns.push(start.elapsed().as_nanos() as u64);
                }
            }
            anyhow::Ok(out)
        }));
    }
    let mut merged = OpenLoop {
        scheduled: total,
        ..OpenLoop::default()
    };
    for worker in workers {
        let out = worker.await.context("a load worker panicked")??;
        merged.latencies_ns.extend(out.latencies_ns);
        merged.errors += out.errors;
        if merged.first_error.is_none() {
            merged.first_error = out.first_error;
        }
    }
    merged.elapsed = t0.elapsed();
    Ok(merged)
}

/// Reopens a connection after a transport failure, retrying every 10 ms for a second.
/// Sends one request on `conn`: true for a 2xx answer; otherwise the failure is counted,
/// the first one kept for the report, and a broken connection replaced.
async fn send(
    conn: &mut Conn,
    endpoint: &Endpoint,
    body: &Bytes,
    errors: &mut u64,
    first_error: &mut Option<String>,
) -> Result<bool> {
    let request = endpoint.request(body.clone())?;
    match conn.call(request).await {
        Ok((status, _)) if status.is_success() => Ok(true),
        Ok((status, body)) => {
            *errors += 1;
            first_error.get_or_insert_with(|| describe(status, &body));
            Ok(false)
        }
        Err(e) => {
            *errors += 1;
            first_error.get_or_insert_with(|| format!("{e:#}"));
            *conn = reconnect(endpoint.addr).await;
            Ok(false)
        }
    }
}

async fn reconnect(addr: SocketAddr) -> Conn {
    let mut last = None;
    for _ in 0..100 {
        match Conn::open(addr).await {
            Ok(conn) => return conn,
            Err(e) => last = Some(e),
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Keep trying forever rather than panic: the run's errors will show the failure.
    loop {
        if let Ok(conn) = Conn::open(addr).await {
            return conn;
        }
        if let Some(e) = last.take() {
            eprintln!("  cannot reconnect to {addr}: {e:#}; still trying");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Closed loop: `connections` workers send back to back for `duration`.
pub async fn closed_loop(
    endpoint: &Endpoint,
    body: &Bytes,
    duration: Duration,
    connections: usize,
) -> Result<ClosedLoop> {
    let conns = open_all(endpoint.addr, connections).await?;
    let start = Instant::now();
    let end = start + duration;
    let mut workers = Vec::new();
    for mut conn in conns {
        let endpoint = endpoint.clone();
        let body = body.clone();
        workers.push(tokio::spawn(async move {
            let mut out = ClosedLoop::default();
            while Instant::now() < end {
                if send(&mut conn, &endpoint, &body, &mut out.errors, &mut out.first_error).await? {
                    out.ok += 1;
                }
            }
            anyhow::Ok(out)
        }));
    }
    let mut merged = ClosedLoop::default();
    for worker in workers {
        let out = worker.await.context("a load worker panicked")??;
        merged.ok += out.ok;
        merged.errors += out.errors;
        if merged.first_error.is_none() {
            merged.first_error = out.first_error;
        }
    }
    // Requests in flight at the deadline finish after it; count the time they took.
    merged.elapsed = start.elapsed();
    Ok(merged)
}

/// One request, for readiness checks: status and body.
pub async fn probe(endpoint: &Endpoint, body: &Bytes) -> Result<(StatusCode, String)> {
    let mut conn = Conn::open(endpoint.addr).await?;
    let (status, body) = conn.call(endpoint.request(body.clone())?).await?;
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

/// Nearest-rank percentile of sorted values (`p` in 0..=100).
pub fn percentile(sorted: &[u64], p: f64) -> Option<u64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted.get(rank.clamp(1, sorted.len()) - 1).copied()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_are_nearest_rank() {
        let v: Vec<u64> = (1..=100).collect();
        assert_eq!(percentile(&v, 50.0), Some(50));
        assert_eq!(percentile(&v, 99.0), Some(99));
        assert_eq!(percentile(&v, 100.0), Some(100));
        assert_eq!(percentile(&v, 0.0), Some(1));
        assert_eq!(percentile(&[], 50.0), None);
    }

    #[test]
    fn token_chunks_are_told_from_role_chunks() {
        let role = br#"data: {"choices":[{"index":0,"delta":{"role":"assistant","content":""}}]}"#;
        assert!(!carries_token(role));
        let token = b"data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"hi\"}}]}\n\n";
        assert!(carries_token(token));
        assert!(carries_token(b"data: [DONE]\n\n"));
        assert!(carries_token(b"data: {\"choices\":[{\"text\":\"x\"}]}"));
        assert!(!carries_token(b": keep-alive\n\n"));
    }
}
