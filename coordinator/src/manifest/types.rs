//! The kinds' types, shaped as Kubernetes objects so they can become CRDs later:
//! `apiVersion`, `kind`, `metadata`, `spec` (and `status`, which the store owns: accepted
//! on input and ignored). Field names are SPEC.md's ("Manifests"), camelCase in YAML and
//! JSON.
//!
//! The serde derives here describe the shape only; the rules across fields (zero where a
//! positive number is needed, `min` above `max`, names, ...) are in `validate.rs`, so a value
//! of these types built by [`super::parse_documents`] has passed both.

use std::{collections::BTreeMap, fmt, time::Duration};

use serde::{de, ser::SerializeMap, Deserialize, Deserializer, Serialize, Serializer};

use super::{Kind, API_VERSION};

/// The `metadata` of every kind.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ObjectMeta {
    /// The object's name: a DNS label (lowercase letters, digits, `-`, at most 63). A
    /// `HardwareClass` name may also hold uppercase letters and `.` (`H100-80GB`,
    /// `A100-40GB-MIG-3g.20gb`), as the classes agents derive do.
    pub name: String,
    /// The tenant a namespaced kind (`ModelDeployment`) belongs to; required there and
    /// absent on cluster-wide kinds (`Tenant`, `HardwareClass`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// Free-form labels, Kubernetes rules: keys `[prefix/]name`, values at most 63
    /// characters.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
}

/// Serializes a kind as its full document: `apiVersion`, `kind`, `metadata`, `spec`.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Document<'a, S> {
    api_version: &'static str,
    kind: Kind,
    metadata: &'a ObjectMeta,
    spec: &'a S,
}

// ---------------------------------------------------------------------------------------
// Tenant

/// A team sharing the fleet: its weight in fair share, its guaranteed quota and borrowing
/// ceiling, its latency band and token budget. Cluster-wide; its name is the namespace of
/// the tenant's deployments.
#[derive(Debug, Clone, PartialEq)]
pub struct Tenant {
    /// Name (the namespace of its deployments); no namespace.
    pub metadata: ObjectMeta,
    /// Desired state.
    pub spec: TenantSpec,
}

/// A [`Tenant`]'s `spec`. Every field has a default, so `spec` may be left out.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TenantSpec {
    /// Weight in weighted fair share; positive. Default 1.
    #[serde(default = "one")]
    pub weight: f64,
    /// Capacity reserved for this tenant, lent to others while it is idle and reclaimed when
    /// it has pending replicas. Absent: nothing is guaranteed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guarantee: Option<GpuQuota>,
    /// Borrowing ceiling: the most this tenant holds, guarantee included. Absent: it may
    /// borrow whatever is idle.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<GpuQuota>,
    /// Latency band. Default `bulk`.
    #[serde(default)]
    pub latency_band: LatencyBand,
    /// Token budget per minute at the gateway, prompt and completion together; at least 1.
    /// Absent: unlimited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokens_per_minute: Option<u64>,
    /// Whether quotas are enforced or only reported. Default `enforce`.
    #[serde(default)]
    pub quota_mode: QuotaMode,
}

impl Default for TenantSpec {
    fn default() -> Self {
        TenantSpec {
            weight: 1.0,
            guarantee: None,
            limit: None,
            latency_band: LatencyBand::default(),
            tokens_per_minute: None,
            quota_mode: QuotaMode::default(),
        }
    }
}

/// A quota of GPUs, written `{gpus: N}` in normalised units (each GPU counts as its class's
/// `relativeCapacity`) or per hardware class `{H100-80GB: 2, A100-40GB: 4}` in whole GPUs.
/// The two forms do not mix in one quota.
#[derive(Debug, Clone, PartialEq)]
pub enum GpuQuota {
    /// `{gpus: N}`: normalised GPUs (for example H100-equivalents), not negative.
    Normalised(f64),
    /// `{CLASS: N, ...}`: whole GPUs per hardware class; a class not listed counts as 0.
    PerClass(BTreeMap<String, u32>),
}

/// The key of the normalised form of a [`GpuQuota`]; no hardware class may be named this.
pub const NORMALISED_GPUS_KEY: &str = "gpus";

impl Serialize for GpuQuota {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            GpuQuota::Normalised(gpus) => {
                let mut map = serializer.serialize_map(Some(1))?;
                map.serialize_entry(NORMALISED_GPUS_KEY, gpus)?;
                map.end()
            }
            GpuQuota::PerClass(classes) => classes.serialize(serializer),
        }
    }
}

impl<'de> Deserialize<'de> for GpuQuota {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct QuotaVisitor;

        impl<'de> de::Visitor<'de> for QuotaVisitor {
            type Value = GpuQuota;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a map: {gpus: N} (normalised GPUs) or {HARDWARE-CLASS: N, ...}")
            }

            fn visit_map<A: de::MapAccess<'de>>(self, mut map: A) -> Result<GpuQuota, A::Error> {
                let mut normalised = None;
                let mut classes = BTreeMap::new();
                while let Some(key) = map.next_key::<String>()? {
                    if key == NORMALISED_GPUS_KEY {
                        normalised = Some(map.next_value::<f64>()?);
                    } else {
                        // The YAML parser has already refused a key given twice.
                        classes.insert(key, map.next_value::<u32>()?);
                    }
                }
                match normalised {
                    Some(_) if !classes.is_empty() => Err(de::Error::custom(
                        "`gpus` (normalised GPUs) and per-class counts do not mix: write {gpus: N} or \
                         {CLASS: N, ...}",
                    )),
                    Some(gpus) => Ok(GpuQuota::Normalised(gpus)),
                    None => Ok(GpuQuota::PerClass(classes)),
                }
            }
        }

        deserializer.deserialize_map(QuotaVisitor)
    }
}

/// How latency-sensitive a tenant's traffic is.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LatencyBand {
    /// Interactive traffic: served first.
    RealTime,
    /// The default.
    #[default]
    Bulk,
    /// Offline work: served last.
    Batch,
}

/// Whether a tenant's quota is enforced.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum QuotaMode {
    /// Over-quota work is refused or reclaimed. The default.
    #[default]
    Enforce,
    /// Over-quota work is allowed and reported as such, to try a quota before enforcing it.
    DryRun,
}

impl QuotaMode {
    /// The spelling in manifests.
    pub fn as_str(self) -> &'static str {
        match self {
            QuotaMode::Enforce => "enforce",
            QuotaMode::DryRun => "dry-run",
        }
    }
}

// ---------------------------------------------------------------------------------------
// HardwareClass

/// A named class of accelerator, cluster-wide: which devices belong to it, what a GPU-hour
/// costs and how much one GPU is worth in normalised units. A device takes the first class
/// whose `match` fits it.
#[derive(Debug, Clone, PartialEq)]
pub struct HardwareClass {
    /// Name (`H100-80GB`); no namespace.
    pub metadata: ObjectMeta,
    /// Desired state.
    pub spec: HardwareClassSpec,
}

/// A [`HardwareClass`]'s `spec`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HardwareClassSpec {
    /// Which devices belong to the class; every rule given must hold.
    #[serde(rename = "match")]
    pub match_rules: HardwareMatch,
    /// Price of one GPU for one hour, for cost attribution; not negative. Default 0
    /// (unpriced).
    #[serde(default)]
    pub price_per_gpu_hour: f64,
    /// What one GPU of this class is worth in normalised units (the unit of `{gpus: N}`
    /// quotas); positive. Default 1.
    #[serde(default = "one")]
    pub relative_capacity: f64,
}

/// Rules over the facts an agent reports about a device; at least one is given.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HardwareMatch {
    /// The device's vendor.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vendor: Option<DeviceVendor>,
    /// A regular expression searched (not anchored, case-sensitive unless it starts with
    /// `(?i)`) in the model string the driver reports, for example `H100.*80GB` in
    /// `NVIDIA H100 80GB HBM3`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<ModelPattern>,
    /// Least device memory, in GiB, as the driver reports it (a little under the marketed
    /// size: an 80 GB card reports about 79.6 GiB); positive.
    #[serde(default, rename = "minMemoryGiB", skip_serializing_if = "Option::is_none")]
    pub min_memory_gib: Option<f64>,
}

impl HardwareMatch {
    /// Whether a device with these facts fits every rule given.
    pub fn matches(&self, vendor: pyxis_protocol::Vendor, model: &str, memory_bytes: u64) -> bool {
        let vendor_fits = self.vendor.is_none_or(|v| v.matches(vendor));
        let model_fits = self.model.as_ref().is_none_or(|pattern| pattern.is_match(model));
        // Precision: f64 holds every memory size below 2^53 bytes exactly.
        let memory_fits = self.min_memory_gib.is_none_or(|gib| memory_bytes as f64 >= gib * GIB);
        vendor_fits && model_fits && memory_fits
    }
}

impl HardwareClass {
    /// Whether a device with these facts belongs to this class.
    pub fn matches(&self, vendor: pyxis_protocol::Vendor, model: &str, memory_bytes: u64) -> bool {
        self.spec.match_rules.matches(vendor, model, memory_bytes)
    }
}

const GIB: f64 = 1024.0 * 1024.0 * 1024.0;

/// Accelerator vendors, as written in a `HardwareClass` match (lowercase, as in JSON output
/// and metrics).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DeviceVendor {
    /// NVIDIA GPUs.
    Nvidia,
    /// AMD GPUs.
    Amd,
    /// Google TPUs.
    Google,
    /// Any other accelerator.
    Other,
}

impl DeviceVendor {
    /// Whether a device of this protocol vendor is of this vendor.
    pub fn matches(self, vendor: pyxis_protocol::Vendor) -> bool {
        use pyxis_protocol::Vendor;
        matches!(
            (self, vendor),
            (DeviceVendor::Nvidia, Vendor::Nvidia)
                | (DeviceVendor::Amd, Vendor::Amd)
                | (DeviceVendor::Google, Vendor::Google)
                | (DeviceVendor::Other, Vendor::Other)
        )
    }
}

/// A compiled `match.model` pattern. Compared and serialized as its source text.
#[derive(Clone)]
pub struct ModelPattern(regex::Regex);

/// The longest pattern accepted, in bytes.
const MAX_PATTERN_LEN: usize = 1024;
/// Compiled size limit: patterns come from users, and a device model is a short string.
const PATTERN_SIZE_LIMIT: usize = 1 << 20;

impl ModelPattern {
    /// Compiles a pattern, with a one-line reason when it is not a valid one.
    pub fn new(pattern: &str) -> Result<Self, String> {
        if pattern.is_empty() {
            return Err("empty pattern; leave `model` out to match any model".to_string());
        }
        if pattern.len() > MAX_PATTERN_LEN {
            return Err(format!(
                "pattern is {} bytes long; at most {MAX_PATTERN_LEN}",
                pattern.len()
            ));
        }
        regex::RegexBuilder::new(pattern)
            .size_limit(PATTERN_SIZE_LIMIT)
            .build()
            .map(ModelPattern)
            .map_err(|e| format!("invalid regular expression {pattern:?}: {}", regex_reason(&e)))
    }

    /// The pattern as written.
    pub fn as_str(&self) -> &str {
        self.0.as_str()
    }

    /// Whether the pattern occurs in `model`.
    pub fn is_match(&self, model: &str) -> bool {
        self.0.is_match(model)
    }
}

/// The last line of the regex crate's multi-line message (`error: unclosed group`).
fn regex_reason(error: &regex::Error) -> String {
    match error {
        regex::Error::Syntax(text) => text
            .lines()
            .rev()
            .find_map(|line| line.trim().strip_prefix("error: "))
            .unwrap_or(text.as_str())
            .to_string(),
        regex::Error::CompiledTooBig(limit) => format!("compiles to more than {limit} bytes"),
        other => other.to_string(),
    }
}

impl fmt::Debug for ModelPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("ModelPattern").field(&self.as_str()).finish()
    }
}

impl PartialEq for ModelPattern {
    fn eq(&self, other: &Self) -> bool {
        self.as_str() == other.as_str()
    }
}

impl Eq for ModelPattern {}

impl Serialize for ModelPattern {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for ModelPattern {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let pattern = String::deserialize(deserializer)?;
        ModelPattern::new(&pattern).map_err(de::Error::custom)
    }
}

// ---------------------------------------------------------------------------------------
// ModelDeployment

/// A model served by a tenant: what to run, on what, how many, how fast.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelDeployment {
    /// Name, and the tenant as `namespace` (required).
    pub metadata: ObjectMeta,
    /// Desired state.
    pub spec: ModelDeploymentSpec,
}

/// A [`ModelDeployment`]'s `spec`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ModelDeploymentSpec {
    /// The model served.
    pub model: ModelSpec,
    /// Runtimes in order of preference; the first one a node supports runs there. At least
    /// one; a kind other than `custom` appears once.
    pub runtimes: Vec<RuntimeChoice>,
    /// What one replica needs.
    pub resources: Resources,
    /// How many replicas. Default `{min: 1, max: 1}`.
    #[serde(default)]
    pub replicas: Replicas,
    /// Latency targets. Absent: none (required by `routing: latency-budget`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latency_budget: Option<LatencyBudget>,
    /// What happens to idle replicas. Default `always-warm`.
    #[serde(default)]
    pub scale_policy: ScalePolicy,
    /// How the gateway picks a replica. Default `least-outstanding`.
    #[serde(default)]
    pub routing: RoutingPolicy,
    /// How long a replica may take to become ready (`90s`, `10m`), more than 0 and at most
    /// 24h. Absent: the agent's default (10 minutes).
    #[serde(default, with = "duration_text", skip_serializing_if = "Option::is_none")]
    pub readiness_timeout: Option<Duration>,
    /// Calls the gateway sends one replica at once, 1 to 100000; more wait in the fair
    /// queue. Absent: [`DEFAULT_MAX_CONCURRENT_REQUESTS`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_concurrent_requests: Option<u32>,
    /// How long a call may wait in the gateway's queue (every replica busy) before it is
    /// answered 503, more than 0 and at most 1h. Absent: [`DEFAULT_QUEUE_TIMEOUT`].
    #[serde(default, with = "duration_text", skip_serializing_if = "Option::is_none")]
    pub queue_timeout: Option<Duration>,
    /// Other tenants whose API keys may call this deployment through the gateway (`"*"`:
    /// every tenant). Their calls count against their own token budgets and queue in their
    /// own latency bands. Default: only the owning tenant.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub shared_with: Vec<String>,
}

/// Calls per replica at once when `maxConcurrentRequests` is absent.
pub const DEFAULT_MAX_CONCURRENT_REQUESTS: u32 = 64;

/// Queue wait when `queueTimeout` is absent.
pub const DEFAULT_QUEUE_TIMEOUT: Duration = Duration::from_secs(30);

/// `spec.model`: which model, which version, from where.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ModelSpec {
    /// The model's name, as clients ask for it (`Qwen/Qwen2.5-7B-Instruct`).
    pub name: String,
    /// Its version, reported in every response and audit record (`2024-09-19`); quote
    /// numbers-like versions in YAML (`"1.0"`).
    pub version: String,
    /// Where the runtime loads it from: a path on the node or a URI.
    pub source: String,
    /// Size of the weights in GiB; positive. Absent: unknown.
    #[serde(default, rename = "sizeGiB", skip_serializing_if = "Option::is_none")]
    pub size_gib: Option<f64>,
    /// Digest of the weights, `ALGORITHM:HEX` (`sha256:9f2c…`), recorded in every audit
    /// record of a call it served. Absent: unknown.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
}

/// One entry of `spec.runtimes`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RuntimeChoice {
    /// The runtime kind.
    pub kind: RuntimeKind,
    /// Extra arguments, appended to the launch line the agent builds for the kind.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<String>,
    /// Extra environment. Device visibility variables (`CUDA_VISIBLE_DEVICES`, ...) are
    /// Pyxis's to set and are refused here.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    /// The launch and probes of a `custom` runtime; required for `custom` and refused for
    /// every other kind.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub custom: Option<CustomRuntimeSpec>,
}

/// Inference runtime kinds (SPEC.md "Runtime kinds").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RuntimeKind {
    /// vLLM (`vllm serve`).
    Vllm,
    /// Hugging Face Text Generation Inference.
    Tgi,
    /// SGLang.
    Sglang,
    /// NVIDIA Triton Inference Server.
    Triton,
    /// TensorRT-LLM (`trtllm-serve`).
    Trtllm,
    /// Ollama.
    Ollama,
    /// llama.cpp's `llama-server`; runs on CPU too.
    LlamaCpp,
    /// Anything else, described by the manifest (`custom`).
    Custom,
}

impl RuntimeKind {
    /// Every kind, in SPEC order.
    pub const ALL: [RuntimeKind; 8] = [
        RuntimeKind::Vllm,
        RuntimeKind::Tgi,
        RuntimeKind::Sglang,
        RuntimeKind::Triton,
        RuntimeKind::Trtllm,
        RuntimeKind::Ollama,
        RuntimeKind::LlamaCpp,
        RuntimeKind::Custom,
    ];

    /// The name in manifests, on the wire (`ReplicaSpec::runtime_kind`) and in
    /// `--runtime KIND=COMMAND`.
    pub fn as_str(self) -> &'static str {
        match self {
            RuntimeKind::Vllm => "vllm",
            RuntimeKind::Tgi => "tgi",
            RuntimeKind::Sglang => "sglang",
            RuntimeKind::Triton => "triton",
            RuntimeKind::Trtllm => "trtllm",
            RuntimeKind::Ollama => "ollama",
            RuntimeKind::LlamaCpp => "llama-cpp",
            RuntimeKind::Custom => "custom",
        }
    }

    /// The kind with this name.
    pub fn parse(name: &str) -> Option<RuntimeKind> {
        RuntimeKind::ALL.into_iter().find(|k| k.as_str() == name)
    }
}

impl fmt::Display for RuntimeKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `custom`: a runtime described entirely by the manifest. `{port}`, `{host}`, `{model}`
/// (the model source) and `{model_name}` in `command` and in `env` values are replaced at
/// launch; `command` or `env` must use `{port}`, where Pyxis probes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CustomRuntimeSpec {
    /// Program and arguments; required, the program not empty.
    #[serde(default)]
    pub command: Vec<String>,
    /// Path answering 200 when ready. Default `/health`.
    #[serde(default = "default_health_path")]
    pub health_path: String,
    /// Prometheus metrics path. Absent: no runtime metrics.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics_path: Option<String>,
    /// Path answering JSON with a `version` field. Absent: version unknown.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version_path: Option<String>,
    /// Path of the OpenAI-compatible API. Default `/v1`.
    #[serde(default = "default_openai_path")]
    pub openai_path: String,
}

fn default_health_path() -> String {
    "/health".to_string()
}

fn default_openai_path() -> String {
    "/v1".to_string()
}

/// `spec.resources`: what one replica needs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Resources {
    /// GPUs per replica, all on one node; 0 runs on CPU (then `gpuMemoryGiB` and the
    /// hardware class lists stay empty).
    pub gpus_per_replica: u32,
    /// Free memory needed on each of the replica's GPUs, in GiB; positive. Absent: any.
    #[serde(default, rename = "gpuMemoryGiB", skip_serializing_if = "Option::is_none")]
    pub gpu_memory_gib: Option<f64>,
    /// Hardware classes allowed. Empty: any class.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hardware_classes: Vec<String>,
    /// Classes preferred among those allowed, best first. Empty: no preference.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub preferred_hardware_classes: Vec<String>,
}

/// `spec.replicas`. Pyxis runs `max` when the fleet and the tenant's fair share allow and
/// never fewer than `min` while the fleet can hold them; those above `min` are elastic.
/// Defaults: `min` 1; `max` the larger of `min` and 1, so `{min: 3}` is `{min: 3, max: 3}`
/// and `{max: 4}` is `{min: 1, max: 4}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "ReplicasInput")]
pub struct Replicas {
    /// Replicas kept while the fleet can hold them; 0 only with `warm-zero` or `hot-zero`.
    pub min: u32,
    /// Replicas run when capacity allows; at least 1 and at least `min`.
    pub max: u32,
}

impl Default for Replicas {
    fn default() -> Self {
        Replicas { min: 1, max: 1 }
    }
}

/// `spec.replicas` as written, before defaults.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ReplicasInput {
    #[serde(default)]
    min: Option<u32>,
    #[serde(default)]
    max: Option<u32>,
}

impl From<ReplicasInput> for Replicas {
    fn from(input: ReplicasInput) -> Self {
        let min = input.min.unwrap_or(1);
        let max = input.max.unwrap_or(min.max(1));
        Replicas { min, max }
    }
}

/// `spec.latencyBudget`, in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LatencyBudget {
    /// Time to first token; positive.
    pub ttft_ms: u32,
    /// Time per output token after the first; positive. Absent: no target.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tpot_ms: Option<u32>,
}

/// What happens to a deployment's replicas when idle.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ScalePolicy {
    /// Replicas stay up. The default.
    #[default]
    AlwaysWarm,
    /// May scale to zero when idle (allows `min: 0`); the first call waits for a replica to
    /// start from warm caches. (What is kept warm is the reconciler's to define.)
    WarmZero,
    /// May scale to zero when idle (allows `min: 0`), kept ready to start at once.
    HotZero,
}

/// How the gateway spreads a deployment's calls over its replicas.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RoutingPolicy {
    /// The replica with the fewest calls in flight. The default.
    #[default]
    LeastOutstanding,
    /// The replica with the most KV cache free.
    KvAware,
    /// The replica that served the same prompt prefix, for prefix-cache hits.
    PrefixAffinity,
    /// The replica expected to meet `latencyBudget` (which must then be given).
    LatencyBudget,
}

fn one() -> f64 {
    1.0
}

/// `readinessTimeout` as a humantime string (`90s`, `10m`, `1h 30m`).
mod duration_text {
    use std::time::Duration;

    use serde::{de, Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(value: &Option<Duration>, serializer: S) -> Result<S::Ok, S::Error> {
        match value {
            Some(duration) => serializer.collect_str(&humantime::format_duration(*duration)),
            None => serializer.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<Duration>, D::Error> {
        let text = String::deserialize(deserializer)?;
        humantime::parse_duration(&text)
            .map(Some)
            .map_err(|e| de::Error::custom(format_args!("{text:?} is not a duration like 90s or 10m ({e})")))
    }
}

// ---------------------------------------------------------------------------------------
// Serialization of whole documents

impl Serialize for Tenant {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        document(Kind::Tenant, &self.metadata, &self.spec).serialize(serializer)
    }
}

impl Serialize for HardwareClass {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        document(Kind::HardwareClass, &self.metadata, &self.spec).serialize(serializer)
    }
}

impl Serialize for ModelDeployment {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        document(Kind::ModelDeployment, &self.metadata, &self.spec).serialize(serializer)
    }
}

fn document<'a, S>(kind: Kind, metadata: &'a ObjectMeta, spec: &'a S) -> Document<'a, S> {
    Document {
        api_version: API_VERSION,
        kind,
        metadata,
        spec,
    }
}
