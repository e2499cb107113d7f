//! The routing benchmark: a shared-prefix workload, streamed, at a fixed concurrency,
//! through the gateway under two policies and round-robin done here across the replicas.

use std::{
    net::SocketAddr,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use anyhow::{anyhow, Context, Result};
use bytes::Bytes;
use serde_json::json;

use crate::load::{percentile, Conn, Endpoint};

/// Words of [`WORD_CHARS`] characters and a space: the first 64 characters of a system
/// prompt are exactly [`PREFIX_WORDS`] words, so the mock's prefix cache (64 characters)
/// counts [`PREFIX_WORDS`] cached tokens per hit.
const WORD_CHARS: usize = 7;
/// Tokens in the mock's 64-character cached prefix of every prompt here.
pub const PREFIX_WORDS: u64 = 8;
/// The mock's cached prefix, in characters (`PYXIS_MOCK_PREFIX_CHARS`).
pub const MOCK_PREFIX_CHARS: usize = 64;

/// `active` shared prefixes at any time; each serves `reuse` requests and is then replaced
/// by a fresh one (a new conversation or system prompt), so caches keep meeting prefixes
/// they have not seen, as in a real fleet. A request takes a random active prefix.
#[derive(Debug)]
pub struct Workload {
    nonce: u64,
    prefix_chars: usize,
    reuse: u32,
    /// Per active slot: (generation, uses so far).
    slots: Mutex<Vec<(u64, u32)>>,
}

impl Workload {
    pub fn new(nonce: u64, active: usize, reuse: u32, prefix_chars: usize) -> Self {
        Self {
            nonce,
            prefix_chars: prefix_chars.max(MOCK_PREFIX_CHARS),
            reuse: reuse.max(1),
            slots: Mutex::new(vec![(0, 0); active.max(1)]),
        }
    }

    /// The system prompt of `slot` in `generation`: hex words, `prefix_chars` long.
    fn system_prompt(&self, slot: usize, generation: u64) -> String {
        let seed = self
            .nonce
            .wrapping_mul(0x9e37_79b9_7f4a_7c15)
            .wrapping_add((slot as u64) << 40)
            .wrapping_add(generation);
        let mut rng = fastrand::Rng::with_seed(seed);
        let mut text = String::with_capacity(self.prefix_chars + WORD_CHARS);
        while text.len() < self.prefix_chars {
            let word: String = (0..WORD_CHARS)
                .map(|_| char::from_digit(rng.u32(0..16), 16).unwrap_or('0'))
                .collect();
            text.push_str(&word);
            text.push(' ');
        }
        text.truncate(self.prefix_chars);
        text
    }

    /// The next request's body.
    pub fn next_body(&self, model: &str, max_tokens: u32, rng: &mut fastrand::Rng) -> Result<Bytes> {
        let (slot, generation) = {
            let mut slots = self.slots.lock().map_err(|_| anyhow!("workload lock poisoned"))?;
            let slot = rng.usize(0..slots.len());
            let entry = &mut slots[slot];
            if entry.1 >= self.reuse {
                *entry = (entry.0 + 1, 0);
            }
            entry.1 += 1;
            (slot, entry.0)
        };
        let system = self.system_prompt(slot, generation);
        let user = format!(
            "question {:08x}: summarise item {} briefly",
            rng.u32(..),
            rng.u32(0..1000)
        );
        let body = json!({
            "model": model,
            "messages": [
                {"role": "system", "content": system},
                {"role": "user", "content": user},
            ],
            "max_tokens": max_tokens,
            "stream": true,
        });
        Ok(Bytes::from(serde_json::to_vec(&body)?))
    }
}

/// Where a policy's requests go.
#[derive(Debug, Clone)]
pub enum Route {
    /// Through the gateway.
    Gateway(Endpoint),
    /// Round-robin here across these replica endpoints.
    RoundRobin(Vec<Endpoint>),
}

/// What one policy measured.
#[derive(Debug, Clone)]
pub struct PolicyResult {
    pub policy: String,
    pub ok: u64,
    pub errors: u64,
    pub first_error: Option<String>,
    pub elapsed: Duration,
    pub ttft_p50_ms: Option<f64>,
    pub ttft_p99_ms: Option<f64>,
    /// Requests that hit the prefix cache over successful requests, from the replicas'
    /// `vllm:prefix_cache_hits_total` (cached tokens over [`PREFIX_WORDS`] per hit).
    pub prefix_hit_ratio: Option<f64>,
}

impl PolicyResult {
    pub fn rps(&self) -> f64 {
        self.ok as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// The sum of `vllm:prefix_cache_hits_total` over the replicas.
pub fn prefix_hit_tokens(replicas: &[SocketAddr]) -> Result<f64> {
    let mut total = 0.0;
    for addr in replicas {
        let text = ureq::get(&format!("http://{addr}/metrics"))
            .call()
            .with_context(|| format!("GET http://{addr}/metrics"))?
            .body_mut()
            .read_to_string()?;
        total += text
            .lines()
            .filter(|l| l.starts_with("vllm:prefix_cache_hits_total"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>();
    }
    Ok(total)
}

/// Runs `concurrency` streaming clients back to back for `duration` against `route`.
/// `model` is the model name in the requests; `replicas` are scraped for prefix hits.
#[allow(clippy::too_many_arguments)]
pub async fn run_policy(
    policy: &str,
    route: &Route,
    model: &str,
    workload: Arc<Workload>,
    max_tokens: u32,
    concurrency: usize,
    duration: Duration,
    replicas: &[SocketAddr],
    seed: u64,
) -> Result<PolicyResult> {
    let hits_before = {
        let replicas = replicas.to_vec();
        tokio::task::spawn_blocking(move || prefix_hit_tokens(&replicas))
            .await
            .context("metrics task")??
    };
    let endpoints: Vec<Endpoint> = match route {
        Route::Gateway(e) => vec![e.clone()],
        Route::RoundRobin(list) => list.clone(),
    };
    let round_robin = matches!(route, Route::RoundRobin(_));
    let next = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let end = start + duration;
    let mut workers = Vec::new();
    for w in 0..concurrency {
        let mut conns = Vec::new();
        for endpoint in &endpoints {
            conns.push(Conn::open(endpoint.addr).await?);
        }
        let endpoints = endpoints.clone();
        let workload = workload.clone();
        let model = model.to_string();
        let next = next.clone();
        let mut rng = fastrand::Rng::with_seed(seed.wrapping_add(w as u64 * 7919));
        workers.push(tokio::spawn(async move {
            let mut ttfts = Vec::new();
            let (mut errors, mut first_error) = (0u64, None);
            while Instant::now() < end {
                let i = if round_robin {
                    (next.fetch_add(1, Ordering::Relaxed) % endpoints.len() as u64) as usize
                } else {
                    0
                };
                let body = workload.next_body(&model, max_tokens, &mut rng)?;
                let request = endpoints[i].request(body)?;
                let sent = Instant::now();
                match conns[i].call_streaming(request, sent).await {
                    Ok((status, ttft, _)) if status.is_success() => ttfts.push(ttft.as_nanos() as u64),
                    Ok((status, _, body)) => {
                        errors += 1;
                        let text: String = String::from_utf8_lossy(&body).chars().take(300).collect();
                        first_error.get_or_insert_with(|| format!("HTTP {status}: {text}"));
                    }
                    Err(e) => {
                        errors += 1;
                        first_error.get_or_insert_with(|| format!("{e:#}"));
                        tokio::time::sleep(Duration::from_millis(10)).await;
                        if let Ok(conn) = Conn::open(endpoints[i].addr).await {
                            conns[i] = conn;
                        }
                    }
                }
            }
            anyhow::Ok((ttfts, errors, first_error))
        }));
    }
    let mut ttfts = Vec::new();
    let (mut errors, mut first_error) = (0, None);
    for worker in workers {
        let (t, e, f) = worker.await.context("a routing worker panicked")??;
        ttfts.extend(t);
        errors += e;
        if first_error.is_none() {
            first_error = f;
        }
    }
    let elapsed = start.elapsed();
    let hits_after = {
        let replicas = replicas.to_vec();
        tokio::task::spawn_blocking(move || prefix_hit_tokens(&replicas))
            .await
            .context("metrics task")??
    };
    ttfts.sort_unstable();
    let ms = |ns: u64| ns as f64 / 1e6;
    let ok = ttfts.len() as u64;
    let hits = (hits_after - hits_before) / PREFIX_WORDS as f64;
    Ok(PolicyResult {
        policy: policy.to_string(),
        ok,
        errors,
        first_error,
        elapsed,
        ttft_p50_ms: percentile(&ttfts, 50.0).map(ms),
        ttft_p99_ms: percentile(&ttfts, 99.0).map(ms),
        prefix_hit_ratio: (ok > 0).then(|| (hits / ok as f64).clamp(0.0, 1.0)),
    })
}

/// The time to first token of a prefix-cache hit on one endpoint, on a keep-alive
/// connection: the same prompt `tries` times in a row, the fastest of all but the first.
/// Far above the configured hit TTFT, it shows streamed chunks stalling in TCP (a server
/// socket without `TCP_NODELAY`: Nagle holds the small chunk until the client's delayed ACK,
/// about 40 ms on Linux).
pub async fn hit_ttft(endpoint: &Endpoint, model: &str, tries: usize) -> Result<Duration> {
    let workload = Workload::new(u64::MAX, 1, u32::MAX, MOCK_PREFIX_CHARS * 2);
    let mut rng = fastrand::Rng::with_seed(7);
    let mut conn = Conn::open(endpoint.addr).await?;
    let mut best: Option<Duration> = None;
    for i in 0..tries.max(2) {
        let body = workload.next_body(model, 4, &mut rng)?;
        let sent = Instant::now();
        let (status, ttft, body) = conn.call_streaming(endpoint.request(body)?, sent).await?;
        if !status.is_success() {
            let text: String = String::from_utf8_lossy(&body).chars().take(300).collect();
            return Err(anyhow!("{}: HTTP {status}: {text}", endpoint.name));
        }
        if i > 0 {
            best = Some(best.map_or(ttft, |b| b.min(ttft)));
        }
    }
    best.ok_or_else(|| anyhow!("no hit measured"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_mock_prefix_is_exactly_prefix_words() {
        let w = Workload::new(1, 16, 8, 600);
        let system = w.system_prompt(3, 2);
        assert_eq!(system.len(), 600);
        assert_eq!(
            system[..MOCK_PREFIX_CHARS].split_whitespace().count() as u64,
            PREFIX_WORDS
        );
        assert_eq!(system, w.system_prompt(3, 2));
        assert_ne!(system, w.system_prompt(3, 3));
    }

    #[test]
    fn prefixes_rotate_after_reuse() {
        let w = Workload::new(1, 1, 3, 100);
        let mut rng = fastrand::Rng::with_seed(1);
        let prompts: Vec<String> = (0..6)
            .map(|_| {
                let body: serde_json::Value = serde_json::from_slice(&w.next_body("m", 4, &mut rng).unwrap()).unwrap();
                body["messages"][0]["content"].as_str().unwrap().to_string()
            })
            .collect();
        assert_eq!(prompts[0], prompts[2]);
        assert_ne!(prompts[2], prompts[3]);
        assert_eq!(prompts[3], prompts[5]);
    }
}
