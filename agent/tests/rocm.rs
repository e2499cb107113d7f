//! The real ROCm SMI code path (libloading, symbol resolution, struct layouts) against a
//! stub `librocm_smi64` compiled by this test (`tests/support/rocm_smi_stub.c`), with a
//! fake KFD topology for the gfx target.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};

use pyxis_agent::{
    hwclass::ClassOverrides,
    rocm::{RocmProbe, RocmProbeError, RocmUnavailable},
};
use pyxis_protocol::{EccCounts, Health, Interconnect, PeerLink, Vendor};

/// Compiles the stub with `defines` into `dir`; returns the library path.
fn stub(dir: &Path, name: &str, defines: &[&str]) -> PathBuf {
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/support/rocm_smi_stub.c");
    let out = dir.join(format!("librocm_smi64-{name}.so"));
    let status = std::process::Command::new("gcc")
        .args(["-shared", "-fPIC", "-O1", "-o"])
        .arg(&out)
        .arg(&source)
        .args(defines.iter().map(|d| format!("-D{d}")))
        .status()
        .expect("gcc is needed to build the ROCm SMI stub (apt-get install gcc)");
    assert!(status.success(), "gcc failed for {name}");
    out
}

fn write(root: &Path, rel: &str, text: &str) {
    let path = root.join(rel);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
}

/// A KFD topology as amdgpu writes it: a CPU node and the stub's two GPUs (matched by PCI
/// domain and location id, `bus << 8 | device << 3 | function`).
fn fake_sysfs(root: &Path) {
    let nodes = "class/kfd/kfd/topology/nodes";
    write(
        root,
        &format!("{nodes}/0/properties"),
        "cpu_cores_count 96\nsimd_count 0\nlocation_id 0\ndomain 0\ngfx_target_version 0\n",
    );
    write(
        root,
        &format!("{nodes}/1/properties"),
        "cpu_cores_count 0\nsimd_count 1216\nlocation_id 49408\ndomain 0\ngfx_target_version 90402\n",
    );
    let location = (0x0d << 8) | (0x1e << 3) | 3;
    write(
        root,
        &format!("{nodes}/2/properties"),
        &format!("cpu_cores_count 0\nlocation_id {location}\ndomain 1\ngfx_target_version 90402\n"),
    );
}

/// Opens the stub built with `defines`, reading the fake sysfs under `dir`.
fn open(dir: &Path, name: &str, defines: &[&str]) -> RocmProbe {
    let sys = dir.join("sys");
    fake_sysfs(&sys);
    RocmProbe::open(Some(&stub(dir, name, defines)))
        .unwrap()
        .with_sysfs_root(sys)
}

#[test]
fn two_mi300x_with_every_fact() {
    let dir = tempfile::tempdir().unwrap();
    let probe = open(dir.path(), "ok", &[]);
    assert_eq!(probe.device_count(), 2);
    assert_eq!(probe.driver_version.as_deref(), Some("6.8.5"));
    assert_eq!(probe.library_version.as_deref(), Some("7.3.0"));
    // Indices continue after devices of other vendors.
    let devices = probe.devices(2, &ClassOverrides::default());
    assert_eq!(devices.len(), 2);

    let gpu = &devices[0];
    assert_eq!((gpu.index, gpu.vendor), (2, Vendor::Amd));
    // The market name, not the pci.ids name ("Aqua Vanjaram [Instinct MI300X]").
    assert_eq!(gpu.model, "AMD Instinct MI300X");
    assert_eq!(gpu.uuid, "AMD-1a2b3c4d5e6f7081");
    assert_eq!(gpu.memory_bytes, 192 << 30);
    assert_eq!(gpu.memory_used_bytes, Some(5 << 30));
    assert_eq!(gpu.utilization_percent, Some(71));
    // ROCm SMI is not asked for throttle reasons, and AMD GPUs have no XIDs.
    assert_eq!(
        (gpu.telemetry.throttle_reasons.as_ref(), gpu.telemetry.xid_count),
        (None, None)
    );
    // No edge sensor on an MI300X: the junction temperature.
    assert_eq!(gpu.temperature_celsius, Some(48));
    assert_eq!((gpu.power_watts, gpu.power_limit_watts), (Some(350), Some(750)));
    assert_eq!((gpu.health, gpu.health_reason.as_str()), (Health::Healthy, ""));
    assert!(!gpu.simulated, "real probing never reports simulated devices");
    let details = &gpu.details;
    assert_eq!(details.pci_bus_id.as_deref(), Some("0000:c1:00.0"));
    assert_eq!(details.numa_node, Some(0));
    assert_eq!(details.driver_version.as_deref(), Some("6.8.5"));
    assert_eq!(details.compute_api_version.as_deref(), Some("7.3.0"));
    assert_eq!(details.architecture.as_deref(), Some("gfx942"));
    assert_eq!(
        (details.max_sm_clock_mhz, details.max_memory_clock_mhz),
        (Some(2100), Some(1300))
    );
    assert_eq!(details.ecc_enabled, Some(true));
    assert_eq!(details.mig, None);
    assert_eq!(
        (gpu.telemetry.sm_clock_mhz, gpu.telemetry.memory_clock_mhz),
        (Some(1300), Some(1300))
    );
    // UMC 5+1 and GFX 2+0; MMHUB cannot be counted; XGMI_WAFL has no ECC enabled, so its
    // counts are not summed. RAS counts are since boot (the volatile ones); lifetime counts,
    // retired pages and remapped rows are not read, so they stay unknown.
    assert_eq!(
        gpu.telemetry.ecc,
        Some(EccCounts {
            volatile_corrected: 7,
            volatile_uncorrected: 1,
            ..Default::default()
        })
    );

    let other = &devices[1];
    assert_eq!(other.index, 3);
    assert_eq!(other.uuid, "AMD-0000000000c0ffee");
    assert_eq!(other.details.pci_bus_id.as_deref(), Some("0001:0d:1e.3"));
    assert_eq!(other.details.numa_node, Some(1));
    assert_eq!(other.details.architecture.as_deref(), Some("gfx942"));
    assert_eq!(
        (other.utilization_percent, other.temperature_celsius),
        (Some(3), Some(39))
    );
    assert_eq!(other.power_watts, Some(142));
    assert_eq!(other.telemetry.ecc, Some(EccCounts::default()));
    assert_eq!(other.health, Health::Healthy);
}

#[test]
fn xgmi_links_both_ways() {
    let dir = tempfile::tempdir().unwrap();
    let probe = open(dir.path(), "links", &[]);
    let devices = probe.devices(0, &ClassOverrides::default());
    // On different NUMA nodes, yet directly linked: xGMI, not "system".
    let link = |peer| {
        vec![PeerLink {
            peer,
            kind: Interconnect::XGmi,
            lanes: 1,
        }]
    };
    assert_eq!(devices[0].details.links, link(1));
    assert_eq!(devices[1].details.links, link(0));
}

#[test]
fn hardware_class_is_mi300x_192gb_unless_overridden() {
    let dir = tempfile::tempdir().unwrap();
    let probe = open(dir.path(), "class", &[]);
    let devices = probe.devices(0, &ClassOverrides::default());
    assert!(
        devices.iter().all(|d| d.hardware_class == "MI300X-192GB"),
        "{devices:?}"
    );
    let overrides = ClassOverrides::new([("AMD Instinct MI300X".to_string(), "MI300X-VF".to_string())]);
    assert_eq!(probe.devices(0, &overrides)[0].hardware_class, "MI300X-VF");
}

#[test]
fn init_failure_means_rocm_smi_is_unavailable_not_a_crash() {
    let dir = tempfile::tempdir().unwrap();
    let err = RocmProbe::open(Some(&stub(dir.path(), "init-fails", &["INIT_FAILS"]))).unwrap_err();
    assert!(
        matches!(&err, RocmProbeError::Unavailable(RocmUnavailable::Init(status)) if status.0 == 8),
        "{err}"
    );
    let text = err.to_string();
    assert!(text.contains("RSMI_STATUS_INIT_ERROR"), "{text}");
    assert!(text.contains("sysfs fallback"), "{text}");
}

#[test]
fn a_missing_library_means_rocm_smi_is_unavailable() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("no-such-librocm_smi64.so");
    let err = RocmProbe::open(Some(&missing)).unwrap_err();
    assert!(
        matches!(&err, RocmProbeError::Unavailable(RocmUnavailable::Load { .. })),
        "{err}"
    );
    let text = err.to_string();
    assert!(text.contains("no-such-librocm_smi64.so"), "{text}");
    assert!(
        text.contains("no AMD GPU is probed through ROCm SMI") && text.contains("sysfs fallback"),
        "{text}"
    );
}

#[test]
fn a_missing_required_symbol_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let err = RocmProbe::open(Some(&stub(dir.path(), "no-memory", &["NO_MEMORY_TOTAL"]))).unwrap_err();
    assert!(
        matches!(
            &err,
            RocmProbeError::Unavailable(RocmUnavailable::MissingSymbol {
                symbol: "rsmi_dev_memory_total_get",
                ..
            })
        ),
        "{err}"
    );
    assert!(err.to_string().contains("rsmi_dev_memory_total_get"), "{err}");
}

#[test]
fn a_missing_optional_symbol_only_drops_that_fact() {
    let dir = tempfile::tempdir().unwrap();
    let probe = open(dir.path(), "no-power", &["NO_POWER"]);
    let with_power = open(&dir.path().join("full"), "full", &[]).devices(0, &ClassOverrides::default());
    let devices = probe.devices(0, &ClassOverrides::default());
    assert_eq!(devices.len(), 2);
    for (without, with) in devices.iter().zip(&with_power) {
        assert_eq!(without.power_watts, None);
        assert!(with.power_watts.is_some());
        // Everything else is as with the full library, the power limit included.
        let same = pyxis_agent::devices::Device {
            power_watts: with.power_watts,
            ..without.clone()
        };
        assert_eq!(&same, with);
    }
}

#[test]
fn a_failing_gpu_is_reported_unhealthy_and_the_other_still_works() {
    let dir = tempfile::tempdir().unwrap();
    let probe = open(dir.path(), "gpu1-fails", &["GPU1_FAILS"]);
    let devices = probe.devices(0, &ClassOverrides::default());
    assert_eq!(devices.len(), 2, "a failing GPU is never dropped");
    let good = &devices[0];
    assert_eq!(good.health, Health::Healthy);
    assert_eq!(good.model, "AMD Instinct MI300X");
    assert_eq!(good.telemetry.ecc.map(|e| e.volatile_uncorrected), Some(1));
    // Its link to the failing GPU cannot be read, so it is left out rather than guessed.
    assert_eq!(good.details.links, vec![]);
    let bad = &devices[1];
    assert_eq!((bad.index, bad.vendor), (1, Vendor::Amd));
    assert_eq!(bad.health, Health::Unhealthy);
    assert!(
        bad.health_reason.contains("rsmi_dev_name_get") && bad.health_reason.contains("RSMI_STATUS_FILE_ERROR"),
        "{}",
        bad.health_reason
    );
    assert_eq!(bad.uuid, "amd-index-1");
    assert_eq!(bad.hardware_class, "unknown");
    assert_eq!((bad.memory_used_bytes, bad.utilization_percent), (None, None));
    assert!(!bad.simulated);
}

/// The ROCm 5 library: the 5.x `rsmi_frequencies_t` layout and no market name (the board's
/// `product_name` in sysfs is used instead of the pci.ids name).
#[test]
fn rocm5_library_layout() {
    let dir = tempfile::tempdir().unwrap();
    let probe = open(dir.path(), "rocm5", &["ROCM5"]);
    write(
        &dir.path().join("sys"),
        "bus/pci/devices/0000:c1:00.0/product_name",
        "AMD Instinct MI300X\n",
    );
    assert_eq!(probe.library_version.as_deref(), Some("5.0.0"));
    let devices = probe.devices(0, &ClassOverrides::default());
    let gpu = &devices[0];
    assert_eq!(
        (gpu.telemetry.sm_clock_mhz, gpu.details.max_sm_clock_mhz),
        (Some(1300), Some(2100))
    );
    assert_eq!(
        (gpu.telemetry.memory_clock_mhz, gpu.details.max_memory_clock_mhz),
        (Some(1300), Some(1300))
    );
    assert_eq!(
        (gpu.model.as_str(), gpu.hardware_class.as_str()),
        ("AMD Instinct MI300X", "MI300X-192GB")
    );
    // Without product_name, the name rsmi_dev_name_get gives.
    assert_eq!(devices[1].model, "Aqua Vanjaram [Instinct MI300X]");
}

/// Debian's real `librocm_smi64.so.1` (5.2.3), when installed: every required symbol
/// resolves, and without an AMD GPU it is unavailable, not a crash.
#[test]
fn the_real_library_when_installed() {
    let path = Path::new("/usr/lib/librocm_smi64.so.1");
    if !path.exists() {
        eprintln!(
            "skipped: {} is not installed (apt-get install librocm-smi64-1)",
            path.display()
        );
        return;
    }
    match RocmProbe::open(Some(path)) {
        Err(RocmProbeError::Unavailable(RocmUnavailable::Load { .. } | RocmUnavailable::MissingSymbol { .. })) => {
            panic!("the real library must load and resolve every required symbol")
        }
        Err(RocmProbeError::Unavailable(_)) => {}
        Ok(probe) => {
            let devices = probe.devices(0, &ClassOverrides::default());
            assert_eq!(devices.len() as u32, probe.device_count());
        }
    }
}
