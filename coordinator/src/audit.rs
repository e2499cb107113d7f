//! The gateway's audit log: one record per call, hash-chained, append-only, in its own
//! SQLite file (for example `DATA_DIR/audit.db`, WAL, mode 0600), written by one thread with
//! group commit. Not wired into the gateway or the API yet.
//!
//! # The chain
//!
//! Records are numbered `seq` = 1, 2, 3, ... with no gaps. Each stored row carries
//! `prev_hash` (the `hash` of the record before it; [`GENESIS`], 64 zeros, for seq 1) and
//!
//! ```text
//! hash = hex(SHA-256(prev_hash as 64 ASCII hex bytes || encode(seq, record)))
//! ```
//!
//! `encode` is the canonical byte encoding, version 1 (integers big-endian; a string is its
//! UTF-8 length as u64 followed by its bytes; an option is `0x00`, or `0x01` followed by the
//! value; a list is its length as u64 followed by its items):
//!
//! ```text
//! "pyxis-audit-v1\n" (15 bytes, domain tag)
//! seq u64, at_ms i64, request_id str, tenant str, key_id str, deployment str, model str,
//! model_version str, model_digest option<str>, runtime_kind str, runtime_version str,
//! hardware_class str, node str, gpus list<str>, prompt_tokens u64, completion_tokens u64,
//! status u16, latency_ms u64, ttft_ms option<u64>, trace_id str
//! ```
//!
//! Every field is length-prefixed, so two different records never encode to the same bytes,
//! and `seq` is inside the hash, so a record moved to another position no longer matches.
//! Integer fields are clamped to `i64::MAX` before hashing (SQLite stores signed 64-bit).
//!
//! # Writing: queue, group commit, modes
//!
//! [`AuditLog::submit`] never blocks and never touches the disk: it `try_send`s the record
//! into a bounded `std::sync::mpsc::sync_channel` (capacity set at open). One writer thread
//! takes the first queued record, drains whatever else is queued (up to [`MAX_BATCH`]) and
//! writes the batch in ONE `BEGIN IMMEDIATE` transaction (group commit), assigning seqs and
//! hashes inside it. The in-memory chain head advances only after the commit, so a failed
//! batch leaves no gap and no half-written chain.
//!
//! The writer reports to the request path through a shared `healthy` flag: cleared when a
//! batch fails to commit, set again when one commits.
//!
//! - [`AuditMode::Required`] (the default): `submit` returns an error (the caller answers
//!   503) when the queue is full or the writer is unhealthy. A failed batch is NOT dropped:
//!   the writer keeps it and retries it every `retry_interval` (it takes nothing new from the
//!   queue meanwhile, and submits are refused), so records accepted before a failure are
//!   written once the store recovers (a lock released, space freed). Only when the log is
//!   closed or dropped while the store is still failing are the held and queued records lost;
//!   they are counted in `dropped` and logged. What Required mode guarantees is therefore:
//!   no call is served once the writer is known to fail, and at most the records accepted
//!   before the failure was seen (the queue capacity plus one batch) are at risk, and those
//!   only if the process stops before the store recovers.
//! - [`AuditMode::BestEffort`]: `submit` always accepts. A record that finds the queue full,
//!   and every record of a batch that fails, is dropped and counted in `dropped` (the failed
//!   batch is not retried, so the queue keeps moving; the next batch is the retry).
//!
//! [`AuditLog::stats`] exposes written, batches, failed batches, dropped, refused and the
//! queue depth. [`AuditLog::flush`] waits, bounded, until everything accepted is written or
//! given up on; [`AuditLog::close`] flushes, stops the writer and returns the final stats.
//!
//! All calls here are blocking (SQLite); from async code, call `query`/`verify`/`flush`/
//! `close` through `spawn_blocking`. `submit` and `stats` are cheap and safe on the runtime.
//!
//! # What is protected and what is not
//!
//! SQLite triggers refuse `UPDATE` and `DELETE` on the table (append-only against mistakes).
//! Someone who edits the file directly (dropping the triggers) is caught by [`verify`]:
//! - a changed field: [`ProblemKind::Altered`] at that seq;
//! - a deleted row: [`ProblemKind::Removed`] at the missing seq(s);
//! - rows moved or swapped with their hashes (whole rows exchanged, seq kept):
//!   [`ProblemKind::Reordered`] at each moved seq (found within [`REORDER_WINDOW`] places;
//!   farther moves show as `Altered`). Swapping only the record fields and leaving the
//!   `prev_hash`/`hash` columns in place shows as `Altered` at both seqs;
//! - a row changed and re-hashed: `Altered` at that seq (the next row no longer chains to it).
//!
//! Not protected by the chain alone: the chain is unkeyed, so whoever can write the file can
//! drop the newest records (truncation) or recompute the whole chain from an altered record
//! onwards. Both are detected only against an anchor kept elsewhere: [`AuditLog::head`]
//! returns the latest committed (seq, hash) and [`verify_anchored`] checks the file against
//! it. Storing the anchor periodically (for example in the main store's `meta` table) is the
//! caller's job and is not wired yet; plain [`verify`] cannot see a truncated tail.
//!
//! [`verify`] streams the rows in seq order and holds only the hashes in memory (about 100
//! bytes a record); it can run while the log is being written (it checks what was committed
//! when it started reading).

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        mpsc::{Receiver, SyncSender, TrySendError},
        Arc, Condvar, Mutex,
    },
    time::{Duration, Instant},
};

use rusqlite::{params, Connection, OpenFlags, OptionalExtension, TransactionBehavior};

/// `prev_hash` of the first record.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// How long the writer lets records gather after the first of a group.
pub const GATHER: Duration = Duration::from_millis(1);

/// Most records written in one transaction.
pub const MAX_BATCH: usize = 1024;

/// How far (in seqs) [`verify`] looks for the original position of a moved record.
pub const REORDER_WINDOW: u64 = 64;

const DOMAIN_TAG: &[u8] = b"pyxis-audit-v1\n";

/// What to do when audit records cannot be written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AuditMode {
    /// Refuse calls whose record cannot be queued to a healthy writer.
    #[default]
    Required,
    /// Serve calls anyway and count the records lost.
    BestEffort,
}

/// One gateway call.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct AuditRecord {
    /// `x-pyxis-request-id`.
    pub request_id: String,
    /// When the call arrived, ms since the epoch.
    pub at_ms: i64,
    /// Tenant of the API key.
    pub tenant: String,
    /// Public id of the API key (never the secret).
    pub key_id: String,
    /// Deployment that served the call.
    pub deployment: String,
    /// Model name.
    pub model: String,
    /// Model version.
    pub model_version: String,
    /// Model digest, when known.
    pub model_digest: Option<String>,
    /// Runtime kind (`vllm`, `llama.cpp`, ...).
    pub runtime_kind: String,
    /// Runtime version.
    pub runtime_version: String,
    /// Hardware class.
    pub hardware_class: String,
    /// Node.
    pub node: String,
    /// GPU UUIDs.
    pub gpus: Vec<String>,
    /// Prompt tokens.
    pub prompt_tokens: u64,
    /// Completion tokens.
    pub completion_tokens: u64,
    /// HTTP status returned.
    pub status: u16,
    /// Total latency, ms.
    pub latency_ms: u64,
    /// Time to first token, ms (streaming calls).
    pub ttft_ms: Option<u64>,
    /// Trace id (empty when none).
    pub trace_id: String,
}

/// A record as stored: its place in the chain and the record.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct StoredRecord {
    /// Position, from 1.
    pub seq: u64,
    /// Hash of the previous record ([`GENESIS`] for seq 1).
    pub prev_hash: String,
    /// Hash of this record (see the module docs).
    pub hash: String,
    /// The record.
    #[serde(flatten)]
    pub record: AuditRecord,
}

/// The latest committed position of the chain.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Anchor {
    /// Last seq (0 when empty).
    pub seq: u64,
    /// Its hash ([`GENESIS`] when empty).
    pub hash: String,
}

/// Why an audit operation failed.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    /// SQLite failed.
    #[error("audit store error: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// The queue is full (Required mode).
    #[error("the audit queue is full ({capacity} records); refusing the call")]
    QueueFull {
        /// Queue capacity.
        capacity: usize,
    },
    /// The writer's last write failed (Required mode).
    #[error("audit records cannot be written ({reason}); refusing the call")]
    Unavailable {
        /// The last write error.
        reason: String,
    },
    /// The log is closed or its writer is gone.
    #[error("the audit log is closed")]
    Closed,
    /// `flush`/`close` ran out of time.
    #[error("timed out with {pending} audit records not yet written")]
    Timeout {
        /// Records accepted but not yet written.
        pending: u64,
    },
    /// The writer thread could not start.
    #[error("cannot start the audit writer: {0}")]
    Spawn(std::io::Error),
    /// The audit file does not exist.
    #[error("no audit log at {0}")]
    Missing(PathBuf),
}

/// Counters of an [`AuditLog`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
pub struct AuditStats {
    /// Records committed.
    pub written: u64,
    /// Transactions committed (group commits).
    pub batches: u64,
    /// Transactions that failed.
    pub failed_batches: u64,
    /// Records lost: queue full or failed batch (BestEffort), given up at close (Required).
    pub dropped: u64,
    /// Submits refused (Required).
    pub refused: u64,
    /// Records queued, not yet taken by the writer.
    pub queue_depth: u64,
    /// Whether the last write succeeded.
    pub healthy: bool,
}

/// Query filter; `None` means any.
#[derive(Debug, Clone, Default)]
pub struct AuditFilter {
    /// Tenant.
    pub tenant: Option<String>,
    /// Model name.
    pub model: Option<String>,
    /// Records at or after this time, ms since the epoch.
    pub since_ms: Option<i64>,
    /// At most this many (newest first); `None` means all.
    pub limit: Option<usize>,
}

/// A problem found by [`verify`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ProblemKind {
    /// A record's content or hash was changed.
    Altered,
    /// A record is missing.
    Removed,
    /// A record was moved to another position.
    Reordered,
}

/// One problem.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Problem {
    /// Where.
    pub seq: u64,
    /// What.
    pub kind: ProblemKind,
    /// Operator-readable explanation.
    pub detail: String,
}

/// Result of [`verify`].
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Serialize)]
pub struct VerifyReport {
    /// Rows checked.
    pub records: u64,
    /// Last seq present (0 when empty).
    pub last_seq: u64,
    /// Problems, in seq order of discovery; empty means the chain is intact.
    pub problems: Vec<Problem>,
}

impl VerifyReport {
    /// No problem found.
    pub fn ok(&self) -> bool {
        self.problems.is_empty()
    }
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS audit (
    seq INTEGER PRIMARY KEY,
    at_ms INTEGER NOT NULL,
    request_id TEXT NOT NULL,
    tenant TEXT NOT NULL,
    key_id TEXT NOT NULL,
    deployment TEXT NOT NULL,
    model TEXT NOT NULL,
    model_version TEXT NOT NULL,
    model_digest TEXT,
    runtime_kind TEXT NOT NULL,
    runtime_version TEXT NOT NULL,
    hardware_class TEXT NOT NULL,
    node TEXT NOT NULL,
    gpus TEXT NOT NULL,
    prompt_tokens INTEGER NOT NULL,
    completion_tokens INTEGER NOT NULL,
    status INTEGER NOT NULL,
    latency_ms INTEGER NOT NULL,
    ttft_ms INTEGER,
    trace_id TEXT NOT NULL,
    prev_hash TEXT NOT NULL,
    hash TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS audit_tenant ON audit(tenant, seq);
CREATE INDEX IF NOT EXISTS audit_model ON audit(model, seq);
CREATE INDEX IF NOT EXISTS audit_deployment ON audit(deployment, seq);
CREATE INDEX IF NOT EXISTS audit_at ON audit(at_ms);
CREATE TRIGGER IF NOT EXISTS audit_no_update BEFORE UPDATE ON audit
    BEGIN SELECT RAISE(ABORT, 'audit records are append-only'); END;
CREATE TRIGGER IF NOT EXISTS audit_no_delete BEFORE DELETE ON audit
    BEGIN SELECT RAISE(ABORT, 'audit records are append-only'); END;
";

const COLUMNS: &str = "seq, at_ms, request_id, tenant, key_id, deployment, model, model_version, model_digest, \
     runtime_kind, runtime_version, hardware_class, node, gpus, prompt_tokens, completion_tokens, status, \
     latency_ms, ttft_ms, trace_id, prev_hash, hash";

fn put_u64(out: &mut Vec<u8>, v: u64) {
    out.extend_from_slice(&v.to_be_bytes());
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    put_u64(out, s.len() as u64);
    out.extend_from_slice(s.as_bytes());
}

/// The canonical encoding of `seq` and `record` (version 1; see the module docs).
pub fn encode(seq: u64, record: &AuditRecord) -> Vec<u8> {
    let mut out = Vec::with_capacity(256);
    out.extend_from_slice(DOMAIN_TAG);
    put_u64(&mut out, seq);
    out.extend_from_slice(&record.at_ms.to_be_bytes());
    for s in [
        &record.request_id,
        &record.tenant,
        &record.key_id,
        &record.deployment,
        &record.model,
        &record.model_version,
    ] {
        put_str(&mut out, s);
    }
    match &record.model_digest {
        None => out.push(0),
        Some(d) => {
            out.push(1);
            put_str(&mut out, d);
        }
    }
    for s in [
        &record.runtime_kind,
        &record.runtime_version,
        &record.hardware_class,
        &record.node,
    ] {
        put_str(&mut out, s);
    }
    put_u64(&mut out, record.gpus.len() as u64);
    for g in &record.gpus {
        put_str(&mut out, g);
    }
    put_u64(&mut out, record.prompt_tokens);
    put_u64(&mut out, record.completion_tokens);
    out.extend_from_slice(&record.status.to_be_bytes());
    put_u64(&mut out, record.latency_ms);
    match record.ttft_ms {
        None => out.push(0),
        Some(t) => {
            out.push(1);
            put_u64(&mut out, t);
        }
    }
    put_str(&mut out, &record.trace_id);
    out
}

/// `hex(SHA-256(prev_hash || encode(seq, record)))`.
pub fn chain_hash(prev_hash: &str, seq: u64, record: &AuditRecord) -> String {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    ctx.update(prev_hash.as_bytes());
    ctx.update(&encode(seq, record));
    crate::tokens::hex_lower(ctx.finish().as_ref())
}

/// Clamps the integers SQLite cannot hold, so the hash of what is stored is the hash written.
fn normalize(mut r: AuditRecord) -> AuditRecord {
    const MAX: u64 = i64::MAX as u64;
    r.prompt_tokens = r.prompt_tokens.min(MAX);
    r.completion_tokens = r.completion_tokens.min(MAX);
    r.latency_ms = r.latency_ms.min(MAX);
    r.ttft_ms = r.ttft_ms.map(|t| t.min(MAX));
    r
}

fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn get_u64(row: &rusqlite::Row<'_>, idx: usize) -> rusqlite::Result<u64> {
    let v: i64 = row.get(idx)?;
    u64::try_from(v).map_err(|_| rusqlite::Error::IntegralValueOutOfRange(idx, v))
}

fn read_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<StoredRecord> {
    let gpus_json: String = row.get(13)?;
    let gpus: Vec<String> = serde_json::from_str(&gpus_json)
        .map_err(|e| rusqlite::Error::FromSqlConversionFailure(13, rusqlite::types::Type::Text, Box::new(e)))?;
    let status: i64 = row.get(16)?;
    let status = u16::try_from(status).map_err(|_| rusqlite::Error::IntegralValueOutOfRange(16, status))?;
    let ttft_ms = match row.get::<_, Option<i64>>(18)? {
        None => None,
        Some(v) => Some(u64::try_from(v).map_err(|_| rusqlite::Error::IntegralValueOutOfRange(18, v))?),
    };
    Ok(StoredRecord {
        seq: get_u64(row, 0)?,
        record: AuditRecord {
            at_ms: row.get(1)?,
            request_id: row.get(2)?,
            tenant: row.get(3)?,
            key_id: row.get(4)?,
            deployment: row.get(5)?,
            model: row.get(6)?,
            model_version: row.get(7)?,
            model_digest: row.get(8)?,
            runtime_kind: row.get(9)?,
            runtime_version: row.get(10)?,
            hardware_class: row.get(11)?,
            node: row.get(12)?,
            gpus,
            prompt_tokens: get_u64(row, 14)?,
            completion_tokens: get_u64(row, 15)?,
            status,
            latency_ms: get_u64(row, 17)?,
            ttft_ms,
            trace_id: row.get(19)?,
        },
        prev_hash: row.get(20)?,
        hash: row.get(21)?,
    })
}

/// Options beyond mode and queue size.
#[derive(Debug, Clone)]
pub struct AuditOptions {
    /// Behaviour when records cannot be written.
    pub mode: AuditMode,
    /// Queue capacity (records); at least 1.
    pub queue: usize,
    /// Cap on the audit file size (SQLite `max_page_count`); writes past it fail with
    /// SQLITE_FULL, which is handled like any other write failure. `None`: no cap.
    pub max_bytes: Option<u64>,
    /// How long a write waits for a lock held by another connection.
    pub busy_timeout: Duration,
    /// Required mode: how often a failed batch is retried.
    pub retry_interval: Duration,
}

impl AuditOptions {
    /// Defaults for a mode and queue size.
    pub fn new(mode: AuditMode, queue: usize) -> Self {
        Self {
            mode,
            queue,
            max_bytes: None,
            busy_timeout: Duration::from_secs(5),
            retry_interval: Duration::from_secs(1),
        }
    }
}

#[derive(Debug)]
struct Shared {
    mode: AuditMode,
    accepted: AtomicU64,
    taken: AtomicU64,
    written: AtomicU64,
    batches: AtomicU64,
    failed_batches: AtomicU64,
    dropped_queue: AtomicU64,
    dropped_write: AtomicU64,
    refused: AtomicU64,
    healthy: AtomicBool,
    closing: AtomicBool,
    last_error: Mutex<String>,
    head: Mutex<Anchor>,
    progress: Mutex<()>,
    progressed: Condvar,
}

impl Shared {
    fn notify(&self) {
        let _guard = self.progress.lock().unwrap_or_else(|e| e.into_inner());
        self.progressed.notify_all();
    }

    fn resolved(&self) -> u64 {
        self.written.load(Ordering::SeqCst) + self.dropped_write.load(Ordering::SeqCst)
    }

    fn pending(&self) -> u64 {
        self.accepted.load(Ordering::SeqCst).saturating_sub(self.resolved())
    }
}

/// The audit log: a bounded queue in front of one writer thread.
#[derive(Debug)]
pub struct AuditLog {
    path: PathBuf,
    capacity: usize,
    sender: Option<SyncSender<AuditRecord>>,
    writer: Option<std::thread::JoinHandle<()>>,
    shared: Arc<Shared>,
}

fn open_file(path: &Path, options: &AuditOptions) -> Result<Connection, AuditError> {
    // Create the file 0600 first: SQLite gives its -wal and -shm files the same mode.
    {
        use std::os::unix::fs::OpenOptionsExt;
        let _ = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(path);
    }
    let conn = Connection::open(path)?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    conn.busy_timeout(options.busy_timeout)?;
    conn.execute_batch(SCHEMA)?;
    if let Some(max_bytes) = options.max_bytes {
        let page_size: i64 = conn.query_row("PRAGMA page_size", [], |r| r.get(0))?;
        let pages = (max_bytes / page_size.max(512) as u64).max(1);
        // SQLite never sets it below the current size; the effective value is what it returns.
        let _: i64 = conn.query_row(&format!("PRAGMA max_page_count = {pages}"), [], |r| r.get(0))?;
    }
    Ok(conn)
}

fn open_existing(path: &Path) -> Result<Connection, AuditError> {
    if !path.exists() {
        return Err(AuditError::Missing(path.to_path_buf()));
    }
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    conn.busy_timeout(Duration::from_secs(5))?;
    conn.pragma_update(None, "query_only", "ON")?;
    Ok(conn)
}

fn last_anchor(conn: &Connection) -> Result<Anchor, AuditError> {
    let last: Option<(i64, String)> = conn
        .query_row("SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1", [], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })
        .optional()?;
    Ok(match last {
        Some((seq, hash)) => Anchor {
            seq: u64::try_from(seq).map_err(|_| rusqlite::Error::IntegralValueOutOfRange(0, seq))?,
            hash,
        },
        None => Anchor {
            seq: 0,
            hash: GENESIS.to_string(),
        },
    })
}

impl AuditLog {
    /// Opens (creating if needed) the audit file with default options.
    pub fn open(path: &Path, mode: AuditMode, queue: usize) -> Result<Self, AuditError> {
        Self::open_with(path, AuditOptions::new(mode, queue))
    }

    /// Opens (creating if needed) the audit file, resumes the chain from its last record and
    /// starts the writer thread.
    pub fn open_with(path: &Path, options: AuditOptions) -> Result<Self, AuditError> {
        let conn = open_file(path, &options)?;
        let head = last_anchor(&conn)?;
        let capacity = options.queue.max(1);
        let shared = Arc::new(Shared {
            mode: options.mode,
            accepted: AtomicU64::new(0),
            taken: AtomicU64::new(0),
            written: AtomicU64::new(0),
            batches: AtomicU64::new(0),
            failed_batches: AtomicU64::new(0),
            dropped_queue: AtomicU64::new(0),
            dropped_write: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            healthy: AtomicBool::new(true),
            closing: AtomicBool::new(false),
            last_error: Mutex::new(String::new()),
            head: Mutex::new(head.clone()),
            progress: Mutex::new(()),
            progressed: Condvar::new(),
        });
        let (sender, receiver) = std::sync::mpsc::sync_channel::<AuditRecord>(capacity);
        let writer_shared = shared.clone();
        let retry = options.retry_interval;
        let writer = std::thread::Builder::new()
            .name("audit-writer".into())
            .spawn(move || writer_loop(conn, receiver, writer_shared, head, retry))
            .map_err(AuditError::Spawn)?;
        Ok(Self {
            path: path.to_path_buf(),
            capacity,
            sender: Some(sender),
            writer: Some(writer),
            shared,
        })
    }

    /// The audit file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Queues a record; never blocks. In Required mode an error means "refuse the call".
    pub fn submit(&self, record: AuditRecord) -> Result<(), AuditError> {
        let shared = &self.shared;
        let required = shared.mode == AuditMode::Required;
        let Some(sender) = &self.sender else {
            return Err(AuditError::Closed);
        };
        if required && !shared.healthy.load(Ordering::SeqCst) {
            shared.refused.fetch_add(1, Ordering::Relaxed);
            let reason = shared.last_error.lock().unwrap_or_else(|e| e.into_inner()).clone();
            return Err(AuditError::Unavailable { reason });
        }
        match sender.try_send(record) {
            Ok(()) => {
                shared.accepted.fetch_add(1, Ordering::SeqCst);
                Ok(())
            }
            Err(e) => {
                let error = match e {
                    TrySendError::Full(_) => AuditError::QueueFull {
                        capacity: self.capacity,
                    },
                    TrySendError::Disconnected(_) => AuditError::Closed,
                };
                if required {
                    shared.refused.fetch_add(1, Ordering::Relaxed);
                    Err(error)
                } else {
                    shared.dropped_queue.fetch_add(1, Ordering::Relaxed);
                    Ok(())
                }
            }
        }
    }

    /// The counters.
    pub fn stats(&self) -> AuditStats {
        let s = &self.shared;
        AuditStats {
            written: s.written.load(Ordering::SeqCst),
            batches: s.batches.load(Ordering::SeqCst),
            failed_batches: s.failed_batches.load(Ordering::SeqCst),
            dropped: s.dropped_queue.load(Ordering::SeqCst) + s.dropped_write.load(Ordering::SeqCst),
            refused: s.refused.load(Ordering::SeqCst),
            queue_depth: s
                .accepted
                .load(Ordering::SeqCst)
                .saturating_sub(s.taken.load(Ordering::SeqCst)),
            healthy: s.healthy.load(Ordering::SeqCst),
        }
    }

    /// The latest committed (seq, hash): store it elsewhere to detect truncation.
    pub fn head(&self) -> Anchor {
        self.shared.head.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Waits until every accepted record is written (or dropped, in BestEffort mode).
    /// In Required mode, returns `Unavailable` as soon as the writer is failing (its batch is
    /// held for retry), rather than waiting for the store to recover.
    pub fn flush(&self, timeout: Duration) -> Result<(), AuditError> {
        let shared = &self.shared;
        let deadline = Instant::now() + timeout;
        let mut guard = shared.progress.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if shared.pending() == 0 {
                return Ok(());
            }
            if shared.mode == AuditMode::Required && !shared.healthy.load(Ordering::SeqCst) {
                let reason = shared.last_error.lock().unwrap_or_else(|e| e.into_inner()).clone();
                return Err(AuditError::Unavailable { reason });
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(AuditError::Timeout {
                    pending: shared.pending(),
                });
            }
            guard = shared
                .progressed
                .wait_timeout(guard, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    /// Flushes (bounded by `timeout`), stops the writer and returns the final counters.
    /// Records still unwritten when the writer stops are counted in `dropped` and logged.
    pub fn close(mut self, timeout: Duration) -> AuditStats {
        if let Err(e) = self.flush(timeout) {
            tracing::warn!(error = %e, "closing the audit log before every record was written");
        }
        self.shutdown();
        self.stats()
    }

    /// Queries `path` (see [`query`]).
    pub fn query(&self, filter: &AuditFilter) -> Result<Vec<StoredRecord>, AuditError> {
        query(&self.path, filter)
    }

    fn shutdown(&mut self) {
        self.shared.closing.store(true, Ordering::SeqCst);
        self.sender = None;
        if let Some(writer) = self.writer.take() {
            writer.thread().unpark();
            if writer.join().is_err() {
                tracing::error!("the audit writer panicked");
            }
        }
    }
}

impl Drop for AuditLog {
    fn drop(&mut self) {
        self.shutdown();
    }
}

fn write_batch(conn: &mut Connection, head: &mut Anchor, batch: &[AuditRecord]) -> Result<(), rusqlite::Error> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let mut next = head.clone();
    {
        let mut stmt = tx.prepare_cached(
            "INSERT INTO audit (seq, at_ms, request_id, tenant, key_id, deployment, model, model_version, \
             model_digest, runtime_kind, runtime_version, hardware_class, node, gpus, prompt_tokens, \
             completion_tokens, status, latency_ms, ttft_ms, trace_id, prev_hash, hash) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19, ?20, ?21, ?22)",
        )?;
        for r in batch {
            let seq = next.seq + 1;
            let hash = chain_hash(&next.hash, seq, r);
            let gpus =
                serde_json::to_string(&r.gpus).map_err(|e| rusqlite::Error::ToSqlConversionFailure(Box::new(e)))?;
            stmt.execute(params![
                to_i64(seq),
                r.at_ms,
                r.request_id,
                r.tenant,
                r.key_id,
                r.deployment,
                r.model,
                r.model_version,
                r.model_digest,
                r.runtime_kind,
                r.runtime_version,
                r.hardware_class,
                r.node,
                gpus,
                to_i64(r.prompt_tokens),
                to_i64(r.completion_tokens),
                i64::from(r.status),
                to_i64(r.latency_ms),
                r.ttft_ms.map(to_i64),
                r.trace_id,
                next.hash,
                hash,
            ])?;
            next = Anchor { seq, hash };
        }
    }
    tx.commit()?;
    *head = next;
    Ok(())
}

fn writer_loop(
    mut conn: Connection,
    receiver: Receiver<AuditRecord>,
    shared: Arc<Shared>,
    mut head: Anchor,
    retry: Duration,
) {
    let mut batch: Vec<AuditRecord> = Vec::new();
    loop {
        if batch.is_empty() {
            match receiver.recv() {
                Ok(first) => batch.push(normalize(first)),
                Err(_) => break, // closed and drained
            }
            // Let a group gather: one commit (and one wake-up of this thread) per
            // millisecond under load instead of one per few records. Senders never block.
            if !shared.closing.load(Ordering::SeqCst) {
                std::thread::sleep(GATHER);
            }
            while batch.len() < MAX_BATCH {
                match receiver.try_recv() {
                    Ok(r) => batch.push(normalize(r)),
                    Err(_) => break,
                }
            }
            shared.taken.fetch_add(batch.len() as u64, Ordering::SeqCst);
        }
        let n = batch.len() as u64;
        match write_batch(&mut conn, &mut head, &batch) {
            Ok(()) => {
                batch.clear();
                *shared.head.lock().unwrap_or_else(|e| e.into_inner()) = head.clone();
                shared.written.fetch_add(n, Ordering::SeqCst);
                shared.batches.fetch_add(1, Ordering::SeqCst);
                shared.healthy.store(true, Ordering::SeqCst);
                shared.notify();
            }
            Err(e) => {
                *shared.last_error.lock().unwrap_or_else(|p| p.into_inner()) = e.to_string();
                shared.failed_batches.fetch_add(1, Ordering::SeqCst);
                shared.healthy.store(false, Ordering::SeqCst);
                match shared.mode {
                    AuditMode::BestEffort => {
                        tracing::warn!(error = %e, records = n, "cannot write audit records; dropped (best-effort mode)");
                        batch.clear();
                        shared.dropped_write.fetch_add(n, Ordering::SeqCst);
                        shared.notify();
                    }
                    AuditMode::Required => {
                        shared.notify();
                        if shared.closing.load(Ordering::SeqCst) {
                            let mut lost = n;
                            batch.clear();
                            while receiver.try_recv().is_ok() {
                                shared.taken.fetch_add(1, Ordering::SeqCst);
                                lost += 1;
                            }
                            tracing::error!(error = %e, records = lost, "audit log closed while its store is failing; these audit records are lost");
                            shared.dropped_write.fetch_add(lost, Ordering::SeqCst);
                            shared.notify();
                            break;
                        }
                        tracing::warn!(error = %e, records = n, "cannot write audit records; refusing calls and retrying (required mode)");
                        std::thread::park_timeout(retry);
                    }
                }
            }
        }
    }
}

/// Records of the audit file at `path` matching `filter`, newest first.
pub fn query(path: &Path, filter: &AuditFilter) -> Result<Vec<StoredRecord>, AuditError> {
    let conn = open_existing(path)?;
    let mut sql = format!("SELECT {COLUMNS} FROM audit WHERE 1 = 1");
    let mut args: Vec<rusqlite::types::Value> = Vec::new();
    if let Some(t) = &filter.tenant {
        args.push(t.clone().into());
        sql.push_str(&format!(" AND tenant = ?{}", args.len()));
    }
    if let Some(m) = &filter.model {
        // The model's name or the deployment's, as the caller named it.
        args.push(m.clone().into());
        let n = args.len();
        sql.push_str(&format!(" AND (model = ?{n} OR deployment = ?{n})"));
    }
    if let Some(s) = filter.since_ms {
        args.push(s.into());
        sql.push_str(&format!(" AND at_ms >= ?{}", args.len()));
    }
    sql.push_str(" ORDER BY seq DESC");
    if let Some(l) = filter.limit {
        args.push(to_i64(l as u64).into());
        sql.push_str(&format!(" LIMIT ?{}", args.len()));
    }
    let mut stmt = conn.prepare(&sql)?;
    let rows = stmt.query_map(rusqlite::params_from_iter(args), read_row)?;
    Ok(rows.collect::<Result<Vec<_>, _>>()?)
}

/// Calls and tokens per tenant since `since_ms` (every audited call, errors included).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct TokenUsage {
    /// Tenant.
    pub tenant: String,
    /// Calls.
    pub calls: u64,
    /// Calls answered with an error status.
    pub errors: u64,
    /// Prompt tokens.
    pub prompt_tokens: u64,
    /// Completion tokens.
    pub completion_tokens: u64,
}

/// [`TokenUsage`] of the audit file at `path`, by tenant; an absent file has none.
pub fn token_usage(path: &Path, since_ms: i64, tenant: Option<&str>) -> Result<Vec<TokenUsage>, AuditError> {
    if !path.exists() {
        return Ok(Vec::new());
    }
    let conn = open_existing(path)?;
    let mut stmt = conn.prepare(
        "SELECT tenant, COUNT(*), SUM(CASE WHEN status >= 400 THEN 1 ELSE 0 END), \
         COALESCE(SUM(prompt_tokens), 0), COALESCE(SUM(completion_tokens), 0) \
         FROM audit WHERE at_ms >= ?1 AND (?2 IS NULL OR tenant = ?2) GROUP BY tenant ORDER BY tenant",
    )?;
    let rows = stmt.query_map(rusqlite::params![since_ms, tenant], |r| {
        Ok(TokenUsage {
            tenant: r.get(0)?,
            calls: r.get::<_, i64>(1)?.max(0) as u64,
            errors: r.get::<_, i64>(2)?.max(0) as u64,
            prompt_tokens: r.get::<_, i64>(3)?.max(0) as u64,
            completion_tokens: r.get::<_, i64>(4)?.max(0) as u64,
        })
    })?;
    Ok(rows.collect::<Result<Vec<_>, _>>()?)
}

/// Recomputes the chain of the audit file at `path` from genesis, in seq order.
pub fn verify(path: &Path) -> Result<VerifyReport, AuditError> {
    verify_inner(path, None)
}

/// [`verify`], and also checks the file against an anchor kept elsewhere (detects dropped
/// newest records and a chain recomputed after an alteration).
pub fn verify_anchored(path: &Path, anchor: &Anchor) -> Result<VerifyReport, AuditError> {
    verify_inner(path, Some(anchor))
}

fn verify_inner(path: &Path, anchor: Option<&Anchor>) -> Result<VerifyReport, AuditError> {
    let conn = open_existing(path)?;
    // Two streaming passes: the hashes first (to find where a moved record came from), then
    // the rows in seq order; only the hashes are held in memory (about 100 bytes a record).
    let by_hash: HashMap<String, u64> = {
        let mut stmt = conn.prepare("SELECT hash, seq FROM audit WHERE seq > 0")?;
        let rows = stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))?;
        let mut map = HashMap::new();
        // An unreadable hash is reported by the second pass.
        for (hash, seq) in rows.flatten() {
            map.insert(hash, seq as u64);
        }
        map
    };
    let mut stmt = conn.prepare(&format!("SELECT {COLUMNS} FROM audit ORDER BY seq"))?;
    let rows = stmt.query_map([], |row| {
        let seq: i64 = row.get(0)?;
        Ok((seq, read_row(row).map_err(|e| e.to_string())))
    })?;
    let mut report = VerifyReport::default();
    let mut flagged = std::collections::HashSet::new();
    let mut expected = 1u64;
    let mut prev_hash = GENESIS.to_string();
    let mut hashes_at: HashMap<u64, String> = HashMap::new();
    for item in rows {
        let (raw_seq, row) = item?;
        report.records += 1;
        let Ok(seq) = u64::try_from(raw_seq) else {
            report.problems.push(Problem {
                seq: 0,
                kind: ProblemKind::Altered,
                detail: format!("a record has an invalid seq {raw_seq}: the table was edited"),
            });
            continue;
        };
        let gap = seq > expected;
        if gap {
            let detail = if seq - expected == 1 {
                format!(
                    "record {expected} is missing: the log goes from record {} to record {seq}",
                    expected - 1
                )
            } else {
                format!(
                    "records {expected} to {} ({} records) are missing: the log goes from record {} to record {seq}",
                    seq - 1,
                    seq - expected,
                    expected - 1
                )
            };
            report.problems.push(Problem {
                seq: expected,
                kind: ProblemKind::Removed,
                detail,
            });
        }
        match &row {
            Err(reason) => {
                report.problems.push(Problem {
                    seq,
                    kind: ProblemKind::Altered,
                    detail: format!("record {seq} cannot be read ({reason}): it was edited"),
                });
                flagged.insert(seq);
                prev_hash = String::new();
            }
            Ok(r) => {
                if chain_hash(&r.prev_hash, seq, &r.record) != r.hash {
                    let mut candidates: Vec<u64> = Vec::new();
                    if r.prev_hash == GENESIS {
                        candidates.push(1);
                    } else if let Some(p) = by_hash.get(r.prev_hash.as_str()) {
                        candidates.push(p + 1);
                    }
                    for d in 1..=REORDER_WINDOW {
                        candidates.push(seq + d);
                        if seq > d {
                            candidates.push(seq - d);
                        }
                    }
                    let origin = candidates
                        .into_iter()
                        .find(|&j| j != seq && j > 0 && chain_hash(&r.prev_hash, j, &r.record) == r.hash);
                    let problem = match origin {
                        Some(j) => Problem {
                            seq,
                            kind: ProblemKind::Reordered,
                            detail: format!(
                                "record {seq} holds the record written as record {j} (request {}): records were moved",
                                r.record.request_id
                            ),
                        },
                        None => Problem {
                            seq,
                            kind: ProblemKind::Altered,
                            detail: format!(
                                "record {seq} (request {}) does not match its hash: its content or hash was changed",
                                r.record.request_id
                            ),
                        },
                    };
                    report.problems.push(problem);
                    flagged.insert(seq);
                } else if !gap && r.prev_hash != prev_hash && seq > 1 && !flagged.contains(&(seq - 1)) {
                    let p = seq - 1;
                    report.problems.push(Problem {
                        seq: p,
                        kind: ProblemKind::Altered,
                        detail: format!(
                            "record {p} was changed and re-hashed: record {seq} chains to a different hash"
                        ),
                    });
                    flagged.insert(p);
                } else if !gap && seq == 1 && r.prev_hash != GENESIS {
                    report.problems.push(Problem {
                        seq,
                        kind: ProblemKind::Altered,
                        detail: "record 1 does not start from the genesis hash: the log was rewritten".into(),
                    });
                    flagged.insert(seq);
                }
                prev_hash = r.hash.clone();
                if anchor.is_some_and(|a| a.seq == seq) {
                    hashes_at.insert(seq, r.hash.clone());
                }
            }
        }
        report.last_seq = seq;
        expected = seq + 1;
    }
    if let Some(a) = anchor {
        if a.seq > report.last_seq {
            report.problems.push(Problem {
                seq: report.last_seq + 1,
                kind: ProblemKind::Removed,
                detail: format!(
                    "records {} to {} are missing: the anchor says the log reached record {} but it ends at record {}",
                    report.last_seq + 1,
                    a.seq,
                    a.seq,
                    report.last_seq
                ),
            });
        } else if a.seq > 0 && hashes_at.get(&a.seq).is_none_or(|h| *h != a.hash) {
            report.problems.push(Problem {
                seq: a.seq,
                kind: ProblemKind::Altered,
                detail: format!(
                    "record {} does not have the anchored hash: the log was rewritten at or before it",
                    a.seq
                ),
            });
        }
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    const WAIT: Duration = Duration::from_secs(20);

    fn record(i: u64) -> AuditRecord {
        AuditRecord {
            request_id: format!("req-{i}"),
            at_ms: 1_700_000_000_000 + i as i64,
            tenant: if i.is_multiple_of(2) { "team-a" } else { "team-b" }.into(),
            key_id: "key-1".into(),
            deployment: "chat".into(),
            model: if i.is_multiple_of(3) { "llama" } else { "qwen" }.into(),
            model_version: "v1".into(),
            model_digest: i.is_multiple_of(2).then(|| "sha256:abc".to_string()),
            runtime_kind: "vllm".into(),
            runtime_version: "0.6.0".into(),
            hardware_class: "h100-80gb".into(),
            node: "gpu-1".into(),
            gpus: vec![format!("GPU-{i}"), "GPU-x".into()],
            prompt_tokens: 10 + i,
            completion_tokens: 20 + i,
            status: 200,
            latency_ms: 100 + i,
            ttft_ms: (i % 2 == 1).then_some(15),
            trace_id: format!("trace-{i}"),
        }
    }

    fn write_n(path: &Path, range: std::ops::Range<u64>) {
        let log = AuditLog::open(path, AuditMode::Required, 1024).unwrap();
        for i in range {
            log.submit(record(i)).unwrap();
        }
        let stats = log.close(WAIT);
        assert_eq!(stats.dropped, 0);
    }

    /// Opens the file as an attacker would: directly, triggers dropped.
    fn tamper(path: &Path, sql: &str) {
        let conn = Connection::open(path).unwrap();
        conn.execute_batch("DROP TRIGGER audit_no_update; DROP TRIGGER audit_no_delete;")
            .unwrap();
        conn.execute_batch(sql).unwrap();
    }

    fn kinds(report: &VerifyReport) -> Vec<(u64, ProblemKind)> {
        report.problems.iter().map(|p| (p.seq, p.kind)).collect()
    }

    #[test]
    fn encoding_is_length_prefixed_and_covers_seq() {
        let a = record(1);
        let mut b = a.clone();
        b.request_id = "req-1t".into();
        b.tenant = "eam-b".into();
        assert_ne!(encode(1, &a), encode(1, &b));
        assert_ne!(chain_hash(GENESIS, 1, &a), chain_hash(GENESIS, 2, &a));
        assert_eq!(chain_hash(GENESIS, 1, &a), chain_hash(GENESIS, 1, &a.clone()));
        assert_eq!(chain_hash(GENESIS, 1, &a).len(), 64);
    }

    #[test]
    fn append_query_and_verify() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.db");
        write_n(&path, 1..11);
        let report = verify(&path).unwrap();
        assert!(report.ok(), "{report:?}");
        assert_eq!((report.records, report.last_seq), (10, 10));

        let all = query(&path, &AuditFilter::default()).unwrap();
        assert_eq!(all.len(), 10);
        assert_eq!(all[0].seq, 10);
        assert_eq!(all[0].record, record(10));
        assert_eq!(all[9].prev_hash, GENESIS);
        let a = query(
            &path,
            &AuditFilter {
                tenant: Some("team-a".into()),
                model: Some("llama".into()),
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(a.iter().map(|r| r.seq).collect::<Vec<_>>(), vec![6]);
        // `--model` takes the deployment's name too.
        let by_deployment = query(
            &path,
            &AuditFilter {
                model: Some("chat".into()),
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(by_deployment.len(), 10);
        let recent = query(
            &path,
            &AuditFilter {
                since_ms: Some(1_700_000_000_008),
                limit: Some(2),
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(recent.iter().map(|r| r.seq).collect::<Vec<_>>(), vec![10, 9]);

        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        // Append-only against plain SQL.
        let conn = Connection::open(&path).unwrap();
        assert!(conn.execute("UPDATE audit SET tenant = 'x' WHERE seq = 1", []).is_err());
        assert!(conn.execute("DELETE FROM audit WHERE seq = 1", []).is_err());
    }

    #[test]
    fn the_chain_resumes_across_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.db");
        write_n(&path, 1..4);
        let log = AuditLog::open(&path, AuditMode::Required, 16).unwrap();
        assert_eq!(log.head().seq, 3);
        log.submit(record(4)).unwrap();
        log.flush(WAIT).unwrap();
        let head = log.head();
        assert_eq!(head.seq, 4);
        drop(log);
        let report = verify_anchored(&path, &head).unwrap();
        assert!(report.ok(), "{report:?}");
        assert_eq!(report.records, 4);
        let newest = &query(&path, &AuditFilter::default()).unwrap()[0];
        assert_eq!(newest.hash, head.hash);
    }

    #[test]
    fn verify_finds_a_changed_field() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.db");
        write_n(&path, 1..8);
        tamper(&path, "UPDATE audit SET completion_tokens = 1 WHERE seq = 4");
        let report = verify(&path).unwrap();
        assert_eq!(kinds(&report), vec![(4, ProblemKind::Altered)], "{report:?}");
        assert!(report.problems[0].detail.contains("req-4"));
    }

    #[test]
    fn verify_finds_a_changed_and_rehashed_record_and_an_unreadable_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.db");
        write_n(&path, 1..8);
        let rows = query(&path, &AuditFilter::default()).unwrap();
        let r3 = rows.iter().find(|r| r.seq == 3).unwrap();
        let mut forged = r3.record.clone();
        forged.tenant = "someone-else".into();
        let hash = chain_hash(&r3.prev_hash, 3, &forged);
        tamper(
            &path,
            &format!("UPDATE audit SET tenant = 'someone-else', hash = '{hash}' WHERE seq = 3; UPDATE audit SET gpus = 'not json' WHERE seq = 6"),
        );
        let report = verify(&path).unwrap();
        assert_eq!(
            kinds(&report),
            vec![(3, ProblemKind::Altered), (6, ProblemKind::Altered)],
            "{report:?}"
        );
    }

    #[test]
    fn verify_finds_a_deleted_record() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.db");
        write_n(&path, 1..8);
        tamper(&path, "DELETE FROM audit WHERE seq = 5");
        let report = verify(&path).unwrap();
        assert_eq!(kinds(&report), vec![(5, ProblemKind::Removed)], "{report:?}");
        tamper_keep(&path, "DELETE FROM audit WHERE seq IN (1, 2)");
        let report = verify(&path).unwrap();
        assert_eq!(
            kinds(&report),
            vec![(1, ProblemKind::Removed), (5, ProblemKind::Removed)],
            "{report:?}"
        );
        assert!(report.problems[0].detail.contains("records 1 to 2"), "{report:?}");
    }

    fn tamper_keep(path: &Path, sql: &str) {
        Connection::open(path).unwrap().execute_batch(sql).unwrap();
    }

    #[test]
    fn verify_finds_swapped_records() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.db");
        write_n(&path, 1..8);
        // Whole rows exchanged (every column but seq): Reordered at both.
        let cols: Vec<&str> = COLUMNS.split(", ").filter(|c| *c != "seq").collect();
        let sets = |from: &str| {
            cols.iter()
                .map(|c| format!("{c} = {from}.{c}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        tamper(
            &path,
            &format!(
                "CREATE TEMP TABLE t AS SELECT * FROM audit WHERE seq IN (3, 4);
                 UPDATE audit SET {} FROM (SELECT * FROM t WHERE seq = 4) AS o WHERE audit.seq = 3;
                 UPDATE audit SET {} FROM (SELECT * FROM t WHERE seq = 3) AS o WHERE audit.seq = 4;",
                sets("o"),
                sets("o")
            ),
        );
        let report = verify(&path).unwrap();
        assert_eq!(
            kinds(&report),
            vec![(3, ProblemKind::Reordered), (4, ProblemKind::Reordered)],
            "{report:?}"
        );
        assert!(report.problems[0].detail.contains("written as record 4"), "{report:?}");

        // Only the record fields exchanged, hash columns left in place: Altered at both.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.db");
        write_n(&path, 1..8);
        let fields: Vec<&str> = cols
            .iter()
            .copied()
            .filter(|c| *c != "prev_hash" && *c != "hash")
            .collect();
        let sets = fields
            .iter()
            .map(|c| format!("{c} = o.{c}"))
            .collect::<Vec<_>>()
            .join(", ");
        tamper(
            &path,
            &format!(
                "CREATE TEMP TABLE t AS SELECT * FROM audit WHERE seq IN (2, 6);
                 UPDATE audit SET {sets} FROM (SELECT * FROM t WHERE seq = 6) AS o WHERE audit.seq = 2;
                 UPDATE audit SET {sets} FROM (SELECT * FROM t WHERE seq = 2) AS o WHERE audit.seq = 6;"
            ),
        );
        let report = verify(&path).unwrap();
        assert_eq!(
            kinds(&report),
            vec![(2, ProblemKind::Altered), (6, ProblemKind::Altered)],
            "{report:?}"
        );
    }

    #[test]
    fn truncation_is_found_only_against_an_anchor() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.db");
        let log = AuditLog::open(&path, AuditMode::Required, 64).unwrap();
        for i in 1..8 {
            log.submit(record(i)).unwrap();
        }
        log.flush(WAIT).unwrap();
        let anchor = log.head();
        drop(log);
        tamper(&path, "DELETE FROM audit WHERE seq >= 6");
        assert!(verify(&path).unwrap().ok());
        let report = verify_anchored(&path, &anchor).unwrap();
        assert_eq!(kinds(&report), vec![(6, ProblemKind::Removed)], "{report:?}");
    }

    #[test]
    fn many_submits_become_few_transactions() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.db");
        let log = AuditLog::open(&path, AuditMode::Required, 1000).unwrap();
        // Hold the write lock from another connection so the writer cannot commit while the
        // records are queued (it waits in SQLite's busy handler).
        let blocker = Connection::open(&path).unwrap();
        blocker.execute_batch("BEGIN IMMEDIATE").unwrap();
        for i in 1..=500 {
            log.submit(record(i)).unwrap();
        }
        blocker.execute_batch("ROLLBACK").unwrap();
        log.flush(WAIT).unwrap();
        let stats = log.stats();
        assert_eq!(stats.written, 500);
        assert!(stats.batches <= 2, "{stats:?}");
        assert_eq!((stats.failed_batches, stats.queue_depth, stats.dropped), (0, 0, 0));
        drop(log);
        assert!(verify(&path).unwrap().ok());
    }

    /// Submits in chunks until the writer fails (the file reaches `max_bytes`).
    fn fill_until_failure(log: &AuditLog) -> (u64, Option<AuditError>) {
        let mut submitted = 0;
        for chunk in 0..200u64 {
            for i in 0..50 {
                match log.submit(record(chunk * 50 + i)) {
                    Ok(()) => submitted += 1,
                    Err(e) => return (submitted, Some(e)),
                }
            }
            let _ = log.flush(WAIT);
            if log.stats().failed_batches > 0 {
                return (submitted, None);
            }
        }
        panic!("the store never filled up");
    }

    fn capped(mode: AuditMode) -> AuditOptions {
        AuditOptions {
            max_bytes: Some(128 * 1024),
            retry_interval: Duration::from_millis(20),
            ..AuditOptions::new(mode, 256)
        }
    }

    #[test]
    fn required_mode_refuses_calls_when_the_store_cannot_be_written() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.db");
        let log = AuditLog::open_with(&path, capped(AuditMode::Required)).unwrap();
        let (submitted, _) = fill_until_failure(&log);
        let stats = log.stats();
        assert!(stats.failed_batches >= 1 && !stats.healthy, "{stats:?}");
        let err = log.submit(record(99_999)).unwrap_err();
        assert!(matches!(err, AuditError::Unavailable { .. }), "{err}");
        assert!(err.to_string().contains("full"), "{err}");
        assert!(log.stats().refused >= 1);
        let written = log.stats().written;
        let stats = log.close(Duration::from_millis(100));
        // The held batch was never written: counted as lost at close, nothing else.
        assert_eq!(stats.written + stats.dropped, submitted, "{stats:?}");
        assert!(stats.dropped >= 1);
        let report = verify(&path).unwrap();
        assert!(report.ok(), "{report:?}");
        assert_eq!(report.records, written);
    }

    #[test]
    fn best_effort_mode_serves_calls_and_counts_the_loss() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.db");
        let log = AuditLog::open_with(&path, capped(AuditMode::BestEffort)).unwrap();
        let (mut submitted, err) = fill_until_failure(&log);
        assert!(err.is_none());
        for i in 0..100 {
            log.submit(record(100_000 + i)).unwrap();
            submitted += 1;
        }
        log.flush(WAIT).unwrap();
        let stats = log.stats();
        assert!(stats.failed_batches >= 1, "{stats:?}");
        assert!(stats.dropped >= 100, "{stats:?}");
        assert_eq!(stats.written + stats.dropped, submitted, "{stats:?}");
        drop(log);
        let report = verify(&path).unwrap();
        assert!(report.ok(), "{report:?}");
        assert_eq!(report.records, stats.written);
    }

    #[test]
    fn required_mode_recovers_and_keeps_the_failed_batch() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.db");
        let log = AuditLog::open_with(
            &path,
            AuditOptions {
                busy_timeout: Duration::from_millis(10),
                retry_interval: Duration::from_millis(10),
                ..AuditOptions::new(AuditMode::Required, 16)
            },
        )
        .unwrap();
        let blocker = Connection::open(&path).unwrap();
        blocker.execute_batch("BEGIN IMMEDIATE").unwrap();
        log.submit(record(1)).unwrap();
        let deadline = Instant::now() + WAIT;
        while log.stats().healthy {
            assert!(Instant::now() < deadline, "the write never failed");
            std::thread::yield_now();
        }
        assert!(matches!(log.submit(record(2)), Err(AuditError::Unavailable { .. })));
        blocker.execute_batch("ROLLBACK").unwrap();
        while !log.stats().healthy {
            assert!(Instant::now() < deadline, "the writer never recovered");
            std::thread::yield_now();
        }
        log.submit(record(3)).unwrap();
        let stats = log.close(WAIT);
        assert_eq!((stats.written, stats.dropped, stats.refused), (2, 0, 1), "{stats:?}");
        let seqs: Vec<String> = query(&path, &AuditFilter::default())
            .unwrap()
            .into_iter()
            .map(|r| r.record.request_id)
            .collect();
        assert_eq!(seqs, vec!["req-3", "req-1"]);
        assert!(verify(&path).unwrap().ok());
    }

    #[test]
    fn verify_and_query_need_an_existing_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("none.db");
        assert!(matches!(verify(&path), Err(AuditError::Missing(_))));
        assert!(matches!(
            query(&path, &AuditFilter::default()),
            Err(AuditError::Missing(_))
        ));
        assert!(!path.exists());
    }
}
