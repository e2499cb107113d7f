//! One replica's life on this node, as a sans-IO state machine: events and `now` go in
//! (`set_desired`, `on_spawned`, `on_readiness`, `on_exit`, ...), decisions come out
//! ([`ReplicaCore::poll`]: launch, stop, probe). It reads no clock, starts no process and
//! opens no socket, so every timer (backoff, readiness deadline, liveness, crash loop) is
//! unit-tested with explicit instants below. The supervisor ([`super::supervisor`]) carries
//! the decisions out and feeds back what happened.
//!
//! ```text
//!             set_desired / new            on_spawned               readiness ok
//!   Pending ──────────────────► (Launch) ──────────────► Starting ─────────────► Ready
//!      ▲  ▲                        │ build error             │ exit / deadline    │ liveness fails
//!      │  │ backoff over           ▼                         ▼                    ▼
//!      │  └──────────── CrashLoop ◄── (failure: stop the group, back off) ◄── Unhealthy (N in a row)
//!      │                (3+ failures in a row)
//!      └── spec changed / removed: Stopping ──► (stopped) ──► Pending or gone
//! ```
//! `Failed` is terminal for a spec: the launch cannot be built (no adapter or command for
//! the kind, an unknown device, an adapter refusal). A new spec starts over.

use std::{
    collections::VecDeque,
    time::{Duration, Instant},
};

use pyxis_protocol::{ReplicaPhase, ReplicaSpec, ReplicaStatus, RuntimeMetrics};

use crate::backoff::Backoff;

/// The supervisor's timers and thresholds.
#[derive(Debug, Clone, PartialEq)]
pub struct Timing {
    /// First restart delay after a failure (doubles per consecutive failure, jittered).
    pub restart_backoff_min: Duration,
    /// Longest restart delay.
    pub restart_backoff_max: Duration,
    /// A run that was ready this long resets the failure count when it ends.
    pub backoff_reset_after: Duration,
    /// Consecutive failures after which the phase is `CrashLoop`.
    pub crash_loop_after: u32,
    /// How often readiness is probed while starting.
    pub readiness_interval: Duration,
    /// Readiness deadline when the spec gives none.
    pub default_readiness_timeout: Duration,
    /// How often liveness is probed while ready.
    pub liveness_interval: Duration,
    /// Liveness failures in a row that restart a ready runtime.
    pub liveness_failures: u32,
    /// How often runtime metrics are scraped while ready.
    pub metrics_interval: Duration,
    /// How often a launch that waits for a resource (a free port) is tried again. Such a
    /// wait is not a runtime failure: no backoff, no CrashLoop.
    pub resource_retry: Duration,
}

impl Default for Timing {
    fn default() -> Self {
        Self {
            restart_backoff_min: Duration::from_secs(1),
            restart_backoff_max: Duration::from_secs(300),
            backoff_reset_after: Duration::from_secs(600),
            crash_loop_after: 3,
            readiness_interval: Duration::from_millis(500),
            default_readiness_timeout: Duration::from_secs(600),
            liveness_interval: Duration::from_secs(5),
            liveness_failures: 3,
            metrics_interval: Duration::from_secs(1),
            resource_retry: Duration::from_secs(2),
        }
    }
}

/// A spec with its digest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Desired {
    /// The spec.
    pub spec: ReplicaSpec,
    /// [`super::ledger::spec_hash`] of it.
    pub hash: String,
}

/// What the supervisor knows of a started process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunFacts {
    /// Main process id.
    pub pid: u32,
    /// OpenAI-compatible base URL.
    pub endpoint: String,
    /// Started by an earlier agent and adopted (not our child).
    pub adopted: bool,
    /// Time to ready, when an adopted run was already ready before.
    pub ready_after: Option<Duration>,
}

/// What the supervisor should do next for this replica.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Build the launch and start the process (answer with `on_spawned` or
    /// `on_launch_failed`).
    Launch,
    /// Stop the run's whole process group (answer with `on_stopped`).
    Stop {
        /// Which run.
        run: u64,
    },
    /// Probe readiness (answer with `on_readiness`).
    ProbeReadiness {
        /// Which run.
        run: u64,
    },
    /// Probe liveness (answer with `on_liveness`).
    ProbeLiveness {
        /// Which run.
        run: u64,
    },
    /// Ask the runtime its version (answer with `on_version`).
    ProbeVersion {
        /// Which run.
        run: u64,
    },
    /// Scrape runtime metrics (answer with `on_metrics`).
    ScrapeMetrics {
        /// Which run.
        run: u64,
    },
    /// Removed and stopped: drop the replica.
    Forget,
}

#[derive(Debug, Clone)]
struct Run {
    id: u64,
    facts: RunFacts,
    started: Instant,
    deadline: Instant,
    ready_at: Option<Instant>,
    ready_after: Option<Duration>,
    liveness_failures: u32,
    next_probe: Instant,
    probe_in_flight: bool,
    next_metrics: Instant,
    metrics_in_flight: bool,
    version_wanted: bool,
}

#[derive(Debug, Clone)]
enum State {
    /// Not running; (re)start at `until` (CrashLoop while failures are many, unless it
    /// waits for a resource: `resource`).
    Waiting { until: Instant, resource: bool },
    /// A launch was asked for; waiting for its outcome.
    Launching,
    /// The launch cannot be built for this spec.
    Failed,
    /// A process runs (Starting, Ready or Unhealthy).
    Running(Run),
    /// The run's group is being stopped; afterwards start again at `retry_at` (a failure)
    /// or at once (a spec change), or forget the replica (removed). `cause` says why the
    /// agent stops it (`stopped by the agent: ...`), for `last_exit`.
    Stopping {
        run: Run,
        retry_at: Option<Instant>,
        cause: String,
    },
    /// Removed and stopped.
    Gone,
}

/// One replica's state machine.
#[derive(Debug)]
pub struct ReplicaCore {
    timing: Timing,
    jitter: fn() -> f64,
    /// The spec to run; `None` once removed.
    desired: Option<Desired>,
    /// The spec of the current or last run (labels and status).
    current: Desired,
    state: State,
    failures: u32,
    backoff: Backoff,
    restarts: u32,
    restart_pending: bool,
    reason: String,
    last_exit: Option<String>,
    log_tail: Vec<String>,
    version: Option<String>,
    metrics: Option<RuntimeMetrics>,
    next_run: u64,
    outbox: VecDeque<Decision>,
}

impl ReplicaCore {
    /// A replica to start now. `jitter` returns a number in `[0, 1)` for backoff jitter.
    pub fn new(desired: Desired, timing: Timing, jitter: fn() -> f64, now: Instant) -> Self {
        let backoff = Backoff::new(timing.restart_backoff_min, timing.restart_backoff_max);
        Self {
            timing,
            jitter,
            current: desired.clone(),
            desired: Some(desired),
            state: State::Waiting {
                until: now,
                resource: false,
            },
            failures: 0,
            backoff,
            restarts: 0,
            restart_pending: false,
            reason: "waiting to start".into(),
            last_exit: None,
            log_tail: Vec::new(),
            version: None,
            metrics: None,
            next_run: 1,
            outbox: VecDeque::new(),
        }
    }

    /// A process started by an earlier agent, still running the spec `desired`: it is
    /// supervised from here on (probed as usual, never restarted for being adopted).
    /// Returns the core and the run id.
    pub fn adopted(
        desired: Desired,
        facts: RunFacts,
        restarts: u32,
        timing: Timing,
        jitter: fn() -> f64,
        now: Instant,
    ) -> (Self, u64) {
        let mut core = Self::new(desired, timing, jitter, now);
        core.restarts = restarts;
        core.state = State::Launching;
        let run = core.on_spawned(facts, now);
        core.reason = "adopted from an earlier agent; waiting for readiness".into();
        (core, run)
    }

    /// The spec of the current (or last) run.
    pub fn spec(&self) -> &ReplicaSpec {
        &self.current.spec
    }

    /// The spec to run next, if any.
    pub fn desired(&self) -> Option<&Desired> {
        self.desired.as_ref()
    }

    /// The live run's id, while a process runs or is being stopped.
    pub fn run_id(&self) -> Option<u64> {
        match &self.state {
            State::Running(run) | State::Stopping { run, .. } => Some(run.id),
            _ => None,
        }
    }

    /// Restarts so far.
    pub fn restarts(&self) -> u32 {
        self.restarts
    }

    /// Time to ready of the current run, once ready.
    pub fn ready_after(&self) -> Option<Duration> {
        match &self.state {
            State::Running(run) => run.ready_after,
            _ => None,
        }
    }

    /// The phase now.
    pub fn phase(&self) -> ReplicaPhase {
        match &self.state {
            State::Waiting { resource: false, .. } if self.failures >= self.timing.crash_loop_after => {
                ReplicaPhase::CrashLoop
            }
            State::Waiting { .. } | State::Gone => ReplicaPhase::Pending,
            State::Launching => ReplicaPhase::Starting,
            State::Failed => ReplicaPhase::Failed,
            State::Running(run) if run.ready_at.is_none() => ReplicaPhase::Starting,
            State::Running(run) if run.liveness_failures > 0 => ReplicaPhase::Unhealthy,
            State::Running(_) => ReplicaPhase::Ready,
            State::Stopping { .. } => ReplicaPhase::Stopping,
        }
    }

    /// Whether the replica is gone (removed and stopped).
    pub fn is_gone(&self) -> bool {
        matches!(self.state, State::Gone)
    }

    /// A new spec for this replica. The same spec again changes nothing (returns false);
    /// a different one stops the current run, if any, and starts the new spec afresh.
    pub fn set_desired(&mut self, desired: Desired, now: Instant) -> bool {
        if self.desired.as_ref().is_some_and(|d| d.hash == desired.hash) {
            return false;
        }
        let was_removed = self.desired.is_none();
        let same_as_running = self.current.hash == desired.hash;
        self.desired = Some(desired.clone());
        match &mut self.state {
            State::Stopping { retry_at, .. } => {
                // Removed, then wanted again with the spec being stopped: the stop goes on
                // (its process may be half-way down) and the spec starts afterwards.
                if !same_as_running || was_removed {
                    *retry_at = None;
                }
            }
            State::Running(_) if same_as_running => {}
            State::Running(run) => {
                let run = run.clone();
                self.reason = "spec changed: stopping the old runtime".into();
                self.stop(run, None, "stopped by the agent: spec changed".into());
            }
            State::Waiting { .. } | State::Failed | State::Gone | State::Launching => {
                self.fresh_start(desired, now);
            }
        }
        true
    }

    fn fresh_start(&mut self, desired: Desired, now: Instant) {
        self.current = desired;
        self.failures = 0;
        self.backoff.reset();
        self.restart_pending = false;
        self.reason = "waiting to start".into();
        self.state = State::Waiting {
            until: now,
            resource: false,
        };
    }

    /// The replica is no longer wanted: stop it (if it runs) and forget it.
    pub fn remove(&mut self) {
        self.desired = None;
        match &mut self.state {
            State::Running(run) => {
                let run = run.clone();
                self.reason = "removed: stopping".into();
                self.stop(run, None, "stopped by the agent: removed".into());
            }
            State::Stopping { cause, retry_at, .. } => {
                if retry_at.is_none() {
                    *cause = "stopped by the agent: removed".into();
                }
                self.reason = "removed: stopping".into();
            }
            State::Waiting { .. } | State::Failed | State::Launching | State::Gone => {
                self.state = State::Gone;
                self.outbox.push_back(Decision::Forget);
            }
        }
    }

    fn stop(&mut self, run: Run, retry_at: Option<Instant>, cause: String) {
        self.outbox.push_back(Decision::Stop { run: run.id });
        self.state = State::Stopping { run, retry_at, cause };
    }

    /// While a run is being stopped: why the agent stops it, and whether that is a failure
    /// (the replica restarts after a backoff).
    pub fn stopping(&self) -> Option<(&str, bool)> {
        match &self.state {
            State::Stopping { cause, retry_at, .. } => Some((cause.as_str(), retry_at.is_some())),
            _ => None,
        }
    }

    /// Replaces the reason shown (for what the supervisor knows and the core does not).
    pub fn set_reason(&mut self, reason: String) {
        self.reason = reason;
    }

    /// Failures in a row.
    pub fn failures(&self) -> u32 {
        self.failures
    }

    /// How the last run ended.
    pub fn last_exit(&self) -> Option<&str> {
        self.last_exit.as_deref()
    }

    /// When the next start is due, while waiting after a failure (not for a resource).
    pub fn retry_at(&self) -> Option<Instant> {
        match &self.state {
            State::Waiting { until, resource: false } if self.failures > 0 => Some(*until),
            State::Stopping { retry_at: Some(at), .. } => Some(*at),
            _ => None,
        }
    }

    /// Restores the restart bookkeeping an earlier agent persisted: the restart count, the
    /// failures in a row (and with them the backoff step) and, for a replica that was
    /// waiting to restart, when it is due (`until`). Call right after creating the core.
    pub fn restore(&mut self, restarts: u32, failures: u32, last_exit: Option<String>, until: Option<Instant>) {
        self.restarts = restarts;
        self.failures = failures;
        self.backoff.reset();
        for _ in 0..failures {
            self.backoff.next_delay(0.0);
        }
        self.restart_pending = failures > 0 && matches!(self.state, State::Waiting { .. });
        if last_exit.is_some() {
            self.last_exit = last_exit;
        }
        if let (State::Waiting { until: due, .. }, Some(until)) = (&mut self.state, until) {
            *due = until;
            if failures > 0 {
                self.reason = "waiting to restart (backoff carried over from the previous agent)".into();
            }
        }
    }

    /// The next decision, if one is due at `now`.
    pub fn poll(&mut self, now: Instant) -> Option<Decision> {
        if let Some(decision) = self.outbox.pop_front() {
            return Some(decision);
        }
        let timing = self.timing.clone();
        match &mut self.state {
            State::Waiting { until, .. } if now >= *until => {
                let desired = self.desired.clone()?;
                self.current = desired;
                self.state = State::Launching;
                Some(Decision::Launch)
            }
            State::Running(run) if run.ready_at.is_none() => {
                if now >= run.deadline {
                    let after = run.deadline.saturating_duration_since(run.started);
                    self.fail(format!("not ready within {}", humantime::format_duration(after)), now);
                    return self.outbox.pop_front();
                }
                if !run.probe_in_flight && now >= run.next_probe {
                    run.probe_in_flight = true;
                    return Some(Decision::ProbeReadiness { run: run.id });
                }
                None
            }
            State::Running(run) => {
                if run.version_wanted {
                    run.version_wanted = false;
                    return Some(Decision::ProbeVersion { run: run.id });
                }
                if !run.probe_in_flight && now >= run.next_probe {
                    run.probe_in_flight = true;
                    return Some(Decision::ProbeLiveness { run: run.id });
                }
                if !run.metrics_in_flight && now >= run.next_metrics {
                    run.metrics_in_flight = true;
                    run.next_metrics = now + timing.metrics_interval;
                    return Some(Decision::ScrapeMetrics { run: run.id });
                }
                None
            }
            _ => None,
        }
    }

    /// When [`poll`](Self::poll) may next have something to do (`None`: only an event
    /// can change that). Meaningful once `poll` has returned `None`.
    pub fn next_wake(&self) -> Option<Instant> {
        match &self.state {
            State::Waiting { until, .. } if self.desired.is_some() => Some(*until),
            State::Running(run) => {
                let probe = (!run.probe_in_flight).then_some(run.next_probe);
                let timer = if run.ready_at.is_none() {
                    Some(run.deadline)
                } else {
                    (!run.metrics_in_flight).then_some(run.next_metrics)
                };
                [probe, timer].into_iter().flatten().min()
            }
            _ => None,
        }
    }

    /// The launch asked for is running. Returns the run id that later events must carry.
    pub fn on_spawned(&mut self, facts: RunFacts, now: Instant) -> u64 {
        let id = self.next_run;
        self.next_run += 1;
        if self.restart_pending {
            self.restarts += 1;
            self.restart_pending = false;
        }
        let timeout = match self.current.spec.readiness_timeout_ms {
            0 => self.timing.default_readiness_timeout,
            ms => Duration::from_millis(ms),
        };
        self.version = None;
        self.metrics = None;
        self.reason = "waiting for readiness".into();
        self.state = State::Running(Run {
            id,
            started: now,
            deadline: now + timeout,
            ready_at: None,
            ready_after: facts.ready_after,
            liveness_failures: 0,
            next_probe: now,
            probe_in_flight: false,
            next_metrics: now,
            metrics_in_flight: false,
            version_wanted: false,
            facts,
        });
        id
    }

    /// The launch could not be made. `terminal`: it cannot work for this spec (phase
    /// `Failed` until the spec changes); otherwise it is retried with backoff.
    pub fn on_launch_failed(&mut self, reason: String, terminal: bool, now: Instant) {
        if !matches!(self.state, State::Launching) {
            return;
        }
        if terminal {
            self.reason = reason;
            self.state = State::Failed;
            return;
        }
        // A relaunch after a failure counts as a restart even when it fails to start.
        if self.restart_pending {
            self.restarts += 1;
        }
        let delay = self.count_failure(None, now);
        let crash_loop = if self.failures >= self.timing.crash_loop_after {
            format!(" ({} failures in a row)", self.failures)
        } else {
            String::new()
        };
        self.reason = format!("{reason}; retrying in {}{crash_loop}", round(delay));
        self.state = State::Waiting {
            until: now + delay,
            resource: false,
        };
    }

    /// The launch waits for a resource (a free port): it is tried again after
    /// [`Timing::resource_retry`], phase `Pending`, and nothing counts as a failure.
    pub fn on_launch_waiting(&mut self, reason: String, now: Instant) {
        if !matches!(self.state, State::Launching) {
            return;
        }
        self.reason = reason;
        self.state = State::Waiting {
            until: now + self.timing.resource_retry,
            resource: true,
        };
    }

    fn running(&mut self, run: u64) -> Option<&mut Run> {
        match &mut self.state {
            State::Running(r) if r.id == run => Some(r),
            _ => None,
        }
    }

    /// A readiness probe answered (`ready`), or failed (`detail` says how).
    pub fn on_readiness(&mut self, run: u64, ready: bool, detail: &str, now: Instant) {
        let timing = self.timing.clone();
        let Some(r) = self.running(run) else { return };
        r.probe_in_flight = false;
        if r.ready_at.is_some() {
            return;
        }
        if ready {
            r.ready_at = Some(now);
            if !r.facts.adopted {
                r.ready_after = Some(now.saturating_duration_since(r.started));
            }
            r.version_wanted = true;
            r.next_probe = now + timing.liveness_interval;
            r.next_metrics = now;
            self.reason = String::new();
            // The tail explains a failure; a run that serves has none to explain.
            self.log_tail.clear();
        } else {
            r.next_probe = now + timing.readiness_interval;
            self.reason = format!("waiting for readiness: {detail}");
        }
    }

    /// A liveness probe answered (`ok`) or failed (`detail`).
    pub fn on_liveness(&mut self, run: u64, ok: bool, detail: &str, now: Instant) {
        let timing = self.timing.clone();
        let Some(r) = self.running(run) else { return };
        r.probe_in_flight = false;
        r.next_probe = now + timing.liveness_interval;
        if ok {
            r.liveness_failures = 0;
            self.reason = String::new();
            return;
        }
        r.liveness_failures += 1;
        let failures = r.liveness_failures;
        if failures >= timing.liveness_failures {
            self.fail(
                format!("liveness probe failed {failures} times in a row: {detail}"),
                now,
            );
        } else {
            self.reason = format!(
                "liveness probe failed ({failures} of {}): {detail}",
                timing.liveness_failures
            );
        }
    }

    /// The version probe answered.
    pub fn on_version(&mut self, run: u64, version: Option<String>) {
        if self.running(run).is_some() && version.is_some() {
            self.version = version;
        }
    }

    /// A metrics scrape finished (`None`: it failed; the last values are dropped).
    pub fn on_metrics(&mut self, run: u64, metrics: Option<RuntimeMetrics>, now: Instant) {
        let interval = self.timing.metrics_interval;
        let Some(r) = self.running(run) else { return };
        r.metrics_in_flight = false;
        r.next_metrics = now + interval;
        self.metrics = metrics;
    }

    /// The run's main process ended (`exit`: `exit code 1`, `killed by signal 9`, ...);
    /// `log_tail` is the last output. The rest of its group is stopped, then it restarts.
    pub fn on_exit(&mut self, run: u64, exit: String, log_tail: Vec<String>, now: Instant) {
        match &mut self.state {
            State::Running(r) if r.id == run => {
                self.last_exit = Some(exit.clone());
                self.log_tail = log_tail;
                self.fail(format!("runtime exited ({exit})"), now);
            }
            State::Stopping {
                run: r,
                retry_at,
                cause,
            } if r.id == run => {
                self.last_exit = Some(format!("{cause} ({exit})"));
                if retry_at.is_some() {
                    // A failed run being stopped: its last words explain the failure.
                    self.log_tail = log_tail;
                }
            }
            _ => {}
        }
    }

    /// Tail of the output to keep when a failure is detected by a probe (the process is
    /// still running, so no exit carries it).
    pub fn set_log_tail(&mut self, log_tail: Vec<String>) {
        self.log_tail = log_tail;
    }

    /// The run's whole group is gone.
    pub fn on_stopped(&mut self, run: u64, now: Instant) {
        let State::Stopping { run: r, retry_at, .. } = &self.state else {
            return;
        };
        if r.id != run {
            return;
        }
        let retry_at = *retry_at;
        match self.desired.clone() {
            None => {
                self.state = State::Gone;
                self.reason = "stopped".into();
                self.outbox.push_back(Decision::Forget);
            }
            Some(desired) if desired.hash != self.current.hash => self.fresh_start(desired, now),
            Some(_) => {
                self.state = State::Waiting {
                    until: retry_at.unwrap_or(now),
                    resource: false,
                };
                if retry_at.is_none() {
                    self.reason = "waiting to start".into();
                }
            }
        }
    }

    /// Counts a failure of the running (or launching) replica and returns the delay
    /// before the next start.
    fn count_failure(&mut self, ready_at: Option<Instant>, now: Instant) -> Duration {
        if ready_at.is_some_and(|t| now.saturating_duration_since(t) >= self.timing.backoff_reset_after) {
            self.failures = 0;
            self.backoff.reset();
        }
        self.failures += 1;
        self.restart_pending = true;
        self.backoff.next_delay((self.jitter)())
    }

    /// The running replica failed: stop its group, then restart after the backoff.
    fn fail(&mut self, why: String, now: Instant) {
        let State::Running(run) = &self.state else { return };
        let run = run.clone();
        let delay = self.count_failure(run.ready_at, now);
        let phase = if self.failures >= self.timing.crash_loop_after {
            format!(" ({} failures in a row)", self.failures)
        } else {
            String::new()
        };
        self.reason = format!("{why}; restarting in {}{phase}", round(delay));
        let cause = if why.starts_with("runtime exited") {
            why
        } else {
            format!("stopped by the agent: {why}")
        };
        self.stop(run, Some(now + delay), cause);
    }

    /// The wire status. `pid` and `endpoint` are shown while a process runs; the endpoint
    /// only while it serves.
    pub fn status(&self) -> ReplicaStatus {
        let spec = &self.current.spec;
        let phase = self.phase();
        let (pid, endpoint) = match &self.state {
            State::Running(run) => (
                Some(run.facts.pid),
                matches!(phase, ReplicaPhase::Ready | ReplicaPhase::Unhealthy).then(|| run.facts.endpoint.clone()),
            ),
            State::Stopping { run, .. } => (Some(run.facts.pid), None),
            _ => (None, None),
        };
        ReplicaStatus {
            name: spec.name.clone(),
            deployment: spec.deployment.clone(),
            tenant: spec.tenant.clone(),
            runtime_kind: spec.runtime_kind.clone(),
            phase,
            reason: self.reason.clone(),
            runtime_version: self.version.clone(),
            endpoint,
            gpus: spec.gpus.clone(),
            pid,
            restarts: self.restarts,
            last_exit: self.last_exit.clone(),
            log_tail: self.log_tail.clone(),
            ready_after_ms: self.ready_after().map(|d| d.as_millis() as u64),
            metrics: matches!(phase, ReplicaPhase::Ready | ReplicaPhase::Unhealthy)
                .then_some(self.metrics)
                .flatten(),
        }
    }
}

/// A delay as operators read it (`1s`, `2m 8s`), without the sub-second noise of jitter.
fn round(delay: Duration) -> String {
    let delay = if delay >= Duration::from_secs(1) {
        Duration::from_secs(delay.as_secs())
    } else {
        Duration::from_millis(delay.as_millis() as u64)
    };
    humantime::format_duration(delay).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(args: &[&str]) -> Desired {
        let spec = ReplicaSpec {
            name: "r1".into(),
            deployment: "d".into(),
            tenant: "t".into(),
            model_name: "m".into(),
            model_version: "1".into(),
            model_source: "/m".into(),
            runtime_kind: "vllm".into(),
            runtime_args: args.iter().map(|a| a.to_string()).collect(),
            gpus: vec![],
            env: vec![],
            readiness_timeout_ms: 10_000,
            custom: None,
        };
        Desired {
            hash: super::super::ledger::spec_hash(&spec),
            spec,
        }
    }

    fn facts(pid: u32) -> RunFacts {
        RunFacts {
            pid,
            endpoint: "http://h:1/v1".into(),
            adopted: false,
            ready_after: None,
        }
    }

    fn core(now: Instant) -> ReplicaCore {
        ReplicaCore::new(spec(&[]), Timing::default(), || 1.0, now)
    }

    fn drain(core: &mut ReplicaCore, now: Instant) -> Vec<Decision> {
        std::iter::from_fn(|| core.poll(now)).collect()
    }

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    /// Starts and makes the run ready; returns the run id.
    fn ready(core: &mut ReplicaCore, pid: u32, now: Instant) -> u64 {
        assert_eq!(drain(core, now), [Decision::Launch]);
        let run = core.on_spawned(facts(pid), now);
        assert_eq!(drain(core, now), [Decision::ProbeReadiness { run }]);
        core.on_readiness(run, true, "", now + secs(2));
        run
    }

    #[test]
    fn starts_probes_and_becomes_ready_with_its_time_to_ready() {
        let t0 = Instant::now();
        let mut c = core(t0);
        assert_eq!(c.phase(), ReplicaPhase::Pending);
        assert_eq!(drain(&mut c, t0), [Decision::Launch]);
        let run = c.on_spawned(facts(7), t0);
        assert_eq!(c.phase(), ReplicaPhase::Starting);
        assert_eq!(drain(&mut c, t0), [Decision::ProbeReadiness { run }]);
        // No second probe while one is in flight.
        assert_eq!(drain(&mut c, t0 + secs(1)), []);
        c.on_readiness(run, false, "connection refused", t0 + secs(1));
        assert!(c.status().reason.contains("connection refused"));
        assert_eq!(c.next_wake(), Some(t0 + secs(1) + Duration::from_millis(500)));
        assert_eq!(drain(&mut c, t0 + secs(1)), []);
        assert_eq!(
            drain(&mut c, t0 + Duration::from_millis(1500)),
            [Decision::ProbeReadiness { run }]
        );
        c.on_readiness(run, true, "", t0 + secs(2));
        assert_eq!(c.phase(), ReplicaPhase::Ready);
        let status = c.status();
        assert_eq!(status.ready_after_ms, Some(2000));
        assert_eq!(status.pid, Some(7));
        assert_eq!(status.endpoint.as_deref(), Some("http://h:1/v1"));
        assert_eq!(
            drain(&mut c, t0 + secs(2)),
            [Decision::ProbeVersion { run }, Decision::ScrapeMetrics { run }]
        );
        c.on_version(run, Some("0.9.1".into()));
        c.on_metrics(
            run,
            Some(RuntimeMetrics {
                requests_running: Some(1.0),
                ..Default::default()
            }),
            t0 + secs(2),
        );
        assert_eq!(drain(&mut c, t0 + secs(6)), [Decision::ScrapeMetrics { run }]);
        assert_eq!(drain(&mut c, t0 + secs(7)), [Decision::ProbeLiveness { run }]);
        let status = c.status();
        assert_eq!(status.runtime_version.as_deref(), Some("0.9.1"));
        assert_eq!(status.metrics.and_then(|m| m.requests_running), Some(1.0));
    }

    #[test]
    fn crashes_back_off_doubling_into_crash_loop_and_reset_after_a_long_ready_run() {
        let t0 = Instant::now();
        let mut c = core(t0);
        let mut now = t0;
        let mut delays = Vec::new();
        for pid in 1..=5 {
            assert_eq!(drain(&mut c, now), [Decision::Launch], "pid {pid}");
            let run = c.on_spawned(facts(pid), now);
            c.on_exit(run, "exit code 3".into(), vec!["boom".into()], now);
            assert_eq!(drain(&mut c, now), [Decision::Stop { run }]);
            assert_eq!(c.phase(), ReplicaPhase::Stopping);
            c.on_stopped(run, now);
            let wake = c.next_wake().unwrap();
            delays.push(wake - now);
            let expected = if pid >= 3 {
                ReplicaPhase::CrashLoop
            } else {
                ReplicaPhase::Pending
            };
            assert_eq!(c.phase(), expected, "after failure {pid}");
            assert_eq!(drain(&mut c, wake - Duration::from_millis(1)), []);
            now = wake;
        }
        assert_eq!(delays, [secs(1), secs(2), secs(4), secs(8), secs(16)]);
        let status = c.status();
        assert_eq!(status.restarts, 4);
        assert_eq!(status.last_exit.as_deref(), Some("exit code 3"));
        assert_eq!(status.log_tail, ["boom"]);
        assert!(
            status
                .reason
                .contains("runtime exited (exit code 3); restarting in 16s"),
            "{}",
            status.reason
        );

        // A run that stays ready for the reset period starts the sequence over.
        let run = ready(&mut c, 9, now);
        assert_eq!(c.phase(), ReplicaPhase::Ready);
        let later = now + secs(2) + secs(600);
        c.on_exit(run, "killed by signal 9".into(), vec![], later);
        drain(&mut c, later);
        c.on_stopped(run, later);
        assert_eq!(c.next_wake(), Some(later + secs(1)));
        assert_eq!(c.phase(), ReplicaPhase::Pending);
    }

    #[test]
    fn backoff_is_capped_and_jittered() {
        let t0 = Instant::now();
        let timing = Timing {
            restart_backoff_max: secs(5),
            ..Timing::default()
        };
        let mut c = ReplicaCore::new(spec(&[]), timing, || 0.0, t0);
        let mut now = t0;
        let mut delays = Vec::new();
        for pid in 1..=5 {
            drain(&mut c, now);
            let run = c.on_spawned(facts(pid), now);
            c.on_exit(run, "exit code 1".into(), vec![], now);
            drain(&mut c, now);
            c.on_stopped(run, now);
            let wake = c.next_wake().unwrap();
            delays.push(wake - now);
            now = wake;
        }
        let half = Duration::from_millis(500);
        assert_eq!(
            delays,
            [
                half,
                secs(1),
                secs(2),
                Duration::from_millis(2500),
                Duration::from_millis(2500)
            ]
        );
    }

    #[test]
    fn readiness_deadline_stops_the_group_and_counts_as_a_failure() {
        let t0 = Instant::now();
        let mut c = core(t0);
        drain(&mut c, t0);
        let run = c.on_spawned(facts(1), t0);
        assert_eq!(c.next_wake(), Some(t0));
        drain(&mut c, t0);
        c.on_readiness(run, false, "503", t0 + secs(1));
        assert_eq!(drain(&mut c, t0 + secs(10)), [Decision::Stop { run }]);
        let status = c.status();
        assert_eq!(status.phase, ReplicaPhase::Stopping);
        assert!(
            status.reason.starts_with("not ready within 10s; restarting in 1s"),
            "{}",
            status.reason
        );
        // The exit our stop causes is recorded, and the tail kept for the failed run.
        c.on_exit(run, "killed by signal 15".into(), vec!["loading".into()], t0 + secs(11));
        c.on_stopped(run, t0 + secs(11));
        let status = c.status();
        assert_eq!(
            status.last_exit.as_deref(),
            Some("stopped by the agent: not ready within 10s (killed by signal 15)")
        );
        assert_eq!(status.log_tail, ["loading"]);
        assert_eq!(c.next_wake(), Some(t0 + secs(11)));
    }

    #[test]
    fn liveness_failures_in_a_row_make_it_unhealthy_then_restart_it() {
        let t0 = Instant::now();
        let mut c = core(t0);
        let run = ready(&mut c, 1, t0);
        let t = t0 + secs(2);
        drain(&mut c, t);
        c.on_liveness(run, false, "timed out", t + secs(5));
        assert_eq!(c.phase(), ReplicaPhase::Unhealthy);
        assert!(c.status().endpoint.is_some());
        c.on_liveness(run, true, "", t + secs(10));
        assert_eq!(c.phase(), ReplicaPhase::Ready);
        for i in 1..=2 {
            c.on_liveness(run, false, "HTTP 500", t + secs(10 + 5 * i));
            assert_eq!(c.phase(), ReplicaPhase::Unhealthy);
        }
        c.on_liveness(run, false, "HTTP 500", t + secs(25));
        assert_eq!(drain(&mut c, t + secs(25)), [Decision::Stop { run }]);
        assert!(c
            .status()
            .reason
            .starts_with("liveness probe failed 3 times in a row: HTTP 500"));
    }

    #[test]
    fn the_same_spec_again_changes_nothing_a_new_one_replaces_and_removal_forgets() {
        let t0 = Instant::now();
        let mut c = core(t0);
        let run = ready(&mut c, 1, t0);
        assert!(!c.set_desired(spec(&[]), t0 + secs(3)));
        assert_eq!(c.phase(), ReplicaPhase::Ready);
        assert_eq!(
            drain(&mut c, t0 + secs(3)),
            [Decision::ProbeVersion { run }, Decision::ScrapeMetrics { run }]
        );

        assert!(c.set_desired(spec(&["--new"]), t0 + secs(4)));
        assert_eq!(drain(&mut c, t0 + secs(4)), [Decision::Stop { run }]);
        // Events of the old run after the stop was asked are ignored.
        c.on_liveness(run, false, "x", t0 + secs(4));
        c.on_stopped(run, t0 + secs(5));
        assert_eq!(drain(&mut c, t0 + secs(5)), [Decision::Launch]);
        assert_eq!(c.spec().runtime_args, ["--new"]);
        let run2 = c.on_spawned(facts(2), t0 + secs(5));
        assert_eq!(c.status().restarts, 0, "a spec change is not a restart");

        c.remove();
        assert_eq!(drain(&mut c, t0 + secs(6)), [Decision::Stop { run: run2 }]);
        c.on_stopped(run2, t0 + secs(7));
        assert_eq!(drain(&mut c, t0 + secs(7)), [Decision::Forget]);
        assert!(c.is_gone());
    }

    #[test]
    fn wanted_again_while_stopping_starts_after_the_stop() {
        let t0 = Instant::now();
        let mut c = core(t0);
        let run = ready(&mut c, 1, t0);
        c.remove();
        drain(&mut c, t0);
        assert!(c.set_desired(spec(&[]), t0));
        c.on_stopped(run, t0 + secs(1));
        assert_eq!(drain(&mut c, t0 + secs(1)), [Decision::Launch]);
    }

    #[test]
    fn build_errors_fail_for_good_and_spawn_errors_retry() {
        let t0 = Instant::now();
        let mut c = core(t0);
        drain(&mut c, t0);
        c.on_launch_failed("no adapter".into(), true, t0);
        assert_eq!(c.phase(), ReplicaPhase::Failed);
        assert_eq!(c.next_wake(), None);
        assert!(!c.set_desired(spec(&[]), t0), "the same spec stays failed");
        assert!(c.set_desired(spec(&["x"]), t0));
        assert_eq!(drain(&mut c, t0), [Decision::Launch]);
        c.on_launch_failed("cannot start x: No such file".into(), false, t0);
        assert_eq!(c.phase(), ReplicaPhase::Pending);
        assert!(c.status().reason.ends_with("retrying in 1s"), "{}", c.status().reason);
        assert_eq!(drain(&mut c, t0 + secs(1)), [Decision::Launch]);
    }

    #[test]
    fn adopted_runs_keep_their_restarts_and_time_to_ready() {
        let t0 = Instant::now();
        let mut f = facts(42);
        f.adopted = true;
        f.ready_after = Some(secs(30));
        let (mut c, run) = ReplicaCore::adopted(spec(&[]), f, 5, Timing::default(), || 1.0, t0);
        assert_eq!(c.phase(), ReplicaPhase::Starting);
        assert_eq!(drain(&mut c, t0), [Decision::ProbeReadiness { run }]);
        c.on_readiness(run, true, "", t0 + secs(1));
        let status = c.status();
        assert_eq!(
            (status.phase, status.restarts, status.ready_after_ms),
            (ReplicaPhase::Ready, 5, Some(30_000))
        );
    }

    #[test]
    fn agent_initiated_stops_say_so_in_last_exit() {
        let t0 = Instant::now();
        let mut c = core(t0);
        let run = ready(&mut c, 1, t0);
        let t = t0 + secs(2);
        drain(&mut c, t);
        for i in 1..=3 {
            c.on_liveness(run, false, "HTTP 500", t + secs(5 * i));
        }
        assert_eq!(drain(&mut c, t + secs(15)), [Decision::Stop { run }]);
        let (cause, failure) = c.stopping().unwrap();
        assert!(
            failure && cause.starts_with("stopped by the agent: liveness probe failed 3 times"),
            "{cause}"
        );
        c.on_exit(run, "exit code 0".into(), vec![], t + secs(16));
        let last = c.status().last_exit.unwrap();
        assert!(
            last.starts_with("stopped by the agent: liveness probe failed 3 times in a row")
                && last.ends_with("(exit code 0)"),
            "{last}"
        );
        // A removal says so too.
        c.on_stopped(run, t + secs(16));
        let now = c.next_wake().unwrap();
        drain(&mut c, now);
        let run2 = c.on_spawned(facts(2), now);
        c.remove();
        drain(&mut c, now);
        c.on_exit(run2, "killed by signal 15".into(), vec![], now);
        assert_eq!(
            c.status().last_exit.as_deref(),
            Some("stopped by the agent: removed (killed by signal 15)")
        );
    }

    #[test]
    fn waiting_for_a_port_is_pending_retries_soon_and_is_no_failure() {
        let t0 = Instant::now();
        let mut c = core(t0);
        drain(&mut c, t0);
        c.on_launch_waiting("waiting for a free port in runtime_ports 1-2".into(), t0);
        assert_eq!(c.phase(), ReplicaPhase::Pending);
        assert_eq!(c.next_wake(), Some(t0 + secs(2)));
        assert_eq!(c.failures(), 0);
        assert_eq!(c.status().reason, "waiting for a free port in runtime_ports 1-2");
        // Even after crashes, a port wait is not CrashLoop and grows no backoff.
        let mut now = t0 + secs(2);
        for pid in 1..=3 {
            let wake = c.next_wake().unwrap().max(now);
            assert_eq!(drain(&mut c, wake), [Decision::Launch]);
            let run = c.on_spawned(facts(pid), wake);
            c.on_exit(run, "exit code 1".into(), vec![], wake);
            drain(&mut c, wake);
            c.on_stopped(run, wake);
            now = wake;
        }
        assert_eq!(c.phase(), ReplicaPhase::CrashLoop);
        let wake = c.next_wake().unwrap();
        drain(&mut c, wake);
        c.on_launch_waiting("waiting for a free port".into(), wake);
        assert_eq!(c.phase(), ReplicaPhase::Pending);
        assert_eq!(c.next_wake(), Some(wake + secs(2)));
        assert_eq!(c.failures(), 3);
    }

    #[test]
    fn failed_spawns_count_as_restarts_and_reach_crash_loop() {
        let t0 = Instant::now();
        let mut c = core(t0);
        let mut now = t0;
        for _ in 0..4 {
            assert_eq!(drain(&mut c, now), [Decision::Launch]);
            c.on_launch_failed("cannot start x: Resource temporarily unavailable".into(), false, now);
            now = c.next_wake().unwrap();
        }
        let status = c.status();
        assert_eq!(status.phase, ReplicaPhase::CrashLoop);
        assert_eq!(status.restarts, 3, "every relaunch after a failure counts");
    }

    #[test]
    fn restored_bookkeeping_keeps_restarts_backoff_and_the_due_time() {
        let t0 = Instant::now();
        let mut c = core(t0);
        c.restore(7, 4, Some("exit code 3".into()), Some(t0 + secs(30)));
        let status = c.status();
        assert_eq!(
            (status.phase, status.restarts, status.last_exit.as_deref()),
            (ReplicaPhase::CrashLoop, 7, Some("exit code 3"))
        );
        assert_eq!(c.next_wake(), Some(t0 + secs(30)));
        assert_eq!(drain(&mut c, t0 + secs(29)), []);
        assert_eq!(drain(&mut c, t0 + secs(30)), [Decision::Launch]);
        let run = c.on_spawned(facts(1), t0 + secs(30));
        assert_eq!(c.restarts(), 8);
        c.on_exit(run, "exit code 3".into(), vec![], t0 + secs(30));
        drain(&mut c, t0 + secs(30));
        c.on_stopped(run, t0 + secs(30));
        // The fifth failure in a row: 1s doubled four times.
        assert_eq!(c.next_wake(), Some(t0 + secs(30) + secs(16)));
    }

    #[test]
    fn a_ready_run_shows_no_log_tail_of_an_earlier_failure() {
        let t0 = Instant::now();
        let mut c = core(t0);
        drain(&mut c, t0);
        let run = c.on_spawned(facts(1), t0);
        c.on_exit(run, "exit code 1".into(), vec!["boom".into()], t0);
        drain(&mut c, t0);
        c.on_stopped(run, t0);
        assert_eq!(c.status().log_tail, ["boom"]);
        let wake = c.next_wake().unwrap();
        ready(&mut c, 2, wake);
        assert!(c.status().log_tail.is_empty());
        assert_eq!(c.status().last_exit.as_deref(), Some("exit code 1"));
    }
}
