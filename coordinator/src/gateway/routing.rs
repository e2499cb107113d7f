//! Which replica serves one call: the four [`RoutingPolicy`]s, the per-replica latency
//! estimates they use, and the single-retry rule. See the [module documentation](super)
//! for the rules.

use std::cmp::Ordering;

use crate::manifest::{LatencyBudget, RoutingPolicy};

/// Weight of a new observation in the moving estimates (exponentially weighted).
pub const EWMA_ALPHA: f64 = 0.2;

/// Bounded-load factor of prefix affinity: a replica takes a call only while its
/// outstanding calls, this one included, stay within `ceil(c × average)`.
pub const BOUNDED_LOAD_C: f64 = 1.25;

/// Virtual nodes per replica on the prefix-affinity ring.
pub const VIRTUAL_NODES: u32 = 64;

/// Bytes of the prompt that [`prefix_key`] hashes by default.
pub const DEFAULT_PREFIX_BYTES: usize = 512;

/// KV-cache usage is compared in steps of this size; within a step, the least outstanding
/// replica wins (usage is sampled at scrape intervals, so small differences are noise).
pub const KV_USAGE_STEP: f64 = 0.05;

/// An exponentially weighted moving average of milliseconds; empty until observed.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Ewma {
    value: Option<f64>,
}

impl Ewma {
    /// The estimate, `None` before the first observation.
    pub fn get(&self) -> Option<f64> {
        self.value
    }

    /// Folds in one observation; a negative or non-finite one is ignored.
    pub fn observe(&mut self, sample: f64) {
        if !sample.is_finite() || sample < 0.0 {
            return;
        }
        self.value = Some(match self.value {
            None => sample,
            Some(old) => old + EWMA_ALPHA * (sample - old),
        });
    }
}

/// What the gateway knows about one replica of a deployment when it routes a call.
#[derive(Debug, Clone, PartialEq)]
pub struct ReplicaState {
    /// Replica name (unique within the deployment; also the ring identity).
    pub name: String,
    /// The node it runs on.
    pub node: String,
    /// Its hardware class.
    pub hardware_class: String,
    /// Calls this gateway has in flight to it.
    pub outstanding: u32,
    /// The most calls it takes at once; at or above it the replica is saturated. Zero: never
    /// picked.
    pub max_concurrency: u32,
    /// KV-cache use, 0 to 1, from the runtime metrics its agent reports; `None` when the
    /// runtime does not export it or nothing was reported yet.
    pub kv_cache_usage: Option<f64>,
    /// Unloaded time to first token, ms (observations divided by [`load_factor`]).
    pub ttft_ms: Ewma,
    /// Unloaded time per output token after the first, ms.
    pub tpot_ms: Ewma,
    /// Ready to serve (phase `Ready`, node `Ready`); a replica that is not is never picked.
    pub ready: bool,
}

impl ReplicaState {
    /// A ready replica with nothing in flight and no estimates yet.
    pub fn new(
        name: impl Into<String>,
        node: impl Into<String>,
        hardware_class: impl Into<String>,
        max_concurrency: u32,
    ) -> Self {
        ReplicaState {
            name: name.into(),
            node: node.into(),
            hardware_class: hardware_class.into(),
            outstanding: 0,
            max_concurrency,
            kv_cache_usage: None,
            ttft_ms: Ewma::default(),
            tpot_ms: Ewma::default(),
            ready: true,
        }
    }

    /// Folds in one finished call: its time to first token and (when it produced more than
    /// one token) its mean time per later token, both in ms, measured while
    /// `outstanding_at_dispatch` calls (this one included) were in flight to the replica. The
    /// samples are divided by the [`load_factor`] of that moment, so the estimates are of
    /// the unloaded replica.
    pub fn observe(&mut self, ttft_ms: f64, tpot_ms: Option<f64>, outstanding_at_dispatch: u32) {
        let factor = load_factor(outstanding_at_dispatch.saturating_sub(1), self.max_concurrency);
        self.ttft_ms.observe(ttft_ms / factor);
        if let Some(tpot) = tpot_ms {
            self.tpot_ms.observe(tpot / factor);
        }
    }

    /// Predicted time to first token of a call sent now, ms; `None` before any observation.
    pub fn predicted_ttft_ms(&self) -> Option<f64> {
        self.ttft_ms
            .get()
            .map(|base| base * load_factor(self.outstanding, self.max_concurrency))
    }

    /// Predicted time per output token of a call sent now, ms; `None` before any observation.
    pub fn predicted_tpot_ms(&self) -> Option<f64> {
        self.tpot_ms
            .get()
            .map(|base| base * load_factor(self.outstanding, self.max_concurrency))
    }

    /// At or above its concurrency limit.
    pub fn saturated(&self) -> bool {
        self.outstanding >= self.max_concurrency
    }

    fn load_ratio(&self) -> f64 {
        if self.max_concurrency == 0 {
            f64::INFINITY
        } else {
            f64::from(self.outstanding) / f64::from(self.max_concurrency)
        }
    }
}

/// How much slower than unloaded a replica answers with `outstanding` other calls in
/// flight: `1 + outstanding / max_concurrency` (a continuous-batching runtime at its limit
/// takes about twice as long). Crude and deliberately simple; the estimates correct it.
pub fn load_factor(outstanding: u32, max_concurrency: u32) -> f64 {
    1.0 + f64::from(outstanding) / f64::from(max_concurrency.max(1))
}

/// A stable 64-bit key of the first `max_bytes` bytes of a prompt (FNV-1a, then mixed): the
/// same prefix gives the same key in every process and version.
pub fn prefix_key(prompt: &str, max_bytes: usize) -> u64 {
    let bytes = prompt.as_bytes();
    let bytes = &bytes[..bytes.len().min(max_bytes)];
    mix(fnv1a(bytes, FNV_OFFSET))
}

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

fn fnv1a(bytes: &[u8], seed: u64) -> u64 {
    bytes
        .iter()
        .fold(seed, |hash, byte| (hash ^ u64::from(*byte)).wrapping_mul(FNV_PRIME))
}

/// splitmix64's finaliser: spreads FNV's output over the whole ring.
fn mix(mut x: u64) -> u64 {
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// Ring position of a replica's virtual node.
fn vnode_position(name: &str, vnode: u32) -> u64 {
    mix(fnv1a(&vnode.to_le_bytes(), fnv1a(name.as_bytes(), FNV_OFFSET)))
}

/// What routing needs to know about one call.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RequestFacts<'a> {
    /// [`prefix_key`] of the prompt (used by prefix affinity only).
    pub prefix_key: u64,
    /// Expected output tokens (used with a budget's `tpotMs`).
    pub expected_tokens: u32,
    /// The deployment's `latencyBudget` (used by the latency-budget policy only).
    pub latency_budget: Option<LatencyBudget>,
    /// The deployment's hardware classes in order of preference.
    pub preferred_classes: &'a [String],
}

/// Why a replica was picked (for the audit record and debugging).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ChoiceReason {
    /// The fewest calls in flight.
    LeastOutstanding {
        /// Its calls in flight before this one.
        outstanding: u32,
    },
    /// The least KV cache in use (compared in [`KV_USAGE_STEP`]s, then least outstanding).
    KvCache {
        /// Its reported usage, 0 to 1.
        usage: f64,
    },
    /// KV-aware routing without usable metrics (a candidate reports none): least outstanding.
    KvMetricsMissing {
        /// Its calls in flight before this one.
        outstanding: u32,
    },
    /// The prefix's home on the ring.
    PrefixHome,
    /// Not the prefix's home: the replicas before it on the ring were over the load bound,
    /// saturated, excluded or not ready.
    PrefixSpill {
        /// Replicas passed over on the ring.
        skipped: u32,
    },
    /// Predicted within the latency budget (or not measured yet: see the module docs).
    WithinBudget {
        /// Predicted time to first token, ms; `None` when not measured yet.
        predicted_ttft_ms: Option<f64>,
    },
    /// No replica was predicted within the budget: the fastest predicted.
    OverBudget {
        /// Predicted time to first token, ms.
        predicted_ttft_ms: f64,
    },
}

impl ChoiceReason {
    /// A short, stable label (for metrics and headers).
    pub fn as_str(&self) -> &'static str {
        match self {
            ChoiceReason::LeastOutstanding { .. } => "least-outstanding",
            ChoiceReason::KvCache { .. } => "kv-cache",
            ChoiceReason::KvMetricsMissing { .. } => "kv-metrics-missing",
            ChoiceReason::PrefixHome => "prefix-home",
            ChoiceReason::PrefixSpill { .. } => "prefix-spill",
            ChoiceReason::WithinBudget { .. } => "within-budget",
            ChoiceReason::OverBudget { .. } => "over-budget",
        }
    }
}

/// The replica to send a call to.
#[derive(Debug, Clone, PartialEq)]
pub struct Choice {
    /// Its name.
    pub replica: String,
    /// Its index in the slice given to [`pick`].
    pub index: usize,
    /// Why.
    pub reason: ChoiceReason,
}

/// Picks the replica for one call under `policy`, never one named in `exclude` (the replica
/// that failed, for the retry), not ready, or saturated. `None`: every replica is one of
/// those; the caller queues the call (or fails it when none is ready at all).
pub fn pick(
    policy: RoutingPolicy,
    replicas: &[ReplicaState],
    request: &RequestFacts<'_>,
    exclude: &[&str],
) -> Option<Choice> {
    let eligible = |r: &ReplicaState| r.ready && !r.saturated() && !exclude.contains(&r.name.as_str());
    let candidates: Vec<usize> = (0..replicas.len()).filter(|&i| eligible(&replicas[i])).collect();
    if candidates.is_empty() {
        return None;
    }
    let choose = |index: usize, reason: ChoiceReason| Choice {
        replica: replicas[index].name.clone(),
        index,
        reason,
    };
    match policy {
        RoutingPolicy::LeastOutstanding => {
            let i = least_outstanding(replicas, &candidates)?;
            Some(choose(
                i,
                ChoiceReason::LeastOutstanding {
                    outstanding: replicas[i].outstanding,
                },
            ))
        }
        RoutingPolicy::KvAware => {
            let usages: Option<Vec<f64>> = candidates
                .iter()
                .map(|&i| replicas[i].kv_cache_usage.filter(|u| u.is_finite()))
                .collect();
            match usages {
                Some(_) => {
                    let i = candidates.iter().copied().min_by(|&a, &b| {
                        let (ra, rb) = (&replicas[a], &replicas[b]);
                        kv_step(ra).cmp(&kv_step(rb)).then_with(|| by_load(ra, rb))
                    })?;
                    let usage = replicas[i].kv_cache_usage.unwrap_or_default();
                    Some(choose(i, ChoiceReason::KvCache { usage }))
                }
                None => {
                    let i = least_outstanding(replicas, &candidates)?;
                    Some(choose(
                        i,
                        ChoiceReason::KvMetricsMissing {
                            outstanding: replicas[i].outstanding,
                        },
                    ))
                }
            }
        }
        RoutingPolicy::PrefixAffinity => {
            prefix_affinity(replicas, &candidates, request.prefix_key).map(|(i, skipped)| {
                let reason = if skipped == 0 {
                    ChoiceReason::PrefixHome
                } else {
                    ChoiceReason::PrefixSpill { skipped }
                };
                choose(i, reason)
            })
        }
        RoutingPolicy::LatencyBudget => latency_budget(replicas, &candidates, request).map(|(i, r)| choose(i, r)),
    }
}

/// Fewest outstanding, then the lowest load ratio (the larger limit), then the name.
fn by_load(a: &ReplicaState, b: &ReplicaState) -> Ordering {
    a.outstanding
        .cmp(&b.outstanding)
        .then_with(|| a.load_ratio().total_cmp(&b.load_ratio()))
        .then_with(|| a.name.cmp(&b.name))
}

fn least_outstanding(replicas: &[ReplicaState], candidates: &[usize]) -> Option<usize> {
    candidates
        .iter()
        .copied()
        .min_by(|&a, &b| by_load(&replicas[a], &replicas[b]))
}

fn kv_step(r: &ReplicaState) -> u64 {
    let usage = r.kv_cache_usage.unwrap_or(1.0).clamp(0.0, 1.0);
    (usage / KV_USAGE_STEP).floor() as u64
}

/// Walks the ring clockwise from `key`: returns the first replica (index) that is eligible
/// and within the load bound, with the number of distinct replicas passed over before it.
/// The bound is over the candidates (`(their calls + 1) / their number`), so the least
/// loaded candidate is always under it and the walk always ends on one.
fn prefix_affinity(replicas: &[ReplicaState], candidates: &[usize], key: u64) -> Option<(usize, u32)> {
    // The ring holds every ready replica (excluded and saturated ones stay on it, so that a
    // retry or a full replica does not remap other prefixes). A replica's place in the walk
    // is its first virtual node clockwise from the key.
    let mut order: Vec<(u64, usize)> = replicas
        .iter()
        .enumerate()
        .filter(|(_, r)| r.ready)
        .map(|(i, r)| {
            let distance = (0..VIRTUAL_NODES)
                .map(|v| vnode_position(&r.name, v).wrapping_sub(key))
                .min()
                .unwrap_or(u64::MAX);
            (distance, i)
        })
        .collect();
    if order.is_empty() {
        return None;
    }
    order.sort_unstable_by(|a, b| a.0.cmp(&b.0).then_with(|| replicas[a.1].name.cmp(&replicas[b.1].name)));
    let total: u64 = candidates.iter().map(|&i| u64::from(replicas[i].outstanding)).sum();
    let average = (total + 1) as f64 / candidates.len().max(1) as f64;
    let bound = (BOUNDED_LOAD_C * average).ceil() as u64;
    order.iter().zip(0u32..).find_map(|(&(_, i), skipped)| {
        let fits = u64::from(replicas[i].outstanding) < bound;
        (fits && candidates.contains(&i)).then_some((i, skipped))
    })
}

fn class_rank(r: &ReplicaState, preferred: &[String]) -> usize {
    preferred
        .iter()
        .position(|c| *c == r.hardware_class)
        .unwrap_or(preferred.len())
}

fn latency_budget(
    replicas: &[ReplicaState],
    candidates: &[usize],
    request: &RequestFacts<'_>,
) -> Option<(usize, ChoiceReason)> {
    let within = |r: &ReplicaState| match request.latency_budget {
        None => true,
        Some(budget) => {
            let ttft_ok = r.predicted_ttft_ms().is_none_or(|t| t <= f64::from(budget.ttft_ms));
            let tpot_ok = match (budget.tpot_ms, r.predicted_tpot_ms()) {
                (Some(limit), Some(t)) => t <= f64::from(limit),
                _ => true,
            };
            ttft_ok && tpot_ok
        }
    };
    let preferred = request.preferred_classes;
    let fits: Vec<usize> = candidates.iter().copied().filter(|&i| within(&replicas[i])).collect();
    if !fits.is_empty() {
        let i = fits.iter().copied().min_by(|&a, &b| {
            let (ra, rb) = (&replicas[a], &replicas[b]);
            class_rank(ra, preferred)
                .cmp(&class_rank(rb, preferred))
                .then_with(|| by_load(ra, rb))
        })?;
        let predicted_ttft_ms = replicas[i].predicted_ttft_ms();
        return Some((i, ChoiceReason::WithinBudget { predicted_ttft_ms }));
    }
    // Nothing within: every candidate is measured (an unmeasured one counts as within), so
    // take the fastest predicted, then by class and load.
    let i = candidates.iter().copied().min_by(|&a, &b| {
        let (ra, rb) = (&replicas[a], &replicas[b]);
        let ta = ra.predicted_ttft_ms().unwrap_or(0.0);
        let tb = rb.predicted_ttft_ms().unwrap_or(0.0);
        ta.total_cmp(&tb)
            .then_with(|| class_rank(ra, preferred).cmp(&class_rank(rb, preferred)))
            .then_with(|| by_load(ra, rb))
    })?;
    let predicted_ttft_ms = replicas[i].predicted_ttft_ms().unwrap_or(0.0);
    Some((i, ChoiceReason::OverBudget { predicted_ttft_ms }))
}

/// How an attempt to call a replica failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// The connection could not be made (refused, reset or timed out before sending).
    ConnectFailed,
    /// The replica answered 5xx before any byte of the body was sent to the client.
    Status5xxBeforeFirstByte,
    /// The call failed after the response (or its stream) had started reaching the client.
    AfterStreamStarted,
}

/// Whether a failed call is tried again on another replica.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Retries allowed per call after the first attempt.
    pub max_retries: u32,
}

impl Default for RetryPolicy {
    /// One retry.
    fn default() -> Self {
        RetryPolicy { max_retries: 1 }
    }
}

impl RetryPolicy {
    /// Whether attempt number `attempt` (1 for the first), which failed with `failure`, may
    /// be followed by another on a different replica: only before any byte reached the
    /// client, and only `max_retries` times per call.
    pub fn may_retry(&self, attempt: u32, failure: Failure) -> bool {
        let retryable = match failure {
            Failure::ConnectFailed | Failure::Status5xxBeforeFirstByte => true,
            Failure::AfterStreamStarted => false,
        };
        retryable && attempt >= 1 && attempt <= self.max_retries
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn replica(name: &str, class: &str, max: u32) -> ReplicaState {
        ReplicaState::new(name, format!("node-{name}"), class, max)
    }

    fn facts(key: u64) -> RequestFacts<'static> {
        RequestFacts {
            prefix_key: key,
            expected_tokens: 100,
            latency_budget: None,
            preferred_classes: &[],
        }
    }

    fn pick_name(policy: RoutingPolicy, replicas: &[ReplicaState], request: &RequestFacts<'_>) -> Option<String> {
        pick(policy, replicas, request, &[]).map(|c| c.replica)
    }

    #[test]
    fn least_outstanding_balances_and_breaks_ties_by_ratio_then_name() {
        let mut replicas = vec![
            replica("a", "H100", 8),
            replica("b", "H100", 8),
            replica("c", "H100", 8),
        ];
        for _ in 0..24 {
            let choice = pick(RoutingPolicy::LeastOutstanding, &replicas, &facts(0), &[]).unwrap();
            replicas[choice.index].outstanding += 1;
        }
        assert!(replicas.iter().all(|r| r.outstanding == 8), "{replicas:?}");
        // All saturated now: queue.
        assert_eq!(pick(RoutingPolicy::LeastOutstanding, &replicas, &facts(0), &[]), None);

        // Equal outstanding: the larger limit (lower ratio) wins, then the name.
        let mut replicas = vec![
            replica("z", "H100", 16),
            replica("a", "H100", 4),
            replica("b", "H100", 4),
        ];
        for r in &mut replicas {
            r.outstanding = 2;
        }
        assert_eq!(
            pick_name(RoutingPolicy::LeastOutstanding, &replicas, &facts(0)).as_deref(),
            Some("z")
        );
        replicas[0].outstanding = 3;
        assert_eq!(
            pick_name(RoutingPolicy::LeastOutstanding, &replicas, &facts(0)).as_deref(),
            Some("a")
        );
    }

    #[test]
    fn not_ready_saturated_and_excluded_replicas_are_never_picked() {
        let mut replicas = vec![
            replica("a", "H100", 4),
            replica("b", "H100", 4),
            replica("c", "H100", 0),
        ];
        replicas[0].ready = false;
        for policy in [
            RoutingPolicy::LeastOutstanding,
            RoutingPolicy::KvAware,
            RoutingPolicy::PrefixAffinity,
            RoutingPolicy::LatencyBudget,
        ] {
            for key in 0..50 {
                assert_eq!(
                    pick_name(policy, &replicas, &facts(key)).as_deref(),
                    Some("b"),
                    "{policy:?}"
                );
                assert_eq!(pick(policy, &replicas, &facts(key), &["b"]), None, "{policy:?}");
            }
        }
        assert_eq!(pick(RoutingPolicy::LeastOutstanding, &[], &facts(0), &[]), None);
    }

    #[test]
    fn kv_aware_avoids_the_hot_cache() {
        let mut replicas = vec![
            replica("a", "H100", 32),
            replica("b", "H100", 32),
            replica("c", "H100", 32),
        ];
        replicas[0].kv_cache_usage = Some(0.92);
        replicas[1].kv_cache_usage = Some(0.31);
        replicas[2].kv_cache_usage = Some(0.55);
        // b has more in flight, but a far cooler cache.
        replicas[0].outstanding = 1;
        replicas[1].outstanding = 6;
        let choice = pick(RoutingPolicy::KvAware, &replicas, &facts(0), &[]).unwrap();
        assert_eq!(choice.replica, "b");
        assert_eq!(choice.reason, ChoiceReason::KvCache { usage: 0.31 });
        // Within one usage step (0.30 to 0.35), the least outstanding wins.
        replicas[2].kv_cache_usage = Some(0.33);
        assert_eq!(
            pick_name(RoutingPolicy::KvAware, &replicas, &facts(0)).as_deref(),
            Some("c")
        );
    }

    #[test]
    fn kv_aware_falls_back_to_least_outstanding_without_metrics() {
        let mut replicas = vec![replica("a", "H100", 32), replica("b", "H100", 32)];
        replicas[0].kv_cache_usage = Some(0.1);
        replicas[0].outstanding = 5;
        replicas[1].outstanding = 2;
        let choice = pick(RoutingPolicy::KvAware, &replicas, &facts(0), &[]).unwrap();
        assert_eq!(choice.replica, "b");
        assert_eq!(choice.reason, ChoiceReason::KvMetricsMissing { outstanding: 2 });
        // With b excluded, a is the only candidate, and it reports usage.
        let choice = pick(RoutingPolicy::KvAware, &replicas, &facts(0), &["b"]).unwrap();
        assert_eq!(choice.reason, ChoiceReason::KvCache { usage: 0.1 });
    }

    fn four() -> Vec<ReplicaState> {
        ["r0", "r1", "r2", "r3"]
            .iter()
            .map(|n| replica(n, "H100", 64))
            .collect()
    }

    #[test]
    fn prefix_affinity_sends_a_prefix_to_the_same_replica() {
        let replicas = four();
        let key = prefix_key("You are a helpful assistant. Answer briefly.", DEFAULT_PREFIX_BYTES);
        let first = pick(RoutingPolicy::PrefixAffinity, &replicas, &facts(key), &[]).unwrap();
        assert_eq!(first.reason, ChoiceReason::PrefixHome);
        for _ in 0..20 {
            assert_eq!(
                pick(RoutingPolicy::PrefixAffinity, &replicas, &facts(key), &[]).unwrap(),
                first
            );
        }
        // Order of the replica list does not matter.
        let mut reversed = replicas.clone();
        reversed.reverse();
        assert_eq!(
            pick_name(RoutingPolicy::PrefixAffinity, &reversed, &facts(key)),
            Some(first.replica.clone())
        );
        // Only the first bytes count.
        let long = format!("{}{}", "x".repeat(DEFAULT_PREFIX_BYTES), "tail one");
        let other = format!("{}{}", "x".repeat(DEFAULT_PREFIX_BYTES), "tail two");
        assert_eq!(
            prefix_key(&long, DEFAULT_PREFIX_BYTES),
            prefix_key(&other, DEFAULT_PREFIX_BYTES)
        );
    }

    #[test]
    fn prefix_affinity_spreads_prefixes_and_remaps_only_a_removed_replicas_share() {
        let replicas = four();
        let mut per_replica: HashMap<String, u32> = HashMap::new();
        let mut home = HashMap::new();
        for p in 0..2000 {
            let key = prefix_key(&format!("system prompt number {p}"), DEFAULT_PREFIX_BYTES);
            let name = pick_name(RoutingPolicy::PrefixAffinity, &replicas, &facts(key)).unwrap();
            *per_replica.entry(name.clone()).or_default() += 1;
            home.insert(key, name);
        }
        for r in &replicas {
            let n = per_replica.get(&r.name).copied().unwrap_or(0);
            assert!((300..=700).contains(&n), "{per_replica:?}");
        }
        // Take r2 away: its prefixes move, no other does.
        let without: Vec<ReplicaState> = replicas.iter().filter(|r| r.name != "r2").cloned().collect();
        for (key, name) in &home {
            let now = pick_name(RoutingPolicy::PrefixAffinity, &without, &facts(*key)).unwrap();
            if name != "r2" {
                assert_eq!(&now, name);
            }
        }
    }

    #[test]
    fn prefix_affinity_spills_under_bounded_load() {
        let mut replicas = four();
        let key = prefix_key("one very popular system prompt", DEFAULT_PREFIX_BYTES);
        let home = pick(RoutingPolicy::PrefixAffinity, &replicas, &facts(key), &[]).unwrap();
        // Every call carries the same prefix and none finish: the home takes calls until it
        // holds ceil(1.25 × average), then the next replicas on the ring take the rest.
        let mut spilled = 0;
        for _ in 0..40 {
            let choice = pick(RoutingPolicy::PrefixAffinity, &replicas, &facts(key), &[]).unwrap();
            if let ChoiceReason::PrefixSpill { skipped } = choice.reason {
                assert!(skipped >= 1);
                spilled += 1;
            }
            replicas[choice.index].outstanding += 1;
            let total: u32 = replicas.iter().map(|r| r.outstanding).sum();
            let bound = (1.25 * f64::from(total) / 4.0).ceil() as u32;
            assert!(replicas.iter().all(|r| r.outstanding <= bound), "{replicas:?}");
        }
        assert!(spilled > 0);
        assert_eq!(replicas[home.index].outstanding, 13); // ceil(1.25 × 40 / 4)
                                                          // A failed home is excluded for the retry: the next on the ring takes it.
        let fresh = four();
        let retry = pick(
            RoutingPolicy::PrefixAffinity,
            &fresh,
            &facts(key),
            &[home.replica.as_str()],
        )
        .unwrap();
        assert_ne!(retry.replica, home.replica);
        assert_eq!(retry.reason, ChoiceReason::PrefixSpill { skipped: 1 });
    }

    /// A shared-prefix workload: 32 system prompts, popular ones more often (weights
    /// 1/sqrt(k)), 4 replicas whose prefix caches each hold 8 prefixes (least recently used
    /// out, so the fleet holds them all only if they are partitioned), one call arriving a
    /// step, each in flight for 10 to 70 steps (about 10 per replica). A hit is a call sent to a replica that holds its
    /// prefix: one that saw it and has not evicted it since (a proxy for a prefix-cache hit).
    fn hit_rate(policy: RoutingPolicy) -> f64 {
        const CACHED_PREFIXES: usize = 8;
        let mut rng = fastrand::Rng::with_seed(7);
        let mut replicas = four();
        let prefixes: Vec<u64> = (0..32)
            .map(|p| prefix_key(&format!("tenant system prompt {p}: you are ..."), DEFAULT_PREFIX_BYTES))
            .collect();
        let weights: Vec<f64> = (1..=32).map(|k| 1.0 / f64::from(k).sqrt()).collect();
        let total_weight: f64 = weights.iter().sum();
        let mut caches: Vec<std::collections::VecDeque<u64>> = vec![Default::default(); replicas.len()];
        let mut in_flight: Vec<(usize, u32)> = Vec::new(); // (replica, steps left)
        let (mut hits, calls) = (0, 4000);
        for _ in 0..calls {
            // Finish what is due.
            in_flight.retain_mut(|(i, left)| {
                *left -= 1;
                if *left == 0 {
                    replicas[*i].outstanding -= 1;
                }
                *left > 0
            });
            let mut draw = rng.f64() * total_weight;
            let mut p = 0;
            while p + 1 < prefixes.len() && draw >= weights[p] {
                draw -= weights[p];
                p += 1;
            }
            let key = prefixes[p];
            let choice = pick(policy, &replicas, &facts(key), &[]).unwrap();
            let cache = &mut caches[choice.index];
            if let Some(at) = cache.iter().position(|k| *k == key) {
                hits += 1;
                cache.remove(at);
            }
            cache.push_back(key);
            if cache.len() > CACHED_PREFIXES {
                cache.pop_front();
            }
            replicas[choice.index].outstanding += 1;
            in_flight.push((choice.index, 10 + rng.u32(0..60)));
        }
        f64::from(hits) / f64::from(calls)
    }

    #[test]
    fn prefix_affinity_hits_the_cache_far_more_than_least_outstanding() {
        let affinity = hit_rate(RoutingPolicy::PrefixAffinity);
        let least = hit_rate(RoutingPolicy::LeastOutstanding);
        eprintln!("prefix-cache hit proxy: affinity {affinity:.3}, least outstanding {least:.3}");
        assert!(
            affinity > 0.7 && affinity > 2.0 * least,
            "affinity {affinity}, least outstanding {least}"
        );
    }

    fn budget(ttft_ms: u32, tpot_ms: Option<u32>) -> Option<LatencyBudget> {
        Some(LatencyBudget { ttft_ms, tpot_ms })
    }

    #[test]
    fn observe_keeps_a_moving_unloaded_estimate() {
        let mut r = replica("a", "H100", 10);
        assert_eq!(r.predicted_ttft_ms(), None);
        r.observe(100.0, Some(20.0), 1);
        assert_eq!(r.ttft_ms.get(), Some(100.0));
        // Observed at 6 in flight (5 others): factor 1.5, so 300 ms is 200 unloaded.
        r.observe(300.0, None, 6);
        assert_eq!(r.ttft_ms.get(), Some(100.0 + EWMA_ALPHA * 100.0));
        assert_eq!(r.tpot_ms.get(), Some(20.0));
        r.outstanding = 10;
        assert_eq!(r.predicted_ttft_ms(), Some(240.0));
        r.observe(f64::NAN, Some(-1.0), 1);
        assert_eq!(r.tpot_ms.get(), Some(20.0));
    }

    #[test]
    fn latency_budget_prefers_the_replica_predicted_within_budget() {
        let mut replicas = vec![replica("slow", "A100", 16), replica("fast", "L4", 16)];
        replicas[0].observe(900.0, Some(40.0), 1);
        replicas[1].observe(200.0, Some(20.0), 1);
        replicas[1].outstanding = 8; // predicted 300 ms: still within
        let preferred = ["A100".to_string()];
        let mut request = facts(0);
        request.latency_budget = budget(500, None);
        request.preferred_classes = &preferred;
        let choice = pick(RoutingPolicy::LatencyBudget, &replicas, &request, &[]).unwrap();
        assert_eq!(choice.replica, "fast");
        assert_eq!(
            choice.reason,
            ChoiceReason::WithinBudget {
                predicted_ttft_ms: Some(300.0)
            }
        );
        // A tighter budget: nobody is within, and the fastest predicted wins.
        request.latency_budget = budget(250, None);
        let choice = pick(RoutingPolicy::LatencyBudget, &replicas, &request, &[]).unwrap();
        assert_eq!(choice.replica, "fast");
        assert_eq!(
            choice.reason,
            ChoiceReason::OverBudget {
                predicted_ttft_ms: 300.0
            }
        );
        // The time-per-token target counts too (no class preference: "fast" would win by name).
        request.latency_budget = budget(1000, Some(25));
        request.preferred_classes = &[];
        replicas[1].outstanding = 0;
        replicas[0].outstanding = 0;
        replicas[0].tpot_ms = Ewma::default();
        replicas[0].tpot_ms.observe(10.0);
        replicas[1].tpot_ms = Ewma::default();
        replicas[1].tpot_ms.observe(30.0);
        assert_eq!(
            pick_name(RoutingPolicy::LatencyBudget, &replicas, &request).as_deref(),
            Some("slow")
        );
    }

    #[test]
    fn latency_budget_then_prefers_the_hardware_class_order_then_load() {
        let mut replicas = vec![
            replica("l4", "L4", 16),
            replica("h100", "H100", 16),
            replica("a100", "A100", 16),
        ];
        for r in &mut replicas {
            r.observe(100.0, None, 1);
        }
        replicas[1].outstanding = 6;
        let preferred = ["H100".to_string(), "A100".to_string()];
        let mut request = facts(0);
        request.latency_budget = budget(500, None);
        request.preferred_classes = &preferred;
        assert_eq!(
            pick_name(RoutingPolicy::LatencyBudget, &replicas, &request).as_deref(),
            Some("h100")
        );
        // The preferred class is out of budget under load: the next class that is within.
        replicas[1].ttft_ms = Ewma::default();
        replicas[1].observe(450.0, None, 1); // × 1.375 at 6 in flight: 618.75
        assert_eq!(
            pick_name(RoutingPolicy::LatencyBudget, &replicas, &request).as_deref(),
            Some("a100")
        );
        // No class preference: least outstanding among those within.
        request.preferred_classes = &[];
        replicas[2].outstanding = 1;
        assert_eq!(
            pick_name(RoutingPolicy::LatencyBudget, &replicas, &request).as_deref(),
            Some("l4")
        );
        // A replica not measured yet counts as within (so that it gets measured).
        let mut fresh = replica("new", "L4", 16);
        fresh.outstanding = 0;
        replicas[0].outstanding = 3;
        replicas.push(fresh);
        let choice = pick(RoutingPolicy::LatencyBudget, &replicas, &request, &[]).unwrap();
        assert_eq!(choice.replica, "new");
        assert_eq!(
            choice.reason,
            ChoiceReason::WithinBudget {
                predicted_ttft_ms: None
            }
        );
    }

    #[test]
    fn retry_once_and_never_after_streaming_started() {
        let policy = RetryPolicy::default();
        assert!(policy.may_retry(1, Failure::ConnectFailed));
        assert!(policy.may_retry(1, Failure::Status5xxBeforeFirstByte));
        assert!(!policy.may_retry(1, Failure::AfterStreamStarted));
        assert!(!policy.may_retry(2, Failure::ConnectFailed));
        assert!(!policy.may_retry(2, Failure::Status5xxBeforeFirstByte));
        assert!(!policy.may_retry(0, Failure::ConnectFailed));
        assert!(!RetryPolicy { max_retries: 0 }.may_retry(1, Failure::ConnectFailed));
    }

    #[test]
    fn choice_reasons_have_labels() {
        assert_eq!(ChoiceReason::PrefixSpill { skipped: 2 }.as_str(), "prefix-spill");
        assert_eq!(
            ChoiceReason::OverBudget { predicted_ttft_ms: 1.0 }.as_str(),
            "over-budget"
        );
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig { cases: 128, ..Default::default() })]

        /// Whatever the policy and state, a pick is a ready, unsaturated, non-excluded
        /// replica, and `None` only when there is none; prefix affinity stays within its
        /// load bound.
        #[test]
        fn picks_are_always_eligible(
            states in proptest::collection::vec(
                (proptest::bool::weighted(0.8), 0u32..8, 0u32..8, proptest::option::of(0.0f64..1.0),
                 proptest::option::of(1.0f64..2_000.0)),
                0..8),
            key in proptest::prelude::any::<u64>(),
            budget_ms in 1u32..2_000,
            exclude_first in proptest::bool::ANY,
        ) {
            let replicas: Vec<ReplicaState> = states.iter().enumerate().map(|(i, &(ready, outstanding, max, kv, ttft))| {
                let mut r = replica(&format!("r{i}"), if i % 2 == 0 { "H100" } else { "L4" }, max);
                r.ready = ready;
                r.outstanding = outstanding;
                r.kv_cache_usage = kv;
                if let Some(t) = ttft { r.ttft_ms.observe(t); }
                r
            }).collect();
            let exclude: Vec<&str> = if exclude_first { vec!["r0"] } else { vec![] };
            let preferred = ["L4".to_string()];
            let request = RequestFacts {
                prefix_key: key,
                expected_tokens: 10,
                latency_budget: budget(budget_ms, None),
                preferred_classes: &preferred,
            };
            let eligible = |r: &ReplicaState| r.ready && !r.saturated() && !exclude.contains(&r.name.as_str());
            let any = replicas.iter().any(eligible);
            for policy in [RoutingPolicy::LeastOutstanding, RoutingPolicy::KvAware, RoutingPolicy::PrefixAffinity,
                           RoutingPolicy::LatencyBudget] {
                match pick(policy, &replicas, &request, &exclude) {
                    Some(choice) => {
                        proptest::prop_assert!(eligible(&replicas[choice.index]));
                        proptest::prop_assert_eq!(&replicas[choice.index].name, &choice.replica);
                        if policy == RoutingPolicy::PrefixAffinity {
                            let live: Vec<&ReplicaState> = replicas.iter().filter(|r| eligible(r)).collect();
                            let total: u32 = live.iter().map(|r| r.outstanding).sum();
                            let bound = (BOUNDED_LOAD_C * f64::from(total + 1) / live.len() as f64).ceil() as u32;
                            proptest::prop_assert!(replicas[choice.index].outstanding < bound);
                        }
                    }
                    None => proptest::prop_assert!(!any),
                }
            }
        }
    }
}
