//! Admin API for applied objects: `apply`, `delete`, list/get/delete of tenants, hardware
//! classes and model deployments, `explain` and `usage` (docs/api.md).
//!
//! Applies and deletes hold [`Shared::apply_lock`] from planning to commit, write every
//! row in one store transaction, and only then change the in-memory catalog and wake the
//! reconciler: a request is applied whole or not at all, and a crash in between loses
//! nothing the store acknowledged.

use std::{collections::BTreeSet, sync::Arc, time::Instant};

use axum::{
    body::Bytes,
    extract::{rejection::PathRejection, rejection::QueryRejection, Path, Query, State},
    http::{header, HeaderMap, StatusCode},
    routing::{get, post},
    Json, Router,
};
use serde::Deserialize;

use crate::{
    api::{path_error, ApiError},
    api_types::ObjectView,
    api_types::{
        ApplyRequest, ApplyResponse, DeploymentView, EventView, ExplainView, HardwareClassView, List, ObjectDetail,
        ProblemView, TenantView, UsageView,
    },
    manifest::Kind,
    objects::{object_ref, parse_sources, Catalog, Plan, Target},
    reconciler::PlacementState,
    server::Shared,
    time::{now_ms, rfc3339_ms},
    views,
};

/// The routes (merged into the admin router, behind the admin token).
pub fn routes() -> Router<Arc<Shared>> {
    Router::new()
        .route("/api/v1/apply", post(apply))
        .route("/api/v1/delete", post(delete_manifests))
        .route("/api/v1/tenants", get(list_tenants))
        .route("/api/v1/tenants/{name}", get(get_tenant).delete(delete_tenant))
        .route("/api/v1/hardwareclasses", get(list_classes))
        .route("/api/v1/hardwareclasses/{name}", get(get_class).delete(delete_class))
        .route("/api/v1/deployments", get(list_deployments))
        .route(
            "/api/v1/deployments/{name}",
            get(get_deployment).delete(delete_deployment),
        )
        .route("/api/v1/deployments/{name}/explain", get(explain))
        .route("/api/v1/usage", get(usage))
        .route("/api/v1/apikeys", post(create_api_key).get(list_api_keys))
        .route("/api/v1/apikeys/{id}", axum::routing::delete(revoke_api_key))
        .route("/api/v1/audit", get(audit_records))
        .route("/api/v1/audit/verify", post(audit_verify))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AuditQuery {
    tenant: Option<String>,
    model: Option<String>,
    since: Option<String>,
    limit: Option<usize>,
}

fn audit_path(shared: &Shared) -> std::path::PathBuf {
    shared.config.data_dir.join("audit.db")
}

/// `GET /api/v1/audit?tenant=&model=&since=1h&limit=100`: records, newest first.
async fn audit_records(
    State(shared): State<Arc<Shared>>,
    query: Result<Query<AuditQuery>, QueryRejection>,
) -> Result<Json<crate::api_types::AuditList>, ApiError> {
    let Query(query) = query.map_err(query_error)?;
    let since_ms = match &query.since {
        Some(text) => {
            let d = humantime::parse_duration(text)
                .map_err(|e| bad_request(format!("since={text:?} is not a duration like 1h or 7d ({e})")))?;
            Some(now_ms().saturating_sub(i64::try_from(d.as_millis()).unwrap_or(i64::MAX)))
        }
        None => None,
    };
    let filter = crate::audit::AuditFilter {
        tenant: query.tenant,
        model: query.model,
        since_ms,
        limit: Some(query.limit.unwrap_or(100).min(100_000)),
    };
    let path = audit_path(&shared);
    let items = tokio::task::spawn_blocking(move || match crate::audit::query(&path, &filter) {
        Err(crate::audit::AuditError::Missing(_)) => Ok(Vec::new()),
        other => other,
    })
    .await
    .map_err(ApiError::internal)?
    .map_err(ApiError::internal)?;
    Ok(Json(crate::api_types::AuditList { items }))
}

/// `POST /api/v1/audit/verify`: recomputes the whole chain and checks it against the
/// anchor kept in the main store.
async fn audit_verify(State(shared): State<Arc<Shared>>) -> Result<Json<crate::api_types::AuditVerifyView>, ApiError> {
    // Records accepted so far are written first, so that the anchor and the file agree.
    let gateway = shared.gateway();
    let reader = shared.clone();
    let (report, anchor) = tokio::task::spawn_blocking(move || {
        if let Some(audit) = gateway.as_ref().and_then(|g| g.audit.as_ref()) {
            let _ = audit.flush(std::time::Duration::from_secs(5));
        }
        let stored: Option<crate::audit::Anchor> = reader
            .store
            .meta(crate::server::AUDIT_ANCHOR_META)
            .ok()
            .flatten()
            .and_then(|t| serde_json::from_str(&t).ok());
        // The live head is newer than the stored anchor when records were written since.
        let live = gateway.as_ref().and_then(|g| g.audit.as_ref()).map(|a| a.head());
        let anchor = match (stored, live) {
            (Some(s), Some(l)) if l.seq >= s.seq => Some(l),
            (Some(s), _) => Some(s),
            (None, l) => l.filter(|a| a.seq > 0),
        };
        let path = audit_path(&reader);
        let report = match &anchor {
            Some(a) => crate::audit::verify_anchored(&path, a),
            None => crate::audit::verify(&path),
        };
        (report, anchor)
    })
    .await
    .map_err(ApiError::internal)?;
    let report = match report {
        Ok(r) => r,
        Err(crate::audit::AuditError::Missing(_)) => crate::audit::VerifyReport::default(),
        Err(e) => return Err(ApiError::internal(e)),
    };
    Ok(Json(crate::api_types::AuditVerifyView {
        ok: report.ok(),
        records: report.records,
        last_seq: report.last_seq,
        anchor_seq: anchor.map(|a| a.seq),
        problems: report
            .problems
            .iter()
            .map(|p| crate::api_types::AuditProblemView {
                seq: p.seq,
                kind: serde_json::to_value(p.kind)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_string))
                    .unwrap_or_default(),
                detail: p.detail.clone(),
            })
            .collect(),
    }))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ApplyQuery {
    #[serde(default)]
    dry_run: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NamespaceQuery {
    namespace: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct UsageQuery {
    tenant: Option<String>,
    since: Option<String>,
}

fn bad_request(message: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, "bad_request", message)
}

fn query_error(rejection: QueryRejection) -> ApiError {
    bad_request(format!("invalid query: {}", rejection.body_text()))
}

fn not_found(message: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "not_found", message)
}

fn invalid(problems: Vec<ProblemView>) -> ApiError {
    let mut message = format!("{} problem(s) in the manifests; nothing was applied:", problems.len());
    for p in &problems {
        message.push_str("\n  ");
        if let Some(source) = &p.source {
            message.push_str(&format!("{source}: "));
        }
        message.push_str(&format!("document {}", p.document));
        match (&p.kind, &p.namespace, &p.name) {
            (Some(kind), Some(ns), Some(name)) => message.push_str(&format!(" ({kind} {ns}/{name})")),
            (Some(kind), None, Some(name)) => message.push_str(&format!(" ({kind} {name})")),
            _ => {}
        }
        if !p.path.is_empty() {
            message.push_str(&format!(": {}", p.path));
        }
        message.push_str(&format!(": {}", p.reason));
    }
    let mut error = ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_manifest", message);
    error.problems = problems;
    error
}

/// Manifest texts with the name of where each came from.
type Sources = Vec<(Option<String>, String)>;

/// The request's manifest sources: a JSON [`ApplyRequest`], or the body as one text.
fn sources(headers: &HeaderMap, body: &Bytes, dry_run_query: bool) -> Result<(Sources, bool), ApiError> {
    let json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim_start().starts_with("application/json"));
    if json {
        let request: ApplyRequest = serde_json::from_slice(body).map_err(|e| {
            bad_request(format!(
                "invalid apply request (want {{\"sources\": [{{\"name\", \"text\"}}], \"dry_run\"}}): {e}"
            ))
        })?;
        if request.sources.is_empty() {
            return Err(bad_request("the request has no sources"));
        }
        let sources = request.sources.into_iter().map(|s| (Some(s.name), s.text)).collect();
        return Ok((sources, request.dry_run || dry_run_query));
    }
    let text = std::str::from_utf8(body).map_err(|e| bad_request(format!("the manifest text is not UTF-8: {e}")))?;
    Ok((vec![(None, text.to_string())], dry_run_query))
}

async fn commit(shared: &Arc<Shared>, plan: Plan, verb: &str) -> Result<(), ApiError> {
    if plan.is_noop() {
        return Ok(());
    }
    let writer = shared.clone();
    let rows = plan.rows.clone();
    let deletes = plan.deletes.clone();
    tokio::task::spawn_blocking(move || writer.store.write_objects(&rows, &deletes))
        .await
        .map_err(ApiError::internal)?
        .map_err(ApiError::internal)?;
    for item in plan
        .items
        .iter()
        .filter(|i| i.action != "unchanged" && i.action != "not-found")
    {
        let Some(kind) = Kind::parse(&item.kind) else {
            continue;
        };
        let object = object_ref(kind, item.namespace.as_deref(), &item.name);
        let (reason, message) = match item.action.as_str() {
            "created" => ("Created", format!("{verb}: created (generation 1)")),
            "configured" => (
                "Configured",
                format!("{verb}: spec changed (generation {})", item.generation),
            ),
            _ => ("Deleted", format!("{verb}: deleted")),
        };
        tracing::info!(object = %object, action = %item.action, generation = item.generation, "{verb}");
        shared.event(&object, "Normal", reason, &message);
    }
    {
        // A deleted object's conditions start afresh if it is created again.
        let deleted: Vec<String> = plan
            .deletes
            .iter()
            .filter_map(|(kind, namespace, name)| {
                let namespace = (!namespace.is_empty()).then_some(namespace.as_str());
                Kind::parse(kind).map(|k| object_ref(k, namespace, name))
            })
            .collect();
        if !deleted.is_empty() {
            shared
                .placement_state()
                .transitions
                .retain(|(object, _), _| !deleted.contains(object));
        }
        // The store revoked a deleted tenant's keys; the gateway's cache forgets them now.
        if let Some(gateway) = shared.gateway() {
            for (kind, _, name) in &plan.deletes {
                if kind == Kind::Tenant.as_str() {
                    gateway.forget_tenant_keys(name);
                }
            }
        }
    }
    shared.catalog().commit(plan);
    shared.wake_reconciler();
    Ok(())
}

/// A body that could not be read: too large (413), or cut off.
fn body_error(e: axum::extract::rejection::BytesRejection) -> ApiError {
    if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
        crate::api::body_too_large()
    } else {
        bad_request(format!("cannot read the request body: {}", e.body_text()))
    }
}

async fn apply(
    State(shared): State<Arc<Shared>>,
    query: Result<Query<ApplyQuery>, QueryRejection>,
    headers: HeaderMap,
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> Result<Json<ApplyResponse>, ApiError> {
    let body = body.map_err(body_error)?;
    let Query(query) = query.map_err(query_error)?;
    let (sources, dry_run) = sources(&headers, &body, query.dry_run.unwrap_or(false))?;
    apply_sources(&shared, &sources, dry_run).await.map(Json)
}

/// Applies manifest texts (each `(source name, text)`) as one request: checked whole,
/// written in one transaction, then the reconciler is woken. The API's `apply` and dev
/// mode both come here.
pub async fn apply_sources(
    shared: &Arc<Shared>,
    sources: &[(Option<String>, String)],
    dry_run: bool,
) -> Result<ApplyResponse, ApiError> {
    let located = parse_sources(sources).map_err(invalid)?;
    let _guard = shared.apply_lock.lock().await;
    let fleet_classes: BTreeSet<String> = shared
        .registry()
        .fleet(Instant::now(), shared.config.liveness_timeout)
        .into_iter()
        .flat_map(|f| f.devices.into_iter().map(|d| d.facts.hardware_class))
        .collect();
    let plan = shared
        .catalog()
        .plan_apply(located, now_ms(), &fleet_classes)
        .map_err(invalid)?;
    let response = ApplyResponse {
        items: plan.items.clone(),
        warnings: plan.warnings.clone(),
    };
    if !dry_run {
        commit(shared, plan, "applied").await?;
    }
    Ok(response)
}

async fn delete_targets(shared: &Arc<Shared>, targets: Vec<Target>) -> Result<Json<ApplyResponse>, ApiError> {
    let _guard = shared.apply_lock.lock().await;
    let plan = shared
        .catalog()
        .plan_delete(targets)
        .map_err(|conflict| ApiError::new(StatusCode::CONFLICT, "conflict", conflict.0))?;
    let response = ApplyResponse {
        items: plan.items.clone(),
        warnings: plan.warnings.clone(),
    };
    commit(shared, plan, "deleted").await?;
    Ok(Json(response))
}

async fn delete_manifests(
    State(shared): State<Arc<Shared>>,
    query: Result<Query<ApplyQuery>, QueryRejection>,
    headers: HeaderMap,
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> Result<Json<ApplyResponse>, ApiError> {
    let body = body.map_err(body_error)?;
    let Query(query) = query.map_err(query_error)?;
    let (sources, dry_run) = sources(&headers, &body, query.dry_run.unwrap_or(false))?;
    let located = parse_sources(&sources).map_err(invalid)?;
    let targets = located
        .into_iter()
        .map(|l| Target {
            kind: l.manifest.kind(),
            namespace: l.manifest.namespace().map(str::to_string),
            name: l.manifest.name().to_string(),
            source: l.source,
            document: l.document,
        })
        .collect();
    if dry_run {
        let plan = shared
            .catalog()
            .plan_delete(targets)
            .map_err(|conflict| ApiError::new(StatusCode::CONFLICT, "conflict", conflict.0))?;
        return Ok(Json(ApplyResponse {
            items: plan.items,
            warnings: plan.warnings,
        }));
    }
    delete_targets(&shared, targets).await
}

fn one_target(kind: Kind, namespace: Option<String>, name: String) -> Vec<Target> {
    vec![Target {
        kind,
        namespace,
        name,
        source: None,
        document: 0,
    }]
}

fn events(shared: &Shared, object: &str) -> Result<Vec<EventView>, ApiError> {
    crate::api::recent_events(shared, object, 30)
}

/// Builds one object's view from the catalog and the last placement.
type ViewOf<S> = fn(&Catalog, &mut PlacementState, &str) -> Option<ObjectView<S>>;

/// Every object of a cluster-wide kind.
fn list_of<S>(shared: &Shared, names: impl Fn(&Catalog) -> Vec<String>, view: ViewOf<S>) -> Json<List<ObjectView<S>>> {
    let catalog = shared.catalog().clone();
    let mut state = shared.placement_state();
    let items = names(&catalog)
        .iter()
        .filter_map(|name| view(&catalog, &mut state, name))
        .collect();
    Json(List { items })
}

/// One object of a cluster-wide kind with its events.
fn detail_of<S>(shared: &Shared, kind: Kind, name: &str, view: ViewOf<S>) -> Result<Json<ObjectDetail<S>>, ApiError> {
    let catalog = shared.catalog().clone();
    let object = {
        let mut state = shared.placement_state();
        view(&catalog, &mut state, name)
    }
    .ok_or_else(|| {
        let plural = match kind {
            Kind::Tenant => "tenants",
            _ => "hardwareclasses",
        };
        not_found(format!(
            "{} {name} not found; `pyxis get {plural}` lists them",
            kind.as_str().to_ascii_lowercase()
        ))
    })?;
    let events = events(shared, &object_ref(kind, None, name))?;
    Ok(Json(ObjectDetail { object, events }))
}

async fn list_tenants(State(shared): State<Arc<Shared>>) -> Json<List<TenantView>> {
    list_of(&shared, |c| c.tenants.keys().cloned().collect(), views::tenant)
}

async fn get_tenant(
    State(shared): State<Arc<Shared>>,
    path: Result<Path<String>, PathRejection>,
) -> Result<Json<ObjectDetail<crate::api_types::TenantStatus>>, ApiError> {
    let Path(name) = path.map_err(path_error)?;
    detail_of(&shared, Kind::Tenant, &name, views::tenant)
}

async fn delete_tenant(
    State(shared): State<Arc<Shared>>,
    path: Result<Path<String>, PathRejection>,
) -> Result<Json<ApplyResponse>, ApiError> {
    let Path(name) = path.map_err(path_error)?;
    delete_targets(&shared, one_target(Kind::Tenant, None, name)).await
}

async fn list_classes(State(shared): State<Arc<Shared>>) -> Json<List<HardwareClassView>> {
    list_of(&shared, |c| c.classes.keys().cloned().collect(), views::hardware_class)
}

async fn get_class(
    State(shared): State<Arc<Shared>>,
    path: Result<Path<String>, PathRejection>,
) -> Result<Json<ObjectDetail<crate::api_types::HardwareClassStatus>>, ApiError> {
    let Path(name) = path.map_err(path_error)?;
    detail_of(&shared, Kind::HardwareClass, &name, views::hardware_class)
}

async fn delete_class(
    State(shared): State<Arc<Shared>>,
    path: Result<Path<String>, PathRejection>,
) -> Result<Json<ApplyResponse>, ApiError> {
    let Path(name) = path.map_err(path_error)?;
    delete_targets(&shared, one_target(Kind::HardwareClass, None, name)).await
}

/// The tenant of deployment `name`: the one asked for, or the only tenant that has it.
fn resolve_tenant(shared: &Shared, name: &str, namespace: Option<String>) -> Result<String, ApiError> {
    if let Some(namespace) = namespace {
        return Ok(namespace);
    }
    let tenants: Vec<String> = shared
        .catalog()
        .deployments
        .keys()
        .filter(|(_, n)| n == name)
        .map(|(tenant, _)| tenant.clone())
        .collect();
    match tenants.as_slice() {
        [] => Err(not_found(format!(
            "deployment {name} not found in any tenant; `pyxis get deployments -A` lists them"
        ))),
        [one] => Ok(one.clone()),
        many => Err(ApiError::new(
            StatusCode::CONFLICT,
            "conflict",
            format!(
                "deployment {name} exists in several tenants ({}); name one with -n TENANT",
                many.join(", ")
            ),
        )),
    }
}

async fn list_deployments(
    State(shared): State<Arc<Shared>>,
    query: Result<Query<NamespaceQuery>, QueryRejection>,
) -> Result<Json<List<DeploymentView>>, ApiError> {
    let Query(query) = query.map_err(query_error)?;
    let catalog = shared.catalog().clone();
    let mut state = shared.placement_state();
    let items = catalog
        .deployments
        .keys()
        .filter(|(tenant, _)| query.namespace.as_ref().is_none_or(|t| t == tenant))
        .filter_map(|(tenant, name)| views::deployment(&catalog, &mut state, tenant, name))
        .collect();
    Ok(Json(List { items }))
}

async fn get_deployment(
    State(shared): State<Arc<Shared>>,
    path: Result<Path<String>, PathRejection>,
    query: Result<Query<NamespaceQuery>, QueryRejection>,
) -> Result<Json<ObjectDetail<crate::api_types::DeploymentStatus>>, ApiError> {
    let Path(name) = path.map_err(path_error)?;
    let Query(query) = query.map_err(query_error)?;
    let tenant = resolve_tenant(&shared, &name, query.namespace)?;
    let catalog = shared.catalog().clone();
    let object = {
        let mut state = shared.placement_state();
        views::deployment(&catalog, &mut state, &tenant, &name)
    }
    .ok_or_else(|| {
        not_found(format!(
            "deployment {name} not found in tenant {tenant}; `pyxis get deployments -n {tenant}` lists them"
        ))
    })?;
    let events = events(&shared, &object_ref(Kind::ModelDeployment, Some(&tenant), &name))?;
    Ok(Json(ObjectDetail { object, events }))
}

async fn delete_deployment(
    State(shared): State<Arc<Shared>>,
    path: Result<Path<String>, PathRejection>,
    query: Result<Query<NamespaceQuery>, QueryRejection>,
) -> Result<Json<ApplyResponse>, ApiError> {
    let Path(name) = path.map_err(path_error)?;
    let Query(query) = query.map_err(query_error)?;
    let tenant = match resolve_tenant(&shared, &name, query.namespace) {
        Ok(tenant) => Some(tenant),
        // Deleting what does not exist answers `not-found`, as a manifest delete does.
        Err(e) if e.is_not_found() => None,
        Err(e) => return Err(e),
    };
    delete_targets(&shared, one_target(Kind::ModelDeployment, tenant, name)).await
}

async fn explain(
    State(shared): State<Arc<Shared>>,
    path: Result<Path<String>, PathRejection>,
    query: Result<Query<NamespaceQuery>, QueryRejection>,
) -> Result<Json<ExplainView>, ApiError> {
    let Path(name) = path.map_err(path_error)?;
    let Query(query) = query.map_err(query_error)?;
    let tenant = resolve_tenant(&shared, &name, query.namespace)?;
    // On a large fleet the pass leaves per-node verdicts out: compute this deployment's
    // from the same input (the pass is pure, so it is the same decision).
    let on_demand = {
        let state = shared.placement_state();
        let missing = state
            .explanation(&tenant, &name)
            .is_some_and(|e| e.pending > 0 && e.nodes.is_empty());
        if missing {
            state.last_input.clone()
        } else {
            None
        }
    };
    let computed = match on_demand {
        Some(input) => {
            let key = (tenant.clone(), name.clone());
            let only = crate::placement::Verdicts::Only([key.clone()].into());
            tokio::task::spawn_blocking(move || crate::placement::place_with(&input, &only))
                .await
                .map_err(ApiError::internal)?
                .ok()
                .and_then(|p| {
                    p.explanations
                        .into_iter()
                        .find(|e| (e.tenant.as_str(), e.deployment.as_str()) == (key.0.as_str(), key.1.as_str()))
                })
        }
        None => None,
    };
    let catalog = shared.catalog().clone();
    let state = shared.placement_state();
    views::explain(&catalog, &state, &tenant, &name, computed.as_ref())
        .map(Json)
        .ok_or_else(|| not_found(format!("deployment {name} not found in tenant {tenant}")))
}

async fn usage(
    State(shared): State<Arc<Shared>>,
    query: Result<Query<UsageQuery>, QueryRejection>,
) -> Result<Json<UsageView>, ApiError> {
    let Query(query) = query.map_err(query_error)?;
    let since = match &query.since {
        Some(text) => humantime::parse_duration(text)
            .map_err(|e| bad_request(format!("since={text:?} is not a duration like 24h or 7d ({e})")))?,
        None => std::time::Duration::from_secs(24 * 3600),
    };
    let now = now_ms();
    let start = now.saturating_sub(i64::try_from(since.as_millis()).unwrap_or(i64::MAX));
    let since_hour = start - start.rem_euclid(3_600_000);
    let reader = shared.clone();
    let tenant = query.tenant.clone();
    let stored = tokio::task::spawn_blocking(move || reader.store.usage(since_hour, tenant.as_deref()))
        .await
        .map_err(ApiError::internal)?
        .map_err(ApiError::internal)?;
    let path = audit_path(&shared);
    let tenant = query.tenant.clone();
    let tokens = tokio::task::spawn_blocking(move || crate::audit::token_usage(&path, since_hour, tenant.as_deref()))
        .await
        .map_err(ApiError::internal)?
        .map_err(ApiError::internal)?;
    let catalog = shared.catalog().clone();
    let items = {
        let state = shared.placement_state();
        views::usage_rows(stored, &state, &catalog, since_hour, query.tenant.as_deref())
    };
    let tenants = views::tenant_usage(&items, &tokens);
    Ok(Json(UsageView {
        since: rfc3339_ms(since_hour),
        until: rfc3339_ms(now),
        items,
        tenants,
    }))
}

fn key_info(row: &crate::apikeys::ApiKeyRow) -> crate::api_types::ApiKeyInfo {
    crate::api_types::ApiKeyInfo {
        id: row.id.clone(),
        tenant: row.tenant.clone(),
        name: row.name.clone(),
        created_at: rfc3339_ms(row.created_ms),
        revoked_at: row.revoked_ms.map(rfc3339_ms),
    }
}

async fn create_api_key(
    State(shared): State<Arc<Shared>>,
    body: Result<Json<crate::api_types::ApiKeyRequest>, axum::extract::rejection::JsonRejection>,
) -> Result<(StatusCode, Json<crate::api_types::ApiKeyCreated>), ApiError> {
    let Json(request) = body.map_err(|e| bad_request(format!("invalid API key request: {}", e.body_text())))?;
    if !shared.catalog().tenants.contains_key(&request.tenant) {
        return Err(not_found(format!(
            "tenant {} not found; apply a Tenant manifest first (`pyxis get tenants` lists them)",
            request.tenant
        )));
    }
    let name = request.name.unwrap_or_else(|| "default".to_string());
    if name.is_empty() || name.len() > 63 || name.chars().any(char::is_control) {
        return Err(bad_request("name must be 1 to 63 printable characters"));
    }
    let new = crate::apikeys::create(&request.tenant, &name, now_ms()).map_err(ApiError::internal)?;
    let writer = shared.clone();
    let row = new.row.clone();
    tokio::task::spawn_blocking(move || writer.store.insert_api_key(&row))
        .await
        .map_err(ApiError::internal)?
        .map_err(ApiError::internal)?;
    tracing::info!(key_id = %new.row.id, tenant = %new.row.tenant, name = %new.row.name, "API key created (stored hashed)");
    shared.event(
        &object_ref(Kind::Tenant, None, &new.row.tenant),
        "Normal",
        "ApiKeyCreated",
        &format!("API key {} ({}) created", new.row.id, new.row.name),
    );
    Ok((
        StatusCode::CREATED,
        Json(crate::api_types::ApiKeyCreated {
            key: new.key,
            info: key_info(&new.row),
        }),
    ))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyQuery {
    tenant: Option<String>,
}

async fn list_api_keys(
    State(shared): State<Arc<Shared>>,
    query: Result<Query<KeyQuery>, QueryRejection>,
) -> Result<Json<List<crate::api_types::ApiKeyInfo>>, ApiError> {
    let Query(query) = query.map_err(query_error)?;
    let reader = shared.clone();
    let rows = tokio::task::spawn_blocking(move || reader.store.api_keys(query.tenant.as_deref()))
        .await
        .map_err(ApiError::internal)?
        .map_err(ApiError::internal)?;
    Ok(Json(List {
        items: rows.iter().map(key_info).collect(),
    }))
}

async fn revoke_api_key(
    State(shared): State<Arc<Shared>>,
    path: Result<Path<String>, PathRejection>,
) -> Result<Json<crate::api_types::ApiKeyInfo>, ApiError> {
    let Path(id) = path.map_err(path_error)?;
    // The id, or the whole key pasted by mistake.
    let id = crate::apikeys::parse(&id).map_or(id.clone(), |(id, _)| id.to_string());
    let writer = shared.clone();
    let key = id.clone();
    let found = tokio::task::spawn_blocking(move || {
        // Revoked before: said as it is, with no new event.
        if let Some(row) = writer.store.api_key(&key)?.filter(|r| r.revoked_ms.is_some()) {
            return Ok::<_, crate::store::StoreError>((false, Some(row)));
        }
        let found = writer.store.revoke_api_key(&key, now_ms())?;
        let rows = writer.store.api_keys(None)?;
        Ok((found, rows.into_iter().find(|r| r.id == key)))
    })
    .await
    .map_err(ApiError::internal)?
    .map_err(ApiError::internal)?;
    match found {
        (false, Some(row)) => Ok(Json(key_info(&row))),
        (true, Some(row)) => {
            if let Some(gateway) = shared.gateway() {
                gateway.forget_key(&row.id);
            }
            tracing::warn!(key_id = %row.id, tenant = %row.tenant, "API key revoked");
            shared.event(
                &object_ref(Kind::Tenant, None, &row.tenant),
                "Normal",
                "ApiKeyRevoked",
                &format!("API key {} ({}) revoked", row.id, row.name),
            );
            Ok(Json(key_info(&row)))
        }
        _ => Err(not_found(format!(
            "API key {id} not found; `pyxis apikey list` lists them"
        ))),
    }
}
