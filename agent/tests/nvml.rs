//! The real NVML code path (nvml-wrapper, loaded at run time) against a stub
//! `libnvidia-ml` compiled by this test (`tests/support/nvml_stub.c`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};

use pyxis_agent::{
    hwclass::ClassOverrides,
    nvml::{NvmlProbe, NvmlProbeError},
};
use pyxis_protocol::{Health, Vendor};

/// Compiles the stub with `defines` into `dir`; returns the library path.
fn stub(dir: &Path, name: &str, defines: &[&str]) -> PathBuf {
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/support/nvml_stub.c");
    let out = dir.join(format!("libnvidia-ml-{name}.so"));
    let status = std::process::Command::new("gcc")
        .args(["-shared", "-fPIC", "-O1", "-o"])
        .arg(&out)
        .arg(&source)
        .args(defines.iter().map(|d| format!("-D{d}")))
        .status()
        .expect("gcc is needed to build the NVML stub (apt-get install gcc)");
    assert!(status.success(), "gcc failed for {name}");
    out
}

#[test]
fn two_gpus_through_the_real_nvml_path() {
    let dir = tempfile::tempdir().unwrap();
    let probe = NvmlProbe::open(Some(&stub(dir.path(), "ok", &[]))).unwrap();
    assert_eq!(probe.driver_version.as_deref(), Some("550.54.15"));
    let devices = probe.devices(&ClassOverrides::default()).unwrap();
    assert_eq!(devices.len(), 2);
    let h100 = &devices[0];
    assert_eq!((h100.index, h100.vendor), (0, Vendor::Nvidia));
    assert_eq!(h100.model, "NVIDIA H100 80GB HBM3");
    assert_eq!(h100.uuid, "GPU-11111111-2222-3333-4444-555555555555");
    assert_eq!(h100.hardware_class, "H100-80GB");
    assert_eq!(h100.memory_bytes, 81_559 << 20);
    assert_eq!(h100.memory_used_bytes, 1 << 30);
    assert_eq!(h100.utilization_percent, 37);
    assert_eq!(h100.temperature_celsius, Some(41));
    assert_eq!((h100.power_watts, h100.power_limit_watts), (Some(123), Some(700)));
    assert_eq!(h100.health, Health::Healthy);
    assert!(!h100.simulated, "real probing never reports simulated devices");
    assert_eq!(devices[1].hardware_class, "A100-40GB");
}

#[test]
fn init_failure_means_no_nvidia_gpu_not_a_crash() {
    let dir = tempfile::tempdir().unwrap();
    let err = NvmlProbe::open(Some(&stub(dir.path(), "init-fails", &["INIT_FAILS"]))).unwrap_err();
    assert!(matches!(err, NvmlProbeError::Unavailable(_)), "{err}");
    let err = NvmlProbe::open(Some(&dir.path().join("no-such-libnvidia-ml.so"))).unwrap_err();
    assert!(matches!(err, NvmlProbeError::Unavailable(_)), "{err}");
}

#[test]
fn a_lost_gpu_is_reported_unhealthy_and_the_others_still_work() {
    let dir = tempfile::tempdir().unwrap();
    let probe = NvmlProbe::open(Some(&stub(dir.path(), "lost", &["GPU1_LOST"]))).unwrap();
    let devices = probe.devices(&ClassOverrides::default()).unwrap();
    assert_eq!(devices.len(), 2);
    assert_eq!(devices[0].health, Health::Healthy);
    assert_eq!(devices[1].health, Health::Unhealthy);
    assert!(
        devices[1].health_reason.contains("GPU_IS_LOST"),
        "{}",
        devices[1].health_reason
    );
}

#[test]
fn a_missing_symbol_only_drops_that_fact() {
    let dir = tempfile::tempdir().unwrap();
    let probe = NvmlProbe::open(Some(&stub(dir.path(), "no-temp", &["NO_TEMPERATURE"]))).unwrap();
    let devices = probe.devices(&ClassOverrides::default()).unwrap();
    assert_eq!(devices[0].temperature_celsius, None);
    assert_eq!(devices[0].power_watts, Some(123));
    assert_eq!(devices[0].health, Health::Healthy);
}

#[tokio::test]
async fn the_agent_reports_probed_gpus_as_real_devices() {
    let dir = tempfile::tempdir().unwrap();
    let library = stub(dir.path(), "agent", &[]);
    let file = pyxis_agent::config::FileConfig {
        nvml_library: Some(library),
        ..Default::default()
    };
    let flags = pyxis_agent::config::FlagConfig {
        // Nobody listens there: the agent keeps trying, which does not matter here.
        coordinators: vec!["127.0.0.1:9".into()],
        join_token: Some("abcdef.0123456789abcdef".into()),
        ca_hash: Some(format!("sha256:{}", "00".repeat(32))),
        data_dir: Some(dir.path().join("agent")),
        metrics_addr: Some("off".into()),
        ..Default::default()
    };
    let config = pyxis_agent::config::AgentConfig::resolve(file, flags, "gpu-host").unwrap();
    let agent = pyxis_agent::Agent::start(config).await.unwrap();
    let devices = agent.shared.devices();
    assert_eq!(devices.len(), 2);
    assert!(devices.iter().all(|d| !d.simulated && d.vendor == Vendor::Nvidia));
    let registration = agent.shared.node_info();
    assert_eq!(registration.accelerators[0].hardware_class, "H100-80GB");
    let report = agent.shared.capacity(1);
    assert_eq!(report.devices[1].utilization_percent, 38);
    let metrics = pyxis_agent::http::render(&agent.shared);
    assert!(
        metrics.contains("pyxis_gpu_temperature_celsius{node=\"gpu-host\",gpu=\"0\",uuid=\"GPU-11111111-2222-3333-4444-555555555555\",model=\"NVIDIA H100 80GB HBM3\",vendor=\"nvidia\",hardware_class=\"H100-80GB\",simulated=\"false\"} 41"),
        "{metrics}"
    );
    agent.stop().await;
}
