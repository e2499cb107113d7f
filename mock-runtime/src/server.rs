//! The process: shared state ([`App`]), one axum router per flavour, the middlewares (request
//! log, loading gate, API key), and the lifecycle driver that walks the startup plan, binds
//! ports, and turns signals and knobs into exit codes.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use tokio::net::TcpListener;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::cli::Config;
use crate::engine::Engine;
use crate::flavor::Flavor;
use crate::generation::{self, RequestInfo};
use crate::lifecycle::{startup_plan, Stage};
use crate::native;
use crate::openai::ApiError;

/// Exit code of a simulated crash (`--crash-after`, `--exit-after-ms`).
pub const CRASH_EXIT_CODE: i32 = 3;
/// How long a SIGTERM waits for in-flight responses before exiting.
const TERM_GRACE: Duration = Duration::from_secs(1);
/// How long `--crash-after` lets the last response go out.
const CRASH_GRACE: Duration = Duration::from_secs(2);

/// Whether the model is loaded (the port is open in both).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Health says "loading" the flavour's way.
    Loading,
    /// Serving.
    Ready,
}

/// State shared by every handler.
#[derive(Debug)]
pub struct App {
    /// Validated configuration.
    pub config: Config,
    engine: Mutex<Engine>,
    /// One permit per request generated at once.
    pub admission: Arc<Semaphore>,
    phase: watch::Sender<Phase>,
    /// Process start, Unix seconds (`created` of models).
    pub started_unix: u64,
    id_prefix: u64,
    next_id: AtomicU64,
    completed: AtomicU64,
    /// Cancelled when `--crash-after` is reached.
    pub crash: CancellationToken,
    models: Mutex<Vec<String>>,
    loaded: Mutex<BTreeSet<String>>,
}

/// Unix seconds now.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Ollama names without a tag mean `:latest`.
fn ollama_name(name: &str) -> String {
    let last = name.rsplit('/').next().unwrap_or(name);
    if last.contains(':') {
        name.to_string()
    } else {
        format!("{name}:latest")
    }
}

impl App {
    /// State for `config`, loading until the lifecycle says otherwise.
    pub fn new(config: Config) -> Self {
        let permits = config.max_concurrency.clamp(1, Semaphore::MAX_PERMITS);
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        App {
            engine: Mutex::new(Engine::new(config.engine.clone())),
            admission: Arc::new(Semaphore::new(permits)),
            phase: watch::Sender::new(Phase::Loading),
            started_unix: unix_now(),
            id_prefix: nanos ^ u64::from(std::process::id()),
            next_id: AtomicU64::new(1),
            completed: AtomicU64::new(0),
            crash: CancellationToken::new(),
            models: Mutex::new(config.launch.served_names.clone()),
            loaded: Mutex::new(BTreeSet::new()),
            config,
        }
    }

    /// The engine, locked.
    pub fn engine(&self) -> MutexGuard<'_, Engine> {
        lock(&self.engine)
    }

    /// The flavour.
    pub fn flavor(&self) -> Flavor {
        self.config.launch.flavor
    }

    /// Loading or ready.
    pub fn phase(&self) -> Phase {
        *self.phase.borrow()
    }

    fn set_phase(&self, phase: Phase) {
        self.phase.send_replace(phase);
    }

    /// Waits until the model is loaded (forever with `--hang`).
    pub async fn wait_ready(&self) {
        let mut phase = self.phase.subscribe();
        let _ = phase.wait_for(|p| *p == Phase::Ready).await;
    }

    /// Names a request may use; the first is the primary.
    pub fn models(&self) -> Vec<String> {
        lock(&self.models).clone()
    }

    /// The primary served name (metrics labels, info endpoints).
    pub fn primary_model(&self) -> String {
        self.models().into_iter().next().unwrap_or_default()
    }

    /// Ollama: a model fetched by `POST /api/pull`.
    pub fn add_model(&self, name: &str) {
        let name = ollama_name(name);
        let mut models = lock(&self.models);
        if !models.iter().any(|m| ollama_name(m) == name) {
            models.push(name);
        }
    }

    /// Ollama: a model in memory (listed by `/api/ps`).
    pub fn mark_loaded(&self, name: &str) {
        lock(&self.loaded).insert(name.to_string());
    }

    /// Ollama: models in memory.
    pub fn loaded_models(&self) -> Vec<String> {
        lock(&self.loaded).iter().cloned().collect()
    }

    /// A fresh response id, unique across restarts: `PREFIX-` and 32 hex digits.
    pub fn next_id(&self, prefix: &str) -> String {
        let n = self.next_id.fetch_add(1, Ordering::Relaxed);
        format!("{prefix}-{:016x}{n:016x}", self.id_prefix)
    }

    /// The model a request names, as the flavour checks it: `None` is the primary model
    /// (except for the plain `openai` flavour, where it is required); TGI and llama.cpp
    /// take any name; the others answer 404 for a name they do not serve.
    pub fn resolve_model(&self, requested: Option<&str>) -> Result<String, ApiError> {
        let models = self.models();
        match requested {
            None if self.flavor() == Flavor::Openai => {
                Err(ApiError::bad_request(Some("model"), "'model' is a required property."))
            }
            None => models
                .into_iter()
                .next()
                .ok_or_else(|| ApiError::bad_request(Some("model"), "'model' is a required property.")),
            Some(name) if self.config.launch.accept_any_model => Ok(name.to_string()),
            Some(name) if models.iter().any(|m| m == name) => Ok(name.to_string()),
            Some(name)
                if self.flavor() == Flavor::Ollama && models.iter().any(|m| ollama_name(m) == ollama_name(name)) =>
            {
                Ok(name.to_string())
            }
            Some(name) => Err(ApiError::unknown_model(name)),
        }
    }

    /// A request completed; with `--crash-after N`, the Nth triggers the crash.
    pub fn completed_one(&self) {
        let done = self.completed.fetch_add(1, Ordering::SeqCst) + 1;
        if self.config.crash_after == Some(done) {
            warn!(
                completed = done,
                "--crash-after reached: exiting with code {CRASH_EXIT_CODE}"
            );
            self.crash.cancel();
        }
    }
}

/// An [`ApiError`] as an HTTP response.
pub fn api_error(e: ApiError) -> Response {
    let status = StatusCode::from_u16(e.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (status, Json(e.body())).into_response()
}

/// Whether `path` runs the model (gated while loading).
fn is_inference(path: &str) -> bool {
    (path.starts_with("/v1/") && path != "/v1/models" && path != "/v1/health")
        || matches!(path, "/api/generate" | "/api/chat" | "/api/embed" | "/api/embeddings")
}

/// The router of the API port.
pub fn router(app: Arc<App>) -> Router {
    let flavor = app.flavor();
    let mut openai = Router::new();
    if flavor.has_openai_api() {
        openai = openai
            .route("/v1/chat/completions", post(generation::chat))
            .route("/v1/completions", post(generation::completions))
            .route("/v1/models", get(native::models));
    }
    if flavor.has_embeddings() {
        openai = openai.route("/v1/embeddings", post(generation::embeddings));
    }
    if flavor.has_openai_api() {
        openai = openai.route_layer(middleware::from_fn_with_state(app.clone(), require_api_key));
    }
    openai
        .merge(native::routes(flavor))
        .fallback(not_found)
        .layer(middleware::from_fn_with_state(app.clone(), loading_gate))
        .layer(middleware::from_fn(log_request))
        .with_state(app)
}

/// Triton's metrics port.
fn metrics_router(app: Arc<App>) -> Router {
    Router::new()
        .route("/metrics", get(native::triton_metrics))
        .fallback(not_found)
        .layer(middleware::from_fn(log_request))
        .with_state(app)
}

async fn not_found(State(app): State<Arc<App>>, request: Request) -> Response {
    match app.flavor() {
        // FastAPI servers.
        Flavor::Vllm | Flavor::Sglang | Flavor::Trtllm | Flavor::Openai => {
            (StatusCode::NOT_FOUND, Json(serde_json::json!({"detail": "Not Found"}))).into_response()
        }
        _ => api_error(ApiError::no_route(request.uri().path())),
    }
}

/// One log line per request, on stdout (the supervisor's log capture reads it).
async fn log_request(request: Request, next: Next) -> Response {
    let method = request.method().clone();
    let path = request.uri().path().to_string();
    let started = Instant::now();
    let response = next.run(request).await;
    let status = response.status().as_u16();
    let ms = started.elapsed().as_millis() as u64;
    match response.extensions().get::<RequestInfo>() {
        Some(i) => info!(
            %method,
            path = %path,
            status,
            ms,
            model = %i.model,
            prompt_tokens = i.prompt_tokens,
            completion_tokens = i.completion_tokens,
            stream = i.stream,
            prefix_cache_hit = ?i.prefix_cache_hit,
            ttft_ms = ?i.ttft_ms,
            "request"
        ),
        None => info!(%method, path = %path, status, ms, "request"),
    }
    response
}

/// While loading, health answers the flavour's "not yet" and inference is refused.
async fn loading_gate(State(app): State<Arc<App>>, request: Request, next: Next) -> Response {
    if let Some(code) = app.config.fail_status {
        if app.phase() == Phase::Ready && is_inference(request.uri().path()) {
            let status = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            let body = serde_json::json!({"error": {"message": "failing on purpose (--fail-status)", "type": "server_error", "code": code}});
            return (status, Json(body)).into_response();
        }
    }
    if app.phase() == Phase::Ready {
        return next.run(request).await;
    }
    let path = request.uri().path().to_string();
    match app.flavor() {
        // The port is up at once; a request waits for its model to load.
        Flavor::Ollama => next.run(request).await,
        // Every route but the model list answers 503 "Loading model".
        Flavor::LlamaCpp if path == "/v1/models" || path == "/models" => next.run(request).await,
        Flavor::LlamaCpp => native::llama_cpp_loading(),
        Flavor::Sglang if path == "/health" || path == "/health_generate" => {
            StatusCode::SERVICE_UNAVAILABLE.into_response()
        }
        Flavor::Triton
            if path == "/v2/health/ready" || (path.starts_with("/v2/models/") && path.ends_with("/ready")) =>
        {
            StatusCode::BAD_REQUEST.into_response()
        }
        Flavor::Triton if path.starts_with("/v2/models/") && path.contains("/generate") => {
            native::triton_not_ready(&path)
        }
        Flavor::Openai if path == "/health" => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(serde_json::json!({"status": "loading"})),
        )
            .into_response(),
        _ if is_inference(&path) => api_error(ApiError::loading()),
        _ => next.run(request).await,
    }
}

/// `--api-key`: the OpenAI routes need `Authorization: Bearer KEY`.
async fn require_api_key(State(app): State<Arc<App>>, request: Request, next: Next) -> Response {
    if let Some(key) = &app.config.launch.api_key {
        let given = request
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        if given != Some(key.as_str()) {
            return api_error(ApiError::unauthorized());
        }
    }
    next.run(request).await
}

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// A port could not be bound (in use, bad address).
    #[error("cannot bind {what} on {address}: {source}")]
    Bind {
        /// Which listener (API, metrics, gRPC).
        what: &'static str,
        /// `HOST:PORT` as configured.
        address: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// Signal handlers could not be installed.
    #[error("cannot install signal handlers: {0}")]
    Signals(std::io::Error),
    /// `--spawn-child` failed.
    #[error("cannot spawn the child process: {0}")]
    Child(std::io::Error),
}

async fn bind(what: &'static str, host: &str, port: u16) -> Result<TcpListener, StartError> {
    let listener = TcpListener::bind((host, port))
        .await
        .map_err(|source| StartError::Bind {
            what,
            address: format!("{host}:{port}"),
            source,
        })?;
    let address = listener.local_addr().map_err(|source| StartError::Bind {
        what,
        address: format!("{host}:{port}"),
        source,
    })?;
    // Plain lines at column 0 so tests and supervisors can read the bound port.
    match what {
        "API" => println!("listening on {address}"),
        "metrics" => println!("metrics listening on {address}"),
        _ => println!("grpc listening on {address} (mock: bound, speaks no gRPC)"),
    }
    Ok(listener)
}

fn serve(listener: TcpListener, router: Router, shutdown: &CancellationToken) -> JoinHandle<std::io::Result<()>> {
    let shutdown = shutdown.clone().cancelled_owned();
    // TCP_NODELAY: a streamed answer is many small writes; with Nagle each waits for the
    // client's delayed ACK (about 40 ms on Linux).
    let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
        let _ = tcp.set_nodelay(true);
    });
    tokio::spawn(async move { axum::serve(listener, router).with_graceful_shutdown(shutdown).await })
}

/// Walks the startup plan: binds when the flavour would, flips loading to ready, then
/// serves until `shutdown`.
async fn drive(app: Arc<App>, started: Instant, shutdown: CancellationToken) -> Result<(), StartError> {
    let config = &app.config;
    let launch = &config.launch;
    let mut servers = Vec::new();
    let mut held = Vec::new();
    let mut serving = false;
    for (offset, stage) in startup_plan(launch.flavor, config.startup, config.hang) {
        tokio::select! {
            () = tokio::time::sleep_until(started + offset) => {}
            () = shutdown.cancelled() => return Ok(()),
        }
        match stage {
            Stage::Closed => info!("loading model: port closed until it is loaded"),
            Stage::BoundSilent => {
                held.push(bind("API", &launch.host, launch.port).await?);
                warn!("--hang: port bound but never served");
            }
            Stage::Loading | Stage::Ready => {
                // Ready before the port opens, so nothing sees "loading" after
                // `listening on` when the flavour opens its port only once loaded.
                if stage == Stage::Ready {
                    app.set_phase(Phase::Ready);
                }
                if !serving {
                    serving = true;
                    let listener = bind("API", &launch.host, launch.port).await?;
                    servers.push(serve(listener, router(app.clone()), &shutdown));
                    if let Some((host, port)) = &launch.metrics_listener {
                        let listener = bind("metrics", host, *port).await?;
                        servers.push(serve(listener, metrics_router(app.clone()), &shutdown));
                    }
                    if let Some((host, port)) = &launch.grpc_listener {
                        held.push(bind("gRPC", host, *port).await?);
                    }
                }
                if stage == Stage::Ready {
                    info!(elapsed_ms = started.elapsed().as_millis() as u64, "model loaded: ready");
                } else if config.hang {
                    warn!("--hang: loading forever");
                } else {
                    info!("loading model");
                }
            }
        }
    }
    shutdown.cancelled().await;
    for server in servers {
        if let Ok(Err(e)) = server.await {
            error!("server error: {e}");
        }
    }
    drop(held);
    Ok(())
}

/// Argument that starts this binary as the `--spawn-child` child.
pub const CHILD_ARG: &str = "__pyxis-mock-child";

fn spawn_child(ignore_sigterm: bool) -> Result<std::process::Child, StartError> {
    let exe = std::env::current_exe().map_err(StartError::Child)?;
    // Same process group as this process (no setsid/setpgid): stopping the group stops both.
    std::process::Command::new(exe)
        .arg(CHILD_ARG)
        .env(
            "PYXIS_MOCK_IGNORE_SIGTERM",
            if ignore_sigterm { "true" } else { "false" },
        )
        .stdin(std::process::Stdio::null())
        .spawn()
        .map_err(StartError::Child)
}

/// The `--spawn-child` child: sleeps until SIGTERM (which it may ignore) or SIGKILL.
pub async fn run_child() -> i32 {
    let ignore = std::env::var("PYXIS_MOCK_IGNORE_SIGTERM").is_ok_and(|v| v == "true");
    let mut term = match signal(SignalKind::terminate()) {
        Ok(term) => term,
        Err(e) => {
            eprintln!("mock child: cannot install the SIGTERM handler: {e}");
            return 1;
        }
    };
    let pid = std::process::id();
    println!(
        "mock child {pid} started (parent {})",
        std::os::unix::process::parent_id()
    );
    loop {
        term.recv().await;
        if !ignore {
            println!("mock child {pid}: SIGTERM, exiting");
            return 0;
        }
        println!("mock child {pid}: ignoring SIGTERM");
    }
}

/// Runs the mock until a signal, a crash knob, or a start failure; returns the exit code.
pub async fn run(config: Config) -> i32 {
    match run_inner(config).await {
        Ok(code) => code,
        Err(e) => {
            error!("{e}");
            1
        }
    }
}

async fn run_inner(config: Config) -> Result<i32, StartError> {
    // Handlers first: with --ignore-sigterm a SIGTERM must never meet the default action.
    let mut sigterm = signal(SignalKind::terminate()).map_err(StartError::Signals)?;
    let mut sigint = signal(SignalKind::interrupt()).map_err(StartError::Signals)?;
    let started = Instant::now();
    let launch = &config.launch;
    info!(
        flavor = launch.flavor.name(),
        model = %launch.model,
        served = ?launch.served_names,
        address = %format!("{}:{}", launch.host, launch.port),
        version = %config.version,
        ttft_ms = config.engine.ttft.as_millis() as u64,
        tpot_ms = config.engine.tpot.as_millis() as u64,
        prefix_cache = config.engine.prefix_cache,
        max_concurrency = config.max_concurrency,
        startup_ms = config.startup.as_millis() as u64,
        hang = config.hang,
        "pyxis-mock-runtime starting: a MOCK {} runtime for tests and dev mode, not a real runtime",
        launch.flavor.name()
    );
    let mut child = if config.spawn_child {
        let child = spawn_child(config.ignore_sigterm)?;
        println!("spawned child pid {}", child.id());
        Some(child)
    } else {
        None
    };
    let exit_after = config.exit_after;
    let app = Arc::new(App::new(config));
    let shutdown = CancellationToken::new();
    let mut lifecycle = tokio::spawn(drive(app.clone(), started, shutdown.clone()));
    let exit_timer = async {
        match exit_after {
            Some(after) => tokio::time::sleep_until(started + after).await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(exit_timer);
    let (code, grace) = loop {
        tokio::select! {
            _ = sigterm.recv() => {
                if app.config.ignore_sigterm {
                    warn!("received SIGTERM: ignoring it (--ignore-sigterm)");
                    continue;
                }
                info!("received SIGTERM: shutting down");
                break (0, TERM_GRACE);
            }
            _ = sigint.recv() => {
                info!("received SIGINT: shutting down");
                break (0, TERM_GRACE);
            }
            () = app.crash.cancelled() => break (CRASH_EXIT_CODE, CRASH_GRACE),
            () = &mut exit_timer => {
                warn!("--exit-after-ms reached: exiting with code {CRASH_EXIT_CODE}");
                return Ok(CRASH_EXIT_CODE);
            }
            result = &mut lifecycle => {
                return match result {
                    Ok(Err(e)) => Err(e),
                    Ok(Ok(())) | Err(_) => Ok(1),
                };
            }
        }
    };
    shutdown.cancel();
    if tokio::time::timeout(grace, &mut lifecycle).await.is_err() {
        warn!(
            grace_ms = grace.as_millis() as u64,
            "in-flight requests cut at the deadline"
        );
    }
    // A clean stop takes its child down, as real runtimes stop their workers; a crash leaves
    // it behind for the supervisor to find.
    if code == 0 {
        if let Some(child) = child.as_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
    info!(code, "exiting");
    Ok(code)
}
