//! `pyxis-coordinator --dev`: coordinator, an in-process agent for this host and, when the
//! host reports no accelerator, a small simulated mixed fleet, all in one process with
//! state in a temporary directory.

use std::{collections::BTreeMap, path::PathBuf, time::Duration};

use pyxis_agent::{config::AgentConfig, Agent};

use crate::{
    config::{ConfigError, CoordinatorConfig, FileConfig, FlagConfig},
    server::Coordinator,
};

/// The simulated fleet dev mode adds when the host has no accelerator: (node, devices,
/// runtime kinds it can launch). The AMD node has SGLang but no vLLM, so one deployment
/// shows two runtimes.
pub const DEV_FLEET: &[(&str, &str, &[&str])] = &[
    (
        "dev-nvidia-0",
        "2xH100-80GB",
        &["vllm", "tgi", "trtllm", "triton", "llama-cpp"],
    ),
    ("dev-nvidia-1", "4xA100-40GB", &["vllm", "tgi", "llama-cpp"]),
    ("dev-amd-0", "2xMI300X-192GB", &["sglang", "tgi", "llama-cpp"]),
    ("dev-tpu-0", "4xTPU-v5e", &["vllm"]),
];

/// Runtime kinds the host agent of dev mode can launch (the real binary where one is on
/// `PATH`, the mock otherwise).
const HOST_RUNTIMES: &[&str] = &["vllm", "tgi", "sglang", "triton", "trtllm", "ollama", "llama-cpp"];

/// The manifests dev mode applies: `examples/dev/`, built in.
pub const DEV_MANIFESTS: &[(&str, &str)] =
    &[("examples/dev/fleet.yaml", include_str!("../../examples/dev/fleet.yaml"))];

/// Where the bundled mock runtime is: beside this executable, else on `PATH`.
fn mock_runtime() -> Option<PathBuf> {
    let beside = std::env::current_exe()
        .ok()
        .map(|exe| exe.with_file_name("pyxis-mock-runtime"))
        .filter(|p| p.is_file());
    beside.or_else(|| {
        std::env::var_os("PATH").and_then(|path| {
            std::env::split_paths(&path)
                .map(|dir| dir.join("pyxis-mock-runtime"))
                .find(|p| p.is_file())
        })
    })
}

/// The `[runtimes]` of a dev agent: for the host, a real runtime where its binary is on
/// `PATH` and the mock otherwise; for a simulated node always the mock (a real runtime
/// cannot use a simulated GPU).
fn dev_runtimes(kinds: &[&str], simulated: bool, mock: Option<&std::path::Path>) -> BTreeMap<String, String> {
    let on_path = pyxis_agent::runtimes::discover(&BTreeMap::new(), std::env::var_os("PATH").as_deref());
    let mut runtimes = BTreeMap::new();
    for kind in kinds {
        if !simulated && on_path.contains_key(*kind) {
            continue; // the agent finds the real one itself
        }
        if let Some(mock) = mock {
            runtimes.insert(kind.to_string(), format!("{} --flavor {kind}", mock.display()));
        }
    }
    runtimes
}

/// The real llama.cpp server and a model for it, when this machine has both: the server on
/// `PATH` or where `scripts/fetch-llama-server.sh` caches it (`$PYXIS_CACHE`, default
/// `~/.cache/pyxis`), the model from `PYXIS_LLAMA_MODEL` or that cache.
pub fn real_llama_server() -> Option<(PathBuf, PathBuf)> {
    let cache = std::env::var_os("PYXIS_CACHE")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/pyxis")));
    let on_path = std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .map(|dir| dir.join("llama-server"))
            .find(|p| p.is_file())
    });
    let server = std::env::var_os("PYXIS_LLAMA_SERVER")
        .map(PathBuf::from)
        .or(on_path)
        .or_else(|| cache.as_ref().map(|c| c.join("bin/llama-server")))
        .filter(|p| p.is_file())?;
    let model = std::env::var_os("PYXIS_LLAMA_MODEL")
        .map(PathBuf::from)
        .or_else(|| cache.map(|c| c.join("models/SmolLM2-135M-Instruct.Q4_1.gguf")))
        .filter(|p| p.is_file())?;
    Some((server, model))
}

/// The model path dev mode's `smollm2-135m` deployment names in `examples/dev/`.
const DEV_LLAMA_SOURCE: &str = "/models/smollm2-135m-instruct-q4_1.gguf";

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
    /// Stops every replica, then every agent: dev mode's state is temporary, so nothing
    /// it started may outlive it (a production agent leaves its runtimes running).
    pub async fn stop(self) {
        for agent in &self.agents {
            agent.stop_replicas().await;
        }
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
    runtimes: BTreeMap<String, String>,
    runtime_ports: (u16, u16),
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
        runtimes,
        hardware_classes: Default::default(),
        nvml_library: None,
        gce_metadata_url: pyxis_agent::tpu::DEFAULT_METADATA_URL.into(),
        rocm_library: None,
        host_paths: Default::default(),
        // Loopback only: dev mode's runtimes are reached through its gateway, never
        // directly from the network (which would skip keys, budgets and the audit log).
        supervisor: pyxis_agent::runtime::supervisor::SupervisorConfig {
            runtime_ports,
            runtime_host: std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST),
            advertise_host: Some("127.0.0.1".into()),
            ..Default::default()
        },
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
    let mock = mock_runtime();
    match &mock {
        Some(path) => tracing::info!(
            mock = %path.display(),
            "runtimes: simulated nodes use the bundled mock runtime (OpenAI-compatible, no model); this host uses a real runtime where one is on PATH and the mock otherwise"
        ),
        None => tracing::warn!(
            "pyxis-mock-runtime is neither beside pyxis-coordinator nor on PATH: only runtimes installed on this host can start (build it with `cargo build -p pyxis-mock-runtime`)"
        ),
    }
    // Every agent runs on this one host: each gets its own runtime port range.
    let ports = |i: u16| (21000 + i * 200, 21000 + i * 200 + 199);
    // The real llama.cpp serves the CPU chat model on this host where it is installed (and
    // then only here: the simulated nodes do not offer llama-cpp).
    let llama = real_llama_server();
    let mut host_runtimes = dev_runtimes(HOST_RUNTIMES, false, mock.as_deref());
    if let Some((server, model)) = &llama {
        host_runtimes.insert("llama-cpp".into(), server.display().to_string());
        tracing::info!(server = %server.display(), model = %model.display(), "smollm2-135m runs on the real llama-server on this host");
    }
    let host_agent = Agent::start(agent_config(
        coordinator,
        root.join(&host_name),
        &host_name,
        None,
        &token.token,
        host_runtimes,
        ports(0),
    ))
    .await?;
    let host_has_accelerators = !host_agent.shared.devices().is_empty();
    agents.push(host_agent);
    if !host_has_accelerators {
        tracing::info!(
            "this host reports no accelerator: adding a simulated mixed fleet (marked simulated everywhere)"
        );
        for (i, (name, spec, kinds)) in DEV_FLEET.iter().enumerate() {
            let kinds: Vec<&str> = kinds
                .iter()
                .copied()
                .filter(|k| llama.is_none() || *k != "llama-cpp")
                .collect();
            agents.push(
                Agent::start(agent_config(
                    coordinator,
                    root.join(name),
                    name,
                    Some(spec),
                    &token.token,
                    dev_runtimes(&kinds, true, mock.as_deref()),
                    ports(i as u16 + 1),
                ))
                .await?,
            );
        }
    }
    let sources: Vec<(Option<String>, String)> = DEV_MANIFESTS
        .iter()
        .map(|(name, text)| {
            let text = match &llama {
                Some((_, model)) => text.replace(DEV_LLAMA_SOURCE, &model.display().to_string()),
                None => text.to_string(),
            };
            (Some(name.to_string()), text)
        })
        .collect();
    match crate::api_objects::apply_sources(&coordinator.shared, &sources, false).await {
        Ok(applied) => {
            for item in &applied.items {
                tracing::info!(kind = %item.kind, namespace = ?item.namespace, name = %item.name, action = %item.action, "dev manifest applied");
            }
        }
        Err(e) => tracing::error!(error = %e, "the built-in dev manifests were refused"),
    }
    // A demo API key for the research tenant, so the printed curl works as is.
    let demo_key = match crate::apikeys::create("research", "dev-demo", crate::time::now_ms()) {
        Ok(key) => match coordinator.shared.store.insert_api_key(&key.row) {
            Ok(()) => Some(key.key),
            Err(e) => {
                tracing::error!(error = %e, "cannot store the demo API key");
                None
            }
        },
        Err(e) => {
            tracing::error!(error = %e, "cannot create the demo API key");
            None
        }
    };
    let api = coordinator.api_url();
    let admin = coordinator
        .admin_token
        .clone()
        .unwrap_or_else(|| "<see DATA_DIR/admin-token>".into());
    println!();
    println!("Pyxis dev mode is running.");
    println!(
        "  data dir:    {} (removed on exit when dev mode made it, kept when given with --data-dir)",
        coordinator.shared.config.data_dir.display()
    );
    println!("  agent link:  {} (QUIC, mutual TLS)", coordinator.quic_addr);
    println!("  admin API:   {api}");
    println!("  admin token: {admin}");
    println!("  CA hash:     {}", coordinator.shared.ca.hash());
    let gateway = coordinator.gateway_url();
    println!("  gateway:     {gateway}/v1 (OpenAI-compatible)");
    if let Some(key) = &demo_key {
        println!("  demo API key (tenant research): {key}");
    }
    println!();
    if let Some(key) = &demo_key {
        println!("Call the gateway (the answer carries x-pyxis-* lineage headers):");
        println!(
            "  curl -si {gateway}/v1/chat/completions -H 'Authorization: Bearer {key}' -H 'Content-Type: application/json' -d '{{\"model\": \"qwen-7b\", \"messages\": [{{\"role\": \"user\", \"content\": \"Hello!\"}}]}}'"
        );
        if llama.is_some() {
            println!("  (model \"smollm2-135m\" answers from the real llama.cpp on this host)");
        }
        println!("  OPENAI_BASE_URL={gateway}/v1 OPENAI_API_KEY={key} python3 -c 'import openai; print(openai.OpenAI().chat.completions.create(model=\"qwen-7b\", messages=[{{\"role\": \"user\", \"content\": \"Hi\"}}]).choices[0].message.content)'");
        println!();
    }
    println!("Try, in another shell:");
    println!("  export PYXIS_SERVER={api} PYXIS_TOKEN={admin}");
    println!("  pyxis get nodes -o wide");
    println!("  pyxis get deployments -A");
    println!("  pyxis get replicas");
    println!("  pyxis explain deployment qwen-7b -n research");
    println!("  pyxis describe tenant research");
    println!(
        "  pyxis node drain {}        # watch qwen-7b move, the old replica kept until the new one is ready",
        DEV_FLEET[0].0
    );
    println!("  pyxis usage --since 1h");
    println!("  pyxis audit --since 1h");
    println!("  pyxis audit verify");
    println!("  pyxis apply -f examples/manifests/");
    println!("  curl -s {api}/metrics | grep pyxis_tenant");
    println!();
    println!("Stop with Ctrl-C.");
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
