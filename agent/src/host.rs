//! Host facts through sysinfo.

/// Static host facts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostFacts {
    /// Host name.
    pub hostname: String,
    /// OS name and version.
    pub os: String,
    /// Kernel version.
    pub kernel: String,
    /// CPU brand.
    pub cpu_model: String,
    /// Logical CPUs.
    pub cpu_cores: u32,
    /// Total memory.
    pub memory_bytes: u64,
}

/// Reads host facts. Missing facts are reported as `unknown`, never as an error.
pub fn probe_host() -> HostFacts {
    let mut system = sysinfo::System::new().ok();
    if let Some(system) = system.as_mut() {
        system.refresh_memory();
        system.refresh_cpu_list(sysinfo::CpuRefreshKind::nothing());
    }
    let cpus = system.as_ref().map(|s| s.cpus()).unwrap_or_default();
    let cpu_model = cpus
        .first()
        .map(|c| c.brand().trim().to_string())
        .filter(|b| !b.is_empty())
        .unwrap_or_else(|| "unknown".to_string());
    HostFacts {
        hostname: sysinfo::System::host_name().unwrap_or_else(|_| "unknown".to_string()),
        os: sysinfo::System::long_os_version().unwrap_or_else(|_| "unknown".to_string()),
        kernel: sysinfo::System::kernel_version().unwrap_or_else(|_| "unknown".to_string()),
        cpu_model,
        cpu_cores: cpus.len() as u32,
        memory_bytes: system.as_ref().map(|s| s.total_memory()).unwrap_or(0),
    }
}

/// Available host memory now.
pub fn memory_available_bytes(system: &mut Option<sysinfo::System>) -> u64 {
    match system.as_mut() {
        Some(system) => {
            system.refresh_memory();
            system.available_memory()
        }
        None => 0,
    }
}
