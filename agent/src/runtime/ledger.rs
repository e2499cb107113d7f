//! The replica ledger, `DATA_DIR/replicas.json`: what the supervisor was told to run and
//! which processes it runs, so that an agent that restarts (or crashes) adopts its runtimes
//! instead of starting them twice or leaving them orphaned.
//!
//! Written atomically (temporary file, fsync, rename; mode 0600) after every change of the
//! desired state and right after every spawn, before the supervisor does anything else.
//! Each process is named by pid *and* start time (field 22 of `/proc/PID/stat`), so a pid
//! reused by an unrelated process after a reboot or a long outage is never adopted.
//!
//! The process records are this module's own types, read one by one: a record that cannot
//! be read is reported and skipped (the supervisor finds its runtime by working directory
//! and stops it), and a desired state that no longer parses (an agent upgrade that changed
//! the replica spec) does not hide the processes, which are then stopped rather than
//! forgotten. Restart bookkeeping (`restarts`) is optional, for files written before it.

use std::{
    collections::BTreeMap,
    fs,
    io::{self, Write},
    path::{Path, PathBuf},
};

use pyxis_protocol::{DesiredState, ReplicaSpec};
use serde::{Deserialize, Serialize};

/// File name under the data directory.
pub const FILE_NAME: &str = "replicas.json";

/// Version of the file format.
pub const FORMAT_VERSION: u32 = 1;

/// One running replica process.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessRecord {
    /// Main process id.
    pub pid: u32,
    /// Process group id (the main process leads its group).
    pub pgid: u32,
    /// Start time of the main process in clock ticks after boot.
    pub start_time: u64,
    /// Reserved ports.
    pub ports: Vec<u16>,
    /// [`spec_hash`] of the spec it runs.
    pub spec_hash: String,
    /// Wall-clock start, milliseconds since the Unix epoch.
    pub started_at_unix_ms: u64,
    /// cgroup directory, when cgroups are used.
    #[serde(default)]
    pub cgroup: Option<PathBuf>,
    /// Restarts of the replica so far (carried over to the adopting agent).
    #[serde(default)]
    pub restarts: u32,
    /// Time to ready of this run, once known.
    #[serde(default)]
    pub ready_after_ms: Option<u64>,
    /// Deployment of the spec it runs (shown while an adopted runtime whose spec is no
    /// longer known is stopped).
    #[serde(default)]
    pub deployment: String,
    /// Tenant of the spec it runs.
    #[serde(default)]
    pub tenant: String,
    /// Runtime kind of the spec it runs.
    #[serde(default)]
    pub runtime_kind: String,
}

/// A replica's restart bookkeeping, kept for every desired replica (running or waiting to
/// restart), so that an agent restart neither resets the restart count nor relaunches a
/// crash-looping replica before its backoff is over.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestartRecord {
    /// Restarts so far.
    #[serde(default)]
    pub restarts: u32,
    /// Failures in a row (the backoff step and the CrashLoop threshold follow it).
    #[serde(default)]
    pub failures: u32,
    /// When the next start is due, milliseconds since the Unix epoch (while waiting).
    #[serde(default)]
    pub next_attempt_unix_ms: Option<u64>,
    /// How the last run ended.
    #[serde(default)]
    pub last_exit: Option<String>,
}

/// The whole ledger.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Ledger {
    /// Format version.
    pub version: u32,
    /// The desired state applied last (`None`: none yet, or reset by stopping every replica).
    pub desired: Option<DesiredState>,
    /// Running processes by replica name.
    pub processes: BTreeMap<String, ProcessRecord>,
    /// Restart bookkeeping by replica name (absent from files written before it existed).
    pub restarts: BTreeMap<String, RestartRecord>,
}

/// What [`load`] found, with what it could not read.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Loaded {
    /// The ledger (empty when there was no file).
    pub ledger: Ledger,
    /// Why the desired state could not be read, when it could not.
    pub desired_unreadable: Option<String>,
    /// Records that could not be read, with why.
    pub unreadable: Vec<(String, String)>,
    /// Why the restart bookkeeping could not be read, when it could not (counts start over).
    pub restarts_unreadable: Option<String>,
}

/// Why the ledger could not be used.
#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    /// The file exists but cannot be read.
    #[error("cannot read the replica ledger {path}: {source}")]
    Read {
        /// File.
        path: PathBuf,
        /// Cause.
        source: io::Error,
    },
    /// The file is not a ledger at all (not JSON, or not an object with `processes`).
    #[error("the replica ledger {path} is corrupt ({reason})")]
    Corrupt {
        /// File.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// Writing failed.
    #[error("cannot write the replica ledger {path}: {action}: {source}")]
    Write {
        /// File.
        path: PathBuf,
        /// Which step.
        action: &'static str,
        /// Cause.
        source: io::Error,
    },
}

/// Path of the ledger in `data_dir`.
pub fn path(data_dir: &Path) -> PathBuf {
    data_dir.join(FILE_NAME)
}

/// A stable digest of a spec (hex SHA-256 of its JSON form): equal specs, equal hashes.
pub fn spec_hash(spec: &ReplicaSpec) -> String {
    let json = serde_json::to_vec(spec).unwrap_or_default();
    hex::encode(ring::digest::digest(&ring::digest::SHA256, &json).as_ref())
}

/// Loads the ledger; a missing file is an empty ledger.
pub fn load(data_dir: &Path) -> Result<Loaded, LedgerError> {
    let path = path(data_dir);
    let text = match fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Loaded::default()),
        Err(source) => return Err(LedgerError::Read { path, source }),
    };
    parse(&path, &text)
}

/// Parses ledger text (`path` only names it in errors).
pub fn parse(path: &Path, text: &str) -> Result<Loaded, LedgerError> {
    let corrupt = |reason: String| LedgerError::Corrupt {
        path: path.to_path_buf(),
        reason,
    };
    let value: serde_json::Value = serde_json::from_str(text).map_err(|e| corrupt(e.to_string()))?;
    let object = value.as_object().ok_or_else(|| corrupt("not a JSON object".into()))?;
    let version = object.get("version").and_then(|v| v.as_u64()).unwrap_or(0);
    if version > u64::from(FORMAT_VERSION) {
        return Err(corrupt(format!(
            "format version {version} is newer than this agent's {FORMAT_VERSION} (was the agent downgraded?)"
        )));
    }
    let records = object
        .get("processes")
        .and_then(|p| p.as_object())
        .ok_or_else(|| corrupt("no `processes` object".into()))?;
    let mut loaded = Loaded::default();
    loaded.ledger.version = FORMAT_VERSION;
    for (name, record) in records {
        match serde_json::from_value::<ProcessRecord>(record.clone()) {
            Ok(record) => {
                loaded.ledger.processes.insert(name.clone(), record);
            }
            Err(e) => loaded.unreadable.push((name.clone(), e.to_string())),
        }
    }
    if let Some(restarts) = object.get("restarts") {
        match serde_json::from_value::<BTreeMap<String, RestartRecord>>(restarts.clone()) {
            Ok(restarts) => loaded.ledger.restarts = restarts,
            Err(e) => loaded.restarts_unreadable = Some(e.to_string()),
        }
    }
    match object.get("desired") {
        None | Some(serde_json::Value::Null) => {}
        Some(desired) => match serde_json::from_value::<DesiredState>(desired.clone()) {
            Ok(desired) => loaded.ledger.desired = Some(desired),
            Err(e) => loaded.desired_unreadable = Some(e.to_string()),
        },
    }
    Ok(loaded)
}

/// Moves a corrupt ledger aside to `replicas.json.corrupt-<unix seconds>` and returns
/// where it went, so the agent can start without it and the file stays for a post-mortem.
pub fn move_aside(data_dir: &Path) -> io::Result<PathBuf> {
    let seconds = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let to = data_dir.join(format!("{FILE_NAME}.corrupt-{seconds}"));
    fs::rename(path(data_dir), &to)?;
    Ok(to)
}

/// Writes the ledger atomically with mode 0600.
pub fn save(data_dir: &Path, ledger: &Ledger) -> Result<(), LedgerError> {
    use std::os::unix::fs::OpenOptionsExt;
    let path = path(data_dir);
    let failed = |action: &'static str, source: io::Error| LedgerError::Write {
        path: path.clone(),
        action,
        source,
    };
    let text = serde_json::to_vec_pretty(ledger).map_err(|e| failed("cannot encode", io::Error::other(e)))?;
    let tmp = data_dir.join(format!("{FILE_NAME}.tmp"));
    match fs::remove_file(&tmp) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(failed("cannot remove a stale temporary file", e)),
    }
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(|e| failed("cannot create the temporary file", e))?;
    file.write_all(&text).map_err(|e| failed("cannot write", e))?;
    file.sync_all().map_err(|e| failed("cannot sync", e))?;
    fs::rename(&tmp, &path).map_err(|e| failed("cannot rename into place", e))?;
    if let Ok(dir) = fs::File::open(data_dir) {
        // Make the rename itself durable.
        let _ = dir.sync_all();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(name: &str) -> ReplicaSpec {
        ReplicaSpec {
            name: name.into(),
            deployment: "d".into(),
            tenant: "t".into(),
            model_name: "m".into(),
            model_version: "1".into(),
            model_source: "/models/m".into(),
            runtime_kind: "vllm".into(),
            runtime_args: vec![],
            gpus: vec![],
            env: vec![],
            readiness_timeout_ms: 0,
            custom: None,
        }
    }

    fn record() -> ProcessRecord {
        ProcessRecord {
            pid: 10,
            pgid: 10,
            start_time: 99,
            ports: vec![20000],
            spec_hash: spec_hash(&spec("a")),
            started_at_unix_ms: 1,
            cgroup: None,
            restarts: 2,
            ready_after_ms: Some(1500),
            deployment: "d".into(),
            tenant: "t".into(),
            runtime_kind: "vllm".into(),
        }
    }

    #[test]
    fn round_trips_atomically_with_mode_0600() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(load(dir.path()).unwrap(), Loaded::default());
        let ledger = Ledger {
            version: FORMAT_VERSION,
            desired: Some(DesiredState {
                generation: 4,
                replicas: vec![spec("a")],
            }),
            processes: BTreeMap::from([("a".to_string(), record())]),
            restarts: BTreeMap::from([(
                "b".to_string(),
                RestartRecord {
                    restarts: 4,
                    failures: 3,
                    next_attempt_unix_ms: Some(123),
                    last_exit: Some("exit code 1".into()),
                },
            )]),
        };
        save(dir.path(), &ledger).unwrap();
        save(dir.path(), &ledger).unwrap();
        let loaded = load(dir.path()).unwrap();
        assert_eq!(loaded.ledger, ledger);
        assert!(loaded.unreadable.is_empty() && loaded.desired_unreadable.is_none());
        let mode = fs::metadata(path(dir.path())).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert!(!dir.path().join("replicas.json.tmp").exists());
    }

    #[test]
    fn unreadable_parts_do_not_hide_the_processes() {
        let p = Path::new("replicas.json");
        let text = r#"{"version":1,"desired":{"generation":"x"},"processes":{
            "a":{"pid":10,"pgid":10,"start_time":99,"ports":[20000],"spec_hash":"h","started_at_unix_ms":1},
            "b":{"pid":"eleven"}}}"#;
        let loaded = parse(p, text).unwrap();
        assert_eq!(loaded.ledger.processes.len(), 1);
        assert_eq!(loaded.ledger.processes["a"].restarts, 0);
        assert!(loaded.desired_unreadable.is_some());
        assert_eq!(loaded.unreadable.len(), 1);
        for bad in ["not json", "[]", "{\"version\":1}", "{\"version\":9,\"processes\":{}}"] {
            assert!(matches!(parse(p, bad), Err(LedgerError::Corrupt { .. })), "{bad}");
        }
    }

    #[test]
    fn equal_specs_hash_equal() {
        let mut other = spec("a");
        assert_eq!(spec_hash(&spec("a")), spec_hash(&other));
        other.env.push(("K".into(), "V".into()));
        assert_ne!(spec_hash(&spec("a")), spec_hash(&other));
    }
}
