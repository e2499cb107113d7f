//! Per-tenant token budgets (`tokensPerMinute`): a continuously refilled token bucket per
//! tenant, charged with a call's estimate at admission and corrected with its actual usage
//! at completion. See the [module documentation](super) for the rules.

use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

/// What [`TokenBudgets::try_take`] took; hand it back to [`TokenBudgets::settle`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[must_use = "settle the grant with the call's actual usage"]
pub struct Grant {
    /// The tenant charged.
    pub tenant: String,
    /// Tokens taken (the call's estimate; 0 when the tenant was unlimited).
    pub tokens: u64,
}

/// Over budget: answer 429 with `Retry-After`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("token budget exhausted; retry after {retry_after:?}")]
pub struct OverBudget {
    /// When the call would be admitted, if nothing else is taken meanwhile.
    pub retry_after: Duration,
}

impl OverBudget {
    /// [`Self::retry_after`] as the whole seconds of an HTTP `Retry-After` header (rounded
    /// up, at least 1).
    pub fn retry_after_secs(&self) -> u64 {
        let secs = self.retry_after.as_secs() + u64::from(self.retry_after.subsec_nanos() > 0);
        secs.max(1)
    }
}

/// Bucket levels are kept exactly, in units of a token over 60·10⁹ (so that a budget of
/// `n` tokens per minute refills `n` units a nanosecond).
const UNITS_PER_TOKEN: i128 = 60_000_000_000;

fn units(tokens: u64) -> i128 {
    i128::from(tokens) * UNITS_PER_TOKEN
}

#[derive(Debug, Clone)]
struct Bucket {
    /// Tokens per minute (positive); also the bucket's size in tokens.
    per_minute: u64,
    /// Units available; negative is debt.
    level: i128,
    /// When `level` was last brought up to date.
    updated: Instant,
}

impl Bucket {
    fn capacity(&self) -> i128 {
        units(self.per_minute)
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.updated).as_nanos();
        let gained = i128::try_from(elapsed)
            .unwrap_or(i128::MAX)
            .saturating_mul(i128::from(self.per_minute));
        self.level = self.level.saturating_add(gained).min(self.capacity());
        // Time never runs backwards here: an earlier `now` leaves `updated` where it is.
        self.updated = self.updated.max(now);
    }

    fn wait_for(&self, level: i128) -> Duration {
        let missing = level.saturating_sub(self.level).max(0);
        let per_ns = i128::from(self.per_minute.max(1));
        let nanos = (missing + per_ns - 1) / per_ns;
        Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX))
    }
}

/// Every tenant's token bucket. A tenant without a budget is unlimited.
#[derive(Debug, Clone, Default)]
pub struct TokenBudgets {
    buckets: HashMap<String, Bucket>,
}

impl TokenBudgets {
    /// No budgets: everyone unlimited.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets (`Some`, tokens per minute, positive) or removes (`None`, or zero) a tenant's
    /// budget. A new budget starts full; a changed one keeps its level, cut to the new size.
    pub fn set_limit(&mut self, tenant: &str, tokens_per_minute: Option<u64>, now: Instant) {
        match tokens_per_minute.filter(|&n| n > 0) {
            None => {
                self.buckets.remove(tenant);
            }
            Some(per_minute) => match self.buckets.get_mut(tenant) {
                Some(bucket) => {
                    bucket.refill(now);
                    bucket.per_minute = per_minute;
                    bucket.level = bucket.level.min(bucket.capacity());
                }
                None => {
                    let bucket = Bucket {
                        per_minute,
                        level: units(per_minute),
                        updated: now,
                    };
                    self.buckets.insert(tenant.to_string(), bucket);
                }
            },
        }
    }

    /// The tenant's budget in tokens per minute; `None`: unlimited.
    pub fn limit(&self, tenant: &str) -> Option<u64> {
        self.buckets.get(tenant).map(|b| b.per_minute)
    }

    /// Tokens the tenant may take now (negative: in debt); `None`: unlimited.
    pub fn available(&mut self, tenant: &str, now: Instant) -> Option<f64> {
        let bucket = self.buckets.get_mut(tenant)?;
        bucket.refill(now);
        Some(bucket.level as f64 / UNITS_PER_TOKEN as f64)
    }

    /// Admits a call estimated at `tokens` (prompt plus most output) if the tenant's bucket
    /// holds that many, taking them; or if the estimate is more than a whole minute's budget
    /// and the bucket is full, leaving it in debt (so that such a call is slow, not
    /// impossible). Otherwise the call is refused with how long until it would be admitted.
    pub fn try_take(&mut self, tenant: &str, tokens: u64, now: Instant) -> Result<Grant, OverBudget> {
        let Some(bucket) = self.buckets.get_mut(tenant) else {
            return Ok(Grant {
                tenant: tenant.to_string(),
                tokens: 0,
            });
        };
        bucket.refill(now);
        let wanted = units(tokens);
        let needed = wanted.min(bucket.capacity());
        if bucket.level >= needed {
            bucket.level = bucket.level.saturating_sub(wanted);
            Ok(Grant {
                tenant: tenant.to_string(),
                tokens,
            })
        } else {
            Err(OverBudget {
                retry_after: bucket.wait_for(needed),
            })
        }
    }

    /// Charges `tokens` without asking (possibly into debt): the usage of a call admitted
    /// without a grant (a `quotaMode: dry-run` tenant over its budget). Nothing happens for an
    /// unlimited tenant.
    pub fn charge(&mut self, tenant: &str, tokens: u64, now: Instant) {
        if let Some(bucket) = self.buckets.get_mut(tenant) {
            bucket.refill(now);
            bucket.level = bucket.level.saturating_sub(units(tokens));
        }
    }

    /// Corrects a grant with the call's actual usage (prompt plus generated tokens): the
    /// difference from the estimate is given back or charged (possibly into debt). Nothing
    /// happens for a tenant that is (now) unlimited, or for an unlimited grant.
    pub fn settle(&mut self, grant: Grant, actual_tokens: u64, now: Instant) {
        if grant.tokens == 0 {
            return;
        }
        let Some(bucket) = self.buckets.get_mut(&grant.tenant) else {
            return;
        };
        bucket.refill(now);
        bucket.level = bucket
            .level
            .saturating_add(units(grant.tokens))
            .saturating_sub(units(actual_tokens))
            .min(bucket.capacity());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINUTE: Duration = Duration::from_secs(60);

    #[test]
    fn unlimited_without_a_budget() {
        let mut budgets = TokenBudgets::new();
        let now = Instant::now();
        for _ in 0..100 {
            let grant = budgets.try_take("free", 1_000_000, now).unwrap();
            assert_eq!(grant.tokens, 0);
            budgets.settle(grant, 5_000_000, now);
        }
        assert_eq!(budgets.available("free", now), None);
        // Removing a budget makes the tenant unlimited again.
        budgets.set_limit("t", Some(10), now);
        assert!(budgets.try_take("t", 100, now).is_ok()); // full bucket: over-large admitted
        assert!(budgets.try_take("t", 1, now).is_err());
        budgets.set_limit("t", None, now);
        assert!(budgets.try_take("t", 100, now).is_ok());
    }

    #[test]
    fn over_budget_is_refused_with_retry_after_and_refills_continuously() {
        let mut budgets = TokenBudgets::new();
        let t0 = Instant::now();
        budgets.set_limit("research", Some(6_000), t0); // 100 tokens a second
        let grant = budgets.try_take("research", 5_000, t0).unwrap();
        assert_eq!(grant.tokens, 5_000);
        let _grant = budgets.try_take("research", 1_000, t0).unwrap();
        let refused = budgets.try_take("research", 500, t0).unwrap_err();
        assert_eq!(refused.retry_after, Duration::from_secs(5));
        assert_eq!(refused.retry_after_secs(), 5);
        // 2.5 s later, 250 tokens are back: still short, by 2.5 s.
        let t1 = t0 + Duration::from_millis(2_500);
        let refused = budgets.try_take("research", 500, t1).unwrap_err();
        assert_eq!(refused.retry_after, Duration::from_millis(2_500));
        assert_eq!(refused.retry_after_secs(), 3);
        // At the time it named, it is admitted.
        let t2 = t1 + refused.retry_after;
        let _grant = budgets.try_take("research", 500, t2).unwrap();
        // The bucket never holds more than a minute's worth.
        let later = t2 + 10 * MINUTE;
        assert_eq!(budgets.available("research", later), Some(6_000.0));
    }

    #[test]
    fn settle_gives_back_or_charges_the_difference() {
        let mut budgets = TokenBudgets::new();
        let now = Instant::now();
        budgets.set_limit("t", Some(1_000), now);
        let grant = budgets.try_take("t", 800, now).unwrap();
        assert_eq!(budgets.available("t", now), Some(200.0));
        budgets.settle(grant, 300, now); // used less than estimated
        assert_eq!(budgets.available("t", now), Some(700.0));
        let grant = budgets.try_take("t", 700, now).unwrap();
        budgets.settle(grant, 1_000, now); // used more: into debt
        assert_eq!(budgets.available("t", now), Some(-300.0));
        let refused = budgets.try_take("t", 100, now).unwrap_err();
        assert_eq!(refused.retry_after, Duration::from_secs(24)); // 400 tokens at 1000/min
                                                                  // A refund never fills beyond the bucket.
        let grant = Grant {
            tenant: "t".into(),
            tokens: 10_000,
        };
        budgets.settle(grant, 0, now);
        assert_eq!(budgets.available("t", now), Some(1_000.0));
    }

    #[test]
    fn an_estimate_over_a_minutes_budget_waits_for_a_full_bucket() {
        let mut budgets = TokenBudgets::new();
        let t0 = Instant::now();
        budgets.set_limit("t", Some(600), t0);
        let _grant = budgets.try_take("t", 300, t0).unwrap();
        let refused = budgets.try_take("t", 5_000, t0).unwrap_err();
        assert_eq!(refused.retry_after, Duration::from_secs(30));
        let t1 = t0 + Duration::from_secs(30);
        let _grant = budgets.try_take("t", 5_000, t1).unwrap();
        assert_eq!(budgets.available("t", t1), Some(-4_400.0));
    }

    #[test]
    fn changing_a_limit_keeps_the_level_within_the_new_size() {
        let mut budgets = TokenBudgets::new();
        let now = Instant::now();
        budgets.set_limit("t", Some(1_000), now);
        budgets.set_limit("t", Some(100), now);
        assert_eq!(budgets.limit("t"), Some(100));
        assert_eq!(budgets.available("t", now), Some(100.0));
        budgets.set_limit("t", Some(0), now);
        assert_eq!(budgets.limit("t"), None);
        // A `now` earlier than the last one is harmless.
        budgets.set_limit("u", Some(60), now + MINUTE);
        assert!(budgets.try_take("u", 60, now).is_ok());
        assert!(budgets.try_take("u", 1, now).is_err());
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig { cases: 64, ..Default::default() })]

        /// Admitted estimates never exceed a full bucket plus the refill, and a refused call
        /// is admitted at the time its `Retry-After` names.
        #[test]
        fn never_more_than_the_budget_and_retry_after_is_exact(
            per_minute in 1u64..100_000,
            steps in proptest::collection::vec((0u64..5_000, 0u64..=100), 1..60),
        ) {
            let mut budgets = TokenBudgets::new();
            let t0 = Instant::now();
            budgets.set_limit("t", Some(per_minute), t0);
            let (mut now, mut granted) = (t0, 0u128);
            for (advance_ms, percent) in steps {
                now += Duration::from_millis(advance_ms);
                let tokens = per_minute * percent / 100; // never over a minute's worth
                match budgets.try_take("t", tokens, now) {
                    Ok(grant) => granted += u128::from(grant.tokens),
                    Err(refused) => {
                        let mut probe = budgets.clone();
                        let at = now + refused.retry_after;
                        proptest::prop_assert!(probe.try_take("t", tokens, at).is_ok());
                    }
                }
                let elapsed_ns = now.duration_since(t0).as_nanos();
                let allowed = u128::from(per_minute) * 60_000_000_000 + elapsed_ns * u128::from(per_minute);
                proptest::prop_assert!(granted * 60_000_000_000 <= allowed);
            }
        }
    }
}
