//! Gateway metrics: requests, errors, latency and time-to-first-token histograms and
//! tokens by tenant, model, runtime and hardware class; queue depth; budget rejections;
//! audit and trace-export counters. Rendered into the coordinator's `/metrics`.

use std::{
    collections::HashMap,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex, RwLock,
    },
};

use pyxis_agent::prom::{Exposition, Histogram, Kind};

/// Latency buckets, seconds (1 ms to 2 min: runtimes answer in ms to minutes).
pub const LATENCY_BOUNDS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0,
];

/// The labels a served call is counted under.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CallLabels {
    /// Tenant.
    pub tenant: String,
    /// Model name (the deployment's model, or what the client asked for when unresolved).
    pub model: String,
    /// Runtime kind (`none` when no replica was reached).
    pub runtime: String,
    /// Hardware class (`none` when no replica was reached).
    pub hardware_class: String,
}

#[derive(Debug)]
struct Series {
    by_code: Mutex<HashMap<u16, u64>>,
    latency: Histogram,
    ttft: Histogram,
    prompt_tokens: AtomicU64,
    completion_tokens: AtomicU64,
}

impl Default for Series {
    fn default() -> Self {
        Self {
            by_code: Mutex::new(HashMap::new()),
            latency: Histogram::new(LATENCY_BOUNDS),
            ttft: Histogram::new(LATENCY_BOUNDS),
            prompt_tokens: AtomicU64::new(0),
            completion_tokens: AtomicU64::new(0),
        }
    }
}

/// Gateway counters.
#[derive(Debug, Default)]
pub struct GatewayMetrics {
    series: RwLock<HashMap<CallLabels, Arc<Series>>>,
    errors: Mutex<HashMap<(String, String, &'static str), u64>>,
    budget_rejections: Mutex<HashMap<(String, bool), u64>>,
    /// Calls retried on another replica.
    pub retries: AtomicU64,
    /// Calls in flight now.
    pub in_flight: AtomicU64,
    /// Calls refused for want of an audit log.
    pub audit_refusals: AtomicU64,
}

/// One finished call.
#[derive(Debug, Clone, Copy)]
pub struct Observation {
    /// HTTP status.
    pub status: u16,
    /// Whole call, seconds.
    pub latency_s: f64,
    /// Time to first byte of the body, seconds.
    pub ttft_s: Option<f64>,
    /// Prompt tokens.
    pub prompt_tokens: u64,
    /// Completion tokens.
    pub completion_tokens: u64,
}

impl GatewayMetrics {
    fn series(&self, labels: &CallLabels) -> Arc<Series> {
        if let Some(s) = self.series.read().unwrap_or_else(|p| p.into_inner()).get(labels) {
            return s.clone();
        }
        self.series
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .entry(labels.clone())
            .or_default()
            .clone()
    }

    /// Counts one finished call.
    pub fn observe(&self, labels: &CallLabels, o: Observation) {
        let s = self.series(labels);
        *s.by_code
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(o.status)
            .or_default() += 1;
        s.latency.observe(o.latency_s);
        if let Some(t) = o.ttft_s {
            s.ttft.observe(t);
        }
        s.prompt_tokens.fetch_add(o.prompt_tokens, Ordering::Relaxed);
        s.completion_tokens.fetch_add(o.completion_tokens, Ordering::Relaxed);
    }

    /// Counts an error by its OpenAI error code (`model_not_found`, `rate_limit_exceeded`, ...).
    pub fn error(&self, tenant: &str, model: &str, code: &'static str) {
        *self
            .errors
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry((tenant.to_string(), model.to_string(), code))
            .or_default() += 1;
    }

    /// Counts a call over its tenant's token budget; `enforced` false for dry-run tenants
    /// (the call was served).
    pub fn budget_rejection(&self, tenant: &str, enforced: bool) {
        *self
            .budget_rejections
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry((tenant.to_string(), enforced))
            .or_default() += 1;
    }

    /// Writes every family. `queues`: (tenant, deployment, calls waiting).
    pub fn render(
        &self,
        out: &mut Exposition,
        queues: &[(String, String, usize)],
        audit: Option<crate::audit::AuditStats>,
        traces: crate::otel::ExportStats,
    ) {
        let mut series: Vec<(CallLabels, Arc<Series>)> = self
            .series
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        series.sort_by(|a, b| {
            (&a.0.tenant, &a.0.model, &a.0.runtime, &a.0.hardware_class).cmp(&(
                &b.0.tenant,
                &b.0.model,
                &b.0.runtime,
                &b.0.hardware_class,
            ))
        });
        let base = |l: &CallLabels| -> [(&'static str, String); 4] {
            [
                ("tenant", l.tenant.clone()),
                ("model", l.model.clone()),
                ("runtime", l.runtime.clone()),
                ("hardware_class", l.hardware_class.clone()),
            ]
        };
        let refs = |l: &[(&'static str, String)]| -> Vec<(&'static str, String)> { l.to_vec() };
        out.family(
            "pyxis_gateway_requests_total",
            Kind::Counter,
            "Gateway calls answered, by tenant, model, runtime, hardware class and HTTP status code.",
        );
        for (l, s) in &series {
            let mut codes: Vec<(u16, u64)> = s
                .by_code
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .iter()
                .map(|(k, v)| (*k, *v))
                .collect();
            codes.sort();
            for (code, n) in codes {
                let mut labels = refs(&base(l));
                labels.push(("code", code.to_string()));
                let labels: Vec<(&str, &str)> = labels.iter().map(|(k, v)| (*k, v.as_str())).collect();
                out.sample("pyxis_gateway_requests_total", &labels, n as f64);
            }
        }
        for (name, help, pick) in [
            (
                "pyxis_gateway_request_duration_seconds",
                "Gateway call latency from arrival to the last byte, seconds.",
                0u8,
            ),
            (
                "pyxis_gateway_time_to_first_token_seconds",
                "Time from a call's arrival to the first byte of the runtime's answer (the first token when streaming), seconds.",
                1u8,
            ),
        ] {
            out.family(name, Kind::Histogram, help);
            for (l, s) in &series {
                let b = base(l);
                let labels: Vec<(&str, &str)> = b.iter().map(|(k, v)| (*k, v.as_str())).collect();
                let h = if pick == 0 { &s.latency } else { &s.ttft };
                h.render(out, name, &labels);
            }
        }
        out.family(
            "pyxis_gateway_tokens_total",
            Kind::Counter,
            "Tokens of gateway calls, by tenant, model, runtime, hardware class and type (prompt or completion).",
        );
        for (l, s) in &series {
            for (kind, v) in [("prompt", &s.prompt_tokens), ("completion", &s.completion_tokens)] {
                let mut labels = refs(&base(l));
                labels.push(("type", kind.to_string()));
                let labels: Vec<(&str, &str)> = labels.iter().map(|(k, v)| (*k, v.as_str())).collect();
                out.sample("pyxis_gateway_tokens_total", &labels, v.load(Ordering::Relaxed) as f64);
            }
        }
        out.family(
            "pyxis_gateway_errors_total",
            Kind::Counter,
            "Gateway calls answered with an error, by tenant, model and OpenAI error code.",
        );
        let mut errors: Vec<_> = self
            .errors
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|(k, v)| (k.clone(), *v))
            .collect();
        errors.sort();
        for ((tenant, model, code), n) in errors {
            out.sample(
                "pyxis_gateway_errors_total",
                &[("tenant", &tenant), ("model", &model), ("code", code)],
                n as f64,
            );
        }
        out.family(
            "pyxis_gateway_budget_rejections_total",
            Kind::Counter,
            "Calls over their tenant's token budget; enforced=\"false\" for dry-run tenants, whose calls were served.",
        );
        let mut rejections: Vec<_> = self
            .budget_rejections
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|(k, v)| (k.clone(), *v))
            .collect();
        rejections.sort();
        for ((tenant, enforced), n) in rejections {
            out.sample(
                "pyxis_gateway_budget_rejections_total",
                &[
                    ("tenant", &tenant),
                    ("enforced", if enforced { "true" } else { "false" }),
                ],
                n as f64,
            );
        }
        out.family(
            "pyxis_gateway_queue_depth",
            Kind::Gauge,
            "Calls waiting for a free replica, by tenant and deployment.",
        );
        for (tenant, deployment, n) in queues {
            out.sample(
                "pyxis_gateway_queue_depth",
                &[("tenant", tenant), ("deployment", deployment)],
                *n as f64,
            );
        }
        out.family("pyxis_gateway_in_flight", Kind::Gauge, "Gateway calls in flight now.");
        out.sample(
            "pyxis_gateway_in_flight",
            &[],
            self.in_flight.load(Ordering::Relaxed) as f64,
        );
        out.family(
            "pyxis_gateway_retries_total",
            Kind::Counter,
            "Calls retried once on another replica after a failed connect or a 5xx before any byte.",
        );
        out.sample(
            "pyxis_gateway_retries_total",
            &[],
            self.retries.load(Ordering::Relaxed) as f64,
        );
        out.family(
            "pyxis_audit_refusals_total",
            Kind::Counter,
            "Calls refused because audit records could not be written (audit mode required).",
        );
        out.sample(
            "pyxis_audit_refusals_total",
            &[],
            self.audit_refusals.load(Ordering::Relaxed) as f64,
        );
        let audit = audit.unwrap_or_default();
        for (name, help, value, kind) in [
            (
                "pyxis_audit_records_written_total",
                "Audit records committed.",
                audit.written as f64,
                Kind::Counter,
            ),
            (
                "pyxis_audit_records_dropped_total",
                "Audit records lost (best-effort mode: queue full or failed write).",
                audit.dropped as f64,
                Kind::Counter,
            ),
            (
                "pyxis_audit_queue_depth",
                "Audit records queued for the writer.",
                audit.queue_depth as f64,
                Kind::Gauge,
            ),
            (
                "pyxis_audit_healthy",
                "1 when the last audit write succeeded.",
                if audit.healthy { 1.0 } else { 0.0 },
                Kind::Gauge,
            ),
            (
                "pyxis_trace_spans_exported_total",
                "Spans exported over OTLP.",
                traces.exported as f64,
                Kind::Counter,
            ),
            (
                "pyxis_trace_spans_dropped_total",
                "Spans dropped because the export queue was full.",
                traces.dropped as f64,
                Kind::Counter,
            ),
            (
                "pyxis_trace_spans_failed_total",
                "Spans whose export failed.",
                traces.failed as f64,
                Kind::Counter,
            ),
        ] {
            out.family(name, kind, help);
            out.sample(name, &[], value);
        }
    }
}
