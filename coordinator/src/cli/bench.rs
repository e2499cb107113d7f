//! `pyxis bench`: throughput and latency of an OpenAI-compatible endpoint (the gateway, or a
//! runtime directly), the measurement Pyxis uses to compare runtime and hardware pairs.
//!
//! `--requests` chat completions are sent by `--concurrency` workers, each waiting for its
//! answer before sending the next (a closed loop). Streaming by default, so time to first
//! token is measured; tokens come from the answer's `usage` (asked for with
//! `stream_options.include_usage`) or, when the server reports none, from the text chunks.
//! Through the gateway, every answer names what served it (`x-pyxis-runtime`,
//! `x-pyxis-hardware-class`, `x-pyxis-node`), and the report breaks the figures down by it.

use std::{
    collections::BTreeMap,
    io::{BufRead, BufReader, Read, Write},
    sync::{
        atomic::{AtomicUsize, Ordering},
        Mutex,
    },
    time::{Duration, Instant},
};

use clap::{Args, ValueEnum};
use serde::Serialize;

use super::CliError;

/// `-o` of `pyxis bench`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum BenchOutput {
    /// Aligned columns for humans.
    Table,
    /// The report as JSON (fields in docs/api.md).
    Json,
    /// Markdown tables, for a benchmark log or a pull request.
    Md,
}

/// `pyxis bench` arguments.
#[derive(Debug, Clone, Args)]
pub struct BenchArgs {
    /// The OpenAI base URL, with its `/v1`: the gateway (http://HOST:8080/v1) or a
    /// runtime's own endpoint.
    #[arg(long, value_name = "URL")]
    pub base_url: String,
    /// The model to call: a deployment name through the gateway, the served model name
    /// on a runtime.
    #[arg(long, value_name = "M")]
    pub model: String,
    /// API key sent as `Authorization: Bearer` (a gateway key from `pyxis apikey create`).
    #[arg(long, value_name = "KEY", env = "OPENAI_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    /// Requests in flight at once.
    #[arg(long, value_name = "N", default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..=4096))]
    pub concurrency: u32,
    /// Requests in all.
    #[arg(long, value_name = "N", default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=10_000_000))]
    pub requests: u32,
    /// Completion tokens asked per request (`max_tokens`).
    #[arg(long, value_name = "N", default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_tokens: u32,
    /// The user message of every request.
    #[arg(
        long,
        value_name = "TEXT",
        default_value = "Explain in three sentences why fleets of GPUs need a control plane."
    )]
    pub prompt: String,
    /// Stream the answers (needed for time to first token): true or false.
    #[arg(long, value_name = "BOOL", default_value_t = true, action = clap::ArgAction::Set)]
    pub stream: bool,
    /// The longest one request may take: 30s, 5m.
    #[arg(long, value_name = "DURATION", default_value = "5m", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
    /// Output format.
    #[arg(short, long, value_enum, default_value = "table")]
    pub output: BenchOutput,
}

/// One request's outcome.
#[derive(Debug, Clone, Default)]
struct Sample {
    status: u16,
    ok: bool,
    latency: Duration,
    ttft: Option<Duration>,
    completion_tokens: u64,
    served_by: Option<ServedBy>,
    error: Option<String>,
}

/// What served a call, from the gateway's lineage headers.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct ServedBy {
    /// `x-pyxis-runtime` (kind/version).
    pub runtime: String,
    /// `x-pyxis-hardware-class`.
    pub hardware_class: String,
    /// `x-pyxis-node`.
    pub node: String,
}

/// Percentiles of a set of durations, in milliseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Millis {
    /// Median.
    pub p50: f64,
    /// 90th percentile.
    pub p90: f64,
    /// 99th percentile.
    pub p99: f64,
    /// Largest.
    pub max: f64,
}

/// Failed requests with one status (0: no HTTP answer).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ErrorCount {
    /// HTTP status; 0 when the request got no answer.
    pub status: u16,
    /// Requests.
    pub count: u64,
    /// The first one's message.
    pub message: String,
}

/// The figures of the successful requests served by one runtime, class and node.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ServedByRow {
    /// What served them.
    #[serde(flatten)]
    pub served_by: ServedBy,
    /// Successful requests.
    pub requests: u64,
    /// Latency percentiles.
    pub latency_ms: Millis,
    /// Time to first token percentiles (streaming only).
    pub ttft_ms: Option<Millis>,
    /// Completion tokens per second per request, median.
    pub tokens_per_s_p50: Option<f64>,
}

/// `pyxis bench -o json`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BenchReport {
    /// The endpoint called.
    pub base_url: String,
    /// The model asked for.
    pub model: String,
    /// Requests in flight at once (`--concurrency`, at most `--requests`).
    pub concurrency: u32,
    /// Whether answers were streamed.
    pub stream: bool,
    /// `max_tokens` of every request.
    pub max_tokens: u32,
    /// Requests sent.
    pub requests: u64,
    /// Answered with 2xx and read to the end.
    pub succeeded: u64,
    /// The rest.
    pub failed: u64,
    /// Wall time of the whole run, seconds.
    pub duration_s: f64,
    /// Successful requests per second.
    pub requests_per_s: f64,
    /// Completion tokens of successful requests per second.
    pub output_tokens_per_s: f64,
    /// Whether token counts came from the server's `usage` (else: text chunks counted).
    pub tokens_from_usage: bool,
    /// Latency of successful requests.
    pub latency_ms: Millis,
    /// Time to first token of successful streamed requests.
    pub ttft_ms: Option<Millis>,
    /// Mean time per output token after the first, of successful streamed requests.
    pub tpot_ms: Option<f64>,
    /// Failures by status.
    pub errors: Vec<ErrorCount>,
    /// Successful requests by what served them (empty when the endpoint sends no lineage,
    /// as a runtime called directly does).
    pub served_by: Vec<ServedByRow>,
}

/// Runs the benchmark and writes the report.
pub fn run(args: &BenchArgs, out: &mut impl Write) -> Result<(), CliError> {
    let url = chat_url(&args.base_url)?;
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(args.timeout))
        .max_idle_connections_per_host(args.concurrency as usize)
        .build()
        .into();
    let mut body = serde_json::json!({
        "model": args.model,
        "max_tokens": args.max_tokens,
        "messages": [{"role": "user", "content": args.prompt}],
        "stream": args.stream,
    });
    if args.stream {
        body["stream_options"] = serde_json::json!({"include_usage": true});
    }
    let body = body.to_string();
    let auth = args.api_key.as_deref().map(|k| format!("Bearer {}", k.trim()));
    let started = Instant::now();
    // One request first, alone: a wrong URL, key or model is reported at once, not
    // `--requests` times.
    let first = one(&agent, &url, auth.as_deref(), &body, args.stream);
    if !first.ok {
        let why = first.error.clone().unwrap_or_default();
        let hint = match first.status {
            0 => " (is the server running, and is --base-url right?)",
            401 | 403 => " (pass a key with --api-key or OPENAI_API_KEY: `pyxis apikey create --tenant T`)",
            404 => " (check --base-url, which ends in /v1, and --model: GET /v1/models lists the models)",
            _ => "",
        };
        return Err(CliError::Api(format!(
            "the first request to {url} failed{}: {why}{hint}",
            if first.status == 0 {
                String::new()
            } else {
                format!(" with HTTP {}", first.status)
            }
        )));
    }
    let samples = Mutex::new(vec![first]);
    let next = AtomicUsize::new(1);
    let total = args.requests as usize;
    std::thread::scope(|scope| {
        for _ in 0..args.concurrency.min(args.requests) {
            scope.spawn(|| loop {
                if next.fetch_add(1, Ordering::Relaxed) >= total {
                    break;
                }
                let sample = one(&agent, &url, auth.as_deref(), &body, args.stream);
                samples.lock().unwrap_or_else(|p| p.into_inner()).push(sample);
            });
        }
    });
    let elapsed = started.elapsed();
    let samples = samples.into_inner().unwrap_or_else(|p| p.into_inner());
    let report = report(args, &samples, elapsed);
    let text = match args.output {
        BenchOutput::Json => {
            let mut s = serde_json::to_string_pretty(&report).map_err(|e| CliError::Output(e.to_string()))?;
            s.push('\n');
            s
        }
        BenchOutput::Table => render(&report, false),
        BenchOutput::Md => render(&report, true),
    };
    out.write_all(text.as_bytes())
        .map_err(|e| CliError::Output(e.to_string()))?;
    if report.failed > 0 {
        return Err(CliError::Api(format!(
            "{} of {} requests failed (see errors above)",
            report.failed, report.requests
        )));
    }
    Ok(())
}

/// `{base}/chat/completions`, with `/v1` added to a bare host.
fn chat_url(base: &str) -> Result<String, CliError> {
    let base = base.trim().trim_end_matches('/');
    let Some(rest) = base.strip_prefix("http://").or_else(|| base.strip_prefix("https://")) else {
        return Err(CliError::Api(format!(
            "--base-url {base:?} must start with http:// or https://, for example http://127.0.0.1:8080/v1"
        )));
    };
    if rest.is_empty() || rest.starts_with('/') {
        return Err(CliError::Api(format!("--base-url {base:?} names no host")));
    }
    if rest.contains('/') {
        Ok(format!("{base}/chat/completions"))
    } else {
        Ok(format!("{base}/v1/chat/completions"))
    }
}

/// One chat completion, timed.
fn one(agent: &ureq::Agent, url: &str, auth: Option<&str>, body: &str, stream: bool) -> Sample {
    let started = Instant::now();
    let mut request = agent.post(url).header("Content-Type", "application/json");
    if let Some(auth) = auth {
        request = request.header("Authorization", auth);
    }
    let response = match request.send(body) {
        Ok(r) => r,
        Err(e) => {
            return Sample {
                latency: started.elapsed(),
                error: Some(e.to_string()),
                ..Sample::default()
            }
        }
    };
    let status = response.status().as_u16();
    let header = |name: &str| {
        response
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .filter(|v| !v.is_empty() && *v != "-")
            .map(str::to_string)
    };
    let served_by = header("x-pyxis-runtime").map(|runtime| ServedBy {
        runtime,
        hardware_class: header("x-pyxis-hardware-class").unwrap_or_default(),
        node: header("x-pyxis-node").unwrap_or_default(),
    });
    let sse = header("content-type").is_some_and(|v| v.starts_with("text/event-stream"));
    let mut reader = response.into_body().into_reader();
    let mut sample = Sample {
        status,
        served_by,
        ..Sample::default()
    };
    if !(200..300).contains(&status) {
        let mut text = String::new();
        let _ = reader.take(64 << 10).read_to_string(&mut text);
        sample.latency = started.elapsed();
        sample.error = Some(error_message(&text));
        return sample;
    }
    if stream && sse {
        let mut chunks = 0u64;
        let mut usage = None;
        for line in BufReader::new(reader).lines() {
            let line = match line {
                Ok(l) => l,
                Err(e) => {
                    sample.latency = started.elapsed();
                    sample.error = Some(format!("the stream broke off: {e}"));
                    return sample;
                }
            };
            let Some(data) = line.strip_prefix("data:").map(str::trim) else {
                continue;
            };
            if data == "[DONE]" {
                break;
            }
            let Ok(event) = serde_json::from_str::<serde_json::Value>(data) else {
                continue;
            };
            if let Some(n) = event["usage"]["completion_tokens"].as_u64() {
                usage = Some(n);
            }
            let text = &event["choices"][0];
            let has_text = [&text["delta"]["content"], &text["text"]]
                .iter()
                .any(|t| t.as_str().is_some_and(|s| !s.is_empty()));
            if has_text {
                chunks += 1;
                if sample.ttft.is_none() {
                    sample.ttft = Some(started.elapsed());
                }
            }
        }
        sample.completion_tokens = usage.unwrap_or(chunks);
        sample.ok = sample.ttft.is_some() || usage.is_some();
        if !sample.ok {
            sample.error = Some("the stream carried no text".into());
        }
    } else {
        let mut text = String::new();
        if let Err(e) = reader.read_to_string(&mut text) {
            sample.latency = started.elapsed();
            sample.error = Some(format!("the answer broke off: {e}"));
            return sample;
        }
        match serde_json::from_str::<serde_json::Value>(&text) {
            Ok(answer) => {
                sample.completion_tokens = answer["usage"]["completion_tokens"].as_u64().unwrap_or(0);
                sample.ok = true;
            }
            Err(e) => sample.error = Some(format!("the answer is not JSON: {e}")),
        }
    }
    sample.latency = started.elapsed();
    sample
}

/// An OpenAI error's message, or the start of the body.
fn error_message(body: &str) -> String {
    serde_json::from_str::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v["error"]["message"].as_str().map(str::to_string))
        .unwrap_or_else(|| body.chars().take(200).collect::<String>().trim().to_string())
}

fn millis(mut values: Vec<Duration>) -> Option<Millis> {
    if values.is_empty() {
        return None;
    }
    values.sort_unstable();
    let at = |q: f64| {
        let i = ((values.len() as f64 * q).ceil() as usize).clamp(1, values.len()) - 1;
        values[i].as_secs_f64() * 1000.0
    };
    Some(Millis {
        p50: at(0.50),
        p90: at(0.90),
        p99: at(0.99),
        max: at(1.0),
    })
}

fn report(args: &BenchArgs, samples: &[Sample], elapsed: Duration) -> BenchReport {
    let ok: Vec<&Sample> = samples.iter().filter(|s| s.ok).collect();
    let seconds = elapsed.as_secs_f64().max(1e-9);
    let tokens: u64 = ok.iter().map(|s| s.completion_tokens).sum();
    let tpots: Vec<f64> = ok
        .iter()
        .filter_map(|s| {
            let ttft = s.ttft?;
            (s.completion_tokens > 1)
                .then(|| (s.latency - ttft.min(s.latency)).as_secs_f64() * 1000.0 / (s.completion_tokens - 1) as f64)
        })
        .collect();
    let mut errors: BTreeMap<u16, ErrorCount> = BTreeMap::new();
    for s in samples.iter().filter(|s| !s.ok) {
        errors
            .entry(s.status)
            .or_insert_with(|| ErrorCount {
                status: s.status,
                count: 0,
                message: s.error.clone().unwrap_or_default(),
            })
            .count += 1;
    }
    let mut by: BTreeMap<ServedBy, Vec<&Sample>> = BTreeMap::new();
    for s in &ok {
        if let Some(b) = &s.served_by {
            by.entry(b.clone()).or_default().push(s);
        }
    }
    let served_by = by
        .into_iter()
        .map(|(served_by, group)| {
            let mut rates: Vec<f64> = group
                .iter()
                .filter(|s| s.completion_tokens > 0)
                .map(|s| s.completion_tokens as f64 / s.latency.as_secs_f64().max(1e-9))
                .collect();
            rates.sort_by(f64::total_cmp);
            ServedByRow {
                served_by,
                requests: group.len() as u64,
                latency_ms: millis(group.iter().map(|s| s.latency).collect()).unwrap_or_default(),
                ttft_ms: millis(group.iter().filter_map(|s| s.ttft).collect()),
                tokens_per_s_p50: rates.get(rates.len() / 2).copied(),
            }
        })
        .collect();
    BenchReport {
        base_url: args.base_url.clone(),
        model: args.model.clone(),
        concurrency: args.concurrency.min(args.requests),
        stream: args.stream,
        max_tokens: args.max_tokens,
        requests: samples.len() as u64,
        succeeded: ok.len() as u64,
        failed: (samples.len() - ok.len()) as u64,
        duration_s: seconds,
        requests_per_s: ok.len() as f64 / seconds,
        output_tokens_per_s: tokens as f64 / seconds,
        tokens_from_usage: !ok.is_empty() && ok.iter().all(|s| s.completion_tokens > 0),
        latency_ms: millis(ok.iter().map(|s| s.latency).collect()).unwrap_or_default(),
        ttft_ms: millis(ok.iter().filter_map(|s| s.ttft).collect()),
        tpot_ms: (!tpots.is_empty()).then(|| tpots.iter().sum::<f64>() / tpots.len() as f64),
        errors: errors.into_values().collect(),
        served_by,
    }
}

/// Rows as aligned columns, or as a markdown table.
fn table(rows: &[Vec<String>], markdown: bool) -> String {
    let mut out = String::new();
    if markdown {
        for (i, row) in rows.iter().enumerate() {
            out.push_str(&format!("| {} |\n", row.join(" | ")));
            if i == 0 {
                out.push_str(&format!("|{}\n", "---|".repeat(row.len())));
            }
        }
        return out;
    }
    let widths: Vec<usize> = (0..rows.first().map_or(0, Vec::len))
        .map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0))
        .collect();
    for row in rows {
        let line: Vec<String> = row.iter().zip(&widths).map(|(cell, w)| format!("{cell:<w$}")).collect();
        out.push_str(line.join("   ").trim_end());
        out.push('\n');
    }
    out
}

/// A header row.
fn cells(names: &[&str]) -> Vec<String> {
    names.iter().map(|n| n.to_string()).collect()
}

fn ms(v: f64) -> String {
    if v >= 100.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.1}")
    }
}

fn render(r: &BenchReport, markdown: bool) -> String {
    let mut out = String::new();
    let heading = |out: &mut String, text: &str| {
        if markdown {
            out.push_str(&format!("\n### {text}\n\n"));
        } else {
            out.push_str(&format!("\n{}:\n", text.to_uppercase()));
        }
    };
    if markdown {
        out.push_str(&format!("## pyxis bench: {} at {}\n\n", r.model, r.base_url));
    } else {
        out.push_str(&format!("Model {} at {}\n", r.model, r.base_url));
    }
    out.push_str(&format!(
        "{} requests ({} ok, {} failed), {} at once, max_tokens {}, {}, in {:.2} s\n",
        r.requests,
        r.succeeded,
        r.failed,
        r.concurrency,
        r.max_tokens,
        if r.stream { "streamed" } else { "not streamed" },
        r.duration_s
    ));
    heading(&mut out, "Summary");
    let mut rows = vec![cells(&["metric", "p50", "p90", "p99", "max"])];
    let push = |rows: &mut Vec<Vec<String>>, name: &str, m: &Millis| {
        rows.push(vec![name.to_string(), ms(m.p50), ms(m.p90), ms(m.p99), ms(m.max)]);
    };
    push(&mut rows, "latency ms", &r.latency_ms);
    if let Some(t) = &r.ttft_ms {
        push(&mut rows, "time to first token ms", t);
    }
    out.push_str(&table(&rows, markdown));
    out.push('\n');
    out.push_str(&format!(
        "throughput: {:.1} requests/s, {:.1} output tokens/s{}\n",
        r.requests_per_s,
        r.output_tokens_per_s,
        if r.tokens_from_usage {
            ""
        } else {
            " (some answers reported no usage: their text chunks were counted)"
        }
    ));
    if let Some(tpot) = r.tpot_ms {
        out.push_str(&format!("time per output token: {} ms (mean)\n", ms(tpot)));
    }
    if !r.served_by.is_empty() {
        heading(&mut out, "Served by");
        let mut rows = vec![cells(&[
            "runtime",
            "hardware class",
            "node",
            "requests",
            "latency p50 ms",
            "ttft p50 ms",
            "tokens/s p50",
        ])];
        for b in &r.served_by {
            rows.push(vec![
                b.served_by.runtime.clone(),
                b.served_by.hardware_class.clone(),
                b.served_by.node.clone(),
                b.requests.to_string(),
                ms(b.latency_ms.p50),
                b.ttft_ms.map_or_else(|| "-".into(), |t| ms(t.p50)),
                b.tokens_per_s_p50.map_or_else(|| "-".into(), |t| format!("{t:.1}")),
            ]);
        }
        out.push_str(&table(&rows, markdown));
    }
    if !r.errors.is_empty() {
        heading(&mut out, "Errors");
        let mut rows = vec![cells(&["status", "count", "first message"])];
        for e in &r.errors {
            rows.push(vec![
                if e.status == 0 {
                    "no answer".into()
                } else {
                    e.status.to_string()
                },
                e.count.to_string(),
                e.message.replace('|', "/"),
            ]);
        }
        out.push_str(&table(&rows, markdown));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_urls_are_checked_and_completed() {
        assert_eq!(
            chat_url("http://127.0.0.1:8080/v1/").ok(),
            Some("http://127.0.0.1:8080/v1/chat/completions".into())
        );
        assert_eq!(
            chat_url("http://gw:8080").ok(),
            Some("http://gw:8080/v1/chat/completions".into())
        );
        for bad in ["gw:8080", "ftp://x", "http://", "http:///v1"] {
            assert!(chat_url(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn percentiles_and_breakdown() {
        let sample = |ms: u64, ttft: u64, node: &str| Sample {
            status: 200,
            ok: true,
            latency: Duration::from_millis(ms),
            ttft: Some(Duration::from_millis(ttft)),
            completion_tokens: 11,
            served_by: Some(ServedBy {
                runtime: "vllm/0.11.0".into(),
                hardware_class: "H100-80GB".into(),
                node: node.into(),
            }),
            error: None,
        };
        let mut samples: Vec<Sample> = (1..=100).map(|i| sample(i * 10, i, "a")).collect();
        samples.push(sample(50, 5, "b"));
        samples.push(Sample {
            status: 429,
            error: Some("over budget".into()),
            ..Sample::default()
        });
        let args = BenchArgs {
            base_url: "http://x/v1".into(),
            model: "m".into(),
            api_key: None,
            concurrency: 4,
            requests: 102,
            max_tokens: 11,
            prompt: "p".into(),
            stream: true,
            timeout: Duration::from_secs(1),
            output: BenchOutput::Table,
        };
        let r = report(&args, &samples, Duration::from_secs(2));
        assert_eq!((r.requests, r.succeeded, r.failed), (102, 101, 1));
        assert_eq!(r.concurrency, 4);
        let few = BenchArgs {
            requests: 2,
            ..args.clone()
        };
        assert_eq!(report(&few, &samples[..2], Duration::from_secs(1)).concurrency, 2);
        assert_eq!(r.latency_ms.max, 1000.0);
        assert_eq!(r.served_by.len(), 2);
        assert_eq!(r.served_by[0].requests, 100);
        assert_eq!(r.served_by[0].latency_ms.p50, 500.0);
        assert_eq!(r.errors[0].status, 429);
        assert!((r.requests_per_s - 50.5).abs() < 1e-9);
        let md = render(&r, true);
        assert!(md.contains("| runtime | hardware class |"), "{md}");
        assert!(md.contains("| 429 | 1 | over budget |"), "{md}");
        let text = render(&r, false);
        assert!(text.contains("SERVED BY:") && text.contains("H100-80GB"), "{text}");
    }
}
