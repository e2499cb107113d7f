//! The gateway end to end: a coordinator (in this process, through the library) with its
//! reconciler and gateway, real `pyxis-agent` processes with simulated GPUs, the mock
//! runtime for the GPU kinds and the real `llama-server` (SmolLM2-135M on CPU) for
//! `llama-cpp`, called by the official OpenAI Python SDK and by plain HTTP.
//!
//! - `the_openai_sdk_gets_lineage_and_every_call_is_audited`: the SDK, streaming and not,
//!   chat, completions, embeddings and models, against a mock vLLM deployment and a real
//!   llama.cpp one; every response carries the lineage headers and every call has its
//!   audit record with the same lineage; a 5xx replica is retried once on another; token
//!   budgets answer 429 with `Retry-After` (dry-run tenants are served and counted);
//!   spans reach an OTLP receiver started here with the caller's trace id; `pyxis audit
//!   verify` passes, then finds a record altered, one removed and two reordered directly
//!   in the database file.
//! - `queued_calls_go_by_band_expire_at_their_deadline_and_scale_from_zero`: one busy
//!   replica (`maxConcurrentRequests: 1`) makes calls queue; they are served real-time,
//!   then bulk, then batch, whatever their arrival order; a call queued past
//!   `queueTimeout` gets 503; a `warm-zero` deployment at zero replicas serves its first
//!   call once a replica has started, and scales back to zero when idle.
//! - `kv_aware_and_latency_budget_route_by_what_they_measure`: calls avoid a replica whose
//!   KV cache is full of work the gateway never saw (its agent scraped it), and go to the
//!   replica predicted within the latency budget once both were measured.
//! - `audit_required_refuses_and_best_effort_serves_when_the_log_cannot_be_written`: the
//!   audit database is locked by another process; `required` answers 503, `best-effort`
//!   serves and counts the records lost.
//! - `failures_are_answered_and_audited_for_what_they_are`: a replica that sends nothing
//!   within `gateway.upstream_timeout` gets the caller a 504 `upstream_timeout` (with
//!   lineage); one that goes silent mid-stream has its stream cut off; a bad body for a
//!   known deployment carries that deployment's lineage; a declared body over the limit
//!   gets 413 before it is sent; a client that leaves while sending is recorded as 499.
//!
//! The coordinator runs in the test process: `PYXIS_SMOKE_LOG=1` shows its log on stderr.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{
    collections::BTreeMap,
    io::{BufRead, BufReader, Read, Write},
    net::TcpListener,
    path::Path,
    process::Command,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use pyxis_coordinator::{config::CoordinatorConfig, server::Coordinator};
use pyxis_smoke::{bin, eventually, http, llama_server, request, Daemon, HttpResponse, Reaper};

const SLOW: Duration = Duration::from_secs(90);
const CHAT_DIGEST: &str = "5d41402abc4b2a76b9719d911017c5925d41402abc4b2a76b9719d911017c592";
const LINEAGE: [&str; 7] = [
    "x-pyxis-request-id",
    "x-pyxis-tenant",
    "x-pyxis-deployment",
    "x-pyxis-model-version",
    "x-pyxis-runtime",
    "x-pyxis-hardware-class",
    "x-pyxis-node",
];

/// A node: name, simulated devices, `[runtimes]` lines.
struct NodeSpec {
    name: &'static str,
    simulate: &'static str,
    runtimes: Vec<(String, String)>,
}

impl NodeSpec {
    /// A node whose only runtime is the mock's vLLM flavour.
    fn vllm(name: &'static str, simulate: &'static str) -> Self {
        Self {
            name,
            simulate,
            runtimes: vec![("vllm".into(), mock("vllm"))],
        }
    }
}

/// A coordinator in this process and real agents.
struct Fleet {
    agents: Vec<Daemon>,
    coordinator: Option<Coordinator>,
    token: String,
    dir: tempfile::TempDir,
    _reaper: Reaper,
}

impl Fleet {
    async fn start(first_port: u16, nodes: Vec<NodeSpec>, tune: impl FnOnce(&mut CoordinatorConfig)) -> Self {
        if std::env::var_os("PYXIS_SMOKE_LOG").is_some() {
            pyxis_agent::daemon::init_tracing();
        }
        let dir = tempfile::tempdir().unwrap();
        let reaper = Reaper(dir.path().display().to_string());
        let mut config = CoordinatorConfig::local(dir.path().join("coordinator"));
        config.report_interval = Duration::from_millis(200);
        config.liveness_timeout = Duration::from_secs(3);
        tune(&mut config);
        let coordinator = Coordinator::start(config).await.unwrap();
        let join = coordinator
            .shared
            .create_join_token(Duration::from_secs(600), nodes.len() as u32)
            .unwrap();
        let mut agents = Vec::new();
        for (i, node) in nodes.iter().enumerate() {
            let ports = first_port + 100 * i as u16;
            let runtimes: String = node
                .runtimes
                .iter()
                .map(|(kind, command)| format!("{kind} = {command:?}\n"))
                .collect();
            let path = dir.path().join(format!("{}.toml", node.name));
            std::fs::write(
                &path,
                format!(
                    r#"coordinators = ["{quic}"]
join_token = "{token}"
ca_hash = "{ca}"
data_dir = "{data}"
name = "{name}"
runtime_ports = "{ports}-{last}"
runtime_host = "127.0.0.1"
metrics_addr = "127.0.0.1:0"
report_interval = "200ms"
simulate = "{simulate}"
advertise_host = "127.0.0.1"
[runtimes]
{runtimes}"#,
                    quic = coordinator.quic_addr,
                    token = join.token,
                    ca = join.ca_hash,
                    data = dir.path().join(node.name).display(),
                    name = node.name,
                    last = ports + 99,
                    simulate = node.simulate,
                ),
            )
            .unwrap();
            let mut cmd = Command::new(bin("pyxis-agent"));
            cmd.arg("--config").arg(&path);
            agents.push(Daemon::spawn(node.name, cmd));
        }
        let token = coordinator.admin_token.clone().unwrap();
        let fleet = Self {
            agents,
            coordinator: Some(coordinator),
            token,
            dir,
            _reaper: reaper,
        };
        let want = nodes.len();
        eventually("the agents registered", SLOW, || {
            let nodes = fleet.admin("GET", "/api/v1/nodes", None);
            let ready = nodes["items"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|n| n["status"] == "Ready")
                .count();
            (ready == want).then_some(()).ok_or_else(|| nodes.to_string())
        })
        .await;
        fleet
    }

    fn coordinator(&self) -> &Coordinator {
        self.coordinator.as_ref().unwrap()
    }

    fn gateway(&self) -> String {
        self.coordinator().gateway_url()
    }

    fn admin(&self, method: &str, path: &str, body: Option<&str>) -> serde_json::Value {
        let (status, text) = http(
            method,
            &format!("{}{path}", self.coordinator().api_url()),
            Some(&self.token),
            body,
        );
        assert!((200..300).contains(&status), "{method} {path}: {status} {text}");
        serde_json::from_str(&text).unwrap()
    }

    fn apply(&self, yaml: &str) {
        let body = serde_json::json!({"sources": [{"name": "gateway.yaml", "text": yaml}]});
        self.admin("POST", "/api/v1/apply", Some(&body.to_string()));
    }

    fn key(&self, tenant: &str) -> String {
        let body = serde_json::json!({"tenant": tenant, "name": "smoke"});
        let created = self.admin("POST", "/api/v1/apikeys", Some(&body.to_string()));
        created["key"].as_str().unwrap().to_string()
    }

    fn replicas(&self) -> Vec<serde_json::Value> {
        self.admin("GET", "/api/v1/replicas", None)["items"]
            .as_array()
            .unwrap()
            .clone()
    }

    async fn ready(&self, deployment: &str, n: usize) -> Vec<serde_json::Value> {
        eventually(&format!("{n} ready replicas of {deployment}"), SLOW, || {
            let ready: Vec<_> = self
                .replicas()
                .into_iter()
                .filter(|r| r["deployment"] == deployment && r["phase"] == "Ready")
                .collect();
            (ready.len() == n)
                .then(|| ready.clone())
                .ok_or_else(|| format!("{ready:#?}"))
        })
        .await
    }

    /// A call through the gateway: (response, parsed body).
    fn call(&self, key: &str, path: &str, body: &serde_json::Value, extra: &[(&str, &str)]) -> HttpResponse {
        let auth = format!("Bearer {key}");
        let mut headers = vec![("Authorization", auth.as_str())];
        headers.extend_from_slice(extra);
        request(
            "POST",
            &format!("{}{path}", self.gateway()),
            &headers,
            Some(&body.to_string()),
        )
    }

    fn metrics(&self) -> String {
        http("GET", &format!("{}/metrics", self.coordinator().api_url()), None, None).1
    }

    fn audit(&self, query: &str) -> Vec<serde_json::Value> {
        self.admin("GET", &format!("/api/v1/audit?{query}"), None)["items"]
            .as_array()
            .unwrap()
            .clone()
    }

    fn cli(&self, args: &[&str]) -> (i32, String, String) {
        let out = Command::new(bin("pyxis"))
            .args(args)
            .env("PYXIS_SERVER", self.coordinator().api_url())
            .env("PYXIS_TOKEN", &self.token)
            .output()
            .unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    async fn stop(mut self) {
        for agent in &mut self.agents {
            agent.kill();
        }
        if let Some(c) = self.coordinator.take() {
            c.stop().await;
        }
    }
}

fn metric(text: &str, name_and_labels: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(name_and_labels))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

fn mock(flavor: &str) -> String {
    format!("{} --flavor {flavor}", bin("pyxis-mock-runtime").display())
}

/// An OTLP/HTTP receiver: every POSTed JSON body.
fn otlp_receiver() -> (String, Arc<Mutex<Vec<serde_json::Value>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let got = Arc::new(Mutex::new(Vec::new()));
    let sink = got.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let mut reader = BufReader::new(stream);
            let mut length = 0usize;
            let mut line = String::new();
            while reader.read_line(&mut line).is_ok_and(|n| n > 0) {
                let l = line.trim_end().to_ascii_lowercase();
                if l.is_empty() {
                    break;
                }
                if let Some(v) = l.strip_prefix("content-length:") {
                    length = v.trim().parse().unwrap_or(0);
                }
                line.clear();
            }
            let mut body = vec![0; length];
            if reader.read_exact(&mut body).is_ok() {
                if let Ok(v) = serde_json::from_slice(&body) {
                    sink.lock().unwrap().push(v);
                }
            }
            let mut stream = reader.into_inner();
            let _ = stream.write_all(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}");
        }
    });
    (url, got)
}

const SDK_SCRIPT: &str = r#"
import json, os, sys
import openai

c = openai.OpenAI(base_url=os.environ["BASE"], api_key=os.environ["KEY"], max_retries=0)
out = {"calls": []}

def lineage(headers):
    return {k: v for k, v in headers.items() if k.lower().startswith("x-pyxis-")}

for model in sys.argv[1:]:
    raw = c.chat.completions.with_raw_response.create(
        model=model, messages=[{"role": "user", "content": "Say hello in three words."}], max_tokens=8)
    done = raw.parse()
    out["calls"].append({"model": model, "stream": False, "headers": lineage(raw.headers),
                         "text": done.choices[0].message.content, "usage": done.usage.model_dump() if done.usage else None})
    raw = c.chat.completions.with_raw_response.create(
        model=model, messages=[{"role": "user", "content": "Count to five."}], max_tokens=8, stream=True)
    chunks = list(raw.parse())
    text = "".join((ch.choices[0].delta.content or "") for ch in chunks if ch.choices)
    out["calls"].append({"model": model, "stream": True, "headers": lineage(raw.headers),
                         "text": text, "chunks": len(chunks)})

raw = c.completions.with_raw_response.create(model=sys.argv[1], prompt="Once upon a time", max_tokens=4)
out["calls"].append({"model": sys.argv[1], "stream": False, "headers": lineage(raw.headers), "text": raw.parse().choices[0].text})
raw = c.embeddings.with_raw_response.create(model=sys.argv[1], input="hello")
out["calls"].append({"model": sys.argv[1], "stream": False, "headers": lineage(raw.headers),
                     "dims": len(raw.parse().data[0].embedding)})
out["models"] = sorted(m.id for m in c.models.list())
try:
    c.chat.completions.create(model="no-such-model", messages=[{"role": "user", "content": "x"}])
except openai.NotFoundError as e:
    out["not_found"] = {"status": e.status_code, "code": e.code, "message": e.message, "headers": lineage(e.response.headers)}
try:
    openai.OpenAI(base_url=os.environ["BASE"], api_key="pyxis-wrong", max_retries=0).models.list()
except openai.AuthenticationError as e:
    out["unauthorized"] = {"status": e.status_code, "code": e.code}
print(json.dumps(out))
"#;

fn main_manifests(llama_model: &Path) -> String {
    format!(
        r#"apiVersion: pyxis.dev/v1alpha1
kind: HardwareClass
metadata: {{name: H100-80GB}}
spec:
  match: {{vendor: nvidia, model: "H100.*80GB"}}
  pricePerGpuHour: 4.10
---
apiVersion: pyxis.dev/v1alpha1
kind: HardwareClass
metadata: {{name: A100-40GB}}
spec:
  match: {{vendor: nvidia, model: "A100.*40GB"}}
  pricePerGpuHour: 1.80
  relativeCapacity: 0.5
---
apiVersion: pyxis.dev/v1alpha1
kind: Tenant
metadata: {{name: research}}
spec: {{weight: 2, latencyBand: real-time}}
---
apiVersion: pyxis.dev/v1alpha1
kind: Tenant
metadata: {{name: metered}}
spec: {{tokensPerMinute: 600}}
---
apiVersion: pyxis.dev/v1alpha1
kind: Tenant
metadata: {{name: trial}}
spec: {{tokensPerMinute: 600, quotaMode: dry-run}}
---
apiVersion: pyxis.dev/v1alpha1
kind: ModelDeployment
metadata: {{name: chat, namespace: research}}
spec:
  model: {{name: smoke/chat, version: "2026-11-01", source: /models/chat, digest: "sha256:{digest}"}}
  runtimes: [{{kind: vllm, env: {{PYXIS_MOCK_TTFT_MS: "5", PYXIS_MOCK_TPOT_MS: "2"}}}}]
  resources: {{gpusPerReplica: 1, hardwareClasses: [H100-80GB]}}
  replicas: {{min: 2, max: 2}}
  sharedWith: [metered, trial]
---
# On the two A100 nodes: one replica on node-b (vLLM), the other on node-c, which has only
# SGLang, whose runtime answers every call 503: calls that reach it are retried on node-b.
apiVersion: pyxis.dev/v1alpha1
kind: ModelDeployment
metadata: {{name: flaky, namespace: research}}
spec:
  model: {{name: smoke/flaky, version: "1", source: /models/flaky}}
  runtimes:
    - {{kind: vllm}}
    - {{kind: sglang, env: {{PYXIS_MOCK_FAIL_STATUS: "503"}}}}
  resources: {{gpusPerReplica: 1, hardwareClasses: [A100-40GB]}}
  replicas: {{min: 2, max: 2}}
  routing: prefix-affinity
---
apiVersion: pyxis.dev/v1alpha1
kind: ModelDeployment
metadata: {{name: smol, namespace: research}}
spec:
  model: {{name: smollm2, version: "q4_1", source: "{model}"}}
  runtimes: [{{kind: llama-cpp, args: ["-c", "512", "-t", "1"]}}]
  resources: {{gpusPerReplica: 0}}
  replicas: {{min: 1, max: 1}}
  readinessTimeout: 120s
"#,
        model = llama_model.display(),
        digest = CHAT_DIGEST,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 3)]
async fn the_openai_sdk_gets_lineage_and_every_call_is_audited() {
    let (llama, model) = llama_server();
    let (otlp, spans) = otlp_receiver();
    let fleet = Fleet::start(
        23000,
        vec![
            NodeSpec {
                name: "node-a",
                simulate: "2xH100-80GB",
                runtimes: vec![
                    ("vllm".into(), mock("vllm")),
                    ("llama-cpp".into(), llama.display().to_string()),
                ],
            },
            NodeSpec::vllm("node-b", "1xA100-40GB"),
            NodeSpec {
                name: "node-c",
                simulate: "1xA100-40GB",
                runtimes: vec![("sglang".into(), mock("sglang"))],
            },
        ],
        |config| config.gateway.otlp_endpoint = Some(otlp.clone()),
    )
    .await;
    fleet.apply(&main_manifests(&model));
    let key = fleet.key("research");
    let chat = fleet.ready("chat", 2).await;
    fleet.ready("smol", 1).await;
    fleet.ready("flaky", 2).await;
    let replicas: BTreeMap<String, serde_json::Value> = fleet
        .replicas()
        .into_iter()
        .map(|r| (r["name"].as_str().unwrap().to_string(), r))
        .collect();

    // 1. The official SDK, streaming and not, against mock vLLM and real llama.cpp.
    let script = fleet.dir.path().join("sdk.py");
    std::fs::write(&script, SDK_SCRIPT).unwrap();
    let out = Command::new("python3")
        .arg(&script)
        .args(["chat", "smol"])
        .env("BASE", format!("{}/v1", fleet.gateway()))
        .env("KEY", &key)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "the OpenAI SDK script failed (pip install openai; .ci/run does):\n{}\n{stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
    let sdk: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    let calls = sdk["calls"].as_array().unwrap();
    assert_eq!(calls.len(), 6, "{sdk}");
    for call in calls {
        let h = &call["headers"];
        for name in LINEAGE {
            assert!(h[name].is_string() && h[name] != "-", "{name} missing: {call}");
        }
        assert_eq!(h["x-pyxis-tenant"], "research", "{call}");
        let deployment = call["model"].as_str().unwrap();
        assert_eq!(h["x-pyxis-deployment"], deployment, "{call}");
        let node = h["x-pyxis-node"].as_str().unwrap();
        let runtime = h["x-pyxis-runtime"].as_str().unwrap();
        if deployment == "chat" {
            assert_eq!(h["x-pyxis-model-version"], "2026-11-01");
            assert!(runtime.starts_with("vllm/"), "{call}");
            assert_eq!(h["x-pyxis-hardware-class"], "H100-80GB");
            assert!(chat.iter().any(|r| r["node"] == node), "{node} runs no chat replica");
        } else {
            assert_eq!(h["x-pyxis-model-version"], "q4_1");
            assert!(runtime.starts_with("llama-cpp/"), "{call}");
            assert_eq!(h["x-pyxis-hardware-class"], "cpu");
            assert_eq!(node, "node-a");
        }
        if call["stream"] == true {
            assert!(call["chunks"].as_u64().unwrap() > 1, "streamed in chunks: {call}");
        }
    }
    assert!(
        calls
            .iter()
            .all(|c| c.get("text").is_none_or(|t| !t.as_str().unwrap_or("").is_empty())),
        "every call answered text: {sdk}"
    );
    assert_eq!(sdk["models"], serde_json::json!(["chat", "flaky", "smol"]), "{sdk}");
    assert_eq!(sdk["not_found"]["status"], 404, "{sdk}");
    assert_eq!(sdk["not_found"]["code"], "model_not_found", "{sdk}");
    assert_eq!(sdk["not_found"]["headers"]["x-pyxis-tenant"], "research", "{sdk}");
    assert_eq!(sdk["not_found"]["headers"]["x-pyxis-deployment"], "-", "{sdk}");
    assert_eq!(sdk["unauthorized"]["status"], 401, "{sdk}");

    // 2. Every call has its audit record with the lineage the client saw.
    let records = eventually("7 audit records", SLOW, || {
        let r = fleet.audit("tenant=research");
        (r.len() == 7).then(|| r.clone()).ok_or_else(|| format!("{r:#?}"))
    })
    .await;
    for call in calls {
        let h = &call["headers"];
        let id = h["x-pyxis-request-id"].as_str().unwrap();
        let record = records
            .iter()
            .find(|r| r["request_id"] == id)
            .unwrap_or_else(|| panic!("no audit record for {id}: {records:#?}"));
        assert_eq!(record["status"], 200);
        assert_eq!(record["deployment"], h["x-pyxis-deployment"]);
        assert_eq!(record["model_version"], h["x-pyxis-model-version"]);
        assert_eq!(
            format!(
                "{}/{}",
                record["runtime_kind"].as_str().unwrap(),
                record["runtime_version"].as_str().unwrap()
            ),
            h["x-pyxis-runtime"].as_str().unwrap()
        );
        assert_eq!(record["hardware_class"], h["x-pyxis-hardware-class"]);
        assert_eq!(record["node"], h["x-pyxis-node"]);
        assert_eq!(record["key_id"].as_str().unwrap().len(), 8, "{record}");
        assert_eq!(record["trace_id"].as_str().unwrap().len(), 32, "{record}");
        let serving: Vec<&serde_json::Value> = replicas
            .values()
            .filter(|r| r["node"] == record["node"] && r["deployment"] == record["deployment"])
            .collect();
        assert!(
            serving.iter().any(|r| r["gpus"] == record["gpus"]),
            "audited GPUs are the serving replica's: {record} vs {serving:?}"
        );
        if record["deployment"] == "chat" {
            assert_eq!(record["model_digest"], format!("sha256:{CHAT_DIGEST}"), "{record}");
            let gpus = record["gpus"].as_array().unwrap();
            assert!(
                gpus.len() == 1 && gpus[0].as_str().unwrap().starts_with("SIM-"),
                "{record}"
            );
        }
        if call.get("dims").is_none() {
            assert!(record["completion_tokens"].as_u64().unwrap() > 0, "{record}");
        }
    }
    let missing = records.iter().find(|r| r["status"] == 404).unwrap();
    assert_eq!(missing["model"], "no-such-model");

    // 3. A replica that answers 503 before any byte: the call is retried on the other.
    let retries_before = metric(&fleet.metrics(), "pyxis_gateway_retries_total");
    for i in 0..16 {
        let body = serde_json::json!({"model": "flaky", "max_tokens": 2,
            "messages": [{"role": "user", "content": format!("prompt number {i} with its own prefix")}]});
        let r = fleet.call(&key, "/v1/chat/completions", &body, &[]);
        assert_eq!(r.status, 200, "{}", r.body);
        assert_eq!(r.header("x-pyxis-node"), Some("node-b"), "the healthy replica answered");
    }
    let retried = metric(&fleet.metrics(), "pyxis_gateway_retries_total") - retries_before;
    assert!(
        retried >= 1.0,
        "some calls reached the failing replica first and were retried"
    );

    // 4. Token budgets: 600 tokens a minute; a call asks for up to 400.
    let body = serde_json::json!({"model": "research/chat", "max_tokens": 400,
        "messages": [{"role": "user", "content": "hi"}]});
    let metered = fleet.key("metered");
    let first = fleet.call(&metered, "/v1/chat/completions", &body, &[]);
    assert_eq!(first.status, 200, "{}", first.body);
    assert_eq!(first.header("x-pyxis-tenant"), Some("metered"));
    assert_eq!(first.header("x-pyxis-deployment"), Some("research/chat"));
    let mut big = body.clone();
    big["max_tokens"] = serde_json::json!(590);
    let refused = fleet.call(&metered, "/v1/chat/completions", &big, &[]);
    assert_eq!(refused.status, 429, "{}", refused.body);
    let error: serde_json::Value = serde_json::from_str(&refused.body).unwrap();
    assert_eq!(error["error"]["code"], "rate_limit_exceeded", "{error}");
    let retry_after: u64 = refused.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=60).contains(&retry_after), "{retry_after}");
    for name in LINEAGE {
        assert!(refused.header(name).is_some(), "{name} on a 429");
    }
    let trial = fleet.key("trial");
    for _ in 0..2 {
        let r = fleet.call(&trial, "/v1/chat/completions", &big, &[]);
        assert_eq!(r.status, 200, "dry-run tenants are served: {}", r.body);
    }
    let metrics = fleet.metrics();
    assert!(
        metric(
            &metrics,
            "pyxis_gateway_budget_rejections_total{tenant=\"metered\",enforced=\"true\"}"
        ) >= 1.0,
        "{metrics}"
    );
    assert!(
        metric(
            &metrics,
            "pyxis_gateway_budget_rejections_total{tenant=\"trial\",enforced=\"false\"}"
        ) >= 1.0
    );
    assert!(metrics.contains("pyxis_gateway_time_to_first_token_seconds_bucket{tenant=\"research\""));
    assert!(metric(&metrics, "pyxis_audit_records_written_total") >= 7.0);

    // 5. Traces: the caller's trace continues through the gateway to the runtime.
    let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let traced = fleet.call(
        &key,
        "/v1/chat/completions",
        &serde_json::json!({"model": "chat", "max_tokens": 3, "messages": [{"role": "user", "content": "trace me"}]}),
        &[("traceparent", &format!("00-{trace}-00f067aa0ba902b7-01"))],
    );
    assert_eq!(traced.status, 200);
    let request_id = traced.header("x-pyxis-request-id").unwrap().to_string();
    let spans = eventually("the call's spans at the OTLP receiver", SLOW, || {
        let got: Vec<serde_json::Value> = spans
            .lock()
            .unwrap()
            .iter()
            .flat_map(|body| body["resourceSpans"].as_array().cloned().unwrap_or_default())
            .flat_map(|rs| rs["scopeSpans"].as_array().cloned().unwrap_or_default())
            .flat_map(|ss| ss["spans"].as_array().cloned().unwrap_or_default())
            .filter(|s| s["traceId"] == trace)
            .collect();
        (got.len() >= 3).then(|| got.clone()).ok_or_else(|| format!("{got:#?}"))
    })
    .await;
    let attr = |span: &serde_json::Value, key: &str| {
        span["attributes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|a| a["key"] == key)
            .map(|a| a["value"].clone())
    };
    let server = spans.iter().find(|s| s["kind"] == 2).unwrap();
    assert_eq!(server["parentSpanId"], "00f067aa0ba902b7", "{server}");
    assert_eq!(
        attr(server, "gen_ai.request.model").unwrap()["stringValue"],
        "smoke/chat"
    );
    assert_eq!(attr(server, "gen_ai.operation.name").unwrap()["stringValue"], "chat");
    assert!(attr(server, "gen_ai.usage.output_tokens").is_some(), "{server}");
    assert_eq!(
        attr(server, "pyxis.request_id").unwrap()["stringValue"],
        request_id.as_str()
    );
    let client = spans.iter().find(|s| s["kind"] == 3).unwrap();
    assert_eq!(client["parentSpanId"], server["spanId"]);
    assert!(spans.iter().any(|s| s["name"] == "route"), "{spans:#?}");

    // 6. `pyxis audit` and `pyxis audit verify`; then the file is tampered with directly.
    let (code, table, err) = fleet.cli(&["audit", "--tenant", "research", "--limit", "3"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        table.contains("H100-80GB") && table.contains("smoke/chat@2026-11-01"),
        "{table}"
    );
    let (code, text, err) = fleet.cli(&["audit", "verify"]);
    assert_eq!(code, 0, "{text}{err}");
    assert!(text.contains("intact"), "{text}");
    let db = fleet.coordinator().shared.config.data_dir.join("audit.db");
    let tamper = |sql: &str| {
        let conn = rusqlite::Connection::open(&db).unwrap();
        conn.busy_timeout(Duration::from_secs(10)).unwrap();
        conn.execute_batch(&format!(
            "DROP TRIGGER IF EXISTS audit_no_update; DROP TRIGGER IF EXISTS audit_no_delete; {sql}"
        ))
        .unwrap();
    };
    tamper("UPDATE audit SET completion_tokens = completion_tokens + 1000 WHERE seq = 2;");
    tamper("DELETE FROM audit WHERE seq = 4;");
    tamper(
        "UPDATE audit SET seq = -1 WHERE seq = 6; UPDATE audit SET seq = 6 WHERE seq = 7; UPDATE audit SET seq = 7 WHERE seq = -1;",
    );
    let (code, text, err) = fleet.cli(&["audit", "verify", "-o", "json"]);
    assert_eq!(code, 1, "a broken chain fails: {text}{err}");
    let report: serde_json::Value = serde_json::from_str(&text).unwrap();
    let kinds: Vec<(u64, String)> = report["problems"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p["seq"].as_u64().unwrap(), p["kind"].as_str().unwrap().to_string()))
        .collect();
    assert!(kinds.contains(&(2, "altered".into())), "{report}");
    assert!(kinds.contains(&(4, "removed".into())), "{report}");
    assert!(
        kinds.iter().any(|(s, k)| (*s == 6 || *s == 7) && k == "reordered"),
        "{report}"
    );

    // 7. Usage joins the gateway's tokens with GPU time.
    let usage = fleet.admin("GET", "/api/v1/usage?since=1h", None);
    let research = usage["tenants"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["tenant"] == "research")
        .unwrap()
        .clone();
    assert!(research["calls"].as_u64().unwrap() >= 7, "{usage}");
    assert!(research["completion_tokens"].as_u64().unwrap() > 0, "{usage}");
    fleet.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 3)]
async fn queued_calls_go_by_band_expire_at_their_deadline_and_scale_from_zero() {
    let fleet = Fleet::start(23400, vec![NodeSpec::vllm("node-q", "3xH100-80GB")], |config| {
        config.gateway.scale_to_zero_after = Duration::from_secs(3)
    })
    .await;
    fleet.apply(
        r#"apiVersion: pyxis.dev/v1alpha1
kind: Tenant
metadata: {name: platform}
spec: {latencyBand: bulk}
---
apiVersion: pyxis.dev/v1alpha1
kind: Tenant
metadata: {name: rt}
spec: {latencyBand: real-time}
---
apiVersion: pyxis.dev/v1alpha1
kind: Tenant
metadata: {name: bulk}
spec: {latencyBand: bulk}
---
apiVersion: pyxis.dev/v1alpha1
kind: Tenant
metadata: {name: batch}
spec: {latencyBand: batch}
---
apiVersion: pyxis.dev/v1alpha1
kind: ModelDeployment
metadata: {name: busy, namespace: platform}
spec:
  model: {name: busy, version: "1", source: /models/busy}
  runtimes: [{kind: vllm, env: {PYXIS_MOCK_TTFT_MS: "600", PYXIS_MOCK_TPOT_MS: "1"}}]
  resources: {gpusPerReplica: 1}
  replicas: {min: 1, max: 1}
  maxConcurrentRequests: 1
  queueTimeout: 60s
  sharedWith: ["*"]
---
apiVersion: pyxis.dev/v1alpha1
kind: ModelDeployment
metadata: {name: tight, namespace: platform}
spec:
  model: {name: tight, version: "1", source: /models/tight}
  runtimes: [{kind: vllm, env: {PYXIS_MOCK_TTFT_MS: "4000"}}]
  resources: {gpusPerReplica: 1}
  replicas: {min: 1, max: 1}
  maxConcurrentRequests: 1
  queueTimeout: 1s
---
apiVersion: pyxis.dev/v1alpha1
kind: ModelDeployment
metadata: {name: lazy, namespace: platform}
spec:
  model: {name: lazy, version: "1", source: /models/lazy}
  runtimes: [{kind: vllm, env: {PYXIS_MOCK_STARTUP_MS: "500"}}]
  resources: {gpusPerReplica: 1}
  replicas: {min: 0, max: 1}
  scalePolicy: warm-zero
"#,
    );
    fleet.ready("busy", 1).await;
    fleet.ready("tight", 1).await;
    let keys: BTreeMap<&str, String> = ["platform", "rt", "bulk", "batch"]
        .into_iter()
        .map(|t| (t, fleet.key(t)))
        .collect();
    let gateway = fleet.gateway();
    let body =
        serde_json::json!({"model": "platform/busy", "max_tokens": 2, "messages": [{"role": "user", "content": "q"}]});
    let spawn_call = |tenant: &'static str| {
        let key = keys[tenant].clone();
        let url = format!("{gateway}/v1/chat/completions");
        let body = body.to_string();
        std::thread::spawn(move || {
            let auth = format!("Bearer {key}");
            let r = request("POST", &url, &[("Authorization", &auth)], Some(&body));
            (
                tenant,
                r.status,
                r.header("x-pyxis-request-id").unwrap_or("").to_string(),
            )
        })
    };
    let queue_depth = || {
        metric(
            &fleet.metrics(),
            "pyxis_gateway_queue_depth{tenant=\"platform\",deployment=\"busy\"}",
        )
    };

    // 1. Band order: one call occupies the replica; batch, bulk, real-time queue behind it.
    let blocker = spawn_call("platform");
    eventually("the first call in flight", SLOW, || {
        assert!(
            !blocker.is_finished(),
            "the first call ended before it was seen in flight"
        );
        let m = fleet.metrics();
        (metric(&m, "pyxis_gateway_in_flight") >= 1.0).then_some(()).ok_or(m)
    })
    .await;
    let mut waiting = Vec::new();
    for (i, tenant) in ["batch", "bulk", "rt"].into_iter().enumerate() {
        waiting.push(spawn_call(tenant));
        eventually(&format!("{tenant}'s call queued"), SLOW, || {
            let depth = queue_depth();
            (depth >= (i + 1) as f64).then_some(()).ok_or(format!("depth {depth}"))
        })
        .await;
    }
    let (_, status, _) = blocker.join().unwrap();
    assert_eq!(status, 200);
    let mut ids = BTreeMap::new();
    for w in waiting {
        let (tenant, status, id) = w.join().unwrap();
        assert_eq!(status, 200, "{tenant}");
        ids.insert(id, tenant);
    }
    // Audit records are written as calls finish; one replica at a time: finish order is
    // dispatch order.
    let served: Vec<&str> = eventually("the queued calls audited", SLOW, || {
        let records = fleet.audit("limit=20");
        let order: Vec<&str> = records
            .iter()
            .rev()
            .filter_map(|r| ids.get(r["request_id"].as_str().unwrap()).copied())
            .collect();
        (order.len() == 3)
            .then(|| order.clone())
            .ok_or_else(|| format!("{order:?}"))
    })
    .await;
    assert_eq!(served, ["rt", "bulk", "batch"], "real-time, then bulk, then batch");

    // 2. Queue deadline: `tight` answers in 4 s and waits at most 1 s in its queue.
    let tight = serde_json::json!({"model": "tight", "max_tokens": 1, "messages": [{"role": "user", "content": "t"}]});
    let key = keys["platform"].clone();
    let url = format!("{gateway}/v1/chat/completions");
    let holder = {
        let (key, url, body) = (key.clone(), url.clone(), tight.to_string());
        std::thread::spawn(move || {
            request(
                "POST",
                &url,
                &[("Authorization", &format!("Bearer {key}"))],
                Some(&body),
            )
            .status
        })
    };
    eventually("tight's first call in flight", SLOW, || {
        let m = fleet.metrics();
        (metric(&m, "pyxis_gateway_in_flight") >= 1.0).then_some(()).ok_or(m)
    })
    .await;
    let started = Instant::now();
    let late = fleet.call(&key, "/v1/chat/completions", &tight, &[]);
    let waited = started.elapsed();
    assert_eq!(late.status, 503, "{}", late.body);
    assert!(late.body.contains("queue_timeout"), "{}", late.body);
    assert!(late.header("retry-after").is_some());
    assert!(
        waited >= Duration::from_millis(900) && waited < Duration::from_secs(4),
        "answered at the 1 s deadline, not when the replica freed: {waited:?}"
    );
    assert_eq!(holder.join().unwrap(), 200);

    // 3. Scale from zero: `lazy` is idle (3 s), so it has no replica; a call starts one.
    eventually("lazy scaled to zero", SLOW, || {
        let lazy: Vec<_> = fleet
            .replicas()
            .into_iter()
            .filter(|r| r["deployment"] == "lazy")
            .collect();
        lazy.is_empty().then_some(()).ok_or_else(|| format!("{lazy:#?}"))
    })
    .await;
    let woke = fleet.call(
        &key,
        "/v1/chat/completions",
        &serde_json::json!({"model": "lazy", "max_tokens": 2, "messages": [{"role": "user", "content": "wake up"}]}),
        &[],
    );
    assert_eq!(woke.status, 200, "{}", woke.body);
    assert_eq!(woke.header("x-pyxis-deployment"), Some("lazy"));
    assert_eq!(woke.header("x-pyxis-node"), Some("node-q"));
    // Idle again for the window: back to zero.
    eventually("lazy scaled back to zero", SLOW, || {
        let lazy: Vec<_> = fleet
            .replicas()
            .into_iter()
            .filter(|r| r["deployment"] == "lazy")
            .collect();
        lazy.is_empty().then_some(()).ok_or_else(|| format!("{lazy:#?}"))
    })
    .await;
    fleet.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 3)]
async fn audit_required_refuses_and_best_effort_serves_when_the_log_cannot_be_written() {
    for (i, best_effort) in [false, true].into_iter().enumerate() {
        let fleet = Fleet::start(
            23700 + 100 * i as u16,
            vec![NodeSpec::vllm("node-x", "1xH100-80GB")],
            |config| {
                if best_effort {
                    config.gateway.audit_mode = pyxis_coordinator::audit::AuditMode::BestEffort;
                }
            },
        )
        .await;
        fleet.apply(
            r#"apiVersion: pyxis.dev/v1alpha1
kind: Tenant
metadata: {name: acme}
spec: {}
---
apiVersion: pyxis.dev/v1alpha1
kind: ModelDeployment
metadata: {name: m, namespace: acme}
spec:
  model: {name: m, version: "1", source: /models/m}
  runtimes: [{kind: vllm}]
  resources: {gpusPerReplica: 1}
"#,
        );
        fleet.ready("m", 1).await;
        let key = fleet.key("acme");
        let body = serde_json::json!({"model": "m", "max_tokens": 2, "messages": [{"role": "user", "content": "x"}]});
        let first = fleet.call(&key, "/v1/chat/completions", &body, &[]);
        assert_eq!(first.status, 200, "{}", first.body);
        // Another process holds the audit database's write lock: writes fail once the
        // writer's busy timeout runs out.
        let db = fleet.coordinator().shared.config.data_dir.join("audit.db");
        let lock = rusqlite::Connection::open(&db).unwrap();
        lock.execute_batch("BEGIN EXCLUSIVE;").unwrap();
        let outcome = eventually("the gateway to notice the audit log cannot be written", SLOW, || {
            let r = fleet.call(&key, "/v1/chat/completions", &body, &[]);
            let m = fleet.metrics();
            let unhealthy = metric(&m, "pyxis_audit_healthy") == 0.0;
            if best_effort {
                assert_eq!(r.status, 200, "best-effort always serves: {}", r.body);
                (unhealthy && metric(&m, "pyxis_audit_records_dropped_total") >= 1.0)
                    .then_some(r)
                    .ok_or(m)
            } else if r.status == 503 {
                Ok(r)
            } else {
                assert_eq!(r.status, 200, "{}", r.body);
                Err(m)
            }
        })
        .await;
        if !best_effort {
            assert!(outcome.body.contains("audit_unavailable"), "{}", outcome.body);
            for name in LINEAGE {
                assert!(outcome.header(name).is_some(), "{name} on a refusal");
            }
            assert!(metric(&fleet.metrics(), "pyxis_audit_refusals_total") >= 1.0);
        }
        // The lock is released: required mode serves again once the held batch is written.
        lock.execute_batch("ROLLBACK;").unwrap();
        drop(lock);
        eventually("calls served again", SLOW, || {
            let r = fleet.call(&key, "/v1/chat/completions", &body, &[]);
            (r.status == 200).then_some(()).ok_or(r.body)
        })
        .await;
        fleet.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 3)]
async fn kv_aware_and_latency_budget_route_by_what_they_measure() {
    let fleet = Fleet::start(
        23900,
        vec![
            NodeSpec::vllm("node-k1", "1xH100-80GB"),
            NodeSpec::vllm("node-k2", "1xH100-80GB"),
            NodeSpec::vllm("node-fast", "1xA100-40GB"),
            NodeSpec {
                name: "node-slow",
                simulate: "1xA100-40GB",
                runtimes: vec![("sglang".into(), mock("sglang"))],
            },
        ],
        |_| {},
    )
    .await;
    fleet.apply(
        r#"apiVersion: pyxis.dev/v1alpha1
kind: HardwareClass
metadata: {name: H100-80GB}
spec: {match: {vendor: nvidia, model: "H100.*80GB"}}
---
apiVersion: pyxis.dev/v1alpha1
kind: HardwareClass
metadata: {name: A100-40GB}
spec: {match: {vendor: nvidia, model: "A100.*40GB"}}
---
apiVersion: pyxis.dev/v1alpha1
kind: Tenant
metadata: {name: acme}
spec: {}
---
# KV cache of 1,000 tokens per replica; the agents scrape its use every report.
apiVersion: pyxis.dev/v1alpha1
kind: ModelDeployment
metadata: {name: kv, namespace: acme}
spec:
  model: {name: kv, version: "1", source: /models/kv}
  runtimes: [{kind: vllm, env: {PYXIS_MOCK_KV_CAPACITY_TOKENS: "1000", PYXIS_MOCK_TPOT_MS: "50"}}]
  resources: {gpusPerReplica: 1, hardwareClasses: [H100-80GB]}
  replicas: {min: 2, max: 2}
  routing: kv-aware
---
# One replica on vLLM answers in ~5 ms, the other (SGLang) in ~300 ms; the budget is 100 ms.
apiVersion: pyxis.dev/v1alpha1
kind: ModelDeployment
metadata: {name: timely, namespace: acme}
spec:
  model: {name: timely, version: "1", source: /models/timely}
  runtimes:
    - {kind: vllm, env: {PYXIS_MOCK_TTFT_MS: "5"}}
    - {kind: sglang, env: {PYXIS_MOCK_TTFT_MS: "300"}}
  resources: {gpusPerReplica: 1, hardwareClasses: [A100-40GB]}
  replicas: {min: 2, max: 2}
  latencyBudget: {ttftMs: 100}
  routing: latency-budget
"#,
    );
    let kv = fleet.ready("kv", 2).await;
    fleet.ready("timely", 2).await;
    let key = fleet.key("acme");

    // KV-aware: load the gateway cannot see (callers going straight to one replica's
    // runtime) fills that replica's KV cache. Without KV data the tie between two idle
    // replicas goes to the first by name: load that one, so only KV-awareness sends the
    // gateway's calls to the other.
    let mut kv = kv;
    kv.sort_by(|a, b| a["name"].as_str().cmp(&b["name"].as_str()));
    let (loaded, other) = (kv[0].clone(), kv[1].clone());
    let endpoint = loaded["endpoint"].as_str().unwrap().to_string();
    let long_prompt = "word ".repeat(450);
    let direct: Vec<_> = (0..2)
        .map(|_| {
            let url = format!("{endpoint}/chat/completions");
            // 200 tokens at 50 ms: in flight for 10 s, long enough on a slow machine.
            let body = serde_json::json!({"model": "kv", "max_tokens": 200,
                "messages": [{"role": "user", "content": long_prompt}]})
            .to_string();
            std::thread::spawn(move || request("POST", &url, &[], Some(&body)).status)
        })
        .collect();
    let body = serde_json::json!({"model": "kv", "max_tokens": 1, "messages": [{"role": "user", "content": "short"}]});
    let other_node = other["node"].as_str().unwrap().to_string();
    eventually("the loaded replica's KV use reported by its agent", SLOW, || {
        let usage = fleet
            .replicas()
            .into_iter()
            .find(|r| r["name"] == loaded["name"])
            .and_then(|r| r["metrics"]["kv_cache_usage_ratio"].as_f64())
            .unwrap_or(0.0);
        (usage >= 0.5).then_some(()).ok_or(format!("{usage}"))
    })
    .await;
    // Polled, not slept: the agent scrapes the KV use, reports it, and the gateway's view
    // follows; until then calls go to the loaded replica.
    eventually("a call routed away from the full KV cache", SLOW, || {
        let r = fleet.call(&key, "/v1/chat/completions", &body, &[]);
        assert_eq!(r.status, 200, "{}", r.body);
        let node = r.header("x-pyxis-node").unwrap_or("").to_string();
        (node == other_node).then_some(()).ok_or(node)
    })
    .await;
    for _ in 0..6 {
        let r = fleet.call(&key, "/v1/chat/completions", &body, &[]);
        assert_eq!(r.status, 200, "{}", r.body);
        if r.header("x-pyxis-node") != Some(other_node.as_str()) {
            let seen: Vec<(String, serde_json::Value)> = fleet
                .replicas()
                .into_iter()
                .filter(|r| r["deployment"] == "kv")
                .map(|r| (r["node"].as_str().unwrap_or("").to_string(), r["metrics"].clone()))
                .collect();
            panic!(
                "a call went to {:?}, not the replica with free KV cache: {seen:?}",
                r.header("x-pyxis-node")
            );
        }
    }
    let usage = fleet
        .replicas()
        .into_iter()
        .find(|r| r["name"] == loaded["name"])
        .and_then(|r| r["metrics"]["kv_cache_usage_ratio"].as_f64())
        .unwrap_or(0.0);
    assert!(usage >= 0.5, "the loaded replica reports its KV use: {usage}");

    // Latency budget: once both replicas have been measured, calls go to the one predicted
    // within 100 ms.
    let body = serde_json::json!({"model": "timely", "max_tokens": 1, "messages": [{"role": "user", "content": "t"}]});
    let mut nodes = Vec::new();
    for _ in 0..12 {
        let r = fleet.call(&key, "/v1/chat/completions", &body, &[]);
        assert_eq!(r.status, 200, "{}", r.body);
        nodes.push(r.header("x-pyxis-node").unwrap().to_string());
    }
    let last: Vec<&str> = nodes.iter().rev().take(6).map(String::as_str).collect();
    assert!(
        last.iter().all(|n| *n == "node-fast"),
        "the fast replica serves once measured: {nodes:?}"
    );
    // The calls straight to the runtime were served too (10 s of generation each).
    for d in direct {
        assert_eq!(d.join().unwrap(), 200);
    }
    fleet.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 3)]
async fn failures_are_answered_and_audited_for_what_they_are() {
    let fleet = Fleet::start(24400, vec![NodeSpec::vllm("node-s", "2xH100-80GB")], |config| {
        config.gateway.upstream_timeout = Duration::from_millis(500)
    })
    .await;
    fleet.apply(
        r#"apiVersion: pyxis.dev/v1alpha1
kind: Tenant
metadata: {name: acme}
spec: {}
---
# Answers after 20 s: nothing comes back within the gateway's upstream timeout.
apiVersion: pyxis.dev/v1alpha1
kind: ModelDeployment
metadata: {name: mute, namespace: acme}
spec:
  model: {name: mute, version: "1", source: /models/mute}
  runtimes: [{kind: vllm, env: {PYXIS_MOCK_TTFT_MS: "20000"}}]
  resources: {gpusPerReplica: 1}
---
# Streams its first token at once, then 20 s per token.
apiVersion: pyxis.dev/v1alpha1
kind: ModelDeployment
metadata: {name: stall, namespace: acme}
spec:
  model: {name: stall, version: "1", source: /models/stall}
  runtimes: [{kind: vllm, env: {PYXIS_MOCK_TTFT_MS: "0", PYXIS_MOCK_TPOT_MS: "20000"}}]
  resources: {gpusPerReplica: 1}
"#,
    );
    fleet.ready("mute", 1).await;
    fleet.ready("stall", 1).await;
    let key = fleet.key("acme");

    // Nothing before the headers: 504 with lineage, long before the replica would answer.
    let started = Instant::now();
    let body = serde_json::json!({"model": "mute", "max_tokens": 2, "messages": [{"role": "user", "content": "x"}]});
    let mute = fleet.call(&key, "/v1/chat/completions", &body, &[]);
    assert_eq!(mute.status, 504, "{}", mute.body);
    assert!(started.elapsed() < Duration::from_secs(10), "{:?}", started.elapsed());
    let error: serde_json::Value = serde_json::from_str(&mute.body).unwrap();
    assert_eq!(error["error"]["code"], "upstream_timeout", "{error}");
    assert!(
        error["error"]["message"]
            .as_str()
            .unwrap()
            .contains("gateway.upstream_timeout"),
        "{error}"
    );
    for name in LINEAGE {
        assert!(
            mute.header(name).is_some_and(|v| v != "-"),
            "{name}: {:?}",
            mute.headers
        );
    }

    // Silence in the middle of a stream: the first token reaches the client, then the
    // answer is cut off (no [DONE]) instead of holding the connection for 20 s a token.
    let started = Instant::now();
    let body = serde_json::json!({"model": "stall", "stream": true, "max_tokens": 3, "messages": [{"role": "user", "content": "one two three"}]});
    let text = body.to_string();
    let gateway = fleet.gateway();
    let host = gateway.strip_prefix("http://").unwrap();
    let mut stream = std::net::TcpStream::connect(host).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    write!(
        stream,
        "POST /v1/chat/completions HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {key}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{text}",
        text.len()
    )
    .unwrap();
    let mut raw = Vec::new();
    let _ = stream.read_to_end(&mut raw); // a reset is one way to be cut off
    let raw = String::from_utf8_lossy(&raw);
    assert!(started.elapsed() < Duration::from_secs(10), "{:?}", started.elapsed());
    assert!(raw.starts_with("HTTP/1.1 200"), "{raw}");
    assert!(raw.contains("\"content\""), "the first token arrived: {raw}");
    assert!(!raw.contains("[DONE]"), "the stream was cut off: {raw}");

    // A bad body for a known deployment is answered and audited against that deployment.
    let bad = serde_json::json!({"model": "mute", "max_tokens": -1, "messages": [{"role": "user", "content": "x"}]});
    let bad = fleet.call(&key, "/v1/chat/completions", &bad, &[]);
    assert_eq!(bad.status, 400, "{}", bad.body);
    assert!(
        bad.body.contains("'max_tokens' must be a non-negative integer"),
        "{}",
        bad.body
    );
    assert_eq!(bad.header("x-pyxis-deployment"), Some("mute"));

    // A declared body over 32 MiB is refused before it is sent; a client that leaves while
    // sending its body is recorded as 499, not as a bad request.
    let raw_call = |head: &str, body: &[u8]| {
        let mut stream = std::net::TcpStream::connect(host).unwrap();
        stream.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        write!(
            stream,
            "POST /v1/chat/completions HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {key}\r\nContent-Type: application/json\r\n{head}\r\n"
        )
        .unwrap();
        stream.write_all(body).unwrap();
        stream
    };
    let mut huge = raw_call("Content-Length: 99999999999\r\n", b"");
    let mut answer = String::new();
    let _ = huge.read_to_string(&mut answer);
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    let gone = raw_call("Content-Length: 100\r\n", b"{\"");
    gone.shutdown(std::net::Shutdown::Both).unwrap();
    drop(gone);

    // Every one is in the audit log for what it was, and the failures are counted.
    let records = eventually("the calls audited", SLOW, || {
        let records = fleet.audit("tenant=acme");
        let statuses: Vec<u64> = records.iter().map(|r| r["status"].as_u64().unwrap()).collect();
        [504, 502, 400, 413, 499]
            .iter()
            .all(|s| statuses.contains(s))
            .then(|| records.clone())
            .ok_or(format!("{records:#?}"))
    })
    .await;
    let invalid = records.iter().find(|r| r["status"] == 400).unwrap();
    assert_eq!(invalid["deployment"], "mute", "{invalid}");
    assert_eq!(invalid["model"], "mute", "{invalid}");
    // `pyxis audit --model` takes the deployment's name.
    let by_name = fleet.audit("tenant=acme&model=mute");
    assert!(
        by_name.iter().any(|r| r["status"] == 504) && by_name.iter().any(|r| r["status"] == 400),
        "{by_name:#?}"
    );
    let audited = |model: &str, status: u64| records.iter().any(|r| r["model"] == model && r["status"] == status);
    assert!(audited("mute", 504), "{records:#?}");
    assert!(audited("stall", 502), "{records:#?}");
    // Every error answer is counted once by its code, whoever made it.
    let metrics = fleet.metrics();
    for (series, want) in [
        ("tenant=\"acme\",model=\"mute\",code=\"upstream_timeout\"", 1.0),
        ("tenant=\"acme\",model=\"stall\",code=\"upstream_timeout\"", 1.0),
        ("tenant=\"acme\",model=\"mute\",code=\"invalid_request\"", 1.0),
        ("tenant=\"acme\",model=\"unknown\",code=\"invalid_request\"", 1.0),
        ("tenant=\"acme\",model=\"unknown\",code=\"client_closed_request\"", 1.0),
    ] {
        let name = format!("pyxis_gateway_errors_total{{{series}}}");
        assert_eq!(metric(&metrics, &name), want, "{name}\n{metrics}");
    }
    // One model's listing names its deployment in the lineage.
    let auth = format!("Bearer {key}");
    let one = request(
        "GET",
        &format!("{gateway}/v1/models/mute"),
        &[("Authorization", &auth)],
        None,
    );
    assert_eq!(one.status, 200, "{}", one.body);
    assert_eq!(one.header("x-pyxis-deployment"), Some("mute"));
    assert_eq!(one.header("x-pyxis-model-version"), Some("1"));
    // An unauthenticated model listing is counted too.
    let anonymous = request("GET", &format!("{gateway}/v1/models"), &[], None);
    assert_eq!(anonymous.status, 401);
    assert!(
        metric(
            &fleet.metrics(),
            "pyxis_gateway_errors_total{tenant=\"-\",model=\"unknown\",code=\"invalid_api_key\"}"
        ) >= 1.0
    );
    fleet.stop().await;
}
