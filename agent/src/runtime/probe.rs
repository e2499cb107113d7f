//! The supervisor's HTTP probes: plain HTTP/1.1 GETs to a runtime on this host (readiness,
//! liveness, version, metrics). No TLS, no redirects, bounded bodies and a deadline per
//! call. Behind [`HttpGet`] so tests can answer probes without a server.

use std::{future::Future, pin::Pin, time::Duration};

use http_body_util::{BodyExt, Empty, Limited};
use hyper::body::Bytes;
use hyper_util::{
    client::legacy::{connect::HttpConnector, Client},
    rt::TokioExecutor,
};

/// Largest body read from a probe (a busy runtime's metrics page is a few hundred KiB).
pub const MAX_BODY_BYTES: usize = 4 * 1024 * 1024;

/// An answer: status and body (lossily decoded as UTF-8).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpAnswer {
    /// HTTP status.
    pub status: u16,
    /// Body.
    pub body: String,
}

/// Why a probe got no answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProbeError {
    /// The URL is not one this client can call.
    #[error("invalid probe URL {url}: {reason}")]
    Url {
        /// URL.
        url: String,
        /// Why.
        reason: String,
    },
    /// No answer within the deadline.
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    /// Connecting or exchanging failed (connection refused while a runtime loads).
    #[error("{0}")]
    Failed(String),
}

/// A boxed future of a probe answer.
pub type ProbeFuture = Pin<Box<dyn Future<Output = Result<HttpAnswer, ProbeError>> + Send>>;

/// Makes GET requests for the supervisor.
pub trait HttpGet: Send + Sync + std::fmt::Debug {
    /// GET `url`, giving up after `timeout`.
    fn get(&self, url: String, timeout: Duration) -> ProbeFuture;
}

/// The real client (hyper-util's, one connection per probe: runtimes restart on the same
/// ports, so pooled connections would only go stale).
#[derive(Debug, Clone)]
pub struct HyperGet {
    client: Client<HttpConnector, Empty<Bytes>>,
}

impl Default for HyperGet {
    fn default() -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        let client = Client::builder(TokioExecutor::new())
            .pool_max_idle_per_host(0)
            .build(connector);
        Self { client }
    }
}

impl HttpGet for HyperGet {
    fn get(&self, url: String, timeout: Duration) -> ProbeFuture {
        let client = self.client.clone();
        Box::pin(async move {
            let uri: hyper::Uri = url.parse().map_err(|e: hyper::http::uri::InvalidUri| ProbeError::Url {
                url: url.clone(),
                reason: e.to_string(),
            })?;
            if uri.scheme_str() != Some("http") {
                return Err(ProbeError::Url {
                    url,
                    reason: "only http:// is probed".into(),
                });
            }
            let exchange = async {
                let response = client.get(uri).await.map_err(|e| ProbeError::Failed(error_chain(&e)))?;
                let status = response.status().as_u16();
                let body = Limited::new(response.into_body(), MAX_BODY_BYTES)
                    .collect()
                    .await
                    .map_err(|e| ProbeError::Failed(format!("reading the body: {e}")))?
                    .to_bytes();
                Ok(HttpAnswer {
                    status,
                    body: String::from_utf8_lossy(&body).into_owned(),
                })
            };
            tokio::time::timeout(timeout, exchange)
                .await
                .map_err(|_| ProbeError::Timeout(timeout))?
        })
    }
}

/// An error with its causes (`client error (Connect): tcp connect error: Connection refused`):
/// hyper's top-level messages alone say little.
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn gets_status_and_body_and_reports_refusals() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            while let Ok((mut socket, _)) = listener.accept().await {
                let mut buf = [0u8; 1024];
                let _ = socket.read(&mut buf).await;
                let _ = socket
                    .write_all(
                        b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 7\r\nConnection: close\r\n\r\nloading",
                    )
                    .await;
            }
        });
        let get = HyperGet::default();
        let answer = get
            .get(format!("http://{addr}/health"), Duration::from_secs(5))
            .await
            .unwrap();
        assert_eq!(
            answer,
            HttpAnswer {
                status: 503,
                body: "loading".into()
            }
        );
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = closed.local_addr().unwrap().port();
        drop(closed);
        let err = get
            .get(format!("http://127.0.0.1:{port}/"), Duration::from_secs(5))
            .await
            .unwrap_err();
        assert!(err.to_string().to_lowercase().contains("refused"), "{err}");
        assert!(matches!(
            get.get("https://x/".into(), Duration::from_secs(1)).await,
            Err(ProbeError::Url { .. })
        ));
    }
}
