//! `pyxis-coordinator`: the Pyxis control plane daemon.

use std::path::PathBuf;

use clap::Parser;
use pyxis_agent::daemon;
use pyxis_coordinator::{config, dev, server::Coordinator};

/// mimalloc: the gateway's per-call work allocates a lot, and glibc malloc was about a
/// sixth of the coordinator's CPU under load (docs/BENCHMARKS.md, gateway).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Pyxis coordinator: node registry, desired state and placement for LLM serving fleets.
///
/// Agents connect over QUIC with mutual TLS (default UDP 7443); operators use the `pyxis`
/// CLI against the admin API (default TCP 7080). On first start the coordinator creates a
/// CA and an admin token in its data dir; `pyxis token create` then gives agents a join
/// token. Try everything in one process with `pyxis-coordinator --dev`.
#[derive(Debug, Parser)]
#[command(name = "pyxis-coordinator", version, verbatim_doc_comment)]
struct Flags {
    /// TOML config file; flags override its keys.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Dev mode: coordinator, an in-process agent and a simulated mixed fleet in one
    /// process, state in a temporary directory. Prints the admin token and commands to try.
    #[arg(long)]
    dev: bool,
    /// Data directory: store, CA, admin token (default /var/lib/pyxis-coordinator).
    /// [config: data_dir]
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// QUIC agent-link address (default 0.0.0.0:7443). [config: quic_addr]
    #[arg(long, value_name = "ADDR")]
    quic_addr: Option<String>,
    /// Admin API address (default 0.0.0.0:7080). [config: api_addr]
    #[arg(long, value_name = "ADDR")]
    api_addr: Option<String>,
    /// OpenAI-compatible gateway address (default 0.0.0.0:8080): /v1/chat/completions,
    /// /v1/completions, /v1/embeddings, /v1/models with tenant API keys
    /// (`pyxis apikey create`). [config: gateway_addr]
    #[arg(long, value_name = "ADDR")]
    gateway_addr: Option<String>,
    /// A node that has not reported for this long is NotReady (default 10s).
    /// [config: liveness_timeout]
    #[arg(long, value_name = "DURATION")]
    liveness_timeout: Option<String>,
    /// Capacity report interval asked of agents (default 1s). [config: report_interval]
    #[arg(long, value_name = "DURATION")]
    report_interval: Option<String>,
    /// Cluster name, shown in the CA subject (default pyxis). [config: cluster_name]
    #[arg(long, value_name = "NAME")]
    cluster_name: Option<String>,
    /// Use this CA certificate (PEM) instead of generating one. [config: tls.ca_cert]
    #[arg(long, value_name = "FILE", requires = "ca_key")]
    ca_cert: Option<PathBuf>,
    /// Key of --ca-cert (PKCS#8 PEM). [config: tls.ca_key]
    #[arg(long, value_name = "FILE", requires = "ca_cert")]
    ca_key: Option<PathBuf>,
    /// What the gateway does when audit records cannot be written: `required` (default:
    /// refuse calls with 503) or `best-effort` (serve them, count the records lost).
    /// [config: gateway.audit_mode]
    #[arg(long, value_name = "MODE", value_parser = ["required", "best-effort"])]
    audit_mode: Option<String>,
    /// Export traces (request, routing, upstream spans) over OTLP/HTTP to this endpoint,
    /// for example http://127.0.0.1:4318. Default: none. [config: gateway.otlp_endpoint]
    #[arg(long, value_name = "URL", env = "OTEL_EXPORTER_OTLP_ENDPOINT")]
    otlp_endpoint: Option<String>,
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
    let dev_mode = flags.dev;
    let flag_config = config::FlagConfig {
        data_dir: flags.data_dir,
        quic_addr: flags.quic_addr,
        api_addr: flags.api_addr,
        gateway_addr: flags.gateway_addr,
        liveness_timeout: flags.liveness_timeout,
        report_interval: flags.report_interval,
        cluster_name: flags.cluster_name,
        ca_cert: flags.ca_cert,
        ca_key: flags.ca_key,
        audit_mode: flags.audit_mode,
        otlp_endpoint: flags.otlp_endpoint,
    };
    // In dev mode, a temporary data dir lives as long as this guard.
    let (config, _dev_dir) = if dev_mode {
        match dev::dev_config(file, flag_config) {
            Ok(pair) => pair,
            Err(e) => bad_config(e),
        }
    } else {
        match config::CoordinatorConfig::resolve(file, flag_config) {
            Ok(config) => (config, None),
            Err(e) => bad_config(e),
        }
    };
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(e) => {
            tracing::error!(error = %e, "cannot start the async runtime");
            std::process::exit(1);
        }
    };
    let code = runtime.block_on(async move {
        let signals = daemon::Signals::install();
        tracing::info!(version = pyxis_coordinator::VERSION, data_dir = %config.data_dir.display(), "starting pyxis-coordinator");
        let coordinator = match Coordinator::start(config).await {
            Ok(coordinator) => coordinator,
            Err(e) => {
                tracing::error!(error = %e, "cannot start");
                eprintln!("pyxis-coordinator: cannot start: {e}");
                return if e.is_config() { daemon::EXIT_BAD_CONFIG } else { 1 };
            }
        };
        let dev_fleet = if dev_mode {
            match dev::start_fleet(&coordinator).await {
                Ok(fleet) => Some(fleet),
                Err(e) => {
                    tracing::error!(error = %e, "cannot start the dev fleet");
                    coordinator.stop().await;
                    return 1;
                }
            }
        } else {
            None
        };
        let watchdog = tokio_util::sync::CancellationToken::new();
        daemon::notify_ready("serving", watchdog.clone());
        signals.wait().await;
        daemon::notify_stopping();
        watchdog.cancel();
        let drain = async {
            if let Some(fleet) = dev_fleet {
                fleet.stop().await;
            }
            coordinator.stop().await;
        };
        if tokio::time::timeout(std::time::Duration::from_secs(15), drain).await.is_err() {
            tracing::warn!("shutdown took longer than 15s; exiting anyway");
        }
        tracing::info!("stopped");
        0
    });
    drop(_dev_dir);
    std::process::exit(code);
}

fn bad_config(error: config::ConfigError) -> ! {
    tracing::error!(error = %error, "bad configuration");
    eprintln!("pyxis-coordinator: bad configuration: {error}");
    std::process::exit(daemon::EXIT_BAD_CONFIG);
}
