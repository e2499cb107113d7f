//! The gateway's live state: which deployments a tenant can call and their serving
//! replicas (a snapshot refreshed from the catalog and the registry), calls in flight per
//! replica, the wait queues, token budgets and the API-key cache. The HTTP side is in
//! [`super::http`].

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, MutexGuard, RwLock},
    time::{Duration, Instant},
};

use tokio::sync::{oneshot, watch};

use super::{
    budget::{Grant, OverBudget, TokenBudgets},
    queue::{FairQueue, QueuedCall, Ticket, DEFAULT_MAX_PER_TENANT},
    routing::{pick, ReplicaState, RequestFacts},
};
use crate::{
    apikeys::ApiKeyRow,
    audit::AuditLog,
    manifest::{LatencyBand, LatencyBudget, QuotaMode, RoutingPolicy, ScalePolicy},
    otel::Tracer,
    server::Shared,
};

/// How often the route snapshot is rebuilt when nothing wakes it.
pub const REFRESH_INTERVAL: Duration = Duration::from_millis(250);

/// How long a looked-up API key is trusted before it is read again (a revocation through
/// this coordinator's API takes effect at once; this bounds one made elsewhere).
pub const KEY_CACHE_TTL: Duration = Duration::from_secs(5);

/// One serving replica, as calls and audit records need it.
#[derive(Debug, Clone, PartialEq)]
pub struct ReplicaInfo {
    /// Replica name.
    pub name: String,
    /// Node it runs on.
    pub node: String,
    /// OpenAI-compatible base URL, `http://HOST:PORT/v1` (no trailing slash).
    pub base_url: String,
    /// Runtime kind.
    pub runtime_kind: String,
    /// Runtime version (`unknown` when the runtime does not say).
    pub runtime_version: String,
    /// Effective hardware class (`cpu` for a CPU replica).
    pub hardware_class: String,
    /// Device UUIDs (`SIM-…` for simulated devices).
    pub gpus: Vec<String>,
}

/// A deployment as the gateway serves it.
#[derive(Debug)]
pub struct Route {
    /// Tenant (namespace).
    pub tenant: String,
    /// Deployment name.
    pub deployment: String,
    /// Model name (what the runtime serves).
    pub model_name: String,
    /// Model version.
    pub model_version: String,
    /// Model digest, when the manifest gives one.
    pub model_digest: Option<String>,
    /// Routing policy.
    pub routing: RoutingPolicy,
    /// Latency budget.
    pub latency_budget: Option<LatencyBudget>,
    /// Hardware classes in order of preference (preferred first, then allowed).
    pub classes: Vec<String>,
    /// Whether the deployment may run at zero replicas (calls then wait for one).
    pub scales_from_zero: bool,
    /// Calls per replica at once.
    pub max_concurrency: u32,
    /// Queue wait limit.
    pub queue_timeout: Duration,
    /// Other tenants that may call it (`*`: all).
    pub shared_with: Vec<String>,
    /// Live state (kept across snapshots).
    pub live: Arc<Mutex<Live>>,
}

impl Route {
    /// Locks the live state.
    pub fn live(&self) -> MutexGuard<'_, Live> {
        self.live.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A call waiting in a queue: how to wake it, and what routing needs to know about it.
#[derive(Debug)]
pub struct Waiter {
    /// Receives the replica it may use.
    pub wake: oneshot::Sender<Slot>,
    /// Prefix key of its prompt.
    pub prefix_key: u64,
    /// Expected output tokens.
    pub expected_tokens: u32,
    /// The replica that failed this call's first attempt (a retry avoids it when it can).
    pub exclude: Option<String>,
}

/// A replica slot held by one call: release it with [`Gateway::release`].
#[derive(Debug, Clone)]
pub struct Slot {
    /// The replica.
    pub replica: Arc<ReplicaInfo>,
    /// Calls in flight to it when this one was sent (this one included).
    pub outstanding_at_dispatch: u32,
    /// Why it was picked.
    pub reason: &'static str,
}

/// Per-deployment state that outlives snapshots.
#[derive(Debug)]
pub struct Live {
    /// Routing state per replica (same order as `info`).
    pub replicas: Vec<ReplicaState>,
    /// Facts per replica.
    pub info: Vec<Arc<ReplicaInfo>>,
    /// Calls waiting for a free replica.
    pub queue: FairQueue<Waiter>,
}

impl Default for Live {
    fn default() -> Self {
        Self {
            replicas: Vec::new(),
            info: Vec::new(),
            queue: FairQueue::new(DEFAULT_MAX_PER_TENANT),
        }
    }
}

impl Live {
    /// Whether any replica is ready.
    pub fn any_ready(&self) -> bool {
        self.replicas.iter().any(|r| r.ready)
    }

    fn take(&mut self, index: usize, reason: &'static str) -> Slot {
        let state = &mut self.replicas[index];
        state.outstanding = state.outstanding.saturating_add(1);
        Slot {
            replica: self.info[index].clone(),
            outstanding_at_dispatch: state.outstanding,
            reason,
        }
    }

    /// Picks and takes a replica, `None` when every one is saturated, excluded or not ready.
    pub fn acquire(&mut self, route: &Route, facts: &RequestFacts<'_>, exclude: &[&str]) -> Option<Slot> {
        let choice = pick(route.routing, &self.replicas, facts, exclude)?;
        Some(self.take(choice.index, choice.reason.as_str()))
    }

    /// Hands free replicas to waiting calls, in the queue's order.
    pub fn dispatch(&mut self, route: &Route, now: Instant) {
        drop(self.queue.expire(now));
        while !self.queue.is_empty() && self.replicas.iter().any(|r| r.ready && !r.saturated()) {
            let Some(call) = self.queue.pop(now) else { break };
            let facts = RequestFacts {
                prefix_key: call.payload.prefix_key,
                expected_tokens: call.payload.expected_tokens,
                latency_budget: route.latency_budget,
                preferred_classes: &route.classes,
            };
            let Some(slot) = self.acquire(route, &facts, &[]) else {
                break;
            };
            if let Err(slot) = call.payload.wake.send(slot) {
                // The caller went away while queued: give the slot back.
                self.undo(&slot.replica.name);
            }
        }
    }

    fn undo(&mut self, name: &str) {
        if let Some(r) = self.replicas.iter_mut().find(|r| r.name == name) {
            r.outstanding = r.outstanding.saturating_sub(1);
        }
    }

    /// Calls waiting.
    pub fn queued(&self) -> usize {
        self.queue.len()
    }
}

/// How a finished call went, for the replica's latency estimates.
#[derive(Debug, Clone, Copy)]
pub struct Outcome {
    /// Whether the call succeeded (estimates learn only from successes).
    pub ok: bool,
    /// Time to first byte of the body, ms.
    pub ttft_ms: Option<f64>,
    /// Mean time per output token after the first, ms.
    pub tpot_ms: Option<f64>,
}

/// The snapshot of what can be called.
#[derive(Debug, Default)]
pub struct Table {
    /// By (tenant, deployment name).
    pub routes: HashMap<(String, String), Arc<Route>>,
    /// (tenant, model name) to deployment name, for calls that name the model.
    pub by_model: HashMap<(String, String), String>,
    /// What a calling tenant's calls get.
    pub tenants: HashMap<String, Caller>,
}

/// A calling tenant's terms: its calls queue in its band with its weight, and its budget is
/// enforced or only reported.
#[derive(Debug, Clone, Copy)]
pub struct Caller {
    /// Latency band.
    pub band: LatencyBand,
    /// Weight.
    pub weight: f64,
    /// Quota mode (dry-run: over-budget calls are served and counted).
    pub quota_mode: QuotaMode,
}

impl Default for Caller {
    fn default() -> Self {
        Self {
            band: LatencyBand::default(),
            weight: 1.0,
            quota_mode: QuotaMode::default(),
        }
    }
}

impl Route {
    /// Whether `tenant`'s keys may call it.
    pub fn callable_by(&self, tenant: &str) -> bool {
        self.tenant == tenant || self.shared_with.iter().any(|t| t == "*" || t == tenant)
    }

    /// The name a tenant calls it by: the deployment name for its own, `owner/deployment`
    /// for one shared with it.
    pub fn id_for(&self, tenant: &str) -> String {
        if self.tenant == tenant {
            self.deployment.clone()
        } else {
            format!("{}/{}", self.tenant, self.deployment)
        }
    }
}

impl Table {
    /// The deployment `tenant` means by `model`: its own deployment of that name, else its
    /// own deployment of that model name; else `owner/deployment`, or a deployment shared
    /// with it by that deployment or model name (when exactly one matches).
    pub fn resolve(&self, tenant: &str, model: &str) -> Option<Arc<Route>> {
        let key = (tenant.to_string(), model.to_string());
        if let Some(route) = self.routes.get(&key) {
            return Some(route.clone());
        }
        if let Some(deployment) = self.by_model.get(&key) {
            return self.routes.get(&(tenant.to_string(), deployment.clone())).cloned();
        }
        if let Some((owner, name)) = model.split_once('/') {
            if let Some(route) = self.routes.get(&(owner.to_string(), name.to_string())) {
                if route.callable_by(tenant) {
                    return Some(route.clone());
                }
            }
        }
        let mut shared = self
            .routes
            .values()
            .filter(|r| r.callable_by(tenant) && (r.deployment == model || r.model_name == model));
        let first = shared.next()?;
        shared.next().is_none().then(|| first.clone())
    }

    /// The deployments the tenant may call, its own first, each sorted by name.
    pub fn of_tenant(&self, tenant: &str) -> Vec<Arc<Route>> {
        let mut routes: Vec<Arc<Route>> = self
            .routes
            .values()
            .filter(|r| r.callable_by(tenant))
            .cloned()
            .collect();
        routes.sort_by(|a, b| {
            (a.tenant != tenant, &a.tenant, &a.deployment).cmp(&(b.tenant != tenant, &b.tenant, &b.deployment))
        });
        routes
    }
}

#[derive(Debug, Clone)]
struct CachedKey {
    row: Option<Arc<ApiKeyRow>>,
    fetched: Instant,
}

/// (tenant, deployment).
pub type DeploymentKey = (String, String);

/// Why a key was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyError {
    /// No `Authorization: Bearer` header.
    Missing,
    /// Not a key, unknown, wrong secret or revoked.
    Invalid,
    /// The store could not be read.
    Store(String),
}

/// The gateway.
#[derive(Debug)]
pub struct Gateway {
    /// Coordinator state (catalog, registry, store, placement).
    pub shared: Arc<Shared>,
    table: RwLock<Arc<Table>>,
    lives: Mutex<HashMap<DeploymentKey, Arc<Mutex<Live>>>>,
    budgets: Mutex<TokenBudgets>,
    keys: Mutex<HashMap<String, CachedKey>>,
    /// The audit log; `None` when it could not be opened (see [`Gateway::audit_refusal`]).
    pub audit: Option<AuditLog>,
    /// Why the audit log could not be opened.
    pub audit_open_error: Option<String>,
    /// Trace export.
    pub tracer: Tracer,
    /// Counters and histograms.
    pub metrics: super::metrics::GatewayMetrics,
    updated: watch::Sender<u64>,
    /// Last call per deployment that may scale to zero (read by the reconciler).
    demand: Mutex<HashMap<(String, String), Instant>>,
    /// Calls waiting for a replica to start, by (caller, owner, deployment).
    waiting: WaitCounts,
    started: Instant,
    refreshed: Mutex<Option<Instant>>,
    rebuilding: Mutex<()>,
}

/// (caller, owner, deployment).
type WaitKey = (String, String, String);

/// Calls waiting for a replica to start, by [`WaitKey`].
#[derive(Debug, Default)]
struct WaitCounts(Arc<Mutex<HashMap<WaitKey, usize>>>);

impl WaitCounts {
    /// Counts one more call under `key`, unless `limit` already wait there.
    fn enter(&self, key: WaitKey, limit: usize) -> Option<WaitingCall> {
        let mut counts = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let n = counts.entry(key.clone()).or_default();
        if *n >= limit {
            return None;
        }
        *n += 1;
        Some(WaitingCall {
            counts: self.0.clone(),
            key,
        })
    }

    #[cfg(test)]
    fn count(&self, key: &WaitKey) -> usize {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(key)
            .copied()
            .unwrap_or(0)
    }
}

/// One call counted as waiting for a replica to start ([`Gateway::start_waiting`]); the
/// count drops with it.
#[derive(Debug)]
pub struct WaitingCall {
    counts: Arc<Mutex<HashMap<WaitKey, usize>>>,
    key: WaitKey,
}

impl Drop for WaitingCall {
    fn drop(&mut self) {
        let mut counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = counts.get_mut(&self.key) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                counts.remove(&self.key);
            }
        }
    }
}

impl Gateway {
    /// A gateway over `shared`, with its audit log (or why it could not be opened) and
    /// tracer.
    pub fn new(shared: Arc<Shared>, audit: Result<AuditLog, String>, tracer: Tracer) -> Self {
        let (audit, audit_open_error) = match audit {
            Ok(log) => (Some(log), None),
            Err(e) => (None, Some(e)),
        };
        Self {
            shared,
            table: RwLock::new(Arc::new(Table::default())),
            lives: Mutex::new(HashMap::new()),
            budgets: Mutex::new(TokenBudgets::new()),
            keys: Mutex::new(HashMap::new()),
            audit,
            audit_open_error,
            tracer,
            metrics: super::metrics::GatewayMetrics::default(),
            updated: watch::channel(0).0,
            demand: Mutex::new(HashMap::new()),
            waiting: WaitCounts::default(),
            started: Instant::now(),
            refreshed: Mutex::new(None),
            rebuilding: Mutex::new(()),
        }
    }

    /// The current snapshot.
    pub fn table(&self) -> Arc<Table> {
        self.table.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// A calling tenant's terms: from the snapshot, else (applied a moment ago) the catalog.
    pub fn caller(&self, tenant: &str) -> Caller {
        if let Some(caller) = self.table().tenants.get(tenant) {
            return *caller;
        }
        self.shared
            .catalog()
            .tenants
            .get(tenant)
            .map(|t| Caller {
                band: t.object.spec.latency_band,
                weight: t.object.spec.weight,
                quota_mode: t.object.spec.quota_mode,
            })
            .unwrap_or_default()
    }

    /// Resolves when the snapshot is next rebuilt.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.updated.subscribe()
    }

    /// [`Self::refresh`] unless the snapshot is younger than `max_age` (a call that finds no
    /// deployment or no ready replica refreshes before it gives up; this bounds the cost).
    pub fn refresh_if_older(&self, max_age: Duration) {
        let fresh = self
            .refreshed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_some_and(|at| at.elapsed() < max_age);
        if !fresh {
            self.refresh();
        }
    }

    /// Rebuilds the snapshot from the catalog and the registry, merges replica changes into
    /// the live states (keeping calls in flight and estimates), and wakes queued calls that
    /// a new replica can take.
    pub fn refresh(&self) {
        // One rebuild at a time: two interleaved ones could write an older view last.
        let _rebuilding = match self.rebuilding.try_lock() {
            Ok(guard) => guard,
            Err(std::sync::TryLockError::Poisoned(p)) => p.into_inner(),
            Err(std::sync::TryLockError::WouldBlock) => return,
        };
        let now = Instant::now();
        let serving = self
            .shared
            .registry()
            .serving_replicas(now, self.shared.config.liveness_timeout);
        let mut by_deployment: HashMap<(String, String), Vec<ReplicaInfo>> = HashMap::new();
        let mut kv: HashMap<String, Option<f64>> = HashMap::new();
        {
            let placement = self.shared.placement_state();
            for (node, r) in serving {
                let Some(endpoint) = r.endpoint.as_deref() else {
                    continue;
                };
                kv.insert(r.name.clone(), r.metrics.and_then(|m| m.kv_cache_usage_ratio));
                let hardware_class = if r.gpus.is_empty() {
                    "cpu".to_string()
                } else {
                    placement.known_class(&r.gpus).unwrap_or_else(|| "unknown".to_string())
                };
                by_deployment
                    .entry((r.tenant.clone(), r.deployment.clone()))
                    .or_default()
                    .push(ReplicaInfo {
                        name: r.name.clone(),
                        node,
                        base_url: endpoint.trim_end_matches('/').to_string(),
                        runtime_kind: r.runtime_kind.clone(),
                        runtime_version: r.runtime_version.clone().unwrap_or_else(|| "unknown".to_string()),
                        hardware_class,
                        gpus: r.gpus.clone(),
                    });
            }
        }
        let mut table = Table::default();
        let mut limits = Vec::new();
        {
            let catalog = self.shared.catalog();
            let mut lives = self.lives.lock().unwrap_or_else(|p| p.into_inner());
            for ((tenant, name), stored) in &catalog.deployments {
                if !catalog.tenants.contains_key(tenant) {
                    continue;
                }
                let spec = &stored.object.spec;
                let key = (tenant.clone(), name.clone());
                let live = lives.entry(key.clone()).or_default().clone();
                let mut classes = spec.resources.preferred_hardware_classes.clone();
                for c in &spec.resources.hardware_classes {
                    if !classes.contains(c) {
                        classes.push(c.clone());
                    }
                }
                let route = Arc::new(Route {
                    tenant: tenant.clone(),
                    deployment: name.clone(),
                    model_name: spec.model.name.clone(),
                    model_version: spec.model.version.clone(),
                    model_digest: spec.model.digest.clone(),
                    routing: spec.routing,
                    latency_budget: spec.latency_budget,
                    classes,
                    scales_from_zero: spec.scale_policy != ScalePolicy::AlwaysWarm && spec.replicas.min == 0,
                    max_concurrency: spec
                        .max_concurrent_requests
                        .unwrap_or(crate::manifest::DEFAULT_MAX_CONCURRENT_REQUESTS),
                    queue_timeout: spec.queue_timeout.unwrap_or(crate::manifest::DEFAULT_QUEUE_TIMEOUT),
                    shared_with: spec.shared_with.clone(),
                    live,
                });
                merge(&route, by_deployment.remove(&key).unwrap_or_default(), &kv, now);
                table
                    .by_model
                    .entry((tenant.clone(), spec.model.name.clone()))
                    .or_insert_with(|| name.clone());
                table.routes.insert(key, route);
            }
            lives.retain(|key, _| table.routes.contains_key(key));
            for (name, t) in &catalog.tenants {
                let spec = &t.object.spec;
                limits.push((name.clone(), spec.tokens_per_minute));
                table.tenants.insert(
                    name.clone(),
                    Caller {
                        band: spec.latency_band,
                        weight: spec.weight,
                        quota_mode: spec.quota_mode,
                    },
                );
            }
        }
        {
            let mut budgets = self.budgets();
            for (tenant, limit) in limits {
                budgets.set_limit(&tenant, limit, now);
            }
        }
        *self.table.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(table);
        *self.refreshed.lock().unwrap_or_else(|p| p.into_inner()) = Some(now);
        self.updated.send_modify(|n| *n = n.wrapping_add(1));
    }

    fn budgets(&self) -> MutexGuard<'_, TokenBudgets> {
        self.budgets.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Admits a call estimated at `tokens` against its tenant's budget.
    pub fn admit(&self, tenant: &str, tokens: u64) -> Result<Grant, OverBudget> {
        self.budgets().try_take(tenant, tokens, Instant::now())
    }

    /// Settles a grant with actual usage; a dry-run admission (no grant) is charged.
    pub fn settle(&self, grant: Option<Grant>, tenant: &str, actual: u64) {
        let now = Instant::now();
        let mut budgets = self.budgets();
        match grant {
            Some(grant) => budgets.settle(grant, actual, now),
            None => budgets.charge(tenant, actual, now),
        }
    }

    /// Gives a slot back and lets a queued call have it.
    pub fn release(&self, route: &Route, slot: &Slot, outcome: Outcome) {
        let mut live = route.live();
        if let Some(r) = live.replicas.iter_mut().find(|r| r.name == slot.replica.name) {
            r.outstanding = r.outstanding.saturating_sub(1);
            if outcome.ok {
                if let Some(ttft) = outcome.ttft_ms {
                    r.observe(ttft, outcome.tpot_ms, slot.outstanding_at_dispatch);
                }
            }
        }
        live.dispatch(route, Instant::now());
    }

    /// Queues a call; the caller awaits the receiver until `deadline`.
    pub fn enqueue(&self, route: &Route, call: QueuedCall<Waiter>) -> Result<Ticket, super::queue::QueueError> {
        let now = Instant::now();
        let mut live = route.live();
        let ticket = live.queue.push(call, now).map_err(|e| e.reason)?;
        // A replica may have freed between the failed acquire and the push.
        live.dispatch(route, now);
        Ok(ticket)
    }

    /// Takes a call out of the queue (deadline passed, client gone); false if it was
    /// already handed a replica.
    pub fn cancel(&self, route: &Route, ticket: Ticket) -> bool {
        route.live().queue.cancel(ticket).is_some()
    }

    /// Records a call to a deployment that may scale to zero; wakes the reconciler when it
    /// was idle.
    pub fn note_demand(&self, route: &Route) {
        if !route.scales_from_zero {
            return;
        }
        let now = Instant::now();
        let previous = self
            .demand
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert((route.tenant.clone(), route.deployment.clone()), now);
        let idle = self.shared.config.gateway.scale_to_zero_after;
        if previous.is_none_or(|at| now.saturating_duration_since(at) >= idle) {
            tracing::info!(tenant = %route.tenant, deployment = %route.deployment, "a call for a deployment at zero replicas; scaling up");
            self.shared.wake_reconciler();
        }
    }

    /// Whether a deployment that may scale to zero has had no call for the idle window
    /// (counted from the gateway's start when it never had one, so that a restart does not
    /// stop replicas at once).
    pub fn idle(&self, tenant: &str, deployment: &str) -> bool {
        let window = self.shared.config.gateway.scale_to_zero_after;
        let last = self
            .demand
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&(tenant.to_string(), deployment.to_string()))
            .copied()
            .unwrap_or(self.started);
        if last.elapsed() < window {
            return false;
        }
        // Not while calls are in flight or waiting: a long stream outlives the window.
        let live = self
            .lives
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&(tenant.to_string(), deployment.to_string()))
            .cloned();
        live.is_none_or(|live| {
            let live = live.lock().unwrap_or_else(|p| p.into_inner());
            live.queued() == 0 && live.replicas.iter().all(|r| r.outstanding == 0)
        })
    }

    /// [`Self::authenticate`] from the cache alone: `None` when the store must be read.
    pub fn authenticate_cached(&self, key: &str) -> Option<Result<Arc<ApiKeyRow>, KeyError>> {
        let Some((id, secret)) = crate::apikeys::parse(key) else {
            return Some(Err(KeyError::Invalid));
        };
        let cached = self
            .keys
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(id)
            .filter(|c| c.fetched.elapsed() < KEY_CACHE_TTL)
            .cloned()?;
        Some(match cached.row {
            Some(row) if crate::apikeys::check(&row, secret) => Ok(row),
            _ => Err(KeyError::Invalid),
        })
    }

    /// The row of a valid, unrevoked API key (cached; reads the store on a miss, so call it
    /// off the async workers).
    pub fn authenticate(&self, key: &str) -> Result<Arc<ApiKeyRow>, KeyError> {
        if let Some(result) = self.authenticate_cached(key) {
            return result;
        }
        let (id, secret) = crate::apikeys::parse(key).ok_or(KeyError::Invalid)?;
        let row = self
            .shared
            .store
            .api_key(id)
            .map_err(|e| KeyError::Store(e.to_string()))?
            .map(Arc::new);
        {
            let mut keys = self.keys.lock().unwrap_or_else(|p| p.into_inner());
            if keys.len() > 100_000 {
                keys.clear();
            }
            keys.insert(
                id.to_string(),
                CachedKey {
                    row: row.clone(),
                    fetched: Instant::now(),
                },
            );
        }
        match row {
            Some(row) if crate::apikeys::check(&row, secret) => Ok(row),
            _ => Err(KeyError::Invalid),
        }
    }

    /// Counts a call of `tenant` waiting for a replica of `route` to start, up to
    /// `limit` per tenant and deployment (as queued calls are bounded); `None` when the
    /// tenant already has that many waiting. The count drops with the returned guard.
    pub fn start_waiting(&self, tenant: &str, route: &Route, limit: usize) -> Option<WaitingCall> {
        self.waiting.enter(
            (tenant.to_string(), route.tenant.clone(), route.deployment.clone()),
            limit,
        )
    }

    /// Forgets a cached key (it was revoked).
    pub fn forget_key(&self, id: &str) {
        self.keys.lock().unwrap_or_else(|p| p.into_inner()).remove(id);
    }

    /// Forgets every cached key of a tenant (it was deleted, and its keys revoked with it).
    pub fn forget_tenant_keys(&self, tenant: &str) {
        self.keys
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|_, cached| cached.row.as_ref().is_none_or(|row| row.tenant != tenant));
    }

    /// Why calls must be refused for want of an audit log (required mode), if they must.
    pub fn audit_refusal(&self) -> Option<String> {
        if self.shared.config.gateway.audit_mode != crate::audit::AuditMode::Required {
            return None;
        }
        match &self.audit {
            None => Some(format!(
                "the audit log cannot be opened ({}); calls are refused in audit mode required",
                self.audit_open_error.as_deref().unwrap_or("unknown error")
            )),
            Some(log) => {
                let stats = log.stats();
                if !stats.healthy {
                    return Some(
                        "audit records cannot be written (see the coordinator log); calls are refused in audit mode required"
                            .to_string(),
                    );
                }
                // Keep room for the records of calls already admitted: their records are
                // queued when they end.
                let capacity = self.shared.config.gateway.audit_queue as u64;
                let in_flight = self.metrics.in_flight.load(std::sync::atomic::Ordering::Relaxed);
                (stats.queue_depth + in_flight >= capacity).then(|| {
                    format!(
                        "the audit writer is {} records behind (queue {capacity}); calls are refused in audit mode required until it catches up",
                        stats.queue_depth
                    )
                })
            }
        }
    }
}

/// Brings a route's live replicas in line with the registry: new replicas join with no
/// calls in flight, gone ones leave (calls in flight to them finish on their own), the
/// rest keep their counts and estimates and take the latest KV-cache usage.
fn merge(route: &Route, replicas: Vec<ReplicaInfo>, kv: &HashMap<String, Option<f64>>, now: Instant) {
    let mut live = route.live();
    let mut states = Vec::with_capacity(replicas.len());
    let mut infos = Vec::with_capacity(replicas.len());
    for info in replicas {
        let mut state = match live.replicas.iter().position(|r| r.name == info.name) {
            Some(i) => live.replicas[i].clone(),
            None => ReplicaState::new(info.name.clone(), info.node.clone(), info.hardware_class.clone(), 0),
        };
        state.max_concurrency = route.max_concurrency;
        state.hardware_class = info.hardware_class.clone();
        state.node = info.node.clone();
        state.ready = true;
        state.kv_cache_usage = kv.get(&info.name).copied().flatten();
        let same = live
            .info
            .iter()
            .find(|i| i.name == info.name)
            .filter(|i| ***i == info)
            .cloned();
        infos.push(same.unwrap_or_else(|| Arc::new(info)));
        states.push(state);
    }
    // A replica gone from the registry's serving set (its node missed a report, it is
    // restarting) stays, not ready, while calls sent to it are still in flight: if it comes
    // back, their count is still there and its concurrency limit holds.
    let leaving: Vec<usize> = (0..live.replicas.len())
        .filter(|&i| live.replicas[i].outstanding > 0 && !states.iter().any(|s| s.name == live.replicas[i].name))
        .collect();
    for i in leaving {
        let mut state = live.replicas[i].clone();
        state.ready = false;
        if let Some(info) = live.info.iter().find(|info| info.name == state.name).cloned() {
            infos.push(info);
            states.push(state);
        }
    }
    live.replicas = states;
    live.info = infos;
    live.dispatch(route, now);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calls_waiting_for_a_start_are_bounded_per_tenant_and_deployment() {
        let counts = WaitCounts::default();
        let key = |t: &str| (t.to_string(), "owner".to_string(), "chat".to_string());
        let held: Vec<WaitingCall> = (0..3).filter_map(|_| counts.enter(key("a"), 3)).collect();
        assert_eq!(held.len(), 3);
        assert!(
            counts.enter(key("a"), 3).is_none(),
            "a fourth call of the same tenant waits no more"
        );
        let other = counts.enter(key("b"), 3);
        assert!(other.is_some(), "another tenant has its own bound");
        drop(held);
        assert_eq!(counts.count(&key("a")), 0);
        assert!(counts.enter(key("a"), 3).is_some(), "a freed place is taken again");
        drop(other);
        assert_eq!(counts.count(&key("b")), 0);
    }

    fn a_route() -> Route {
        Route {
            tenant: "t".into(),
            deployment: "d".into(),
            model_name: "m".into(),
            model_version: "1".into(),
            model_digest: None,
            routing: RoutingPolicy::LeastOutstanding,
            latency_budget: None,
            classes: Vec::new(),
            scales_from_zero: false,
            max_concurrency: 2,
            queue_timeout: Duration::from_secs(1),
            shared_with: Vec::new(),
            live: Arc::new(Mutex::new(Live::default())),
        }
    }

    fn info(name: &str) -> ReplicaInfo {
        ReplicaInfo {
            name: name.into(),
            node: format!("node-{name}"),
            base_url: "http://127.0.0.1:1/v1".into(),
            runtime_kind: "vllm".into(),
            runtime_version: "1".into(),
            hardware_class: "H100-80GB".into(),
            gpus: Vec::new(),
        }
    }

    fn facts() -> RequestFacts<'static> {
        RequestFacts {
            prefix_key: 0,
            expected_tokens: 1,
            latency_budget: None,
            preferred_classes: &[],
        }
    }

    #[test]
    fn a_replica_that_leaves_and_returns_keeps_its_calls_in_flight() {
        let route = a_route();
        let now = Instant::now();
        merge(&route, vec![info("a")], &HashMap::new(), now);
        let first = route
            .live()
            .acquire(&route, &facts(), &[])
            .map(|s| s.replica.name.clone());
        assert_eq!(first.as_deref(), Some("a"));
        // Its node misses a report: out of the serving set, never picked, still counted.
        merge(&route, vec![], &HashMap::new(), now);
        {
            let live = route.live();
            assert_eq!(live.replicas.len(), 1);
            assert!(!live.replicas[0].ready && live.replicas[0].outstanding == 1);
        }
        assert!(route.live().acquire(&route, &facts(), &[]).is_none());
        // Back: one call still in flight, so one more fits under the limit of 2, not two.
        merge(&route, vec![info("a")], &HashMap::new(), now);
        assert!(route.live().acquire(&route, &facts(), &[]).is_some());
        assert!(
            route.live().acquire(&route, &facts(), &[]).is_none(),
            "the limit counts the call in flight"
        );
        // A replica gone with nothing in flight is forgotten.
        let other = a_route();
        merge(&other, vec![info("b")], &HashMap::new(), now);
        merge(&other, vec![], &HashMap::new(), now);
        assert!(other.live().replicas.is_empty());
    }
}
