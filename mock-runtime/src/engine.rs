//! The mock's engine state: queue and running counts, KV-cache use, token and prefix-cache
//! counters, latency histograms. Sans-IO: it never reads the clock or sleeps; the server
//! passes durations in and does the waiting, so everything here is tested directly.

use std::collections::{HashSet, VecDeque};
use std::time::Duration;

/// Behaviour knobs the engine applies.
#[derive(Debug, Clone, PartialEq)]
pub struct EngineConfig {
    /// Time to first token for a prompt the prefix cache has not seen.
    pub ttft: Duration,
    /// Time per output token after the first.
    pub tpot: Duration,
    /// Whether the prefix cache is on.
    pub prefix_cache: bool,
    /// A prompt hits the cache when its first `prefix_chars` characters were seen before;
    /// shorter prompts are never cached (real caches work in whole blocks).
    pub prefix_chars: usize,
    /// TTFT of a hit, in percent of [`EngineConfig::ttft`].
    pub prefix_hit_ttft_percent: u32,
    /// KV-cache capacity in tokens: usage is in-flight tokens over this.
    pub kv_capacity_tokens: u64,
}

/// Prefixes remembered; the oldest are forgotten beyond this.
const PREFIX_CACHE_ENTRIES: usize = 65_536;

/// What the prefix cache said about one prompt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PrefixOutcome {
    /// The prompt's prefix was seen before.
    pub hit: bool,
    /// Prompt tokens served from the cache (the words inside the prefix).
    pub cached_tokens: u64,
}

/// Why a request stopped, as `finish_reason` and the `finished_reason` metric label name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishReason {
    /// The model stopped by itself (no `max_tokens` given).
    Stop,
    /// `max_tokens` reached.
    Length,
    /// The client went away.
    Abort,
}

impl FinishReason {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            FinishReason::Stop => "stop",
            FinishReason::Length => "length",
            FinishReason::Abort => "abort",
        }
    }
}

/// A Prometheus histogram: fixed upper bounds, counts per bucket, sum and count.
#[derive(Debug, Clone, PartialEq)]
pub struct Histogram {
    /// Upper bounds, ascending; `+Inf` is implied.
    pub bounds: &'static [f64],
    /// Observations per bucket (not cumulative); one more than `bounds` for `+Inf`.
    pub buckets: Vec<u64>,
    /// Sum of observations.
    pub sum: f64,
    /// Number of observations.
    pub count: u64,
}

/// Latency buckets in seconds (vLLM's time-to-first-token buckets).
pub const SECONDS_BUCKETS: &[f64] = &[
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0,
    160.0, 640.0, 2560.0,
];

/// Token-count buckets.
pub const TOKEN_BUCKETS: &[f64] = &[
    1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0, 2000.0, 5000.0, 10000.0, 20000.0, 50000.0,
];

/// Triton's first-response buckets in milliseconds.
pub const TRITON_MS_BUCKETS: &[f64] = &[100.0, 500.0, 2000.0, 5000.0];

impl Histogram {
    /// An empty histogram with these bounds.
    pub fn new(bounds: &'static [f64]) -> Self {
        Histogram {
            bounds,
            buckets: vec![0; bounds.len() + 1],
            sum: 0.0,
            count: 0,
        }
    }

    /// Records one observation.
    pub fn observe(&mut self, value: f64) {
        let index = self
            .bounds
            .iter()
            .position(|b| value <= *b)
            .unwrap_or(self.bounds.len());
        self.buckets[index] += 1;
        self.sum += value;
        self.count += 1;
    }

    /// `(upper bound, cumulative count)` per bucket, `+Inf` last as `f64::INFINITY`.
    pub fn cumulative(&self) -> Vec<(f64, u64)> {
        let mut total = 0;
        self.bounds
            .iter()
            .copied()
            .chain(std::iter::once(f64::INFINITY))
            .zip(&self.buckets)
            .map(|(bound, n)| {
                total += n;
                (bound, total)
            })
            .collect()
    }
}

/// Everything the metrics endpoints report. Counters only grow.
#[derive(Debug, Clone, PartialEq)]
pub struct Stats {
    /// Requests being generated now.
    pub running: u64,
    /// Requests queued behind `max_concurrency`.
    pub waiting: u64,
    /// Prompt + generated tokens of the running requests (what occupies the KV cache).
    pub in_flight_tokens: u64,
    /// KV-cache capacity in tokens.
    pub kv_capacity_tokens: u64,
    /// Largest in-flight token count seen.
    pub max_in_flight_tokens: u64,
    /// Prompt tokens of requests admitted.
    pub prompt_tokens_total: u64,
    /// Tokens generated.
    pub generation_tokens_total: u64,
    /// Prompt tokens looked up in the prefix cache.
    pub prefix_queries_tokens: u64,
    /// Prompt tokens found in the prefix cache.
    pub prefix_hits_tokens: u64,
    /// Requests that looked up the prefix cache.
    pub prefix_queries: u64,
    /// Requests that hit it.
    pub prefix_hits: u64,
    /// Requests finished, by reason: stop, length, abort.
    pub finished: [u64; 3],
    /// Requests admitted (generation or embedding).
    pub requests_total: u64,
    /// Decode steps: one per generated token position of a request batch.
    pub decode_steps: u64,
    /// Seconds spent before the first token (prefill), summed.
    pub prefill_seconds_total: f64,
    /// Seconds spent after the first token (decode), summed.
    pub decode_seconds_total: f64,
    /// Queue to first token.
    pub ttft: Histogram,
    /// Queue to first token in milliseconds, Triton's buckets.
    pub first_response_ms: Histogram,
    /// Queue to last token.
    pub e2e: Histogram,
    /// Time in the queue.
    pub queue: Histogram,
    /// Time between tokens.
    pub inter_token: Histogram,
    /// Mean time per output token of each request.
    pub time_per_output_token: Histogram,
    /// Prompt tokens per request.
    pub prompt_length: Histogram,
    /// Generated tokens per request.
    pub generation_length: Histogram,
}

impl Stats {
    /// KV-cache use, 0 to 1.
    pub fn kv_usage(&self) -> f64 {
        if self.kv_capacity_tokens == 0 {
            return 0.0;
        }
        (self.in_flight_tokens as f64 / self.kv_capacity_tokens as f64).min(1.0)
    }

    /// Prefix-cache hits over queries, in tokens, 0 to 1.
    pub fn prefix_hit_rate(&self) -> f64 {
        if self.prefix_queries_tokens == 0 {
            return 0.0;
        }
        self.prefix_hits_tokens as f64 / self.prefix_queries_tokens as f64
    }

    /// Requests finished successfully (not aborted).
    pub fn succeeded(&self) -> u64 {
        self.finished[0] + self.finished[1]
    }
}

/// The engine: configuration, counters and the prefix cache.
#[derive(Debug)]
pub struct Engine {
    config: EngineConfig,
    stats: Stats,
    seen_prefixes: HashSet<String>,
    prefix_order: VecDeque<String>,
}

impl Engine {
    /// A fresh engine.
    pub fn new(config: EngineConfig) -> Self {
        let stats = Stats {
            running: 0,
            waiting: 0,
            in_flight_tokens: 0,
            kv_capacity_tokens: config.kv_capacity_tokens,
            max_in_flight_tokens: 0,
            prompt_tokens_total: 0,
            generation_tokens_total: 0,
            prefix_queries_tokens: 0,
            prefix_hits_tokens: 0,
            prefix_queries: 0,
            prefix_hits: 0,
            finished: [0; 3],
            requests_total: 0,
            decode_steps: 0,
            prefill_seconds_total: 0.0,
            decode_seconds_total: 0.0,
            ttft: Histogram::new(SECONDS_BUCKETS),
            first_response_ms: Histogram::new(TRITON_MS_BUCKETS),
            e2e: Histogram::new(SECONDS_BUCKETS),
            queue: Histogram::new(SECONDS_BUCKETS),
            inter_token: Histogram::new(SECONDS_BUCKETS),
            time_per_output_token: Histogram::new(SECONDS_BUCKETS),
            prompt_length: Histogram::new(TOKEN_BUCKETS),
            generation_length: Histogram::new(TOKEN_BUCKETS),
        };
        Engine {
            config,
            stats,
            seen_prefixes: HashSet::new(),
            prefix_order: VecDeque::new(),
        }
    }

    /// A copy of the counters.
    pub fn stats(&self) -> Stats {
        self.stats.clone()
    }

    /// A request joins the queue.
    pub fn enqueue(&mut self) {
        self.stats.waiting += 1;
    }

    /// A queued request gave up (client gone) before running.
    pub fn leave_queue(&mut self) {
        self.stats.waiting = self.stats.waiting.saturating_sub(1);
    }

    /// A queued request starts running with `prompt_tokens` in the KV cache after `queued`.
    pub fn start(&mut self, prompt_tokens: u64, queued: Duration) {
        self.stats.waiting = self.stats.waiting.saturating_sub(1);
        self.stats.running += 1;
        self.stats.requests_total += 1;
        self.stats.prompt_tokens_total += prompt_tokens;
        self.stats.prompt_length.observe(prompt_tokens as f64);
        self.stats.queue.observe(queued.as_secs_f64());
        self.occupy(prompt_tokens);
    }

    fn occupy(&mut self, tokens: u64) {
        self.stats.in_flight_tokens += tokens;
        self.stats.max_in_flight_tokens = self.stats.max_in_flight_tokens.max(self.stats.in_flight_tokens);
    }

    /// Looks `prompt` up in the prefix cache (and remembers it). `None` when the cache is off.
    pub fn lookup_prefix(&mut self, prompt: &str, prompt_tokens: u64) -> Option<PrefixOutcome> {
        if !self.config.prefix_cache {
            return None;
        }
        self.stats.prefix_queries += 1;
        self.stats.prefix_queries_tokens += prompt_tokens;
        let Some((end, _)) = prompt.char_indices().nth(self.config.prefix_chars.saturating_sub(1)) else {
            // Shorter than one block: never cached.
            return Some(PrefixOutcome {
                hit: false,
                cached_tokens: 0,
            });
        };
        let end = end + prompt[end..].chars().next().map_or(0, char::len_utf8);
        let prefix = &prompt[..end];
        if self.seen_prefixes.contains(prefix) {
            let cached_tokens = crate::generate::count_tokens(prefix).min(prompt_tokens);
            self.stats.prefix_hits += 1;
            self.stats.prefix_hits_tokens += cached_tokens;
            return Some(PrefixOutcome {
                hit: true,
                cached_tokens,
            });
        }
        if self.prefix_order.len() >= PREFIX_CACHE_ENTRIES {
            if let Some(oldest) = self.prefix_order.pop_front() {
                self.seen_prefixes.remove(&oldest);
            }
        }
        self.seen_prefixes.insert(prefix.to_string());
        self.prefix_order.push_back(prefix.to_string());
        Some(PrefixOutcome {
            hit: false,
            cached_tokens: 0,
        })
    }

    /// The time to first token for a prefix-cache outcome.
    pub fn time_to_first_token(&self, outcome: Option<PrefixOutcome>) -> Duration {
        match outcome {
            Some(PrefixOutcome { hit: true, .. }) => {
                self.config.ttft * self.config.prefix_hit_ttft_percent.min(100) / 100
            }
            _ => self.config.ttft,
        }
    }

    /// `choices` tokens were generated at one position; `since_previous` is the time since
    /// the previous position (the TTFT for the first).
    pub fn tokens(&mut self, choices: u64, first: bool, since_previous: Duration) {
        self.stats.generation_tokens_total += choices;
        self.stats.decode_steps += 1;
        self.occupy(choices);
        if first {
            self.stats.prefill_seconds_total += since_previous.as_secs_f64();
        } else {
            self.stats.decode_seconds_total += since_previous.as_secs_f64();
            for _ in 0..choices {
                self.stats.inter_token.observe(since_previous.as_secs_f64());
            }
        }
    }

    /// Records the time to first token of a request.
    pub fn first_token(&mut self, ttft: Duration) {
        self.stats.ttft.observe(ttft.as_secs_f64());
        self.stats.first_response_ms.observe(ttft.as_secs_f64() * 1000.0);
    }

    /// A running request ended: it frees `in_flight` tokens of KV cache.
    pub fn finish(&mut self, reason: FinishReason, in_flight: u64, generated: u64, e2e: Duration, ttft: Duration) {
        self.stats.running = self.stats.running.saturating_sub(1);
        self.stats.in_flight_tokens = self.stats.in_flight_tokens.saturating_sub(in_flight);
        let index = match reason {
            FinishReason::Stop => 0,
            FinishReason::Length => 1,
            FinishReason::Abort => 2,
        };
        self.stats.finished[index] += 1;
        if reason != FinishReason::Abort {
            self.stats.e2e.observe(e2e.as_secs_f64());
            self.stats.generation_length.observe(generated as f64);
            if generated > 1 {
                let decode = e2e.saturating_sub(ttft).as_secs_f64() / (generated - 1) as f64;
                self.stats.time_per_output_token.observe(decode);
            }
        }
    }

    /// An embedding request: counted, no generation.
    pub fn embedded(&mut self, prompt_tokens: u64) {
        self.stats.requests_total += 1;
        self.stats.prompt_tokens_total += prompt_tokens;
        self.stats.prompt_length.observe(prompt_tokens as f64);
        self.stats.finished[0] += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn engine(prefix_cache: bool) -> Engine {
        Engine::new(EngineConfig {
            ttft: Duration::from_millis(500),
            tpot: Duration::from_millis(10),
            prefix_cache,
            prefix_chars: 8,
            prefix_hit_ttft_percent: 20,
            kv_capacity_tokens: 100,
        })
    }

    #[test]
    fn prefix_cache_hits_on_a_seen_prefix_and_shortens_ttft() {
        let mut e = engine(true);
        let first = e.lookup_prefix("one two three four", 4);
        assert_eq!(
            first,
            Some(PrefixOutcome {
                hit: false,
                cached_tokens: 0
            })
        );
        assert_eq!(e.time_to_first_token(first), Duration::from_millis(500));
        // Same first 8 characters ("one two "), different tail.
        let second = e.lookup_prefix("one two five", 3);
        assert_eq!(
            second,
            Some(PrefixOutcome {
                hit: true,
                cached_tokens: 2
            })
        );
        assert_eq!(e.time_to_first_token(second), Duration::from_millis(100));
        // Too short to be cached, ever.
        assert!(!e.lookup_prefix("short", 1).unwrap().hit);
        assert!(!e.lookup_prefix("short", 1).unwrap().hit);
        let s = e.stats();
        assert_eq!((s.prefix_queries, s.prefix_hits), (4, 1));
        assert_eq!((s.prefix_queries_tokens, s.prefix_hits_tokens), (9, 2));
        assert!((s.prefix_hit_rate() - 2.0 / 9.0).abs() < 1e-9);
    }

    #[test]
    fn prefix_cache_counts_characters_not_bytes() {
        let mut e = engine(true);
        assert!(!e.lookup_prefix("ééééééééX", 1).unwrap().hit);
        assert!(e.lookup_prefix("ééééééééY", 1).unwrap().hit);
    }

    #[test]
    fn prefix_cache_off_is_never_consulted() {
        let mut e = engine(false);
        assert_eq!(e.lookup_prefix("one two three four", 4), None);
        assert_eq!(e.lookup_prefix("one two three four", 4), None);
        assert_eq!(e.time_to_first_token(None), Duration::from_millis(500));
        assert_eq!(e.stats().prefix_queries, 0);
    }

    #[test]
    fn running_waiting_and_kv_usage_follow_requests() {
        let mut e = engine(true);
        e.enqueue();
        e.enqueue();
        assert_eq!((e.stats().waiting, e.stats().running), (2, 0));
        e.start(30, Duration::ZERO);
        assert_eq!((e.stats().waiting, e.stats().running), (1, 1));
        e.tokens(1, true, Duration::from_millis(500));
        e.tokens(1, false, Duration::from_millis(10));
        assert_eq!(e.stats().in_flight_tokens, 32);
        assert!((e.stats().kv_usage() - 0.32).abs() < 1e-9);
        e.finish(
            FinishReason::Length,
            32,
            2,
            Duration::from_millis(510),
            Duration::from_millis(500),
        );
        e.leave_queue();
        let s = e.stats();
        assert_eq!((s.waiting, s.running, s.in_flight_tokens), (0, 0, 0));
        assert_eq!((s.prompt_tokens_total, s.generation_tokens_total), (30, 2));
        assert_eq!(s.finished, [0, 1, 0]);
        assert_eq!(s.e2e.count, 1);
        assert_eq!(s.inter_token.count, 1);
        assert_eq!(s.max_in_flight_tokens, 32);
    }

    #[test]
    fn kv_usage_is_capped_at_one() {
        let mut e = engine(true);
        e.enqueue();
        e.start(500, Duration::ZERO);
        assert_eq!(e.stats().kv_usage(), 1.0);
    }

    #[test]
    fn histogram_buckets_are_cumulative_with_inf_last() {
        let mut h = Histogram::new(&[1.0, 2.0]);
        for v in [0.5, 1.0, 1.5, 3.0] {
            h.observe(v);
        }
        assert_eq!(h.cumulative(), vec![(1.0, 2), (2.0, 3), (f64::INFINITY, 4)]);
        assert_eq!((h.count, h.sum), (4, 6.0));
    }
}
