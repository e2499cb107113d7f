//! Coordinator configuration: TOML file and flags merged (flags win), validated into
//! [`CoordinatorConfig`] before any port is bound.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use serde::Deserialize;

pub use pyxis_agent::config::{parse_duration, ConfigError};

/// The coordinator's TOML file. Every key mirrors a flag.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// `--data-dir`.
    pub data_dir: Option<PathBuf>,
    /// `--quic-addr`.
    pub quic_addr: Option<String>,
    /// `--api-addr`.
    pub api_addr: Option<String>,
    /// `--gateway-addr`.
    pub gateway_addr: Option<String>,
    /// `--liveness-timeout`, for example `10s`.
    pub liveness_timeout: Option<String>,
    /// `--report-interval`, for example `1s`.
    pub report_interval: Option<String>,
    /// `--cluster-name`.
    pub cluster_name: Option<String>,
    /// `[tls]` table.
    pub tls: Option<TlsFileConfig>,
    /// `[gateway]` table.
    pub gateway: Option<GatewayFileConfig>,
}

/// `[gateway]`: the OpenAI-compatible gateway, its audit log and traces.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GatewayFileConfig {
    /// `--audit-mode`: `required` or `best-effort`.
    pub audit_mode: Option<String>,
    /// Audit records queued for the writer before calls are refused (required) or records
    /// dropped (best-effort).
    pub audit_queue: Option<usize>,
    /// `--otlp-endpoint`.
    pub otlp_endpoint: Option<String>,
    /// How long a call to a deployment scaled to zero waits for a replica, for example `5m`.
    pub scale_from_zero_timeout: Option<String>,
    /// Idle time after which a `warm-zero`/`hot-zero` deployment with `min: 0` scales to zero.
    pub scale_to_zero_after: Option<String>,
    /// The longest a replica may send nothing: before its answer's headers, and between
    /// chunks of its answer, for example `10m`.
    pub upstream_timeout: Option<String>,
}

/// `[tls]`: use an existing CA instead of generating one.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsFileConfig {
    /// `--ca-cert`: CA certificate PEM.
    pub ca_cert: Option<PathBuf>,
    /// `--ca-key`: CA private key PEM (PKCS#8).
    pub ca_key: Option<PathBuf>,
}

/// Flag values.
#[derive(Debug, Default, Clone)]
pub struct FlagConfig {
    /// `--data-dir`.
    pub data_dir: Option<PathBuf>,
    /// `--quic-addr`.
    pub quic_addr: Option<String>,
    /// `--api-addr`.
    pub api_addr: Option<String>,
    /// `--gateway-addr`.
    pub gateway_addr: Option<String>,
    /// `--liveness-timeout`.
    pub liveness_timeout: Option<String>,
    /// `--report-interval`.
    pub report_interval: Option<String>,
    /// `--cluster-name`.
    pub cluster_name: Option<String>,
    /// `--ca-cert`.
    pub ca_cert: Option<PathBuf>,
    /// `--ca-key`.
    pub ca_key: Option<PathBuf>,
    /// `--audit-mode`.
    pub audit_mode: Option<String>,
    /// `--otlp-endpoint`.
    pub otlp_endpoint: Option<String>,
}

/// Validated configuration.
#[derive(Debug, Clone)]
pub struct CoordinatorConfig {
    /// Data directory (store, CA, admin token).
    pub data_dir: PathBuf,
    /// QUIC agent-link address.
    pub quic_addr: SocketAddr,
    /// Admin API address.
    pub api_addr: SocketAddr,
    /// Gateway address (served from the gateway release on).
    pub gateway_addr: SocketAddr,
    /// A node is `NotReady` when it has not reported for this long.
    pub liveness_timeout: Duration,
    /// Capacity report interval asked of agents.
    pub report_interval: Duration,
    /// Cluster name (in the CA subject).
    pub cluster_name: String,
    /// Existing CA certificate and key, if configured.
    pub ca_files: Option<(PathBuf, PathBuf)>,
    /// Whether the reconciler places replicas from the applied manifests and owns every
    /// node's desired state (always, for a daemon). Library users that set desired states
    /// by hand ([`crate::server::Coordinator::set_desired`], in tests) turn it off.
    pub reconcile: bool,
    /// Gateway settings.
    pub gateway: GatewayConfig,
}

/// Validated `[gateway]` settings.
#[derive(Debug, Clone)]
pub struct GatewayConfig {
    /// What to do when audit records cannot be written.
    pub audit_mode: crate::audit::AuditMode,
    /// Audit queue capacity, records.
    pub audit_queue: usize,
    /// OTLP/HTTP endpoint for traces (`http://collector:4318`); `None`: no export.
    pub otlp_endpoint: Option<String>,
    /// How long a call to a deployment with no ready replica that may scale from zero waits.
    pub scale_from_zero_timeout: Duration,
    /// Idle time after which a deployment that may scale to zero does.
    pub scale_to_zero_after: Duration,
    /// The longest a replica may send nothing (before headers, between chunks).
    pub upstream_timeout: Duration,
}

impl Default for GatewayConfig {
    fn default() -> Self {
        Self {
            audit_mode: crate::audit::AuditMode::Required,
            audit_queue: 65_536,
            otlp_endpoint: None,
            scale_from_zero_timeout: Duration::from_secs(300),
            scale_to_zero_after: Duration::from_secs(900),
            // Generous: a long answer that is not streamed sends nothing until it is done.
            upstream_timeout: Duration::from_secs(600),
        }
    }
}

impl GatewayConfig {
    fn resolve(file: GatewayFileConfig, flags: &FlagConfig) -> Result<Self, ConfigError> {
        let defaults = Self::default();
        let audit_mode = match flags.audit_mode.clone().or(file.audit_mode).as_deref() {
            None => defaults.audit_mode,
            Some("required") => crate::audit::AuditMode::Required,
            Some("best-effort") => crate::audit::AuditMode::BestEffort,
            Some(other) => {
                return Err(ConfigError::Invalid {
                    key: "audit_mode",
                    reason: format!("{other:?} is not one of required, best-effort"),
                })
            }
        };
        let audit_queue = file.audit_queue.unwrap_or(defaults.audit_queue);
        if !(1..=10_000_000).contains(&audit_queue) {
            return Err(ConfigError::Invalid {
                key: "audit_queue",
                reason: format!("{audit_queue} is outside 1..=10000000"),
            });
        }
        let otlp_endpoint = flags
            .otlp_endpoint
            .clone()
            .or(file.otlp_endpoint)
            .filter(|e| !e.trim().is_empty());
        if let Some(endpoint) = &otlp_endpoint {
            if !endpoint.starts_with("http://") {
                return Err(ConfigError::Invalid {
                    key: "otlp_endpoint",
                    reason: format!("{endpoint:?} must be an http:// OTLP/HTTP endpoint such as http://127.0.0.1:4318 (put a collector with TLS next to the coordinator for https)"),
                });
            }
        }
        let scale_from_zero_timeout = match file.scale_from_zero_timeout {
            Some(t) => parse_duration("gateway.scale_from_zero_timeout", &t)?,
            None => defaults.scale_from_zero_timeout,
        };
        let scale_to_zero_after = match file.scale_to_zero_after {
            Some(t) => parse_duration("gateway.scale_to_zero_after", &t)?,
            None => defaults.scale_to_zero_after,
        };
        let upstream_timeout = match file.upstream_timeout {
            Some(t) => parse_duration("gateway.upstream_timeout", &t)?,
            None => defaults.upstream_timeout,
        };
        if upstream_timeout.is_zero() {
            return Err(ConfigError::Invalid {
                key: "gateway.upstream_timeout",
                reason: "must be longer than 0s (a replica needs some time to answer), for example \"10m\"".into(),
            });
        }
        Ok(Self {
            audit_mode,
            audit_queue,
            otlp_endpoint,
            scale_from_zero_timeout,
            scale_to_zero_after,
            upstream_timeout,
        })
    }
}

/// Default data directory.
pub const DEFAULT_DATA_DIR: &str = "/var/lib/pyxis-coordinator";

fn addr(key: &'static str, value: Option<String>, default: &str) -> Result<SocketAddr, ConfigError> {
    let text = value.unwrap_or_else(|| default.to_string());
    text.parse().map_err(|e| ConfigError::Invalid {
        key,
        reason: format!("{text:?} is not an address like {default} ({e})"),
    })
}

impl CoordinatorConfig {
    /// Merges and validates.
    pub fn resolve(file: FileConfig, flags: FlagConfig) -> Result<Self, ConfigError> {
        let tls = file.tls.unwrap_or_default();
        let gateway = GatewayConfig::resolve(file.gateway.unwrap_or_default(), &flags)?;
        let data_dir = flags
            .data_dir
            .or(file.data_dir)
            .unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR));
        let quic_addr = addr("quic_addr", flags.quic_addr.or(file.quic_addr), "0.0.0.0:7443")?;
        let api_addr = addr("api_addr", flags.api_addr.or(file.api_addr), "0.0.0.0:7080")?;
        let gateway_addr = addr("gateway_addr", flags.gateway_addr.or(file.gateway_addr), "0.0.0.0:8080")?;
        let liveness_timeout = match flags.liveness_timeout.or(file.liveness_timeout) {
            Some(t) => parse_duration("liveness_timeout", &t)?,
            None => Duration::from_secs(10),
        };
        let report_interval = match flags.report_interval.or(file.report_interval) {
            Some(t) => parse_duration("report_interval", &t)?,
            None => Duration::from_secs(1),
        };
        if report_interval < Duration::from_millis(50) || report_interval > Duration::from_secs(60) {
            return Err(ConfigError::Invalid {
                key: "report_interval",
                reason: format!("{report_interval:?} is outside 50ms..=60s"),
            });
        }
        if liveness_timeout < report_interval * 2 {
            return Err(ConfigError::Invalid {
                key: "liveness_timeout",
                reason: format!(
                    "{liveness_timeout:?} must be at least twice report_interval ({report_interval:?}), or healthy nodes would flap"
                ),
            });
        }
        let cluster_name = flags
            .cluster_name
            .or(file.cluster_name)
            .unwrap_or_else(|| "pyxis".to_string());
        let ca_files = match (flags.ca_cert.or(tls.ca_cert), flags.ca_key.or(tls.ca_key)) {
            (Some(cert), Some(key)) => Some((cert, key)),
            (None, None) => None,
            _ => {
                return Err(ConfigError::Invalid {
                    key: "tls",
                    reason: "ca_cert and ca_key must be given together (or neither, to generate a CA in the data dir)"
                        .into(),
                })
            }
        };
        Ok(Self {
            data_dir,
            quic_addr,
            api_addr,
            gateway_addr,
            liveness_timeout,
            report_interval,
            cluster_name,
            ca_files,
            reconcile: true,
            gateway,
        })
    }

    /// A configuration for tests and dev mode: loopback, ephemeral ports.
    pub fn local(data_dir: PathBuf) -> Self {
        Self {
            data_dir,
            quic_addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            api_addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            gateway_addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            liveness_timeout: Duration::from_secs(10),
            report_interval: Duration::from_secs(1),
            cluster_name: "pyxis".into(),
            ca_files: None,
            reconcile: true,
            gateway: GatewayConfig::default(),
        }
    }
}

/// Reads and parses a config file.
pub fn read_file(path: &std::path::Path) -> Result<FileConfig, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    toml::from_str(&text).map_err(|e| ConfigError::Parse {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_validation() {
        let config = CoordinatorConfig::resolve(FileConfig::default(), FlagConfig::default()).unwrap();
        assert_eq!(config.liveness_timeout, Duration::from_secs(10));
        assert_eq!(config.quic_addr.port(), 7443);
        assert_eq!(config.api_addr.port(), 7080);
        assert_eq!(config.gateway_addr.port(), 8080);
        let bad = FlagConfig {
            api_addr: Some("localhost".into()),
            ..FlagConfig::default()
        };
        assert!(CoordinatorConfig::resolve(FileConfig::default(), bad)
            .unwrap_err()
            .to_string()
            .contains("api_addr"));
        let flappy = FlagConfig {
            liveness_timeout: Some("1s".into()),
            ..FlagConfig::default()
        };
        assert!(CoordinatorConfig::resolve(FileConfig::default(), flappy)
            .unwrap_err()
            .to_string()
            .contains("liveness_timeout"));
        let half_tls = FlagConfig {
            ca_cert: Some("/x".into()),
            ..FlagConfig::default()
        };
        assert!(CoordinatorConfig::resolve(FileConfig::default(), half_tls).is_err());
        let file: FileConfig =
            toml::from_str("liveness_timeout = \"30s\"\n[tls]\nca_cert = \"/a\"\nca_key = \"/b\"\n").unwrap();
        let config = CoordinatorConfig::resolve(file, FlagConfig::default()).unwrap();
        assert_eq!(config.liveness_timeout, Duration::from_secs(30));
        assert!(config.ca_files.is_some());
        assert!(toml::from_str::<FileConfig>("bogus = 1").is_err());
    }

    #[test]
    fn upstream_timeout_defaults_and_is_checked() {
        let config = CoordinatorConfig::resolve(FileConfig::default(), FlagConfig::default()).unwrap();
        assert_eq!(config.gateway.upstream_timeout, Duration::from_secs(600));
        let file: FileConfig = toml::from_str("[gateway]\nupstream_timeout = \"90s\"\n").unwrap();
        let config = CoordinatorConfig::resolve(file, FlagConfig::default()).unwrap();
        assert_eq!(config.gateway.upstream_timeout, Duration::from_secs(90));
        for bad in ["0s", "soon", "-1s"] {
            let file: FileConfig = toml::from_str(&format!("[gateway]\nupstream_timeout = {bad:?}\n")).unwrap();
            let error = CoordinatorConfig::resolve(file, FlagConfig::default())
                .unwrap_err()
                .to_string();
            assert!(error.contains("gateway.upstream_timeout"), "{bad}: {error}");
        }
    }
}
