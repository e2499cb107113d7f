//! The rules within one decoded object, beyond what its types say. Each returns the field
//! path and the problem; every rule is checked, so one pass reports them all.

use std::collections::{BTreeMap, BTreeSet};

use super::{
    error::Problem,
    parse::push_key,
    types::{
        GpuQuota, HardwareClassSpec, ModelDeploymentSpec, ObjectMeta, RoutingPolicy, RuntimeChoice, RuntimeKind,
        ScalePolicy, TenantSpec, NORMALISED_GPUS_KEY,
    },
    Kind, Manifest,
};

/// The longest object name (a DNS label).
const MAX_NAME_LEN: usize = 63;
/// The longest `readinessTimeout`.
const MAX_READINESS_TIMEOUT_S: u64 = 24 * 60 * 60;
/// Variables the agent sets from the devices it assigns; a manifest setting them would
/// escape its placement.
const DEVICE_VARIABLES: [&str; 8] = [
    "CUDA_VISIBLE_DEVICES",
    "NVIDIA_VISIBLE_DEVICES",
    "HIP_VISIBLE_DEVICES",
    "ROCR_VISIBLE_DEVICES",
    "TPU_VISIBLE_CHIPS",
    "TPU_VISIBLE_DEVICES",
    "TPU_CHIPS_PER_PROCESS_BOUNDS",
    "TPU_PROCESS_BOUNDS",
];

/// Every rule `manifest` breaks, with its field path.
pub(super) fn manifest(manifest: &Manifest) -> Vec<(String, Problem)> {
    let mut check = Checker::default();
    metadata(&mut check, manifest.kind(), manifest.metadata());
    match manifest {
        Manifest::Tenant(tenant) => tenant_spec(&mut check, &tenant.spec),
        Manifest::HardwareClass(class) => hardware_class_spec(&mut check, &class.spec),
        Manifest::ModelDeployment(deployment) => deployment_spec(&mut check, &deployment.spec),
    }
    check.problems
}

/// Every rule `metadata` breaks: for a document whose `spec` did not decode, so that its
/// name and namespace problems are reported in the same pass.
pub(super) fn metadata_only(kind: Kind, meta: &ObjectMeta) -> Vec<(String, Problem)> {
    let mut check = Checker::default();
    metadata(&mut check, kind, meta);
    check.problems
}

#[derive(Default)]
struct Checker {
    problems: Vec<(String, Problem)>,
}

impl Checker {
    fn invalid(&mut self, path: impl Into<String>, reason: impl Into<String>) {
        let reason = reason.into();
        self.problems.push((path.into(), Problem::Invalid { reason }));
    }

    fn missing(&mut self, path: impl Into<String>, hint: impl Into<String>) {
        let hint = Some(hint.into());
        self.problems.push((path.into(), Problem::Missing { hint }));
    }

    /// `value` must be a finite number above 0.
    fn positive(&mut self, path: impl Into<String>, value: f64) {
        if !(value.is_finite() && value > 0.0) {
            self.invalid(path, format!("must be a number above 0, found {value}"));
        }
    }

    /// `value` must be a finite number, 0 or more.
    fn not_negative(&mut self, path: impl Into<String>, value: f64) {
        if !(value.is_finite() && value >= 0.0) {
            self.invalid(path, format!("must be a number, 0 or more, found {value}"));
        }
    }
}

/// `base` with a map key appended (`spec.guarantee[H100-80GB]`).
fn keyed(base: &str, key: &str) -> String {
    let mut path = base.to_string();
    push_key(&mut path, key);
    path
}

// ---------------------------------------------------------------------------------------
// metadata

fn metadata(check: &mut Checker, kind: Kind, metadata: &ObjectMeta) {
    let name_rule = match kind {
        Kind::HardwareClass => hardware_class_name(&metadata.name),
        Kind::Tenant | Kind::ModelDeployment => dns_label(&metadata.name),
    };
    if let Err(reason) = name_rule {
        check.invalid("metadata.name", reason);
    }
    if kind == Kind::HardwareClass && metadata.name == NORMALISED_GPUS_KEY {
        check.invalid(
            "metadata.name",
            format!("{NORMALISED_GPUS_KEY:?} is reserved: quotas write {{gpus: N}} for normalised GPUs"),
        );
    }
    match (&metadata.namespace, kind.is_namespaced()) {
        (Some(namespace), true) => {
            if let Err(reason) = dns_label(namespace) {
                check.invalid("metadata.namespace", reason);
            }
        }
        (None, true) => check.missing("metadata.namespace", format!("the tenant this {kind} belongs to")),
        (Some(_), false) => check.invalid(
            "metadata.namespace",
            format!("a {kind} is cluster-wide and has no namespace; remove it"),
        ),
        (None, false) => {}
    }
    for (key, value) in &metadata.labels {
        let path = keyed("metadata.labels", key);
        if let Err(reason) = label_key(key) {
            check.invalid(path.clone(), reason);
        }
        if let Err(reason) = label_value(value) {
            check.invalid(path, reason);
        }
    }
}

/// An RFC 1123 DNS label: tenant, deployment and namespace names.
fn dns_label(name: &str) -> Result<(), String> {
    name_shape(name, |c| c.is_ascii_lowercase() || c.is_ascii_digit(), |c| c == '-').map_err(|detail| {
        format!(
            "{name:?} is not a valid name ({detail}): use lowercase letters, digits and '-', starting and ending with \
             a letter or digit, at most {MAX_NAME_LEN} characters"
        )
    })
}

/// A hardware class name: as a DNS label, plus uppercase letters and `.` (`H100-80GB`,
/// `A100-40GB-MIG-3g.20gb`).
fn hardware_class_name(name: &str) -> Result<(), String> {
    name_shape(name, |c| c.is_ascii_alphanumeric(), |c| c == '-' || c == '.').map_err(|detail| {
        format!(
            "{name:?} is not a valid hardware class name ({detail}): use letters, digits, '-' and '.', starting and \
             ending with a letter or digit, at most {MAX_NAME_LEN} characters"
        )
    })
}

/// `name` is 1 to 63 characters of `edge` and `inner`, with `edge` ones at both ends.
fn name_shape(name: &str, edge: impl Fn(char) -> bool, inner: impl Fn(char) -> bool) -> Result<(), &'static str> {
    if name.is_empty() {
        return Err("empty");
    }
    if name.len() > MAX_NAME_LEN {
        return Err("too long");
    }
    if let Some(bad) = name.chars().find(|&c| !edge(c) && !inner(c)) {
        return Err(if bad.is_ascii_uppercase() {
            "uppercase letter"
        } else {
            "invalid character"
        });
    }
    let ends_fit = name.chars().next().is_some_and(&edge) && name.chars().last().is_some_and(&edge);
    if !ends_fit {
        return Err("bad first or last character");
    }
    Ok(())
}

/// A Kubernetes label key: `[prefix/]name`.
fn label_key(key: &str) -> Result<(), String> {
    let (prefix, name) = match key.split_once('/') {
        Some((prefix, name)) => (Some(prefix), name),
        None => (None, key),
    };
    if let Some(prefix) = prefix {
        let prefix_fits =
            !prefix.is_empty() && prefix.len() <= 253 && prefix.split('.').all(|part| dns_label(part).is_ok());
        if !prefix_fits {
            return Err(format!(
                "label key {key:?} has an invalid prefix: a lowercase DNS name such as example.com"
            ));
        }
    }
    if name.is_empty() || !label_text(name) {
        return Err(format!(
            "label key {key:?} is invalid: at most 63 letters, digits, '-', '_' and '.', starting and ending with \
             a letter or digit, after an optional DNS prefix and '/'"
        ));
    }
    Ok(())
}

/// A Kubernetes label value: empty, or as a label key's name.
fn label_value(value: &str) -> Result<(), String> {
    if value.is_empty() || label_text(value) {
        return Ok(());
    }
    Err(format!(
        "label value {value:?} is invalid: at most 63 letters, digits, '-', '_' and '.', starting and ending with a \
         letter or digit"
    ))
}

fn label_text(text: &str) -> bool {
    name_shape(
        text,
        |c| c.is_ascii_alphanumeric(),
        |c| c == '-' || c == '_' || c == '.',
    )
    .is_ok()
}

// ---------------------------------------------------------------------------------------
// Tenant

fn tenant_spec(check: &mut Checker, spec: &TenantSpec) {
    check.positive("spec.weight", spec.weight);
    if let Some(guarantee) = &spec.guarantee {
        quota(check, "spec.guarantee", guarantee);
    }
    if let Some(limit) = &spec.limit {
        quota(check, "spec.limit", limit);
    }
    if let (Some(guarantee), Some(limit)) = (&spec.guarantee, &spec.limit) {
        match (guarantee, limit) {
            (GpuQuota::Normalised(guaranteed), GpuQuota::Normalised(ceiling)) if guaranteed > ceiling => check.invalid(
                "spec.limit.gpus",
                format!(
                    "the limit ({ceiling}) is below the guarantee ({guaranteed}); the limit includes the guarantee"
                ),
            ),
            (GpuQuota::PerClass(guaranteed), GpuQuota::PerClass(ceilings)) => {
                for (class, guaranteed) in guaranteed {
                    let ceiling = ceilings.get(class).copied().unwrap_or(0);
                    if *guaranteed > ceiling {
                        check.invalid(
                            keyed("spec.limit", class),
                            format!(
                                "the limit for {class} ({ceiling}) is below its guarantee ({guaranteed}); the limit \
                                 includes the guarantee"
                            ),
                        );
                    }
                }
            }
            // Normalised against per-class: comparable only with the classes' capacities,
            // which the store knows.
            _ => {}
        }
    }
    if spec.tokens_per_minute == Some(0) {
        check.invalid(
            "spec.tokensPerMinute",
            "must be at least 1; leave it out for no token limit",
        );
    }
}

fn quota(check: &mut Checker, path: &str, quota: &GpuQuota) {
    match quota {
        GpuQuota::Normalised(gpus) => check.not_negative(format!("{path}.{NORMALISED_GPUS_KEY}"), *gpus),
        GpuQuota::PerClass(classes) => {
            for class in classes.keys() {
                if let Err(reason) = hardware_class_name(class) {
                    check.invalid(keyed(path, class), reason);
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// HardwareClass

fn hardware_class_spec(check: &mut Checker, spec: &HardwareClassSpec) {
    let rules = &spec.match_rules;
    if rules.vendor.is_none() && rules.model.is_none() && rules.min_memory_gib.is_none() {
        check.invalid(
            "spec.match",
            "give at least one of vendor, model, minMemoryGiB: a class matching every device is a mistake",
        );
    }
    if let Some(memory) = rules.min_memory_gib {
        check.positive("spec.match.minMemoryGiB", memory);
    }
    check.not_negative("spec.pricePerGpuHour", spec.price_per_gpu_hour);
    check.positive("spec.relativeCapacity", spec.relative_capacity);
}

// ---------------------------------------------------------------------------------------
// ModelDeployment

fn deployment_spec(check: &mut Checker, spec: &ModelDeploymentSpec) {
    model(check, spec);
    gateway_limits(check, spec);
    runtimes(check, &spec.runtimes);
    resources(check, spec);

    let replicas = spec.replicas;
    if replicas.max == 0 {
        check.invalid(
            "spec.replicas.max",
            "must be at least 1; delete the deployment to run none",
        );
    }
    if replicas.min > replicas.max {
        check.invalid(
            "spec.replicas.min",
            format!("min ({}) is above max ({})", replicas.min, replicas.max),
        );
    }
    if replicas.min == 0 && spec.scale_policy == ScalePolicy::AlwaysWarm {
        check.invalid(
            "spec.replicas.min",
            "min 0 needs scalePolicy warm-zero or hot-zero (always-warm keeps at least one replica)",
        );
    }

    if let Some(budget) = spec.latency_budget {
        if budget.ttft_ms == 0 {
            check.invalid("spec.latencyBudget.ttftMs", "must be at least 1");
        }
        if budget.tpot_ms == Some(0) {
            check.invalid("spec.latencyBudget.tpotMs", "must be at least 1");
        }
    } else if spec.routing == RoutingPolicy::LatencyBudget {
        check.missing("spec.latencyBudget", "routing: latency-budget routes by it");
    }

    if let Some(timeout) = spec.readiness_timeout {
        if timeout.is_zero() || timeout.as_secs() > MAX_READINESS_TIMEOUT_S {
            check.invalid(
                "spec.readinessTimeout",
                format!(
                    "must be above 0 and at most 24h, found {}",
                    humantime::format_duration(timeout)
                ),
            );
        }
    }
}

fn gateway_limits(check: &mut Checker, spec: &ModelDeploymentSpec) {
    for (i, tenant) in spec.shared_with.iter().enumerate() {
        let ok = tenant == "*"
            || (!tenant.is_empty()
                && tenant.len() <= 63
                && tenant
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.'));
        if !ok {
            check.invalid(
                format!("spec.sharedWith[{i}]"),
                format!("{tenant:?} is not a tenant name or \"*\" (every tenant)"),
            );
        }
    }
    if let Some(n) = spec.max_concurrent_requests {
        if n == 0 || n > 100_000 {
            check.invalid("spec.maxConcurrentRequests", format!("must be 1 to 100000, found {n}"));
        }
    }
    if let Some(timeout) = spec.queue_timeout {
        if timeout.is_zero() || timeout.as_secs() > 3600 {
            check.invalid(
                "spec.queueTimeout",
                format!(
                    "must be above 0 and at most 1h, found {}",
                    humantime::format_duration(timeout)
                ),
            );
        }
    }
}

fn model(check: &mut Checker, spec: &ModelDeploymentSpec) {
    let model = &spec.model;
    for (field, value) in [
        ("name", &model.name),
        ("version", &model.version),
        ("source", &model.source),
    ] {
        let path = format!("spec.model.{field}");
        if value.trim().is_empty() {
            check.invalid(path, "must not be empty");
        } else if value.chars().any(|c| c.is_control()) {
            check.invalid(path, "must not hold control characters");
        } else if field != "source" && value.chars().any(char::is_whitespace) {
            check.invalid(path, format!("{value:?} must not hold spaces"));
        }
    }
    if let Some(size) = model.size_gib {
        check.positive("spec.model.sizeGiB", size);
    }
    if let Some(digest) = &model.digest {
        let ok = digest.split_once(':').is_some_and(|(algorithm, hex)| {
            !algorithm.is_empty()
                && algorithm.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
                && hex.len() >= 32
                && hex.bytes().all(|b| b.is_ascii_hexdigit())
        });
        if !ok {
            check.invalid(
                "spec.model.digest",
                format!("{digest:?} is not ALGORITHM:HEX, for example sha256:9f2c… (at least 32 hex digits)"),
            );
        }
    }
}

fn runtimes(check: &mut Checker, runtimes: &[RuntimeChoice]) {
    if runtimes.is_empty() {
        let kinds: Vec<&str> = RuntimeKind::ALL.iter().map(|k| k.as_str()).collect();
        check.invalid(
            "spec.runtimes",
            format!("list at least one runtime ({})", kinds.join(", ")),
        );
    }
    let mut first_index: BTreeMap<RuntimeKind, usize> = BTreeMap::new();
    for (index, runtime) in runtimes.iter().enumerate() {
        let path = format!("spec.runtimes[{index}]");
        if runtime.kind != RuntimeKind::Custom {
            if let Some(&first) = first_index.get(&runtime.kind) {
                check.invalid(
                    format!("{path}.kind"),
                    format!(
                        "{} is already listed at spec.runtimes[{first}]; a node runs the first runtime it supports, \
                         so this entry would never be used",
                        runtime.kind
                    ),
                );
            } else {
                first_index.insert(runtime.kind, index);
            }
        }
        for key in runtime.env.keys() {
            let env_path = keyed(&format!("{path}.env"), key);
            if !env_name(key) {
                check.invalid(
                    env_path,
                    format!("{key:?} is not an environment variable name (letters, digits and '_', not starting with a digit)"),
                );
            } else if DEVICE_VARIABLES.contains(&key.as_str()) {
                check.invalid(
                    env_path,
                    format!("{key} is set by Pyxis from the devices the replica is placed on"),
                );
            }
        }
        match (&runtime.custom, runtime.kind) {
            (Some(_), kind) if kind != RuntimeKind::Custom => check.invalid(
                format!("{path}.custom"),
                format!("only a custom runtime takes custom; {kind} is launched by the node's configuration"),
            ),
            (None, RuntimeKind::Custom) => check.missing(
                format!("{path}.custom"),
                "a custom runtime gives its command (and probes) here",
            ),
            (Some(custom), _) => {
                let custom_path = format!("{path}.custom");
                match custom.command.first() {
                    None => check.missing(
                        format!("{custom_path}.command"),
                        "the program and its arguments, with {port} where it must listen",
                    ),
                    Some(program) if program.trim().is_empty() => {
                        check.invalid(format!("{custom_path}.command[0]"), "the program must not be empty")
                    }
                    Some(_) => {
                        let uses_port = custom.command.iter().any(|part| part.contains("{port}"))
                            || runtime.env.values().any(|value| value.contains("{port}"));
                        if !uses_port {
                            check.invalid(
                                format!("{custom_path}.command"),
                                "must use {port} (in command or env): the runtime listens where Pyxis probes it",
                            );
                        }
                    }
                }
                let paths = [
                    ("healthPath", Some(&custom.health_path)),
                    ("metricsPath", custom.metrics_path.as_ref()),
                    ("versionPath", custom.version_path.as_ref()),
                    ("openaiPath", Some(&custom.openai_path)),
                ];
                for (field, value) in paths {
                    if let Some(value) = value.filter(|v| !v.starts_with('/')) {
                        check.invalid(
                            format!("{custom_path}.{field}"),
                            format!("{value:?} must be a path starting with '/'"),
                        );
                    }
                }
            }
            (None, _) => {}
        }
    }
}

fn env_name(name: &str) -> bool {
    name.chars().next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

fn resources(check: &mut Checker, spec: &ModelDeploymentSpec) {
    let resources = &spec.resources;
    if resources.gpus_per_replica == 0 {
        let cpu = "a CPU deployment (gpusPerReplica: 0)";
        if resources.gpu_memory_gib.is_some() {
            check.invalid(
                "spec.resources.gpuMemoryGiB",
                format!("{cpu} needs no GPU memory; remove it"),
            );
        }
        if !resources.hardware_classes.is_empty() {
            check.invalid(
                "spec.resources.hardwareClasses",
                format!("{cpu} runs on no hardware class; remove them"),
            );
        }
        if !resources.preferred_hardware_classes.is_empty() {
            check.invalid(
                "spec.resources.preferredHardwareClasses",
                format!("{cpu} runs on no hardware class; remove them"),
            );
        }
        return;
    }
    if let Some(memory) = resources.gpu_memory_gib {
        check.positive("spec.resources.gpuMemoryGiB", memory);
    }
    let allowed = class_list(check, "spec.resources.hardwareClasses", &resources.hardware_classes);
    let preferred_path = "spec.resources.preferredHardwareClasses";
    class_list(check, preferred_path, &resources.preferred_hardware_classes);
    if !allowed.is_empty() {
        for (index, class) in resources.preferred_hardware_classes.iter().enumerate() {
            if !allowed.contains(class.as_str()) {
                check.invalid(
                    format!("{preferred_path}[{index}]"),
                    format!("{class} is not among hardwareClasses, so it can never be used"),
                );
            }
        }
    }
}

/// Checks a list of class names (valid, no repeats); returns the set.
fn class_list<'a>(check: &mut Checker, path: &str, classes: &'a [String]) -> BTreeSet<&'a str> {
    let mut seen = BTreeSet::new();
    for (index, class) in classes.iter().enumerate() {
        if let Err(reason) = hardware_class_name(class) {
            check.invalid(format!("{path}[{index}]"), reason);
        } else if !seen.insert(class.as_str()) {
            check.invalid(format!("{path}[{index}]"), format!("{class} is listed twice"));
        }
    }
    seen
}
