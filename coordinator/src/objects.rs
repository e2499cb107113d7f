//! The catalog: every applied manifest (tenants, hardware classes, model deployments), in
//! memory and in the store, and the checks that span objects.
//!
//! An apply or delete is planned against the catalog ([`Catalog::plan_apply`],
//! [`Catalog::plan_delete`]): every problem is found before anything changes. The caller
//! writes the plan's rows to the store in one transaction and only then
//! [`Catalog::commit`]s it to memory, so memory never holds what the store does not.
//!
//! What the catalog does not do: placement, status (the reconciler computes both), or any
//! I/O. Objects are stored as their manifest in JSON and parsed again on load, so a stored
//! object passes the same validation as an applied one.

use std::collections::{BTreeMap, BTreeSet};

use crate::{
    api_types::{AppliedObject, ProblemView},
    manifest::{self, GpuQuota, HardwareClass, Kind, Manifest, ManifestError, ModelDeployment, Tenant},
    store::ObjectRow,
};

/// One stored object with its bookkeeping.
#[derive(Debug, Clone, PartialEq)]
pub struct Stored<T> {
    /// The manifest.
    pub object: T,
    /// Bumped on every spec or label change, from 1.
    pub generation: u64,
    /// Creation order across all objects (smaller is older).
    pub seq: u64,
    /// Created at, ms since the epoch.
    pub created_ms: i64,
    /// Last changed at, ms since the epoch.
    pub updated_ms: i64,
}

/// A manifest of a request, with where it came from.
#[derive(Debug, Clone)]
pub struct Located {
    /// The source's name (a file), if the request named it.
    pub source: Option<String>,
    /// Document number within the source, from 1.
    pub document: usize,
    /// The manifest.
    pub manifest: Manifest,
}

/// An object named for deletion.
#[derive(Debug, Clone)]
pub struct Target {
    /// Kind.
    pub kind: Kind,
    /// Tenant of a namespaced kind.
    pub namespace: Option<String>,
    /// Name.
    pub name: String,
    /// Where the request named it, for error messages.
    pub source: Option<String>,
    /// Document number, 0 when named directly (`DELETE /api/v1/...`).
    pub document: usize,
}

/// A checked change, ready to be written and committed.
#[derive(Debug, Clone, Default)]
pub struct Plan {
    /// Rows to insert or update.
    pub rows: Vec<ObjectRow>,
    /// `(kind, namespace, name)` rows to delete.
    pub deletes: Vec<(String, String, String)>,
    /// What happens to each object, in request order.
    pub items: Vec<AppliedObject>,
    /// Accepted, but worth knowing.
    pub warnings: Vec<String>,
    puts: Vec<(Manifest, Stored<()>)>,
    next_seq: u64,
}

impl Plan {
    /// Whether the plan changes anything.
    pub fn is_noop(&self) -> bool {
        self.rows.is_empty() && self.deletes.is_empty()
    }
}

/// Why a delete is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Conflict(pub String);

/// Every applied object.
#[derive(Debug, Clone, Default)]
pub struct Catalog {
    /// Tenants by name.
    pub tenants: BTreeMap<String, Stored<Tenant>>,
    /// Hardware classes by name.
    pub classes: BTreeMap<String, Stored<HardwareClass>>,
    /// Deployments by (tenant, name).
    pub deployments: BTreeMap<(String, String), Stored<ModelDeployment>>,
    next_seq: u64,
    revision: u64,
    /// Class names, oldest first: the order devices are matched in (kept with `classes`,
    /// so matching a device does not sort on every call).
    class_order: Vec<String>,
}

fn key_of(kind: Kind, namespace: Option<&str>, name: &str) -> (String, String, String) {
    (
        kind.as_str().to_string(),
        namespace.unwrap_or_default().to_string(),
        name.to_string(),
    )
}

/// `tenant/research`, `hardwareclass/H100-80GB`, `modeldeployment/research/qwen-7b`: the
/// object names events are recorded under.
pub fn object_ref(kind: Kind, namespace: Option<&str>, name: &str) -> String {
    let kind = kind.as_str().to_ascii_lowercase();
    match namespace {
        Some(namespace) => format!("{kind}/{namespace}/{name}"),
        None => format!("{kind}/{name}"),
    }
}

/// Turns manifest errors of one source into API problems.
pub fn problems_of(source: Option<&str>, errors: Vec<ManifestError>) -> Vec<ProblemView> {
    errors
        .into_iter()
        .map(|e| ProblemView {
            source: source.map(str::to_string),
            document: e.document,
            kind: e.kind.map(|k| k.as_str().to_string()),
            namespace: e.namespace,
            name: e.name,
            path: e.path,
            reason: e.problem.to_string(),
        })
        .collect()
}

fn problem(located: &Located, path: &str, reason: String) -> ProblemView {
    ProblemView {
        source: located.source.clone(),
        document: located.document,
        kind: Some(located.manifest.kind().as_str().to_string()),
        namespace: located.manifest.namespace().map(str::to_string),
        name: Some(located.manifest.name().to_string()),
        path: path.to_string(),
        reason,
    }
}

/// Parses every source; returns every manifest or every problem (including an object
/// defined in two sources).
pub fn parse_sources(sources: &[(Option<String>, String)]) -> Result<Vec<Located>, Vec<ProblemView>> {
    let mut located = Vec::new();
    let mut problems = Vec::new();
    for (source, text) in sources {
        match manifest::parse_numbered(text) {
            Ok(manifests) => located.extend(manifests.into_iter().map(|(document, manifest)| Located {
                source: source.clone(),
                document,
                manifest,
            })),
            Err(errors) => problems.extend(problems_of(source.as_deref(), errors)),
        }
    }
    let mut seen: BTreeMap<(String, String, String), (Option<String>, usize)> = BTreeMap::new();
    for l in &located {
        let key = key_of(l.manifest.kind(), l.manifest.namespace(), l.manifest.name());
        if let Some((source, document)) = seen.get(&key) {
            let place = match source {
                Some(source) => format!("{source} document {document}"),
                None => format!("document {document}"),
            };
            problems.push(problem(
                l,
                "metadata.name",
                format!(
                    "{} is also defined by {place}; an object may appear once per apply",
                    key.2
                ),
            ));
        } else {
            seen.insert(key, (l.source.clone(), l.document));
        }
    }
    if problems.is_empty() {
        Ok(located)
    } else {
        Err(problems)
    }
}

impl Catalog {
    /// Builds the catalog from stored rows. A row that no longer parses (written by another
    /// version, or damaged) is left out and named in the returned problems; the rest load.
    pub fn load(rows: Vec<ObjectRow>) -> (Catalog, Vec<String>) {
        let mut catalog = Catalog::default();
        let mut problems = Vec::new();
        for row in rows {
            catalog.next_seq = catalog.next_seq.max(row.seq + 1);
            let parsed = manifest::parse_documents(&row.manifest_json);
            let manifest = match parsed {
                Ok(mut manifests) if manifests.len() == 1 => manifests.remove(0),
                Ok(_) => {
                    problems.push(format!(
                        "{} {}/{}: stored manifest is empty",
                        row.kind, row.namespace, row.name
                    ));
                    continue;
                }
                Err(errors) => {
                    let reasons: Vec<String> = errors.iter().map(ToString::to_string).collect();
                    problems.push(format!(
                        "{} {}/{}: stored manifest is invalid: {}",
                        row.kind,
                        row.namespace,
                        row.name,
                        reasons.join("; ")
                    ));
                    continue;
                }
            };
            let meta = Stored {
                object: (),
                generation: row.generation,
                seq: row.seq,
                created_ms: row.created_ms,
                updated_ms: row.updated_ms,
            };
            catalog.put(manifest, meta);
        }
        (catalog, problems)
    }

    /// Bumped by every committed change.
    pub fn revision(&self) -> u64 {
        self.revision
    }

    fn put(&mut self, manifest: Manifest, meta: Stored<()>) {
        fn with<T>(object: T, meta: &Stored<()>) -> Stored<T> {
            Stored {
                object,
                generation: meta.generation,
                seq: meta.seq,
                created_ms: meta.created_ms,
                updated_ms: meta.updated_ms,
            }
        }
        let meta = &meta;
        match manifest {
            Manifest::Tenant(t) => {
                self.tenants.insert(t.metadata.name.clone(), with(t, meta));
            }
            Manifest::HardwareClass(c) => {
                self.classes.insert(c.metadata.name.clone(), with(c, meta));
                self.order_classes();
            }
            Manifest::ModelDeployment(d) => {
                self.deployments
                    .insert((d.tenant().to_string(), d.metadata.name.clone()), with(d, meta));
            }
        }
    }

    fn existing(&self, kind: Kind, namespace: Option<&str>, name: &str) -> Option<(Stored<()>, serde_json::Value)> {
        fn meta<T: serde::Serialize>(s: &Stored<T>) -> (Stored<()>, serde_json::Value) {
            (
                Stored {
                    object: (),
                    generation: s.generation,
                    seq: s.seq,
                    created_ms: s.created_ms,
                    updated_ms: s.updated_ms,
                },
                serde_json::to_value(&s.object).unwrap_or_default(),
            )
        }
        match kind {
            Kind::Tenant => self.tenants.get(name).map(meta),
            Kind::HardwareClass => self.classes.get(name).map(meta),
            Kind::ModelDeployment => self
                .deployments
                .get(&(namespace.unwrap_or_default().to_string(), name.to_string()))
                .map(meta),
        }
    }

    /// Checks an apply: references between objects, as the catalog would be after it.
    /// `fleet_classes` are the classes devices in the fleet have now (for warnings).
    pub fn plan_apply(
        &self,
        located: Vec<Located>,
        now_ms: i64,
        fleet_classes: &BTreeSet<String>,
    ) -> Result<Plan, Vec<ProblemView>> {
        let mut plan = Plan {
            next_seq: self.next_seq,
            ..Plan::default()
        };
        let mut problems = Vec::new();
        let tenants_after: BTreeSet<&str> = self
            .tenants
            .keys()
            .map(String::as_str)
            .chain(located.iter().filter_map(|l| match &l.manifest {
                Manifest::Tenant(t) => Some(t.metadata.name.as_str()),
                _ => None,
            }))
            .collect();
        let classes_after: BTreeSet<&str> = self
            .classes
            .keys()
            .map(String::as_str)
            .chain(located.iter().filter_map(|l| match &l.manifest {
                Manifest::HardwareClass(c) => Some(c.metadata.name.as_str()),
                _ => None,
            }))
            .collect();
        let known_class =
            |class: &str| classes_after.contains(class) || fleet_classes.contains(class) || class.contains("-MIG-");
        let mut unknown_classes: BTreeSet<String> = BTreeSet::new();
        for l in &located {
            match &l.manifest {
                Manifest::ModelDeployment(d) => {
                    if !tenants_after.contains(d.tenant()) {
                        problems.push(problem(
                            l,
                            "metadata.namespace",
                            format!(
                                "tenant {:?} does not exist; apply a Tenant named {:?} first or in the same request",
                                d.tenant(),
                                d.tenant()
                            ),
                        ));
                    }
                    let resources = &d.spec.resources;
                    for class in resources
                        .hardware_classes
                        .iter()
                        .chain(&resources.preferred_hardware_classes)
                    {
                        if !known_class(class) {
                            unknown_classes.insert(class.clone());
                        }
                    }
                }
                Manifest::Tenant(t) => {
                    for quota in [&t.spec.guarantee, &t.spec.limit].into_iter().flatten() {
                        if let GpuQuota::PerClass(classes) = quota {
                            for class in classes.keys() {
                                if !known_class(class) {
                                    unknown_classes.insert(class.clone());
                                }
                            }
                        }
                    }
                }
                Manifest::HardwareClass(_) => {}
            }
        }
        for class in unknown_classes {
            plan.warnings.push(format!(
                "hardware class {class} is neither defined by a HardwareClass nor reported by any node; \
                 what needs it stays pending until one is"
            ));
        }
        if !problems.is_empty() {
            return Err(problems);
        }
        for l in located {
            let kind = l.manifest.kind();
            let namespace = l.manifest.namespace().map(str::to_string);
            let name = l.manifest.name().to_string();
            let value = serde_json::to_value(&l.manifest).unwrap_or_default();
            let json = value.to_string();
            let (meta, action) = match self.existing(kind, namespace.as_deref(), &name) {
                Some((meta, old)) if old == value => (meta, "unchanged"),
                Some((meta, _)) => (
                    Stored {
                        generation: meta.generation + 1,
                        updated_ms: now_ms,
                        ..meta
                    },
                    "configured",
                ),
                None => {
                    let seq = plan.next_seq;
                    plan.next_seq += 1;
                    (
                        Stored {
                            object: (),
                            generation: 1,
                            seq,
                            created_ms: now_ms,
                            updated_ms: now_ms,
                        },
                        "created",
                    )
                }
            };
            plan.items.push(AppliedObject {
                kind: kind.as_str().to_string(),
                namespace: namespace.clone(),
                name: name.clone(),
                action: action.to_string(),
                generation: meta.generation,
            });
            if action != "unchanged" {
                plan.rows.push(ObjectRow {
                    kind: kind.as_str().to_string(),
                    namespace: namespace.unwrap_or_default(),
                    name,
                    manifest_json: json,
                    generation: meta.generation,
                    seq: meta.seq,
                    created_ms: meta.created_ms,
                    updated_ms: meta.updated_ms,
                });
                plan.puts.push((l.manifest, meta));
            }
        }
        Ok(plan)
    }

    /// Checks a delete. A tenant that keeps deployments (not deleted in the same request)
    /// is refused: deleting it would orphan them.
    pub fn plan_delete(&self, targets: Vec<Target>) -> Result<Plan, Conflict> {
        let mut plan = Plan {
            next_seq: self.next_seq,
            ..Plan::default()
        };
        let deleted: BTreeSet<(String, String, String)> = targets
            .iter()
            .map(|t| key_of(t.kind, t.namespace.as_deref(), &t.name))
            .collect();
        let mut conflicts = Vec::new();
        for t in &targets {
            if t.kind == Kind::Tenant && self.tenants.contains_key(&t.name) {
                let orphans: Vec<&str> = self
                    .deployments
                    .keys()
                    .filter(|(tenant, name)| {
                        *tenant == t.name && !deleted.contains(&key_of(Kind::ModelDeployment, Some(tenant), name))
                    })
                    .map(|(_, name)| name.as_str())
                    .collect();
                if !orphans.is_empty() {
                    conflicts.push(format!(
                        "tenant {} still has deployments ({}); delete them first or in the same request",
                        t.name,
                        orphans.join(", ")
                    ));
                }
            }
            if t.kind == Kind::HardwareClass && self.classes.contains_key(&t.name) {
                let users: Vec<String> = self
                    .deployments
                    .iter()
                    .filter(|(_, d)| d.object.spec.resources.hardware_classes.contains(&t.name))
                    .map(|((tenant, name), _)| format!("{tenant}/{name}"))
                    .collect();
                if !users.is_empty() {
                    plan.warnings.push(format!(
                        "hardware class {} is still allowed by {}; their replicas stay where they are \
                         only while agents report that class name",
                        t.name,
                        users.join(", ")
                    ));
                }
            }
        }
        if !conflicts.is_empty() {
            return Err(Conflict(conflicts.join("\n")));
        }
        for t in targets {
            let exists = self.existing(t.kind, t.namespace.as_deref(), &t.name).is_some();
            plan.items.push(AppliedObject {
                kind: t.kind.as_str().to_string(),
                namespace: t.namespace.clone(),
                name: t.name.clone(),
                action: if exists { "deleted" } else { "not-found" }.to_string(),
                generation: 0,
            });
            if exists {
                plan.deletes.push(key_of(t.kind, t.namespace.as_deref(), &t.name));
            }
        }
        Ok(plan)
    }

    /// Applies a plan the store has accepted.
    pub fn commit(&mut self, plan: Plan) {
        if plan.is_noop() {
            return;
        }
        self.next_seq = self.next_seq.max(plan.next_seq);
        for (manifest, meta) in plan.puts {
            self.put(manifest, meta);
        }
        for (kind, namespace, name) in plan.deletes {
            match Kind::parse(&kind) {
                Some(Kind::Tenant) => {
                    self.tenants.remove(&name);
                }
                Some(Kind::HardwareClass) => {
                    self.classes.remove(&name);
                    self.order_classes();
                }
                Some(Kind::ModelDeployment) => {
                    self.deployments.remove(&(namespace, name));
                }
                None => {}
            }
        }
        self.revision += 1;
    }

    fn order_classes(&mut self) {
        let mut classes: Vec<&Stored<HardwareClass>> = self.classes.values().collect();
        classes.sort_by_key(|c| c.seq);
        self.class_order = classes.into_iter().map(|c| c.object.metadata.name.clone()).collect();
    }

    /// The class a whole device belongs to: the first `HardwareClass` (oldest first) whose
    /// rules fit it, else the class its agent derived.
    pub fn device_class(&self, vendor: &str, model: &str, memory_bytes: u64, derived: &str) -> String {
        let vendor = match vendor {
            "nvidia" => pyxis_protocol::Vendor::Nvidia,
            "amd" => pyxis_protocol::Vendor::Amd,
            "google" => pyxis_protocol::Vendor::Google,
            _ => pyxis_protocol::Vendor::Other,
        };
        self.class_order
            .iter()
            .filter_map(|name| self.classes.get(name))
            .find(|c| c.object.matches(vendor, model, memory_bytes))
            .map_or_else(|| derived.to_string(), |c| c.object.metadata.name.clone())
    }

    /// `(relative capacity, price per GPU-hour)` of a class defined by a `HardwareClass`.
    pub fn class_terms(&self, class: &str) -> Option<(f64, f64)> {
        self.classes
            .get(class)
            .map(|c| (c.object.spec.relative_capacity, c.object.spec.price_per_gpu_hour))
    }

    /// A quota in normalised GPUs: per-class counts weighted by each class's relative
    /// capacity (1.0 for a class without a `HardwareClass`).
    pub fn normalised(&self, quota: &GpuQuota) -> f64 {
        match quota {
            GpuQuota::Normalised(gpus) => *gpus,
            GpuQuota::PerClass(classes) => classes
                .iter()
                .map(|(class, count)| f64::from(*count) * self.class_terms(class).map_or(1.0, |(capacity, _)| capacity))
                .sum(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sources(text: &str) -> Vec<(Option<String>, String)> {
        vec![(Some("test.yaml".to_string()), text.to_string())]
    }

    const TENANT: &str = "apiVersion: pyxis.dev/v1alpha1\nkind: Tenant\nmetadata: {name: research}\nspec: {weight: 2, guarantee: {gpus: 4}}\n";
    const CLASS: &str = "apiVersion: pyxis.dev/v1alpha1\nkind: HardwareClass\nmetadata: {name: H100-80GB}\nspec: {match: {vendor: nvidia, model: \"H100.*80GB\"}, pricePerGpuHour: 4.1, relativeCapacity: 1.0}\n";
    const DEPLOYMENT: &str = "apiVersion: pyxis.dev/v1alpha1\nkind: ModelDeployment\nmetadata: {name: qwen, namespace: research}\nspec:\n  model: {name: Qwen/Qwen2.5-7B-Instruct, version: \"1\", source: /models/qwen}\n  runtimes: [{kind: vllm}]\n  resources: {gpusPerReplica: 1, hardwareClasses: [H100-80GB]}\n  replicas: {min: 1, max: 2}\n";

    fn apply(catalog: &mut Catalog, text: &str) -> Result<Plan, Vec<ProblemView>> {
        let located = parse_sources(&sources(text))?;
        let plan = catalog.plan_apply(located, 1_000, &BTreeSet::new())?;
        catalog.commit(plan.clone());
        Ok(plan)
    }

    #[test]
    fn apply_creates_then_is_unchanged_then_configures() {
        let mut catalog = Catalog::default();
        let text = format!("{TENANT}---\n{CLASS}---\n{DEPLOYMENT}");
        let plan = apply(&mut catalog, &text).unwrap();
        assert_eq!(
            plan.items.iter().map(|i| i.action.as_str()).collect::<Vec<_>>(),
            ["created"; 3]
        );
        assert!(plan.warnings.is_empty(), "{:?}", plan.warnings);
        let again = apply(&mut catalog, &text).unwrap();
        assert!(again.is_noop());
        assert_eq!(
            again.items.iter().map(|i| i.action.as_str()).collect::<Vec<_>>(),
            ["unchanged"; 3]
        );
        let changed = apply(&mut catalog, &TENANT.replace("weight: 2", "weight: 3")).unwrap();
        assert_eq!(changed.items[0].action, "configured");
        assert_eq!(changed.items[0].generation, 2);
        assert_eq!(catalog.tenants["research"].object.spec.weight, 3.0);
    }

    #[test]
    fn a_deployment_needs_its_tenant_and_nothing_is_applied_otherwise() {
        let mut catalog = Catalog::default();
        let problems = apply(&mut catalog, &format!("{CLASS}---\n{DEPLOYMENT}")).unwrap_err();
        assert_eq!(problems.len(), 1);
        assert_eq!(problems[0].document, 2);
        assert_eq!(problems[0].path, "metadata.namespace");
        assert!(
            problems[0].reason.contains("tenant \"research\" does not exist"),
            "{}",
            problems[0].reason
        );
        assert!(catalog.classes.is_empty(), "nothing is half-applied");
    }

    #[test]
    fn stored_rows_load_back_to_the_same_catalog() {
        let mut catalog = Catalog::default();
        let plan = apply(&mut catalog, &format!("{TENANT}---\n{CLASS}---\n{DEPLOYMENT}")).unwrap();
        let (loaded, problems) = Catalog::load(plan.rows.clone());
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(loaded.tenants, catalog.tenants);
        assert_eq!(loaded.classes, catalog.classes);
        assert_eq!(loaded.deployments, catalog.deployments);
        let mut damaged = plan.rows;
        damaged[0].manifest_json = "{\"kind\": \"Tenant\"}".into();
        let (loaded, problems) = Catalog::load(damaged);
        assert_eq!(problems.len(), 1);
        assert!(loaded.tenants.is_empty() && loaded.classes.len() == 1);
    }

    #[test]
    fn every_example_manifest_round_trips_through_the_store_form() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/manifests");
        let mut all = Vec::new();
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            all.push((
                Some(path.display().to_string()),
                std::fs::read_to_string(&path).unwrap(),
            ));
        }
        let located = parse_sources(&all).unwrap();
        assert!(!located.is_empty());
        for l in located {
            let json = serde_json::to_string(&l.manifest).unwrap();
            let back = manifest::parse_documents(&json).unwrap();
            assert_eq!(back, vec![l.manifest.clone()], "{json}");
        }
    }

    #[test]
    fn a_tenant_with_deployments_is_not_deleted_alone() {
        let mut catalog = Catalog::default();
        apply(&mut catalog, &format!("{TENANT}---\n{DEPLOYMENT}")).unwrap();
        let tenant = Target {
            kind: Kind::Tenant,
            namespace: None,
            name: "research".into(),
            source: None,
            document: 0,
        };
        let conflict = catalog.plan_delete(vec![tenant.clone()]).unwrap_err();
        assert!(conflict.0.contains("still has deployments (qwen)"), "{conflict}");
        let deployment = Target {
            kind: Kind::ModelDeployment,
            namespace: Some("research".into()),
            name: "qwen".into(),
            source: None,
            document: 0,
        };
        let plan = catalog.plan_delete(vec![deployment, tenant]).unwrap();
        assert_eq!(
            plan.items.iter().map(|i| i.action.as_str()).collect::<Vec<_>>(),
            ["deleted"; 2]
        );
        catalog.commit(plan);
        assert!(catalog.tenants.is_empty() && catalog.deployments.is_empty());
    }

    #[test]
    fn devices_take_the_oldest_matching_class_else_their_derived_one() {
        let mut catalog = Catalog::default();
        apply(&mut catalog, CLASS).unwrap();
        apply(
            &mut catalog,
            &CLASS
                .replace("name: H100-80GB", "name: any-nvidia")
                .replace("model: \"H100.*80GB\"", "model: \".*\""),
        )
        .unwrap();
        assert_eq!(
            catalog.device_class("nvidia", "NVIDIA H100 80GB HBM3", 80 << 30, "x"),
            "H100-80GB"
        );
        assert_eq!(
            catalog.device_class("nvidia", "NVIDIA A100", 40 << 30, "x"),
            "any-nvidia"
        );
        assert_eq!(
            catalog.device_class("amd", "MI300X", 192 << 30, "MI300X-192GB"),
            "MI300X-192GB"
        );
        assert_eq!(
            catalog.normalised(&GpuQuota::PerClass([("H100-80GB".to_string(), 2)].into())),
            2.0
        );
    }

    #[test]
    fn the_same_object_in_two_sources_is_refused() {
        let two = vec![
            (Some("a.yaml".to_string()), TENANT.to_string()),
            (Some("b.yaml".to_string()), TENANT.to_string()),
        ];
        let problems = parse_sources(&two).unwrap_err();
        assert_eq!(problems.len(), 1);
        assert_eq!(problems[0].source.as_deref(), Some("b.yaml"));
        assert!(problems[0].reason.contains("a.yaml document 1"));
    }
}
