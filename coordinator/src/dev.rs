//! `pyxis-coordinator --dev`: coordinator, an in-process agent for this host and, when the
//! host reports no accelerator, a small simulated mixed fleet, all in one process with
//! state in a temporary directory.

use std::{path::PathBuf, time::Duration};

use pyxis_agent::{config::AgentConfig, Agent};

use crate::{
    config::{ConfigError, CoordinatorConfig, FileConfig, FlagConfig},
    server::Coordinator,
};

/// The simulated fleet dev mode adds when the host has no accelerator: (node, devices).
pub const DEV_FLEET: &[(&str, &str)] = &[
    ("dev-nvidia-0", "2xH100-80GB"),
    ("dev-nvidia-1", "4xA100-40GB"),
    ("dev-amd-0", "2xMI300X-192GB"),
    ("dev-tpu-0", "4xTPU-v5e"),
];

/// Dev defaults: loopback ports 7443/7080/8080 and a fresh, private temporary data dir
/// (removed when the returned guard drops), unless flags or the file say otherwise.
pub fn dev_config(
    file: FileConfig,
    mut flags: FlagConfig,
) -> Result<(CoordinatorConfig, Option<tempfile::TempDir>), ConfigError> {
    let mut guard = None;
    if flags.data_dir.is_none() && file.data_dir.is_none() {
        let dir = tempfile::Builder::new()
            .prefix("pyxis-dev-")
            .tempdir()
            .map_err(|e| ConfigError::Invalid {
                key: "data_dir",
                reason: format!("cannot create a temporary data dir for dev mode: {e}; pass --data-dir"),
            })?;
        flags.data_dir = Some(dir.path().to_path_buf());
        guard = Some(dir);
    }
    flags.quic_addr = flags
        .quic_addr
        .or(file.quic_addr.clone())
        .or(Some("127.0.0.1:7443".into()));
    flags.api_addr = flags
        .api_addr
        .or(file.api_addr.clone())
        .or(Some("127.0.0.1:7080".into()));
    flags.gateway_addr = flags
        .gateway_addr
        .or(file.gateway_addr.clone())
        .or(Some("127.0.0.1:8080".into()));
    Ok((CoordinatorConfig::resolve(file, flags)?, guard))
}

/// The in-process agents of dev mode.
#[derive(Debug)]
pub struct DevFleet {
    agents: Vec<Agent>,
}

impl DevFleet {
    /// Stops every agent.
    pub async fn stop(self) {
        for agent in self.agents {
            agent.stop().await;
        }
    }
}

fn agent_config(
    coordinator: &Coordinator,
    data_dir: PathBuf,
    name: &str,
    simulate: Option<&str>,
    token: &str,
) -> AgentConfig {
    AgentConfig {
        coordinators: vec![coordinator.quic_addr.to_string()],
        join_token: Some(token.to_string()),
        ca_hash: pyxis_transport::pki::parse_ca_hash(&coordinator.shared.ca.hash()).ok(),
        data_dir,
        name: name.to_string(),
        metrics_addr: None,
        simulate: simulate.map(str::to_string),
        report_interval: coordinator.shared.config.report_interval,
        min_backoff: Duration::from_millis(100),
        max_backoff: Duration::from_secs(5),
        runtimes: Default::default(),
        hardware_classes: Default::default(),
        nvml_library: None,
        gce_metadata_url: pyxis_agent::tpu::DEFAULT_METADATA_URL.into(),
        rocm_library: None,
        host_paths: Default::default(),
        supervisor: Default::default(),
        health: Default::default(),
    }
}

/// Starts the host agent (and the simulated fleet) and prints how to use them.
pub async fn start_fleet(coordinator: &Coordinator) -> Result<DevFleet, Box<dyn std::error::Error + Send + Sync>> {
    let shared = coordinator.shared.clone();
    let token = tokio::task::spawn_blocking(move || shared.create_join_token(Duration::from_secs(3600), 16)).await??;
    let root = coordinator.shared.config.data_dir.join("agents");
    let host = pyxis_agent::host::probe_host();
    let host_name = sanitize(&host.hostname);
    let mut agents = Vec::new();
    let host_agent = Agent::start(agent_config(
        coordinator,
        root.join(&host_name),
        &host_name,
        None,
        &token.token,
    ))
    .await?;
    let host_has_accelerators = !host_agent.shared.devices().is_empty();
    agents.push(host_agent);
    if !host_has_accelerators {
        tracing::info!(
            "this host reports no accelerator: adding a simulated mixed fleet (marked simulated everywhere)"
        );
        for (name, spec) in DEV_FLEET {
            agents.push(
                Agent::start(agent_config(
                    coordinator,
                    root.join(name),
                    name,
                    Some(spec),
                    &token.token,
                ))
                .await?,
            );
        }
    }
    let api = coordinator.api_url();
    let admin = coordinator
        .admin_token
        .clone()
        .unwrap_or_else(|| "<see DATA_DIR/admin-token>".into());
    println!();
    println!("Pyxis dev mode is running.");
    println!(
        "  data dir:    {} (a temporary one is removed on exit)",
        coordinator.shared.config.data_dir.display()
    );
    println!("  agent link:  {} (QUIC, mutual TLS)", coordinator.quic_addr);
    println!("  admin API:   {api}");
    println!("  admin token: {admin}");
    println!("  CA hash:     {}", coordinator.shared.ca.hash());
    println!();
    println!("Try, in another shell:");
    println!("  export PYXIS_SERVER={api} PYXIS_TOKEN={admin}");
    println!("  pyxis get nodes -o wide");
    println!("  pyxis describe node {}", DEV_FLEET[0].0);
    println!("  pyxis node cordon {}", DEV_FLEET[0].0);
    println!("  pyxis token create --ttl 1h");
    println!("  curl -s {api}/metrics | grep pyxis_nodes");
    println!();
    println!("Stop with Ctrl-C. (The OpenAI-compatible gateway and runtimes join dev mode in later releases.)");
    Ok(DevFleet { agents })
}

fn sanitize(hostname: &str) -> String {
    let name: String = hostname
        .to_lowercase()
        .chars()
        .map(|c| {
            if c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.' {
                c
            } else {
                '-'
            }
        })
        .collect();
    let name = name.trim_matches(|c| c == '-' || c == '.').to_string();
    if name.is_empty() {
        "dev-host".into()
    } else {
        name
    }
}
