//! The wait queue for calls that find every replica saturated: latency bands strictly in
//! order, start-time fair queueing by tokens and tenant weight within a band, a deadline
//! per call and a bound per tenant. See the [module documentation](super) for the rules.

use std::{
    collections::{HashMap, VecDeque},
    time::Instant,
};

use crate::manifest::LatencyBand;

/// Calls one tenant may have queued at once (over all bands) unless set otherwise.
pub const DEFAULT_MAX_PER_TENANT: usize = 256;

/// A call waiting for a replica.
#[derive(Debug, Clone, PartialEq)]
pub struct QueuedCall<T> {
    /// The tenant.
    pub tenant: String,
    /// The tenant's latency band.
    pub band: LatencyBand,
    /// The tenant's weight; positive.
    pub weight: f64,
    /// The call's estimated tokens (prompt plus most output): its cost.
    pub tokens: u64,
    /// When the call stops waiting (the caller answers 429 or 503).
    pub deadline: Instant,
    /// What the caller needs to resume the call (for example a channel to wake it).
    pub payload: T,
}

/// Identifies a queued call, to [`FairQueue::cancel`] it (the client went away).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Ticket(u64);

/// Why a call was not queued.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum QueueError {
    /// The tenant already has the most calls queued that it may.
    #[error("tenant {tenant} already has {limit} calls queued, the most it may; try again later")]
    TenantQueueFull {
        /// The tenant.
        tenant: String,
        /// Its bound.
        limit: usize,
    },
    /// The weight is not a positive number.
    #[error("tenant {tenant}: weight {weight} is not a positive number")]
    InvalidWeight {
        /// The tenant.
        tenant: String,
        /// The weight given.
        weight: f64,
    },
    /// The deadline is not after `now`.
    #[error("the call's queue deadline has already passed")]
    DeadlinePassed,
}

/// A refused [`FairQueue::push`]: the reason, and the call handed back.
#[derive(Debug, Clone, PartialEq)]
pub struct PushError<T> {
    /// Why.
    pub reason: QueueError,
    /// The call, to answer.
    pub call: QueuedCall<T>,
}

#[derive(Debug, Clone)]
struct Entry<T> {
    seq: u64,
    /// The band's virtual time when the call arrived.
    arrival: f64,
    start: f64,
    finish: f64,
    call: QueuedCall<T>,
}

impl<T> Entry<T> {
    fn cost(&self) -> f64 {
        self.call.tokens.max(1) as f64 / self.call.weight
    }
}

#[derive(Debug, Clone)]
struct Flow<T> {
    /// Finish tag of the tenant's last dispatched call in this band.
    dispatched_finish: f64,
    entries: VecDeque<Entry<T>>,
}

impl<T> Flow<T> {
    fn new() -> Self {
        Flow {
            dispatched_finish: 0.0,
            entries: VecDeque::new(),
        }
    }

    /// Recomputes the tags after a removal, as if the removed call had never arrived.
    fn retag(&mut self) {
        let mut previous = self.dispatched_finish;
        for entry in &mut self.entries {
            entry.start = entry.arrival.max(previous);
            entry.finish = entry.start + entry.cost();
            previous = entry.finish;
        }
    }

    fn tail_finish(&self) -> f64 {
        self.entries.back().map_or(self.dispatched_finish, |e| e.finish)
    }
}

#[derive(Debug, Clone)]
struct Band<T> {
    /// Start tag of the last dispatched call; when the band empties, the largest finish tag
    /// dispatched.
    virtual_time: f64,
    max_finish: f64,
    flows: HashMap<String, Flow<T>>,
}

impl<T> Band<T> {
    fn new() -> Self {
        Band {
            virtual_time: 0.0,
            max_finish: 0.0,
            flows: HashMap::new(),
        }
    }

    fn is_empty(&self) -> bool {
        self.flows.values().all(|f| f.entries.is_empty())
    }

    /// Drops the state of tenants with nothing queued whose tags no longer matter.
    fn prune(&mut self) {
        let v = self.virtual_time;
        self.flows
            .retain(|_, f| !f.entries.is_empty() || f.dispatched_finish > v);
    }
}

/// The bands in dispatch order: a band is served only while every band before it is empty.
pub const BAND_ORDER: [LatencyBand; 3] = [LatencyBand::RealTime, LatencyBand::Bulk, LatencyBand::Batch];

fn band_index(band: LatencyBand) -> usize {
    match band {
        LatencyBand::RealTime => 0,
        LatencyBand::Bulk => 1,
        LatencyBand::Batch => 2,
    }
}

/// The weighted fair queue of calls waiting for a replica (one per deployment).
#[derive(Debug, Clone)]
pub struct FairQueue<T> {
    max_per_tenant: usize,
    bands: [Band<T>; 3],
    per_tenant: HashMap<String, usize>,
    /// Calls found past their deadline by [`Self::pop`], until [`Self::expire`] returns them.
    expired: Vec<QueuedCall<T>>,
    /// No queued call's deadline is earlier (it may be earlier than all of them).
    earliest_deadline: Option<Instant>,
    next_seq: u64,
}

impl<T> Default for FairQueue<T> {
    fn default() -> Self {
        Self::new(DEFAULT_MAX_PER_TENANT)
    }
}

impl<T> FairQueue<T> {
    /// An empty queue holding at most `max_per_tenant` calls of any one tenant.
    pub fn new(max_per_tenant: usize) -> Self {
        FairQueue {
            max_per_tenant,
            bands: [Band::new(), Band::new(), Band::new()],
            per_tenant: HashMap::new(),
            expired: Vec::new(),
            earliest_deadline: None,
            next_seq: 0,
        }
    }

    /// Calls waiting (not counting expired ones not yet returned by [`Self::expire`]).
    pub fn len(&self) -> usize {
        self.per_tenant.values().sum()
    }

    /// Nothing waiting.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Calls of `tenant` waiting.
    pub fn len_of(&self, tenant: &str) -> usize {
        self.per_tenant.get(tenant).copied().unwrap_or(0)
    }

    /// The earliest deadline of a waiting call, for the caller's timer (then [`Self::expire`]).
    pub fn next_deadline(&self) -> Option<Instant> {
        self.entries().map(|e| e.call.deadline).min()
    }

    fn entries(&self) -> impl Iterator<Item = &Entry<T>> {
        self.bands
            .iter()
            .flat_map(|b| b.flows.values())
            .flat_map(|f| f.entries.iter())
    }

    /// Queues a call, or hands it back with the reason.
    pub fn push(&mut self, call: QueuedCall<T>, now: Instant) -> Result<Ticket, PushError<T>> {
        let refuse = |reason, call| Err(PushError { reason, call });
        if !(call.weight.is_finite() && call.weight > 0.0) {
            let reason = QueueError::InvalidWeight {
                tenant: call.tenant.clone(),
                weight: call.weight,
            };
            return refuse(reason, call);
        }
        if call.deadline <= now {
            return refuse(QueueError::DeadlinePassed, call);
        }
        if self.len_of(&call.tenant) >= self.max_per_tenant {
            let reason = QueueError::TenantQueueFull {
                tenant: call.tenant.clone(),
                limit: self.max_per_tenant,
            };
            return refuse(reason, call);
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        *self.per_tenant.entry(call.tenant.clone()).or_default() += 1;
        self.earliest_deadline = Some(self.earliest_deadline.map_or(call.deadline, |d| d.min(call.deadline)));
        let band = &mut self.bands[band_index(call.band)];
        let arrival = band.virtual_time;
        let flow = band.flows.entry(call.tenant.clone()).or_insert_with(Flow::new);
        let start = arrival.max(flow.tail_finish());
        let mut entry = Entry {
            seq,
            arrival,
            start,
            finish: start,
            call,
        };
        entry.finish = start + entry.cost();
        flow.entries.push_back(entry);
        Ok(Ticket(seq))
    }

    /// The next call to dispatch now that a replica has room: from the first band (real-time,
    /// bulk, batch) with a call waiting, the one with the smallest start tag (ties: the
    /// earliest queued). Calls past their deadline are never returned; they are set aside
    /// for [`Self::expire`].
    pub fn pop(&mut self, now: Instant) -> Option<QueuedCall<T>> {
        self.sweep(now);
        let band = self.bands.iter_mut().find(|b| !b.is_empty())?;
        let tenant = band
            .flows
            .iter()
            .filter_map(|(tenant, flow)| flow.entries.front().map(|e| (e.start, e.seq, tenant)))
            .min_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)))
            .map(|(_, _, tenant)| tenant.clone())?;
        let flow = band.flows.get_mut(&tenant)?;
        let entry = flow.entries.pop_front()?;
        flow.dispatched_finish = entry.finish;
        band.virtual_time = band.virtual_time.max(entry.start);
        band.max_finish = band.max_finish.max(entry.finish);
        if band.is_empty() {
            band.virtual_time = band.virtual_time.max(band.max_finish);
        }
        band.prune();
        self.uncount(&entry.call.tenant);
        Some(entry.call)
    }

    /// Every call whose deadline is at or before `now` (the caller answers them), including
    /// those [`Self::pop`] set aside.
    pub fn expire(&mut self, now: Instant) -> Vec<QueuedCall<T>> {
        self.sweep(now);
        std::mem::take(&mut self.expired)
    }

    /// Removes a waiting call (its client went away); `None` if it is no longer waiting.
    pub fn cancel(&mut self, ticket: Ticket) -> Option<QueuedCall<T>> {
        for band in &mut self.bands {
            for flow in band.flows.values_mut() {
                if let Some(at) = flow.entries.iter().position(|e| e.seq == ticket.0) {
                    let entry = flow.entries.remove(at)?;
                    flow.retag();
                    band.prune();
                    self.uncount(&entry.call.tenant);
                    return Some(entry.call);
                }
            }
        }
        None
    }

    fn uncount(&mut self, tenant: &str) {
        if let Some(n) = self.per_tenant.get_mut(tenant) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.per_tenant.remove(tenant);
            }
        }
    }

    /// Moves every call past its deadline to `expired`, retagging the flows they leave.
    fn sweep(&mut self, now: Instant) {
        if self.earliest_deadline.is_none_or(|d| d > now) {
            return;
        }
        let mut gone = Vec::new();
        for band in &mut self.bands {
            for flow in band.flows.values_mut() {
                if flow.entries.iter().any(|e| e.call.deadline <= now) {
                    let (keep, drop): (VecDeque<_>, VecDeque<_>) = std::mem::take(&mut flow.entries)
                        .into_iter()
                        .partition(|e| e.call.deadline > now);
                    flow.entries = keep;
                    flow.retag();
                    gone.extend(drop);
                }
            }
            band.prune();
        }
        gone.sort_by_key(|e| e.seq);
        for entry in gone {
            self.uncount(&entry.call.tenant);
            self.expired.push(entry.call);
        }
        self.earliest_deadline = self.next_deadline();
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn call(tenant: &str, band: LatencyBand, weight: f64, tokens: u64, deadline: Instant) -> QueuedCall<u32> {
        QueuedCall {
            tenant: tenant.to_string(),
            band,
            weight,
            tokens,
            deadline,
            payload: 0,
        }
    }

    #[test]
    fn bands_are_served_strictly_in_order() {
        let now = Instant::now();
        let later = now + Duration::from_secs(60);
        let mut queue = FairQueue::new(16);
        for (i, band) in [
            LatencyBand::Batch,
            LatencyBand::Bulk,
            LatencyBand::RealTime,
            LatencyBand::Bulk,
        ]
        .into_iter()
        .enumerate()
        {
            let mut c = call(&format!("t{i}"), band, 1.0, 10, later);
            c.payload = i as u32;
            queue.push(c, now).unwrap();
        }
        assert_eq!(queue.len(), 4);
        let order: Vec<u32> = std::iter::from_fn(|| queue.pop(now)).map(|c| c.payload).collect();
        assert_eq!(order, [2, 1, 3, 0]);
        assert!(queue.is_empty());
        assert_eq!(BAND_ORDER.map(band_index), [0, 1, 2]);
    }

    #[test]
    fn tenants_of_weights_one_and_three_get_tokens_one_to_three() {
        let now = Instant::now();
        let later = now + Duration::from_secs(60);
        let mut queue = FairQueue::new(1000);
        for _ in 0..200 {
            queue
                .push(call("light", LatencyBand::Bulk, 1.0, 100, later), now)
                .unwrap();
            queue
                .push(call("heavy", LatencyBand::Bulk, 3.0, 100, later), now)
                .unwrap();
        }
        let mut tokens: HashMap<String, u64> = HashMap::new();
        for _ in 0..100 {
            let c = queue.pop(now).unwrap();
            *tokens.entry(c.tenant).or_default() += c.tokens;
        }
        let (light, heavy) = (tokens["light"], tokens["heavy"]);
        assert!(
            (2_400..=2_600).contains(&light) && (7_400..=7_600).contains(&heavy),
            "{tokens:?}"
        );

        // Fair by tokens, not calls: big calls of weight 1 against small calls of weight 1.
        let mut queue = FairQueue::new(1000);
        for _ in 0..100 {
            queue
                .push(call("big", LatencyBand::Bulk, 1.0, 1_000, later), now)
                .unwrap();
        }
        for _ in 0..1000 {
            queue
                .push(call("small", LatencyBand::Bulk, 1.0, 100, later), now)
                .unwrap();
        }
        let mut tokens: HashMap<String, u64> = HashMap::new();
        for _ in 0..110 {
            let c = queue.pop(now).unwrap();
            *tokens.entry(c.tenant).or_default() += c.tokens;
        }
        let (big, small) = (tokens["big"], tokens["small"]);
        assert!(big.abs_diff(small) <= 1_000, "{tokens:?}");
    }

    #[test]
    fn a_tenant_arriving_late_gets_no_credit_for_its_idle_time() {
        let now = Instant::now();
        let later = now + Duration::from_secs(60);
        let mut queue = FairQueue::new(1000);
        for _ in 0..100 {
            queue
                .push(call("early", LatencyBand::Bulk, 1.0, 100, later), now)
                .unwrap();
        }
        for _ in 0..50 {
            queue.pop(now).unwrap();
        }
        for _ in 0..50 {
            queue
                .push(call("late", LatencyBand::Bulk, 1.0, 100, later), now)
                .unwrap();
        }
        let next: Vec<String> = (0..10).map(|_| queue.pop(now).unwrap().tenant).collect();
        let late = next.iter().filter(|t| *t == "late").count();
        assert!((4..=6).contains(&late), "{next:?}");
    }

    #[test]
    fn calls_past_their_deadline_expire_and_are_never_dispatched() {
        let t0 = Instant::now();
        let mut queue = FairQueue::new(16);
        let soon = t0 + Duration::from_millis(100);
        let later = t0 + Duration::from_secs(10);
        let a = queue.push(call("a", LatencyBand::RealTime, 1.0, 10, soon), t0).unwrap();
        queue.push(call("b", LatencyBand::Bulk, 1.0, 10, later), t0).unwrap();
        queue.push(call("a", LatencyBand::RealTime, 1.0, 10, soon), t0).unwrap();
        assert_eq!(queue.next_deadline(), Some(soon));
        assert!(queue.expire(t0).is_empty());
        // Past the first two deadlines, pop skips them (real-time though they are).
        let t1 = t0 + Duration::from_millis(100);
        assert_eq!(queue.pop(t1).unwrap().tenant, "b");
        assert_eq!(queue.len(), 0);
        let expired = queue.expire(t1);
        assert_eq!(expired.len(), 2);
        assert!(expired.iter().all(|c| c.tenant == "a"));
        assert!(queue.expire(t1).is_empty());
        assert_eq!(queue.cancel(a), None);
        assert_eq!(queue.next_deadline(), None);
        // A deadline already passed is refused at the door.
        let refused = queue.push(call("c", LatencyBand::Bulk, 1.0, 10, t1), t1).unwrap_err();
        assert_eq!(refused.reason, QueueError::DeadlinePassed);
    }

    #[test]
    fn a_tenant_queue_is_bounded_with_a_clear_error() {
        let now = Instant::now();
        let later = now + Duration::from_secs(10);
        let mut queue = FairQueue::new(2);
        queue.push(call("t", LatencyBand::Bulk, 1.0, 10, later), now).unwrap();
        queue.push(call("t", LatencyBand::Batch, 1.0, 10, later), now).unwrap();
        let mut third = call("t", LatencyBand::RealTime, 1.0, 10, later);
        third.payload = 7;
        let refused = queue.push(third, now).unwrap_err();
        assert_eq!(
            refused.reason,
            QueueError::TenantQueueFull {
                tenant: "t".into(),
                limit: 2
            }
        );
        assert_eq!(refused.call.payload, 7);
        assert_eq!(
            refused.reason.to_string(),
            "tenant t already has 2 calls queued, the most it may; try again later"
        );
        // Others are not affected; after a dispatch, t has room again.
        queue.push(call("u", LatencyBand::Bulk, 1.0, 10, later), now).unwrap();
        queue.pop(now).unwrap();
        assert_eq!(queue.len_of("t"), 1);
        queue.push(call("t", LatencyBand::Bulk, 1.0, 10, later), now).unwrap();
        for weight in [0.0, -1.0, f64::NAN, f64::INFINITY] {
            let refused = queue
                .push(call("w", LatencyBand::Bulk, weight, 10, later), now)
                .unwrap_err();
            assert!(matches!(refused.reason, QueueError::InvalidWeight { .. }));
        }
    }

    #[test]
    fn cancel_removes_a_call_and_its_cost() {
        let now = Instant::now();
        let later = now + Duration::from_secs(10);
        let mut queue = FairQueue::new(16);
        let huge = queue
            .push(call("a", LatencyBand::Bulk, 1.0, 1_000_000, later), now)
            .unwrap();
        queue.push(call("a", LatencyBand::Bulk, 1.0, 10, later), now).unwrap();
        queue.push(call("b", LatencyBand::Bulk, 1.0, 10, later), now).unwrap();
        queue.push(call("b", LatencyBand::Bulk, 1.0, 10, later), now).unwrap();
        assert_eq!(queue.cancel(huge).unwrap().tokens, 1_000_000);
        // a's small call no longer waits behind the cancelled one's cost.
        let order: Vec<String> = std::iter::from_fn(|| queue.pop(now)).map(|c| c.tenant).collect();
        assert_eq!(order, ["a", "b", "b"]);
    }

    #[derive(Debug, Clone)]
    enum Op {
        Push {
            tenant: u8,
            band: u8,
            weight: u8,
            tokens: u64,
            deadline_ms: u64,
        },
        Pop,
        Advance(u64),
        Cancel(usize),
    }

    fn op() -> impl proptest::strategy::Strategy<Value = Op> {
        use proptest::prelude::*;
        prop_oneof![
            4 => (0u8..3, 0u8..3, 1u8..4, 0u64..2_000, 1u64..500).prop_map(|(tenant, band, weight, tokens, deadline_ms)| {
                Op::Push { tenant, band, weight, tokens, deadline_ms }
            }),
            3 => Just(Op::Pop),
            2 => (0u64..100).prop_map(Op::Advance),
            1 => (0usize..64).prop_map(Op::Cancel),
        ]
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig { cases: 128, ..Default::default() })]

        /// Every call queued comes out exactly once (dispatched, expired or cancelled); none
        /// is dispatched past its deadline or ahead of a live call of an earlier band; no
        /// tenant holds more than its bound.
        #[test]
        fn calls_come_out_once_in_band_order_and_in_time(ops in proptest::collection::vec(op(), 1..120)) {
            let t0 = Instant::now();
            let mut now = t0;
            let mut queue: FairQueue<u32> = FairQueue::new(8);
            // id -> (band, deadline) of calls in the queue.
            let mut waiting: HashMap<u32, (usize, Instant)> = HashMap::new();
            let mut tickets = Vec::new();
            let mut out: Vec<u32> = Vec::new();
            let mut accepted = 0u32;
            for (id, op) in ops.into_iter().enumerate() {
                let id = id as u32;
                match op {
                    Op::Push { tenant, band, weight, tokens, deadline_ms } => {
                        let mut c = call(&format!("t{tenant}"), BAND_ORDER[band as usize], f64::from(weight), tokens,
                            now + Duration::from_millis(deadline_ms));
                        c.payload = id;
                        if let Ok(ticket) = queue.push(c, now) {
                            accepted += 1;
                            waiting.insert(id, (band as usize, now + Duration::from_millis(deadline_ms)));
                            tickets.push(ticket);
                        }
                    }
                    Op::Pop => {
                        if let Some(c) = queue.pop(now) {
                            proptest::prop_assert!(c.deadline > now);
                            let (band, _) = waiting.remove(&c.payload).unwrap();
                            proptest::prop_assert!(waiting.values().all(|&(b, d)| b >= band || d <= now));
                            out.push(c.payload);
                        } else {
                            proptest::prop_assert!(waiting.values().all(|&(_, d)| d <= now));
                        }
                    }
                    Op::Advance(ms) => now += Duration::from_millis(ms),
                    Op::Cancel(i) => {
                        if let Some(ticket) = tickets.get(i) {
                            if let Some(c) = queue.cancel(*ticket) {
                                waiting.remove(&c.payload);
                                out.push(c.payload);
                            }
                        }
                    }
                }
                for tenant in ["t0", "t1", "t2"] {
                    proptest::prop_assert!(queue.len_of(tenant) <= 8);
                }
                for c in queue.expire(now) {
                    proptest::prop_assert!(c.deadline <= now);
                    waiting.remove(&c.payload);
                    out.push(c.payload);
                }
            }
            out.extend(std::iter::from_fn(|| queue.pop(now)).map(|c| c.payload));
            out.extend(queue.expire(now + Duration::from_secs(3600)).into_iter().map(|c| c.payload));
            let mut sorted = out.clone();
            sorted.sort_unstable();
            sorted.dedup();
            proptest::prop_assert_eq!(sorted.len(), out.len());
            proptest::prop_assert_eq!(out.len() as u32, accepted);
            proptest::prop_assert!(queue.is_empty());
        }
    }
}
