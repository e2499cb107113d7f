//! A small writer for the Prometheus text exposition format (version 0.0.4).
//!
//! Hand-written because the daemons need only gauges, counters and fixed-bucket
//! histograms rendered from their own state at scrape time; no registry is kept.

use std::fmt::Write;

/// Content type of the exposition.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Builds one exposition.
#[derive(Debug, Default)]
pub struct Exposition {
    out: String,
}

/// Metric type.
#[derive(Debug, Clone, Copy)]
pub enum Kind {
    /// Gauge.
    Gauge,
    /// Counter (name ends in `_total`).
    Counter,
    /// Histogram.
    Histogram,
}

impl Exposition {
    /// Starts a metric family with its help text.
    pub fn family(&mut self, name: &str, kind: Kind, help: &str) {
        let kind = match kind {
            Kind::Gauge => "gauge",
            Kind::Counter => "counter",
            Kind::Histogram => "histogram",
        };
        let _ = writeln!(
            self.out,
            "# HELP {name} {}",
            help.replace('\\', "\\\\").replace('\n', "\\n")
        );
        let _ = writeln!(self.out, "# TYPE {name} {kind}");
    }

    /// Writes one sample.
    pub fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: f64) {
        self.out.push_str(name);
        if !labels.is_empty() {
            self.out.push('{');
            for (i, (key, val)) in labels.iter().enumerate() {
                if i > 0 {
                    self.out.push(',');
                }
                let _ = write!(self.out, "{key}=\"");
                for c in val.chars() {
                    match c {
                        '\\' => self.out.push_str("\\\\"),
                        '"' => self.out.push_str("\\\""),
                        '\n' => self.out.push_str("\\n"),
                        c => self.out.push(c),
                    }
                }
                self.out.push('"');
            }
            self.out.push('}');
        }
        if value.is_nan() {
            self.out.push_str(" NaN\n");
        } else if value.is_infinite() {
            self.out.push_str(if value > 0.0 { " +Inf\n" } else { " -Inf\n" });
        } else {
            let _ = writeln!(self.out, " {value}");
        }
    }

    /// Writes a histogram from cumulative-able bucket counts (`counts[i]` counts values
    /// `<= bounds[i]`, non-cumulative), the overflow count, and the sum.
    pub fn histogram(
        &mut self,
        name: &str,
        labels: &[(&str, &str)],
        bounds: &[f64],
        counts: &[u64],
        overflow: u64,
        sum: f64,
    ) {
        let mut cumulative = 0u64;
        let bucket = format!("{name}_bucket");
        for (bound, count) in bounds.iter().zip(counts) {
            cumulative += count;
            let le = bound.to_string();
            let mut with_le = labels.to_vec();
            with_le.push(("le", &le));
            self.sample(&bucket, &with_le, cumulative as f64);
        }
        cumulative += overflow;
        let mut with_le = labels.to_vec();
        with_le.push(("le", "+Inf"));
        self.sample(&bucket, &with_le, cumulative as f64);
        self.sample(&format!("{name}_sum"), labels, sum);
        self.sample(&format!("{name}_count"), labels, cumulative as f64);
    }

    /// The finished text.
    pub fn finish(self) -> String {
        self.out
    }
}

/// A fixed-bucket histogram safe to update from many tasks.
#[derive(Debug)]
pub struct Histogram {
    bounds: &'static [f64],
    inner: std::sync::Mutex<HistogramState>,
}

#[derive(Debug, Clone, Default)]
struct HistogramState {
    counts: Vec<u64>,
    overflow: u64,
    sum: f64,
}

impl Histogram {
    /// A histogram with the given upper bounds (ascending).
    pub fn new(bounds: &'static [f64]) -> Self {
        Self {
            bounds,
            inner: std::sync::Mutex::new(HistogramState {
                counts: vec![0; bounds.len()],
                ..Default::default()
            }),
        }
    }

    /// Records one observation.
    pub fn observe(&self, value: f64) {
        let Ok(mut state) = self.inner.lock() else {
            return;
        };
        match self.bounds.iter().position(|b| value <= *b) {
            Some(i) => state.counts[i] += 1,
            None => state.overflow += 1,
        }
        state.sum += value;
    }

    /// Renders into an exposition.
    pub fn render(&self, out: &mut Exposition, name: &str, labels: &[(&str, &str)]) {
        let state = self.inner.lock().map(|s| s.clone()).unwrap_or_default();
        let counts = if state.counts.len() == self.bounds.len() {
            state.counts
        } else {
            vec![0; self.bounds.len()]
        };
        out.histogram(name, labels, self.bounds, &counts, state.overflow, state.sum);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_escaped_labels_and_histograms() {
        let mut e = Exposition::default();
        e.family("pyxis_x", Kind::Gauge, "A gauge.");
        e.sample("pyxis_x", &[("a", "q\"uo\\te\n")], 1.5);
        let h = Histogram::new(&[0.1, 1.0]);
        h.observe(0.05);
        h.observe(0.5);
        h.observe(5.0);
        e.family("pyxis_h_seconds", Kind::Histogram, "A histogram.");
        h.render(&mut e, "pyxis_h_seconds", &[]);
        let text = e.finish();
        assert!(text.contains("pyxis_x{a=\"q\\\"uo\\\\te\\n\"} 1.5\n"), "{text}");
        assert!(text.contains("pyxis_h_seconds_bucket{le=\"0.1\"} 1\n"));
        assert!(text.contains("pyxis_h_seconds_bucket{le=\"1\"} 2\n"));
        assert!(text.contains("pyxis_h_seconds_bucket{le=\"+Inf\"} 3\n"));
        assert!(text.contains("pyxis_h_seconds_count 3\n"));
    }
}
