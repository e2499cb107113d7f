//! Each flavour's metrics, with the real runtime's names and labels (`docs/runtimes.md`),
//! rendered from the engine's [`Stats`]. Pure.

use std::fmt::Write as _;

use crate::engine::{Histogram, Stats};
use crate::flavor::Flavor;

/// What the renderers need besides the counters.
#[derive(Debug, Clone, Copy)]
pub struct MetricsContext<'a> {
    /// The served model name (the `model_name` / `model` label).
    pub model: &'a str,
    /// Requests processed at once.
    pub max_concurrency: usize,
}

/// Prometheus text exposition (format 0.0.4) being built.
struct Exposition {
    out: String,
}

fn number(value: f64) -> String {
    if value.is_infinite() {
        return if value > 0.0 { "+Inf".into() } else { "-Inf".into() };
    }
    // Python's prometheus_client writes floats: `1.0`, not `1`.
    if value.fract() == 0.0 && value.abs() < 1e15 {
        format!("{value:.1}")
    } else {
        format!("{value}")
    }
}

fn escape(value: &str) -> String {
    value.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

impl Exposition {
    fn new() -> Self {
        Exposition { out: String::new() }
    }

    fn header(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.out, "# HELP {name} {help}");
        let _ = writeln!(self.out, "# TYPE {name} {kind}");
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: f64) {
        self.out.push_str(name);
        if !labels.is_empty() {
            let rendered: Vec<String> = labels.iter().map(|(k, v)| format!("{k}=\"{}\"", escape(v))).collect();
            let _ = write!(self.out, "{{{}}}", rendered.join(","));
        }
        let _ = writeln!(self.out, " {}", number(value));
    }

    fn gauge(&mut self, name: &str, help: &str, labels: &[(&str, &str)], value: f64) {
        self.header(name, "gauge", help);
        self.sample(name, labels, value);
    }

    fn counter(&mut self, name: &str, help: &str, labels: &[(&str, &str)], value: f64) {
        self.header(name, "counter", help);
        self.sample(name, labels, value);
    }

    fn histogram(&mut self, name: &str, help: &str, labels: &[(&str, &str)], histogram: &Histogram) {
        self.header(name, "histogram", help);
        let bucket = format!("{name}_bucket");
        for (bound, count) in histogram.cumulative() {
            let le = number(bound);
            let mut with_le: Vec<(&str, &str)> = labels.to_vec();
            with_le.push(("le", &le));
            self.sample(&bucket, &with_le, count as f64);
        }
        self.sample(&format!("{name}_sum"), labels, histogram.sum);
        self.sample(&format!("{name}_count"), labels, histogram.count as f64);
    }
}

/// The Prometheus text of `flavor`'s metrics endpoint. Ollama has none (empty).
pub fn prometheus(flavor: Flavor, stats: &Stats, ctx: MetricsContext<'_>) -> String {
    let mut e = Exposition::new();
    match flavor {
        Flavor::Vllm => vllm(&mut e, stats, ctx),
        Flavor::Sglang => sglang(&mut e, stats, ctx),
        Flavor::Tgi => tgi(&mut e, stats, ctx),
        Flavor::LlamaCpp => llama_cpp(&mut e, stats),
        Flavor::Trtllm => trtllm(&mut e, stats, ctx),
        Flavor::Triton => triton(&mut e, stats, ctx, false),
        Flavor::Openai => mock(&mut e, stats, ctx),
        Flavor::Ollama => {}
    }
    e.out
}

/// Triton's metrics, with `nv_inference_first_response_histogram_ms` when
/// `--metrics-config histogram_latencies=true`.
pub fn triton_prometheus(stats: &Stats, ctx: MetricsContext<'_>, latency_histograms: bool) -> String {
    let mut e = Exposition::new();
    triton(&mut e, stats, ctx, latency_histograms);
    e.out
}

const REASONS: [&str; 3] = ["stop", "length", "abort"];

fn vllm(e: &mut Exposition, s: &Stats, ctx: MetricsContext<'_>) {
    let l: &[(&str, &str)] = &[("engine", "0"), ("model_name", ctx.model)];
    e.gauge(
        "vllm:num_requests_running",
        "Number of requests in model execution batches.",
        l,
        s.running as f64,
    );
    e.gauge(
        "vllm:num_requests_waiting",
        "Number of requests waiting to be processed.",
        l,
        s.waiting as f64,
    );
    e.gauge(
        "vllm:kv_cache_usage_perc",
        "KV-cache usage. 1 means 100 percent usage.",
        l,
        s.kv_usage(),
    );
    e.counter(
        "vllm:prefix_cache_queries_total",
        "Prefix cache queries, in terms of number of queried tokens.",
        l,
        s.prefix_queries_tokens as f64,
    );
    e.counter(
        "vllm:prefix_cache_hits_total",
        "Prefix cache hits, in terms of number of cached tokens.",
        l,
        s.prefix_hits_tokens as f64,
    );
    e.counter(
        "vllm:num_preemptions_total",
        "Cumulative number of preemption from the engine.",
        l,
        0.0,
    );
    e.counter(
        "vllm:prompt_tokens_total",
        "Number of prefill tokens processed.",
        l,
        s.prompt_tokens_total as f64,
    );
    e.counter(
        "vllm:generation_tokens_total",
        "Number of generation tokens processed.",
        l,
        s.generation_tokens_total as f64,
    );
    e.header(
        "vllm:request_success_total",
        "counter",
        "Count of successfully processed requests.",
    );
    for (i, reason) in REASONS.iter().enumerate() {
        e.sample(
            "vllm:request_success_total",
            &[("engine", "0"), ("finished_reason", reason), ("model_name", ctx.model)],
            s.finished[i] as f64,
        );
    }
    e.histogram(
        "vllm:request_prompt_tokens",
        "Number of prefill tokens processed.",
        l,
        &s.prompt_length,
    );
    e.histogram(
        "vllm:request_generation_tokens",
        "Number of generation tokens processed.",
        l,
        &s.generation_length,
    );
    e.histogram(
        "vllm:time_to_first_token_seconds",
        "Histogram of time to first token in seconds.",
        l,
        &s.ttft,
    );
    e.histogram(
        "vllm:inter_token_latency_seconds",
        "Histogram of inter-token latency in seconds.",
        l,
        &s.inter_token,
    );
    e.histogram(
        "vllm:e2e_request_latency_seconds",
        "Histogram of e2e request latency in seconds.",
        l,
        &s.e2e,
    );
    e.histogram(
        "vllm:request_queue_time_seconds",
        "Histogram of time spent in WAITING phase for request.",
        l,
        &s.queue,
    );
}

fn sglang(e: &mut Exposition, s: &Stats, ctx: MetricsContext<'_>) {
    let l: &[(&str, &str)] = &[("model_name", ctx.model)];
    e.gauge(
        "sglang:num_running_reqs",
        "The number of running requests.",
        l,
        s.running as f64,
    );
    e.gauge(
        "sglang:num_queue_reqs",
        "The number of requests in the waiting queue.",
        l,
        s.waiting as f64,
    );
    e.gauge(
        "sglang:num_used_tokens",
        "The number of used tokens.",
        l,
        s.in_flight_tokens as f64,
    );
    e.gauge("sglang:token_usage", "The token usage.", l, s.kv_usage());
    e.gauge(
        "sglang:cache_hit_rate",
        "The prefix cache hit rate.",
        l,
        s.prefix_hit_rate(),
    );
    e.counter(
        "sglang:prompt_tokens_total",
        "Number of prefill tokens processed.",
        l,
        s.prompt_tokens_total as f64,
    );
    e.counter(
        "sglang:generation_tokens_total",
        "Number of generation tokens processed.",
        l,
        s.generation_tokens_total as f64,
    );
    e.counter(
        "sglang:num_requests_total",
        "Number of requests processed.",
        l,
        s.succeeded() as f64,
    );
    e.histogram(
        "sglang:time_to_first_token_seconds",
        "Histogram of time to first token in seconds.",
        l,
        &s.ttft,
    );
    e.histogram(
        "sglang:time_per_output_token_seconds",
        "Histogram of time per output token in seconds.",
        l,
        &s.time_per_output_token,
    );
    e.histogram(
        "sglang:e2e_request_latency_seconds",
        "Histogram of End-to-end request latency in seconds",
        l,
        &s.e2e,
    );
    e.histogram(
        "sglang:queue_time_seconds",
        "Histogram of queueing time in seconds.",
        l,
        &s.queue,
    );
}

fn tgi(e: &mut Exposition, s: &Stats, _ctx: MetricsContext<'_>) {
    // metrics-exporter-prometheus: counters without `_total`, no labels.
    e.counter("tgi_request_count", "Total requests", &[], s.requests_total as f64);
    e.counter("tgi_request_success", "Successful requests", &[], s.succeeded() as f64);
    e.gauge("tgi_queue_size", "Requests waiting in the queue", &[], s.waiting as f64);
    e.gauge("tgi_batch_current_size", "Current batch size", &[], s.running as f64);
    e.gauge(
        "tgi_batch_current_max_tokens",
        "Maximum tokens for the current batch",
        &[],
        s.kv_capacity_tokens as f64,
    );
    e.histogram(
        "tgi_request_input_length",
        "Input token count per request",
        &[],
        &s.prompt_length,
    );
    e.histogram(
        "tgi_request_generated_tokens",
        "Generated token count per request",
        &[],
        &s.generation_length,
    );
    e.histogram("tgi_request_duration", "Request duration in seconds", &[], &s.e2e);
    e.histogram("tgi_request_queue_duration", "Time spent in the queue", &[], &s.queue);
    e.histogram(
        "tgi_request_mean_time_per_token_duration",
        "Mean time per generated token",
        &[],
        &s.time_per_output_token,
    );
}

fn llama_cpp(e: &mut Exposition, s: &Stats) {
    let per_second = |tokens: u64, seconds: f64| if seconds > 0.0 { tokens as f64 / seconds } else { 0.0 };
    // A real build says `prompt_tokens_total` excludes the tokens reused from the cache,
    // which `prompt_tokens_cached_total` counts (docs/runtimes.md, "checked against a real
    // build").
    e.counter(
        "llamacpp:prompt_tokens_total",
        "Number of prompt tokens processed (excluding cached tokens).",
        &[],
        s.prompt_tokens_total.saturating_sub(s.prefix_hits_tokens) as f64,
    );
    e.counter(
        "llamacpp:prompt_tokens_cached_total",
        "Number of prompt tokens reused from the cache.",
        &[],
        s.prefix_hits_tokens as f64,
    );
    e.counter(
        "llamacpp:prompt_seconds_total",
        "Prompt process time",
        &[],
        s.prefill_seconds_total,
    );
    e.counter(
        "llamacpp:tokens_predicted_total",
        "Number of generation tokens processed.",
        &[],
        s.generation_tokens_total as f64,
    );
    e.counter(
        "llamacpp:tokens_predicted_seconds_total",
        "Predict process time",
        &[],
        s.decode_seconds_total,
    );
    e.counter(
        "llamacpp:n_decode_total",
        "Total number of llama_decode() calls",
        &[],
        s.decode_steps as f64,
    );
    let busy = if s.decode_steps > 0 {
        s.generation_tokens_total as f64 / s.decode_steps as f64
    } else {
        0.0
    };
    e.gauge(
        "llamacpp:n_busy_slots_per_decode",
        "Average number of busy slots per llama_decode() call",
        &[],
        busy,
    );
    e.gauge(
        "llamacpp:prompt_tokens_seconds",
        "Average prompt throughput in tokens/s.",
        &[],
        per_second(s.prompt_tokens_total, s.prefill_seconds_total),
    );
    e.gauge(
        "llamacpp:predicted_tokens_seconds",
        "Average generation throughput in tokens/s.",
        &[],
        per_second(s.generation_tokens_total, s.decode_seconds_total),
    );
    e.gauge(
        "llamacpp:requests_processing",
        "Number of requests processing.",
        &[],
        s.running as f64,
    );
    e.gauge(
        "llamacpp:requests_deferred",
        "Number of requests deferred.",
        &[],
        s.waiting as f64,
    );
    e.gauge(
        "llamacpp:n_tokens_max",
        "Largest observed n_tokens.",
        &[],
        s.max_in_flight_tokens as f64,
    );
}

fn trtllm(e: &mut Exposition, s: &Stats, ctx: MetricsContext<'_>) {
    let l: &[(&str, &str)] = &[("model_name", ctx.model), ("engine_type", "trtllm")];
    e.gauge(
        "trtllm_num_requests_running",
        "Number of requests currently running.",
        l,
        s.running as f64,
    );
    e.gauge(
        "trtllm_num_requests_waiting",
        "Number of requests waiting to be scheduled.",
        l,
        s.waiting as f64,
    );
    e.counter(
        "trtllm_prompt_tokens_total",
        "Number of prefill tokens processed.",
        l,
        s.prompt_tokens_total as f64,
    );
    e.counter(
        "trtllm_generation_tokens_total",
        "Number of generation tokens processed.",
        l,
        s.generation_tokens_total as f64,
    );
    e.counter(
        "trtllm_prompt_cached_tokens_total",
        "Number of prompt tokens served from the KV cache.",
        l,
        s.prefix_hits_tokens as f64,
    );
    e.header(
        "request_success_total",
        "counter",
        "Count of successfully processed requests.",
    );
    for (i, reason) in REASONS.iter().enumerate() {
        e.sample(
            "request_success_total",
            &[
                ("model_name", ctx.model),
                ("engine_type", "trtllm"),
                ("finished_reason", reason),
            ],
            s.finished[i] as f64,
        );
    }
    e.histogram(
        "e2e_request_latency_seconds",
        "Histogram of end to end request latency in seconds.",
        l,
        &s.e2e,
    );
    e.histogram(
        "time_to_first_token_seconds",
        "Histogram of time to first token in seconds.",
        l,
        &s.ttft,
    );
    e.histogram(
        "time_per_output_token_seconds",
        "Histogram of time per output token in seconds.",
        l,
        &s.time_per_output_token,
    );
    e.histogram(
        "request_queue_time_seconds",
        "Histogram of time spent in WAITING phase for request.",
        l,
        &s.queue,
    );
}

fn triton(e: &mut Exposition, s: &Stats, ctx: MetricsContext<'_>, latency_histograms: bool) {
    let l: &[(&str, &str)] = &[("model", ctx.model), ("version", "1")];
    let micros = |h: &Histogram| (h.sum * 1e6).round();
    e.counter(
        "nv_inference_request_success",
        "Number of successful inference requests, all batch sizes",
        l,
        s.succeeded() as f64,
    );
    e.header(
        "nv_inference_request_failure",
        "counter",
        "Number of failed inference requests, all batch sizes",
    );
    for (reason, value) in [
        ("REJECTED", 0),
        ("CANCELED", s.finished[2]),
        ("BACKEND", 0),
        ("OTHER", 0),
    ] {
        e.sample(
            "nv_inference_request_failure",
            &[("model", ctx.model), ("reason", reason), ("version", "1")],
            value as f64,
        );
    }
    e.counter(
        "nv_inference_count",
        "Number of inferences performed (does not include cached requests)",
        l,
        s.requests_total as f64,
    );
    e.counter(
        "nv_inference_exec_count",
        "Number of model executions performed (does not include cached requests)",
        l,
        s.decode_steps as f64,
    );
    e.counter(
        "nv_inference_request_duration_us",
        "Cumulative inference request duration in microseconds (includes cached requests)",
        l,
        micros(&s.e2e),
    );
    e.counter(
        "nv_inference_queue_duration_us",
        "Cumulative inference queuing duration in microseconds (includes cached requests)",
        l,
        micros(&s.queue),
    );
    e.counter(
        "nv_inference_compute_input_duration_us",
        "Cumulative compute input duration in microseconds (does not include cached requests)",
        l,
        0.0,
    );
    e.counter(
        "nv_inference_compute_infer_duration_us",
        "Cumulative compute inference duration in microseconds (does not include cached requests)",
        l,
        (micros(&s.e2e) - micros(&s.queue)).max(0.0),
    );
    e.counter(
        "nv_inference_compute_output_duration_us",
        "Cumulative inference compute output duration in microseconds (does not include cached requests)",
        l,
        0.0,
    );
    e.gauge(
        "nv_inference_pending_request_count",
        "Instantaneous number of pending requests awaiting execution per-model.",
        l,
        s.waiting as f64,
    );
    if latency_histograms {
        e.histogram(
            "nv_inference_first_response_histogram_ms",
            "Duration from request to first response in milliseconds",
            l,
            &s.first_response_ms,
        );
    }
}

fn mock(e: &mut Exposition, s: &Stats, ctx: MetricsContext<'_>) {
    let l: &[(&str, &str)] = &[("model_name", ctx.model)];
    e.gauge(
        "mock_num_requests_running",
        "Requests being generated.",
        l,
        s.running as f64,
    );
    e.gauge("mock_num_requests_waiting", "Requests queued.", l, s.waiting as f64);
    e.gauge("mock_kv_cache_usage_ratio", "KV-cache usage, 0 to 1.", l, s.kv_usage());
    e.counter(
        "mock_prompt_tokens_total",
        "Prompt tokens processed.",
        l,
        s.prompt_tokens_total as f64,
    );
    e.counter(
        "mock_generation_tokens_total",
        "Tokens generated.",
        l,
        s.generation_tokens_total as f64,
    );
    e.counter(
        "mock_prefix_cache_queries_total",
        "Prompt tokens looked up in the prefix cache.",
        l,
        s.prefix_queries_tokens as f64,
    );
    e.counter(
        "mock_prefix_cache_hits_total",
        "Prompt tokens found in the prefix cache.",
        l,
        s.prefix_hits_tokens as f64,
    );
    e.counter("mock_requests_total", "Requests admitted.", l, s.requests_total as f64);
    e.histogram(
        "mock_time_to_first_token_seconds",
        "Time to first token in seconds.",
        l,
        &s.ttft,
    );
}

/// TensorRT-LLM's JSON `/metrics`: per-iteration stats, empty until a request was served.
/// The mock answers one snapshot per call.
pub fn trtllm_json(stats: &Stats, ctx: MetricsContext<'_>, unix_seconds: u64) -> serde_json::Value {
    if stats.requests_total == 0 {
        return serde_json::json!([]);
    }
    const TOKENS_PER_BLOCK: u64 = 32;
    let max_blocks = stats.kv_capacity_tokens.div_ceil(TOKENS_PER_BLOCK);
    let used_blocks = stats.in_flight_tokens.div_ceil(TOKENS_PER_BLOCK).min(max_blocks);
    serde_json::json!([{
        "cpuMemUsage": 0,
        "gpuMemUsage": 0,
        "pinnedMemUsage": 0,
        "iter": stats.decode_steps,
        "iterLatencyMS": if stats.decode_steps > 0 {
            (stats.prefill_seconds_total + stats.decode_seconds_total) * 1000.0 / stats.decode_steps as f64
        } else { 0.0 },
        "maxNumActiveRequests": ctx.max_concurrency,
        "numActiveRequests": stats.running,
        "numQueuedRequests": stats.waiting,
        "numCompletedRequests": stats.succeeded(),
        "timestamp": unix_seconds.to_string(),
        "kvCacheStats": {
            "maxNumBlocks": max_blocks,
            "freeNumBlocks": max_blocks - used_blocks,
            "usedNumBlocks": used_blocks,
            "tokensPerBlock": TOKENS_PER_BLOCK,
            "allocTotalBlocks": stats.prompt_tokens_total.div_ceil(TOKENS_PER_BLOCK),
            "allocNewBlocks": stats.prompt_tokens_total.saturating_sub(stats.prefix_hits_tokens).div_ceil(TOKENS_PER_BLOCK),
            "reusedBlocks": stats.prefix_hits_tokens / TOKENS_PER_BLOCK,
            "missedBlocks": stats.prefix_queries_tokens.saturating_sub(stats.prefix_hits_tokens).div_ceil(TOKENS_PER_BLOCK),
            "cacheHitRate": stats.prefix_hit_rate(),
        },
        "inflightBatchingStats": {
            "numScheduledRequests": stats.running,
            "numContextRequests": 0,
            "numGenRequests": stats.running,
            "numPausedRequests": 0,
            "numCtxTokens": 0,
            "microBatchId": 0,
            "avgNumDecodedTokensPerIter": 1.0,
        },
    }])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::{Engine, EngineConfig, FinishReason};
    use std::time::Duration;

    fn stats() -> Stats {
        let mut e = Engine::new(EngineConfig {
            ttft: Duration::from_millis(100),
            tpot: Duration::from_millis(10),
            prefix_cache: true,
            prefix_chars: 4,
            prefix_hit_ttft_percent: 20,
            kv_capacity_tokens: 100,
        });
        e.enqueue();
        e.start(10, Duration::ZERO);
        e.lookup_prefix("abcd efgh", 2);
        e.lookup_prefix("abcd ijkl", 2);
        e.first_token(Duration::from_millis(100));
        e.tokens(1, true, Duration::from_millis(100));
        e.finish(
            FinishReason::Length,
            11,
            1,
            Duration::from_millis(100),
            Duration::from_millis(100),
        );
        e.enqueue();
        e.stats()
    }

    const CTX: MetricsContext<'static> = MetricsContext {
        model: "m\"q",
        max_concurrency: 4,
    };

    #[test]
    fn vllm_names_labels_and_values() {
        let text = prometheus(Flavor::Vllm, &stats(), CTX);
        for line in [
            "# TYPE vllm:num_requests_running gauge",
            r#"vllm:num_requests_running{engine="0",model_name="m\"q"} 0.0"#,
            r#"vllm:num_requests_waiting{engine="0",model_name="m\"q"} 1.0"#,
            r#"vllm:kv_cache_usage_perc{engine="0",model_name="m\"q"} 0.0"#,
            r#"vllm:prompt_tokens_total{engine="0",model_name="m\"q"} 10.0"#,
            r#"vllm:generation_tokens_total{engine="0",model_name="m\"q"} 1.0"#,
            r#"vllm:prefix_cache_queries_total{engine="0",model_name="m\"q"} 4.0"#,
            r#"vllm:prefix_cache_hits_total{engine="0",model_name="m\"q"} 1.0"#,
            r#"vllm:request_success_total{engine="0",finished_reason="length",model_name="m\"q"} 1.0"#,
            r#"vllm:time_to_first_token_seconds_bucket{engine="0",model_name="m\"q",le="0.1"} 1.0"#,
            r#"vllm:time_to_first_token_seconds_bucket{engine="0",model_name="m\"q",le="+Inf"} 1.0"#,
            r#"vllm:time_to_first_token_seconds_count{engine="0",model_name="m\"q"} 1.0"#,
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line} in\n{text}");
        }
    }

    #[test]
    fn every_flavour_uses_its_own_names() {
        let s = stats();
        let expect: &[(Flavor, &[&str])] = &[
            (
                Flavor::Sglang,
                &[
                    "sglang:num_running_reqs{",
                    "sglang:num_queue_reqs{",
                    "sglang:token_usage{",
                    "sglang:cache_hit_rate{",
                ],
            ),
            (
                Flavor::Tgi,
                &[
                    "tgi_batch_current_size 0.0",
                    "tgi_queue_size 1.0",
                    "tgi_request_input_length_sum 10.0",
                ],
            ),
            (
                Flavor::LlamaCpp,
                &[
                    "llamacpp:requests_processing 0.0",
                    "llamacpp:requests_deferred 1.0",
                    "llamacpp:tokens_predicted_total 1.0",
                ],
            ),
            (
                Flavor::Trtllm,
                &[
                    "trtllm_num_requests_waiting{",
                    "trtllm_prompt_tokens_total{",
                    "time_to_first_token_seconds_bucket{",
                ],
            ),
            (
                Flavor::Triton,
                &[
                    "nv_inference_pending_request_count{model=\"m\\\"q\",version=\"1\"} 1.0",
                    "nv_inference_request_success{",
                ],
            ),
            (
                Flavor::Openai,
                &["mock_num_requests_waiting{", "mock_prefix_cache_hits_total{"],
            ),
        ];
        for (flavor, needles) in expect {
            let text = prometheus(*flavor, &s, CTX);
            for needle in *needles {
                assert!(text.contains(needle), "{flavor:?}: missing {needle} in\n{text}");
            }
        }
        assert_eq!(prometheus(Flavor::Ollama, &s, CTX), "");
        assert!(!prometheus(Flavor::Triton, &s, CTX).contains("first_response"));
        assert!(triton_prometheus(&s, CTX, true).contains("nv_inference_first_response_histogram_ms_bucket{"));
    }

    #[test]
    fn every_sample_line_is_well_formed() {
        let s = stats();
        for flavor in [
            Flavor::Vllm,
            Flavor::Sglang,
            Flavor::Tgi,
            Flavor::LlamaCpp,
            Flavor::Trtllm,
            Flavor::Triton,
            Flavor::Openai,
        ] {
            for line in prometheus(flavor, &s, CTX).lines().filter(|l| !l.starts_with('#')) {
                let (_, value) = line.rsplit_once(' ').unwrap();
                assert!(value.parse::<f64>().is_ok() || value == "+Inf", "{flavor:?}: {line}");
            }
        }
    }

    #[test]
    fn trtllm_json_is_empty_until_a_request() {
        let fresh = Engine::new(EngineConfig {
            ttft: Duration::ZERO,
            tpot: Duration::ZERO,
            prefix_cache: false,
            prefix_chars: 1,
            prefix_hit_ttft_percent: 20,
            kv_capacity_tokens: 64,
        });
        assert_eq!(trtllm_json(&fresh.stats(), CTX, 0), serde_json::json!([]));
        let json = trtllm_json(&stats(), CTX, 7);
        assert_eq!(json[0]["numQueuedRequests"], 1);
        assert_eq!(json[0]["kvCacheStats"]["maxNumBlocks"], 4);
    }
}
