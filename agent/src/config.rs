//! Agent configuration: a TOML file and command-line flags, merged (flags win) and
//! validated into [`AgentConfig`] before anything is bound or dialled.

use std::{collections::BTreeMap, net::SocketAddr, path::PathBuf, time::Duration};

use serde::Deserialize;

/// Default agent metrics/health address.
pub const DEFAULT_METRICS_ADDR: &str = "0.0.0.0:9464";
/// Default coordinator QUIC port.
pub const DEFAULT_COORDINATOR_PORT: u16 = 7443;

/// Why a configuration was refused. Each names the key and the reason.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// File path.
        path: PathBuf,
        /// I/O error.
        source: std::io::Error,
    },
    /// The file is not valid TOML for this schema.
    #[error("invalid config file {path}: {reason}")]
    Parse {
        /// File path.
        path: PathBuf,
        /// Parser message (names the key and line).
        reason: String,
    },
    /// A key has an invalid value.
    #[error("invalid value for `{key}`: {reason}")]
    Invalid {
        /// Config key (flag names are given in the reason).
        key: &'static str,
        /// What is wrong and what is expected.
        reason: String,
    },
    /// A required key is missing.
    #[error("missing `{key}`: {hint}")]
    Missing {
        /// Config key.
        key: &'static str,
        /// How to provide it.
        hint: &'static str,
    },
}

/// The agent's TOML file. Every key mirrors a flag.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// Coordinator addresses (`--coordinator`), tried in order.
    pub coordinators: Option<Vec<String>>,
    /// Join token (`--join-token`), needed only for the first start.
    pub join_token: Option<String>,
    /// Pinned CA hash (`--ca-hash`), needed only for the first start.
    pub ca_hash: Option<String>,
    /// Data directory (`--data-dir`).
    pub data_dir: Option<PathBuf>,
    /// Node name (`--name`).
    pub name: Option<String>,
    /// Metrics address (`--metrics-addr`).
    pub metrics_addr: Option<String>,
    /// Simulated devices (`--simulate`).
    pub simulate: Option<String>,
    /// Capacity report interval (`--report-interval`), for example `1s`.
    pub report_interval: Option<String>,
    /// Longest reconnect backoff (`--max-backoff`), for example `30s`.
    pub max_backoff: Option<String>,
    /// Runtime launch commands by kind (`--runtime KIND=COMMAND`).
    pub runtimes: Option<BTreeMap<String, String>>,
    /// Hardware-class overrides: the exact model string a driver reports = the class to
    /// use (config file only).
    pub hardware_classes: Option<BTreeMap<String, String>>,
    /// Path of `libnvidia-ml.so.1` when it is not where the dynamic loader looks (config
    /// file only).
    pub nvml_library: Option<PathBuf>,
    /// GCE metadata base URL, asked for the TPU type when TPU device nodes exist (config
    /// file only).
    pub gce_metadata_url: Option<String>,
    /// Path of `librocm_smi64.so.1` when it is not where the dynamic loader looks (config
    /// file only).
    pub rocm_library: Option<PathBuf>,
    /// Where the host's sysfs is mounted, for an agent in a container (config file only).
    pub sysfs_root: Option<PathBuf>,
    /// Where the host's /dev is mounted, for an agent in a container (config file only).
    pub devfs_root: Option<PathBuf>,
    /// GPU health policy (config file only).
    pub health: Option<crate::health::HealthFile>,
    /// Ports handed to runtimes, `FIRST-LAST` (config file only).
    pub runtime_ports: Option<String>,
    /// Address runtimes bind to (config file only).
    pub runtime_host: Option<String>,
    /// Host name or address in replica endpoints (config file only).
    pub advertise_host: Option<String>,
    /// Time between SIGTERM and SIGKILL when a runtime is stopped (config file only).
    pub stop_grace_period: Option<String>,
    /// Size at which runtime log files are rotated (config file only).
    pub log_max_bytes: Option<u64>,
}

/// Where the host's device files are; `/sys` and `/dev` in production.
#[derive(Debug, Clone)]
pub struct HostPaths {
    /// sysfs root.
    pub sys: PathBuf,
    /// devfs root.
    pub dev: PathBuf,
}

impl Default for HostPaths {
    fn default() -> Self {
        Self {
            sys: PathBuf::from("/sys"),
            dev: PathBuf::from("/dev"),
        }
    }
}

/// Validated agent configuration.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// Coordinator QUIC addresses, in order of preference.
    pub coordinators: Vec<String>,
    /// Join token for enrollment (only needed without a stored identity).
    pub join_token: Option<String>,
    /// Pinned CA hash (only needed without a stored identity).
    pub ca_hash: Option<[u8; 32]>,
    /// Data directory (identity, state).
    pub data_dir: PathBuf,
    /// Node name.
    pub name: String,
    /// Metrics and health listener; `None` disables it.
    pub metrics_addr: Option<SocketAddr>,
    /// `--simulate` specification.
    pub simulate: Option<String>,
    /// Capacity report interval.
    pub report_interval: Duration,
    /// Shortest reconnect backoff.
    pub min_backoff: Duration,
    /// Longest reconnect backoff.
    pub max_backoff: Duration,
    /// Runtime launch commands by kind.
    pub runtimes: BTreeMap<String, String>,
    /// Hardware-class overrides by exact model string.
    pub hardware_classes: BTreeMap<String, String>,
    /// NVML library path override.
    pub nvml_library: Option<PathBuf>,
    /// GCE metadata base URL.
    pub gce_metadata_url: String,
    /// ROCm SMI library path override.
    pub rocm_library: Option<PathBuf>,
    /// Host sysfs and devfs roots.
    pub host_paths: HostPaths,
    /// GPU health policy.
    pub health: crate::health::HealthPolicy,
    /// Runtime supervision: ports, bind and advertised addresses, stop grace period, logs.
    pub supervisor: crate::runtime::supervisor::SupervisorConfig,
}

/// Flag values (all optional: the file or defaults fill the rest).
#[derive(Debug, Default, Clone)]
pub struct FlagConfig {
    /// `--coordinator` (repeatable, or comma separated).
    pub coordinators: Vec<String>,
    /// `--join-token`.
    pub join_token: Option<String>,
    /// `--ca-hash`.
    pub ca_hash: Option<String>,
    /// `--data-dir`.
    pub data_dir: Option<PathBuf>,
    /// `--name`.
    pub name: Option<String>,
    /// `--metrics-addr`.
    pub metrics_addr: Option<String>,
    /// `--simulate`.
    pub simulate: Option<String>,
    /// `--report-interval`.
    pub report_interval: Option<String>,
    /// `--max-backoff`.
    pub max_backoff: Option<String>,
    /// `--runtime KIND=COMMAND`.
    pub runtimes: Vec<String>,
}

/// Parses a duration such as `1s`, `500ms`, `2m`.
pub fn parse_duration(key: &'static str, text: &str) -> Result<Duration, ConfigError> {
    if text.trim().starts_with('-') {
        return Err(ConfigError::Invalid {
            key,
            reason: format!("{text:?} is negative: a duration must be positive, like 1s or 500ms"),
        });
    }
    humantime::parse_duration(text.trim()).map_err(|e| ConfigError::Invalid {
        key,
        reason: format!("{text:?} is not a duration like 1s or 500ms ({e})"),
    })
}

/// Reads and parses a TOML config file.
pub fn read_file(path: &std::path::Path) -> Result<FileConfig, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    parse_file(path, &text)
}

/// Parses TOML text (injectable, for tests).
pub fn parse_file(path: &std::path::Path, text: &str) -> Result<FileConfig, ConfigError> {
    toml::from_str(text).map_err(|e| ConfigError::Parse {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })
}

impl AgentConfig {
    /// Takes the node name from a stored identity (when `name_given` is false) and checks
    /// that the configuration does not contradict it: a different `--name` or a `--ca-hash`
    /// of another cluster is a configuration error, not something to retry forever.
    pub fn adopt_identity(
        &mut self,
        identity: &crate::identity::Identity,
        name_given: bool,
    ) -> Result<(), ConfigError> {
        if name_given && identity.node_name != self.name {
            return Err(ConfigError::Invalid {
                key: "name",
                reason: format!(
                    "{} holds the identity of node {:?}, but the name given is {:?}; drop --name (or pass --name {}), or remove that directory and join again with a new token",
                    crate::identity::Identity::dir(&self.data_dir).display(),
                    identity.node_name,
                    self.name,
                    identity.node_name
                ),
            });
        }
        self.name = identity.node_name.clone();
        if let Some(pin) = self.ca_hash {
            let stored = identity.ca_sha256();
            if stored != Some(pin) {
                return Err(ConfigError::Invalid {
                    key: "ca_hash",
                    reason: format!(
                        "the node identity in {} belongs to another cluster (its CA is {}); to join the cluster of --ca-hash, remove that directory and join again with a token from it, or drop --ca-hash",
                        crate::identity::Identity::dir(&self.data_dir).display(),
                        stored.map(|h| format!("sha256:{}", hex::encode(h))).unwrap_or_else(|| "unreadable".into())
                    ),
                });
            }
        }
        Ok(())
    }

    /// Merges flags over the file and validates everything. `hostname` is the default name.
    pub fn resolve(file: FileConfig, flags: FlagConfig, hostname: &str) -> Result<Self, ConfigError> {
        let mut coordinators: Vec<String> = if flags.coordinators.is_empty() {
            file.coordinators.unwrap_or_default()
        } else {
            flags.coordinators
        };
        coordinators = coordinators
            .iter()
            .flat_map(|c| c.split(','))
            .map(str::trim)
            .filter(|c| !c.is_empty())
            .map(normalize_coordinator)
            .collect::<Result<_, _>>()?;
        if coordinators.is_empty() {
            return Err(ConfigError::Missing {
                key: "coordinators",
                hint:
                    "pass --coordinator HOST:7443 (repeatable) or set coordinators = [\"HOST:7443\"] in the config file",
            });
        }
        let data_dir = flags.data_dir.or(file.data_dir).ok_or(ConfigError::Missing {
            key: "data_dir",
            hint: "pass --data-dir DIR (for example /var/lib/pyxis-agent) or set data_dir in the config file",
        })?;
        let name = flags.name.or(file.name).unwrap_or_else(|| hostname.to_string());
        validate_node_name(&name)?;
        let ca_hash = match flags.ca_hash.or(file.ca_hash) {
            Some(text) => Some(
                pyxis_transport::pki::parse_ca_hash(&text).map_err(|e| ConfigError::Invalid {
                    key: "ca_hash",
                    reason: e.to_string(),
                })?,
            ),
            None => None,
        };
        let join_token = flags
            .join_token
            .or(file.join_token)
            .map(|t| t.trim().to_string())
            .filter(|t| !t.is_empty());
        let metrics_addr = match flags.metrics_addr.or(file.metrics_addr).as_deref() {
            Some("" | "off" | "none") => None,
            Some(text) => Some(text.parse().map_err(|e| ConfigError::Invalid {
                key: "metrics_addr",
                reason: format!("{text:?} is not an address like 0.0.0.0:9464 ({e}); use \"off\" to disable"),
            })?),
            None => Some(DEFAULT_METRICS_ADDR.parse().map_err(|_| ConfigError::Invalid {
                key: "metrics_addr",
                reason: "built-in default does not parse".into(),
            })?),
        };
        let report_interval = match flags.report_interval.or(file.report_interval) {
            Some(text) => parse_duration("report_interval", &text)?,
            None => Duration::from_secs(1),
        };
        if report_interval < Duration::from_millis(50) || report_interval > Duration::from_secs(60) {
            return Err(ConfigError::Invalid {
                key: "report_interval",
                reason: format!("{report_interval:?} is outside 50ms..=60s"),
            });
        }
        let max_backoff = match flags.max_backoff.or(file.max_backoff) {
            Some(text) => parse_duration("max_backoff", &text)?,
            None => Duration::from_secs(30),
        };
        if max_backoff < Duration::from_millis(100) {
            return Err(ConfigError::Invalid {
                key: "max_backoff",
                reason: format!("{max_backoff:?} is below 100ms; reconnecting that fast would hammer the coordinator"),
            });
        }
        let min_backoff = Duration::from_millis(200).min(max_backoff);
        let simulate = flags.simulate.or(file.simulate).filter(|s| !s.trim().is_empty());
        if let Some(spec) = &simulate {
            crate::devices::parse_simulate(spec, &name).map_err(|e| ConfigError::Invalid {
                key: "simulate",
                reason: e.to_string(),
            })?;
        }
        let mut runtimes = file.runtimes.unwrap_or_default();
        for entry in flags.runtimes {
            let (kind, command) = entry.split_once('=').ok_or_else(|| ConfigError::Invalid {
                key: "runtimes",
                reason: format!("--runtime {entry:?} is not KIND=COMMAND (for example vllm=/opt/vllm/bin/vllm)"),
            })?;
            runtimes.insert(kind.trim().to_string(), command.trim().to_string());
        }
        for (kind, command) in &runtimes {
            if !crate::RUNTIME_KINDS.contains(&kind.as_str()) {
                return Err(ConfigError::Invalid {
                    key: "runtimes",
                    reason: format!(
                        "unknown runtime kind {kind:?}; known: {}",
                        crate::RUNTIME_KINDS.join(", ")
                    ),
                });
            }
            if command.is_empty() {
                return Err(ConfigError::Invalid {
                    key: "runtimes",
                    reason: format!("empty command for {kind}"),
                });
            }
        }
        let hardware_classes = file.hardware_classes.unwrap_or_default();
        for (model, class) in &hardware_classes {
            if model.trim().is_empty() || class.trim().is_empty() || class.contains(char::is_whitespace) {
                return Err(ConfigError::Invalid {
                    key: "hardware_classes",
                    reason: format!("{model:?} = {class:?}: both must be non-empty and the class has no spaces"),
                });
            }
        }
        for (key, path) in [
            ("nvml_library", &file.nvml_library),
            ("rocm_library", &file.rocm_library),
            ("sysfs_root", &file.sysfs_root),
            ("devfs_root", &file.devfs_root),
        ] {
            if path.as_ref().is_some_and(|p| p.as_os_str().is_empty()) {
                return Err(ConfigError::Invalid {
                    key,
                    reason: "is empty; leave the key out to use the default".into(),
                });
            }
        }
        for (key, path) in [("sysfs_root", &file.sysfs_root), ("devfs_root", &file.devfs_root)] {
            if let Some(path) = path {
                if !path.is_dir() {
                    return Err(ConfigError::Invalid {
                        key,
                        reason: format!("{} is not a directory", path.display()),
                    });
                }
            }
        }
        Ok(Self {
            coordinators,
            join_token,
            ca_hash,
            data_dir,
            name,
            metrics_addr,
            simulate,
            report_interval,
            min_backoff,
            max_backoff,
            runtimes,
            hardware_classes,
            nvml_library: file.nvml_library,
            gce_metadata_url: file
                .gce_metadata_url
                .unwrap_or_else(|| crate::tpu::DEFAULT_METADATA_URL.to_string()),
            rocm_library: file.rocm_library,
            host_paths: HostPaths {
                sys: file.sysfs_root.unwrap_or_else(|| "/sys".into()),
                dev: file.devfs_root.unwrap_or_else(|| "/dev".into()),
            },
            health: crate::health::HealthPolicy::from_file(file.health.unwrap_or_default())?,
            supervisor: resolve_supervisor(
                file.runtime_ports,
                file.runtime_host,
                file.advertise_host,
                file.stop_grace_period,
                file.log_max_bytes,
            )?,
        })
    }
}

/// The supervisor's keys, checked; defaults for those left out.
fn resolve_supervisor(
    runtime_ports: Option<String>,
    runtime_host: Option<String>,
    advertise_host: Option<String>,
    stop_grace_period: Option<String>,
    log_max_bytes: Option<u64>,
) -> Result<crate::runtime::supervisor::SupervisorConfig, ConfigError> {
    let mut config = crate::runtime::supervisor::SupervisorConfig::default();
    if let Some(text) = runtime_ports {
        config.runtime_ports = parse_port_range(&text).ok_or_else(|| ConfigError::Invalid {
            key: "runtime_ports",
            reason: format!(
                "{text:?} is not a port range FIRST-LAST such as \"20000-20999\" (1 <= FIRST <= LAST <= 65535)"
            ),
        })?;
    }
    if let Some(text) = runtime_host {
        config.runtime_host = text.trim().parse().map_err(|e| ConfigError::Invalid {
            key: "runtime_host",
            reason: format!("{text:?} is not an IP address such as 0.0.0.0, :: or 10.0.0.5 ({e})"),
        })?;
    }
    if let Some(text) = advertise_host {
        let host = text.trim();
        let bare = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host);
        if bare.is_empty() || bare.contains(|c: char| c.is_whitespace() || "/?#@[]".contains(c)) {
            return Err(ConfigError::Invalid {
                key: "advertise_host",
                reason: format!("{text:?} is not a host name or IP address; leave the key out to use this host's name"),
            });
        }
        config.advertise_host = Some(bare.to_string());
    }
    if let Some(text) = stop_grace_period {
        config.stop_grace_period = parse_duration("stop_grace_period", &text)?;
        if config.stop_grace_period > Duration::from_secs(3600) {
            return Err(ConfigError::Invalid {
                key: "stop_grace_period",
                reason: format!("{text:?} is longer than 1h"),
            });
        }
    }
    if let Some(bytes) = log_max_bytes {
        if bytes < 64 * 1024 {
            return Err(ConfigError::Invalid {
                key: "log_max_bytes",
                reason: format!("{bytes} is below 65536 (64 KiB)"),
            });
        }
        config.log_max_bytes = bytes;
    }
    Ok(config)
}

/// `FIRST-LAST`, both inclusive, 1 <= FIRST <= LAST.
fn parse_port_range(text: &str) -> Option<(u16, u16)> {
    let (first, last) = text.trim().split_once('-')?;
    let first: u16 = first.trim().parse().ok()?;
    let last: u16 = last.trim().parse().ok()?;
    (first >= 1 && first <= last).then_some((first, last))
}

/// Checks a coordinator address and adds the default port where it is missing:
/// `host`, `host:7443`, `10.0.0.5`, `[::1]`, `[::1]:7443`.
pub fn normalize_coordinator(text: &str) -> Result<String, ConfigError> {
    let invalid = |why: &str| ConfigError::Invalid {
        key: "coordinators",
        reason: format!("--coordinator {text:?} {why}; expected HOST:PORT such as 10.0.0.5:7443 or [fd00::5]:7443"),
    };
    if text.parse::<std::net::SocketAddr>().is_ok() {
        return Ok(text.to_string());
    }
    let bare = text.strip_prefix('[').and_then(|t| t.strip_suffix(']')).unwrap_or(text);
    if let Ok(ip) = bare.parse::<std::net::IpAddr>() {
        return Ok(std::net::SocketAddr::new(ip, DEFAULT_COORDINATOR_PORT).to_string());
    }
    if text.starts_with('[') {
        return Err(invalid("is not a valid bracketed IPv6 address"));
    }
    let (host, port) = match text.rsplit_once(':') {
        Some((host, port)) => (host, Some(port)),
        None => (text, None),
    };
    if host.is_empty() || host.contains(':') || host.contains(char::is_whitespace) || host.contains('/') {
        return Err(invalid("has an invalid host"));
    }
    let port = match port {
        Some(port) => port
            .parse::<u16>()
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| invalid("has an invalid port"))?,
        None => DEFAULT_COORDINATOR_PORT,
    };
    Ok(format!("{host}:{port}"))
}

/// Node names follow DNS label rules (lower-case letters, digits, `-`, `.`), 1-253 chars.
pub fn validate_node_name(name: &str) -> Result<(), ConfigError> {
    let ok = !name.is_empty()
        && name.len() <= 253
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.')
        && !name.starts_with(['-', '.'])
        && !name.ends_with(['-', '.']);
    if ok {
        Ok(())
    } else {
        Err(ConfigError::Invalid {
            key: "name",
            reason: format!(
                "{name:?} is not a valid node name: use lower-case letters, digits, '-' and '.', at most 253 characters (pass --name)"
            ),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flags() -> FlagConfig {
        FlagConfig {
            coordinators: vec!["10.0.0.1:7443,10.0.0.2".into()],
            data_dir: Some("/tmp/agent".into()),
            ..FlagConfig::default()
        }
    }

    #[test]
    fn negative_durations_say_they_must_be_positive() {
        let err = parse_duration("stop_grace_period", "-1s").unwrap_err().to_string();
        assert!(err.contains("must be positive"), "{err}");
        assert!(!err.contains("expected number"), "{err}");
    }

    #[test]
    fn flags_override_file_and_defaults_apply() {
        let file = parse_file(
            "a.toml".as_ref(),
            "coordinators = [\"file:7443\"]\nname = \"from-file\"\nreport_interval = \"2s\"\n[runtimes]\nvllm = \"/opt/vllm\"\n",
        )
        .unwrap();
        let config = AgentConfig::resolve(file, flags(), "host-1").unwrap();
        assert_eq!(config.coordinators, vec!["10.0.0.1:7443", "10.0.0.2:7443"]);
        assert_eq!(config.name, "from-file");
        assert_eq!(config.report_interval, Duration::from_secs(2));
        assert_eq!(config.runtimes.get("vllm").map(String::as_str), Some("/opt/vllm"));
        assert_eq!(config.metrics_addr, Some("0.0.0.0:9464".parse().unwrap()));
        assert_eq!(
            config.supervisor,
            crate::runtime::supervisor::SupervisorConfig::default()
        );
    }

    #[test]
    fn supervisor_keys_are_checked() {
        let file = parse_file(
            "a.toml".as_ref(),
            "runtime_ports = \"30000-30009\"\nruntime_host = \"::\"\nadvertise_host = \"[fd00::5]\"\nstop_grace_period = \"5s\"\nlog_max_bytes = 1048576\n",
        )
        .unwrap();
        let config = AgentConfig::resolve(file, flags(), "h").unwrap().supervisor;
        assert_eq!(config.runtime_ports, (30000, 30009));
        assert_eq!(config.runtime_host, "::".parse::<std::net::IpAddr>().unwrap());
        assert_eq!(config.advertise_host.as_deref(), Some("fd00::5"));
        assert_eq!(config.stop_grace_period, Duration::from_secs(5));
        assert_eq!(config.log_max_bytes, 1 << 20);
        for (text, key) in [
            ("runtime_ports = \"20999-20000\"", "runtime_ports"),
            ("runtime_ports = \"0-10\"", "runtime_ports"),
            ("runtime_ports = \"20000\"", "runtime_ports"),
            ("runtime_host = \"localhost\"", "runtime_host"),
            ("advertise_host = \"http://x\"", "advertise_host"),
            ("stop_grace_period = \"2h\"", "stop_grace_period"),
            ("log_max_bytes = 10", "log_max_bytes"),
        ] {
            let file = parse_file("a.toml".as_ref(), text).unwrap();
            let err = AgentConfig::resolve(file, flags(), "h").unwrap_err().to_string();
            assert!(err.contains(key), "{text}: {err}");
        }
    }

    #[test]
    fn coordinator_addresses_are_checked_and_completed() {
        for (given, expected) in [
            ("10.0.0.1:7000", "10.0.0.1:7000"),
            ("10.0.0.1", "10.0.0.1:7443"),
            ("[::1]", "[::1]:7443"),
            ("::1", "[::1]:7443"),
            ("[::1]:9", "[::1]:9"),
            ("coord.example", "coord.example:7443"),
            ("coord.example:8443", "coord.example:8443"),
        ] {
            assert_eq!(normalize_coordinator(given).unwrap(), expected, "{given}");
        }
        for bad in [
            "host:notaport",
            "127.0.0.1:99999",
            "host:0",
            ":7443",
            "[::1",
            "http://x:1",
        ] {
            let err = normalize_coordinator(bad).unwrap_err().to_string();
            assert!(err.contains("coordinators"), "{bad}: {err}");
        }
    }

    #[test]
    fn errors_name_the_key() {
        let err = parse_file("a.toml".as_ref(), "coordinator = \"x\"").unwrap_err();
        assert!(err.to_string().contains("unknown field `coordinator`"), "{err}");
        let mut f = flags();
        f.ca_hash = Some("md5:abc".into());
        let err = AgentConfig::resolve(FileConfig::default(), f, "h").unwrap_err();
        assert!(err.to_string().contains("ca_hash"), "{err}");
        let mut f = flags();
        f.name = Some("Bad_Name".into());
        assert!(AgentConfig::resolve(FileConfig::default(), f, "h")
            .unwrap_err()
            .to_string()
            .contains("name"));
        let mut f = flags();
        f.runtimes = vec!["nonsense".into()];
        assert!(AgentConfig::resolve(FileConfig::default(), f, "h")
            .unwrap_err()
            .to_string()
            .contains("KIND=COMMAND"));
        let mut f = flags();
        f.max_backoff = Some("0s".into());
        assert!(AgentConfig::resolve(FileConfig::default(), f, "h")
            .unwrap_err()
            .to_string()
            .contains("max_backoff"));
        let mut f = flags();
        f.simulate = Some("3xFOO".into());
        assert!(AgentConfig::resolve(FileConfig::default(), f, "h")
            .unwrap_err()
            .to_string()
            .contains("simulate"));
        let f = FlagConfig {
            data_dir: Some("/x".into()),
            ..FlagConfig::default()
        };
        assert!(matches!(
            AgentConfig::resolve(FileConfig::default(), f, "h"),
            Err(ConfigError::Missing {
                key: "coordinators",
                ..
            })
        ));
    }
}
