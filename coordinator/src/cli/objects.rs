//! The manifest side of the CLI: `apply -f`, `delete -f` and `delete KIND NAME`,
//! `get` and `describe` of tenants, hardware classes and deployments, `explain deployment`
//! and `usage`.
//!
//! Rendering is done by pure functions of the API types (and the time, for ages), so tests
//! need no server; the command functions fetch, then print.

use std::{
    fmt::Display,
    io::{Read, Write},
    path::{Path, PathBuf},
    time::SystemTime,
};

use serde::{de::DeserializeOwned, Serialize};
use serde_json::Value;

use super::{encode, events_section, human_duration, print_structured, table, CliError, Client, GetKind, Output};
use crate::api_types::{
    AppliedObject, ApplyRequest, ApplyResponse, Condition, DeploymentStatus, DeploymentView, ExplainView,
    HardwareClassStatus, HardwareClassView, List, ManifestSource, NodeVerdictView, ObjectDetail, ObjectView,
    PlacedReplica, ProblemView, ReplicaCounts, TenantShareView, TenantStatus, TenantView, UsageView,
};

// ---------------------------------------------------------------------------------------
// Commands

/// `pyxis apply -f ...`: every source in one request.
pub(super) fn apply(
    client: &Client,
    files: &[PathBuf],
    dry_run: bool,
    output: Output,
    out: &mut impl Write,
) -> Result<(), CliError> {
    let sources = collect_sources(files, &mut std::io::stdin().lock())?;
    let response: ApplyResponse = client.call("POST", "/api/v1/apply", Some(&ApplyRequest { sources, dry_run }))?;
    print_applied(out, &response, dry_run, output)
}

/// `pyxis delete -f ...`: the objects the manifests name, in one request.
pub(super) fn delete_files(
    client: &Client,
    files: &[PathBuf],
    dry_run: bool,
    output: Output,
    out: &mut impl Write,
) -> Result<(), CliError> {
    if files.is_empty() {
        return Err(CliError::Source(
            "nothing to delete: give KIND NAME or -f FILE|DIR|-".to_string(),
        ));
    }
    let sources = collect_sources(files, &mut std::io::stdin().lock())?;
    let response: ApplyResponse = client.call("POST", "/api/v1/delete", Some(&ApplyRequest { sources, dry_run }))?;
    print_applied(out, &response, dry_run, output)
}

/// `pyxis delete tenant|hardwareclass|deployment NAME [-n TENANT]`.
pub(super) fn delete_one(
    client: &Client,
    kind: GetKind,
    name: &str,
    tenant: Option<&str>,
    output: Output,
    out: &mut impl Write,
) -> Result<(), CliError> {
    let path = object_path(kind, name, tenant)?;
    let response: ApplyResponse = client.call("DELETE", &path, None::<&()>)?;
    print_applied(out, &response, false, output)
}

/// `pyxis get tenants|hardwareclasses|deployments [NAME]`; `tenant` is `-n` unless `-A`.
pub(super) fn get(
    client: &Client,
    kind: GetKind,
    name: Option<&str>,
    tenant: Option<&str>,
    output: Output,
    out: &mut impl Write,
) -> Result<(), CliError> {
    let wide = output == Output::Wide;
    match kind {
        GetKind::Tenants => {
            let items: Vec<TenantView> = fetch(client, kind, name, None)?;
            show_list(
                out,
                items,
                output,
                "No tenants. Create one with `pyxis apply -f FILE`.",
                |items| tenants_table(items, wide),
            )
        }
        GetKind::HardwareClasses => {
            let items: Vec<HardwareClassView> = fetch(client, kind, name, None)?;
            show_list(
                out,
                items,
                output,
                "No hardware classes. Devices keep the class their agent derived; define classes with `pyxis apply -f FILE`.",
                |items| hardware_classes_table(items, wide),
            )
        }
        GetKind::Deployments => {
            let items: Vec<DeploymentView> = fetch(client, kind, name, tenant)?;
            let empty = match tenant {
                Some(tenant) => format!("No deployments in tenant {tenant}."),
                None => "No deployments.".to_string(),
            };
            let now = SystemTime::now();
            show_list(out, items, output, &empty, |items| {
                deployments_table(items, tenant.is_none(), wide, now)
            })
        }
        GetKind::Nodes | GetKind::Replicas => Err(not_an_object(kind)),
        GetKind::Jobs => Err(jobs_not_served()),
    }
}

/// `pyxis describe tenant|hardwareclass|deployment NAME [-n TENANT]`.
pub(super) fn describe(
    client: &Client,
    kind: GetKind,
    name: &str,
    tenant: Option<&str>,
    output: Output,
    out: &mut impl Write,
) -> Result<(), CliError> {
    let now = SystemTime::now();
    let path = object_path(kind, name, tenant)?;
    let structured = matches!(output, Output::Json | Output::Yaml);
    match kind {
        GetKind::Tenants => {
            let detail: ObjectDetail<TenantStatus> = client.call("GET", &path, None::<&()>)?;
            if structured {
                return print_structured(out, &detail, output);
            }
            emit(out, &describe_tenant(&detail, now))
        }
        GetKind::HardwareClasses => {
            let detail: ObjectDetail<HardwareClassStatus> = client.call("GET", &path, None::<&()>)?;
            if structured {
                return print_structured(out, &detail, output);
            }
            emit(out, &describe_hardware_class(&detail, now))
        }
        GetKind::Deployments => {
            let detail: ObjectDetail<DeploymentStatus> = client.call("GET", &path, None::<&()>)?;
            if structured {
                return print_structured(out, &detail, output);
            }
            // The tenant the server found, so the explain call names it even without -n.
            let tenant = detail.object.metadata.namespace.as_deref().or(tenant);
            let explanation = client
                .call::<ExplainView>("GET", &explain_path(name, tenant), None::<&()>)
                .map_err(|e| e.to_string());
            emit(
                out,
                &describe_deployment(&detail, explanation.as_ref().map_err(String::as_str), now),
            )
        }
        GetKind::Nodes | GetKind::Replicas => Err(not_an_object(kind)),
        GetKind::Jobs => Err(jobs_not_served()),
    }
}

/// `pyxis explain deployment NAME [-n TENANT]`.
pub(super) fn explain(
    client: &Client,
    name: &str,
    tenant: Option<&str>,
    output: Output,
    out: &mut impl Write,
) -> Result<(), CliError> {
    let view: ExplainView = client.call("GET", &explain_path(name, tenant), None::<&()>)?;
    match output {
        Output::Json | Output::Yaml => print_structured(out, &view, output),
        Output::Table | Output::Wide => emit(out, &explain_text(&view)),
    }
}

/// `pyxis usage [--tenant T] [--since 24h]`.
pub(super) fn usage(
    client: &Client,
    tenant: Option<&str>,
    since: &str,
    output: Output,
    out: &mut impl Write,
) -> Result<(), CliError> {
    let path = format!("/api/v1/usage{}", query(&[("tenant", tenant), ("since", Some(since))]));
    let view: UsageView = client.call("GET", &path, None::<&()>)?;
    match output {
        Output::Json | Output::Yaml => print_structured(out, &view, output),
        Output::Table | Output::Wide => {
            if view.items.is_empty() && view.tenants.is_empty() {
                eprintln!("No GPU usage or gateway calls from {} to {}.", view.since, view.until);
                return Ok(());
            }
            emit(out, &usage_table(&view))
        }
    }
}

/// `get|describe|delete jobs`: SPEC names BatchInferenceJob, and this version does not serve it.
pub(super) fn jobs_not_served() -> CliError {
    CliError::Api(
        "batch inference jobs (kind BatchInferenceJob) are not served by this version of Pyxis yet: there are none to show, and applying one is refused".into(),
    )
}

fn not_an_object(kind: GetKind) -> CliError {
    CliError::Api(format!("{kind:?} are not manifest objects"))
}

fn emit(out: &mut impl Write, text: &str) -> Result<(), CliError> {
    out.write_all(text.as_bytes())
        .map_err(|e| CliError::Output(e.to_string()))
}

/// `?a=1&b=2` of the pairs that have a value, values percent-encoded; empty when none has.
fn query(pairs: &[(&str, Option<&str>)]) -> String {
    let parts: Vec<String> = pairs
        .iter()
        .filter_map(|(key, value)| value.map(|v| format!("{key}={}", encode(v))))
        .collect();
    if parts.is_empty() {
        String::new()
    } else {
        format!("?{}", parts.join("&"))
    }
}

/// The API collection of a manifest kind.
fn collection(kind: GetKind) -> Result<&'static str, CliError> {
    match kind {
        GetKind::Tenants => Ok("tenants"),
        GetKind::HardwareClasses => Ok("hardwareclasses"),
        GetKind::Deployments => Ok("deployments"),
        GetKind::Nodes | GetKind::Replicas => Err(not_an_object(kind)),
        GetKind::Jobs => Err(jobs_not_served()),
    }
}

/// `/api/v1/{collection}/{name}`, with `?namespace=` for a deployment when a tenant is given.
fn object_path(kind: GetKind, name: &str, tenant: Option<&str>) -> Result<String, CliError> {
    let tenant = tenant.filter(|_| kind == GetKind::Deployments);
    Ok(format!(
        "/api/v1/{}/{}{}",
        collection(kind)?,
        encode(name),
        query(&[("namespace", tenant)])
    ))
}

fn explain_path(name: &str, tenant: Option<&str>) -> String {
    format!(
        "/api/v1/deployments/{}/explain{}",
        encode(name),
        query(&[("namespace", tenant)])
    )
}

/// The list, or the one named object (its detail without the events).
fn fetch<S: DeserializeOwned>(
    client: &Client,
    kind: GetKind,
    name: Option<&str>,
    tenant: Option<&str>,
) -> Result<Vec<ObjectView<S>>, CliError> {
    match name {
        Some(name) => {
            let detail: ObjectDetail<S> = client.call("GET", &object_path(kind, name, tenant)?, None::<&()>)?;
            Ok(vec![detail.object])
        }
        None => {
            let path = format!("/api/v1/{}{}", collection(kind)?, query(&[("namespace", tenant)]));
            Ok(client.call::<List<ObjectView<S>>>("GET", &path, None::<&()>)?.items)
        }
    }
}

fn show_list<S: Serialize>(
    out: &mut impl Write,
    items: Vec<ObjectView<S>>,
    output: Output,
    empty: &str,
    render: impl Fn(&[ObjectView<S>]) -> String,
) -> Result<(), CliError> {
    match output {
        Output::Json | Output::Yaml => print_structured(out, &List { items }, output),
        Output::Table | Output::Wide if items.is_empty() => {
            eprintln!("{empty}");
            Ok(())
        }
        Output::Table | Output::Wide => emit(out, &render(&items)),
    }
}

/// Warnings on stderr, then the objects (`-o json|yaml`: the API's answer).
fn print_applied(
    out: &mut impl Write,
    response: &ApplyResponse,
    dry_run: bool,
    output: Output,
) -> Result<(), CliError> {
    match output {
        Output::Json | Output::Yaml => print_structured(out, response, output)?,
        Output::Table | Output::Wide => emit(out, &applied_text(&response.items, dry_run))?,
    }
    let _ = out.flush();
    for warning in &response.warnings {
        eprintln!("warning: {warning}");
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Manifest sources

/// Extensions a directory's manifests have (compared without case).
const MANIFEST_EXTENSIONS: [&str; 3] = ["yaml", "yml", "json"];

/// Reads every `-f` argument into the sources of one request, in order: a file as itself
/// (whatever its name), a directory as its `*.yaml`, `*.yml` and `*.json` files (not
/// recursive, hidden files skipped) sorted by name, and `-` as `stdin`, once.
pub(super) fn collect_sources(files: &[PathBuf], stdin: &mut dyn Read) -> Result<Vec<ManifestSource>, CliError> {
    let mut sources = Vec::new();
    let mut read_stdin = false;
    for path in files {
        if path.as_os_str() == "-" {
            if read_stdin {
                return Err(CliError::Source("-f - (stdin) is given more than once".to_string()));
            }
            read_stdin = true;
            let mut text = String::new();
            stdin
                .read_to_string(&mut text)
                .map_err(|e| CliError::Source(format!("cannot read manifests from stdin: {e}")))?;
            sources.push(ManifestSource {
                name: "-".to_string(),
                text,
            });
            continue;
        }
        let metadata = std::fs::metadata(path).map_err(|e| unreadable(path, &e))?;
        if metadata.is_dir() {
            let found = manifest_files(path)?;
            if found.is_empty() {
                return Err(CliError::Source(format!(
                    "no manifests in directory {}: it has no *.yaml, *.yml or *.json file (subdirectories are not read)",
                    path.display()
                )));
            }
            for file in found {
                sources.push(read_source(&file)?);
            }
        } else {
            sources.push(read_source(path)?);
        }
    }
    Ok(sources)
}

/// A directory's manifest files, sorted by name.
fn manifest_files(dir: &Path) -> Result<Vec<PathBuf>, CliError> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(|e| unreadable(dir, &e))? {
        let entry = entry.map_err(|e| unreadable(dir, &e))?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        let manifest = !name.starts_with('.')
            && name.rsplit_once('.').is_some_and(|(_, extension)| {
                MANIFEST_EXTENSIONS
                    .iter()
                    .any(|known| extension.eq_ignore_ascii_case(known))
            });
        // `is_file` follows symbolic links: a link to a manifest counts, one to a directory not.
        if manifest && entry.path().is_file() {
            found.push(entry.path());
        }
    }
    found.sort_by(|a, b| a.file_name().cmp(&b.file_name()));
    Ok(found)
}

fn read_source(path: &Path) -> Result<ManifestSource, CliError> {
    let text = std::fs::read_to_string(path).map_err(|e| unreadable(path, &e))?;
    Ok(ManifestSource {
        name: path.display().to_string(),
        text,
    })
}

fn unreadable(path: &Path, error: &std::io::Error) -> CliError {
    let reason = match error.kind() {
        std::io::ErrorKind::NotFound => "no such file or directory".to_string(),
        std::io::ErrorKind::PermissionDenied => "permission denied".to_string(),
        std::io::ErrorKind::InvalidData => "not UTF-8 text".to_string(),
        _ => error.to_string(),
    };
    CliError::Source(format!("cannot read manifests from {}: {reason}", path.display()))
}

// ---------------------------------------------------------------------------------------
// Apply and delete results, problems

/// `tenant/research created`, `modeldeployment/research/qwen-7b configured (dry run)`, one
/// line per object.
fn applied_text(items: &[AppliedObject], dry_run: bool) -> String {
    items
        .iter()
        .map(|item| {
            format!(
                "{} {}{}\n",
                object_ref(&item.kind, item.namespace.as_deref(), &item.name),
                item.action.replace('-', " "),
                if dry_run { " (dry run)" } else { "" }
            )
        })
        .collect()
}

/// `kind/name` or `kind/namespace/name`, the kind in lower case.
fn object_ref(kind: &str, namespace: Option<&str>, name: &str) -> String {
    let kind = kind.to_ascii_lowercase();
    match namespace.filter(|n| !n.is_empty()) {
        Some(namespace) => format!("{kind}/{namespace}/{name}"),
        None => format!("{kind}/{name}"),
    }
}

/// `FILE: document N (Kind ns/name): path: reason`, leaving out what is not known.
pub(super) fn problem_line(problem: &ProblemView) -> String {
    let mut line = String::new();
    if let Some(source) = &problem.source {
        line.push_str(&format!("{source}: "));
    }
    line.push_str(&format!("document {}", problem.document));
    let object = match (&problem.namespace, &problem.name) {
        (Some(namespace), Some(name)) => Some(format!("{namespace}/{name}")),
        (None, Some(name)) => Some(name.clone()),
        (_, None) => None,
    };
    match (&problem.kind, object) {
        (Some(kind), Some(object)) => line.push_str(&format!(" ({kind} {object})")),
        (Some(kind), None) => line.push_str(&format!(" ({kind})")),
        (None, Some(object)) => line.push_str(&format!(" ({object})")),
        (None, None) => {}
    }
    if !problem.path.is_empty() {
        line.push_str(&format!(": {}", problem.path));
    }
    line.push_str(&format!(": {}", problem.reason));
    line
}

/// The text of [`CliError::Invalid`]: one problem a line, then the first line of the
/// server's message as a summary (the server repeats the problems below it); `run` prints
/// `error: ` before it, and the lines are joined with `\nerror: ` so each gets its own.
pub(super) fn invalid_text(message: &str, problems: &[ProblemView]) -> String {
    let mut lines: Vec<String> = problems.iter().map(problem_line).collect();
    let summary = message.lines().next().unwrap_or_default().trim().trim_end_matches(':');
    if !summary.is_empty() {
        lines.push(summary.to_string());
    }
    lines.join("\nerror: ")
}

// ---------------------------------------------------------------------------------------
// Reading specs (manifest spelling, as JSON)

/// The value at a JSON pointer into a spec, unless absent or null.
fn at<'a>(spec: &'a Value, pointer: &str) -> Option<&'a Value> {
    spec.pointer(pointer).filter(|v| !v.is_null())
}

/// A spec value as a table cell: strings bare, numbers short (`2`, not `2.0`), lists
/// joined with `,`, `-` for nothing.
fn scalar(value: Option<&Value>) -> String {
    match value {
        None | Some(Value::Null) => "-".to_string(),
        Some(Value::String(text)) => text.clone(),
        Some(Value::Number(number)) if number.is_f64() => number.as_f64().map_or_else(|| number.to_string(), fmt_num),
        Some(Value::Array(items)) if items.is_empty() => "-".to_string(),
        Some(Value::Array(items)) => items
            .iter()
            .map(|item| scalar(Some(item)))
            .collect::<Vec<_>>()
            .join(","),
        Some(other) => other.to_string(),
    }
}

/// `2`, `0.55`: the shortest form that round-trips.
fn fmt_num(value: f64) -> String {
    format!("{value}")
}

/// GPU amounts: two decimals.
fn gpus(value: f64) -> String {
    format!("{value:.2}")
}

fn opt_gpus(value: Option<f64>) -> String {
    value.map_or_else(|| "-".to_string(), gpus)
}

/// `4.00` for `{gpus: 4}`; `A100-80GB: 2, MI300X-192GB: 1 (= 2.20)` for a per-class quota,
/// with its normalised total; `None` when the spec has none.
fn quota_text(quota: Option<&Value>, normalised: Option<f64>) -> Option<String> {
    let quota = quota?.as_object()?;
    let total = normalised.map(gpus).unwrap_or_else(|| "-".to_string());
    if quota.contains_key("gpus") {
        return Some(format!("{total} normalised GPUs"));
    }
    let classes = quota
        .iter()
        .map(|(class, count)| format!("{class}: {}", scalar(Some(count))))
        .collect::<Vec<_>>()
        .join(", ");
    Some(format!("{classes} (= {total} normalised GPUs)"))
}

// ---------------------------------------------------------------------------------------
// Tables

/// Age of an object from its RFC 3339 creation time: `3m12s`; `-` when unreadable.
fn age(created: &str, now: SystemTime) -> String {
    match humantime::parse_rfc3339(created) {
        Ok(time) => human_duration(now.duration_since(time).map(|d| d.as_secs()).unwrap_or(0)),
        Err(_) => "-".to_string(),
    }
}

fn header(columns: &[&str]) -> Vec<String> {
    columns.iter().map(|c| c.to_string()).collect()
}

/// `enforce`, `dry-run`, `dry-run (over limit)`.
fn quota_mode_cell(status: &TenantStatus) -> String {
    if status.over_limit {
        format!("{} (over limit)", status.quota_mode)
    } else {
        status.quota_mode.clone()
    }
}

/// `get tenants`.
pub(super) fn tenants_table(tenants: &[TenantView], wide: bool) -> String {
    let mut columns = vec![
        "NAME",
        "WEIGHT",
        "GUARANTEE",
        "LIMIT",
        "ALLOCATED",
        "FAIR-SHARE",
        "QUOTA-MODE",
        "DEPLOYMENTS",
    ];
    if wide {
        columns.extend(["DEMAND", "CAPACITY", "BAND", "TOKENS/MIN"]);
    }
    let mut rows = vec![header(&columns)];
    for t in tenants {
        let (spec, status) = (&t.spec, &t.status);
        let mut row = vec![
            t.metadata.name.clone(),
            scalar(at(spec, "/weight")),
            if at(spec, "/guarantee").is_some() {
                gpus(status.guarantee_gpus)
            } else {
                "-".to_string()
            },
            opt_gpus(status.limit_gpus),
            gpus(status.allocated_gpus),
            gpus(status.fair_share_gpus),
            quota_mode_cell(status),
            status.deployments.to_string(),
        ];
        if wide {
            row.extend([
                gpus(status.demand_gpus),
                gpus(status.capacity_gpus),
                scalar(at(spec, "/latencyBand")),
                scalar(at(spec, "/tokensPerMinute")),
            ]);
        }
        rows.push(row);
    }
    table(rows)
}

/// `get hardwareclasses`.
pub(super) fn hardware_classes_table(classes: &[HardwareClassView], wide: bool) -> String {
    let mut columns = vec![
        "NAME",
        "VENDOR",
        "MODEL",
        "PRICE/GPU-H",
        "CAPACITY",
        "DEVICES",
        "NODES",
        "ALLOCATED",
    ];
    if wide {
        columns.extend(["MIN-MEMORY", "AGE"]);
    }
    let now = SystemTime::now();
    let mut rows = vec![header(&columns)];
    for c in classes {
        let (spec, status) = (&c.spec, &c.status);
        let mut row = vec![
            c.metadata.name.clone(),
            scalar(at(spec, "/match/vendor")),
            scalar(at(spec, "/match/model")),
            at(spec, "/pricePerGpuHour")
                .and_then(Value::as_f64)
                .map_or_else(|| "-".to_string(), |p| format!("{p:.2}")),
            at(spec, "/relativeCapacity")
                .and_then(Value::as_f64)
                .map_or_else(|| "-".to_string(), |p| format!("{p:.2}")),
            status.devices.to_string(),
            status.nodes.to_string(),
            status.allocated.to_string(),
        ];
        if wide {
            row.push(
                at(spec, "/match/minMemoryGiB")
                    .map(|gib| format!("{}GiB", scalar(Some(gib))))
                    .unwrap_or_else(|| "-".to_string()),
            );
            row.push(age(&c.metadata.creation_timestamp, now));
        }
        rows.push(row);
    }
    table(rows)
}

/// `2/1..4`: ready replicas of `min..max` (`1/1` when min and max agree).
fn ready_cell(counts: &ReplicaCounts) -> String {
    if counts.min == counts.max {
        format!("{}/{}", counts.ready, counts.max)
    } else {
        format!("{}/{}..{}", counts.ready, counts.min, counts.max)
    }
}

/// The runtime kinds of a deployment, in preference order: `vllm,llama-cpp`.
fn runtimes_cell(spec: &Value) -> String {
    match at(spec, "/runtimes").and_then(Value::as_array) {
        Some(runtimes) if !runtimes.is_empty() => runtimes
            .iter()
            .map(|r| scalar(at(r, "/kind")))
            .collect::<Vec<_>>()
            .join(","),
        _ => "-".to_string(),
    }
}

/// `Type: message` of the first condition that is not as it should be (`Progressing`
/// aside, every condition should be `True`); `-` when all are well.
fn condition_cell(conditions: &[Condition]) -> String {
    conditions
        .iter()
        .find(|c| c.kind != "Progressing" && c.status != "True")
        .or_else(|| {
            conditions
                .iter()
                .find(|c| c.kind == "Progressing" && c.status == "True")
        })
        .map_or_else(|| "-".to_string(), |c| format!("{}: {}", c.kind, c.message))
}

/// `get deployments`: the TENANT column first when listing every tenant.
pub(super) fn deployments_table(
    deployments: &[DeploymentView],
    show_tenant: bool,
    wide: bool,
    now: SystemTime,
) -> String {
    let mut columns = Vec::new();
    if show_tenant {
        columns.push("TENANT");
    }
    columns.extend([
        "NAME",
        "MODEL",
        "READY",
        "PLACED",
        "PENDING",
        "GPUS/REPLICA",
        "RUNTIMES",
        "AGE",
    ]);
    if wide {
        columns.extend(["VERSION", "CLASSES", "SCALE-POLICY", "CONDITION"]);
    }
    let mut rows = vec![header(&columns)];
    for d in deployments {
        let (spec, status) = (&d.spec, &d.status);
        let mut row = Vec::new();
        if show_tenant {
            row.push(d.metadata.namespace.clone().unwrap_or_else(|| "-".to_string()));
        }
        row.extend([
            d.metadata.name.clone(),
            scalar(at(spec, "/model/name")),
            ready_cell(&status.replicas),
            status.replicas.placed.to_string(),
            status.replicas.pending.to_string(),
            scalar(at(spec, "/resources/gpusPerReplica")),
            runtimes_cell(spec),
            age(&d.metadata.creation_timestamp, now),
        ]);
        if wide {
            let cpu = at(spec, "/resources/gpusPerReplica").and_then(Value::as_u64) == Some(0);
            row.extend([
                scalar(at(spec, "/model/version")),
                match at(spec, "/resources/hardwareClasses") {
                    _ if cpu => "cpu".to_string(),
                    Some(Value::Array(classes)) if !classes.is_empty() => scalar(Some(&Value::Array(classes.clone()))),
                    _ => "any".to_string(),
                },
                scalar(at(spec, "/scalePolicy")),
                condition_cell(&status.conditions),
            ]);
        }
        rows.push(row);
    }
    table(rows)
}

/// `pyxis usage`: a row per tenant and class, a total per tenant with more than one class,
/// and a grand total; the window first.
pub(super) fn usage_table(view: &UsageView) -> String {
    let mut rows = vec![header(&["TENANT", "CLASS", "GPU-HOURS", "PRICE/GPU-H", "COST"])];
    // Tenants in the order the server sorted them, each with its rows.
    let mut tenants: Vec<&str> = Vec::new();
    for row in &view.items {
        if !tenants.contains(&row.tenant.as_str()) {
            tenants.push(&row.tenant);
        }
    }
    let (mut hours, mut cost) = (0.0, 0.0);
    for tenant in tenants {
        let own: Vec<_> = view.items.iter().filter(|r| r.tenant == tenant).collect();
        for r in &own {
            rows.push(vec![
                r.tenant.clone(),
                r.hardware_class.clone(),
                format!("{:.3}", r.gpu_hours),
                format!("{:.2}", r.price_per_gpu_hour),
                format!("{:.2}", r.cost),
            ]);
        }
        let tenant_hours: f64 = own.iter().map(|r| r.gpu_hours).sum();
        let tenant_cost: f64 = own.iter().map(|r| r.cost).sum();
        if own.len() > 1 {
            rows.push(vec![
                tenant.to_string(),
                "(total)".to_string(),
                format!("{tenant_hours:.3}"),
                String::new(),
                format!("{tenant_cost:.2}"),
            ]);
        }
        hours += tenant_hours;
        cost += tenant_cost;
    }
    rows.push(vec![
        "TOTAL".to_string(),
        String::new(),
        format!("{hours:.3}"),
        String::new(),
        format!("{cost:.2}"),
    ]);
    let mut text = format!("From {} to {}\n{}", view.since, view.until, table(rows));
    if !view.tenants.is_empty() {
        let mut rows = vec![header(&[
            "TENANT",
            "CALLS",
            "ERRORS",
            "PROMPT-TOKENS",
            "COMPLETION-TOKENS",
            "GPU-HOURS",
            "COST",
            "COST/1M-TOKENS",
        ])];
        for t in &view.tenants {
            rows.push(vec![
                t.tenant.clone(),
                t.calls.to_string(),
                t.errors.to_string(),
                t.prompt_tokens.to_string(),
                t.completion_tokens.to_string(),
                format!("{:.3}", t.gpu_hours),
                format!("{:.2}", t.cost),
                t.cost_per_million_tokens.map_or("-".to_string(), |c| format!("{c:.2}")),
            ]);
        }
        text.push('\n');
        text.push_str(&table(rows));
    }
    text
}

// ---------------------------------------------------------------------------------------
// describe and explain

/// `Key:` padded to the column `describe node` uses, then the value.
fn field(out: &mut String, key: &str, value: impl Display) {
    out.push_str(&format!("{:<18}{}\n", format!("{key}:"), value));
}

/// Every line of `text` with `prefix` before it.
fn indent(text: &str, prefix: &str) -> String {
    text.lines().map(|line| format!("{prefix}{line}\n")).collect()
}

/// Name, tenant, kind, labels, generation and creation of any object.
fn meta_fields<S>(out: &mut String, object: &ObjectView<S>, observed: Option<u64>, now: SystemTime) {
    let m = &object.metadata;
    field(out, "Name", &m.name);
    if let Some(namespace) = &m.namespace {
        field(out, "Tenant", namespace);
    }
    field(out, "Kind", &object.kind);
    field(
        out,
        "Labels",
        if m.labels.is_empty() {
            "none".to_string()
        } else {
            m.labels
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(", ")
        },
    );
    match observed {
        Some(observed) if observed != m.generation => field(
            out,
            "Generation",
            format!("{} (status is of generation {observed})", m.generation),
        ),
        _ => field(out, "Generation", m.generation),
    }
    field(
        out,
        "Created",
        format!("{} ({} ago)", m.creation_timestamp, age(&m.creation_timestamp, now)),
    );
}

/// `Conditions:` and a TYPE STATUS REASON MESSAGE table, or `none`.
fn conditions_section(conditions: &[Condition]) -> String {
    let mut out = String::from("Conditions:\n");
    if conditions.is_empty() {
        out.push_str("  none\n");
        return out;
    }
    let mut rows = vec![header(&["TYPE", "STATUS", "REASON", "MESSAGE"])];
    for c in conditions {
        rows.push(vec![
            c.kind.clone(),
            c.status.clone(),
            c.reason.clone(),
            c.message.clone(),
        ]);
    }
    out.push_str(&indent(&table(rows), "  "));
    out
}

/// NAME NODE RUNTIME CLASS GPUS PHASE, indented, or `  none`.
fn placements_section(placements: &[PlacedReplica]) -> String {
    if placements.is_empty() {
        return "  none\n".to_string();
    }
    let mut rows = vec![header(&["NAME", "NODE", "RUNTIME", "CLASS", "GPUS", "PHASE"])];
    for p in placements {
        rows.push(vec![
            p.name.clone(),
            p.node.clone(),
            p.runtime.clone(),
            p.hardware_class.clone(),
            p.gpus.len().to_string(),
            p.phase.clone(),
        ]);
    }
    indent(&table(rows), "  ")
}

/// `min 1, max 4: 2 placed, 1 ready, 2 pending, 0 displaced`.
fn counts_text(c: &ReplicaCounts) -> String {
    format!(
        "min {}, max {}: {} placed, {} ready, {} pending, {} displaced",
        c.min, c.max, c.placed, c.ready, c.pending, c.displaced
    )
}

/// The tenant's share against its guarantee, as `describe` and `explain` show it.
fn share_fields(out: &mut String, share: &TenantShareView) {
    field(
        out,
        "Tenant share",
        format!("{} (weight {})", share.tenant, fmt_num(share.weight)),
    );
    field(
        out,
        "  Usage",
        format!(
            "{} of {} guaranteed, limit {} (normalised GPUs)",
            gpus(share.usage),
            gpus(share.guarantee),
            share.limit.map_or_else(|| "none".to_string(), gpus)
        ),
    );
    field(
        out,
        "  Fair share",
        format!(
            "{} of {} fleet capacity; demand {}",
            gpus(share.fair_share),
            gpus(share.capacity),
            gpus(share.demand)
        ),
    );
    let mode = match (share.quota_mode.as_str(), share.over_limit) {
        ("dry-run", true) => "dry-run: over its limit, reported and not refused".to_string(),
        ("dry-run", false) => "dry-run: over-limit use is reported, not refused".to_string(),
        (mode, true) => format!("{mode}: over its limit"),
        (mode, false) => mode.to_string(),
    };
    field(out, "  Quota mode", mode);
}

/// NODE | WHY NOT CHOSEN, one line per reason, the node named on its first; or the line
/// that says nothing is pending.
fn verdicts_section(nodes: &[NodeVerdictView]) -> String {
    if nodes.is_empty() {
        return "nothing pending: every wanted replica is placed\n".to_string();
    }
    let mut rows = vec![header(&["NODE", "WHY NOT CHOSEN"])];
    for verdict in nodes {
        if verdict.reasons.is_empty() {
            rows.push(vec![verdict.node.clone(), "-".to_string()]);
        }
        for (i, reason) in verdict.reasons.iter().enumerate() {
            let node = if i == 0 { verdict.node.clone() } else { String::new() };
            rows.push(vec![node, reason.message.clone()]);
        }
    }
    table(rows)
}

/// `pyxis explain deployment NAME`.
pub(super) fn explain_text(view: &ExplainView) -> String {
    let mut out = String::new();
    field(&mut out, "Deployment", format!("{}/{}", view.tenant, view.deployment));
    field(&mut out, "Evaluated", &view.evaluated_at);
    field(&mut out, "Summary", &view.summary);
    field(&mut out, "Replicas", counts_text(&view.replicas));
    share_fields(&mut out, &view.share);
    out.push_str("Placements:\n");
    out.push_str(&placements_section(&view.placements));
    out.push_str("Pending replicas:\n");
    out.push_str(&indent(&verdicts_section(&view.nodes), "  "));
    out
}

/// `pyxis describe tenant NAME`.
pub(super) fn describe_tenant(detail: &ObjectDetail<TenantStatus>, now: SystemTime) -> String {
    let (object, spec, status) = (&detail.object, &detail.object.spec, &detail.object.status);
    let mut out = String::new();
    meta_fields(&mut out, object, None, now);
    field(&mut out, "Weight", scalar(at(spec, "/weight")));
    field(
        &mut out,
        "Guarantee",
        quota_text(at(spec, "/guarantee"), Some(status.guarantee_gpus)).unwrap_or_else(|| "none".to_string()),
    );
    field(
        &mut out,
        "Limit",
        quota_text(at(spec, "/limit"), status.limit_gpus)
            .unwrap_or_else(|| "none (may borrow whatever is idle)".to_string()),
    );
    field(&mut out, "Latency band", scalar(at(spec, "/latencyBand")));
    field(
        &mut out,
        "Tokens/minute",
        at(spec, "/tokensPerMinute").map_or_else(|| "unlimited".to_string(), |v| scalar(Some(v))),
    );
    let mode = match (status.quota_enforced, status.over_limit) {
        (true, _) => format!("{} (the limit is enforced)", status.quota_mode),
        (false, true) => format!(
            "{} (over-limit use is reported, not refused); OVER ITS LIMIT now",
            status.quota_mode
        ),
        (false, false) => format!("{} (over-limit use is reported, not refused)", status.quota_mode),
    };
    field(&mut out, "Quota mode", mode);
    field(
        &mut out,
        "Allocated",
        format!(
            "{} normalised GPUs on {} devices",
            gpus(status.allocated_gpus),
            status.allocated_devices
        ),
    );
    field(
        &mut out,
        "Fair share",
        format!(
            "{} of {} fleet capacity; demand {}",
            gpus(status.fair_share_gpus),
            gpus(status.capacity_gpus),
            gpus(status.demand_gpus)
        ),
    );
    field(
        &mut out,
        "Deployments",
        format!(
            "{} ({} replicas placed, {} pending)",
            status.deployments, status.replicas_placed, status.replicas_pending
        ),
    );
    out.push_str(&conditions_section(&status.conditions));
    out.push_str(&events_section(&detail.events));
    out
}

/// `vendor nvidia, model /H100.*80GB/, memory >= 180GiB`.
fn match_text(spec: &Value) -> String {
    let mut parts = Vec::new();
    if let Some(vendor) = at(spec, "/match/vendor") {
        parts.push(format!("vendor {}", scalar(Some(vendor))));
    }
    if let Some(model) = at(spec, "/match/model") {
        parts.push(format!("model /{}/", scalar(Some(model))));
    }
    if let Some(gib) = at(spec, "/match/minMemoryGiB") {
        parts.push(format!("memory >= {}GiB", scalar(Some(gib))));
    }
    if parts.is_empty() {
        "any device".to_string()
    } else {
        parts.join(", ")
    }
}

/// `pyxis describe hardwareclass NAME`.
pub(super) fn describe_hardware_class(detail: &ObjectDetail<HardwareClassStatus>, now: SystemTime) -> String {
    let (object, spec, status) = (&detail.object, &detail.object.spec, &detail.object.status);
    let mut out = String::new();
    meta_fields(&mut out, object, None, now);
    field(&mut out, "Match", match_text(spec));
    field(
        &mut out,
        "Price",
        at(spec, "/pricePerGpuHour")
            .and_then(Value::as_f64)
            .map_or_else(|| "-".to_string(), |p| format!("{p:.2} per GPU-hour")),
    );
    field(
        &mut out,
        "Capacity",
        at(spec, "/relativeCapacity")
            .and_then(Value::as_f64)
            .map_or_else(|| "-".to_string(), |c| format!("{c:.2} normalised GPUs per device")),
    );
    field(
        &mut out,
        "Devices",
        format!(
            "{} on {} nodes, {} allocated",
            status.devices, status.nodes, status.allocated
        ),
    );
    out.push_str(&conditions_section(&status.conditions));
    out.push_str(&events_section(&detail.events));
    out
}

/// `Qwen/Qwen2.5-7B-Instruct version 2024-09-19, 15GiB, from /models/qwen2.5-7b`.
fn model_text(spec: &Value) -> String {
    let mut text = format!(
        "{} version {}",
        scalar(at(spec, "/model/name")),
        scalar(at(spec, "/model/version"))
    );
    if let Some(size) = at(spec, "/model/sizeGiB") {
        text.push_str(&format!(", {}GiB", scalar(Some(size))));
    }
    text.push_str(&format!(", from {}", scalar(at(spec, "/model/source"))));
    text
}

/// `vllm (--max-model-len 8192), llama-cpp`; a custom runtime with its command.
fn runtimes_text(spec: &Value) -> String {
    let Some(runtimes) = at(spec, "/runtimes").and_then(Value::as_array) else {
        return "-".to_string();
    };
    runtimes
        .iter()
        .map(|r| {
            let kind = scalar(at(r, "/kind"));
            let words = |pointer: &str| -> Vec<String> {
                at(r, pointer)
                    .and_then(Value::as_array)
                    .map(|items| items.iter().map(|i| scalar(Some(i))).collect())
                    .unwrap_or_default()
            };
            let mut detail = words("/custom/command");
            detail.extend(words("/args"));
            if detail.is_empty() {
                kind
            } else {
                format!("{kind} ({})", detail.join(" "))
            }
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// `1 GPU per replica, 24GiB free each; classes H100-80GB, A100-40GB (preferred H100-80GB)`.
fn resources_text(spec: &Value) -> String {
    let count = at(spec, "/resources/gpusPerReplica").and_then(Value::as_u64);
    if count == Some(0) {
        return "CPU only (gpusPerReplica: 0)".to_string();
    }
    let mut text = match count {
        Some(1) => "1 GPU per replica".to_string(),
        Some(n) => format!("{n} GPUs per replica"),
        None => "- GPUs per replica".to_string(),
    };
    if let Some(memory) = at(spec, "/resources/gpuMemoryGiB") {
        text.push_str(&format!(", {}GiB free each", scalar(Some(memory))));
    }
    let list = |pointer: &str| {
        at(spec, pointer)
            .and_then(Value::as_array)
            .filter(|items| !items.is_empty())
            .map(|items| items.iter().map(|i| scalar(Some(i))).collect::<Vec<_>>().join(", "))
    };
    match list("/resources/hardwareClasses") {
        Some(classes) => text.push_str(&format!("; classes {classes}")),
        None => text.push_str("; any class"),
    }
    if let Some(preferred) = list("/resources/preferredHardwareClasses") {
        text.push_str(&format!(" (preferred {preferred})"));
    }
    text
}

/// `TTFT 800ms, TPOT 60ms`, or `none`.
fn latency_text(spec: &Value) -> String {
    let mut parts = Vec::new();
    if let Some(ttft) = at(spec, "/latencyBudget/ttftMs") {
        parts.push(format!("TTFT {}ms", scalar(Some(ttft))));
    }
    if let Some(tpot) = at(spec, "/latencyBudget/tpotMs") {
        parts.push(format!("TPOT {}ms", scalar(Some(tpot))));
    }
    if parts.is_empty() {
        "none".to_string()
    } else {
        parts.join(", ")
    }
}

/// `pyxis describe deployment NAME`: with the placement decision when the explain call
/// answered, or why not.
pub(super) fn describe_deployment(
    detail: &ObjectDetail<DeploymentStatus>,
    explanation: Result<&ExplainView, &str>,
    now: SystemTime,
) -> String {
    let (object, spec, status) = (&detail.object, &detail.object.spec, &detail.object.status);
    let mut out = String::new();
    meta_fields(&mut out, object, Some(status.observed_generation), now);
    field(&mut out, "Model", model_text(spec));
    field(&mut out, "Runtimes", runtimes_text(spec));
    field(&mut out, "Resources", resources_text(spec));
    field(&mut out, "Replicas", counts_text(&status.replicas));
    field(&mut out, "Latency budget", latency_text(spec));
    field(&mut out, "Scale policy", scalar(at(spec, "/scalePolicy")));
    field(&mut out, "Routing", scalar(at(spec, "/routing")));
    if let Some(timeout) = at(spec, "/readinessTimeout") {
        field(&mut out, "Ready within", scalar(Some(timeout)));
    }
    out.push_str(&conditions_section(&status.conditions));
    out.push_str("Placements:\n");
    out.push_str(&placements_section(&status.placements));
    out.push_str("Placement decision:\n");
    match explanation {
        Ok(view) => {
            let mut section = String::new();
            field(&mut section, "Evaluated", &view.evaluated_at);
            field(&mut section, "Summary", &view.summary);
            share_fields(&mut section, &view.share);
            section.push_str(&verdicts_section(&view.nodes));
            out.push_str(&indent(&section, "  "));
        }
        Err(reason) => out.push_str(&format!("  unavailable: {reason}\n")),
    }
    out.push_str(&events_section(&detail.events));
    out
}

#[cfg(test)]
mod tests {
    use clap::Parser;
    use serde_json::json;

    use super::*;
    use crate::{
        api_types::{EventView, NodeVerdictView, ObjectMetaView, ReasonView, UsageRow},
        cli::{Cli, Command, ExplainKind},
    };

    /// Compares a rendering with its expectation and shows both in full when they differ.
    fn check(actual: &str, expected: &str) {
        assert!(actual == expected, "expected:\n{expected}\nactual:\n{actual}");
    }

    /// Expected output, one line per item (each ends with a newline).
    fn lines(lines: &[&str]) -> String {
        lines.iter().map(|l| format!("{l}\n")).collect()
    }

    /// 2026-11-24T02:00:00Z, the "now" of every test.
    fn now() -> SystemTime {
        humantime::parse_rfc3339("2026-11-24T02:00:00Z").unwrap_or(SystemTime::UNIX_EPOCH)
    }

    fn object<S>(kind: &str, namespace: Option<&str>, name: &str, spec: Value, status: S) -> ObjectView<S> {
        ObjectView {
            api_version: "pyxis.dev/v1alpha1".into(),
            kind: kind.into(),
            metadata: ObjectMetaView {
                name: name.into(),
                namespace: namespace.map(String::from),
                labels: Default::default(),
                generation: 1,
                creation_timestamp: "2026-11-24T01:00:00Z".into(),
            },
            spec,
            status,
        }
    }

    fn condition(kind: &str, status: &str, reason: &str, message: &str) -> Condition {
        Condition {
            kind: kind.into(),
            status: status.into(),
            reason: reason.into(),
            message: message.into(),
            last_transition_time: "2026-11-24T01:00:00Z".into(),
        }
    }

    fn research() -> TenantView {
        let mut t = object(
            "Tenant",
            None,
            "research",
            json!({"weight": 2.0, "guarantee": {"gpus": 4.0}, "limit": {"gpus": 16.0},
                   "latencyBand": "real-time", "tokensPerMinute": 200000, "quotaMode": "enforce"}),
            TenantStatus {
                quota_mode: "enforce".into(),
                quota_enforced: true,
                guarantee_gpus: 4.0,
                limit_gpus: Some(16.0),
                allocated_gpus: 1.0,
                allocated_devices: 1,
                fair_share_gpus: 5.333,
                demand_gpus: 4.0,
                capacity_gpus: 16.0,
                over_limit: false,
                deployments: 2,
                replicas_placed: 1,
                replicas_pending: 3,
                conditions: vec![
                    condition("QuotaEnforced", "True", "Enforce", "quotaMode is enforce"),
                    condition(
                        "GuaranteeMet",
                        "False",
                        "Pending",
                        "holds 1.00 of 4.00 guaranteed with 3 replicas pending",
                    ),
                ],
            },
        );
        t.metadata.labels.insert("cost-center".into(), "cc-1042".into());
        t
    }

    fn product() -> TenantView {
        object(
            "Tenant",
            None,
            "product",
            json!({"weight": 1.0, "guarantee": {"A100-80GB": 2, "MI300X-192GB": 1},
                   "limit": {"A100-40GB": 4, "A100-80GB": 8}, "latencyBand": "bulk", "quotaMode": "dry-run"}),
            TenantStatus {
                quota_mode: "dry-run".into(),
                quota_enforced: false,
                guarantee_gpus: 2.2,
                limit_gpus: Some(6.0),
                allocated_gpus: 6.6,
                allocated_devices: 12,
                fair_share_gpus: 4.5,
                demand_gpus: 7.0,
                capacity_gpus: 16.0,
                over_limit: true,
                deployments: 3,
                replicas_placed: 4,
                replicas_pending: 0,
                conditions: Vec::new(),
            },
        )
    }

    fn idle() -> TenantView {
        object(
            "Tenant",
            None,
            "idle",
            json!({"weight": 0.5, "latencyBand": "batch", "quotaMode": "enforce"}),
            TenantStatus {
                quota_mode: "enforce".into(),
                quota_enforced: true,
                capacity_gpus: 16.0,
                ..TenantStatus::default()
            },
        )
    }

    fn h100() -> HardwareClassView {
        object(
            "HardwareClass",
            None,
            "H100-80GB",
            json!({"match": {"vendor": "nvidia", "model": "H100.*80GB"}, "pricePerGpuHour": 4.1,
                   "relativeCapacity": 1.0}),
            HardwareClassStatus {
                devices: 8,
                nodes: 2,
                allocated: 3,
                conditions: vec![condition("Matched", "True", "DevicesFound", "8 devices on 2 nodes")],
            },
        )
    }

    fn mi300x() -> HardwareClassView {
        object(
            "HardwareClass",
            None,
            "MI300X-192GB",
            json!({"match": {"vendor": "amd", "model": "MI300X", "minMemoryGiB": 180.0},
                   "pricePerGpuHour": 3.6, "relativeCapacity": 1.1}),
            HardwareClassStatus {
                devices: 0,
                nodes: 0,
                allocated: 0,
                conditions: vec![condition(
                    "Matched",
                    "False",
                    "NoDevices",
                    "no device in the fleet matches",
                )],
            },
        )
    }

    fn placed(name: &str, node: &str, runtime: &str, class: &str, gpus: usize, phase: &str) -> PlacedReplica {
        PlacedReplica {
            name: name.into(),
            node: node.into(),
            runtime: runtime.into(),
            hardware_class: class.into(),
            gpus: (0..gpus).map(|i| format!("GPU-{i}")).collect(),
            phase: phase.into(),
        }
    }

    fn counts(min: u32, max: u32, placed: u32, ready: u32, pending: u32) -> ReplicaCounts {
        ReplicaCounts {
            min,
            max,
            placed,
            ready,
            pending,
            displaced: 0,
        }
    }

    fn qwen() -> DeploymentView {
        object(
            "ModelDeployment",
            Some("research"),
            "qwen-7b",
            json!({
                "model": {"name": "Qwen/Qwen2.5-7B-Instruct", "version": "2024-09-19",
                          "source": "/models/qwen2.5-7b", "sizeGiB": 15.0},
                "runtimes": [{"kind": "vllm", "args": ["--max-model-len", "8192"]}, {"kind": "llama-cpp"}],
                "resources": {"gpusPerReplica": 1, "gpuMemoryGiB": 24.0,
                              "hardwareClasses": ["H100-80GB", "A100-40GB"],
                              "preferredHardwareClasses": ["H100-80GB"]},
                "replicas": {"min": 1, "max": 4},
                "latencyBudget": {"ttftMs": 500},
                "scalePolicy": "always-warm",
                "routing": "least-outstanding"
            }),
            DeploymentStatus {
                observed_generation: 1,
                replicas: counts(1, 4, 1, 1, 3),
                placements: vec![placed("qwen-7b-0", "gpu-1", "vllm", "H100-80GB", 1, "Ready")],
                conditions: vec![
                    condition("Available", "True", "MinimumReady", "1 ready, 1 wanted at least"),
                    condition("Placed", "False", "InsufficientCapacity", "3 replicas pending"),
                    condition("Progressing", "False", "Settled", "nothing changing"),
                ],
            },
        )
    }

    fn smollm() -> DeploymentView {
        object(
            "ModelDeployment",
            Some("product"),
            "smollm2-135m",
            json!({
                "model": {"name": "HuggingFaceTB/SmolLM2-135M-Instruct", "version": "q4_1",
                          "source": "/models/SmolLM2-135M-Instruct.Q4_1.gguf"},
                "runtimes": [{"kind": "llama-cpp", "args": ["-c", "2048"]}],
                "resources": {"gpusPerReplica": 0},
                "replicas": {"min": 2, "max": 2},
                "scalePolicy": "always-warm",
                "routing": "least-outstanding",
                "readinessTimeout": "30m"
            }),
            DeploymentStatus {
                observed_generation: 1,
                replicas: counts(2, 2, 2, 2, 0),
                placements: Vec::new(),
                conditions: vec![condition("Available", "True", "MinimumReady", "2 ready")],
            },
        )
    }

    fn share() -> TenantShareView {
        TenantShareView {
            tenant: "research".into(),
            weight: 2.0,
            usage: 1.0,
            demand: 4.0,
            guarantee: 4.0,
            limit: Some(16.0),
            fair_share: 5.333,
            capacity: 16.0,
            quota_mode: "enforce".into(),
            over_limit: false,
        }
    }

    fn reason(code: &str, message: &str) -> ReasonView {
        ReasonView {
            code: code.into(),
            message: message.into(),
        }
    }

    fn explanation(nodes: Vec<NodeVerdictView>) -> ExplainView {
        ExplainView {
            tenant: "research".into(),
            deployment: "qwen-7b".into(),
            evaluated_at: "2026-11-24T01:59:58Z".into(),
            summary: "1 of 4 placed; 3 pending: no node has a free H100-80GB or A100-40GB GPU".into(),
            replicas: counts(1, 4, 1, 1, 3),
            placements: vec![placed("qwen-7b-0", "gpu-1", "vllm", "H100-80GB", 1, "Ready")],
            share: share(),
            nodes,
        }
    }

    fn verdicts() -> Vec<NodeVerdictView> {
        vec![
            NodeVerdictView {
                node: "gpu-1".into(),
                reasons: vec![reason(
                    "insufficient-gpus",
                    "needs 1 free GPU of H100-80GB, A100-40GB; has 0",
                )],
            },
            NodeVerdictView {
                node: "mi300x-1".into(),
                reasons: vec![
                    reason("class-not-allowed", "has MI300X-192GB; allowed: H100-80GB, A100-40GB"),
                    reason("runtime-unsupported", "supports sglang; wants vllm or llama-cpp"),
                ],
            },
        ]
    }

    fn parse(args: &[&str]) -> Result<Command, clap::Error> {
        Cli::try_parse_from(std::iter::once("pyxis").chain(args.iter().copied())).map(|cli| cli.command)
    }

    fn parse_error(args: &[&str]) -> clap::error::ErrorKind {
        match parse(args) {
            Ok(command) => panic!("{args:?} parsed as {command:?}"),
            Err(e) => e.kind(),
        }
    }

    // -----------------------------------------------------------------------------------
    // Parsing

    #[test]
    fn apply_takes_repeated_files_dry_run_and_output() {
        match parse(&[
            "apply",
            "-f",
            "examples/manifests/",
            "-f",
            "-",
            "--dry-run",
            "-o",
            "json",
        ]) {
            Ok(Command::Apply { files, dry_run, output }) => {
                assert_eq!(files, [PathBuf::from("examples/manifests/"), PathBuf::from("-")]);
                assert!(dry_run);
                assert_eq!(output, Output::Json);
            }
            other => panic!("{other:?}"),
        }
        match parse(&["apply", "--filename=t.yaml"]) {
            Ok(Command::Apply { files, dry_run, output }) => {
                assert_eq!(files, [PathBuf::from("t.yaml")]);
                assert!(!dry_run);
                assert_eq!(output, Output::Table);
            }
            other => panic!("{other:?}"),
        }
        use clap::error::ErrorKind;
        assert_eq!(parse_error(&["apply"]), ErrorKind::MissingRequiredArgument);
        assert_eq!(parse_error(&["apply", "-f"]), ErrorKind::InvalidValue);
        assert_eq!(parse_error(&["apply", "-f", "x", "-o", "xml"]), ErrorKind::InvalidValue);
        assert_eq!(parse_error(&["apply", "x.yaml"]), ErrorKind::UnknownArgument);
    }

    #[test]
    fn delete_takes_files_or_kind_and_name() {
        match parse(&["delete", "-f", "a.yaml", "-f", "dir"]) {
            Ok(Command::Delete {
                kind: None,
                name: None,
                files,
                namespace: None,
                dry_run: false,
                ..
            }) => assert_eq!(files, [PathBuf::from("a.yaml"), PathBuf::from("dir")]),
            other => panic!("{other:?}"),
        }
        match parse(&["delete", "md", "qwen-7b", "-n", "research"]) {
            Ok(Command::Delete {
                kind: Some(GetKind::Deployments),
                name: Some(name),
                files,
                namespace: Some(tenant),
                ..
            }) => {
                assert_eq!((name.as_str(), tenant.as_str()), ("qwen-7b", "research"));
                assert!(files.is_empty());
            }
            other => panic!("{other:?}"),
        }
        for (word, kind) in [
            ("node", GetKind::Nodes),
            ("tenant", GetKind::Tenants),
            ("Tenant", GetKind::Tenants),
            ("hc", GetKind::HardwareClasses),
            ("HardwareClass", GetKind::HardwareClasses),
            ("modeldeployment", GetKind::Deployments),
            ("BatchInferenceJob", GetKind::Jobs),
        ] {
            match parse(&["delete", word, "x"]) {
                Ok(Command::Delete { kind: Some(k), .. }) => assert_eq!(k, kind, "{word}"),
                other => panic!("{word}: {other:?}"),
            }
        }
        // Counts and windows that make no sense are usage errors that say why.
        for args in [
            &["audit", "--limit", "0"][..],
            &["audit", "--limit", "-1"],
            &["audit", "--since", "-1h"],
            &["usage", "--since", "-1h"],
        ] {
            assert_eq!(parse_error(args), clap::error::ErrorKind::ValueValidation, "{args:?}");
        }
        // SPEC's `get jobs` is understood, and says the kind is not served yet.
        assert!(matches!(
            parse(&["get", "jobs", "-A"]),
            Ok(Command::Get {
                kind: GetKind::Jobs,
                ..
            })
        ));
        assert!(jobs_not_served().to_string().contains("not served by this version"));
        use clap::error::ErrorKind;
        assert_eq!(parse_error(&["delete"]), ErrorKind::MissingRequiredArgument);
        assert_eq!(parse_error(&["delete", "tenant"]), ErrorKind::MissingRequiredArgument);
        assert_eq!(
            parse_error(&["delete", "tenant", "x", "-f", "a.yaml"]),
            ErrorKind::ArgumentConflict
        );
        assert_eq!(
            parse_error(&["delete", "-f", "a.yaml", "-n", "t"]),
            ErrorKind::ArgumentConflict
        );
        assert_eq!(
            parse_error(&["delete", "tenant", "x", "--dry-run"]),
            ErrorKind::ArgumentConflict
        );
        assert_eq!(parse_error(&["delete", "gadget", "x"]), ErrorKind::InvalidValue);
        assert_eq!(parse_error(&["delete", "tenant", ""]), ErrorKind::ValueValidation);
    }

    #[test]
    fn get_and_describe_know_the_manifest_kinds_by_every_alias() {
        let cases = [
            (&["tenants", "tenant", "tn", "TENANTS"][..], GetKind::Tenants),
            (
                &[
                    "hardwareclasses",
                    "hardwareclass",
                    "hc",
                    "hardware-classes",
                    "HardwareClass",
                ][..],
                GetKind::HardwareClasses,
            ),
            (
                &[
                    "deployments",
                    "deployment",
                    "deploy",
                    "modeldeployment",
                    "modeldeployments",
                    "md",
                    "ModelDeployment",
                ][..],
                GetKind::Deployments,
            ),
        ];
        for (words, expected) in cases {
            for word in words {
                match parse(&["get", word]) {
                    Ok(Command::Get { kind, .. }) => assert_eq!(kind, expected, "get {word}"),
                    other => panic!("get {word}: {other:?}"),
                }
                match parse(&["describe", word, "x", "-n", "research"]) {
                    Ok(Command::Describe { kind, namespace, .. }) => {
                        assert_eq!(kind, expected, "describe {word}");
                        assert_eq!(namespace.as_deref(), Some("research"));
                    }
                    other => panic!("describe {word}: {other:?}"),
                }
            }
        }
        match parse(&["get", "deploy", "-A", "-o", "wide"]) {
            Ok(Command::Get {
                kind: GetKind::Deployments,
                name: None,
                namespace: None,
                all_tenants: true,
                output: Output::Wide,
            }) => {}
            other => panic!("{other:?}"),
        }
        use clap::error::ErrorKind;
        assert_eq!(parse_error(&["describe", "tenant"]), ErrorKind::MissingRequiredArgument);
        assert_eq!(parse_error(&["get", "tenantz"]), ErrorKind::InvalidValue);
    }

    #[test]
    fn explain_takes_a_deployment() {
        for word in ["deployment", "deploy", "md", "Deployments", "modeldeployment"] {
            match parse(&["explain", word, "qwen-7b", "-n", "research", "-o", "yaml"]) {
                Ok(Command::Explain {
                    kind: ExplainKind::Deployment,
                    name,
                    namespace,
                    output: Output::Yaml,
                }) => {
                    assert_eq!(name, "qwen-7b");
                    assert_eq!(namespace.as_deref(), Some("research"));
                }
                other => panic!("{word}: {other:?}"),
            }
        }
        use clap::error::ErrorKind;
        assert_eq!(parse_error(&["explain", "tenant", "x"]), ErrorKind::InvalidValue);
        assert_eq!(
            parse_error(&["explain", "deployment"]),
            ErrorKind::MissingRequiredArgument
        );
        assert_eq!(parse_error(&["explain", "qwen-7b"]), ErrorKind::InvalidValue);
    }

    #[test]
    fn usage_validates_since_at_parse_time() {
        match parse(&["usage"]) {
            Ok(Command::Usage {
                tenant: None,
                since,
                output: Output::Table,
            }) => assert_eq!(since, "24h"),
            other => panic!("{other:?}"),
        }
        match parse(&["usage", "--tenant", "research", "--since", "7d", "-o", "json"]) {
            Ok(Command::Usage {
                tenant: Some(tenant),
                since,
                output: Output::Json,
            }) => assert_eq!((tenant.as_str(), since.as_str()), ("research", "7d")),
            other => panic!("{other:?}"),
        }
        use clap::error::ErrorKind;
        for bad in ["yesterday", "0s", "7", "-1h", ""] {
            let arg = format!("--since={bad}");
            assert_eq!(parse_error(&["usage", &arg]), ErrorKind::ValueValidation, "{bad:?}");
        }
        assert_eq!(parse_error(&["usage", "--tenant", ""]), ErrorKind::ValueValidation);
    }

    #[test]
    fn help_teaches_the_manifest_commands() {
        use clap::CommandFactory;
        let help = Cli::command().render_long_help().to_string();
        for example in [
            "pyxis apply -f examples/manifests/",
            "pyxis get deployments -A",
            "pyxis explain deployment qwen-7b -n research",
            "pyxis usage --since 7d",
        ] {
            assert!(help.contains(example), "{example:?} missing from\n{help}");
        }
        let mut command = Cli::command();
        let get = command
            .find_subcommand_mut("get")
            .map(|c| c.render_long_help().to_string())
            .unwrap_or_default();
        assert!(get.contains("the default for deployments"), "{get}");
    }

    // -----------------------------------------------------------------------------------
    // Sources

    #[test]
    fn a_directory_gives_its_manifest_files_sorted_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str, text: &str| std::fs::write(dir.path().join(name), text).unwrap();
        write("b.yml", "kind: B");
        write("a.yaml", "kind: A");
        write("c.JSON", "{}");
        write("notes.txt", "not a manifest");
        write("README", "no extension");
        write(".hidden.yaml", "editor backup");
        std::fs::create_dir(dir.path().join("sub.yaml")).unwrap();
        std::fs::write(dir.path().join("sub.yaml").join("d.yaml"), "not recursive").unwrap();
        let single = dir.path().join("notes.txt");
        let mut stdin = "kind: FromStdin".as_bytes();
        let sources = collect_sources(&[dir.path().to_path_buf(), PathBuf::from("-"), single], &mut stdin).unwrap();
        let named: Vec<(String, &str)> = sources
            .iter()
            .map(|s| {
                let name = Path::new(&s.name)
                    .strip_prefix(dir.path())
                    .map(|p| p.display().to_string())
                    .unwrap_or_else(|_| s.name.clone());
                (name, s.text.as_str())
            })
            .collect();
        assert_eq!(
            named,
            [
                ("a.yaml".to_string(), "kind: A"),
                ("b.yml".to_string(), "kind: B"),
                ("c.JSON".to_string(), "{}"),
                ("-".to_string(), "kind: FromStdin"),
                // A file named on its own is read whatever its extension.
                ("notes.txt".to_string(), "not a manifest"),
            ]
        );
        // Source names are the paths as given, joined with the file name.
        assert_eq!(sources[0].name, dir.path().join("a.yaml").display().to_string());
    }

    #[test]
    fn unreadable_sources_name_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let message = |files: &[PathBuf]| match collect_sources(files, &mut "".as_bytes()) {
            Err(CliError::Source(message)) => message,
            other => panic!("{other:?}"),
        };
        let missing = dir.path().join("missing.yaml");
        check(
            &message(std::slice::from_ref(&missing)),
            &format!(
                "cannot read manifests from {}: no such file or directory",
                missing.display()
            ),
        );
        let empty = dir.path().join("empty");
        std::fs::create_dir(&empty).unwrap();
        std::fs::write(empty.join("notes.txt"), "x").unwrap();
        check(
            &message(std::slice::from_ref(&empty)),
            &format!(
                "no manifests in directory {}: it has no *.yaml, *.yml or *.json file (subdirectories are not read)",
                empty.display()
            ),
        );
        let binary = dir.path().join("binary.yaml");
        std::fs::write(&binary, [0xff, 0xfe, 0x00]).unwrap();
        check(
            &message(std::slice::from_ref(&binary)),
            &format!("cannot read manifests from {}: not UTF-8 text", binary.display()),
        );
        check(
            &message(&[PathBuf::from("-"), PathBuf::from("-")]),
            "-f - (stdin) is given more than once",
        );
    }

    // -----------------------------------------------------------------------------------
    // Apply results and problems

    fn applied(kind: &str, namespace: Option<&str>, name: &str, action: &str) -> AppliedObject {
        AppliedObject {
            kind: kind.into(),
            namespace: namespace.map(String::from),
            name: name.into(),
            action: action.into(),
            generation: 1,
        }
    }

    #[test]
    fn applied_objects_print_kubectl_style() {
        let items = vec![
            applied("Tenant", None, "research", "created"),
            applied("HardwareClass", None, "H100-80GB", "unchanged"),
            applied("ModelDeployment", Some("research"), "qwen-7b", "configured"),
        ];
        check(
            &applied_text(&items, false),
            &lines(&[
                "tenant/research created",
                "hardwareclass/H100-80GB unchanged",
                "modeldeployment/research/qwen-7b configured",
            ]),
        );
        check(
            &applied_text(&items[2..], true),
            "modeldeployment/research/qwen-7b configured (dry run)\n",
        );
        let deleted = vec![
            applied("ModelDeployment", Some("research"), "qwen-7b", "deleted"),
            applied("Tenant", None, "nobody", "not-found"),
            // A deployment not found in any tenant may come back with an empty namespace.
            applied("ModelDeployment", Some(""), "ghost", "not-found"),
        ];
        check(
            &applied_text(&deleted, false),
            &lines(&[
                "modeldeployment/research/qwen-7b deleted",
                "tenant/nobody not found",
                "modeldeployment/ghost not found",
            ]),
        );
    }

    fn problem(
        source: Option<&str>,
        kind: Option<&str>,
        namespace: Option<&str>,
        name: Option<&str>,
        path: &str,
    ) -> ProblemView {
        ProblemView {
            source: source.map(String::from),
            document: 2,
            kind: kind.map(String::from),
            namespace: namespace.map(String::from),
            name: name.map(String::from),
            path: path.into(),
            reason: "must be at least 1".into(),
        }
    }

    #[test]
    fn problems_name_file_document_object_and_path() {
        let cases = [
            (
                problem(
                    Some("research.yaml"),
                    Some("ModelDeployment"),
                    Some("research"),
                    Some("qwen-7b"),
                    "spec.replicas.max",
                ),
                "research.yaml: document 2 (ModelDeployment research/qwen-7b): spec.replicas.max: must be at least 1",
            ),
            (
                problem(
                    Some("tenants.yaml"),
                    Some("Tenant"),
                    None,
                    Some("research"),
                    "spec.weight",
                ),
                "tenants.yaml: document 2 (Tenant research): spec.weight: must be at least 1",
            ),
            (
                problem(Some("-"), Some("Tenant"), None, None, ""),
                "-: document 2 (Tenant): must be at least 1",
            ),
            (
                problem(None, None, None, None, "kind"),
                "document 2: kind: must be at least 1",
            ),
        ];
        for (p, expected) in &cases {
            check(&problem_line(p), expected);
        }
        let error = CliError::Invalid {
            message: "2 problem(s) in the manifests; nothing was applied:\n  research.yaml: document 2 ...".into(),
            problems: vec![cases[0].0.clone(), cases[3].0.clone()],
        };
        check(
            &format!("error: {error}\n"),
            &lines(&[
                "error: research.yaml: document 2 (ModelDeployment research/qwen-7b): spec.replicas.max: must be at least 1",
                "error: document 2: kind: must be at least 1",
                "error: 2 problem(s) in the manifests; nothing was applied",
            ]),
        );
    }

    // -----------------------------------------------------------------------------------
    // Tables

    #[test]
    fn tenants_table_shows_normalised_gpus_with_two_decimals() {
        let tenants = [research(), product(), idle()];
        check(
            &tenants_table(&tenants, false),
            &lines(&[
                "NAME       WEIGHT   GUARANTEE   LIMIT   ALLOCATED   FAIR-SHARE   QUOTA-MODE             DEPLOYMENTS",
                "research   2        4.00        16.00   1.00        5.33         enforce                2",
                "product    1        2.20        6.00    6.60        4.50         dry-run (over limit)   3",
                "idle       0.5      -           -       0.00        0.00         enforce                0",
            ]),
        );
        let wide = tenants_table(&tenants, true);
        let rows: Vec<Vec<&str>> = wide.lines().map(|l| l.split_whitespace().collect()).collect();
        assert_eq!(rows[0][8..], ["DEMAND", "CAPACITY", "BAND", "TOKENS/MIN"]);
        assert_eq!(rows[1][8..], ["4.00", "16.00", "real-time", "200000"]);
        assert_eq!(rows[3][8..], ["0.00", "16.00", "batch", "-"]);
    }

    #[test]
    fn hardware_classes_table_shows_match_price_and_devices() {
        check(
            &hardware_classes_table(&[h100(), mi300x()], false),
            &lines(&[
                "NAME           VENDOR   MODEL        PRICE/GPU-H   CAPACITY   DEVICES   NODES   ALLOCATED",
                "H100-80GB      nvidia   H100.*80GB   4.10          1.00       8         2       3",
                "MI300X-192GB   amd      MI300X       3.60          1.10       0         0       0",
            ]),
        );
        let wide = hardware_classes_table(&[mi300x()], true);
        let header: Vec<&str> = wide.lines().next().unwrap_or_default().split_whitespace().collect();
        assert_eq!(header[8..], ["MIN-MEMORY", "AGE"]);
        assert!(wide.lines().nth(1).unwrap_or_default().contains("180GiB"), "{wide}");
    }

    #[test]
    fn deployments_table_puts_the_tenant_first_across_tenants() {
        let all = deployments_table(&[qwen(), smollm()], true, false, now());
        check(
            &all,
            &lines(&[
                "TENANT     NAME           MODEL                                 READY    PLACED   PENDING   GPUS/REPLICA   RUNTIMES         AGE",
                "research   qwen-7b        Qwen/Qwen2.5-7B-Instruct              1/1..4   1        3         1              vllm,llama-cpp   1h0m",
                "product    smollm2-135m   HuggingFaceTB/SmolLM2-135M-Instruct   2/2      2        0         0              llama-cpp        1h0m",
            ]),
        );
        let one_tenant = deployments_table(&[qwen()], false, false, now());
        assert!(one_tenant.starts_with("NAME      MODEL"), "{one_tenant}");
        let wide = deployments_table(&[qwen(), smollm()], false, true, now());
        let at = |column: &str| wide.lines().next().and_then(|l| l.find(column)).unwrap_or(0);
        let cells: Vec<String> = wide
            .lines()
            .skip(1)
            .map(|l| {
                l[at("VERSION")..]
                    .split("   ")
                    .filter(|c| !c.is_empty())
                    .map(|c| c.trim().to_string())
                    .collect::<Vec<_>>()
                    .join(" | ")
            })
            .collect();
        assert_eq!(
            cells,
            [
                "2024-09-19 | H100-80GB,A100-40GB | always-warm | Placed: 3 replicas pending",
                "q4_1 | cpu | always-warm | -",
            ]
        );
    }

    #[test]
    fn usage_table_totals_per_tenant_and_overall() {
        let row = |tenant: &str, class: &str, hours: f64, price: f64| UsageRow {
            tenant: tenant.into(),
            hardware_class: class.into(),
            gpu_seconds: hours * 3600.0,
            gpu_hours: hours,
            price_per_gpu_hour: price,
            cost: hours * price,
        };
        let view = UsageView {
            since: "2026-11-23T02:00:00Z".into(),
            until: "2026-11-24T02:00:00Z".into(),
            items: vec![
                row("product", "A100-80GB", 10.0, 2.2),
                row("product", "TPU-v5e", 4.5, 1.2),
                row("research", "H100-80GB", 24.0, 4.1),
            ],
            tenants: Vec::new(),
        };
        check(
            &usage_table(&view),
            &lines(&[
                "From 2026-11-23T02:00:00Z to 2026-11-24T02:00:00Z",
                "TENANT     CLASS       GPU-HOURS   PRICE/GPU-H   COST",
                "product    A100-80GB   10.000      2.20          22.00",
                "product    TPU-v5e     4.500       1.20          5.40",
                "product    (total)     14.500                    27.40",
                "research   H100-80GB   24.000      4.10          98.40",
                "TOTAL                  38.500                    125.80",
            ]),
        );
    }

    // -----------------------------------------------------------------------------------
    // describe and explain

    fn event(reason: &str, message: &str) -> EventView {
        EventView {
            time: "2026-11-24T01:00:00Z".into(),
            kind: "Normal".into(),
            reason: reason.into(),
            message: message.into(),
        }
    }

    #[test]
    fn describe_tenant_shows_spec_share_conditions_and_events() {
        let detail = ObjectDetail {
            object: research(),
            events: vec![event("Created", "applied, generation 1")],
        };
        check(
            &describe_tenant(&detail, now()),
            &lines(&[
                "Name:             research",
                "Kind:             Tenant",
                "Labels:           cost-center=cc-1042",
                "Generation:       1",
                "Created:          2026-11-24T01:00:00Z (1h0m ago)",
                "Weight:           2",
                "Guarantee:        4.00 normalised GPUs",
                "Limit:            16.00 normalised GPUs",
                "Latency band:     real-time",
                "Tokens/minute:    200000",
                "Quota mode:       enforce (the limit is enforced)",
                "Allocated:        1.00 normalised GPUs on 1 devices",
                "Fair share:       5.33 of 16.00 fleet capacity; demand 4.00",
                "Deployments:      2 (1 replicas placed, 3 pending)",
                "Conditions:",
                "  TYPE            STATUS   REASON    MESSAGE",
                "  QuotaEnforced   True     Enforce   quotaMode is enforce",
                "  GuaranteeMet    False    Pending   holds 1.00 of 4.00 guaranteed with 3 replicas pending",
                "Events:",
                "  TIME                   TYPE     REASON    MESSAGE",
                "  2026-11-24T01:00:00Z   Normal   Created   applied, generation 1",
            ]),
        );
        let product = describe_tenant(
            &ObjectDetail {
                object: product(),
                events: Vec::new(),
            },
            now(),
        );
        for expected in [
            "Guarantee:        A100-80GB: 2, MI300X-192GB: 1 (= 2.20 normalised GPUs)\n",
            "Limit:            A100-40GB: 4, A100-80GB: 8 (= 6.00 normalised GPUs)\n",
            "Tokens/minute:    unlimited\n",
            "Quota mode:       dry-run (over-limit use is reported, not refused); OVER ITS LIMIT now\n",
            "Conditions:\n  none\nEvents:\n  none\n",
        ] {
            assert!(product.contains(expected), "{expected:?} missing from\n{product}");
        }
        let idle = describe_tenant(
            &ObjectDetail {
                object: idle(),
                events: Vec::new(),
            },
            now(),
        );
        assert!(idle.contains("Guarantee:        none\n"), "{idle}");
        assert!(
            idle.contains("Limit:            none (may borrow whatever is idle)\n"),
            "{idle}"
        );
    }

    #[test]
    fn describe_hardware_class_shows_match_price_and_devices() {
        let detail = ObjectDetail {
            object: mi300x(),
            events: Vec::new(),
        };
        check(
            &describe_hardware_class(&detail, now()),
            &lines(&[
                "Name:             MI300X-192GB",
                "Kind:             HardwareClass",
                "Labels:           none",
                "Generation:       1",
                "Created:          2026-11-24T01:00:00Z (1h0m ago)",
                "Match:            vendor amd, model /MI300X/, memory >= 180GiB",
                "Price:            3.60 per GPU-hour",
                "Capacity:         1.10 normalised GPUs per device",
                "Devices:          0 on 0 nodes, 0 allocated",
                "Conditions:",
                "  TYPE      STATUS   REASON      MESSAGE",
                "  Matched   False    NoDevices   no device in the fleet matches",
                "Events:",
                "  none",
            ]),
        );
    }

    #[test]
    fn describe_deployment_shows_placements_and_why_the_rest_are_pending() {
        let mut object = qwen();
        object.metadata.generation = 2;
        let detail = ObjectDetail {
            object,
            events: vec![event("ReplicaPlaced", "qwen-7b-0 on gpu-1")],
        };
        let view = explanation(verdicts());
        check(
            &describe_deployment(&detail, Ok(&view), now()),
            &lines(&[
                "Name:             qwen-7b",
                "Tenant:           research",
                "Kind:             ModelDeployment",
                "Labels:           none",
                "Generation:       2 (status is of generation 1)",
                "Created:          2026-11-24T01:00:00Z (1h0m ago)",
                "Model:            Qwen/Qwen2.5-7B-Instruct version 2024-09-19, 15GiB, from /models/qwen2.5-7b",
                "Runtimes:         vllm (--max-model-len 8192), llama-cpp",
                "Resources:        1 GPU per replica, 24GiB free each; classes H100-80GB, A100-40GB (preferred H100-80GB)",
                "Replicas:         min 1, max 4: 1 placed, 1 ready, 3 pending, 0 displaced",
                "Latency budget:   TTFT 500ms",
                "Scale policy:     always-warm",
                "Routing:          least-outstanding",
                "Conditions:",
                "  TYPE          STATUS   REASON                 MESSAGE",
                "  Available     True     MinimumReady           1 ready, 1 wanted at least",
                "  Placed        False    InsufficientCapacity   3 replicas pending",
                "  Progressing   False    Settled                nothing changing",
                "Placements:",
                "  NAME        NODE    RUNTIME   CLASS       GPUS   PHASE",
                "  qwen-7b-0   gpu-1   vllm      H100-80GB   1      Ready",
                "Placement decision:",
                "  Evaluated:        2026-11-24T01:59:58Z",
                "  Summary:          1 of 4 placed; 3 pending: no node has a free H100-80GB or A100-40GB GPU",
                "  Tenant share:     research (weight 2)",
                "    Usage:          1.00 of 4.00 guaranteed, limit 16.00 (normalised GPUs)",
                "    Fair share:     5.33 of 16.00 fleet capacity; demand 4.00",
                "    Quota mode:     enforce",
                "  NODE       WHY NOT CHOSEN",
                "  gpu-1      needs 1 free GPU of H100-80GB, A100-40GB; has 0",
                "  mi300x-1   has MI300X-192GB; allowed: H100-80GB, A100-40GB",
                "             supports sglang; wants vllm or llama-cpp",
                "Events:",
                "  TIME                   TYPE     REASON          MESSAGE",
                "  2026-11-24T01:00:00Z   Normal   ReplicaPlaced   qwen-7b-0 on gpu-1",
            ]),
        );
        // A CPU deployment with a readiness timeout and nothing placed; the explain call failed.
        let cpu = describe_deployment(
            &ObjectDetail {
                object: smollm(),
                events: Vec::new(),
            },
            Err("deployment product/smollm2-135m has not been through a placement pass yet"),
            now(),
        );
        for expected in [
            "Runtimes:         llama-cpp (-c 2048)\n",
            "Resources:        CPU only (gpusPerReplica: 0)\n",
            "Latency budget:   none\n",
            "Ready within:     30m\n",
            "Placements:\n  none\nPlacement decision:\n  unavailable: deployment product/smollm2-135m has not been through a placement pass yet\nEvents:\n  none\n",
        ] {
            assert!(cpu.contains(expected), "{expected:?} missing from\n{cpu}");
        }
    }

    #[test]
    fn describe_shows_a_custom_runtime_with_its_command() {
        let spec = json!({"runtimes": [{"kind": "custom", "custom": {"command": ["tei", "--port", "{port}"]},
                                        "env": {"A": "1"}}]});
        check(&runtimes_text(&spec), "custom (tei --port {port})");
    }

    #[test]
    fn explain_lists_every_node_and_why_or_says_nothing_is_pending() {
        check(
            &explain_text(&explanation(verdicts())),
            &lines(&[
                "Deployment:       research/qwen-7b",
                "Evaluated:        2026-11-24T01:59:58Z",
                "Summary:          1 of 4 placed; 3 pending: no node has a free H100-80GB or A100-40GB GPU",
                "Replicas:         min 1, max 4: 1 placed, 1 ready, 3 pending, 0 displaced",
                "Tenant share:     research (weight 2)",
                "  Usage:          1.00 of 4.00 guaranteed, limit 16.00 (normalised GPUs)",
                "  Fair share:     5.33 of 16.00 fleet capacity; demand 4.00",
                "  Quota mode:     enforce",
                "Placements:",
                "  NAME        NODE    RUNTIME   CLASS       GPUS   PHASE",
                "  qwen-7b-0   gpu-1   vllm      H100-80GB   1      Ready",
                "Pending replicas:",
                "  NODE       WHY NOT CHOSEN",
                "  gpu-1      needs 1 free GPU of H100-80GB, A100-40GB; has 0",
                "  mi300x-1   has MI300X-192GB; allowed: H100-80GB, A100-40GB",
                "             supports sglang; wants vllm or llama-cpp",
            ]),
        );
        let mut settled = explanation(Vec::new());
        settled.share = TenantShareView {
            limit: None,
            quota_mode: "dry-run".into(),
            over_limit: true,
            ..share()
        };
        let text = explain_text(&settled);
        for expected in [
            "  Usage:          1.00 of 4.00 guaranteed, limit none (normalised GPUs)\n",
            "  Quota mode:     dry-run: over its limit, reported and not refused\n",
            "Pending replicas:\n  nothing pending: every wanted replica is placed\n",
        ] {
            assert!(text.contains(expected), "{expected:?} missing from\n{text}");
        }
    }

    #[test]
    fn object_paths_and_queries_are_encoded() {
        assert_eq!(
            object_path(GetKind::Deployments, "qwen-7b", Some("re search")).ok(),
            Some("/api/v1/deployments/qwen-7b?namespace=re%20search".to_string())
        );
        // Cluster-wide kinds ignore -n.
        assert_eq!(
            object_path(GetKind::HardwareClasses, "H100-80GB", Some("x")).ok(),
            Some("/api/v1/hardwareclasses/H100-80GB".to_string())
        );
        assert_eq!(explain_path("qwen-7b", None), "/api/v1/deployments/qwen-7b/explain");
        assert_eq!(query(&[("tenant", None), ("since", Some("1h 30m"))]), "?since=1h%2030m");
        assert!(object_path(GetKind::Nodes, "n", None).is_err());
    }

    #[test]
    fn ages_read_creation_times() {
        assert_eq!(age("2026-11-24T01:58:30Z", now()), "1m30s");
        assert_eq!(age("2026-11-22T00:00:00Z", now()), "2d2h");
        // Clocks disagree: a creation time in the future reads as just created.
        assert_eq!(age("2026-11-24T03:00:00Z", now()), "0s");
        assert_eq!(age("yesterday", now()), "-");
    }
}
