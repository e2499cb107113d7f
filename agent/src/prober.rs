//! Hardware probing: which backends exist on this host, the first reading at start-up, and
//! the probe thread that keeps readings and health current.
//!
//! Backends, each optional at run time (a missing driver is "not present", said once):
//! NVIDIA through NVML; AMD through ROCm SMI, falling back to amdgpu sysfs; TPUs through
//! device nodes and the GCE metadata server. Device indices are given in that order.
//!
//! The probe thread owns the backends. It re-reads usage every report interval and, between
//! readings, waits on NVML's XID event set, so an XID reaches the health tracker (and the
//! coordinator, through an immediate report) within milliseconds rather than at the next
//! reading. Driver calls can block for a long time on a sick GPU; they never run on the
//! async runtime, so the link and `/metrics` keep working while a GPU hangs.

use std::{
    sync::{mpsc, Arc},
    time::{Duration, Instant},
};

use pyxis_protocol::Vendor;

use crate::{
    amd,
    config::{AgentConfig, HostPaths},
    devices::Device,
    health::{HealthTracker, XidClass},
    hwclass::ClassOverrides,
    nvml, rocm, tpu, AgentShared,
};

/// The backends found on this host.
pub struct Backends {
    nvml: Option<nvml::NvmlProbe>,
    rocm: Option<rocm::RocmProbe>,
    /// AMD GPUs are read from amdgpu sysfs (ROCm SMI absent).
    amd_sysfs: bool,
    paths: HostPaths,
    overrides: ClassOverrides,
}

impl std::fmt::Debug for Backends {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Backends")
            .field("nvml", &self.nvml.is_some())
            .field("rocm", &self.rocm.is_some())
            .field("amd_sysfs", &self.amd_sysfs)
            .finish()
    }
}

impl Backends {
    /// Whether any backend needs periodic reading.
    pub fn is_empty(&self) -> bool {
        self.nvml.is_none() && self.rocm.is_none() && !self.amd_sysfs
    }

    /// Reads NVIDIA and AMD devices now (TPU chips have no usage to refresh).
    fn read(&self) -> Vec<Device> {
        let mut fresh = Vec::new();
        if let Some(probe) = &self.nvml {
            match probe.readings(&self.overrides) {
                Ok(found) => fresh.extend(found),
                Err(e) => tracing::debug!(error = %e, "cannot refresh NVIDIA devices"),
            }
        }
        let first = fresh.len() as u32;
        if let Some(probe) = &self.rocm {
            fresh.extend(probe.devices(first, &self.overrides));
        } else if self.amd_sysfs {
            fresh.extend(amd::sysfs_devices(&self.paths.sys, first, &self.overrides));
        }
        fresh
    }
}

/// Finds the backends and reads every device once. Never fails: what cannot be probed is
/// logged once and left out.
pub fn discover(config: &AgentConfig, paths: HostPaths) -> (Vec<Device>, Backends) {
    let overrides = ClassOverrides::new(config.hardware_classes.clone());
    let mut devices = Vec::new();
    let nvml = match nvml::NvmlProbe::open(config.nvml_library.as_deref()).map(|p| p.with_sysfs_root(&paths.sys)) {
        Ok(probe) => match probe.devices(&overrides) {
            Ok(found) => {
                tracing::info!(
                    count = found.len(),
                    driver = probe.driver_version.as_deref().unwrap_or("unknown"),
                    "NVIDIA GPUs found through NVML"
                );
                devices.extend(found);
                Some(probe)
            }
            Err(e) => {
                tracing::warn!(error = %e, "NVML is loaded but cannot list devices; no NVIDIA GPU reported");
                None
            }
        },
        Err(e) if config.nvml_library.is_some() => {
            tracing::warn!(library = ?config.nvml_library, reason = %e, "the configured nvml_library cannot be used; no NVIDIA GPU probed");
            None
        }
        Err(e) => {
            tracing::info!(reason = %e, "NVIDIA probing skipped");
            None
        }
    };
    let first_amd = devices.len() as u32;
    // ROCm SMI reads the real /sys whatever sysfs_root says, and prints to stderr when
    // there is no GPU: ask it only where amdgpu shows AMD cards, or when configured.
    let amd_cards = amd::sysfs_devices(&paths.sys, first_amd, &overrides);
    let try_rocm = config.rocm_library.is_some() || !amd_cards.is_empty();
    let rocm = match try_rocm.then(|| rocm::RocmProbe::open(config.rocm_library.as_deref())) {
        None => None,
        Some(Ok(probe)) => {
            let probe = probe.with_sysfs_root(&paths.sys);
            let found = probe.devices(first_amd, &overrides);
            if found.is_empty() {
                tracing::info!("ROCm SMI is loaded but reports no AMD GPU");
                None
            } else {
                tracing::info!(count = found.len(), "AMD GPUs found through ROCm SMI");
                devices.extend(found);
                Some(probe)
            }
        }
        Some(Err(e)) if config.rocm_library.is_some() => {
            tracing::warn!(library = ?config.rocm_library, reason = %e, "the configured rocm_library cannot be used");
            None
        }
        Some(Err(e)) => {
            tracing::info!(reason = %e, "ROCm SMI not used");
            None
        }
    };
    let mut amd_sysfs = false;
    if rocm.is_none() && !amd_cards.is_empty() {
        tracing::info!(
            count = amd_cards.len(),
            "AMD GPUs found through amdgpu sysfs (without ROCm SMI: RAS counts but no link types; install ROCm SMI or set rocm_library for more)"
        );
        amd_sysfs = true;
        devices.extend(amd_cards);
    }
    let tpus = tpu::probe(
        &paths.dev,
        &config.gce_metadata_url,
        &config.name,
        devices.len() as u32,
        &overrides,
    );
    if !tpus.is_empty() {
        tracing::info!(count = tpus.len(), class = %tpus[0].hardware_class, "TPU chips found");
    }
    devices.extend(tpus);
    for device in devices.iter().filter(|d| d.health != pyxis_protocol::Health::Healthy) {
        tracing::error!(gpu = device.index, uuid = %device.uuid, health = device.health.as_str(), reason = %device.health_reason, "device is not healthy at start-up");
    }
    if devices.is_empty() {
        tracing::info!(
            "this node reports no accelerators (probed: NVIDIA through NVML, AMD through ROCm SMI and amdgpu sysfs, TPUs through /dev and GCE metadata; --simulate gives demo devices)"
        );
    }
    let backends = Backends {
        nvml,
        rocm,
        amd_sysfs,
        paths,
        overrides,
    };
    (devices, backends)
}

/// Stops the probe thread when dropped.
#[derive(Debug)]
pub struct ProbeThread {
    _stop: mpsc::Sender<()>,
}

/// Starts the probe thread. It holds `shared` until the returned handle is dropped.
pub fn spawn(shared: Arc<AgentShared>, backends: Backends) -> std::io::Result<ProbeThread> {
    let (stop, stopped) = mpsc::channel();
    std::thread::Builder::new()
        .name("pyxis-probe".into())
        .spawn(move || run(&shared, &backends, &stopped))?;
    Ok(ProbeThread { _stop: stop })
}

/// Longest single wait on the XID event set, so a stop is noticed promptly.
const EVENT_SLICE: Duration = Duration::from_millis(250);

fn run(shared: &AgentShared, backends: &Backends, stopped: &mpsc::Receiver<()>) {
    let interval = shared.config.report_interval;
    let mut tracker = HealthTracker::new(shared.config.health.clone());
    let xids = match backends.nvml.as_ref().map(|p| p.watch_xids()) {
        Some(Ok(watch)) => Some(watch),
        Some(Err(e)) => {
            tracing::warn!(error = %e, "XID events unavailable: GPU faults are seen only through ECC counters and failed reads");
            None
        }
        None => None,
    };
    // Apply the policy to the first reading at once (a GPU already lost at start-up).
    update(shared, Vec::new(), &mut tracker);
    loop {
        let next_reading = Instant::now() + interval;
        loop {
            let left = next_reading.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            match &xids {
                Some(watch) => {
                    if !matches!(stopped.try_recv(), Err(mpsc::TryRecvError::Empty)) {
                        return;
                    }
                    match watch.wait(left.min(EVENT_SLICE)) {
                        Ok(Some(event)) => on_xid(shared, &mut tracker, event.index, event.xid),
                        Ok(None) => {}
                        Err(e) => {
                            tracing::debug!(error = %e, "waiting for XID events failed");
                            if wait_or_stop(stopped, left.min(EVENT_SLICE)) {
                                return;
                            }
                        }
                    }
                }
                None => {
                    if wait_or_stop(stopped, left) {
                        return;
                    }
                }
            }
        }
        update(shared, backends.read(), &mut tracker);
    }
}

/// Sleeps for `timeout`; true when the thread should stop.
fn wait_or_stop(stopped: &mpsc::Receiver<()>, timeout: Duration) -> bool {
    !matches!(stopped.recv_timeout(timeout), Err(mpsc::RecvTimeoutError::Timeout))
}

fn on_xid(shared: &AgentShared, tracker: &mut HealthTracker, index: u32, xid: u64) {
    let Some(uuid) = shared
        .devices()
        .into_iter()
        .find(|d| d.index == index && d.vendor == Vendor::Nvidia)
        .map(|d| d.uuid)
    else {
        tracing::warn!(gpu = index, xid, "XID event for a GPU this agent does not report");
        return;
    };
    let class = tracker.on_xid(&uuid, xid, Instant::now());
    let name = crate::health::xid_name(xid);
    match class {
        XidClass::Fatal => tracing::error!(gpu = index, %uuid, xid, %name, "fatal XID: GPU marked unhealthy"),
        XidClass::Ignored => tracing::info!(gpu = index, %uuid, xid, %name, "XID (ignored by the health policy)"),
        XidClass::Transient | XidClass::Unlisted => {
            tracing::warn!(gpu = index, %uuid, xid, %name, "XID: GPU degraded for the recovery window")
        }
    }
    update(shared, Vec::new(), tracker);
}

/// Merges a fresh reading into the reported devices (by index and vendor: a lost GPU can
/// no longer tell its UUID), re-assesses health, and asks for an immediate report when a
/// tier or reason changed.
fn update(shared: &AgentShared, fresh: Vec<Device>, tracker: &mut HealthTracker) {
    let now = Instant::now();
    let mut changed = Vec::new();
    if let Ok(mut devices) = shared.devices.lock() {
        for device in devices.iter_mut().filter(|d| !d.simulated) {
            let before = (device.health, device.health_reason.clone());
            if let Some(now_read) = fresh
                .iter()
                .find(|f| f.index == device.index && f.vendor == device.vendor)
            {
                device.memory_used_bytes = now_read.memory_used_bytes;
                device.utilization_percent = now_read.utilization_percent;
                device.temperature_celsius = now_read.temperature_celsius;
                device.power_watts = now_read.power_watts;
                device.power_limit_watts = now_read.power_limit_watts;
                device.telemetry = now_read.telemetry.clone();
                device.health = now_read.health;
                device.health_reason = now_read.health_reason.clone();
            }
            tracker.assess(device, now);
            if before != (device.health, device.health_reason.clone()) {
                changed.push((
                    device.index,
                    device.uuid.clone(),
                    device.health,
                    device.health_reason.clone(),
                ));
            }
        }
    }
    for (index, uuid, health, reason) in &changed {
        match health {
            pyxis_protocol::Health::Healthy => tracing::info!(gpu = index, %uuid, "device healthy again"),
            pyxis_protocol::Health::Degraded => {
                tracing::warn!(gpu = index, %uuid, health = "degraded", %reason, "device health changed")
            }
            pyxis_protocol::Health::Unhealthy => {
                tracing::error!(gpu = index, %uuid, health = "unhealthy", %reason, "device health changed")
            }
        }
    }
    if !changed.is_empty() {
        shared.devices_changed.notify_one();
    }
}
