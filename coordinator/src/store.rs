//! The embedded store: SQLite (WAL) behind a narrow interface.
//!
//! Only durable control state lives here: nodes (identity, facts, cordon/drain/revoke
//! flags, last seen), join tokens (hashed), the admin-token hash, and events. Hot-path
//! data (every capacity report) stays in memory; last-seen times are flushed in batches.

use std::{path::Path, sync::Mutex};

use rusqlite::{params, Connection, OptionalExtension};

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// SQLite failed.
    #[error("store error: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// A stored JSON document is invalid.
    #[error("stored {what} is corrupt: {reason}")]
    Corrupt {
        /// Which record.
        what: String,
        /// Why.
        reason: String,
    },
    /// The store mutex was poisoned by a panic elsewhere.
    #[error("store lock poisoned")]
    Poisoned,
}

/// A node row.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeRow {
    /// Node name.
    pub name: String,
    /// SHA-256 of the node certificate.
    pub cert_fingerprint: String,
    /// Node facts as JSON (`None` before the first registration).
    pub facts_json: Option<String>,
    /// Cordoned.
    pub cordoned: bool,
    /// Draining.
    pub draining: bool,
    /// Revoked.
    pub revoked: bool,
    /// Joined at, ms since the epoch.
    pub joined_at_ms: i64,
    /// Last report, ms since the epoch.
    pub last_seen_ms: Option<i64>,
}

/// A join-token row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenRow {
    /// Public token id.
    pub id: String,
    /// Hex SHA-256 of the secret part.
    pub secret_sha256: String,
    /// Expiry, ms since the epoch.
    pub expires_at_ms: i64,
    /// Remaining uses.
    pub uses_left: i64,
}

/// An event row.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct EventRow {
    /// When, ms since the epoch.
    pub at_ms: i64,
    /// Object, for example `node/gpu-1`.
    pub object: String,
    /// `Normal` or `Warning`.
    pub kind: String,
    /// Short CamelCase reason.
    pub reason: String,
    /// Human message.
    pub message: String,
}

/// An applied manifest (`objects` table).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectRow {
    /// `Tenant`, `HardwareClass` or `ModelDeployment`.
    pub kind: String,
    /// The tenant of a namespaced kind; empty for cluster-wide kinds.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// The manifest as JSON (re-validated when loaded).
    pub manifest_json: String,
    /// Bumped on every spec change, from 1.
    pub generation: u64,
    /// Creation order across all objects (smaller is older).
    pub seq: u64,
    /// Created at, ms since the epoch.
    pub created_ms: i64,
    /// Last changed at, ms since the epoch.
    pub updated_ms: i64,
}

/// GPU time of one tenant on one hardware class in one hour (`usage` table).
#[derive(Debug, Clone, PartialEq)]
pub struct UsageRecord {
    /// Tenant.
    pub tenant: String,
    /// Hardware class.
    pub hardware_class: String,
    /// Start of the hour, ms since the epoch.
    pub hour_ms: i64,
    /// Device-seconds.
    pub gpu_seconds: f64,
}

/// The SQLite store.
#[derive(Debug)]
pub struct Store {
    conn: Mutex<Connection>,
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS nodes (
    name TEXT PRIMARY KEY,
    cert_fingerprint TEXT NOT NULL,
    facts TEXT,
    cordoned INTEGER NOT NULL DEFAULT 0,
    draining INTEGER NOT NULL DEFAULT 0,
    revoked INTEGER NOT NULL DEFAULT 0,
    joined_at_ms INTEGER NOT NULL,
    last_seen_ms INTEGER
);
CREATE TABLE IF NOT EXISTS join_tokens (
    id TEXT PRIMARY KEY,
    secret_sha256 TEXT NOT NULL,
    expires_at_ms INTEGER NOT NULL,
    uses_left INTEGER NOT NULL,
    created_at_ms INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    at_ms INTEGER NOT NULL,
    object TEXT NOT NULL,
    kind TEXT NOT NULL,
    reason TEXT NOT NULL,
    message TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS events_object ON events(object, id);
CREATE TABLE IF NOT EXISTS desired_state (
    node TEXT PRIMARY KEY,
    generation INTEGER NOT NULL,
    replicas TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS objects (
    kind TEXT NOT NULL,
    namespace TEXT NOT NULL,
    name TEXT NOT NULL,
    manifest TEXT NOT NULL,
    generation INTEGER NOT NULL,
    seq INTEGER NOT NULL,
    created_ms INTEGER NOT NULL,
    updated_ms INTEGER NOT NULL,
    PRIMARY KEY (kind, namespace, name)
);
CREATE TABLE IF NOT EXISTS api_keys (
    id TEXT PRIMARY KEY,
    tenant TEXT NOT NULL,
    name TEXT NOT NULL,
    secret_sha256 TEXT NOT NULL,
    created_ms INTEGER NOT NULL,
    revoked_ms INTEGER
);
CREATE TABLE IF NOT EXISTS usage (
    tenant TEXT NOT NULL,
    hardware_class TEXT NOT NULL,
    hour_ms INTEGER NOT NULL,
    gpu_seconds REAL NOT NULL,
    PRIMARY KEY (tenant, hardware_class, hour_ms)
);
";

impl Store {
    /// Opens (creating if needed) the store file.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
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
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        conn.execute_batch(SCHEMA)?;
        Ok(Self { conn: Mutex::new(conn) })
    }

    fn with<T>(&self, f: impl FnOnce(&mut Connection) -> Result<T, rusqlite::Error>) -> Result<T, StoreError> {
        let mut conn = self.conn.lock().map_err(|_| StoreError::Poisoned)?;
        Ok(f(&mut conn)?)
    }

    /// Reads a meta value.
    pub fn meta(&self, key: &str) -> Result<Option<String>, StoreError> {
        self.with(|c| {
            c.query_row("SELECT value FROM meta WHERE key = ?1", [key], |r| r.get(0))
                .optional()
        })
    }

    /// Writes a meta value.
    pub fn set_meta(&self, key: &str, value: &str) -> Result<(), StoreError> {
        self.with(|c| {
            c.execute(
                "INSERT INTO meta(key, value) VALUES (?1, ?2) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                [key, value],
            )
            .map(|_| ())
        })
    }

    /// All nodes.
    pub fn nodes(&self) -> Result<Vec<NodeRow>, StoreError> {
        self.with(|c| {
            let mut stmt = c.prepare(
                "SELECT name, cert_fingerprint, facts, cordoned, draining, revoked, joined_at_ms, last_seen_ms FROM nodes ORDER BY name",
            )?;
            let rows = stmt.query_map([], |r| {
                Ok(NodeRow {
                    name: r.get(0)?,
                    cert_fingerprint: r.get(1)?,
                    facts_json: r.get(2)?,
                    cordoned: r.get(3)?,
                    draining: r.get(4)?,
                    revoked: r.get(5)?,
                    joined_at_ms: r.get(6)?,
                    last_seen_ms: r.get(7)?,
                })
            })?;
            rows.collect()
        })
    }

    /// Every node's desired replica set: (node, generation, replicas as JSON).
    pub fn desired_states(&self) -> Result<Vec<(String, u64, String)>, StoreError> {
        self.with(|c| {
            let mut stmt = c.prepare("SELECT node, generation, replicas FROM desired_state ORDER BY node")?;
            let rows = stmt.query_map([], |r| {
                Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)? as u64, r.get(2)?))
            })?;
            rows.collect()
        })
    }

    /// Records a node's desired replica set (JSON), replacing the previous one.
    pub fn put_desired_state(&self, node: &str, generation: u64, replicas_json: &str) -> Result<(), StoreError> {
        self.with(|c| {
            c.execute(
                "INSERT INTO desired_state(node, generation, replicas) VALUES (?1, ?2, ?3)
                 ON CONFLICT(node) DO UPDATE SET generation = excluded.generation, replicas = excluded.replicas",
                params![node, generation as i64, replicas_json],
            )
            .map(|_| ())
        })
    }

    /// Every applied manifest, oldest first.
    pub fn objects(&self) -> Result<Vec<ObjectRow>, StoreError> {
        self.with(|c| {
            let mut stmt = c.prepare(
                "SELECT kind, namespace, name, manifest, generation, seq, created_ms, updated_ms FROM objects ORDER BY seq",
            )?;
            let rows = stmt.query_map([], |r| {
                Ok(ObjectRow {
                    kind: r.get(0)?,
                    namespace: r.get(1)?,
                    name: r.get(2)?,
                    manifest_json: r.get(3)?,
                    generation: r.get::<_, i64>(4)? as u64,
                    seq: r.get::<_, i64>(5)? as u64,
                    created_ms: r.get(6)?,
                    updated_ms: r.get(7)?,
                })
            })?;
            rows.collect()
        })
    }

    /// Writes and deletes objects in one transaction: all of them or none.
    pub fn write_objects(&self, upserts: &[ObjectRow], deletes: &[(String, String, String)]) -> Result<(), StoreError> {
        self.with(|c| {
            let tx = c.transaction()?;
            {
                let mut upsert = tx.prepare_cached(
                    "INSERT INTO objects(kind, namespace, name, manifest, generation, seq, created_ms, updated_ms)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)
                     ON CONFLICT(kind, namespace, name) DO UPDATE SET manifest = excluded.manifest,
                         generation = excluded.generation, updated_ms = excluded.updated_ms",
                )?;
                for o in upserts {
                    upsert.execute(params![
                        o.kind,
                        o.namespace,
                        o.name,
                        o.manifest_json,
                        o.generation as i64,
                        o.seq as i64,
                        o.created_ms,
                        o.updated_ms
                    ])?;
                }
                let mut delete =
                    tx.prepare_cached("DELETE FROM objects WHERE kind = ?1 AND namespace = ?2 AND name = ?3")?;
                // A deleted tenant's API keys are revoked with it, in the same transaction:
                // a tenant created again under the name never inherits them.
                let mut revoke =
                    tx.prepare_cached("UPDATE api_keys SET revoked_ms = COALESCE(revoked_ms, ?2) WHERE tenant = ?1")?;
                let now = crate::time::now_ms();
                for (kind, namespace, name) in deletes {
                    delete.execute(params![kind, namespace, name])?;
                    if kind == crate::manifest::Kind::Tenant.as_str() {
                        revoke.execute(params![name, now])?;
                    }
                }
            }
            tx.commit()
        })
    }

    /// Stores a new API key.
    pub fn insert_api_key(&self, row: &crate::apikeys::ApiKeyRow) -> Result<(), StoreError> {
        self.with(|c| {
            c.execute(
                "INSERT INTO api_keys(id, tenant, name, secret_sha256, created_ms, revoked_ms) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![row.id, row.tenant, row.name, row.secret_sha256, row.created_ms, row.revoked_ms],
            )
            .map(|_| ())
        })
    }

    /// API keys, oldest first; only `tenant`'s when given.
    pub fn api_keys(&self, tenant: Option<&str>) -> Result<Vec<crate::apikeys::ApiKeyRow>, StoreError> {
        self.with(|c| {
            let mut stmt = c.prepare(
                "SELECT id, tenant, name, secret_sha256, created_ms, revoked_ms FROM api_keys
                 WHERE ?1 IS NULL OR tenant = ?1 ORDER BY created_ms, id",
            )?;
            let rows = stmt.query_map(params![tenant], api_key_row)?;
            rows.collect()
        })
    }

    /// One API key by id (the gateway's cache reads it on a miss).
    pub fn api_key(&self, id: &str) -> Result<Option<crate::apikeys::ApiKeyRow>, StoreError> {
        self.with(|c| {
            c.query_row(
                "SELECT id, tenant, name, secret_sha256, created_ms, revoked_ms FROM api_keys WHERE id = ?1",
                params![id],
                api_key_row,
            )
            .optional()
        })
    }

    /// Revokes an API key; false when there is no such key. Revoking twice keeps the first time.
    pub fn revoke_api_key(&self, id: &str, now_ms: i64) -> Result<bool, StoreError> {
        self.with(|c| {
            c.execute(
                "UPDATE api_keys SET revoked_ms = COALESCE(revoked_ms, ?2) WHERE id = ?1",
                params![id, now_ms],
            )
            .map(|n| n > 0)
        })
    }

    /// Adds GPU time to the hourly usage records, in one transaction.
    pub fn add_usage(&self, records: &[UsageRecord]) -> Result<(), StoreError> {
        self.with(|c| {
            let tx = c.transaction()?;
            {
                let mut add = tx.prepare_cached(
                    "INSERT INTO usage(tenant, hardware_class, hour_ms, gpu_seconds) VALUES (?1, ?2, ?3, ?4)
                     ON CONFLICT(tenant, hardware_class, hour_ms) DO UPDATE SET gpu_seconds = gpu_seconds + excluded.gpu_seconds",
                )?;
                for r in records {
                    add.execute(params![r.tenant, r.hardware_class, r.hour_ms, r.gpu_seconds])?;
                }
            }
            tx.commit()
        })
    }

    /// GPU-seconds per (tenant, class) in the hours starting at or after `since_hour_ms`,
    /// sorted by tenant then class.
    pub fn usage(&self, since_hour_ms: i64, tenant: Option<&str>) -> Result<Vec<(String, String, f64)>, StoreError> {
        self.with(|c| {
            let mut stmt = c.prepare(
                "SELECT tenant, hardware_class, SUM(gpu_seconds) FROM usage
                 WHERE hour_ms >= ?1 AND (?2 IS NULL OR tenant = ?2)
                 GROUP BY tenant, hardware_class ORDER BY tenant, hardware_class",
            )?;
            let rows = stmt.query_map(params![since_hour_ms, tenant], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?))
            })?;
            rows.collect()
        })
    }

    /// Deletes a node, its desired state and its events.
    pub fn delete_node(&self, name: &str) -> Result<(), StoreError> {
        self.with(|c| {
            c.execute("DELETE FROM desired_state WHERE node = ?1", [name])?;
            c.execute("DELETE FROM nodes WHERE name = ?1", [name])?;
            c.execute("DELETE FROM events WHERE object = ?1", [format!("node/{name}")])
                .map(|_| ())
        })
    }

    /// Records a (re-)enrollment: a new node, or a new certificate for an existing one. The
    /// operator flags of an existing node are left as they are.
    pub fn enroll_node(&self, row: &NodeRow) -> Result<(), StoreError> {
        self.with(|c| {
            c.execute(
                "INSERT INTO nodes(name, cert_fingerprint, facts, cordoned, draining, revoked, joined_at_ms, last_seen_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)
                 ON CONFLICT(name) DO UPDATE SET cert_fingerprint = excluded.cert_fingerprint, joined_at_ms = excluded.joined_at_ms",
                params![
                    row.name,
                    row.cert_fingerprint,
                    row.facts_json,
                    row.cordoned,
                    row.draining,
                    row.revoked,
                    row.joined_at_ms,
                    row.last_seen_ms
                ],
            )
            .map(|_| ())
        })
    }

    /// Updates a node's facts, only while `row.cert_fingerprint` is still its certificate.
    pub fn update_facts(&self, row: &NodeRow) -> Result<(), StoreError> {
        self.with(|c| {
            c.execute(
                "UPDATE nodes SET facts = ?3 WHERE name = ?1 AND cert_fingerprint = ?2",
                params![row.name, row.cert_fingerprint, row.facts_json],
            )
            .map(|_| ())
        })
    }

    /// Updates a node's operator flags (cordon, drain, revoke) and nothing else.
    pub fn set_flags(&self, row: &NodeRow) -> Result<(), StoreError> {
        self.with(|c| {
            c.execute(
                "UPDATE nodes SET cordoned = ?2, draining = ?3, revoked = ?4 WHERE name = ?1",
                params![row.name, row.cordoned, row.draining, row.revoked],
            )
            .map(|_| ())
        })
    }

    /// Writes many last-seen times in one transaction.
    pub fn flush_last_seen(&self, updates: &[(String, i64)]) -> Result<(), StoreError> {
        if updates.is_empty() {
            return Ok(());
        }
        self.with(|c| {
            let tx = c.transaction()?;
            {
                let mut stmt = tx.prepare_cached("UPDATE nodes SET last_seen_ms = ?2 WHERE name = ?1")?;
                for (name, at) in updates {
                    stmt.execute(params![name, at])?;
                }
            }
            tx.commit()
        })
    }

    /// Stores a new join token.
    pub fn insert_token(&self, row: &TokenRow, created_at_ms: i64) -> Result<(), StoreError> {
        self.with(|c| {
            c.execute(
                "INSERT INTO join_tokens(id, secret_sha256, expires_at_ms, uses_left, created_at_ms) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![row.id, row.secret_sha256, row.expires_at_ms, row.uses_left, created_at_ms],
            )
            .map(|_| ())
        })
    }

    /// Reads a join token.
    pub fn token(&self, id: &str) -> Result<Option<TokenRow>, StoreError> {
        self.with(|c| {
            c.query_row(
                "SELECT id, secret_sha256, expires_at_ms, uses_left FROM join_tokens WHERE id = ?1",
                [id],
                |r| {
                    Ok(TokenRow {
                        id: r.get(0)?,
                        secret_sha256: r.get(1)?,
                        expires_at_ms: r.get(2)?,
                        uses_left: r.get(3)?,
                    })
                },
            )
            .optional()
        })
    }

    /// All join tokens with their creation time (ms), oldest first.
    pub fn tokens(&self) -> Result<Vec<(TokenRow, i64)>, StoreError> {
        self.with(|c| {
            let mut stmt = c.prepare(
                "SELECT id, secret_sha256, expires_at_ms, uses_left, created_at_ms FROM join_tokens ORDER BY created_at_ms, id",
            )?;
            let rows = stmt.query_map([], |r| {
                Ok((
                    TokenRow { id: r.get(0)?, secret_sha256: r.get(1)?, expires_at_ms: r.get(2)?, uses_left: r.get(3)? },
                    r.get(4)?,
                ))
            })?;
            rows.collect()
        })
    }

    /// Deletes a join token; returns whether it existed.
    pub fn delete_token(&self, id: &str) -> Result<bool, StoreError> {
        self.with(|c| c.execute("DELETE FROM join_tokens WHERE id = ?1", [id]).map(|n| n > 0))
    }

    /// Consumes one use of a token if any is left; returns the uses left after, or `None`
    /// if none was left. Atomic with respect to concurrent enrollments.
    pub fn consume_token(&self, id: &str) -> Result<Option<i64>, StoreError> {
        self.with(|c| {
            let changed = c.execute(
                "UPDATE join_tokens SET uses_left = uses_left - 1 WHERE id = ?1 AND uses_left > 0",
                [id],
            )?;
            if changed == 0 {
                return Ok(None);
            }
            c.query_row("SELECT uses_left FROM join_tokens WHERE id = ?1", [id], |r| r.get(0))
                .optional()
        })
    }

    /// Deletes tokens that expired before `now_ms` or are used up.
    pub fn prune_tokens(&self, now_ms: i64) -> Result<usize, StoreError> {
        self.with(|c| {
            c.execute(
                "DELETE FROM join_tokens WHERE expires_at_ms < ?1 OR uses_left <= 0",
                [now_ms],
            )
        })
    }

    /// Appends an event, keeping at most 100 per object.
    pub fn add_event(&self, event: &EventRow) -> Result<(), StoreError> {
        self.add_events(std::slice::from_ref(event))
    }

    /// Appends events in one transaction, keeping at most 100 per object.
    pub fn add_events(&self, events: &[EventRow]) -> Result<(), StoreError> {
        self.with(|c| {
            let tx = c.transaction()?;
            {
                let mut insert = tx.prepare_cached(
                    "INSERT INTO events(at_ms, object, kind, reason, message) VALUES (?1, ?2, ?3, ?4, ?5)",
                )?;
                for e in events {
                    insert.execute(params![e.at_ms, e.object, e.kind, e.reason, e.message])?;
                }
                let mut trim = tx.prepare_cached(
                    "DELETE FROM events WHERE object = ?1 AND id NOT IN (SELECT id FROM events WHERE object = ?1 ORDER BY id DESC LIMIT 100)",
                )?;
                let mut objects: Vec<&str> = events.iter().map(|e| e.object.as_str()).collect();
                objects.sort_unstable();
                objects.dedup();
                for object in objects {
                    trim.execute([object])?;
                }
            }
            tx.commit()
        })
    }

    /// The latest events of an object, oldest first.
    pub fn events(&self, object: &str, limit: usize) -> Result<Vec<EventRow>, StoreError> {
        self.with(|c| {
            let mut stmt = c.prepare(
                "SELECT at_ms, object, kind, reason, message FROM (SELECT * FROM events WHERE object = ?1 ORDER BY id DESC LIMIT ?2) ORDER BY id",
            )?;
            let rows = stmt.query_map(params![object, limit as i64], |r| {
                Ok(EventRow { at_ms: r.get(0)?, object: r.get(1)?, kind: r.get(2)?, reason: r.get(3)?, message: r.get(4)? })
            })?;
            rows.collect()
        })
    }
}

/// An `api_keys` row selected as `id, tenant, name, secret_sha256, created_ms, revoked_ms`.
fn api_key_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<crate::apikeys::ApiKeyRow> {
    Ok(crate::apikeys::ApiKeyRow {
        id: r.get(0)?,
        tenant: r.get(1)?,
        name: r.get(2)?,
        secret_sha256: r.get(3)?,
        created_ms: r.get(4)?,
        revoked_ms: r.get(5)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nodes_tokens_and_events_persist() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pyxis.db");
        {
            let store = Store::open(&path).unwrap();
            store
                .enroll_node(&NodeRow {
                    name: "n1".into(),
                    cert_fingerprint: "ab".into(),
                    facts_json: None,
                    cordoned: true,
                    draining: false,
                    revoked: false,
                    joined_at_ms: 5,
                    last_seen_ms: None,
                })
                .unwrap();
            store.flush_last_seen(&[("n1".into(), 99)]).unwrap();
            store
                .insert_token(
                    &TokenRow {
                        id: "abc".into(),
                        secret_sha256: "h".into(),
                        expires_at_ms: 10,
                        uses_left: 2,
                    },
                    1,
                )
                .unwrap();
            assert_eq!(store.consume_token("abc").unwrap(), Some(1));
            assert_eq!(store.consume_token("abc").unwrap(), Some(0));
            assert_eq!(store.consume_token("abc").unwrap(), None);
            for i in 0..120 {
                store
                    .add_event(&EventRow {
                        at_ms: i,
                        object: "node/n1".into(),
                        kind: "Normal".into(),
                        reason: "R".into(),
                        message: format!("m{i}"),
                    })
                    .unwrap();
            }
        }
        let store = Store::open(&path).unwrap();
        let key = crate::apikeys::create("research", "ci", 7).unwrap();
        store.insert_api_key(&key.row).unwrap();
        assert!(store.revoke_api_key(&key.row.id, 9).unwrap());
        assert!(store.revoke_api_key(&key.row.id, 10).unwrap());
        assert!(!store.revoke_api_key("nope", 10).unwrap());
        let keys = store.api_keys(Some("research")).unwrap();
        assert_eq!(keys.len(), 1);
        assert_eq!(keys[0].revoked_ms, Some(9), "revoking again keeps the first time");
        assert!(store.api_keys(Some("other")).unwrap().is_empty());
        // Deleting a tenant revokes its keys (and only its keys), in the same write.
        let kept = crate::apikeys::create("product", "ci", 7).unwrap();
        let gone = crate::apikeys::create("research", "second", 7).unwrap();
        store.insert_api_key(&kept.row).unwrap();
        store.insert_api_key(&gone.row).unwrap();
        store
            .write_objects(&[], &[("Tenant".into(), String::new(), "research".into())])
            .unwrap();
        assert!(store.api_key(&gone.row.id).unwrap().unwrap().revoked_ms.is_some());
        assert_eq!(store.api_key(&key.row.id).unwrap().unwrap().revoked_ms, Some(9));
        assert_eq!(store.api_key(&kept.row.id).unwrap().unwrap().revoked_ms, None);
        let nodes = store.nodes().unwrap();
        assert_eq!(nodes.len(), 1);
        assert!(nodes[0].cordoned);
        assert_eq!(nodes[0].last_seen_ms, Some(99));
        let events = store.events("node/n1", 3).unwrap();
        assert_eq!(
            events.iter().map(|e| e.message.as_str()).collect::<Vec<_>>(),
            vec!["m117", "m118", "m119"]
        );
        assert_eq!(store.prune_tokens(100).unwrap(), 1);
    }
}
