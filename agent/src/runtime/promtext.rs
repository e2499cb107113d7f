//! A small reader for the Prometheus text exposition format (version 0.0.4), lenient
//! enough for the OpenMetrics text the same runtimes sometimes send.
//!
//! The runtimes' `/metrics` answers are outside input: a line that does not parse is
//! skipped, never an error and never a panic, so one odd line (a new metric type, a
//! truncated body) costs that line only. Comments (`# HELP`, `# TYPE`, `# EOF`) are
//! skipped; the adapters look metrics up by their exact sample names (`..._total`,
//! `..._sum`), so the type lines are not needed.
//!
//! What it accepts per sample line: a metric name (`[a-zA-Z_:][a-zA-Z0-9_:]*`, or a quoted
//! name inside the braces as Prometheus 3 writes UTF-8 names), optional labels with
//! `\\`, `\"` and `\n` escapes and an optional trailing comma, a value (`NaN`, `+Inf`,
//! `-Inf` included), an optional timestamp, and an optional OpenMetrics exemplar after `#`.

use std::borrow::Cow;

/// One sample line.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample<'a> {
    /// Metric name as exported (`vllm:prompt_tokens_total`, `tgi_request_input_length_sum`).
    pub name: Cow<'a, str>,
    /// Label pairs in the order written, values unescaped.
    pub labels: Vec<(Cow<'a, str>, Cow<'a, str>)>,
    /// The value; may be NaN or infinite.
    pub value: f64,
    /// Timestamp as written (milliseconds in the Prometheus format, seconds in OpenMetrics).
    pub timestamp: Option<f64>,
}

impl Sample<'_> {
    /// The value of label `name`, if the sample has it.
    pub fn label(&self, name: &str) -> Option<&str> {
        self.labels.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_ref())
    }
}

/// The samples of one exposition.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Exposition<'a> {
    /// Every sample that parsed, in order.
    pub samples: Vec<Sample<'a>>,
    /// Lines that were neither blank, comments nor samples (for diagnostics).
    pub skipped_lines: usize,
}

impl<'a> Exposition<'a> {
    /// Parses `text`, skipping lines that do not parse.
    pub fn parse(text: &'a str) -> Self {
        let mut exposition = Exposition::default();
        for line in text.lines() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            match parse_sample(line) {
                Some(sample) => exposition.samples.push(sample),
                None => exposition.skipped_lines += 1,
            }
        }
        exposition
    }

    /// The finite values of every sample named `name`, over all label sets.
    fn finite_values<'s>(&'s self, name: &'s str) -> impl Iterator<Item = f64> + 's {
        self.samples
            .iter()
            .filter(move |s| s.name == name)
            .map(|s| s.value)
            .filter(|v| v.is_finite())
    }

    /// Sum over label sets of the samples named `name`; `None` when it has no finite
    /// sample. NaN and infinite samples are left out: they carry no usable quantity.
    pub fn sum(&self, name: &str) -> Option<f64> {
        self.finite_values(name)
            .fold(None, |acc, v| Some(acc.unwrap_or(0.0) + v))
    }

    /// Mean over label sets of the samples named `name` (for ratios, which do not add
    /// up across engines or ranks); `None` when it has no finite sample.
    pub fn mean(&self, name: &str) -> Option<f64> {
        let (sum, count) = self.finite_values(name).fold((0.0, 0u32), |(s, n), v| (s + v, n + 1));
        (count > 0).then(|| sum / f64::from(count))
    }

    /// [`Exposition::sum`] of the first name in `names` that the exposition has, so a
    /// current metric name can be listed before the older one it replaced.
    pub fn first_sum(&self, names: &[&str]) -> Option<f64> {
        names.iter().find_map(|name| self.sum(name))
    }

    /// [`Exposition::mean`] of the first name in `names` that the exposition has.
    pub fn first_mean(&self, names: &[&str]) -> Option<f64> {
        names.iter().find_map(|name| self.mean(name))
    }
}

/// Parses one sample line (already trimmed, not a comment).
pub fn parse_sample(line: &str) -> Option<Sample<'_>> {
    let mut cursor = Cursor { text: line, pos: 0 };
    let mut name = (!cursor.at(b'{')).then(|| cursor.identifier(true)).flatten();
    // The value must be separated by blanks from the name or from the labels.
    let mut separated = cursor.skip_blanks();
    let mut labels = Vec::new();
    if cursor.eat(b'{') {
        loop {
            cursor.skip_blanks();
            if cursor.eat(b'}') {
                break;
            }
            let key = if cursor.at(b'"') {
                cursor.quoted()?
            } else {
                Cow::Borrowed(cursor.identifier(false)?)
            };
            cursor.skip_blanks();
            if cursor.eat(b'=') {
                cursor.skip_blanks();
                let value = cursor.quoted()?;
                labels.push((key, value));
            } else if name.is_none() && labels.is_empty() {
                // Prometheus 3 writes a UTF-8 metric name as the first, quoted, item. One
                // with escapes cannot borrow from the line; no runtime Pyxis reads writes
                // one, so that line is skipped.
                let Cow::Borrowed(quoted_name) = key else {
                    return None;
                };
                name = Some(quoted_name);
            } else {
                return None;
            }
            cursor.skip_blanks();
            if cursor.eat(b',') {
                continue;
            }
            if cursor.eat(b'}') {
                break;
            }
            return None;
        }
        separated = cursor.skip_blanks();
    }
    let name = name.filter(|n| !n.is_empty())?;
    if !separated {
        return None;
    }
    let value = parse_value(cursor.token()?)?;
    cursor.skip_blanks();
    let mut timestamp = None;
    match cursor.token() {
        None => {}
        Some(t) if t.starts_with('#') => return Some(sample(name, labels, value, None)),
        Some(t) => {
            timestamp = Some(t.parse::<f64>().ok().filter(|t| t.is_finite())?);
            cursor.skip_blanks();
            match cursor.token() {
                None => {}
                Some(t) if t.starts_with('#') => {}
                Some(_) => return None,
            }
        }
    }
    Some(sample(name, labels, value, timestamp))
}

fn sample<'a>(
    name: &'a str,
    labels: Vec<(Cow<'a, str>, Cow<'a, str>)>,
    value: f64,
    timestamp: Option<f64>,
) -> Sample<'a> {
    Sample {
        name: Cow::Borrowed(name),
        labels,
        value,
        timestamp,
    }
}

/// A sample value: a float, or `NaN`, `+Inf`, `-Inf` (any case, as Go's `ParseFloat`).
fn parse_value(token: &str) -> Option<f64> {
    token.parse::<f64>().ok()
}

/// Walks a line by bytes. Every position it stops at is next to an ASCII byte, so slicing
/// the `&str` there is always on a character boundary.
struct Cursor<'a> {
    text: &'a str,
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn peek(&self) -> Option<u8> {
        self.text.as_bytes().get(self.pos).copied()
    }

    fn at(&self, byte: u8) -> bool {
        self.peek() == Some(byte)
    }

    fn eat(&mut self, byte: u8) -> bool {
        let hit = self.at(byte);
        if hit {
            self.pos += 1;
        }
        hit
    }

    /// Skips spaces and tabs; whether it skipped any.
    fn skip_blanks(&mut self) -> bool {
        let start = self.pos;
        while matches!(self.peek(), Some(b' ' | b'\t')) {
            self.pos += 1;
        }
        self.pos > start
    }

    /// `[a-zA-Z_][a-zA-Z0-9_]*`, plus `:` in metric names.
    fn identifier(&mut self, metric: bool) -> Option<&'a str> {
        let start = self.pos;
        while let Some(b) = self.peek() {
            let ok = b.is_ascii_alphabetic()
                || b == b'_'
                || (metric && b == b':')
                || (self.pos > start && b.is_ascii_digit());
            if !ok {
                break;
            }
            self.pos += 1;
        }
        (self.pos > start).then(|| &self.text[start..self.pos])
    }

    /// A double-quoted string with `\\`, `\"` and `\n` escapes; other escapes are kept.
    fn quoted(&mut self) -> Option<Cow<'a, str>> {
        if !self.eat(b'"') {
            return None;
        }
        let start = self.pos;
        let mut owned: Option<String> = None;
        let mut run_start = start;
        loop {
            match self.peek()? {
                b'"' => {
                    let run = &self.text[run_start..self.pos];
                    self.pos += 1;
                    return Some(match owned {
                        Some(mut s) => {
                            s.push_str(run);
                            Cow::Owned(s)
                        }
                        None => Cow::Borrowed(run),
                    });
                }
                b'\\' => {
                    let buffer = owned.get_or_insert_with(String::new);
                    buffer.push_str(&self.text[run_start..self.pos]);
                    self.pos += 1;
                    match self.peek()? {
                        b'\\' => buffer.push('\\'),
                        b'"' => buffer.push('"'),
                        b'n' => buffer.push('\n'),
                        _ => {
                            // Unknown escape: keep the backslash; the next character is
                            // copied with the following run (it may be multi-byte).
                            buffer.push('\\');
                            run_start = self.pos;
                            continue;
                        }
                    }
                    self.pos += 1;
                    run_start = self.pos;
                }
                _ => self.pos += 1,
            }
        }
    }

    /// The next run of non-blank bytes.
    fn token(&mut self) -> Option<&'a str> {
        let start = self.pos;
        while matches!(self.peek(), Some(b) if b != b' ' && b != b'\t') {
            self.pos += 1;
        }
        (self.pos > start).then(|| &self.text[start..self.pos])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(line: &str) -> Option<Sample<'_>> {
        parse_sample(line)
    }

    fn labels<'a>(s: &'a Sample<'a>) -> Vec<(&'a str, &'a str)> {
        s.labels.iter().map(|(k, v)| (k.as_ref(), v.as_ref())).collect()
    }

    #[test]
    fn plain_samples_with_and_without_labels() {
        let s = one("vllm:num_requests_running{model_name=\"qwen\",engine=\"0\"} 3").unwrap();
        assert_eq!(s.name, "vllm:num_requests_running");
        assert_eq!(labels(&s), [("model_name", "qwen"), ("engine", "0")]);
        assert_eq!(s.value, 3.0);
        assert_eq!(s.timestamp, None);
        assert_eq!(s.label("engine"), Some("0"));

        let s = one("tgi_queue_size 0").unwrap();
        assert_eq!(s.name, "tgi_queue_size");
        assert!(s.labels.is_empty());

        let s = one("http_requests_total{method=\"post\",code=\"200\",} 1027 1395066363000").unwrap();
        assert_eq!(s.value, 1027.0);
        assert_eq!(s.timestamp, Some(1_395_066_363_000.0));
        assert_eq!(labels(&s), [("method", "post"), ("code", "200")]);

        let s = one("metric_without_labels{} 12.47").unwrap();
        assert_eq!(s.value, 12.47);
        let s = one("spaced { a = \"1\" , b=\"2\" }\t-3e-2").unwrap();
        assert_eq!(labels(&s), [("a", "1"), ("b", "2")]);
        assert_eq!(s.value, -0.03);
    }

    #[test]
    fn special_values() {
        assert!(one("x NaN").unwrap().value.is_nan());
        assert_eq!(one("x +Inf").unwrap().value, f64::INFINITY);
        assert_eq!(one("x -Inf").unwrap().value, f64::NEG_INFINITY);
        assert_eq!(one("x Inf").unwrap().value, f64::INFINITY);
        assert_eq!(one("x{le=\"+Inf\"} 7").unwrap().label("le"), Some("+Inf"));
        assert_eq!(one("x 1.5e3").unwrap().value, 1500.0);
    }

    #[test]
    fn escaped_label_values() {
        let s = one(r#"msdos_file_access_time_seconds{path="C:\\DIR\\FILE.TXT",error="Cannot find file:\n\"FILE.TXT\""} 1.458255915e9"#)
            .unwrap();
        assert_eq!(s.label("path"), Some(r"C:\DIR\FILE.TXT"));
        assert_eq!(s.label("error"), Some("Cannot find file:\n\"FILE.TXT\""));
        // Unknown escapes are kept as written; multi-byte characters survive.
        let s = one(r#"x{a="\tβ\é"} 1"#).unwrap();
        assert_eq!(s.label("a"), Some(r"\tβ\é"));
        // A brace or comma inside a quoted value is data.
        let s = one(r#"x{a="},{",b="ü"} 2"#).unwrap();
        assert_eq!(labels(&s), [("a", "},{"), ("b", "ü")]);
    }

    #[test]
    fn openmetrics_extras() {
        let s = one(r#"foo_bucket{le="0.01"} 0 # {trace_id="KOO5S4vxi0o"} 0.67"#).unwrap();
        assert_eq!(s.value, 0.0);
        assert_eq!(s.timestamp, None);
        let s = one(r#"foo_total 17.0 1520879607.789 # {id="counter-test"} 5"#).unwrap();
        assert_eq!(s.timestamp, Some(1_520_879_607.789));
        let s = one(r#"{"my.utf8.metric", model="m"} 4"#).unwrap();
        assert_eq!(s.name, "my.utf8.metric");
        assert_eq!(labels(&s), [("model", "m")]);
    }

    #[test]
    fn bad_lines_are_skipped() {
        for line in [
            "x",
            "x{",
            "x{a=\"1\"",
            "x{a=\"1} 2",
            "x{a=1} 2",
            "x{=\"1\"} 2",
            "x{a=\"1\" b=\"2\"} 3",
            "x{a=\"1\"}2",
            "x one",
            "x 1 2 3",
            "x 1 notatime",
            "1x 2",
            "{} 2",
            "{\"a\",\"b\"} 2",
            "x{\"a\"} 1",
            "x{a=\"1\",\"b\"} 1",
            "{\"esc\\\"aped\"} 1",
            "\u{feff}x 1",
        ] {
            assert_eq!(one(line), None, "{line:?}");
        }
        let text = "# HELP x help\n# TYPE x gauge\nx 1\ngarbage here\n\n  \nx{a=\"b\"} 2\r\n# EOF\n";
        let exposition = Exposition::parse(text);
        assert_eq!(exposition.samples.len(), 2);
        assert_eq!(exposition.skipped_lines, 1);
        assert_eq!(exposition.sum("x"), Some(3.0));
    }

    #[test]
    fn sum_and_mean_over_label_sets() {
        let text = "\
a{engine=\"0\"} 1
a{engine=\"1\"} 3
a{engine=\"2\"} NaN
b{engine=\"0\"} +Inf
c 0.2
c 0.4
";
        let e = Exposition::parse(text);
        assert_eq!(e.sum("a"), Some(4.0));
        assert_eq!(e.mean("a"), Some(2.0));
        assert_eq!(e.sum("b"), None, "infinite values are not quantities");
        assert_eq!(e.sum("missing"), None);
        assert!((e.mean("c").unwrap() - 0.3).abs() < 1e-12);
        assert_eq!(e.first_sum(&["missing", "a", "c"]), Some(4.0));
        assert_eq!(e.first_sum(&["missing", "b"]), None);
        assert!((e.first_mean(&["c", "a"]).unwrap() - 0.3).abs() < 1e-12);
    }

    /// Random lines made of the characters that matter to the grammar, plus every prefix
    /// of valid lines (a body cut off mid-line): nothing may panic, and every sample that
    /// parses has a non-empty name.
    #[test]
    fn random_garbage_never_panics() {
        let alphabet: Vec<char> = "ab_:{}=\",\\ \t#+-.0123456789eEnNaIf\nβ€😀\u{0}".chars().collect();
        let mut rng = fastrand::Rng::with_seed(0x5eed);
        let mut parsed = 0usize;
        for _ in 0..20_000 {
            let len = rng.usize(0..40);
            let line: String = (0..len).map(|_| alphabet[rng.usize(0..alphabet.len())]).collect();
            if let Some(sample) = parse_sample(line.trim()) {
                assert!(!sample.name.is_empty());
                parsed += 1;
            }
            let _ = Exposition::parse(&line);
        }
        let valid = [
            r#"vllm:kv_cache_usage_perc{engine="0",model_name="Qwen/Qwen2.5-7B"} 0.25 1700000000000"#,
            r#"x{a="\\\"\n",b="é€"} -Inf # {t="1"} 2"#,
        ];
        for line in valid {
            assert!(parse_sample(line).is_some(), "{line}");
            for (end, _) in line.char_indices() {
                let _ = parse_sample(&line[..end]);
                let _ = Exposition::parse(&line[end..]);
            }
        }
        // Keep the generator honest: some random lines must parse at all.
        assert!(parsed > 0);
    }
}
