//! The amdgpu sysfs fallback against a fake sysfs tree.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;

use pyxis_agent::{amd, hwclass::ClassOverrides};
use pyxis_protocol::{EccCounts, Interconnect, PeerLink, Vendor};

fn write(root: &Path, rel: &str, text: &str) {
    let path = root.join(rel);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
}

/// A card whose `device` is a symlink to a PCI directory, as in real sysfs.
fn card(sys: &Path, n: u32, pci: &str, files: &[(&str, &str)]) {
    let pci_dir = sys.join("devices/pci0000:00").join(pci);
    for (name, text) in files {
        write(&pci_dir, name, text);
    }
    let card = sys.join(format!("class/drm/card{n}"));
    std::fs::create_dir_all(&card).unwrap();
    std::os::unix::fs::symlink(&pci_dir, card.join("device")).unwrap();
}

#[test]
fn amd_cards_from_sysfs() {
    let sys = tempfile::tempdir().unwrap();
    let s = sys.path();
    card(
        s,
        0,
        "0000:c1:00.0",
        &[
            ("vendor", "0x1002\n"),
            ("device", "0x74a1\n"),
            ("product_name", "AMD Instinct MI300X\n"),
            ("unique_id", "a1b2c3d4e5f60718\n"),
            ("mem_info_vram_total", &(192u64 << 30).to_string()),
            ("mem_info_vram_used", &(3u64 << 30).to_string()),
            ("gpu_busy_percent", "64\n"),
            ("hwmon/hwmon3/temp1_input", "52000\n"),
            ("hwmon/hwmon3/power1_average", "310000000\n"),
            ("hwmon/hwmon3/power1_cap", "750000000\n"),
        ],
    );
    // A second AMD card with only the required files.
    card(
        s,
        1,
        "0000:c2:00.0",
        &[
            ("vendor", "0x1002"),
            ("device", "0x740f"),
            ("mem_info_vram_total", &(64u64 << 30).to_string()),
        ],
    );
    // An NVIDIA card and an AMD display without VRAM files are not reported.
    card(
        s,
        2,
        "0000:01:00.0",
        &[("vendor", "0x10de"), ("mem_info_vram_total", "1")],
    );
    card(s, 3, "0000:03:00.0", &[("vendor", "0x1002")]);
    write(s, "class/drm/card0-DP-1/status", "disconnected");

    let devices = amd::sysfs_devices(s, 4, &ClassOverrides::default());
    assert_eq!(devices.len(), 2, "{devices:?}");
    let mi300 = &devices[0];
    assert_eq!((mi300.index, mi300.vendor), (4, Vendor::Amd));
    assert_eq!(mi300.model, "AMD Instinct MI300X");
    assert_eq!(mi300.hardware_class, "MI300X-192GB");
    assert_eq!(mi300.uuid, "AMD-a1b2c3d4e5f60718");
    assert_eq!(mi300.memory_used_bytes, Some(3 << 30));
    assert_eq!(mi300.utilization_percent, Some(64));
    // amdgpu sysfs gives no throttle reasons, and AMD GPUs have no XIDs: unknown, not zero.
    assert_eq!(
        (mi300.telemetry.throttle_reasons.as_ref(), mi300.telemetry.xid_count),
        (None, None)
    );
    assert_eq!(mi300.temperature_celsius, Some(52));
    assert_eq!((mi300.power_watts, mi300.power_limit_watts), (Some(310), Some(750)));
    assert!(!mi300.simulated);
    assert_eq!(mi300.details.pci_bus_id.as_deref(), Some("0000:c1:00.0"));
    let bare = &devices[1];
    assert_eq!(bare.uuid, "AMD-PCI-0000:c2:00.0");
    assert_eq!(bare.model, "AMD GPU (device 0x740f)");
    assert_eq!((bare.temperature_celsius, bare.power_watts), (None, None));
    // No usage files: usage unknown rather than an idle 0.
    assert_eq!((bare.memory_used_bytes, bare.utilization_percent), (None, None));
    // Facts whose files are absent stay absent.
    assert_eq!(bare.details.pci_bus_id.as_deref(), Some("0000:c2:00.0"));
    assert_eq!(
        (bare.details.numa_node, bare.details.architecture.as_deref()),
        (None, None)
    );
    assert_eq!((bare.details.ecc_enabled, bare.telemetry.ecc), (None, None));
    assert_eq!(
        (bare.telemetry.sm_clock_mhz, bare.details.max_sm_clock_mhz),
        (None, None)
    );
    assert!(bare.details.links.is_empty());
}

/// An MI300X as amdgpu lays it out: RAS counters per block, DPM tables, an xGMI hive.
fn mi300x_files(numa: &str, hive: &str, ras: &[(&str, &str)]) -> Vec<(String, String)> {
    let mut files: Vec<(String, String)> = [
        ("vendor", "0x1002\n"),
        ("device", "0x74a1\n"),
        ("product_name", "AMD Instinct MI300X\n"),
        ("mem_info_vram_total", "206141652992\n"),
        ("numa_node", numa),
        ("pp_dpm_sclk", "0: 500Mhz \n1: 1300Mhz *\n2: 2100Mhz \n"),
        ("pp_dpm_mclk", "0: 900Mhz \n1: 1300Mhz *\n"),
        ("xgmi_hive_info/xgmi_hive_id", hive),
        ("ras/features", "feature mask: 0x00007fff\n"),
    ]
    .iter()
    .map(|(n, t)| (n.to_string(), t.to_string()))
    .collect();
    files.extend(ras.iter().map(|(n, t)| (format!("ras/{n}"), t.to_string())));
    files
}

fn card_with(sys: &Path, n: u32, pci: &str, files: &[(String, String)]) {
    let files: Vec<(&str, &str)> = files.iter().map(|(n, t)| (n.as_str(), t.as_str())).collect();
    card(sys, n, pci, &files);
}

#[test]
fn sysfs_details_pci_numa_ras_clocks_and_xgmi_hive() {
    let sys = tempfile::tempdir().unwrap();
    let s = sys.path();
    let hive = "5405271207541939431\n";
    card_with(
        s,
        0,
        "0000:c1:00.0",
        &mi300x_files(
            "0\n",
            hive,
            &[
                ("umc_err_count", "ue: 1\nce: 5\n"),
                ("gfx_err_count", "ue: 0\nce: 2\n"),
                // Newer kernels add deferred errors; not counted as either.
                ("sdma_err_count", "ue: 0\nce: 0\nde: 4\n"),
            ],
        ),
    );
    card_with(
        s,
        1,
        "0000:c2:00.0",
        &mi300x_files("1\n", hive, &[("umc_err_count", "ue: 0\nce: 0\n")]),
    );
    // Not in a hive (id 0), no NUMA affinity (-1), no RAS counters.
    card_with(s, 2, "0000:c3:00.0", &mi300x_files("-1\n", "0\n", &[]));
    // A `device` that is a plain directory: the address comes from `uevent`.
    for (name, text) in mi300x_files("0\n", hive, &[]) {
        write(s, &format!("class/drm/card3/device/{name}"), &text);
    }
    write(
        s,
        "class/drm/card3/device/uevent",
        "DRIVER=amdgpu\nPCI_CLASS=38000\nPCI_SLOT_NAME=0000:C4:00.0\n",
    );
    // KFD topology: a CPU node and the first GPU (location id 0xc100).
    write(
        s,
        "class/kfd/kfd/topology/nodes/0/properties",
        "cpu_cores_count 96\nlocation_id 0\ngfx_target_version 0\n",
    );
    write(
        s,
        "class/kfd/kfd/topology/nodes/1/properties",
        "cpu_cores_count 0\nlocation_id 49408\ndomain 0\ngfx_target_version 90402\n",
    );

    let devices = amd::sysfs_devices(s, 1, &ClassOverrides::default());
    assert_eq!(devices.len(), 4, "{devices:?}");
    let first = &devices[0];
    assert_eq!(first.hardware_class, "MI300X-192GB");
    assert_eq!(first.details.pci_bus_id.as_deref(), Some("0000:c1:00.0"));
    assert_eq!(first.details.numa_node, Some(0));
    assert_eq!(first.details.architecture.as_deref(), Some("gfx942"));
    assert_eq!(
        first.telemetry.ecc,
        Some(EccCounts {
            volatile_corrected: 7,
            volatile_uncorrected: 1,
            ..Default::default()
        })
    );
    assert_eq!(first.details.ecc_enabled, Some(true));
    assert_eq!(
        (first.telemetry.sm_clock_mhz, first.details.max_sm_clock_mhz),
        (Some(1300), Some(2100))
    );
    assert_eq!(
        (first.telemetry.memory_clock_mhz, first.details.max_memory_clock_mhz),
        (Some(1300), Some(1300))
    );
    let xgmi = |peers: &[u32]| -> Vec<PeerLink> {
        peers
            .iter()
            .map(|&peer| PeerLink {
                peer,
                kind: Interconnect::XGmi,
                lanes: 1,
            })
            .collect()
    };
    // Indices start at 1: cards 0, 1 and 3 share the hive.
    assert_eq!(first.details.links, xgmi(&[2, 4]));
    let second = &devices[1];
    assert_eq!(second.details.numa_node, Some(1));
    assert_eq!(second.telemetry.ecc, Some(EccCounts::default()));
    assert_eq!(second.details.architecture, None, "no KFD node for it");
    assert_eq!(second.details.links, xgmi(&[1, 4]));
    let alone = &devices[2];
    assert_eq!(alone.details.pci_bus_id.as_deref(), Some("0000:c3:00.0"));
    assert_eq!(alone.details.numa_node, None);
    assert_eq!((alone.telemetry.ecc, alone.details.ecc_enabled), (None, None));
    assert!(
        alone.details.links.is_empty(),
        "sysfs tells no PCIe path: no link entry"
    );
    let plain = &devices[3];
    assert_eq!(plain.details.pci_bus_id.as_deref(), Some("0000:c4:00.0"));
    assert_eq!(plain.details.links, xgmi(&[1, 2]));
}

#[test]
fn no_drm_class_means_no_amd_gpu() {
    let sys = tempfile::tempdir().unwrap();
    assert!(amd::sysfs_devices(sys.path(), 0, &ClassOverrides::default()).is_empty());
}
