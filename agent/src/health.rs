//! Device health: three tiers and the policy that moves devices between them.
//!
//! Sans-IO: [`HealthTracker`] is fed XID events and probe readings with the time they
//! happened, and answers the tier and its reason. Nothing here reads a clock or a device,
//! so every rule is tested with explicit instants (see the tests below).
//!
//! The rules, in order of precedence:
//! - **Unhealthy** (sticky until the agent restarts, which an operator does after a GPU
//!   reset): a fatal XID, a GPU that fell off the bus or cannot be read, a failed row
//!   remapping.
//! - **Degraded, while the condition lasts**: a page retirement or row remapping waiting
//!   for a reset; hardware slowdown (thermal, power brake) throttling.
//! - **Degraded for the recovery window**: a transient XID (or one the policy does not
//!   name), or new uncorrected ECC errors. A device that stays clean for the whole window
//!   returns to healthy.
//! - Ignored XIDs (application faults such as 43 and 45, which a runtime stop causes) are
//!   counted but change nothing.

use std::{
    collections::{BTreeSet, HashMap},
    time::{Duration, Instant},
};

use pyxis_protocol::Health;
use serde::Deserialize;

use crate::devices::Device;

/// XIDs that need a GPU reset: double-bit ECC (48), micro-controller halt (61, 62), row
/// remapper failure (64), NVLink error (74), fallen off the bus (79), uncontained ECC (95),
/// GSP errors (119, 120), unrecovered ECC (140).
pub const DEFAULT_FATAL_XIDS: &[u64] = &[48, 61, 62, 64, 74, 79, 95, 119, 120, 140];
/// XIDs that degrade a GPU for the recovery window: graphics engine exception (13), memory
/// page fault (31), page retirement / row remap event (63), high single-bit ECC rate (92),
/// contained ECC error (94).
pub const DEFAULT_TRANSIENT_XIDS: &[u64] = &[13, 31, 63, 92, 94];
/// XIDs that are counted but do not change health: GPU stopped processing (43) and
/// preemptive cleanup (45), which every killed CUDA process causes.
pub const DEFAULT_IGNORED_XIDS: &[u64] = &[43, 45];
/// Default recovery window.
pub const DEFAULT_RECOVERY_WINDOW: Duration = Duration::from_secs(600);

/// Throttle reasons that mean the hardware is protecting itself (degraded while active).
/// Software power capping and idle clocks are normal operation and are not listed.
pub const DEGRADING_THROTTLE_REASONS: &[&str] = &[
    "hw_slowdown",
    "hw_thermal_slowdown",
    "hw_power_brake_slowdown",
    "sw_thermal_slowdown",
];

/// The `[health]` table of the agent's config file.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a [health] table with fatal_xids, transient_xids, ignored_xids and recovery_window"
)]
pub struct HealthFile {
    /// XIDs that mark a GPU unhealthy until it is reset.
    pub fatal_xids: Option<Vec<u64>>,
    /// XIDs that degrade a GPU for the recovery window.
    pub transient_xids: Option<Vec<u64>>,
    /// XIDs that are counted and otherwise ignored.
    pub ignored_xids: Option<Vec<u64>>,
    /// How long a degraded device must stay clean to return to healthy (`10m`).
    pub recovery_window: Option<String>,
}

/// Validated health policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthPolicy {
    /// Fatal XIDs.
    pub fatal_xids: BTreeSet<u64>,
    /// Transient XIDs.
    pub transient_xids: BTreeSet<u64>,
    /// Ignored XIDs.
    pub ignored_xids: BTreeSet<u64>,
    /// Clean time needed to leave the degraded tier.
    pub recovery_window: Duration,
}

impl Default for HealthPolicy {
    fn default() -> Self {
        Self {
            fatal_xids: DEFAULT_FATAL_XIDS.iter().copied().collect(),
            transient_xids: DEFAULT_TRANSIENT_XIDS.iter().copied().collect(),
            ignored_xids: DEFAULT_IGNORED_XIDS.iter().copied().collect(),
            recovery_window: DEFAULT_RECOVERY_WINDOW,
        }
    }
}

impl HealthPolicy {
    /// Builds the policy from the config file's `[health]` table; lists given replace the
    /// defaults. An XID in two lists is an error, as is a window outside 1s..=24h.
    pub fn from_file(file: HealthFile) -> Result<Self, crate::config::ConfigError> {
        let defaults = Self::default();
        let given = [
            file.fatal_xids.is_some(),
            file.transient_xids.is_some(),
            file.ignored_xids.is_some(),
        ];
        let set = |given: Option<Vec<u64>>, default: BTreeSet<u64>| given.map_or(default, |v| v.into_iter().collect());
        let recovery_window = match &file.recovery_window {
            Some(text) => {
                let window = crate::config::parse_duration("health.recovery_window", text)?;
                if window < Duration::from_millis(100) || window > Duration::from_secs(86_400) {
                    return Err(crate::config::ConfigError::Invalid {
                        key: "health.recovery_window",
                        reason: format!("{text:?} is outside 100ms to 24h"),
                    });
                }
                window
            }
            None => defaults.recovery_window,
        };
        let policy = Self {
            fatal_xids: set(file.fatal_xids, defaults.fatal_xids),
            transient_xids: set(file.transient_xids, defaults.transient_xids),
            ignored_xids: set(file.ignored_xids, defaults.ignored_xids),
            recovery_window,
        };
        let lists = [
            ("health.fatal_xids", &policy.fatal_xids, given[0]),
            ("health.transient_xids", &policy.transient_xids, given[1]),
            ("health.ignored_xids", &policy.ignored_xids, given[2]),
        ];
        for (i, (a, left, a_given)) in lists.iter().enumerate() {
            for (b, right, b_given) in &lists[i + 1..] {
                if let Some(xid) = left.intersection(right).next() {
                    let (key, other, other_given) = if *a_given {
                        (*a, *b, *b_given)
                    } else {
                        (*b, *a, *a_given)
                    };
                    let reason = if other_given {
                        format!("XID {xid} is in both {a} and {b}; put each XID in one list")
                    } else {
                        format!(
                            "XID {xid} is also in the default {other}; set {other} too, without {xid} (defaults in examples/agent.toml)"
                        )
                    };
                    return Err(crate::config::ConfigError::Invalid { key, reason });
                }
            }
        }
        Ok(policy)
    }

    /// What the policy does with `xid`.
    pub fn classify(&self, xid: u64) -> XidClass {
        if self.fatal_xids.contains(&xid) {
            XidClass::Fatal
        } else if self.ignored_xids.contains(&xid) {
            XidClass::Ignored
        } else if self.transient_xids.contains(&xid) {
            XidClass::Transient
        } else {
            XidClass::Unlisted
        }
    }
}

/// How the policy treats an XID.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum XidClass {
    /// Unhealthy until reset.
    Fatal,
    /// Degraded for the recovery window.
    Transient,
    /// Not in any list: treated as transient.
    Unlisted,
    /// Counted only.
    Ignored,
}

#[derive(Debug, Default)]
struct Record {
    /// Sticky reason for the unhealthy tier.
    fatal: Option<String>,
    /// Windowed events of the current degraded spell (cleared once the device has been
    /// clean for the recovery window): when, and what.
    events: Vec<(Instant, String)>,
    /// Uncorrected ECC count last seen (volatile), to notice new errors.
    uncorrected_seen: Option<u64>,
    xid_count: u64,
    last_xid: Option<u64>,
}

/// Health state of every device on the node, keyed by UUID.
#[derive(Debug)]
pub struct HealthTracker {
    policy: HealthPolicy,
    records: HashMap<String, Record>,
}

impl HealthTracker {
    /// A tracker with `policy`.
    pub fn new(policy: HealthPolicy) -> Self {
        Self {
            policy,
            records: HashMap::new(),
        }
    }

    /// Records an XID on the device `uuid` at `now`.
    pub fn on_xid(&mut self, uuid: &str, xid: u64, now: Instant) -> XidClass {
        let class = self.policy.classify(xid);
        let record = self.records.entry(uuid.to_string()).or_default();
        record.xid_count += 1;
        record.last_xid = Some(xid);
        match class {
            XidClass::Fatal => {
                record.fatal.get_or_insert_with(|| {
                    format!(
                        "fatal XID {xid} ({}): reset the GPU (nvidia-smi -r) and restart the agent",
                        xid_name(xid)
                    )
                });
            }
            XidClass::Transient => record.push(now, format!("XID {xid} ({})", xid_name(xid))),
            XidClass::Unlisted => record.push(
                now,
                format!(
                    "XID {xid} (not in the health policy, so treated as transient; list it under [health] to decide)"
                ),
            ),
            XidClass::Ignored => {}
        }
        class
    }

    /// Combines a fresh probe reading of `device` with the recorded events, and sets its
    /// tier, reason and XID counters. The reading's own health (for example a lost GPU)
    /// is the starting point; an unhealthy reading is remembered until restart.
    pub fn assess(&mut self, device: &mut Device, now: Instant) {
        let record = self.records.entry(device.uuid.clone()).or_default();
        if device.health == Health::Unhealthy {
            record.fatal.get_or_insert_with(|| device.health_reason.clone());
        }
        if let Some(ecc) = device.telemetry.ecc {
            if ecc.remap_failed == Some(true) {
                record.fatal.get_or_insert_with(|| {
                    "row remapping failed: the GPU has uncorrectable memory and needs service".into()
                });
            }
            if let Some(seen) = record.uncorrected_seen {
                if ecc.volatile_uncorrected > seen {
                    let new = ecc.volatile_uncorrected - seen;
                    record.push(now, format!("{new} new uncorrected ECC error(s)"));
                }
            }
            record.uncorrected_seen = Some(ecc.volatile_uncorrected);
        }
        // Only NVIDIA GPUs have XIDs; for other devices the count is unknown, not zero.
        device.telemetry.xid_count = (device.vendor == pyxis_protocol::Vendor::Nvidia).then_some(record.xid_count);
        device.telemetry.last_xid = record.last_xid;
        if let Some(reason) = &record.fatal {
            device.health = Health::Unhealthy;
            device.health_reason = reason.clone();
            return;
        }
        let mut reasons = Vec::new();
        if let Some(ecc) = device.telemetry.ecc {
            if ecc.remap_pending == Some(true) {
                reasons.push("row remapping pending: reset the GPU to apply it".to_string());
            }
            if ecc.retired_pages_pending == Some(true) {
                reasons.push("page retirement pending: reset the GPU to apply it".to_string());
            }
        }
        let hardware_throttle: Vec<&str> = device
            .telemetry
            .throttle_reasons
            .iter()
            .flatten()
            .map(String::as_str)
            .filter(|r| DEGRADING_THROTTLE_REASONS.contains(r))
            .collect();
        if !hardware_throttle.is_empty() {
            reasons.push(format!("clocks throttled by {}", hardware_throttle.join(", ")));
        }
        let window = self.policy.recovery_window;
        if let Some((last, _)) = record.events.last() {
            if now.saturating_duration_since(*last) < window {
                // Stable text (no countdown), so the reason changes only when something happens.
                reasons.push(format!(
                    "{}; healthy again after {} without new errors",
                    summarize(&record.events),
                    humantime::format_duration(window)
                ));
            } else {
                record.events.clear();
            }
        }
        if reasons.is_empty() {
            device.health = Health::Healthy;
            device.health_reason.clear();
        } else {
            device.health = Health::Degraded;
            device.health_reason = reasons.join("; ");
        }
    }
}

impl Record {
    fn push(&mut self, at: Instant, what: String) {
        self.events.push((at, what));
        // Bounded: the reason names at most a few distinct errors anyway.
        if self.events.len() > 64 {
            self.events.remove(0);
        }
    }
}

/// `XID 94 (contained ECC error), XID 31 (GPU memory page fault) x3`: distinct events in
/// the order first seen, with repeat counts, at most four named.
fn summarize(events: &[(Instant, String)]) -> String {
    let mut distinct: Vec<(&str, usize)> = Vec::new();
    for (_, what) in events {
        match distinct.iter_mut().find(|(w, _)| *w == what.as_str()) {
            Some((_, count)) => *count += 1,
            None => distinct.push((what.as_str(), 1)),
        }
    }
    let mut parts: Vec<String> = distinct
        .iter()
        .take(4)
        .map(|(what, count)| {
            if *count > 1 {
                format!("{what} x{count}")
            } else {
                (*what).to_string()
            }
        })
        .collect();
    if distinct.len() > 4 {
        parts.push(format!("and {} more", distinct.len() - 4));
    }
    parts.join(", ")
}

/// Short names of well-known XIDs (NVIDIA's XID catalog), for reasons operators can read.
pub fn xid_name(xid: u64) -> &'static str {
    match xid {
        13 => "graphics engine exception",
        31 => "GPU memory page fault",
        43 => "GPU stopped processing",
        45 => "preemptive cleanup",
        48 => "double-bit ECC error",
        61 => "internal micro-controller breakpoint",
        62 => "internal micro-controller halt",
        63 => "ECC page retirement or row remapping event",
        64 => "ECC page retirement or row remapper failure",
        74 => "NVLink error",
        79 => "GPU has fallen off the bus",
        92 => "high single-bit ECC error rate",
        94 => "contained ECC error",
        95 => "uncontained ECC error",
        119 => "GSP RPC timeout",
        120 => "GSP error",
        140 => "unrecovered ECC error",
        _ => "see NVIDIA's XID catalog",
    }
}

#[cfg(test)]
mod tests {
    use pyxis_protocol::{EccCounts, Vendor};

    use super::*;

    fn device() -> Device {
        let mut d = crate::devices::parse_simulate("1xH100-80GB", "n").unwrap().remove(0);
        d.simulated = false;
        d.vendor = Vendor::Nvidia;
        d
    }

    fn policy(window: Duration) -> HealthPolicy {
        HealthPolicy {
            recovery_window: window,
            ..HealthPolicy::default()
        }
    }

    #[test]
    fn fatal_xid_is_sticky() {
        let t0 = Instant::now();
        let mut tracker = HealthTracker::new(policy(Duration::from_secs(60)));
        let mut d = device();
        assert_eq!(tracker.on_xid(&d.uuid, 79, t0), XidClass::Fatal);
        tracker.assess(&mut d, t0);
        assert_eq!(d.health, Health::Unhealthy);
        assert!(d.health_reason.contains("XID 79"), "{}", d.health_reason);
        assert!(d.health_reason.contains("fallen off the bus"));
        tracker.assess(&mut d, t0 + Duration::from_secs(3600));
        assert_eq!(d.health, Health::Unhealthy);
        assert_eq!(d.telemetry.xid_count, Some(1));
        assert_eq!(d.telemetry.last_xid, Some(79));
    }

    #[test]
    fn transient_xid_degrades_then_recovers_after_the_window() {
        let t0 = Instant::now();
        let window = Duration::from_secs(60);
        let mut tracker = HealthTracker::new(policy(window));
        let mut d = device();
        tracker.on_xid(&d.uuid, 13, t0);
        tracker.assess(&mut d, t0 + Duration::from_secs(1));
        assert_eq!(d.health, Health::Degraded);
        assert!(d.health_reason.contains("XID 13"), "{}", d.health_reason);
        assert_eq!(
            d.health_reason,
            "XID 13 (graphics engine exception); healthy again after 1m without new errors"
        );
        // A second error restarts the window.
        tracker.on_xid(&d.uuid, 31, t0 + Duration::from_secs(30));
        tracker.on_xid(&d.uuid, 31, t0 + Duration::from_secs(30));
        tracker.assess(&mut d, t0 + window + Duration::from_secs(1));
        assert_eq!(d.health, Health::Degraded);
        assert_eq!(
            d.health_reason,
            "XID 13 (graphics engine exception), XID 31 (GPU memory page fault) x2; healthy again after 1m without new errors",
            "the reason names every error of the spell, and stays the same while nothing happens"
        );
        tracker.assess(&mut d, t0 + Duration::from_secs(30) + window);
        assert_eq!(d.health, Health::Healthy);
        assert!(d.health_reason.is_empty());
        assert_eq!(d.telemetry.xid_count, Some(3));
        // A later spell starts a fresh list.
        tracker.on_xid(&d.uuid, 94, t0 + Duration::from_secs(200));
        tracker.assess(&mut d, t0 + Duration::from_secs(201));
        assert!(
            d.health_reason.starts_with("XID 94 (contained ECC error);"),
            "{}",
            d.health_reason
        );
    }

    #[test]
    fn ignored_and_unlisted_xids() {
        let t0 = Instant::now();
        let mut tracker = HealthTracker::new(policy(Duration::from_secs(60)));
        let mut d = device();
        assert_eq!(tracker.on_xid(&d.uuid, 45, t0), XidClass::Ignored);
        tracker.assess(&mut d, t0);
        assert_eq!(d.health, Health::Healthy);
        assert_eq!(d.telemetry.xid_count, Some(1));
        assert_eq!(tracker.on_xid(&d.uuid, 9999, t0), XidClass::Unlisted);
        tracker.assess(&mut d, t0);
        assert_eq!(d.health, Health::Degraded);
        assert!(d.health_reason.contains("not in the health policy"));
    }

    #[test]
    fn ecc_and_throttle_conditions() {
        let t0 = Instant::now();
        let window = Duration::from_secs(10);
        let mut tracker = HealthTracker::new(policy(window));
        let mut d = device();
        d.telemetry.ecc = Some(EccCounts::default());
        tracker.assess(&mut d, t0);
        assert_eq!(d.health, Health::Healthy);
        // New uncorrected errors: degraded for the window.
        d.telemetry.ecc = Some(EccCounts {
            volatile_uncorrected: 2,
            ..EccCounts::default()
        });
        tracker.assess(&mut d, t0 + Duration::from_secs(1));
        assert_eq!(d.health, Health::Degraded);
        assert!(d.health_reason.contains("2 new uncorrected ECC"), "{}", d.health_reason);
        tracker.assess(&mut d, t0 + Duration::from_secs(12));
        assert_eq!(d.health, Health::Healthy);
        // Pending remap: degraded while it lasts.
        d.telemetry.ecc = Some(EccCounts {
            volatile_uncorrected: 2,
            remap_pending: Some(true),
            ..EccCounts::default()
        });
        tracker.assess(&mut d, t0 + Duration::from_secs(13));
        assert_eq!(d.health, Health::Degraded);
        assert!(d.health_reason.contains("row remapping pending"));
        d.telemetry.ecc = Some(EccCounts {
            volatile_uncorrected: 2,
            ..EccCounts::default()
        });
        // Software power capping is normal; thermal slowdown is not.
        d.telemetry.throttle_reasons = Some(vec!["sw_power_cap".into()]);
        tracker.assess(&mut d, t0 + Duration::from_secs(14));
        assert_eq!(d.health, Health::Healthy);
        d.telemetry.throttle_reasons = Some(vec!["sw_power_cap".into(), "hw_thermal_slowdown".into()]);
        tracker.assess(&mut d, t0 + Duration::from_secs(15));
        assert_eq!(d.health, Health::Degraded);
        assert!(d.health_reason.contains("hw_thermal_slowdown"));
        // A failed remap is fatal.
        d.telemetry.ecc = Some(EccCounts {
            remap_failed: Some(true),
            ..EccCounts::default()
        });
        tracker.assess(&mut d, t0 + Duration::from_secs(16));
        assert_eq!(d.health, Health::Unhealthy);
        d.telemetry = Default::default();
        tracker.assess(&mut d, t0 + Duration::from_secs(999));
        assert_eq!(d.health, Health::Unhealthy);
    }

    #[test]
    fn an_unhealthy_reading_is_remembered() {
        let t0 = Instant::now();
        let mut tracker = HealthTracker::new(policy(Duration::from_secs(1)));
        let mut d = device();
        d.health = Health::Unhealthy;
        d.health_reason = "GPU is lost".into();
        tracker.assess(&mut d, t0);
        d.health = Health::Healthy;
        d.health_reason.clear();
        tracker.assess(&mut d, t0 + Duration::from_secs(10));
        assert_eq!(d.health, Health::Unhealthy);
        assert_eq!(d.health_reason, "GPU is lost");
    }

    #[test]
    fn policy_from_file_validates() {
        let policy = HealthPolicy::from_file(HealthFile {
            fatal_xids: Some(vec![79]),
            recovery_window: Some("30s".into()),
            ..HealthFile::default()
        })
        .unwrap();
        assert_eq!(policy.classify(79), XidClass::Fatal);
        assert_eq!(policy.classify(48), XidClass::Unlisted);
        assert_eq!(policy.recovery_window, Duration::from_secs(30));
        let err = HealthPolicy::from_file(HealthFile {
            fatal_xids: Some(vec![13]),
            ..HealthFile::default()
        })
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid value for `health.fatal_xids`: XID 13 is also in the default health.transient_xids; set health.transient_xids too, without 13 (defaults in examples/agent.toml)"
        );
        let err = HealthPolicy::from_file(HealthFile {
            fatal_xids: Some(vec![13]),
            transient_xids: Some(vec![13]),
            ..HealthFile::default()
        })
        .unwrap_err();
        assert!(
            err.to_string()
                .contains("XID 13 is in both health.fatal_xids and health.transient_xids"),
            "{err}"
        );
        let err = HealthPolicy::from_file(HealthFile {
            recovery_window: Some("2d".into()),
            ..HealthFile::default()
        })
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid value for `health.recovery_window`: \"2d\" is outside 100ms to 24h"
        );
    }
}
