//! Manifest parsing: one table of bad manifests, each with the errors it must produce, and
//! the good paths (SPEC's example, defaults, many documents, round trips, the examples).

use std::{path::PathBuf, time::Duration};

use super::*;

// ---------------------------------------------------------------------------------------
// Builders: a valid object of each kind with some `spec` entries replaced.

/// A YAML document: `header`, then `spec:` with `base` entries replaced or added by
/// `changes` (`(key, flow YAML)`; an empty value removes the key).
fn document(header: &str, base: &[(&str, &str)], changes: &[(&str, &str)]) -> String {
    let mut spec: Vec<(&str, &str)> = base.to_vec();
    for &(key, value) in changes {
        match spec.iter_mut().find(|(k, _)| *k == key) {
            Some(entry) => entry.1 = value,
            None => spec.push((key, value)),
        }
    }
    let mut text = format!("apiVersion: pyxis.dev/v1alpha1\n{header}spec:\n");
    for (key, value) in spec.into_iter().filter(|(_, v)| !v.is_empty()) {
        text.push_str(&format!("  {key}: {value}\n"));
    }
    text
}

fn deployment(changes: &[(&str, &str)]) -> String {
    document(
        "kind: ModelDeployment\nmetadata: {name: chat, namespace: team}\n",
        &[
            ("model", "{name: org/chat, version: v1, source: /models/chat}"),
            ("runtimes", "[{kind: vllm}]"),
            ("resources", "{gpusPerReplica: 1}"),
        ],
        changes,
    )
}

fn tenant(changes: &[(&str, &str)]) -> String {
    document("kind: Tenant\nmetadata: {name: team}\n", &[("weight", "1")], changes)
}

fn class(changes: &[(&str, &str)]) -> String {
    document(
        "kind: HardwareClass\nmetadata: {name: H100-80GB}\n",
        &[("match", "{vendor: nvidia, model: \"H100.*80GB\"}")],
        changes,
    )
}

fn custom(fields: &str) -> String {
    format!("[{{kind: custom, custom: {{{fields}}}}}]")
}

/// A custom runtime that is valid.
const CUSTOM_OK: &str = "command: [server, --port, \"{port}\"]";

// ---------------------------------------------------------------------------------------
// The table

/// Asserts `text` is rejected with exactly these errors: `(path, substring of the reason)`,
/// in order.
#[track_caller]
fn check_rejected(text: &str, expected: &[(&str, &str)]) {
    if let Some(mismatch) = rejection_mismatch(text, expected) {
        panic!("{mismatch}");
    }
}

/// What is wrong with how `text` was rejected, if anything.
fn rejection_mismatch(text: &str, expected: &[(&str, &str)]) -> Option<String> {
    let errors = match parse_documents(text) {
        Ok(manifests) => return Some(format!("accepted:\n{text}\nas {manifests:#?}")),
        Err(errors) => errors,
    };
    let got: Vec<(String, String)> = errors.iter().map(|e| (e.path.clone(), e.problem.to_string())).collect();
    let fits = got.len() == expected.len()
        && got
            .iter()
            .zip(expected)
            .all(|((path, reason), (want_path, want_reason))| path == want_path && reason.contains(want_reason));
    (!fits).then(|| format!("input:\n{text}\nexpected {expected:#?}\ngot {got:#?}"))
}

#[test]
fn bad_manifests_are_rejected_with_path_and_reason() {
    let long_name = format!("metadata: {{name: {}, namespace: team}}", "a".repeat(64));
    let cases: Vec<(String, Vec<(&str, &str)>)> = vec![
        // Document level.
        (
            "apiVersion: pyxis.dev/v1\nkind: Tenant\nmetadata: {name: team}\n".into(),
            vec![("apiVersion", "unsupported apiVersion \"pyxis.dev/v1\"; use pyxis.dev/v1alpha1")],
        ),
        (
            "kind: Tenant\nmetadata: {name: team}\n".into(),
            vec![("apiVersion", "required field is missing: write apiVersion: pyxis.dev/v1alpha1")],
        ),
        (
            "apiVersion: pyxis.dev/v1alpha1\nkind: Deployment\nmetadata: {name: x}\n".into(),
            vec![("kind", "unknown kind \"Deployment\"; supported kinds: Tenant, HardwareClass, ModelDeployment")],
        ),
        (
            "apiVersion: pyxis.dev/v1alpha1\nkind: tenant\nmetadata: {name: x}\n".into(),
            vec![("kind", "did you mean Tenant?")],
        ),
        (
            "apiVersion: pyxis.dev/v1alpha1\nkind: BatchInferenceJob\nmetadata: {name: x}\n".into(),
            vec![("kind", "kind BatchInferenceJob is not supported by this coordinator yet")],
        ),
        (
            "apiVersion: pyxis.dev/v1alpha1\nmetadata: {name: x}\n".into(),
            vec![("kind", "required field is missing: one of Tenant, HardwareClass, ModelDeployment")],
        ),
        ("- a\n- b\n".into(), vec![("", "a manifest is a mapping")]),
        (
            "apiVersion: pyxis.dev/v1alpha1\nkind: Tenant\nspec: {}\n".into(),
            vec![("metadata", "required field is missing")],
        ),
        (
            "apiVersion: pyxis.dev/v1alpha1\nkind: ModelDeployment\nmetadata: {name: a, namespace: b}\n".into(),
            vec![("spec", "required field is missing")],
        ),
        (
            "apiVersion: pyxis.dev/v1alpha1\nkind: Tenant\nmetadata: {name: team}\nspecs: {}\n".into(),
            vec![("specs", "unknown field; expected `metadata` or `spec`")],
        ),
        // metadata.
        (
            tenant(&[]).replace("{name: team}", "{name: Team_1}"),
            vec![("metadata.name", "\"Team_1\" is not a valid name (uppercase letter)")],
        ),
        (
            tenant(&[]).replace("{name: team}", "{name: -team}"),
            vec![("metadata.name", "bad first or last character")],
        ),
        (
            deployment(&[]).replace("metadata: {name: chat, namespace: team}", &long_name),
            vec![("metadata.name", "too long")],
        ),
        (
            tenant(&[]).replace("{name: team}", "{name: team, namespace: other}"),
            vec![("metadata.namespace", "a Tenant is cluster-wide and has no namespace")],
        ),
        (
            class(&[]).replace("{name: H100-80GB}", "{name: H100-80GB, namespace: team}"),
            vec![("metadata.namespace", "a HardwareClass is cluster-wide")],
        ),
        (
            deployment(&[]).replace(", namespace: team", ""),
            vec![("metadata.namespace", "required field is missing: the tenant this ModelDeployment belongs to")],
        ),
        (
            deployment(&[]).replace("namespace: team", "namespace: Team"),
            vec![("metadata.namespace", "is not a valid name")],
        ),
        (
            class(&[]).replace("{name: H100-80GB}", "{name: gpus}"),
            vec![("metadata.name", "\"gpus\" is reserved")],
        ),
        (
            tenant(&[]).replace("{name: team}", "{name: team, labels: {\"bad key!\": x, ok: \"no spaces\"}}"),
            vec![
                ("metadata.labels[bad key!]", "label key \"bad key!\" is invalid"),
                ("metadata.labels.ok", "label value \"no spaces\" is invalid"),
            ],
        ),
        (
            tenant(&[]).replace("{name: team}", "{name: team, uid: 42}"),
            vec![("metadata.uid", "unknown field; expected one of `name`, `namespace`, `labels`")],
        ),
        // Tenant.
        (tenant(&[("weight", "0")]), vec![("spec.weight", "must be a number above 0, found 0")]),
        (tenant(&[("weight", "-2")]), vec![("spec.weight", "must be a number above 0, found -2")]),
        (
            tenant(&[("weight", "heavy")]),
            vec![("spec.weight", "invalid type: string \"heavy\", expected a number")],
        ),
        (
            tenant(&[("guarantee", "{gpus: -1}")]),
            vec![("spec.guarantee.gpus", "must be a number, 0 or more, found -1")],
        ),
        (
            tenant(&[("guarantee", "{gpus: 2, H100-80GB: 1}")]),
            vec![("spec.guarantee", "`gpus` (normalised GPUs) and per-class counts do not mix")],
        ),
        (
            tenant(&[("guarantee", "{H100-80GB: 1.5}")]),
            vec![("spec.guarantee[H100-80GB]", "invalid type: floating point `1.5`, expected a whole number")],
        ),
        (
            tenant(&[("guarantee", "{H100-80GB: -1}")]),
            vec![("spec.guarantee[H100-80GB]", "invalid value: integer `-1`")],
        ),
        (
            tenant(&[("guarantee", "{\"bad class\": 1}"), ("limit", "{\"bad class\": 2}")]),
            vec![
                ("spec.guarantee[bad class]", "is not a valid hardware class name"),
                ("spec.limit[bad class]", "is not a valid hardware class name"),
            ],
        ),
        (
            tenant(&[("guarantee", "{gpus: 8}"), ("limit", "{gpus: 4}")]),
            vec![("spec.limit.gpus", "the limit (4) is below the guarantee (8)")],
        ),
        (
            tenant(&[("guarantee", "{H100-80GB: 2, A100-40GB: 1}"), ("limit", "{H100-80GB: 1}")]),
            vec![
                ("spec.limit[A100-40GB]", "the limit for A100-40GB (0) is below its guarantee (1)"),
                ("spec.limit[H100-80GB]", "the limit for H100-80GB (1) is below its guarantee (2)"),
            ],
        ),
        (
            tenant(&[("latencyBand", "interactive")]),
            vec![(
                "spec.latencyBand",
                "unknown variant `interactive`, expected one of `real-time`, `bulk`, `batch`",
            )],
        ),
        (
            tenant(&[("quotaMode", "soft")]),
            vec![("spec.quotaMode", "expected `enforce` or `dry-run`")],
        ),
        (
            tenant(&[("tokensPerMinute", "0")]),
            vec![("spec.tokensPerMinute", "must be at least 1; leave it out for no token limit")],
        ),
        (
            tenant(&[("weight", "0"), ("quotaMode", "soft"), ("priority", "3")]),
            vec![
                ("spec.quotaMode", "unknown variant `soft`"),
                ("spec.priority", "unknown field; expected one of `weight`"),
            ],
        ),
        // HardwareClass.
        (
            class(&[("match", "{vendor: nvidia, model: \"H100(\"}")]),
            vec![("spec.match.model", "invalid regular expression \"H100(\": unclosed group")],
        ),
        (
            class(&[("match", "{vendor: intel}")]),
            vec![("spec.match.vendor", "unknown variant `intel`, expected one of `nvidia`, `amd`, `google`, `other`")],
        ),
        (
            class(&[("match", "{}")]),
            vec![("spec.match", "give at least one of vendor, model, minMemoryGiB")],
        ),
        (
            class(&[("match", "{vendor: nvidia, minMemoryGiB: 0}")]),
            vec![("spec.match.minMemoryGiB", "must be a number above 0")],
        ),
        (
            class(&[("match", "{vendor: nvidia, memory: 80}")]),
            vec![("spec.match.memory", "unknown field; expected one of `vendor`, `model`, `minMemoryGiB`")],
        ),
        (
            class(&[("pricePerGpuHour", "-4.1"), ("relativeCapacity", "0")]),
            vec![
                ("spec.pricePerGpuHour", "must be a number, 0 or more, found -4.1"),
                ("spec.relativeCapacity", "must be a number above 0, found 0"),
            ],
        ),
        (
            class(&[("match", ""), ("pricePerGpuHour", "1")]),
            vec![("spec.match", "required field is missing")],
        ),
        // ModelDeployment: model.
        (
            deployment(&[("model", "{name: org/chat, source: /models/chat}")]),
            vec![("spec.model.version", "required field is missing")],
        ),
        (
            deployment(&[("model", "{name: org/chat, version: 1.0, source: /models/chat}")]),
            vec![("spec.model.version", "invalid type: floating point `1.0`, expected a string (quote it")],
        ),
        (
            deployment(&[("model", "{name: \"\", version: v 1, source: /m, sizeGiB: 0}")]),
            vec![
                ("spec.model.name", "must not be empty"),
                ("spec.model.version", "\"v 1\" must not hold spaces"),
                ("spec.model.sizeGiB", "must be a number above 0"),
            ],
        ),
        // Runtimes.
        (
            deployment(&[("runtimes", "[]")]),
            vec![("spec.runtimes", "list at least one runtime (vllm, tgi, sglang, triton, trtllm, ollama, llama-cpp, custom)")],
        ),
        (
            deployment(&[("runtimes", "[{kind: vllm}, {kind: mlc}]")]),
            vec![(
                "spec.runtimes[1].kind",
                "unknown variant `mlc`, expected one of `vllm`, `tgi`, `sglang`, `triton`, `trtllm`, `ollama`, \
                 `llama-cpp`, `custom`",
            )],
        ),
        (
            deployment(&[("runtimes", "[{kind: vllm, args: [--max-model-len, 8192]}]")]),
            vec![("spec.runtimes[0].args[1]", "invalid type: integer `8192`, expected a string (quote it")],
        ),
        (
            deployment(&[("runtimes", "[{kind: vllm}, {kind: tgi}, {kind: vllm}]")]),
            vec![("spec.runtimes[2].kind", "vllm is already listed at spec.runtimes[0]")],
        ),
        (
            deployment(&[("runtimes", "[{kind: vllm, env: {CUDA_VISIBLE_DEVICES: \"0\", 1BAD: x, GOOD: y}}]")]),
            vec![
                ("spec.runtimes[0].env[1BAD]", "is not an environment variable name"),
                ("spec.runtimes[0].env.CUDA_VISIBLE_DEVICES", "is set by Pyxis from the devices"),
            ],
        ),
        (
            deployment(&[("runtimes", "[{kind: custom}]")]),
            vec![("spec.runtimes[0].custom", "required field is missing: a custom runtime gives its command")],
        ),
        (
            deployment(&[("runtimes", &custom("healthPath: /health"))]),
            vec![("spec.runtimes[0].custom.command", "required field is missing: the program and its arguments")],
        ),
        (
            deployment(&[("runtimes", &custom("command: [\"\"]"))]),
            vec![("spec.runtimes[0].custom.command[0]", "the program must not be empty")],
        ),
        (
            deployment(&[("runtimes", &custom("command: [server, --port, \"8000\"]"))]),
            vec![("spec.runtimes[0].custom.command", "must use {port}")],
        ),
        (
            deployment(&[("runtimes", &custom(&format!("{CUSTOM_OK}, healthPath: health, metricsPath: metrics"))) ]),
            vec![
                ("spec.runtimes[0].custom.healthPath", "\"health\" must be a path starting with '/'"),
                ("spec.runtimes[0].custom.metricsPath", "\"metrics\" must be a path starting with '/'"),
            ],
        ),
        (
            deployment(&[("runtimes", &custom(&format!("{CUSTOM_OK}, port: 8000")))]),
            vec![("spec.runtimes[0].custom.port", "unknown field; expected one of `command`")],
        ),
        (
            deployment(&[("runtimes", &format!("[{{kind: vllm, custom: {{{CUSTOM_OK}}}}}]"))]),
            vec![("spec.runtimes[0].custom", "only a custom runtime takes custom; vllm is launched")],
        ),
        // Resources.
        (
            deployment(&[("resources", "{gpuMemoryGiB: 24}")]),
            vec![("spec.resources.gpusPerReplica", "required field is missing")],
        ),
        (
            deployment(&[("resources", "{gpusPerReplica: -1}")]),
            vec![("spec.resources.gpusPerReplica", "invalid value: integer `-1`, expected a whole number from 0")],
        ),
        (
            deployment(&[("resources", "{gpusPerReplica: 0, gpuMemoryGiB: 8, hardwareClasses: [H100-80GB]}")]),
            vec![
                ("spec.resources.gpuMemoryGiB", "a CPU deployment (gpusPerReplica: 0) needs no GPU memory"),
                ("spec.resources.hardwareClasses", "a CPU deployment (gpusPerReplica: 0) runs on no hardware class"),
            ],
        ),
        (
            deployment(&[("resources", "{gpusPerReplica: 0, preferredHardwareClasses: [H100-80GB]}")]),
            vec![("spec.resources.preferredHardwareClasses", "runs on no hardware class")],
        ),
        (
            deployment(&[("resources", "{gpusPerReplica: 1, gpuMemoryGiB: 0}")]),
            vec![("spec.resources.gpuMemoryGiB", "must be a number above 0, found 0")],
        ),
        (
            deployment(&[(
                "resources",
                "{gpusPerReplica: 2, hardwareClasses: [H100-80GB, H100-80GB, \"a b\"], preferredHardwareClasses: [A100-40GB]}",
            )]),
            vec![
                ("spec.resources.hardwareClasses[1]", "H100-80GB is listed twice"),
                ("spec.resources.hardwareClasses[2]", "is not a valid hardware class name"),
                ("spec.resources.preferredHardwareClasses[0]", "A100-40GB is not among hardwareClasses"),
            ],
        ),
        // Replicas, policies, budgets.
        (
            deployment(&[("replicas", "{min: 3, max: 2}")]),
            vec![("spec.replicas.min", "min (3) is above max (2)")],
        ),
        (
            deployment(&[("replicas", "{min: 0, max: 2}")]),
            vec![("spec.replicas.min", "min 0 needs scalePolicy warm-zero or hot-zero")],
        ),
        (
            deployment(&[("replicas", "{min: 0, max: 0}"), ("scalePolicy", "hot-zero")]),
            vec![("spec.replicas.max", "must be at least 1")],
        ),
        (
            deployment(&[("replicas", "{min: 1, max: 2, desired: 2}")]),
            vec![("spec.replicas.desired", "unknown field; expected `min` or `max`")],
        ),
        (
            deployment(&[("scalePolicy", "scale-to-zero")]),
            vec![("spec.scalePolicy", "expected one of `always-warm`, `warm-zero`, `hot-zero`")],
        ),
        (
            deployment(&[("routing", "round-robin")]),
            vec![(
                "spec.routing",
                "expected one of `least-outstanding`, `kv-aware`, `prefix-affinity`, `latency-budget`",
            )],
        ),
        (
            deployment(&[("routing", "latency-budget")]),
            vec![("spec.latencyBudget", "required field is missing: routing: latency-budget routes by it")],
        ),
        (
            deployment(&[("latencyBudget", "{ttftMs: 0, tpotMs: 0}")]),
            vec![
                ("spec.latencyBudget.ttftMs", "must be at least 1"),
                ("spec.latencyBudget.tpotMs", "must be at least 1"),
            ],
        ),
        (
            deployment(&[("latencyBudget", "{tpotMs: 50}")]),
            vec![("spec.latencyBudget.ttftMs", "required field is missing")],
        ),
        (
            deployment(&[("readinessTimeout", "soon")]),
            vec![("spec.readinessTimeout", "\"soon\" is not a duration like 90s or 10m")],
        ),
        (
            deployment(&[("readinessTimeout", "0s")]),
            vec![("spec.readinessTimeout", "must be above 0 and at most 24h, found 0s")],
        ),
        (
            deployment(&[("readinessTimeout", "2days")]),
            vec![("spec.readinessTimeout", "must be above 0 and at most 24h, found 2days")],
        ),
        (
            deployment(&[("maxConcurrentRequests", "0"), ("queueTimeout", "2h")]),
            vec![
                ("spec.maxConcurrentRequests", "must be 1 to 100000, found 0"),
                ("spec.queueTimeout", "must be above 0 and at most 1h, found 2h"),
            ],
        ),
        (
            deployment(&[("sharedWith", "[product, \"*\", \"Bad Name\"]")]),
            vec![("spec.sharedWith[2]", "\"Bad Name\" is not a tenant name")],
        ),
        (
            deployment(&[("model", "{name: org/chat, version: v1, source: /m, digest: md5}")]),
            vec![("spec.model.digest", "\"md5\" is not ALGORITHM:HEX")],
        ),
        (
            deployment(&[("runtimes", "[{kind: vllm, args: [--max-model-len, 8192]}, {kind: mlc}]")]),
            vec![
                ("spec.runtimes[0].args[1]", "invalid type: integer `8192`"),
                ("spec.runtimes[1].kind", "unknown variant `mlc`"),
            ],
        ),
        (
            deployment(&[("runtimes", "[{kind: vllm}, vllm]")]),
            vec![("spec.runtimes[1]", "invalid type: string \"vllm\", expected a mapping")],
        ),
        // metadata's rules still run when the spec does not decode.
        (
            deployment(&[("routing", "random")]).replace("{name: chat, namespace: team}", "{name: Chat}"),
            vec![
                ("spec.routing", "unknown variant `random`"),
                ("metadata.name", "\"Chat\" is not a valid name (uppercase letter)"),
                ("metadata.namespace", "required field is missing"),
            ],
        ),
        // Several shape errors in one document are all reported, in the document's order.
        (
            deployment(&[("gpus", "1"), ("routing", "random"), ("replicas", "{min: x}")]),
            vec![
                ("spec.gpus", "unknown field"),
                ("spec.replicas.min", "invalid type: string \"x\""),
                ("spec.routing", "unknown variant `random`"),
            ],
        ),
    ];
    let mismatches: Vec<String> = cases
        .iter()
        .filter_map(|(text, expected)| rejection_mismatch(text, expected))
        .collect();
    assert!(
        mismatches.is_empty(),
        "{} of {} cases:\n\n{}",
        mismatches.len(),
        cases.len(),
        mismatches.join("\n\n")
    );
}

// ---------------------------------------------------------------------------------------
// Good paths

/// SPEC.md's example, verbatim.
const SPEC_EXAMPLE: &str = r#"
apiVersion: pyxis.dev/v1alpha1
kind: HardwareClass
metadata: {name: H100-80GB}
spec:
  match: {vendor: nvidia, model: "H100.*80GB"}   # regex over the device model
  pricePerGpuHour: 4.10
  relativeCapacity: 1.0          # normalised units: this class's GPU counts as 1.0
---
apiVersion: pyxis.dev/v1alpha1
kind: Tenant
metadata: {name: research}
spec:
  weight: 2
  guarantee: {gpus: 4}           # normalised GPUs; or per class: {H100-80GB: 2}
  limit: {gpus: 16}              # borrowing ceiling
  latencyBand: real-time         # real-time | bulk | batch
  tokensPerMinute: 200000
  quotaMode: enforce             # enforce | dry-run
---
apiVersion: pyxis.dev/v1alpha1
kind: ModelDeployment
metadata: {name: qwen-7b, namespace: research}
spec:
  model: {name: Qwen/Qwen2.5-7B-Instruct, version: "2024-09-19", source: /models/qwen2.5-7b, sizeGiB: 15}
  runtimes:                      # in order of preference; the first a node supports wins
    - {kind: vllm, args: ["--max-model-len", "8192"]}
    - {kind: llama-cpp}
  resources: {gpusPerReplica: 1, gpuMemoryGiB: 24, hardwareClasses: [H100-80GB, A100-40GB]}
  replicas: {min: 1, max: 4}
  latencyBudget: {ttftMs: 500}
  scalePolicy: always-warm       # always-warm | warm-zero | hot-zero
  routing: least-outstanding     # least-outstanding | kv-aware | prefix-affinity | latency-budget
"#;

#[test]
fn spec_example_parses_into_the_fields_it_writes() {
    let manifests = parse_documents(SPEC_EXAMPLE).unwrap();
    let [Manifest::HardwareClass(class), Manifest::Tenant(tenant), Manifest::ModelDeployment(deployment)] =
        manifests.as_slice()
    else {
        panic!("unexpected kinds: {manifests:#?}");
    };
    assert_eq!(class.metadata.name, "H100-80GB");
    assert_eq!(class.spec.match_rules.vendor, Some(DeviceVendor::Nvidia));
    assert_eq!(class.spec.price_per_gpu_hour, 4.10);
    assert_eq!(class.spec.relative_capacity, 1.0);

    assert_eq!(tenant.spec.weight, 2.0);
    assert_eq!(tenant.spec.guarantee, Some(GpuQuota::Normalised(4.0)));
    assert_eq!(tenant.spec.limit, Some(GpuQuota::Normalised(16.0)));
    assert_eq!(tenant.spec.latency_band, LatencyBand::RealTime);
    assert_eq!(tenant.spec.tokens_per_minute, Some(200_000));
    assert_eq!(tenant.spec.quota_mode, QuotaMode::Enforce);

    assert_eq!(deployment.tenant(), "research");
    let spec = &deployment.spec;
    assert_eq!(spec.model.name, "Qwen/Qwen2.5-7B-Instruct");
    assert_eq!(spec.model.version, "2024-09-19");
    assert_eq!(spec.model.size_gib, Some(15.0));
    let kinds: Vec<RuntimeKind> = spec.runtimes.iter().map(|r| r.kind).collect();
    assert_eq!(kinds, [RuntimeKind::Vllm, RuntimeKind::LlamaCpp]);
    assert_eq!(spec.runtimes[0].args, ["--max-model-len", "8192"]);
    assert_eq!(spec.resources.gpus_per_replica, 1);
    assert_eq!(spec.resources.gpu_memory_gib, Some(24.0));
    assert_eq!(spec.resources.hardware_classes, ["H100-80GB", "A100-40GB"]);
    assert_eq!(spec.replicas, Replicas { min: 1, max: 4 });
    assert_eq!(
        spec.latency_budget,
        Some(LatencyBudget {
            ttft_ms: 500,
            tpot_ms: None
        })
    );
    assert_eq!(spec.scale_policy, ScalePolicy::AlwaysWarm);
    assert_eq!(spec.routing, RoutingPolicy::LeastOutstanding);
}

#[test]
fn defaults_fill_what_is_left_out() {
    let text = "apiVersion: pyxis.dev/v1alpha1\nkind: Tenant\nmetadata: {name: team}\n---\n".to_string()
        + &class(&[])
        + "---\n"
        + &deployment(&[]);
    let manifests = parse_documents(&text).unwrap();
    let [Manifest::Tenant(tenant), Manifest::HardwareClass(class), Manifest::ModelDeployment(deployment)] =
        manifests.as_slice()
    else {
        panic!("unexpected kinds: {manifests:#?}");
    };
    assert_eq!(tenant.spec, TenantSpec::default());
    assert_eq!(tenant.spec.weight, 1.0);
    assert_eq!(tenant.spec.latency_band, LatencyBand::Bulk);
    assert_eq!(tenant.spec.quota_mode, QuotaMode::Enforce);
    assert_eq!(
        (tenant.spec.guarantee.as_ref(), tenant.spec.limit.as_ref()),
        (None, None)
    );
    assert_eq!(tenant.spec.tokens_per_minute, None);

    assert_eq!(class.spec.price_per_gpu_hour, 0.0);
    assert_eq!(class.spec.relative_capacity, 1.0);

    let spec = &deployment.spec;
    assert_eq!(spec.replicas, Replicas { min: 1, max: 1 });
    assert_eq!(spec.scale_policy, ScalePolicy::AlwaysWarm);
    assert_eq!(spec.routing, RoutingPolicy::LeastOutstanding);
    assert_eq!(spec.latency_budget, None);
    assert_eq!(spec.readiness_timeout, None);
    assert!(spec.runtimes[0].args.is_empty() && spec.runtimes[0].env.is_empty());
    assert!(spec.resources.hardware_classes.is_empty());
}

#[test]
fn replicas_default_each_bound_from_the_other() {
    let replicas = |value: &str, policy: &str| {
        let manifests = parse_documents(&deployment(&[("replicas", value), ("scalePolicy", policy)])).unwrap();
        match &manifests[0] {
            Manifest::ModelDeployment(d) => d.spec.replicas,
            other => panic!("{other:?}"),
        }
    };
    assert_eq!(replicas("{max: 4}", ""), Replicas { min: 1, max: 4 });
    assert_eq!(replicas("{min: 3}", ""), Replicas { min: 3, max: 3 });
    assert_eq!(replicas("{min: 0}", "warm-zero"), Replicas { min: 0, max: 1 });
    assert_eq!(replicas("{}", ""), Replicas { min: 1, max: 1 });
}

#[test]
fn custom_runtime_defaults_its_paths() {
    let manifests = parse_documents(&deployment(&[("runtimes", &custom(CUSTOM_OK))])).unwrap();
    let Manifest::ModelDeployment(deployment) = &manifests[0] else {
        panic!("{manifests:?}");
    };
    let custom = deployment.spec.runtimes[0].custom.as_ref().unwrap();
    assert_eq!(custom.health_path, "/health");
    assert_eq!(custom.openai_path, "/v1");
    assert_eq!(
        (custom.metrics_path.as_ref(), custom.version_path.as_ref()),
        (None, None)
    );
}

#[test]
fn many_documents_give_all_manifests_in_order() {
    // A leading `---`, a comment-only document and a trailing `---` are skipped.
    let text = format!(
        "---\n{}---\n# nothing here\n---\n{}---\n{}---\n",
        tenant(&[]),
        class(&[]),
        deployment(&[])
    );
    let manifests = parse_documents(&text).unwrap();
    let kinds: Vec<Kind> = manifests.iter().map(Manifest::kind).collect();
    assert_eq!(kinds, [Kind::Tenant, Kind::HardwareClass, Kind::ModelDeployment]);
    assert_eq!(parse_documents("").unwrap(), []);
    assert_eq!(parse_documents("# only a comment\n---\n").unwrap(), []);
}

#[test]
fn one_bad_document_rejects_the_whole_input_with_every_error() {
    let text = [
        tenant(&[]),
        deployment(&[("resources", "{gpusPerReplica: 0, gpuMemoryGiB: 8}")]),
        class(&[]),
        tenant(&[("weight", "0")]).replace("{name: team}", "{name: other}"),
    ]
    .join("---\n");
    let errors = parse_documents(&text).unwrap_err();
    let got: Vec<(usize, Option<Kind>, Option<&str>, &str)> = errors
        .iter()
        .map(|e| (e.document, e.kind, e.name.as_deref(), e.path.as_str()))
        .collect();
    assert_eq!(
        got,
        [
            (
                2,
                Some(Kind::ModelDeployment),
                Some("chat"),
                "spec.resources.gpuMemoryGiB"
            ),
            (4, Some(Kind::Tenant), Some("other"), "spec.weight"),
        ]
    );
}

#[test]
fn an_object_twice_in_one_input_is_rejected() {
    let text = format!("{}---\n{}---\n{}", deployment(&[]), tenant(&[]), deployment(&[]));
    check_rejected(
        &text,
        &[(
            "metadata.name",
            "ModelDeployment team/chat is also defined by document 1",
        )],
    );
    // The same name in another tenant, or of another kind, is another object.
    let other_tenant = deployment(&[]).replace("namespace: team", "namespace: other");
    let other_kind = tenant(&[]).replace("{name: team}", "{name: chat}");
    assert!(parse_documents(&format!("{}---\n{other_tenant}---\n{other_kind}", deployment(&[]))).is_ok());
}

#[test]
fn yaml_syntax_errors_name_the_line_and_stop_reading() {
    let text = format!("{}---\nkind: [Tenant\n---\n{}", tenant(&[]), class(&[]));
    let errors = parse_documents(&text).unwrap_err();
    assert_eq!(errors.len(), 1, "{errors:#?}");
    assert_eq!(errors[0].document, 2);
    assert!(
        matches!(&errors[0].problem, Problem::Syntax { message } if message.contains("line 7")),
        "{errors:#?}"
    );

    // A duplicate key spoils only its document.
    let text = format!(
        "{}---\n{}",
        tenant(&[("weight", "1\n  weight: 2")]),
        tenant(&[("weight", "0")])
    );
    let errors = parse_documents(&text).unwrap_err();
    let got: Vec<(usize, &str)> = errors.iter().map(|e| (e.document, e.path.as_str())).collect();
    assert_eq!(got, [(1, ""), (2, "spec.weight")], "{errors:#?}");
}

#[test]
fn status_is_accepted_and_ignored() {
    let text = tenant(&[]) + "status: {phase: Active, anything: [1, 2]}\n";
    let manifests = parse_documents(&text).unwrap();
    assert_eq!(manifests, parse_documents(&tenant(&[])).unwrap());
}

#[test]
fn yaml_merge_keys_and_anchors_work() {
    let text = "apiVersion: pyxis.dev/v1alpha1\nkind: Tenant\nmetadata: {name: team}\n\
                spec:\n  <<: {weight: 3, latencyBand: batch}\n  quotaMode: dry-run\n";
    let manifests = parse_documents(text).unwrap();
    let Manifest::Tenant(tenant) = &manifests[0] else {
        panic!()
    };
    assert_eq!(tenant.spec.weight, 3.0);
    assert_eq!(tenant.spec.latency_band, LatencyBand::Batch);
    assert_eq!(tenant.spec.quota_mode, QuotaMode::DryRun);
}

#[test]
fn error_display_names_document_object_path_and_reason() {
    let errors = parse_documents(&format!(
        "{}---\n{}",
        tenant(&[]),
        deployment(&[("resources", "{gpusPerReplica: one}")])
    ))
    .unwrap_err();
    assert_eq!(
        errors[0].to_string(),
        "document 2 (ModelDeployment team/chat): spec.resources.gpusPerReplica: invalid type: string \"one\", \
         expected a whole number from 0 to 4294967295"
    );
    let json = serde_json::to_value(&errors[0]).unwrap();
    assert_eq!(
        json,
        serde_json::json!({
            "document": 2, "kind": "ModelDeployment", "name": "chat", "namespace": "team",
            "path": "spec.resources.gpusPerReplica",
            "reason": "invalid type: string \"one\", expected a whole number from 0 to 4294967295",
        })
    );
    let errors = parse_documents("apiVersion: pyxis.dev/v1alpha1\nkind: Widget\n").unwrap_err();
    assert_eq!(
        errors[0].to_string(),
        "document 1: kind: unknown kind \"Widget\"; supported kinds: Tenant, HardwareClass, ModelDeployment"
    );
}

#[test]
fn too_many_documents_are_refused() {
    let text = "---\n".repeat(MAX_DOCUMENTS + 1);
    let errors = parse_documents(&text).unwrap_err();
    assert!(matches!(
        errors[..],
        [ManifestError {
            problem: Problem::TooManyDocuments { .. },
            ..
        }]
    ));
}

// ---------------------------------------------------------------------------------------
// Round trips: what the coordinator prints (`get -o yaml|json`) applies again unchanged.

fn examples_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../examples/manifests")
}

fn all_examples() -> Vec<Manifest> {
    let mut manifests = Vec::new();
    for path in example_files() {
        let text = std::fs::read_to_string(&path).unwrap();
        manifests.extend(parse_documents(&text).unwrap());
    }
    manifests
}

fn example_files() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(examples_dir())
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|e| e == "yaml" || e == "yml"))
        .collect();
    files.sort();
    files
}

#[test]
fn round_trip_through_yaml_and_json() {
    let mut manifests = parse_documents(SPEC_EXAMPLE).unwrap();
    manifests.extend(all_examples());
    for manifest in &manifests {
        let yaml = serde_norway::to_string(manifest).unwrap();
        assert_eq!(
            parse_documents(&yaml).unwrap(),
            std::slice::from_ref(manifest),
            "YAML:\n{yaml}"
        );
        let json = serde_json::to_string_pretty(manifest).unwrap();
        assert_eq!(
            parse_documents(&json).unwrap(),
            std::slice::from_ref(manifest),
            "JSON:\n{json}"
        );
    }
    // Many documents in one YAML stream, as `get -o yaml` of several objects would print.
    let stream: Vec<String> = manifests.iter().map(|m| serde_norway::to_string(m).unwrap()).collect();
    let reparsed = parse_documents(&stream.join("---\n")).unwrap_err();
    // The SPEC example and the examples share qwen-7b, research and H100-80GB.
    assert!(
        reparsed.iter().all(|e| matches!(e.problem, Problem::Duplicate { .. })),
        "{reparsed:#?}"
    );
}

#[test]
fn serialized_form_is_kubernetes_shaped_and_camel_case() {
    let manifests = parse_documents(SPEC_EXAMPLE).unwrap();
    let json = serde_json::to_value(&manifests[2]).unwrap();
    assert_eq!(json["apiVersion"], API_VERSION);
    assert_eq!(json["kind"], "ModelDeployment");
    assert_eq!(
        json["metadata"],
        serde_json::json!({"name": "qwen-7b", "namespace": "research"})
    );
    assert_eq!(json["spec"]["resources"]["gpusPerReplica"], 1);
    assert_eq!(json["spec"]["resources"]["gpuMemoryGiB"], 24.0);
    assert_eq!(json["spec"]["model"]["sizeGiB"], 15.0);
    assert_eq!(json["spec"]["latencyBudget"], serde_json::json!({"ttftMs": 500}));
    assert_eq!(json["spec"]["scalePolicy"], "always-warm");
    assert_eq!(json["spec"]["runtimes"][1], serde_json::json!({"kind": "llama-cpp"}));
    let class = serde_json::to_value(&manifests[0]).unwrap();
    assert_eq!(
        class["spec"]["match"],
        serde_json::json!({"vendor": "nvidia", "model": "H100.*80GB"})
    );
    let tenant = serde_json::to_value(&manifests[1]).unwrap();
    assert_eq!(tenant["spec"]["guarantee"], serde_json::json!({"gpus": 4.0}));
    assert_eq!(tenant["spec"]["latencyBand"], "real-time");
}

// ---------------------------------------------------------------------------------------
// The examples

#[test]
fn every_example_manifest_parses() {
    let files = example_files();
    assert!(files.len() >= 4, "examples/manifests holds {files:?}");
    for path in &files {
        let text = std::fs::read_to_string(path).unwrap();
        if let Err(errors) = parse_documents(&text) {
            let lines: Vec<String> = errors.iter().map(ToString::to_string).collect();
            panic!("{}:\n{}", path.display(), lines.join("\n"));
        }
    }
    // Together they are one consistent set: every reference resolves.
    let manifests = all_examples();
    let names = |kind| -> Vec<&str> {
        manifests
            .iter()
            .filter(|m| m.kind() == kind)
            .map(Manifest::name)
            .collect()
    };
    let (tenants, classes) = (names(Kind::Tenant), names(Kind::HardwareClass));
    assert_eq!(tenants.len(), 2);
    assert!(["H100-80GB", "A100-80GB", "MI300X-192GB", "TPU-v5e"]
        .iter()
        .all(|c| classes.contains(c)));
    let mut cpu = 0;
    let mut custom = 0;
    for manifest in &manifests {
        match manifest {
            Manifest::ModelDeployment(d) => {
                assert!(tenants.contains(&d.tenant()), "{} has no tenant", d.metadata.name);
                let resources = &d.spec.resources;
                for class in resources
                    .hardware_classes
                    .iter()
                    .chain(&resources.preferred_hardware_classes)
                {
                    assert!(
                        classes.contains(&class.as_str()),
                        "{}: no class {class}",
                        d.metadata.name
                    );
                }
                cpu += usize::from(d.runs_on_cpu() && d.spec.runtimes[0].kind == RuntimeKind::LlamaCpp);
                custom += usize::from(d.spec.runtimes.iter().any(|r| r.kind == RuntimeKind::Custom));
            }
            Manifest::Tenant(t) => {
                for quota in [&t.spec.guarantee, &t.spec.limit].into_iter().flatten() {
                    if let GpuQuota::PerClass(per_class) = quota {
                        assert!(per_class.keys().all(|c| classes.contains(&c.as_str())), "{quota:?}");
                    }
                }
            }
            Manifest::HardwareClass(_) => {}
        }
    }
    assert_eq!((cpu, custom), (1, 1));
}

// ---------------------------------------------------------------------------------------
// Helpers for placement

#[test]
fn hardware_classes_match_the_device_models_agents_report() {
    let classes: Vec<HardwareClass> = all_examples()
        .into_iter()
        .filter_map(|m| match m {
            Manifest::HardwareClass(c) => Some(c),
            _ => None,
        })
        .collect();
    use pyxis_protocol::Vendor;
    const GIB: u64 = 1 << 30;
    let class_of = |vendor, model: &str, memory_bytes| {
        classes
            .iter()
            .find(|c| c.matches(vendor, model, memory_bytes))
            .map(|c| c.metadata.name.as_str())
    };
    assert_eq!(
        class_of(Vendor::Nvidia, "NVIDIA H100 80GB HBM3", 80 * GIB),
        Some("H100-80GB")
    );
    assert_eq!(
        class_of(Vendor::Nvidia, "NVIDIA A100-SXM4-80GB", 80 * GIB),
        Some("A100-80GB")
    );
    assert_eq!(
        class_of(Vendor::Nvidia, "NVIDIA A100-SXM4-40GB", 40 * GIB),
        Some("A100-40GB")
    );
    assert_eq!(
        class_of(Vendor::Amd, "AMD Instinct MI300X", 192 * GIB),
        Some("MI300X-192GB")
    );
    assert_eq!(class_of(Vendor::Google, "TPU v5 lite", 16 * GIB), Some("TPU-v5e"));
    // The rules are all required: vendor, model and memory.
    assert_eq!(class_of(Vendor::Amd, "NVIDIA H100 80GB HBM3", 80 * GIB), None);
    assert_eq!(class_of(Vendor::Amd, "AMD Instinct MI300X", 100 * GIB), None);
    assert_eq!(class_of(Vendor::Nvidia, "NVIDIA L4", 24 * GIB), None);
}

#[test]
fn replica_spec_carries_what_the_agent_runs() {
    let text = deployment(&[
        (
            "runtimes",
            "[{kind: vllm, args: [--enforce-eager], env: {HF_HUB_OFFLINE: \"1\"}}, \
             {kind: custom, custom: {command: [srv, --port, \"{port}\"], metricsPath: /metrics}}]",
        ),
        ("readinessTimeout", "15m"),
    ]);
    let manifests = parse_documents(&text).unwrap();
    let Manifest::ModelDeployment(deployment) = &manifests[0] else {
        panic!()
    };
    let gpus = vec!["GPU-1".to_string()];
    let spec = deployment.replica_spec("chat-0", 0, gpus.clone()).unwrap();
    assert_eq!(
        spec,
        pyxis_protocol::ReplicaSpec {
            name: "chat-0".into(),
            deployment: "chat".into(),
            tenant: "team".into(),
            model_name: "org/chat".into(),
            model_version: "v1".into(),
            model_source: "/models/chat".into(),
            runtime_kind: "vllm".into(),
            runtime_args: vec!["--enforce-eager".into()],
            gpus: gpus.clone(),
            env: vec![("HF_HUB_OFFLINE".into(), "1".into())],
            readiness_timeout_ms: 15 * 60 * 1000,
            custom: None,
        }
    );
    let spec = deployment.replica_spec("chat-1", 1, gpus).unwrap();
    assert_eq!(spec.runtime_kind, "custom");
    assert_eq!(
        spec.custom,
        Some(pyxis_protocol::CustomRuntime {
            command: vec!["srv".into(), "--port".into(), "{port}".into()],
            health_path: "/health".into(),
            metrics_path: Some("/metrics".into()),
            version_path: None,
            openai_path: "/v1".into(),
        })
    );
    assert_eq!(deployment.replica_spec("chat-2", 2, vec![]), None);
    assert_eq!(deployment.spec.readiness_timeout, Some(Duration::from_secs(900)));

    // The first runtime the node supports wins.
    let supports = |kinds: &'static [&'static str]| move |kind: RuntimeKind| kinds.contains(&kind.as_str());
    assert_eq!(
        deployment.first_supported_runtime(supports(&["custom", "vllm"])),
        Some(0)
    );
    assert_eq!(deployment.first_supported_runtime(supports(&["custom"])), Some(1));
    assert_eq!(deployment.first_supported_runtime(supports(&["tgi"])), None);
}

#[test]
fn runtime_kind_names_are_the_wire_names() {
    for kind in RuntimeKind::ALL {
        assert_eq!(RuntimeKind::parse(kind.as_str()), Some(kind));
        assert_eq!(serde_json::to_value(kind).unwrap(), kind.as_str());
    }
}

// ---------------------------------------------------------------------------------------
// Hostile and mangled input

#[test]
fn hostile_yaml_is_refused_quickly() {
    // A billion laughs: nine aliases of nine aliases, nine levels deep.
    let mut text = String::from("a: &a [x, x, x, x, x, x, x, x, x]\n");
    let mut previous = 'a';
    for name in 'b'..='j' {
        let items = vec![format!("*{previous}"); 9].join(", ");
        text.push_str(&format!("{name}: &{name} [{items}]\n"));
        previous = name;
    }
    let errors = parse_documents(&text).unwrap_err();
    assert!(
        matches!(
            &errors[..],
            [ManifestError {
                problem: Problem::Syntax { .. },
                ..
            }]
        ),
        "{errors:#?}"
    );
    // Nesting deeper than the parser's recursion limit.
    let errors = parse_documents(&"[".repeat(1000)).unwrap_err();
    assert!(
        matches!(
            &errors[..],
            [ManifestError {
                problem: Problem::Syntax { .. },
                ..
            }]
        ),
        "{errors:#?}"
    );
}

/// Randomly mangled examples never panic, and whatever still parses round-trips.
#[test]
fn mangled_examples_never_panic() {
    let texts: Vec<Vec<char>> = example_files()
        .iter()
        .map(|path| std::fs::read_to_string(path).unwrap().chars().collect())
        .collect();
    let alphabet: Vec<char> = " :-[]{},\n\"'#&*!|>0123456789aZ._/".chars().collect();
    let mut rng = fastrand::Rng::with_seed(0x5eed);
    let mut accepted = 0;
    for _ in 0..1000 {
        let mut chars = texts[rng.usize(..texts.len())].clone();
        for _ in 0..rng.usize(1..6) {
            let at = rng.usize(..chars.len());
            let replacement = alphabet[rng.usize(..alphabet.len())];
            match rng.u8(..3) {
                0 => {
                    chars.remove(at);
                }
                1 => chars.insert(at, replacement),
                _ => chars[at] = replacement,
            }
        }
        let text: String = chars.into_iter().collect();
        match parse_documents(&text) {
            Ok(manifests) => {
                accepted += 1;
                for manifest in &manifests {
                    let yaml = serde_norway::to_string(manifest).unwrap();
                    assert_eq!(
                        parse_documents(&yaml).unwrap(),
                        std::slice::from_ref(manifest),
                        "{text}"
                    );
                }
            }
            Err(errors) => assert!(!errors.is_empty() && errors.iter().all(|e| e.document >= 1)),
        }
    }
    // Mangling a comment or a value's spelling in place keeps some inputs valid.
    assert!(accepted > 0);
}
