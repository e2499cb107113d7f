//! Manifests: the declarative desired state users apply (SPEC.md "Manifests").
//!
//! Sans-IO: text in, validated typed objects or every error out. This module reads no file,
//! touches no store and knows nothing of the API; `apply` wires it to both. Nothing is
//! half-applied: [`parse_documents`] returns either every manifest of its input or every
//! problem found in it.
//!
//! Kinds: [`Tenant`] and [`HardwareClass`] (cluster-wide) and [`ModelDeployment`] (belongs to
//! the tenant named by `metadata.namespace`). `BatchInferenceJob` and `EvaluationJob` are in
//! SPEC but not served yet; they are refused with a message that says so.
//!
//! What this module checks: the shape (unknown fields, types, allowed values) and the rules
//! within one object. What it does not: references between objects (that a deployment's
//! tenant or hardware classes exist), which depend on the store and are the apply path's.

mod error;
mod parse;
mod types;
mod validate;

#[cfg(test)]
mod tests;

use std::fmt;

use serde::{Serialize, Serializer};

pub use error::{ManifestError, Problem};
pub use parse::{parse_documents, parse_numbered, MAX_DOCUMENTS};
pub use types::{
    CustomRuntimeSpec, DeviceVendor, GpuQuota, HardwareClass, HardwareClassSpec, HardwareMatch, LatencyBand,
    LatencyBudget, ModelDeployment, ModelDeploymentSpec, ModelPattern, ModelSpec, ObjectMeta, QuotaMode, Replicas,
    Resources, RoutingPolicy, RuntimeChoice, RuntimeKind, ScalePolicy, Tenant, TenantSpec,
    DEFAULT_MAX_CONCURRENT_REQUESTS, DEFAULT_QUEUE_TIMEOUT, NORMALISED_GPUS_KEY,
};

/// The `apiVersion` of every kind.
pub const API_VERSION: &str = "pyxis.dev/v1alpha1";

/// The kinds this coordinator serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub enum Kind {
    /// [`Tenant`], cluster-wide.
    Tenant,
    /// [`HardwareClass`], cluster-wide.
    HardwareClass,
    /// [`ModelDeployment`], namespaced by tenant.
    ModelDeployment,
}

impl Kind {
    /// Every kind served, in the order an apply should take them (a tenant and its classes
    /// before its deployments).
    pub const ALL: [Kind; 3] = [Kind::Tenant, Kind::HardwareClass, Kind::ModelDeployment];

    /// Kinds SPEC names that are not served yet.
    pub const PLANNED: [&'static str; 2] = ["BatchInferenceJob", "EvaluationJob"];

    /// The name in `kind:`.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Tenant => "Tenant",
            Kind::HardwareClass => "HardwareClass",
            Kind::ModelDeployment => "ModelDeployment",
        }
    }

    /// The kind named exactly `name` (case-sensitive, as in Kubernetes).
    pub fn parse(name: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.as_str() == name)
    }

    /// Whether objects of this kind belong to a tenant (`metadata.namespace` required).
    pub fn is_namespaced(self) -> bool {
        matches!(self, Kind::ModelDeployment)
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One validated manifest of any kind.
#[derive(Debug, Clone, PartialEq)]
pub enum Manifest {
    /// A `Tenant`.
    Tenant(Tenant),
    /// A `HardwareClass`.
    HardwareClass(HardwareClass),
    /// A `ModelDeployment`.
    ModelDeployment(ModelDeployment),
}

impl Manifest {
    /// Its kind.
    pub fn kind(&self) -> Kind {
        match self {
            Manifest::Tenant(_) => Kind::Tenant,
            Manifest::HardwareClass(_) => Kind::HardwareClass,
            Manifest::ModelDeployment(_) => Kind::ModelDeployment,
        }
    }

    /// Its `metadata`.
    pub fn metadata(&self) -> &ObjectMeta {
        match self {
            Manifest::Tenant(t) => &t.metadata,
            Manifest::HardwareClass(c) => &c.metadata,
            Manifest::ModelDeployment(d) => &d.metadata,
        }
    }

    /// `metadata.name`.
    pub fn name(&self) -> &str {
        &self.metadata().name
    }

    /// `metadata.namespace`: the tenant of a namespaced kind, `None` for cluster-wide kinds.
    pub fn namespace(&self) -> Option<&str> {
        self.metadata().namespace.as_deref()
    }
}

impl Serialize for Manifest {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            Manifest::Tenant(t) => t.serialize(serializer),
            Manifest::HardwareClass(c) => c.serialize(serializer),
            Manifest::ModelDeployment(d) => d.serialize(serializer),
        }
    }
}

impl ModelDeployment {
    /// The owning tenant (`metadata.namespace`; always set on a parsed deployment).
    pub fn tenant(&self) -> &str {
        self.metadata.namespace.as_deref().unwrap_or_default()
    }

    /// Whether replicas run on CPU (`gpusPerReplica: 0`).
    pub fn runs_on_cpu(&self) -> bool {
        self.spec.resources.gpus_per_replica == 0
    }

    /// The index in `spec.runtimes` of the first runtime a node supports, for example
    /// `d.first_supported_runtime(|kind| node.runtimes.iter().any(|r| r == kind.as_str()))`.
    pub fn first_supported_runtime(&self, supports: impl Fn(RuntimeKind) -> bool) -> Option<usize> {
        self.spec.runtimes.iter().position(|choice| supports(choice.kind))
    }

    /// What an agent runs for one replica of this deployment with the runtime at
    /// `runtime_index` of `spec.runtimes`, on `gpus` (device UUIDs; empty on CPU). `None`
    /// when there is no runtime at that index.
    pub fn replica_spec(
        &self,
        replica_name: impl Into<String>,
        runtime_index: usize,
        gpus: Vec<String>,
    ) -> Option<pyxis_protocol::ReplicaSpec> {
        let runtime = self.spec.runtimes.get(runtime_index)?;
        let custom = match (runtime.kind, &runtime.custom) {
            (RuntimeKind::Custom, Some(custom)) => Some(pyxis_protocol::CustomRuntime {
                command: custom.command.clone(),
                health_path: custom.health_path.clone(),
                metrics_path: custom.metrics_path.clone(),
                version_path: custom.version_path.clone(),
                openai_path: custom.openai_path.clone(),
            }),
            _ => None,
        };
        let readiness_timeout_ms = self
            .spec
            .readiness_timeout
            .map_or(0, |timeout| u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX));
        Some(pyxis_protocol::ReplicaSpec {
            name: replica_name.into(),
            deployment: self.metadata.name.clone(),
            tenant: self.tenant().to_string(),
            model_name: self.spec.model.name.clone(),
            model_version: self.spec.model.version.clone(),
            model_source: self.spec.model.source.clone(),
            runtime_kind: runtime.kind.as_str().to_string(),
            runtime_args: runtime.args.clone(),
            gpus,
            env: runtime.env.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
            readiness_timeout_ms,
            custom,
        })
    }
}
