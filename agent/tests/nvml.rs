//! The real NVML code path (nvml-wrapper, loaded at run time) against a stub
//! `libnvidia-ml` compiled by this test (`tests/support/nvml_stub.c`). Each test compiles
//! its own copy into its own temporary directory, so the stub's control files
//! (`<library>.events`, `<library>.lost`) are never shared between tests.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{
    io::Write,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use pyxis_agent::{
    devices::Device,
    hwclass::ClassOverrides,
    nvml::{NvmlProbe, NvmlProbeError, XidEvent},
};
use pyxis_protocol::{EccCounts, Health, Interconnect, MigConfig, MigInstance, PeerLink, Vendor};

/// Compiles the stub with `defines` into `dir`; returns the library path.
fn stub(dir: &Path, name: &str, defines: &[&str]) -> PathBuf {
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/support/nvml_stub.c");
    let out = dir.join(format!("libnvidia-ml-{name}.so"));
    let status = std::process::Command::new("gcc")
        .args(["-shared", "-fPIC", "-O1", "-Wall", "-Werror", "-o"])
        .arg(&out)
        .arg(&source)
        .args(defines.iter().map(|d| format!("-D{d}")))
        .status()
        .expect("gcc is needed to build the NVML stub (apt-get install gcc)");
    assert!(status.success(), "gcc failed for {name}");
    out
}

/// A probe over a fresh stub built with `defines`, and the stub's path (for control files).
fn open_stub(dir: &Path, defines: &[&str]) -> (NvmlProbe, PathBuf) {
    let name = if defines.is_empty() {
        "default".to_string()
    } else {
        defines.join("-").to_lowercase()
    };
    let library = stub(dir, &name, defines);
    (NvmlProbe::open(Some(&library)).unwrap(), library)
}

fn probed(probe: &NvmlProbe) -> Vec<Device> {
    probe.devices(&ClassOverrides::default()).unwrap()
}

/// Writes `<library>.<suffix>`, appending.
fn control(library: &Path, suffix: &str, text: &str) {
    let mut path = library.as_os_str().to_owned();
    path.push(format!(".{suffix}"));
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .unwrap();
    file.write_all(text.as_bytes()).unwrap();
}

fn link(peer: u32, kind: Interconnect, lanes: u32) -> PeerLink {
    PeerLink { peer, kind, lanes }
}

fn links(devices: &[Device]) -> Vec<Vec<PeerLink>> {
    devices.iter().map(|d| d.details.links.clone()).collect()
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
    assert_eq!(h100.memory_used_bytes, Some(1 << 30));
    assert_eq!(h100.utilization_percent, Some(37));
    assert_eq!(h100.temperature_celsius, Some(41));
    assert_eq!((h100.power_watts, h100.power_limit_watts), (Some(123), Some(700)));
    assert_eq!(h100.health, Health::Healthy);
    assert!(!h100.simulated, "real probing never reports simulated devices");
    assert_eq!(devices[1].hardware_class, "A100-40GB");
}

#[test]
fn details_and_telemetry_of_each_gpu() {
    let dir = tempfile::tempdir().unwrap();
    let (probe, _) = open_stub(dir.path(), &[]);
    let devices = probed(&probe);
    let (h100, a100) = (&devices[0], &devices[1]);

    // NVML says 00000000:17:00.0 and 00000000:2A:00.0.
    assert_eq!(h100.details.pci_bus_id.as_deref(), Some("0000:17:00.0"));
    assert_eq!(a100.details.pci_bus_id.as_deref(), Some("0000:2a:00.0"));
    assert_eq!((h100.details.numa_node, a100.details.numa_node), (Some(0), Some(1)));
    assert_eq!(h100.details.driver_version.as_deref(), Some("550.54.15"));
    assert_eq!(h100.details.compute_api_version.as_deref(), Some("12.4"));
    assert_eq!(h100.details.architecture.as_deref(), Some("9.0"));
    assert_eq!(a100.details.architecture.as_deref(), Some("8.0"));
    assert_eq!(
        (h100.details.max_sm_clock_mhz, h100.details.max_memory_clock_mhz),
        (Some(1980), Some(2619))
    );
    assert_eq!(
        (a100.details.max_sm_clock_mhz, a100.details.max_memory_clock_mhz),
        (Some(1410), Some(1215))
    );
    assert_eq!(h100.details.ecc_enabled, Some(true));
    // MIG-capable, MIG off.
    assert_eq!(h100.details.mig, Some(MigConfig::default()));

    assert_eq!(
        (h100.telemetry.sm_clock_mhz, h100.telemetry.memory_clock_mhz),
        (Some(1755), Some(2619))
    );
    assert_eq!(h100.telemetry.throttle_reasons, Some(vec!["sw_power_cap".to_string()]));
    // Read, and none active: known to be unthrottled.
    assert_eq!(a100.telemetry.throttle_reasons, Some(vec![]));
    assert_eq!(
        h100.telemetry.ecc,
        Some(EccCounts {
            volatile_corrected: 3,
            volatile_uncorrected: 0,
            aggregate_corrected: Some(12),
            aggregate_uncorrected: Some(1),
            // Hopper has no page retirement (NVML_ERROR_NOT_SUPPORTED): unknown, not zero. It
            // remaps rows instead.
            retired_pages: None,
            retired_pages_pending: None,
            remapped_rows: Some(3),
            remap_pending: Some(false),
            remap_failed: Some(false),
        })
    );
    assert_eq!(
        a100.telemetry.ecc,
        Some(EccCounts {
            aggregate_corrected: Some(0),
            aggregate_uncorrected: Some(0),
            remapped_rows: Some(0),
            remap_pending: Some(false),
            remap_failed: Some(false),
            ..EccCounts::default()
        })
    );
    // The health tracker counts XIDs, not the probe: a reading starts from none seen.
    assert_eq!((h100.telemetry.xid_count, h100.telemetry.last_xid), (Some(0), None));
}

#[test]
fn nvlink_joins_the_two_gpus_in_both_directions() {
    let dir = tempfile::tempdir().unwrap();
    let (probe, _) = open_stub(dir.path(), &[]);
    assert_eq!(
        links(&probed(&probe)),
        vec![
            vec![link(1, Interconnect::NvLink, 4)],
            vec![link(0, Interconnect::NvLink, 4)]
        ]
    );
}

#[test]
fn gpus_behind_nvswitches_are_joined_by_nvlink() {
    let dir = tempfile::tempdir().unwrap();
    let (probe, _) = open_stub(dir.path(), &["NVSWITCH"]);
    assert_eq!(
        links(&probed(&probe)),
        vec![
            vec![link(1, Interconnect::NvLink, 4)],
            vec![link(0, Interconnect::NvLink, 4)]
        ]
    );
}

#[test]
fn without_nvlink_the_pcie_path_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    let (probe, _) = open_stub(dir.path(), &["NO_NVLINK"]);
    assert_eq!(
        links(&probed(&probe)),
        vec![
            vec![link(1, Interconnect::PcieHostBridge, 0)],
            vec![link(0, Interconnect::PcieHostBridge, 0)]
        ]
    );
}

#[test]
fn a_third_gpu_is_reached_over_pcie_only() {
    let dir = tempfile::tempdir().unwrap();
    let (probe, _) = open_stub(dir.path(), &["THREE_GPUS"]);
    let devices = probed(&probe);
    assert_eq!(devices.len(), 3);
    assert_eq!(
        links(&devices),
        vec![
            vec![link(1, Interconnect::NvLink, 4), link(2, Interconnect::NumaNode, 0)],
            vec![link(0, Interconnect::NvLink, 4), link(2, Interconnect::System, 0)],
            vec![link(0, Interconnect::NumaNode, 0), link(1, Interconnect::System, 0)],
        ]
    );
    let l4 = &devices[2];
    assert_eq!(l4.hardware_class, "L4-24GB");
    assert_eq!(l4.details.pci_bus_id.as_deref(), Some("0000:e3:00.0"));
    assert_eq!(l4.details.architecture.as_deref(), Some("8.9"));
    // ECC off: no counters. No MIG on an L4.
    assert_eq!((l4.details.ecc_enabled, l4.telemetry.ecc), (Some(false), None));
    assert_eq!(l4.details.mig, None);
}

#[test]
fn a_mig_gpu_lists_its_instances_with_their_classes() {
    let dir = tempfile::tempdir().unwrap();
    let (probe, _) = open_stub(dir.path(), &["MIG"]);
    let devices = probed(&probe);
    assert_eq!(
        devices[0].details.mig,
        Some(MigConfig {
            enabled: true,
            pending_enabled: true,
            instances: vec![
                MigInstance {
                    uuid: "MIG-aaaaaaaa-1111-2222-3333-444444444444".into(),
                    profile: "1g.10gb".into(),
                    memory_bytes: 9_856 << 20,
                    gpu_instance_id: 9,
                    compute_instance_id: 0,
                    hardware_class: "H100-80GB-MIG-1g.10gb".into(),
                },
                MigInstance {
                    uuid: "MIG-bbbbbbbb-5555-6666-7777-888888888888".into(),
                    profile: "3g.40gb".into(),
                    memory_bytes: 40_192 << 20,
                    gpu_instance_id: 2,
                    compute_instance_id: 0,
                    hardware_class: "H100-80GB-MIG-3g.40gb".into(),
                },
            ],
        })
    );
    assert_eq!(devices[0].hardware_class, "H100-80GB", "the parent keeps its class");
    assert_eq!(devices[1].details.mig, Some(MigConfig::default()));
}

#[test]
fn the_numa_node_falls_back_to_sysfs() {
    let dir = tempfile::tempdir().unwrap();
    let sysfs = dir.path().join("sys");
    for (bus, node) in [("0000:17:00.0", "1\n"), ("0000:2a:00.0", "-1\n")] {
        let device = sysfs.join("bus/pci/devices").join(bus);
        std::fs::create_dir_all(&device).unwrap();
        std::fs::write(device.join("numa_node"), node).unwrap();
    }
    let (probe, _) = open_stub(dir.path(), &["NO_NUMA"]);
    let devices = probed(&probe.with_sysfs_root(&sysfs));
    // -1 means no NUMA affinity.
    assert_eq!(
        (devices[0].details.numa_node, devices[1].details.numa_node),
        (Some(1), None)
    );

    let (probe, _) = open_stub(dir.path(), &["NO_NUMA", "NO_TEMPERATURE"]);
    let devices = probed(&probe.with_sysfs_root(dir.path().join("nowhere")));
    assert_eq!(devices[0].details.numa_node, None);
    assert_eq!(devices[0].health, Health::Healthy);
}

#[test]
fn xid_events_arrive_in_order_and_a_quiet_wait_times_out() {
    let dir = tempfile::tempdir().unwrap();
    let (probe, library) = open_stub(dir.path(), &[]);
    let watch = probe.watch_xids().unwrap();
    assert_eq!(watch.watched(), vec![0, 1]);
    assert_eq!(watch.wait(Duration::from_millis(50)).unwrap(), None);

    control(&library, "events", "0 48\n1 13\n");
    let event = |index, xid, uuid: &str| XidEvent {
        index,
        uuid: Some(uuid.into()),
        xid,
    };
    let h100 = "GPU-11111111-2222-3333-4444-555555555555";
    let a100 = "GPU-66666666-7777-8888-9999-000000000000";
    let long = Duration::from_secs(5);
    assert_eq!(watch.wait(long).unwrap(), Some(event(0, 48, h100)));
    assert_eq!(watch.wait(long).unwrap(), Some(event(1, 13, a100)));
    let started = Instant::now();
    assert_eq!(watch.wait(Duration::from_millis(50)).unwrap(), None);
    assert!(started.elapsed() < Duration::from_secs(2));

    // Later events are delivered too, once each.
    control(&library, "events", "1 31\n");
    assert_eq!(watch.wait(long).unwrap(), Some(event(1, 31, a100)));
    assert_eq!(watch.wait(Duration::from_millis(50)).unwrap(), None);
}

/// The agent's pattern: one thread owns the probe and blocks in `wait`, sending events on.
#[test]
fn xids_are_watched_from_a_thread_that_owns_the_probe() {
    let dir = tempfile::tempdir().unwrap();
    let library = stub(dir.path(), "thread", &[]);
    let (events, received) = std::sync::mpsc::channel();
    let watcher = {
        let library = library.clone();
        std::thread::spawn(move || {
            let probe = NvmlProbe::open(Some(&library)).unwrap();
            let watch = probe.watch_xids().unwrap();
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if let Some(event) = watch.wait(Duration::from_millis(100)).unwrap() {
                    let last = event.xid == 79;
                    events.send(event).unwrap();
                    if last {
                        return;
                    }
                }
            }
        })
    };
    control(&library, "events", "0 13\n");
    control(&library, "events", "1 79\n");
    let xids: Vec<(u32, u64)> = received.iter().map(|e| (e.index, e.xid)).collect();
    assert_eq!(xids, vec![(0, 13), (1, 79)]);
    watcher.join().unwrap();
}

#[test]
fn the_probe_can_be_shared_across_threads() {
    fn shareable<T: Send + Sync>() {}
    shareable::<NvmlProbe>();
}

#[test]
fn an_xid_from_a_gpu_that_fell_off_the_bus_keeps_its_index() {
    let dir = tempfile::tempdir().unwrap();
    let (probe, library) = open_stub(dir.path(), &[]);
    let watch = probe.watch_xids().unwrap();
    control(&library, "lost", "1");
    control(&library, "events", "1 79\n");
    assert_eq!(
        watch.wait(Duration::from_secs(5)).unwrap(),
        Some(XidEvent {
            index: 1,
            uuid: None,
            xid: 79
        })
    );
}

#[test]
fn without_xid_events_watching_says_unsupported() {
    let dir = tempfile::tempdir().unwrap();
    let (probe, _) = open_stub(dir.path(), &["NO_XID_EVENTS"]);
    let err = probe.watch_xids().unwrap_err();
    assert!(matches!(err, NvmlProbeError::XidUnsupported { devices: 2 }), "{err}");
    assert!(err.to_string().contains("not supported"), "{err}");
    // Probing is unaffected.
    assert!(probed(&probe).iter().all(|d| d.health == Health::Healthy));
}

#[test]
fn a_gpu_that_cannot_register_for_xids_is_skipped() {
    let dir = tempfile::tempdir().unwrap();
    let (probe, library) = open_stub(dir.path(), &["GPU1_XID_REGISTER_FAILS"]);
    let watch = probe.watch_xids().unwrap();
    assert_eq!(watch.watched(), vec![0]);
    control(&library, "events", "1 13\n0 94\n");
    let event = watch.wait(Duration::from_secs(5)).unwrap().unwrap();
    assert_eq!((event.index, event.xid), (0, 94));
}

#[test]
fn a_gpu_lost_at_run_time_is_unhealthy_and_the_other_still_works() {
    let dir = tempfile::tempdir().unwrap();
    let (probe, library) = open_stub(dir.path(), &[]);
    assert!(probed(&probe).iter().all(|d| d.health == Health::Healthy));

    control(&library, "lost", "1");
    let devices = probed(&probe);
    assert_eq!(devices.len(), 2, "a lost GPU is reported, not dropped");
    assert_eq!(devices[0].health, Health::Healthy);
    assert_eq!(devices[0].details.pci_bus_id.as_deref(), Some("0000:17:00.0"));
    assert_eq!(devices[1].health, Health::Unhealthy);
    assert!(
        devices[1].health_reason.contains("GPU_IS_LOST"),
        "{}",
        devices[1].health_reason
    );
    // Nothing can be said about a path to a GPU that is gone.
    assert_eq!(links(&devices), vec![vec![], vec![]]);
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
    // Nothing could be read: no usage, no throttle reasons, no ECC, and the memory total is
    // unknown (0), never a made-up idle device.
    let lost = &devices[1];
    assert_eq!(
        (lost.memory_bytes, lost.memory_used_bytes, lost.utilization_percent),
        (0, None, None)
    );
    assert_eq!(
        (lost.telemetry.throttle_reasons.as_ref(), lost.telemetry.ecc),
        (None, None)
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

/// An agent configuration over the stub, with empty sysfs and /dev trees and no ROCm, so
/// only the stub's GPUs are found whatever this host has.
fn agent_config(dir: &Path, library: PathBuf, health: &str) -> pyxis_agent::config::AgentConfig {
    let empty = dir.join("empty-host");
    std::fs::create_dir_all(&empty).unwrap();
    let mut file: pyxis_agent::config::FileConfig = toml::from_str(&format!("[health]\n{health}")).unwrap();
    file.nvml_library = Some(library);
    file.rocm_library = Some(dir.join("no-librocm_smi64.so.1"));
    file.sysfs_root = Some(empty.clone());
    file.devfs_root = Some(empty);
    let flags = pyxis_agent::config::FlagConfig {
        // Nobody listens there: the agent keeps trying, which does not matter here.
        coordinators: vec!["127.0.0.1:9".into()],
        join_token: Some("abcdef.0123456789abcdef".into()),
        ca_hash: Some(format!("sha256:{}", "00".repeat(32))),
        data_dir: Some(dir.join("agent")),
        metrics_addr: Some("off".into()),
        report_interval: Some("100ms".into()),
        ..Default::default()
    };
    pyxis_agent::config::AgentConfig::resolve(file, flags, "gpu-host").unwrap()
}

#[tokio::test]
async fn the_agent_reports_probed_gpus_as_real_devices() {
    let dir = tempfile::tempdir().unwrap();
    let library = stub(dir.path(), "agent", &[]);
    let agent = pyxis_agent::Agent::start(agent_config(dir.path(), library, ""))
        .await
        .unwrap();
    let devices = agent.shared.devices();
    assert_eq!(devices.len(), 2);
    assert!(devices.iter().all(|d| !d.simulated && d.vendor == Vendor::Nvidia));
    let registration = agent.shared.node_info();
    assert_eq!(registration.accelerators[0].hardware_class, "H100-80GB");
    assert_eq!(
        registration.accelerators[0].details.links,
        vec![PeerLink {
            peer: 1,
            kind: Interconnect::NvLink,
            lanes: 4
        }]
    );
    let report = agent.shared.capacity(1);
    assert_eq!(report.devices[1].utilization_percent, Some(38));
    assert_eq!(
        report.devices[0].telemetry.throttle_reasons,
        Some(vec!["sw_power_cap".to_string()])
    );
    let metrics = pyxis_agent::http::render(&agent.shared);
    let labels = "node=\"gpu-host\",gpu=\"0\",uuid=\"GPU-11111111-2222-3333-4444-555555555555\",model=\"NVIDIA H100 80GB HBM3\",vendor=\"nvidia\",hardware_class=\"H100-80GB\",simulated=\"false\"";
    for expected in [
        format!("pyxis_gpu_temperature_celsius{{{labels}}} 41"),
        format!("pyxis_gpu_throttle_reason{{{labels},reason=\"sw_power_cap\"}} 1"),
        format!("pyxis_gpu_xid_errors_total{{{labels}}} 0"),
        format!("pyxis_gpu_remapped_rows{{{labels}}} 3"),
        format!("pyxis_gpu_health{{{labels},health=\"healthy\"}} 1"),
    ] {
        assert!(metrics.contains(&expected), "{expected} missing from\n{metrics}");
    }
    agent.stop().await;
}

/// Polls the agent's devices until `check` holds for device `index`, or fails after 10 s.
async fn wait_device(agent: &pyxis_agent::Agent, index: usize, what: &str, check: impl Fn(&Device) -> bool) -> Device {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let device = agent.shared.devices().remove(index);
        if check(&device) {
            return device;
        }
        assert!(
            Instant::now() < deadline,
            "device {index} never became {what}: {device:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The probe thread turns the NVML XID stream into health with the configured policy: a
/// transient XID degrades a GPU until it has been clean for the recovery window, a fatal
/// one marks it unhealthy for good, an ignored one is only counted; a GPU lost while the
/// agent runs becomes unhealthy; each change asks for an immediate report.
#[tokio::test]
async fn the_agent_applies_the_health_policy_to_the_xid_stream() {
    let dir = tempfile::tempdir().unwrap();
    let library = stub(dir.path(), "policy", &["THREE_GPUS"]);
    let config = agent_config(
        dir.path(),
        library.clone(),
        "recovery_window = \"1s\"\nfatal_xids = [79]\ntransient_xids = [13]\nignored_xids = [45]\n",
    );
    let agent = pyxis_agent::Agent::start(config).await.unwrap();
    assert!(agent.shared.devices().iter().all(|d| d.health == Health::Healthy));

    let transient_at = Instant::now();
    control(&library, "events", "0 45\n0 13\n");
    let degraded = wait_device(&agent, 0, "degraded", |d| d.health == Health::Degraded).await;
    assert!(
        degraded.health_reason.contains("XID 13 (graphics engine exception)"),
        "{}",
        degraded.health_reason
    );
    assert!(
        degraded.health_reason.contains("healthy again after"),
        "{}",
        degraded.health_reason
    );
    assert_eq!(degraded.telemetry.xid_count, Some(2), "the ignored XID is counted too");
    assert_eq!(degraded.telemetry.last_xid, Some(13));
    let recovered = wait_device(&agent, 0, "healthy", |d| d.health == Health::Healthy).await;
    assert!(recovered.health_reason.is_empty());
    assert!(
        transient_at.elapsed() >= Duration::from_secs(1),
        "recovered before the window ended"
    );

    control(&library, "events", "1 79\n");
    let fatal = wait_device(&agent, 1, "unhealthy", |d| d.health == Health::Unhealthy).await;
    assert!(fatal.health_reason.contains("fatal XID 79"), "{}", fatal.health_reason);
    assert!(fatal.health_reason.contains("nvidia-smi -r"), "{}", fatal.health_reason);

    control(&library, "lost", "2");
    let lost = wait_device(&agent, 2, "unhealthy", |d| d.health == Health::Unhealthy).await;
    assert!(
        lost.health_reason.contains("NVML_ERROR_GPU_IS_LOST"),
        "{}",
        lost.health_reason
    );
    assert_eq!(
        lost.uuid,
        agent.shared.node_info().accelerators[2].uuid,
        "a lost GPU keeps its UUID"
    );

    // Fatal and lost are sticky; device 0 stays healthy.
    let report = agent.shared.capacity(1);
    let tiers: Vec<Health> = report.devices.iter().map(|d| d.health).collect();
    assert_eq!(tiers, vec![Health::Healthy, Health::Unhealthy, Health::Unhealthy]);
    // The GPU lost at run time can no longer be read: its usage is unknown, not an idle 0.
    let lost = &report.devices[2];
    assert_eq!((lost.utilization_percent, lost.memory_used_bytes), (None, None));
    assert_eq!(lost.telemetry.throttle_reasons, None);
    assert_eq!(
        lost.telemetry.xid_count,
        Some(0),
        "an NVIDIA GPU still has an XID count"
    );
    let metrics = pyxis_agent::http::render(&agent.shared);
    assert!(
        !metrics
            .lines()
            .any(|l| l.starts_with("pyxis_gpu_utilization_ratio{") && l.contains("gpu=\"2\"")),
        "{metrics}"
    );
    assert!(metrics.contains("gpu=\"1\","), "{metrics}");
    assert!(
        metrics.lines().any(|l| l.starts_with("pyxis_gpu_health{")
            && l.contains("gpu=\"1\"")
            && l.contains("health=\"unhealthy\"} 1")),
        "{metrics}"
    );
    agent.stop().await;
}
