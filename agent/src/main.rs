//! `pyxis-agent`: the Pyxis node agent daemon.

use std::path::PathBuf;

use clap::Parser;
use pyxis_agent::{config, daemon, Agent};

/// Pyxis node agent: reports this host's accelerators to the coordinator over QUIC with
/// mutual TLS, and runs the inference runtimes the coordinator places here (each in its own
/// process group, restarted with backoff, adopted again after an agent restart).
///
/// First start joins the cluster with a token from `pyxis token create`:
///
///   pyxis-agent --coordinator 10.0.0.5:7443 --join-token abcdef.0123456789abcdef \
///               --ca-hash sha256:... --data-dir /var/lib/pyxis-agent
///
/// The node key is generated locally and never leaves the node; later starts need only
/// --coordinator and --data-dir. Flags override the config file.
#[derive(Debug, Parser)]
#[command(
    name = "pyxis-agent",
    version,
    verbatim_doc_comment,
    after_help = "Config-file-only keys (see examples/agent.toml, which shows every key with its default):
  nvml_library, rocm_library   where libnvidia-ml.so.1 / librocm_smi64.so.1 are, when not on the loader path
  sysfs_root, devfs_root       the host's /sys and /dev when the agent runs in a container
  gce_metadata_url             GCE metadata server, asked for the TPU type when TPU chips exist
  [hardware_classes]           MODEL = CLASS overrides of the derived hardware class
  [health]                     fatal_xids, transient_xids, ignored_xids, recovery_window: the GPU
                               health policy (docs/hardware-health.md)
  runtime_ports, runtime_host  ports (20000-20999) and bind address (0.0.0.0) of runtimes
  advertise_host               host name in replica endpoints (default: this host's name)
  stop_grace_period            SIGTERM to SIGKILL of a runtime's process group (30s)
  log_max_bytes                size at which a runtime's log file is rotated (16 MiB)
Stopping the agent leaves its runtimes running; the next agent adopts them.
Exit codes: 0 stopped by a signal; 1 failed at run time; 64 bad configuration."
)]
struct Flags {
    /// TOML config file; flags override its keys.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Coordinator QUIC address HOST:PORT (default port 7443). Repeat, or separate with
    /// commas, to give fallbacks tried in order. [config: coordinators]
    #[arg(long = "coordinator", value_name = "HOST:PORT")]
    coordinators: Vec<String>,
    /// Join token from `pyxis token create` (first start only). [config: join_token]
    #[arg(long, value_name = "TOKEN", env = "PYXIS_JOIN_TOKEN", hide_env_values = true)]
    join_token: Option<String>,
    /// SHA-256 of the cluster CA, as printed by `pyxis token create` (first start only).
    /// The agent trusts only that CA. [config: ca_hash]
    #[arg(long, value_name = "sha256:HEX")]
    ca_hash: Option<String>,
    /// Directory for the node identity and state. [config: data_dir]
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// Node name (default: host name). [config: name]
    #[arg(long, value_name = "NODE")]
    name: Option<String>,
    /// Address for /metrics and /healthz, or "off" (default 0.0.0.0:9464). [config: metrics_addr]
    #[arg(long, value_name = "ADDR")]
    metrics_addr: Option<String>,
    /// Simulated accelerators for demos and tests, for example 2xH100-80GB,1xMI300X-192GB
    /// or 4xTPU-v5e. Always reported as simulated. [config: simulate]
    #[arg(long, value_name = "SPEC")]
    simulate: Option<String>,
    /// Capacity report interval (default 1s). [config: report_interval]
    #[arg(long, value_name = "DURATION")]
    report_interval: Option<String>,
    /// Longest reconnect backoff (default 30s). [config: max_backoff]
    #[arg(long, value_name = "DURATION")]
    max_backoff: Option<String>,
    /// How to launch a runtime kind, KIND=COMMAND (repeatable), for example
    /// vllm="/opt/vllm/bin/vllm serve". [config: [runtimes] table]
    #[arg(long = "runtime", value_name = "KIND=COMMAND")]
    runtimes: Vec<String>,
}

fn main() {
    let flags = Flags::parse();
    daemon::init_tracing();
    let file = match &flags.config {
        Some(path) => match config::read_file(path) {
            Ok(file) => file,
            Err(e) => bad_config(e),
        },
        None => config::FileConfig::default(),
    };
    let hostname = pyxis_agent::host::probe_host().hostname.to_lowercase();
    let name_given = flags.name.is_some() || file.name.is_some();
    let flag_config = config::FlagConfig {
        coordinators: flags.coordinators,
        join_token: flags.join_token,
        ca_hash: flags.ca_hash,
        data_dir: flags.data_dir,
        name: flags.name,
        metrics_addr: flags.metrics_addr,
        simulate: flags.simulate,
        report_interval: flags.report_interval,
        max_backoff: flags.max_backoff,
        runtimes: flags.runtimes,
    };
    let config = match config::AgentConfig::resolve(file, flag_config, &hostname) {
        Ok(config) => config,
        Err(e) => bad_config(e),
    };
    let mut config = config;
    match pyxis_agent::identity::Identity::load(&config.data_dir) {
        Ok(Some(identity)) => {
            if let Err(e) = config.adopt_identity(&identity, name_given) {
                bad_config(e);
            }
        }
        Ok(None) => match (&config.join_token, &config.ca_hash) {
            (Some(_), Some(_)) => {}
            (None, _) => bad_config(config::ConfigError::Missing {
                key: "join_token",
                hint: "this node has not joined yet: pass --join-token and --ca-hash as printed by `pyxis token create`",
            }),
            (Some(_), None) => bad_config(config::ConfigError::Missing {
                key: "ca_hash",
                hint: "joining needs the CA hash printed by `pyxis token create` with the token: pass --ca-hash sha256:...",
            }),
        },
        Err(e) => {
            tracing::error!(error = %e, "stored identity is unusable");
            eprintln!("pyxis-agent: {e}");
            std::process::exit(daemon::EXIT_BAD_CONFIG);
        }
    }
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(e) => {
            tracing::error!(error = %e, "cannot start the async runtime");
            std::process::exit(1);
        }
    };
    let code = runtime.block_on(async move {
        let signals = daemon::Signals::install();
        tracing::info!(node = %config.name, coordinators = ?config.coordinators, version = pyxis_agent::AGENT_VERSION, "starting pyxis-agent");
        let agent = match Agent::start(config).await {
            Ok(agent) => agent,
            Err(e) => {
                tracing::error!(error = %e, "cannot start");
                return 1;
            }
        };
        let watchdog = tokio_util::sync::CancellationToken::new();
        daemon::notify_ready("reporting to the coordinator", watchdog.clone());
        signals.wait().await;
        daemon::notify_stopping();
        watchdog.cancel();
        if tokio::time::timeout(std::time::Duration::from_secs(10), agent.stop()).await.is_err() {
            tracing::warn!("shutdown took longer than 10s; exiting anyway");
        }
        tracing::info!("stopped");
        0
    });
    std::process::exit(code);
}

fn bad_config(error: config::ConfigError) -> ! {
    tracing::error!(error = %error, "bad configuration");
    eprintln!("pyxis-agent: bad configuration: {error}");
    std::process::exit(daemon::EXIT_BAD_CONFIG);
}
