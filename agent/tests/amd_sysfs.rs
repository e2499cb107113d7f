//! The amdgpu sysfs fallback against a fake sysfs tree.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;

use pyxis_agent::{amd, hwclass::ClassOverrides};
use pyxis_protocol::Vendor;

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
    assert_eq!(mi300.memory_used_bytes, 3 << 30);
    assert_eq!(mi300.utilization_percent, 64);
    assert_eq!(mi300.temperature_celsius, Some(52));
    assert_eq!((mi300.power_watts, mi300.power_limit_watts), (Some(310), Some(750)));
    assert!(!mi300.simulated);
    let bare = &devices[1];
    assert_eq!(bare.uuid, "AMD-PCI-0000:c2:00.0");
    assert_eq!(bare.model, "AMD GPU (device 0x740f)");
    assert_eq!((bare.temperature_celsius, bare.power_watts), (None, None));
}

#[test]
fn no_drm_class_means_no_amd_gpu() {
    let sys = tempfile::tempdir().unwrap();
    assert!(amd::sysfs_devices(sys.path(), 0, &ClassOverrides::default()).is_empty());
}
