//! The gateway's decision core: which replica serves a call, whether a tenant's token budget
//! admits it, and which waiting call goes next when the replicas are saturated.
//!
//! Sans-IO and pure: nothing here reads a clock, a socket, a file or a random source, or
//! awaits. Time comes in as an [`Instant`](std::time::Instant) argument; the replica facts
//! (calls in flight, KV-cache use, readiness) come in as [`ReplicaState`]s that the caller
//! keeps up to date. The HTTP side (OpenAI-compatible endpoints, streaming, API keys,
//! headers, audit) drives it; none of that is here.
//!
//! One call goes: [`TokenBudgets::try_take`] (429 with `Retry-After` when refused), then
//! [`pick`] under the deployment's [`RoutingPolicy`] (`None`: [`FairQueue::push`] and wait
//! for [`FairQueue::pop`] when a call finishes), then on failure [`RetryPolicy::may_retry`]
//! and [`pick`] again with the failed replica excluded, and at completion
//! [`ReplicaState::observe`] and [`TokenBudgets::settle`].
//!
//! # Routing ([`routing`])
//!
//! A replica is a candidate when it is ready, not saturated (`outstanding <
//! max_concurrency`; a limit of zero is always saturated) and not excluded. No candidate:
//! `None`, and the caller queues the call. Among candidates, per policy:
//!
//! - **Least outstanding** (the default): the fewest calls in flight; ties go to the lowest
//!   load ratio (`outstanding / max_concurrency`, so the larger replica), then the name.
//! - **KV-aware**: the least KV cache in use, compared in steps of [`KV_USAGE_STEP`] (5 %:
//!   usage is sampled at scrape intervals, so finer differences are noise), then as least
//!   outstanding. Only when *every* candidate reports a usage: if one does not (a runtime
//!   that does not export it, a replica not scraped yet), the whole pick falls back to least
//!   outstanding, because comparing a measured replica with an unmeasured one would starve or
//!   flood the unmeasured one.
//! - **Prefix affinity**: consistent hashing over a ring with [`VIRTUAL_NODES`] virtual
//!   nodes per replica, keyed by [`prefix_key`] (a stable hash of the prompt's first bytes,
//!   [`DEFAULT_PREFIX_BYTES`] by default), with bounded load: walking the ring clockwise
//!   from the key, the first candidate whose outstanding calls stay within
//!   `ceil(c × average)` once it takes this one (`c` = [`BOUNDED_LOAD_C`] = 1.25; average =
//!   the candidates' calls in flight, this one included, over the number of candidates)
//!   takes it. The ring holds every ready replica, excluded and saturated ones included, so
//!   a retry or a full replica does not remap other prefixes; a replica that goes away only
//!   remaps its own prefixes. The least loaded candidate is always under the bound, so the
//!   walk always ends on a candidate.
//! - **Latency budget**: each replica keeps moving estimates ([`Ewma`], α = [`EWMA_ALPHA`])
//!   of its *unloaded* time to first token and time per output token: an observation made
//!   with `n` other calls in flight is divided by [`load_factor`] `= 1 + n /
//!   max_concurrency`, and a prediction is the estimate times the load factor now. A
//!   replica is *within* the deployment's `latencyBudget` when its predicted TTFT is at
//!   most `ttftMs` and (when `tpotMs` is set) its predicted time per token at most `tpotMs`;
//!   a replica with no estimate yet counts as within (it must get calls to be measured), as
//!   does every replica when the deployment has no budget. Among those within: the
//!   deployment's hardware classes in its order of preference (an unlisted class last),
//!   then as least outstanding. When none is within: the lowest predicted TTFT, then class,
//!   then load.
//!
//! **Retries** ([`RetryPolicy`]): a call whose attempt failed to connect, or got a 5xx
//! before any byte reached the client, is tried once more on another replica (the caller
//! passes the failed one in `exclude`); nothing is retried once bytes have reached the
//! client (streaming started), and never more than once.
//!
//! # Token budgets ([`budget`])
//!
//! A tenant with `tokensPerMinute: n` has a token bucket of size `n`, refilled continuously
//! at `n` per minute (exact integer arithmetic), starting full. At admission a call takes its
//! estimate (prompt plus most output tokens); the bucket must hold that many, or a call
//! estimated above a whole minute's budget is admitted when the bucket is full, leaving it
//! in debt. Otherwise: [`OverBudget`] with the time until it would be admitted (HTTP 429,
//! `Retry-After` in whole seconds rounded up, at least 1). At completion the [`Grant`] is
//! settled with actual usage: the difference is given back (never above the bucket's size)
//! or charged, possibly into debt, which later admissions wait out. A tenant without a
//! budget is unlimited. Changing a budget keeps the level, cut to the new size.
//!
//! # The wait queue ([`queue`])
//!
//! One [`FairQueue`] per deployment holds calls that found every replica saturated (or
//! excluded). Bands are strict: a real-time call always goes before any bulk call, bulk
//! before batch. Within a band, start-time fair queueing across tenants: a call arriving
//! when the band's virtual time is `v` gets start tag `S = max(v, F)` (`F`: the finish tag
//! of the tenant's previous call in the band) and finish tag `S + max(tokens, 1) / weight`;
//! the smallest start tag goes first (ties: the earliest queued), and `v` becomes its start
//! tag (the largest finish tag dispatched once the band empties). Backlogged tenants thus
//! get tokens in proportion to their weights, and a tenant gets no credit for time it had
//! nothing queued. A call leaving before dispatch (expired, cancelled) has its cost taken
//! out of the tags of the tenant's calls behind it. A call's deadline is checked at every
//! `pop`: a call past it is never dispatched but set aside for [`FairQueue::expire`], which
//! the caller runs on a timer ([`FairQueue::next_deadline`]) and answers (429 or 503). Each
//! tenant may have at most a bounded number of calls waiting ([`QueueError::TenantQueueFull`]);
//! a refused push hands the call back.
//!
//! # What it deliberately does not do
//!
//! - Count calls: the caller increments [`ReplicaState::outstanding`] when it sends a call
//!   and decrements it when the call ends; `pick` does not change its input.
//! - Hold the replicas of a deployment, or watch them come and go: the caller passes the
//!   current set every time (so the prefix ring is rebuilt per pick: replicas × virtual
//!   nodes hashes, microseconds for tens of replicas).
//! - Starve-proof the bands: batch waits as long as real-time or bulk calls are queued;
//!   deadlines bound the wait.
//! - Weigh heterogeneous replicas in prefix affinity: the load bound counts calls, not
//!   capacity.
//! - Estimate tokens: the caller supplies estimates (prompt length, `max_tokens`) and actual
//!   usage.
//! - Apply `quotaMode: dry-run` to token budgets: the caller decides whether a refusal is
//!   enforced or only reported.

pub mod budget;
pub mod http;
pub mod metrics;
pub mod queue;
pub mod routing;
pub mod service;

pub use service::Gateway;

pub use budget::{Grant, OverBudget, TokenBudgets};
pub use queue::{FairQueue, PushError, QueueError, QueuedCall, Ticket, BAND_ORDER, DEFAULT_MAX_PER_TENANT};
pub use routing::{
    load_factor, pick, prefix_key, Choice, ChoiceReason, Ewma, Failure, ReplicaState, RequestFacts, RetryPolicy,
    BOUNDED_LOAD_C, DEFAULT_PREFIX_BYTES, EWMA_ALPHA, KV_USAGE_STEP, VIRTUAL_NODES,
};

pub use crate::manifest::RoutingPolicy;
