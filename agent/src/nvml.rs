//! NVIDIA GPUs through NVML (nvml-wrapper, which loads `libnvidia-ml.so.1` at run time).
//!
//! A host without the driver is not an error: [`NvmlProbe::open`] fails with
//! [`NvmlProbeError::Unavailable`] and the agent says once that no NVIDIA GPU is probed. A
//! device that fails (for example `NVML_ERROR_GPU_IS_LOST`) is reported as unhealthy with
//! the reason, never dropped silently and never fatal to the others. Optional facts
//! (temperature, power) a driver does not provide are simply absent.

use std::{ffi::OsStr, path::Path};

use nvml_wrapper::{enum_wrappers::device::TemperatureSensor, error::NvmlError, Nvml};
use pyxis_protocol::{Health, Vendor};

use crate::{
    devices::Device,
    hwclass::{self, ClassOverrides},
};

/// Why NVML could not be used.
#[derive(Debug, thiserror::Error)]
pub enum NvmlProbeError {
    /// No usable NVIDIA driver/library on this host.
    #[error("NVML is not available ({0}); no NVIDIA GPU is probed")]
    Unavailable(NvmlError),
    /// The library works but listing devices failed.
    #[error("NVML cannot list devices: {0}")]
    List(NvmlError),
}

/// An initialised NVML library.
pub struct NvmlProbe {
    nvml: Nvml,
    /// Driver version, when the library reports it.
    pub driver_version: Option<String>,
}

impl std::fmt::Debug for NvmlProbe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NvmlProbe")
            .field("driver_version", &self.driver_version)
            .finish_non_exhaustive()
    }
}

impl NvmlProbe {
    /// Loads and initialises NVML, from `library` when given (tests, unusual installs).
    pub fn open(library: Option<&Path>) -> Result<Self, NvmlProbeError> {
        let mut builder = Nvml::builder();
        if let Some(path) = library {
            builder.lib_path(OsStr::new(path.as_os_str()));
        }
        let nvml = builder.init().map_err(NvmlProbeError::Unavailable)?;
        let driver_version = nvml.sys_driver_version().ok();
        Ok(Self { nvml, driver_version })
    }

    /// Every NVIDIA device with its current usage.
    pub fn devices(&self, overrides: &ClassOverrides) -> Result<Vec<Device>, NvmlProbeError> {
        let count = self.nvml.device_count().map_err(NvmlProbeError::List)?;
        Ok((0..count).map(|index| self.device(index, overrides)).collect())
    }

    fn device(&self, index: u32, overrides: &ClassOverrides) -> Device {
        let failed = |what: &str, e: NvmlError| Device {
            index,
            vendor: Vendor::Nvidia,
            model: "unknown NVIDIA GPU".into(),
            uuid: format!("nvidia-index-{index}"),
            memory_bytes: 0,
            memory_used_bytes: 0,
            utilization_percent: 0,
            hardware_class: "unknown".into(),
            health: Health::Unhealthy,
            health_reason: match e {
                NvmlError::GpuLost => {
                    "GPU is lost (NVML_ERROR_GPU_IS_LOST): it fell off the bus or needs a reset".into()
                }
                e => format!("NVML cannot read its {what}: {e}"),
            },
            simulated: false,
            temperature_celsius: None,
            power_watts: None,
            power_limit_watts: None,
            details: Default::default(),
            telemetry: Default::default(),
        };
        let device = match self.nvml.device_by_index(index) {
            Ok(device) => device,
            Err(e) => return failed("handle", e),
        };
        let model = match device.name() {
            Ok(name) => name,
            Err(e) => return failed("name", e),
        };
        let uuid = match device.uuid() {
            Ok(uuid) => uuid,
            Err(e) => return failed("UUID", e),
        };
        let memory = match device.memory_info() {
            Ok(memory) => memory,
            Err(e) => {
                return Device {
                    model,
                    uuid,
                    ..failed("memory", e)
                }
            }
        };
        let utilization = device.utilization_rates().map(|u| u.gpu.min(100) as u8).unwrap_or(0);
        Device {
            index,
            vendor: Vendor::Nvidia,
            hardware_class: hwclass::derive(Vendor::Nvidia, &model, memory.total, overrides),
            model,
            uuid,
            memory_bytes: memory.total,
            memory_used_bytes: memory.used,
            utilization_percent: utilization,
            health: Health::Healthy,
            health_reason: String::new(),
            simulated: false,
            temperature_celsius: device
                .temperature(TemperatureSensor::Gpu)
                .ok()
                .and_then(|t| u16::try_from(t).ok()),
            power_watts: device.power_usage().ok().map(|mw| mw / 1000),
            power_limit_watts: device.enforced_power_limit().ok().map(|mw| mw / 1000),
            details: Default::default(),
            telemetry: Default::default(),
        }
    }
}
