//! `/proc` readings shared by the bench binaries: a process's CPU seconds and memory.

use std::process::Command;

use anyhow::{anyhow, Context, Result};

/// A process whose CPU and memory are read from `/proc`.
#[derive(Debug, Clone)]
pub struct Proc {
    /// `/proc/<dir>`: a pid or `self`.
    pub dir: String,
    /// Clock ticks per second (`getconf CLK_TCK`).
    pub clk_tck: f64,
}

impl Proc {
    /// Reads `utime + stime` in seconds.
    pub fn cpu_seconds(&self) -> Result<f64> {
        let path = format!("/proc/{}/stat", self.dir);
        let text = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
        // The command name may hold spaces; the fields after the last ')' start at field 3.
        let (_, rest) = text
            .rsplit_once(')')
            .ok_or_else(|| anyhow!("{path}: no ')' in {text:?}"))?;
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let field = |n: usize| -> Result<u64> {
            fields
                .get(n - 3)
                .ok_or_else(|| anyhow!("{path}: missing field {n}"))?
                .parse::<u64>()
                .with_context(|| format!("{path}: field {n}"))
        };
        Ok((field(14)? + field(15)?) as f64 / self.clk_tck)
    }

    /// Reads a `kB` line of `/proc/<dir>/status` (`VmRSS`, `VmHWM`), in MiB.
    pub fn status_mib(&self, key: &str) -> Result<f64> {
        let path = format!("/proc/{}/status", self.dir);
        let text = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
        let line = text
            .lines()
            .find_map(|l| l.strip_prefix(key).and_then(|r| r.strip_prefix(':')))
            .ok_or_else(|| anyhow!("{path}: no {key}"))?;
        let kib: f64 = line
            .split_whitespace()
            .next()
            .ok_or_else(|| anyhow!("{path}: empty {key}"))?
            .parse()
            .with_context(|| format!("{path}: {key}"))?;
        Ok(kib / 1024.0)
    }
}

/// `getconf CLK_TCK`, or the usual 100.
pub fn clk_tck() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse::<f64>().ok())
        .filter(|v| *v > 0.0)
        .unwrap_or(100.0)
}
