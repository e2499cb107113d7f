//! Hardware classes: the short, stable name a device is scheduled and priced by (for
//! example `H100-80GB`, `A100-40GB`, `MI300X-192GB`, `TPU-v5e`).
//!
//! Rules (also in `docs/hardware-classes.md`), applied to what the driver reports:
//! 1. An operator override for the exact model string (case-insensitive) wins.
//! 2. The family is the model's first token that looks like a product code: letters then
//!    digits, optionally more letters (`H100`, `A100`, `L40S`, `MI300X`, `B200`), after
//!    dropping the vendor words (`NVIDIA`, `AMD`, `Instinct`, `Tesla`, `GeForce`).
//! 3. GPUs get a memory suffix: the `NNGB` written in the model name if there is one,
//!    otherwise the reported memory rounded to the nearest marketed size (drivers report a
//!    little less than the label: 79.6 GiB is an 80 GB card).
//! 4. TPUs are `TPU-<generation>`: `v5 lite`/`v5litepod` is `v5e`, and `v4`, `v5p`, `v6e`
//!    are kept as written.
//! 5. Anything else: the model with spaces turned into `-`, plus the memory suffix.

use std::collections::BTreeMap;

use pyxis_protocol::Vendor;

/// Marketed device memory sizes in GB, used to round what drivers report.
const MARKETED_GB: &[u64] = &[
    8, 12, 16, 24, 32, 40, 48, 64, 80, 94, 96, 128, 141, 144, 180, 192, 256, 288,
];

/// Operator overrides: exact model string (as the driver reports it) to class.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClassOverrides(BTreeMap<String, String>);

impl ClassOverrides {
    /// Builds overrides from `model = class` pairs.
    pub fn new(pairs: impl IntoIterator<Item = (String, String)>) -> Self {
        Self(
            pairs
                .into_iter()
                .map(|(model, class)| (model.trim().to_lowercase(), class))
                .collect(),
        )
    }

    fn get(&self, model: &str) -> Option<&String> {
        self.0.get(&model.trim().to_lowercase())
    }
}

/// Derives the hardware class of a device.
pub fn derive(vendor: Vendor, model: &str, memory_bytes: u64, overrides: &ClassOverrides) -> String {
    if let Some(class) = overrides.get(model) {
        return class.clone();
    }
    if vendor == Vendor::Google || model.to_lowercase().contains("tpu") {
        return format!("TPU-{}", tpu_generation(model));
    }
    let memory = memory_suffix(model, memory_bytes);
    match family(model) {
        Some(family) => format!("{family}-{memory}"),
        None => {
            let name: String = model
                .split_whitespace()
                .collect::<Vec<_>>()
                .join("-")
                .chars()
                .filter(|c| c.is_ascii_graphic())
                .collect();
            if name.is_empty() {
                format!("unknown-{memory}")
            } else {
                format!("{name}-{memory}")
            }
        }
    }
}

fn family(model: &str) -> Option<String> {
    const SKIP: &[&str] = &[
        "nvidia", "amd", "instinct", "tesla", "geforce", "radeon", "pro", "sxm", "pcie",
    ];
    model
        .split(|c: char| c.is_whitespace() || c == '-' || c == '_')
        .filter(|t| !SKIP.contains(&t.to_lowercase().as_str()))
        .find(|token| {
            let letters = token.chars().take_while(|c| c.is_ascii_alphabetic()).count();
            let digits = token.chars().skip(letters).take_while(|c| c.is_ascii_digit()).count();
            let rest = token.chars().skip(letters + digits).all(|c| c.is_ascii_alphabetic());
            (1..=3).contains(&letters) && digits >= 1 && rest && !token.to_lowercase().ends_with("gb")
        })
        .map(|t| t.to_uppercase())
}

fn memory_suffix(model: &str, memory_bytes: u64) -> String {
    // A size written in the model name ("A100-SXM4-40GB", "H100 80GB HBM3") is the label.
    let written = model
        .split(|c: char| c.is_whitespace() || c == '-' || c == '_')
        .find_map(|t| t.to_uppercase().strip_suffix("GB").and_then(|n| n.parse::<u64>().ok()));
    let gb = written.unwrap_or_else(|| {
        let gib = memory_bytes as f64 / f64::from(1u32 << 30);
        MARKETED_GB
            .iter()
            .copied()
            .min_by(|a, b| (*a as f64 - gib).abs().total_cmp(&(*b as f64 - gib).abs()))
            .unwrap_or(0)
    });
    format!("{gb}GB")
}

fn tpu_generation(model: &str) -> String {
    let lower = model.to_lowercase();
    if lower.contains("lite") || lower.contains("v5e") {
        return "v5e".into();
    }
    lower
        .split(|c: char| !c.is_ascii_alphanumeric())
        .find(|t| t.starts_with('v') && t.len() >= 2 && t[1..2].chars().all(|c| c.is_ascii_digit()))
        .map(str::to_string)
        .unwrap_or_else(|| "unknown".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    const GIB: u64 = 1 << 30;
    const MIB: u64 = 1 << 20;

    /// Data-driven: (vendor, model as drivers report it, memory bytes, expected class).
    #[test]
    fn classes_from_real_model_strings() {
        let cases: &[(Vendor, &str, u64, &str)] = &[
            (Vendor::Nvidia, "NVIDIA H100 80GB HBM3", 81_559 * MIB, "H100-80GB"),
            (Vendor::Nvidia, "NVIDIA H100 PCIe", 81_559 * MIB, "H100-80GB"),
            (Vendor::Nvidia, "NVIDIA H100 NVL", 95_830 * MIB, "H100-94GB"),
            (Vendor::Nvidia, "NVIDIA H200", 143_771 * MIB, "H200-141GB"),
            (Vendor::Nvidia, "NVIDIA A100-SXM4-40GB", 40_536 * MIB, "A100-40GB"),
            (Vendor::Nvidia, "NVIDIA A100-SXM4-80GB", 81_920 * MIB, "A100-80GB"),
            (Vendor::Nvidia, "NVIDIA A100 80GB PCIe", 81_920 * MIB, "A100-80GB"),
            (Vendor::Nvidia, "NVIDIA L40S", 46_068 * MIB, "L40S-48GB"),
            (Vendor::Nvidia, "NVIDIA L4", 23_034 * MIB, "L4-24GB"),
            (Vendor::Nvidia, "Tesla T4", 15_360 * MIB, "T4-16GB"),
            (Vendor::Nvidia, "Tesla V100-SXM2-32GB", 32_768 * MIB, "V100-32GB"),
            (Vendor::Nvidia, "NVIDIA B200", 183_359 * MIB, "B200-180GB"),
            (Vendor::Amd, "AMD Instinct MI300X", 192 * GIB, "MI300X-192GB"),
            (Vendor::Amd, "AMD Instinct MI250X", 64 * GIB, "MI250X-64GB"),
            (Vendor::Amd, "AMD Instinct MI325X", 256 * GIB, "MI325X-256GB"),
            (Vendor::Google, "TPU v5 lite", 16 * GIB, "TPU-v5e"),
            (Vendor::Google, "v5litepod-8", 16 * GIB, "TPU-v5e"),
            (Vendor::Google, "TPU v5p", 95 * GIB, "TPU-v5p"),
            (Vendor::Google, "v4-8", 32 * GIB, "TPU-v4"),
            (Vendor::Google, "TPU v6e", 32 * GIB, "TPU-v6e"),
            (
                Vendor::Other,
                "Mystery Accelerator",
                24 * GIB,
                "Mystery-Accelerator-24GB",
            ),
            (Vendor::Other, "", 8 * GIB, "unknown-8GB"),
        ];
        for (vendor, model, memory, expected) in cases {
            assert_eq!(
                derive(*vendor, model, *memory, &ClassOverrides::default()),
                *expected,
                "{model}"
            );
        }
    }

    #[test]
    fn operator_overrides_win() {
        let overrides = ClassOverrides::new([("nvidia h100 80gb hbm3".to_string(), "H100-SXM-80GB".to_string())]);
        assert_eq!(
            derive(Vendor::Nvidia, "NVIDIA H100 80GB HBM3", 80 * GIB, &overrides),
            "H100-SXM-80GB"
        );
        assert_eq!(
            derive(Vendor::Nvidia, "NVIDIA H100 PCIe", 80 * GIB, &overrides),
            "H100-80GB"
        );
    }
}
