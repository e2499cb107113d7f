//! The `pyxis` operator CLI: a thin, kubectl-like client of the admin API.
//!
//! Output contract: `-o json` and `-o yaml` print exactly the API's documented shapes on
//! stdout; tables are for humans; diagnostics go to stderr. Exit codes: 0 ok, 1 the
//! request failed (unreachable server, refused token, not found), 2 usage error.

use std::{io::Write, path::PathBuf, time::Duration};

use clap::{Parser, Subcommand, ValueEnum};
use serde::{de::DeserializeOwned, Serialize};

use crate::api_types::{
    AcceleratorView, ErrorBody, EventView, List, NodeDetail, NodeView, ProblemView, ReplicaDetail, ReplicaView,
    TokenRequest, TokenResponse,
};

mod bench;
mod objects;

/// Default admin API URL.
pub const DEFAULT_SERVER: &str = "http://127.0.0.1:7080";

/// Pyxis operator CLI.
///
/// Talks to the coordinator's admin API. The admin token is written by the coordinator to
/// DATA_DIR/admin-token on first start; pass it with --token or PYXIS_TOKEN (when neither
/// is set, /var/lib/pyxis-coordinator/admin-token is read if this user can).
///
/// Examples:
///   pyxis token create --ttl 2h --uses 10
///   pyxis get nodes -o wide
///   pyxis describe node gpu-node-1
///   pyxis node drain gpu-node-1
///   pyxis apply -f examples/manifests/
///   pyxis get deployments -A
///   pyxis explain deployment qwen-7b -n research
///   pyxis usage --since 7d
///   pyxis apikey create --tenant research
///   pyxis audit --tenant research --since 1h
///   pyxis audit verify
#[derive(Debug, Parser)]
#[command(name = "pyxis", version, verbatim_doc_comment)]
pub struct Cli {
    /// Admin API base URL.
    #[arg(long, global = true, env = "PYXIS_SERVER", default_value = DEFAULT_SERVER)]
    pub server: String,
    /// Admin token.
    #[arg(long, global = true, env = "PYXIS_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Output formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    /// Aligned columns for humans.
    Table,
    /// Table with more columns.
    Wide,
    /// The API's JSON shape.
    Json,
    /// The API's shape as YAML.
    Yaml,
}

/// Commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Join tokens for new agents.
    Token {
        /// Token action.
        #[command(subcommand)]
        action: TokenAction,
    },
    /// Tenant API keys for the OpenAI-compatible gateway (stored hashed; shown once).
    Apikey {
        /// Key action.
        #[command(subcommand)]
        action: ApiKeyAction,
    },
    /// Throughput and latency of an OpenAI-compatible endpoint: the gateway (broken down
    /// by the runtime, hardware class and node that served each call) or a runtime directly.
    ///
    ///   pyxis bench --base-url http://127.0.0.1:8080/v1 --model qwen-7b --api-key KEY
    ///   pyxis bench --base-url http://gpu-1:8000/v1 --model Qwen/Qwen2.5-7B-Instruct -o md
    ///
    /// Needs no admin token. Exit code 1 when any request failed (the report is printed
    /// first).
    #[command(verbatim_doc_comment)]
    Bench(bench::BenchArgs),
    /// Gateway audit records, newest first; `pyxis audit verify` checks the hash chain.
    #[command(args_conflicts_with_subcommands = true)]
    Audit {
        /// `verify`: check the whole chain (exit code 1 when a record was altered, removed
        /// or reordered).
        #[command(subcommand)]
        action: Option<AuditAction>,
        /// Only this tenant's calls.
        #[arg(long, value_name = "TENANT")]
        tenant: Option<String>,
        /// Only calls to this model: its model name (Qwen/Qwen2.5-7B-Instruct) or its
        /// deployment's (qwen-7b, or OWNER/NAME for a shared one).
        #[arg(long, value_name = "MODEL")]
        model: Option<String>,
        /// Only calls in this window back from now: 15m, 1h, 7d.
        #[arg(long, value_name = "DURATION", value_parser = parse_since, allow_hyphen_values = true)]
        since: Option<String>,
        /// At most this many records (1 or more).
        #[arg(long, value_name = "N", default_value_t = 50, value_parser = parse_limit, allow_hyphen_values = true)]
        limit: usize,
        /// Output format.
        #[arg(short, long, value_enum, default_value = "table")]
        output: Output,
    },
    /// List resources: nodes, replicas, tenants, hardwareclasses, deployments.
    ///
    /// Deployments and replicas belong to tenants: `-n TENANT` shows one tenant's, and
    /// without `-n` every tenant's are listed (as with `-A`), with a TENANT column.
    Get {
        /// Kind to list.
        #[arg(ignore_case = true)]
        kind: GetKind,
        /// Only this one.
        name: Option<String>,
        /// Tenant of namespaced kinds (deployments, replicas); cluster-wide kinds ignore it.
        #[arg(short = 'n', long = "namespace", value_name = "TENANT")]
        namespace: Option<String>,
        /// All tenants: the default for deployments and replicas when -n is absent (wins over
        /// -n); cluster-wide kinds ignore it.
        #[arg(short = 'A', long = "all-tenants")]
        all_tenants: bool,
        /// Output format.
        #[arg(short, long, value_enum, default_value = "table")]
        output: Output,
    },
    /// Show one resource in detail, with its conditions and events.
    ///
    /// A deployment also shows its placements and, when replicas are pending, every node
    /// and why it was not chosen (as `explain deployment` does).
    Describe {
        /// Kind.
        #[arg(ignore_case = true)]
        kind: GetKind,
        /// Name.
        #[arg(value_parser = parse_name)]
        name: String,
        /// Tenant of a deployment (needed only when tenants share the name); cluster-wide
        /// kinds ignore it.
        #[arg(short = 'n', long = "namespace", value_name = "TENANT")]
        namespace: Option<String>,
        /// Output format (table is the human description).
        #[arg(short, long, value_enum, default_value = "table")]
        output: Output,
    },
    /// Create or update objects from manifests (Tenant, HardwareClass, ModelDeployment).
    ///
    /// Every file goes to the coordinator in one request, and the request is applied as a
    /// whole or not at all: when any document has a problem, nothing changes and every
    /// problem is listed with its file, document, object and field path.
    Apply {
        /// A manifest file, a directory (its *.yaml, *.yml and *.json files, not recursive,
        /// in name order; hidden files are skipped) or - for stdin. Repeatable.
        #[arg(short = 'f', long = "filename", value_name = "FILE|DIR|-", required = true)]
        files: Vec<PathBuf>,
        /// Check everything and report what would change; change nothing.
        #[arg(long)]
        dry_run: bool,
        /// Output format.
        #[arg(short, long, value_enum, default_value = "table")]
        output: Output,
    },
    /// Delete resources, by manifest (-f) or by KIND NAME.
    ///
    /// `delete -f FILE|DIR|-` deletes the objects its manifests name, in one request (all
    /// or nothing); `delete KIND NAME` deletes one object. Deleting a node forgets it: its
    /// certificate stops working and its name may join again with a new token (the way
    /// back after `node revoke`). A tenant is deleted only once it has no deployments.
    Delete {
        /// Kind: node, tenant, hardwareclass or deployment.
        #[arg(ignore_case = true, required_unless_present = "files", requires = "name")]
        kind: Option<GetKind>,
        /// Name.
        #[arg(value_parser = parse_name)]
        name: Option<String>,
        /// Delete the objects these manifests name (file, directory or - for stdin, as for
        /// apply; only kind and metadata are read). Repeatable.
        #[arg(
            short = 'f',
            long = "filename",
            value_name = "FILE|DIR|-",
            conflicts_with_all = ["kind", "name", "namespace"]
        )]
        files: Vec<PathBuf>,
        /// Tenant of a deployment (needed only when tenants share the name).
        #[arg(short = 'n', long = "namespace", value_name = "TENANT")]
        namespace: Option<String>,
        /// Report what would be deleted; delete nothing (with -f only).
        #[arg(long, conflicts_with_all = ["kind", "name"])]
        dry_run: bool,
        /// Output format.
        #[arg(short, long, value_enum, default_value = "table")]
        output: Output,
    },
    /// Why a deployment's replicas are placed where they are, and why pending ones are not.
    ///
    /// Shows the last placement decision, the tenant's share against its guarantee and,
    /// while replicas are pending, every node and why it was not chosen.
    Explain {
        /// Kind (only deployments are explained).
        #[arg(ignore_case = true)]
        kind: ExplainKind,
        /// Deployment name.
        #[arg(value_parser = parse_name)]
        name: String,
        /// Tenant (needed only when tenants share the name).
        #[arg(short = 'n', long = "namespace", value_name = "TENANT")]
        namespace: Option<String>,
        /// Output format.
        #[arg(short, long, value_enum, default_value = "table")]
        output: Output,
    },
    /// GPU-hours and cost per tenant and hardware class over a time window.
    Usage {
        /// Only this tenant.
        #[arg(long, value_name = "TENANT", value_parser = parse_name)]
        tenant: Option<String>,
        /// The window, back from now: 90m, 24h, 7d, 30d. Usage is kept per hour, so the
        /// window starts at the top of an hour.
        #[arg(long, value_name = "DURATION", default_value = "24h", value_parser = parse_since, allow_hyphen_values = true)]
        since: String,
        /// Output format.
        #[arg(short, long, value_enum, default_value = "table")]
        output: Output,
    },
    /// Node operations.
    Node {
        /// What to do.
        action: NodeActionArg,
        /// Node name.
        #[arg(value_parser = parse_name)]
        name: String,
        /// Output format for the resulting node.
        #[arg(short, long, value_enum, default_value = "table")]
        output: Output,
    },
}

fn parse_ttl(text: &str) -> Result<String, String> {
    let ttl =
        humantime::parse_duration(text).map_err(|e| format!("{text:?} is not a duration like 30m or 1h ({e})"))?;
    if ttl < crate::api::MIN_TOKEN_TTL || ttl > crate::api::MAX_TOKEN_TTL {
        return Err("must be between 1m and 720h".into());
    }
    Ok(text.to_string())
}

/// `--since`: a positive humantime duration (`30m`, `24h`, `7d`).
fn parse_limit(text: &str) -> Result<usize, String> {
    match text.trim().parse::<usize>() {
        Ok(n) if n >= 1 => Ok(n),
        _ => Err(format!("{text:?} is not a count of records: give 1 or more")),
    }
}

fn parse_since(text: &str) -> Result<String, String> {
    if text.trim().starts_with('-') {
        return Err(format!(
            "{text:?} is negative: give how far back to look, like 90m, 24h or 7d"
        ));
    }
    let since =
        humantime::parse_duration(text).map_err(|e| format!("{text:?} is not a duration like 90m, 24h or 7d ({e})"))?;
    if since.is_zero() {
        return Err("must be longer than 0".into());
    }
    Ok(text.to_string())
}

fn parse_name(text: &str) -> Result<String, String> {
    if text.trim().is_empty() {
        Err("must not be empty".into())
    } else {
        Ok(text.to_string())
    }
}

/// Audit actions.
#[derive(Debug, Subcommand)]
pub enum AuditAction {
    /// Recompute the hash chain from the first record and check it against the anchor the
    /// coordinator keeps apart from the audit file.
    Verify {
        /// Output format.
        #[arg(short, long, value_enum, default_value = "table")]
        output: Output,
    },
}

/// API key actions.
#[derive(Debug, Subcommand)]
pub enum ApiKeyAction {
    /// Create a key for a tenant; prints it once (`-o json`: `{"key": ...}`).
    Create {
        /// The tenant its calls belong to.
        #[arg(long, value_parser = parse_name)]
        tenant: String,
        /// A label for people (`ci`, `notebook`).
        #[arg(long, value_parser = parse_name)]
        name: Option<String>,
        /// Output format.
        #[arg(short, long, value_enum, default_value = "table")]
        output: Output,
    },
    /// List keys (ids, tenants, names; never the secrets).
    List {
        /// Only this tenant's.
        #[arg(long)]
        tenant: Option<String>,
        /// Output format.
        #[arg(short, long, value_enum, default_value = "table")]
        output: Output,
    },
    /// Revoke a key at once.
    Revoke {
        /// Key id (or the whole key).
        #[arg(value_parser = parse_name)]
        id: String,
    },
}

/// Token actions.
#[derive(Debug, Subcommand)]
pub enum TokenAction {
    /// List join tokens (ids, expiry, uses left; never the secrets).
    List {
        /// Output format.
        #[arg(short, long, value_enum, default_value = "table")]
        output: Output,
    },
    /// Delete a join token at once (for example one that leaked).
    Delete {
        /// Token id (the part before the dot), or the whole token.
        #[arg(value_parser = parse_name)]
        id: String,
    },
    /// Create a join token; prints the token, the CA hash and the agent command.
    Create {
        /// Time to live, for example 30m, 1h, 7d (1m to 720h).
        #[arg(long, default_value = "1h", value_parser = parse_ttl)]
        ttl: String,
        /// How many agents may join with it (1 to 100000).
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=100_000))]
        uses: u32,
        /// Output format.
        #[arg(short, long, value_enum, default_value = "table")]
        output: Output,
    },
}

/// Kinds `get`, `describe` and `delete` know in this release.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum GetKind {
    /// Nodes (agents).
    #[value(alias = "node", alias = "no")]
    Nodes,
    /// Replicas: runtime processes on nodes, as their agents report them.
    #[value(alias = "replica", alias = "rep")]
    Replicas,
    /// Tenants: weight, guarantee, limit and share of the fleet.
    #[value(alias = "tenant", alias = "tn")]
    Tenants,
    /// Hardware classes: device match rules, price and relative capacity.
    #[value(
        name = "hardwareclasses",
        alias = "hardwareclass",
        alias = "hc",
        alias = "hardware-classes",
        alias = "hardware-class"
    )]
    HardwareClasses,
    /// Model deployments, per tenant.
    #[value(
        alias = "deployment",
        alias = "deploy",
        alias = "modeldeployment",
        alias = "modeldeployments",
        alias = "md"
    )]
    Deployments,
    /// Batch inference jobs (BatchInferenceJob): not served by this version yet.
    #[value(alias = "job", alias = "batchinferencejob", alias = "batchinferencejobs")]
    Jobs,
}

/// Kinds `explain` knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ExplainKind {
    /// A model deployment.
    #[value(
        alias = "deployments",
        alias = "deploy",
        alias = "modeldeployment",
        alias = "modeldeployments",
        alias = "md"
    )]
    Deployment,
}

/// Node actions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum NodeActionArg {
    /// Stop placing new replicas on the node.
    Cordon,
    /// Allow placement again (ends a drain too).
    Uncordon,
    /// Cordon, and move the node's replicas elsewhere.
    Drain,
    /// Refuse the node's certificate from now on and drop its connection at once.
    Revoke,
}

/// A CLI failure, printed as `error: ...` with exit code 1.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// The server could not be reached.
    #[error("cannot reach the coordinator at {server}: {reason}\nIs pyxis-coordinator running there? Set --server or PYXIS_SERVER (default {DEFAULT_SERVER}).")]
    Unreachable {
        /// URL.
        server: String,
        /// Why.
        reason: String,
    },
    /// No token anywhere.
    #[error("no admin token: pass --token or set PYXIS_TOKEN (the coordinator wrote it to DATA_DIR/admin-token on first start)")]
    NoToken,
    /// The token was refused.
    #[error("the coordinator rejected the admin token: {0}\nPass the right one with --token or PYXIS_TOKEN.")]
    Unauthorized(String),
    /// The API answered with an error.
    #[error("{0}")]
    Api(String),
    /// The manifests were refused (`invalid_manifest`, or a conflict between objects):
    /// nothing was applied. Printed one problem per `error:` line.
    #[error("{}", objects::invalid_text(.message, .problems))]
    Invalid {
        /// The server's summary.
        message: String,
        /// Every problem.
        problems: Vec<ProblemView>,
    },
    /// A manifest source (file, directory, stdin) could not be read.
    #[error("{0}")]
    Source(String),
    /// The answer was not what the API documents.
    #[error("unexpected answer from {server} (is that a Pyxis coordinator?): {reason}")]
    BadAnswer {
        /// URL.
        server: String,
        /// Why.
        reason: String,
    },
    /// Writing output failed.
    #[error("cannot write output: {0}")]
    Output(String),
}

struct Client {
    server: String,
    token: Option<String>,
    agent: ureq::Agent,
}

impl Client {
    fn new(server: &str, token: Option<String>) -> Self {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(15)))
            .build()
            .into();
        let server = server.trim().trim_end_matches('/');
        let server = if server.contains("://") {
            server.to_string()
        } else {
            format!("http://{server}")
        };
        Self { server, token, agent }
    }

    fn call<T: DeserializeOwned>(
        &self,
        method: &str,
        path: &str,
        body: Option<&impl Serialize>,
    ) -> Result<T, CliError> {
        let token = self.token.as_deref().ok_or(CliError::NoToken)?;
        let url = format!("{}{}", self.server, path);
        let auth = format!("Bearer {token}");
        let result = match (method, body) {
            ("GET", _) => self.agent.get(&url).header("Authorization", &auth).call(),
            ("DELETE", _) => self.agent.delete(&url).header("Authorization", &auth).call(),
            (_, Some(body)) => self.agent.post(&url).header("Authorization", &auth).send_json(body),
            (_, None) => self.agent.post(&url).header("Authorization", &auth).send_empty(),
        };
        let mut response = result.map_err(|e| CliError::Unreachable {
            server: self.server.clone(),
            reason: e.to_string(),
        })?;
        let status = response.status().as_u16();
        let text = response
            .body_mut()
            .read_to_string()
            .map_err(|e| CliError::Unreachable {
                server: self.server.clone(),
                reason: e.to_string(),
            })?;
        if (200..300).contains(&status) {
            return serde_json::from_str(&text).map_err(|e| CliError::BadAnswer {
                server: self.server.clone(),
                reason: e.to_string(),
            });
        }
        let message = match serde_json::from_str::<ErrorBody>(&text) {
            Ok(body) if !body.error.problems.is_empty() => {
                return Err(CliError::Invalid {
                    message: body.error.message,
                    problems: body.error.problems,
                })
            }
            Ok(body) => body.error.message,
            Err(_) => {
                let snippet: String = text.chars().take(200).collect();
                format!("HTTP {status} without a Pyxis error body from {} (is that a Pyxis coordinator's admin API?) {snippet}", self.server)
            }
        };
        if status == 401 {
            Err(CliError::Unauthorized(message))
        } else {
            Err(CliError::Api(message))
        }
    }
}

fn default_token() -> Option<String> {
    let path = PathBuf::from(crate::config::DEFAULT_DATA_DIR).join("admin-token");
    std::fs::read_to_string(path)
        .ok()
        .map(|t| t.trim().to_string())
        .filter(|t| !t.is_empty())
}

/// Runs the CLI; returns the process exit code.
pub fn run(cli: Cli) -> i32 {
    let token = cli
        .token
        .as_deref()
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .map(str::to_string)
        .or_else(default_token);
    let client = Client::new(&cli.server, token);
    let mut stdout = std::io::stdout().lock();
    match execute(&client, cli.command, &mut stdout) {
        Ok(()) => 0,
        Err(e) => {
            let _ = stdout.flush();
            eprintln!("error: {e}");
            1
        }
    }
}

fn print_structured<T: Serialize>(out: &mut impl Write, value: &T, output: Output) -> Result<(), CliError> {
    let text = match output {
        Output::Yaml => serde_norway::to_string(value).map_err(|e| CliError::Output(e.to_string()))?,
        _ => {
            let mut s = serde_json::to_string_pretty(value).map_err(|e| CliError::Output(e.to_string()))?;
            s.push('\n');
            s
        }
    };
    out.write_all(text.as_bytes())
        .map_err(|e| CliError::Output(e.to_string()))
}

fn execute(client: &Client, command: Command, out: &mut impl Write) -> Result<(), CliError> {
    let write = |out: &mut dyn Write, text: String| {
        out.write_all(text.as_bytes())
            .map_err(|e| CliError::Output(e.to_string()))
    };
    match command {
        Command::Token {
            action: TokenAction::Create { ttl, uses, output },
        } => {
            let created: TokenResponse = client.call(
                "POST",
                "/api/v1/tokens",
                Some(&TokenRequest {
                    ttl: Some(ttl),
                    uses: Some(uses),
                }),
            )?;
            match output {
                Output::Json | Output::Yaml => print_structured(out, &created, output),
                Output::Table | Output::Wide => write(
                    out,
                    format!(
                        "token:      {}\nca_hash:    {}\nexpires_at: {}\nuses:       {}\n\nJoin an agent with:\n  pyxis-agent --coordinator {} --join-token {} --ca-hash {} --data-dir /var/lib/pyxis-agent\n",
                        created.token,
                        created.ca_hash,
                        created.expires_at,
                        created.uses,
                        created.coordinator.as_deref().unwrap_or("COORDINATOR_HOST:7443"),
                        created.token,
                        created.ca_hash
                    ),
                ),
            }
        }
        Command::Token {
            action: TokenAction::List { output },
        } => {
            let list: List<crate::api_types::TokenInfo> = client.call("GET", "/api/v1/tokens", None::<&()>)?;
            match output {
                Output::Json | Output::Yaml => print_structured(out, &list, output),
                _ => {
                    if list.items.is_empty() {
                        eprintln!("No join tokens. Create one with `pyxis token create`.");
                        return Ok(());
                    }
                    let mut rows = vec![["ID", "CREATED", "EXPIRES", "USES-LEFT", "STATE"]
                        .map(String::from)
                        .to_vec()];
                    for t in &list.items {
                        let state = if t.expired {
                            "expired"
                        } else if t.uses_left <= 0 {
                            "used up"
                        } else {
                            "valid"
                        };
                        rows.push(vec![
                            t.id.clone(),
                            t.created_at.clone(),
                            t.expires_at.clone(),
                            t.uses_left.to_string(),
                            state.to_string(),
                        ]);
                    }
                    write(out, table(rows))
                }
            }
        }
        Command::Apikey {
            action: ApiKeyAction::Create { tenant, name, output },
        } => {
            let created: crate::api_types::ApiKeyCreated = client.call(
                "POST",
                "/api/v1/apikeys",
                Some(&crate::api_types::ApiKeyRequest { tenant, name }),
            )?;
            match output {
                Output::Json | Output::Yaml => print_structured(out, &created, output),
                Output::Table | Output::Wide => write(
                    out,
                    format!(
                        "key:    {}\nid:     {}\ntenant: {}\nname:   {}\n\nThe key is shown only now (it is stored hashed). Use it as `Authorization: Bearer <key>` on the gateway.\n",
                        created.key, created.info.id, created.info.tenant, created.info.name
                    ),
                ),
            }
        }
        Command::Apikey {
            action: ApiKeyAction::List { tenant, output },
        } => {
            let path = match &tenant {
                Some(t) => format!("/api/v1/apikeys?tenant={}", encode(t)),
                None => "/api/v1/apikeys".to_string(),
            };
            let list: List<crate::api_types::ApiKeyInfo> = client.call("GET", &path, None::<&()>)?;
            match output {
                Output::Json | Output::Yaml => print_structured(out, &list, output),
                _ => {
                    if list.items.is_empty() {
                        eprintln!("No API keys. Create one with `pyxis apikey create --tenant TENANT`.");
                        return Ok(());
                    }
                    let mut rows = vec![["ID", "TENANT", "NAME", "CREATED", "STATE"].map(String::from).to_vec()];
                    for k in &list.items {
                        rows.push(vec![
                            k.id.clone(),
                            k.tenant.clone(),
                            k.name.clone(),
                            k.created_at.clone(),
                            k.revoked_at
                                .as_ref()
                                .map_or("active".to_string(), |at| format!("revoked {at}")),
                        ]);
                    }
                    write(out, table(rows))
                }
            }
        }
        Command::Audit {
            action: Some(AuditAction::Verify { output }),
            ..
        } => {
            let view: crate::api_types::AuditVerifyView = client.call("POST", "/api/v1/audit/verify", None::<&()>)?;
            match output {
                Output::Json | Output::Yaml => print_structured(out, &view, output)?,
                Output::Table | Output::Wide => {
                    let mut text = format!(
                        "{} records checked, last seq {}{}\n",
                        view.records,
                        view.last_seq,
                        view.anchor_seq
                            .map_or(String::new(), |a| format!(", anchor seq {a}"))
                    );
                    if view.ok {
                        text.push_str("OK: the audit chain is intact\n");
                    } else {
                        for p in &view.problems {
                            text.push_str(&format!("seq {:<8} {:<10} {}\n", p.seq, p.kind, p.detail));
                        }
                    }
                    write(out, text)?;
                }
            }
            if view.ok {
                Ok(())
            } else {
                Err(CliError::Api(format!(
                    "the audit chain is broken: {} problem(s)",
                    view.problems.len()
                )))
            }
        }
        Command::Audit {
            action: None,
            tenant,
            model,
            since,
            limit,
            output,
        } => {
            let mut path = format!("/api/v1/audit?limit={limit}");
            for (k, v) in [("tenant", &tenant), ("model", &model), ("since", &since)] {
                if let Some(v) = v {
                    path.push_str(&format!("&{k}={}", encode(v)));
                }
            }
            let list: crate::api_types::AuditList = client.call("GET", &path, None::<&()>)?;
            match output {
                Output::Json | Output::Yaml => print_structured(out, &list, output),
                Output::Table | Output::Wide => {
                    if list.items.is_empty() {
                        eprintln!("No audit records match.");
                        return Ok(());
                    }
                    let wide = output == Output::Wide;
                    let mut head = vec![
                        "SEQ", "TIME", "TENANT", "DEPLOYMENT", "MODEL@VERSION", "RUNTIME", "CLASS", "NODE", "STATUS",
                        "TOKENS", "LATENCY", "TTFT",
                    ];
                    if wide {
                        head.extend(["REQUEST", "KEY", "GPUS", "TRACE"]);
                    }
                    let mut rows = vec![head.into_iter().map(String::from).collect::<Vec<_>>()];
                    for r in &list.items {
                        let a = &r.record;
                        let dash = |s: &str| if s.is_empty() { "-".to_string() } else { s.to_string() };
                        let mut row = vec![
                            r.seq.to_string(),
                            crate::time::rfc3339_ms(a.at_ms),
                            a.tenant.clone(),
                            dash(&a.deployment),
                            if a.model_version.is_empty() {
                                a.model.clone()
                            } else {
                                format!("{}@{}", a.model, a.model_version)
                            },
                            if a.runtime_kind.is_empty() {
                                "-".to_string()
                            } else {
                                format!("{}/{}", a.runtime_kind, a.runtime_version)
                            },
                            dash(&a.hardware_class),
                            dash(&a.node),
                            a.status.to_string(),
                            format!("{}+{}", a.prompt_tokens, a.completion_tokens),
                            format!("{}ms", a.latency_ms),
                            a.ttft_ms.map_or("-".to_string(), |t| format!("{t}ms")),
                        ];
                        if wide {
                            row.extend([
                                a.request_id.clone(),
                                a.key_id.clone(),
                                if a.gpus.is_empty() { "-".to_string() } else { a.gpus.join(",") },
                                dash(&a.trace_id),
                            ]);
                        }
                        rows.push(row);
                    }
                    write(out, table(rows))
                }
            }
        }
        Command::Apikey {
            action: ApiKeyAction::Revoke { id },
        } => {
            let revoked: crate::api_types::ApiKeyInfo =
                client.call("DELETE", &format!("/api/v1/apikeys/{}", encode(&id)), None::<&()>)?;
            let at = revoked.revoked_at.as_deref().unwrap_or("now");
            write(
                out,
                format!(
                    "API key {} ({}, tenant {}) revoked at {at}\n",
                    revoked.id, revoked.name, revoked.tenant
                ),
            )
        }
        Command::Token {
            action: TokenAction::Delete { id },
        } => {
            let id = id.split('.').next().unwrap_or_default().to_string();
            let _: serde_json::Value =
                client.call("DELETE", &format!("/api/v1/tokens/{}", encode(&id)), None::<&()>)?;
            write(out, format!("join token {id} deleted\n"))
        }
        Command::Get {
            kind: GetKind::Nodes,
            name,
            output,
            ..
        } => {
            let items: Vec<NodeView> = match &name {
                Some(name) => vec![
                    client
                        .call::<NodeDetail>("GET", &format!("/api/v1/nodes/{}", encode(name)), None::<&()>)?
                        .node,
                ],
                None => {
                    client
                        .call::<List<NodeView>>("GET", "/api/v1/nodes", None::<&()>)?
                        .items
                }
            };
            match output {
                Output::Json | Output::Yaml => print_structured(out, &List { items }, output),
                Output::Table => write(out, nodes_table(&items, false)),
                Output::Wide => write(out, nodes_table(&items, true)),
            }
        }
        Command::Get {
            kind: GetKind::Replicas,
            name,
            namespace,
            all_tenants,
            output,
        } => {
            let path = match (&namespace, all_tenants) {
                (Some(tenant), false) => format!("/api/v1/replicas?namespace={}", encode(tenant)),
                _ => "/api/v1/replicas".to_string(),
            };
            let mut items = client.call::<List<ReplicaView>>("GET", &path, None::<&()>)?.items;
            if let Some(name) = &name {
                items.retain(|r| r.name == *name);
                if items.is_empty() {
                    return Err(CliError::Api(format!(
                        "replica {name} not found; `pyxis get replicas` lists them"
                    )));
                }
            }
            match output {
                Output::Json | Output::Yaml => print_structured(out, &List { items }, output),
                Output::Table => write(out, replicas_table(&items, false)),
                Output::Wide => write(out, replicas_table(&items, true)),
            }
        }
        Command::Get {
            kind: GetKind::Jobs, ..
        } => Err(objects::jobs_not_served()),
        Command::Get {
            kind: kind @ (GetKind::Tenants | GetKind::HardwareClasses | GetKind::Deployments),
            name,
            namespace,
            all_tenants,
            output,
        } => {
            let tenant = namespace.as_deref().filter(|_| !all_tenants);
            objects::get(client, kind, name.as_deref(), tenant, output, out)
        }
        Command::Describe {
            kind: GetKind::Replicas,
            name,
            output,
            ..
        } => {
            let detail: ReplicaDetail =
                client.call("GET", &format!("/api/v1/replicas/{}", encode(&name)), None::<&()>)?;
            match output {
                Output::Json | Output::Yaml => print_structured(out, &detail, output),
                _ => write(out, describe_replica(&detail)),
            }
        }
        Command::Describe {
            kind: GetKind::Nodes,
            name,
            output,
            ..
        } => {
            let detail: NodeDetail = client.call("GET", &format!("/api/v1/nodes/{}", encode(&name)), None::<&()>)?;
            match output {
                Output::Json | Output::Yaml => print_structured(out, &detail, output),
                _ => write(out, describe_node(&detail)),
            }
        }
        Command::Describe {
            kind,
            name,
            namespace,
            output,
        } => objects::describe(client, kind, &name, namespace.as_deref(), output, out),
        Command::Apply { files, dry_run, output } => objects::apply(client, &files, dry_run, output, out),
        Command::Delete {
            kind: Some(GetKind::Replicas),
            name: Some(name),
            ..
        } => Err(CliError::Api(format!(
            "replica {name} cannot be deleted by itself: it runs because its deployment wants it; scale or delete the deployment"
        ))),
        Command::Delete {
            kind: Some(GetKind::Nodes),
            name: Some(name),
            output,
            ..
        } => {
            let deleted: serde_json::Value =
                client.call("DELETE", &format!("/api/v1/nodes/{}", encode(&name)), None::<&()>)?;
            match output {
                Output::Json | Output::Yaml => print_structured(out, &deleted, output),
                _ => write(
                    out,
                    format!("node/{name} deleted; it may join again with a new token\n"),
                ),
            }
        }
        Command::Delete {
            kind: Some(kind),
            name: Some(name),
            namespace,
            output,
            ..
        } => objects::delete_one(client, kind, &name, namespace.as_deref(), output, out),
        Command::Delete {
            files, dry_run, output, ..
        } => objects::delete_files(client, &files, dry_run, output, out),
        Command::Explain {
            kind: ExplainKind::Deployment,
            name,
            namespace,
            output,
        } => objects::explain(client, &name, namespace.as_deref(), output, out),
        Command::Bench(args) => bench::run(&args, out),
        Command::Usage { tenant, since, output } => objects::usage(client, tenant.as_deref(), &since, output, out),
        Command::Node { action, name, output } => {
            let verb = match action {
                NodeActionArg::Cordon => "cordon",
                NodeActionArg::Uncordon => "uncordon",
                NodeActionArg::Drain => "drain",
                NodeActionArg::Revoke => "revoke",
            };
            let node: NodeView =
                client.call("POST", &format!("/api/v1/nodes/{}/{verb}", encode(&name)), None::<&()>)?;
            match output {
                Output::Json | Output::Yaml => print_structured(out, &node, output),
                _ => {
                    let done = match action {
                        NodeActionArg::Cordon => "cordoned",
                        NodeActionArg::Uncordon => "uncordoned",
                        NodeActionArg::Drain => "draining",
                        NodeActionArg::Revoke => "revoked (its connection was dropped; it cannot reconnect)",
                    };
                    write(out, format!("node/{} {done}; status {}\n", node.name, node.status))
                }
            }
        }
    }
}

/// Percent-encodes a path segment.
fn encode(segment: &str) -> String {
    segment
        .bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn gib(bytes: u64) -> String {
    format!("{:.0}GiB", bytes as f64 / f64::from(1u32 << 30))
}

fn accelerators_summary(node: &NodeView) -> String {
    if node.accelerators.is_empty() {
        return "-".into();
    }
    let mut groups: Vec<(String, usize, bool)> = Vec::new();
    for a in &node.accelerators {
        match groups
            .iter_mut()
            .find(|(class, _, sim)| *class == a.hardware_class && *sim == a.simulated)
        {
            Some(group) => group.1 += 1,
            None => groups.push((a.hardware_class.clone(), 1, a.simulated)),
        }
    }
    let unhealthy = node.accelerators.iter().filter(|a| a.health != "healthy").count();
    let mig_instances: usize = node
        .accelerators
        .iter()
        .filter_map(|a| a.mig.as_ref().filter(|m| m.enabled))
        .map(|m| m.instances.len())
        .sum();
    let mut text = groups
        .iter()
        .map(|(class, n, sim)| format!("{n}x{class}{}", if *sim { "(sim)" } else { "" }))
        .collect::<Vec<_>>()
        .join(",");
    if mig_instances > 0 {
        text.push_str(&format!(" [{mig_instances} MIG]"));
    }
    if unhealthy > 0 {
        text.push_str(&format!(" [{unhealthy} not healthy]"));
    }
    text
}

fn ago(rfc3339: Option<&str>) -> String {
    let Some(text) = rfc3339 else {
        return "never".into();
    };
    match humantime::parse_rfc3339(text) {
        Ok(t) => match std::time::SystemTime::now().duration_since(t) {
            Ok(d) => format!("{} ago", human_duration(d.as_secs())),
            Err(_) => "just now".into(),
        },
        Err(_) => text.to_string(),
    }
}

/// `75` -> `1m15s`, `3700` -> `1h1m`, `90000` -> `1d1h`.
fn human_duration(secs: u64) -> String {
    match secs {
        0..=59 => format!("{secs}s"),
        60..=3599 => format!("{}m{}s", secs / 60, secs % 60),
        3600..=86_399 => format!("{}h{}m", secs / 3600, (secs % 3600) / 60),
        _ => format!("{}d{}h", secs / 86_400, (secs % 86_400) / 3600),
    }
}

fn table(rows: Vec<Vec<String>>) -> String {
    let columns = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..columns)
        .map(|c| {
            rows.iter()
                .map(|r| r.get(c).map(|s| s.chars().count()).unwrap_or(0))
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for row in rows {
        let line: Vec<String> = row
            .iter()
            .enumerate()
            .map(|(i, cell)| {
                if i + 1 == row.len() {
                    cell.clone()
                } else {
                    format!("{cell:<width$}", width = widths[i])
                }
            })
            .collect();
        out.push_str(line.join("   ").trim_end());
        out.push('\n');
    }
    out
}

fn nodes_table(nodes: &[NodeView], wide: bool) -> String {
    let mut header = vec!["NAME", "STATUS", "ACCELERATORS", "AGENT", "LAST-SEEN"];
    if wide {
        header.extend([
            "HEALTH",
            "INTERCONNECT",
            "ADDRESS",
            "OS",
            "KERNEL",
            "CPUS",
            "MEMORY",
            "RUNTIMES",
            "REASON",
        ]);
    }
    let mut rows = vec![header.into_iter().map(String::from).collect::<Vec<_>>()];
    for n in nodes {
        let mut row = vec![
            n.name.clone(),
            n.status.clone(),
            accelerators_summary(n),
            if n.agent_version.is_empty() {
                "-".into()
            } else {
                n.agent_version.clone()
            },
            ago(n.last_seen.as_deref()),
        ];
        if wide {
            row.extend([
                health_summary(&n.accelerators),
                interconnect_summary(&n.accelerators),
                n.address.clone().unwrap_or_else(|| "-".into()),
                n.os.clone(),
                n.kernel.clone(),
                n.cpu_cores.to_string(),
                gib(n.memory_bytes),
                if n.runtimes.is_empty() {
                    "-".into()
                } else {
                    n.runtimes.join(",")
                },
                n.reason.clone(),
            ]);
        }
        rows.push(row);
    }
    if nodes.is_empty() {
        eprintln!("No nodes have joined yet. Create a join token with `pyxis token create`.");
        return String::new();
    }
    table(rows)
}

/// `get replicas`: one row per replica.
fn replicas_table(replicas: &[ReplicaView], wide: bool) -> String {
    if replicas.is_empty() {
        return "No replicas.\n".into();
    }
    let mut header = vec![
        "NAME",
        "DEPLOYMENT",
        "TENANT",
        "NODE",
        "PHASE",
        "RUNTIME",
        "CLASS",
        "GPUS",
        "RESTARTS",
    ];
    if wide {
        header.extend(["VERSION", "ENDPOINT", "REASON"]);
    }
    let mut rows = vec![header.into_iter().map(String::from).collect::<Vec<_>>()];
    for r in replicas {
        let mut row = vec![
            r.name.clone(),
            r.deployment.clone(),
            r.tenant.clone(),
            r.node.clone(),
            r.phase.clone(),
            r.runtime.clone(),
            r.hardware_class.clone(),
            r.gpus.len().to_string(),
            r.restarts.to_string(),
        ];
        if wide {
            row.push(r.runtime_version.clone().unwrap_or_else(|| "-".into()));
            row.push(r.endpoint.clone().unwrap_or_else(|| "-".into()));
            row.push(if r.reason.is_empty() {
                "-".into()
            } else {
                r.reason.clone()
            });
        }
        rows.push(row);
    }
    table(rows)
}

/// `describe replica`.
fn describe_replica(detail: &ReplicaDetail) -> String {
    let r = &detail.replica;
    let mut out = String::new();
    let mut field = |k: &str, v: String| out.push_str(&format!("{:<18}{}\n", format!("{k}:"), v));
    let or_dash = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".into());
    field("Name", r.name.clone());
    field("Deployment", r.deployment.clone());
    field("Tenant", r.tenant.clone());
    field("Node", r.node.clone());
    field(
        "Phase",
        if r.reason.is_empty() {
            r.phase.clone()
        } else {
            format!("{} ({})", r.phase, r.reason)
        },
    );
    field("Runtime", format!("{} {}", r.runtime, or_dash(&r.runtime_version)));
    field("Hardware class", r.hardware_class.clone());
    field(
        "GPUs",
        if r.gpus.is_empty() {
            "none (CPU)".into()
        } else {
            r.gpus.join(", ")
        },
    );
    field("Endpoint", or_dash(&r.endpoint));
    field("PID", r.pid.map_or_else(|| "-".into(), |p| p.to_string()));
    field("Restarts", r.restarts.to_string());
    field("Last exit", or_dash(&r.last_exit));
    field(
        "Ready after",
        r.ready_after_ms
            .map_or_else(|| "-".into(), |ms| format!("{:.1}s", ms as f64 / 1000.0)),
    );
    if let Some(m) = r.metrics {
        let num = |v: Option<f64>| v.map_or_else(|| "-".into(), |v| format!("{v}"));
        let pct = |v: Option<f64>| v.map_or_else(|| "-".into(), |v| format!("{:.0}%", v * 100.0));
        field(
            "Requests",
            format!(
                "{} running, {} waiting",
                num(m.requests_running),
                num(m.requests_waiting)
            ),
        );
        field(
            "Tokens",
            format!(
                "{} prompt, {} generated",
                num(m.prompt_tokens_total),
                num(m.generation_tokens_total)
            ),
        );
        field(
            "KV cache",
            format!(
                "{} used, prefix-cache hits {}",
                pct(m.kv_cache_usage_ratio),
                pct(m.prefix_cache_hit_ratio)
            ),
        );
    }
    if !r.log_tail.is_empty() {
        out.push_str("Log tail:\n");
        for line in &r.log_tail {
            out.push_str(&format!("  {line}\n"));
        }
    }
    out.push_str(&events_section(&detail.events));
    out
}

/// `Events:` and a table, or `none`.
fn events_section(events: &[EventView]) -> String {
    let mut out = String::from("Events:\n");
    if events.is_empty() {
        out.push_str("  none\n");
        return out;
    }
    let mut rows = vec![["TIME", "TYPE", "REASON", "MESSAGE"].map(String::from).to_vec()];
    for e in events {
        rows.push(vec![
            e.time.clone(),
            e.kind.clone(),
            e.reason.clone(),
            e.message.clone(),
        ]);
    }
    for line in table(rows).lines() {
        out.push_str(&format!("  {line}\n"));
    }
    out
}

fn describe_node(detail: &NodeDetail) -> String {
    let n = &detail.node;
    let mut out = String::new();
    let mut field = |k: &str, v: String| out.push_str(&format!("{:<18}{}\n", format!("{k}:"), v));
    field("Name", n.name.clone());
    field("Status", format!("{} ({})", n.status, n.reason));
    field("Schedulable", n.schedulable.to_string());
    field("Cordoned", n.cordoned.to_string());
    field("Draining", n.draining.to_string());
    field("Revoked", n.revoked.to_string());
    field(
        "Connected",
        format!(
            "{}{}",
            n.connected,
            n.address.as_ref().map(|a| format!(" from {a}")).unwrap_or_default()
        ),
    );
    field(
        "Last seen",
        format!(
            "{} ({})",
            n.last_seen.clone().unwrap_or_else(|| "never".into()),
            ago(n.last_seen.as_deref())
        ),
    );
    field("Joined", n.joined_at.clone());
    field("Agent version", n.agent_version.clone());
    field("Hostname", n.hostname.clone());
    field("OS", n.os.clone());
    field("Kernel", n.kernel.clone());
    field("CPU", format!("{} x {}", n.cpu_cores, n.cpu_model));
    field(
        "Memory",
        format!(
            "{} total, {} available",
            gib(n.memory_bytes),
            gib(n.memory_available_bytes)
        ),
    );
    field(
        "Runtimes",
        if n.runtimes.is_empty() {
            "none configured".into()
        } else {
            n.runtimes.join(", ")
        },
    );
    out.push_str("Accelerators:\n");
    if n.accelerators.is_empty() {
        out.push_str("  none\n");
    }
    for a in &n.accelerators {
        out.push_str(&describe_accelerator(a));
    }
    out.push_str("Topology:\n");
    match topology_matrix(&n.accelerators) {
        Some(matrix) => out.push_str(&matrix),
        None => out.push_str("  not reported (needs two or more devices with link data)\n"),
    }
    out.push_str("Replicas:\n");
    if n.replicas.is_empty() {
        out.push_str("  none\n");
    } else {
        let mut rows = vec![["NAME", "PHASE", "RUNTIME", "GPUS", "RESTARTS", "ENDPOINT"]
            .map(String::from)
            .to_vec()];
        for r in &n.replicas {
            rows.push(vec![
                r.name.clone(),
                r.phase.clone(),
                r.runtime.clone(),
                r.gpus.len().to_string(),
                r.restarts.to_string(),
                r.endpoint.clone().unwrap_or_else(|| "-".into()),
            ]);
        }
        for line in table(rows).lines() {
            out.push_str(&format!("  {line}\n"));
        }
    }
    out.push_str(&events_section(&detail.events));
    out
}

/// Longest first non-healthy reason `get nodes -o wide` shows; `describe node` has it all.
const WIDE_REASON_CHARS: usize = 32;

/// `GPU3` (or `TPU3`): the device names `describe node` and the topology matrix use, as
/// `nvidia-smi topo -m` does.
fn device_label(device: &AcceleratorView) -> String {
    let kind = if device.vendor == "google" { "TPU" } else { "GPU" };
    format!("{kind}{}", device.index)
}

/// Cuts `text` to at most `max` characters, at a word boundary when one is near the end,
/// marking the cut with `...`.
fn truncate(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        return text.to_string();
    }
    let kept: String = text.chars().take(max.saturating_sub(3)).collect();
    let kept = match kept.rfind(char::is_whitespace) {
        Some(at) if at >= kept.len() / 2 => &kept[..at],
        _ => kept.as_str(),
    };
    format!(
        "{}...",
        kept.trim_end_matches(|c: char| c.is_whitespace() || ",.;:-".contains(c))
    )
}

/// Severity of a health tier, for picking the device to name; unknown tiers (from a newer
/// coordinator) rank between degraded and unhealthy.
fn health_severity(health: &str) -> u8 {
    match health {
        "healthy" => 0,
        "degraded" => 1,
        "unhealthy" => 3,
        _ => 2,
    }
}

/// `8 healthy`, or `6 healthy, 1 degraded, 1 unhealthy (GPU3: XID 79 ...)`: devices per
/// tier, then the worst device (lowest index among equals) and its reason, cut short.
fn health_summary(accelerators: &[AcceleratorView]) -> String {
    if accelerators.is_empty() {
        return "-".into();
    }
    let mut tiers: Vec<(&str, usize)> = vec![("healthy", 0), ("degraded", 0), ("unhealthy", 0)];
    for a in accelerators {
        match tiers.iter_mut().find(|(tier, _)| *tier == a.health) {
            Some(tier) => tier.1 += 1,
            None => tiers.push((a.health.as_str(), 1)),
        }
    }
    let mut text = tiers
        .iter()
        .filter(|(_, count)| *count > 0)
        .map(|(tier, count)| format!("{count} {tier}"))
        .collect::<Vec<_>>()
        .join(", ");
    let worst = accelerators
        .iter()
        .filter(|a| health_severity(&a.health) > 0)
        .min_by_key(|a| (std::cmp::Reverse(health_severity(&a.health)), a.index));
    if let Some(device) = worst {
        let reason = device.health_reason.trim();
        if reason.is_empty() {
            text.push_str(&format!(" ({})", device_label(device)));
        } else {
            text.push_str(&format!(
                " ({}: {})",
                device_label(device),
                truncate(reason, WIDE_REASON_CHARS)
            ));
        }
    }
    text
}

/// Whether `a` reaches `b` over `kind`, as either of them reports it.
fn linked(a: &AcceleratorView, b: &AcceleratorView, kind: &str) -> bool {
    a.links.iter().any(|l| l.peer == b.index && l.kind == kind)
        || b.links.iter().any(|l| l.peer == a.index && l.kind == kind)
}

/// `nvlink 8/8`: per GPU fabric, the devices with at least one peer on it out of all
/// devices, `partial` when those devices are not all linked to each other; `pcie` when
/// devices reach each other only over PCIe; `-` when no device reports links.
fn interconnect_summary(accelerators: &[AcceleratorView]) -> String {
    let mut parts = Vec::new();
    for kind in ["nvlink", "xgmi"] {
        let members: Vec<&AcceleratorView> = accelerators
            .iter()
            .filter(|a| accelerators.iter().any(|b| b.index != a.index && linked(a, b, kind)))
            .collect();
        if members.is_empty() {
            continue;
        }
        let mesh = members
            .iter()
            .all(|a| members.iter().all(|b| a.index == b.index || linked(a, b, kind)));
        parts.push(format!(
            "{kind} {}/{}{}",
            members.len(),
            accelerators.len(),
            if mesh { "" } else { " partial" }
        ));
    }
    if !parts.is_empty() {
        parts.join(", ")
    } else if accelerators.iter().any(|a| !a.links.is_empty()) {
        "pcie".into()
    } else {
        "-".into()
    }
}

/// A matrix cell in the notation of `nvidia-smi topo -m`.
fn topology_cell(kind: &str, lanes: u32) -> String {
    match kind {
        "nvlink" if lanes > 0 => format!("NV{lanes}"),
        "nvlink" => "NV".into(),
        "xgmi" => "XGMI".into(),
        "pcie-switch" => "PIX".into(),
        "pcie-host-bridge" => "PHB".into(),
        "numa-node" => "NODE".into(),
        "system" => "SYS".into(),
        _ => "?".into(),
    }
}

const TOPOLOGY_LEGEND: &str =
    "  Legend: X = self, NV# = NVLink (# links), XGMI = AMD Infinity Fabric, PIX = PCIe switch,
          PHB = PCIe host bridge, NODE = PCIe within a NUMA node, SYS = across NUMA nodes,
          - = not reported
";

/// The device-to-device matrix of `describe node`, like `nvidia-smi topo -m`: one row and
/// column per device that reports links (or is named as a peer), and the NUMA node.
/// `None` when fewer than two devices take part.
fn topology_matrix(accelerators: &[AcceleratorView]) -> Option<String> {
    let devices: Vec<&AcceleratorView> = accelerators
        .iter()
        .filter(|a| !a.links.is_empty() || accelerators.iter().any(|o| o.links.iter().any(|l| l.peer == a.index)))
        .collect();
    if devices.len() < 2 {
        return None;
    }
    let cell = |row: &AcceleratorView, col: &AcceleratorView| {
        if row.index == col.index {
            return "X".to_string();
        }
        let forward = row.links.iter().find(|l| l.peer == col.index);
        let backward = || col.links.iter().find(|l| l.peer == row.index);
        match forward.or_else(backward) {
            Some(link) => topology_cell(&link.kind, link.lanes),
            None => "-".into(),
        }
    };
    let mut rows = vec![std::iter::once(String::new())
        .chain(devices.iter().map(|d| device_label(d)))
        .chain(std::iter::once("NUMA".to_string()))
        .collect::<Vec<_>>()];
    for row in &devices {
        let mut line = vec![device_label(row)];
        line.extend(devices.iter().map(|col| cell(row, col)));
        line.push(row.numa_node.map(|n| n.to_string()).unwrap_or_else(|| "-".into()));
        rows.push(line);
    }
    // Every column as wide as the widest cell, two spaces apart: 8 GPUs take 60 columns.
    let width = rows.iter().flatten().map(|c| c.chars().count()).max().unwrap_or(0) + 2;
    let mut out = String::new();
    for row in rows {
        let line: String = row.iter().map(|c| format!("{c:<width$}")).collect();
        out.push_str(&format!("  {}\n", line.trim_end()));
    }
    out.push_str(TOPOLOGY_LEGEND);
    Some(out)
}

fn or_dash<T: std::fmt::Display>(value: Option<T>) -> String {
    value.map(|v| v.to_string()).unwrap_or_else(|| "-".into())
}

/// `main (note)`, `- (note)`, `main` or `-`, as much as is known.
fn with_note(main: Option<String>, note: Option<String>) -> String {
    match (main, note) {
        (main, Some(note)) => format!("{} ({note})", or_dash(main)),
        (main, None) => or_dash(main),
    }
}

/// `1755 MHz (max 1980)`, as much of it as is known.
fn clock(now: Option<u32>, max: Option<u32>) -> String {
    match (now, max) {
        (Some(now), Some(max)) => format!("{now} MHz (max {max})"),
        (Some(now), None) => format!("{now} MHz"),
        (None, Some(max)) => format!("- (max {max} MHz)"),
        (None, None) => "-".into(),
    }
}

/// One device of `describe node`: identity, versions, usage, health, errors and MIG.
fn describe_accelerator(a: &AcceleratorView) -> String {
    let mut out = format!(
        "  {}: {} ({}, {}{})\n",
        device_label(a),
        a.model,
        a.vendor,
        a.hardware_class,
        if a.simulated { ", simulated" } else { "" }
    );
    let mut field = |k: &str, v: String| out.push_str(&format!("    {:<16}{}\n", format!("{k}:"), v));
    field("UUID", a.uuid.clone());
    field(
        "PCI bus id",
        with_note(a.pci_bus_id.clone(), a.numa_node.map(|n| format!("NUMA node {n}"))),
    );
    field("Architecture", or_dash(a.architecture.as_deref()));
    let api = match a.vendor.as_str() {
        "nvidia" => "CUDA",
        "amd" => "ROCm",
        _ => "compute API",
    };
    field(
        "Driver",
        with_note(
            a.driver_version.clone(),
            a.compute_api_version.as_ref().map(|v| format!("{api} {v}")),
        ),
    );
    // Unknown values print as `-`: a TPU reports no usage, a lost GPU nothing at all (its
    // total is 0 when it was lost before the memory could be read).
    field(
        "Memory",
        format!(
            "{} used of {}",
            or_dash(a.memory_used_bytes.map(gib)),
            or_dash((a.memory_bytes > 0).then(|| gib(a.memory_bytes)))
        ),
    );
    field(
        "Usage",
        format!(
            "util {}, temp {}, power {}",
            or_dash(a.utilization_percent.map(|u| format!("{u}%"))),
            a.temperature_celsius
                .map(|t| format!("{t}C"))
                .unwrap_or_else(|| "-".into()),
            with_note(
                a.power_watts.map(|w| format!("{w}W")),
                a.power_limit_watts.map(|w| format!("limit {w}W"))
            )
        ),
    );
    // NVIDIA calls its graphics clock the SM clock; other vendors' is the graphics clock.
    let core_clock = if a.vendor == "nvidia" { "SM" } else { "graphics" };
    field(
        "Clocks",
        format!(
            "{core_clock} {}, memory {}",
            clock(a.sm_clock_mhz, a.max_sm_clock_mhz),
            clock(a.memory_clock_mhz, a.max_memory_clock_mhz)
        ),
    );
    field(
        "Health",
        if a.health_reason.is_empty() {
            a.health.clone()
        } else {
            format!("{}: {}", a.health, a.health_reason)
        },
    );
    let mode = match a.ecc_enabled {
        Some(true) => "enabled",
        Some(false) => "disabled",
        None => "-",
    };
    field("ECC", mode.to_string());
    if let Some(ecc) = &a.ecc {
        let pad = " ".repeat(20);
        out.push_str(&format!(
            "{pad}volatile {} corrected, {} uncorrected; aggregate {} corrected, {} uncorrected\n",
            ecc.volatile_corrected,
            ecc.volatile_uncorrected,
            or_dash(ecc.aggregate_corrected),
            or_dash(ecc.aggregate_uncorrected)
        ));
        let mut repair = format!(
            "retired pages {}; remapped rows {}",
            or_dash(ecc.retired_pages),
            or_dash(ecc.remapped_rows)
        );
        for (flag, text) in [
            (ecc.retired_pages_pending, "page retirement pending a reset"),
            (ecc.remap_pending, "row remap pending a reset"),
            (ecc.remap_failed, "ROW REMAP FAILED: the device needs service"),
        ] {
            if flag == Some(true) {
                repair.push_str("; ");
                repair.push_str(text);
            }
        }
        out.push_str(&format!("{pad}{repair}\n"));
    }
    let mut field = |k: &str, v: String| out.push_str(&format!("    {:<16}{}\n", format!("{k}:"), v));
    field(
        "XID errors",
        with_note(
            a.xid_count.map(|n| n.to_string()),
            a.last_xid.map(|last| format!("last XID {last}")),
        ),
    );
    field(
        "Throttling",
        match &a.throttle_reasons {
            None => "-".into(),
            Some(reasons) if reasons.is_empty() => "none".into(),
            Some(reasons) => reasons.join(", "),
        },
    );
    let mig = match &a.mig {
        None => "-".to_string(),
        Some(mig) => {
            let mode = |on: bool| if on { "enabled" } else { "disabled" };
            let mut text = mode(mig.enabled).to_string();
            if mig.pending_enabled != mig.enabled {
                text.push_str(&format!(" ({} after the next GPU reset)", mode(mig.pending_enabled)));
            }
            if mig.enabled || !mig.instances.is_empty() {
                text.push_str(&format!(", {} instances", mig.instances.len()));
            }
            text
        }
    };
    field("MIG", mig);
    if let Some(mig) = a.mig.as_ref().filter(|m| !m.instances.is_empty()) {
        let mut rows = vec![["PROFILE", "MEMORY", "GI/CI", "CLASS", "UUID"]
            .map(String::from)
            .to_vec()];
        for i in &mig.instances {
            rows.push(vec![
                i.profile.clone(),
                gib(i.memory_bytes),
                format!("{}/{}", i.gpu_instance_id, i.compute_instance_id),
                i.hardware_class.clone(),
                i.uuid.clone(),
            ]);
        }
        for line in table(rows).lines() {
            out.push_str(&format!("      {line}\n"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api_types::{EccCountsView, EventView, MigInstanceView, MigView, PeerLinkView};

    fn link(peer: u32, kind: &str, lanes: u32) -> PeerLinkView {
        PeerLinkView {
            peer,
            kind: kind.into(),
            lanes,
        }
    }

    /// A healthy device with the given links and nothing else reported.
    fn device(index: u32, class: &str, links: Vec<PeerLinkView>) -> AcceleratorView {
        let (vendor, model) = match class {
            "MI300X-192GB" => ("amd", "AMD Instinct MI300X"),
            "TPU-v5e" => ("google", "TPU v5 lite"),
            _ => ("nvidia", "NVIDIA H100 80GB HBM3"),
        };
        AcceleratorView {
            index,
            vendor: vendor.into(),
            model: model.into(),
            uuid: format!("GPU-{index:08}"),
            memory_bytes: 80 << 30,
            memory_used_bytes: None,
            utilization_percent: None,
            hardware_class: class.into(),
            health: "healthy".into(),
            health_reason: String::new(),
            temperature_celsius: None,
            power_watts: None,
            simulated: false,
            pci_bus_id: None,
            numa_node: None,
            driver_version: None,
            compute_api_version: None,
            architecture: None,
            max_sm_clock_mhz: None,
            max_memory_clock_mhz: None,
            ecc_enabled: None,
            mig: None,
            links,
            power_limit_watts: None,
            sm_clock_mhz: None,
            memory_clock_mhz: None,
            throttle_reasons: None,
            ecc: None,
            xid_count: None,
            last_xid: None,
        }
    }

    /// An HGX board: `n` GPUs, all-to-all NVLink with 18 links, half on each NUMA node.
    fn hgx(n: u32) -> Vec<AcceleratorView> {
        (0..n)
            .map(|i| {
                let links = (0..n).filter(|&p| p != i).map(|p| link(p, "nvlink", 18)).collect();
                AcceleratorView {
                    numa_node: Some(i / n.div_ceil(2)),
                    ..device(i, "H100-80GB", links)
                }
            })
            .collect()
    }

    fn node(name: &str, accelerators: Vec<AcceleratorView>) -> NodeView {
        NodeView {
            name: name.into(),
            status: "Ready".into(),
            reason: "reporting".into(),
            schedulable: true,
            cordoned: false,
            draining: false,
            revoked: false,
            connected: true,
            address: Some("10.0.0.7:51506".into()),
            agent_version: "0.1.0".into(),
            hostname: name.into(),
            os: "Linux (Ubuntu 22.04)".into(),
            kernel: "6.5.0".into(),
            cpu_model: "AMD EPYC 9654".into(),
            cpu_cores: 192,
            memory_bytes: 2048 << 30,
            memory_available_bytes: 1900 << 30,
            runtimes: vec!["vllm".into()],
            last_seen: None,
            joined_at: "2026-11-24T01:43:49Z".into(),
            accelerators,
            replicas: Vec::new(),
        }
    }

    /// Compares a rendering with its expectation and shows both in full when they differ.
    fn check(actual: &str, expected: &str) {
        assert!(actual == expected, "expected:\n{expected}\nactual:\n{actual}");
    }

    /// Expected output, one line per item (each ends with a newline).
    fn lines(lines: &[&str]) -> String {
        lines.iter().map(|l| format!("{l}\n")).collect()
    }

    fn legend() -> Vec<&'static str> {
        TOPOLOGY_LEGEND.lines().collect()
    }

    /// A fully reported H100 in MIG mode with ECC counters, XIDs and throttling.
    fn mig_h100() -> AcceleratorView {
        let instance = |gi: u32, profile: &str, gib: u64, uuid: &str| MigInstanceView {
            uuid: uuid.into(),
            profile: profile.into(),
            memory_bytes: gib << 30,
            gpu_instance_id: gi,
            compute_instance_id: 0,
            hardware_class: format!("H100-80GB-MIG-{profile}"),
        };
        AcceleratorView {
            memory_used_bytes: Some(20 << 30),
            utilization_percent: Some(35),
            health: "degraded".into(),
            health_reason: "XID 94 (contained ECC error), XID 31 (GPU memory page fault); healthy again after 10m without new errors".into(),
            temperature_celsius: Some(41),
            power_watts: Some(310),
            pci_bus_id: Some("0000:18:00.0".into()),
            numa_node: Some(0),
            driver_version: Some("550.54.15".into()),
            compute_api_version: Some("12.4".into()),
            architecture: Some("9.0".into()),
            max_sm_clock_mhz: Some(1980),
            max_memory_clock_mhz: Some(2619),
            ecc_enabled: Some(true),
            mig: Some(MigView {
                enabled: true,
                pending_enabled: true,
                instances: vec![
                    instance(1, "3g.40gb", 40, "MIG-4f9b0bd4-0b6d-5f1a-9c4d-0123456789ab"),
                    instance(5, "1g.10gb", 10, "MIG-7c1e2a90-55d3-5b8e-a1f0-fedcba987654"),
                ],
            }),
            power_limit_watts: Some(700),
            sm_clock_mhz: Some(1755),
            memory_clock_mhz: Some(2619),
            throttle_reasons: Some(vec!["sw_power_cap".into(), "hw_thermal_slowdown".into()]),
            ecc: Some(EccCountsView {
                volatile_corrected: 3,
                volatile_uncorrected: 0,
                aggregate_corrected: Some(12),
                aggregate_uncorrected: Some(1),
                // Hopper remaps rows; it has no page retirement to report.
                retired_pages: None,
                retired_pages_pending: None,
                remapped_rows: Some(2),
                remap_pending: Some(true),
                remap_failed: Some(false),
            }),
            xid_count: Some(2),
            last_xid: Some(94),
            ..device(0, "H100-80GB", vec![link(1, "nvlink", 18)])
        }
    }

    /// A MIG parent is not scheduled whole: the summary says how many instances there are.
    #[test]
    fn apikey_commands_parse_and_need_a_tenant() {
        let cli = Cli::try_parse_from(["pyxis", "apikey", "create", "--tenant", "research", "-o", "json"]).unwrap();
        assert!(matches!(
            cli.command,
            Command::Apikey {
                action: ApiKeyAction::Create { ref tenant, name: None, output: Output::Json }
            } if tenant == "research"
        ));
        assert!(Cli::try_parse_from(["pyxis", "apikey", "create"]).is_err());
        assert!(Cli::try_parse_from(["pyxis", "apikey", "revoke", ""]).is_err());
        assert!(Cli::try_parse_from(["pyxis", "apikey", "list", "--tenant", "t"]).is_ok());
    }

    #[test]
    fn accelerator_summary_counts_mig_instances() {
        let summary = accelerators_summary(&node("mig-1", vec![mig_h100(), device(1, "H100-80GB", vec![])]));
        assert_eq!(summary, "2xH100-80GB [2 MIG] [1 not healthy]");
    }

    #[test]
    fn narrow_table_keeps_its_five_columns() {
        let table = nodes_table(&[node("hgx-1", hgx(8))], false);
        check(
            &table,
            &lines(&[
                "NAME    STATUS   ACCELERATORS   AGENT   LAST-SEEN",
                "hgx-1   Ready    8xH100-80GB    0.1.0   never",
            ]),
        );
    }

    /// `-o wide` adds the health and interconnect summaries after the narrow columns.
    #[test]
    fn wide_row_shows_health_tiers_first_bad_reason_and_interconnect() {
        let mut gpus = hgx(8);
        gpus[5].health = "degraded".into();
        gpus[5].health_reason = "12 corrected ECC errors in 10 minutes".into();
        gpus[6].health = "unhealthy".into();
        gpus[6].health_reason = "XID 79: the GPU has fallen off the bus; reset the GPU or reboot the node".into();
        let tpus = node("tpu-1", (0..4).map(|i| device(i, "TPU-v5e", vec![])).collect());
        let table = nodes_table(&[node("hgx-1", gpus), tpus], true);
        let lines: Vec<&str> = table.lines().collect();
        let columns: Vec<&str> = lines[0].split_whitespace().collect();
        assert_eq!(
            columns,
            [
                "NAME",
                "STATUS",
                "ACCELERATORS",
                "AGENT",
                "LAST-SEEN",
                "HEALTH",
                "INTERCONNECT",
                "ADDRESS",
                "OS",
                "KERNEL",
                "CPUS",
                "MEMORY",
                "RUNTIMES",
                "REASON"
            ]
        );
        let at = |column: &str| lines[0].find(column).unwrap();
        let cell = |line: &str, from: &str, to: &str| line[at(from)..at(to)].trim_end().to_string();
        check(
            &cell(lines[1], "HEALTH", "INTERCONNECT"),
            "6 healthy, 1 degraded, 1 unhealthy (GPU6: XID 79: the GPU has fallen...)",
        );
        check(&cell(lines[1], "INTERCONNECT", "ADDRESS"), "nvlink 8/8");
        check(&cell(lines[2], "HEALTH", "INTERCONNECT"), "4 healthy");
        check(&cell(lines[2], "INTERCONNECT", "ADDRESS"), "-");
    }

    #[test]
    fn health_summary_counts_tiers_and_names_the_worst_device() {
        let with = |tiers: &[(&str, &str)]| -> Vec<AcceleratorView> {
            tiers
                .iter()
                .enumerate()
                .map(|(i, (health, reason))| AcceleratorView {
                    health: health.to_string(),
                    health_reason: reason.to_string(),
                    ..device(i as u32, "H100-80GB", vec![])
                })
                .collect()
        };
        let cases: &[(&[(&str, &str)], &str)] = &[
            (&[], "-"),
            (&[("healthy", ""), ("healthy", "")], "2 healthy"),
            (
                &[("healthy", ""), ("degraded", "thermal slowdown"), ("degraded", "other")],
                "1 healthy, 2 degraded (GPU1: thermal slowdown)",
            ),
            // The worst tier wins over the lower index; an empty reason names the device.
            (
                &[("degraded", "ECC"), ("unhealthy", "")],
                "1 degraded, 1 unhealthy (GPU1)",
            ),
            // A tier this CLI does not know is counted under its own name.
            (
                &[("healthy", ""), ("quarantined", "by policy")],
                "1 healthy, 1 quarantined (GPU1: by policy)",
            ),
            (
                &[("unhealthy", "row remapping failed on bank 3; the device needs service")],
                "1 unhealthy (GPU0: row remapping failed on bank...)",
            ),
        ];
        for (tiers, expected) in cases {
            check(&health_summary(&with(tiers)), expected);
        }
    }

    #[test]
    fn interconnect_summary_names_the_fabric() {
        let pcie =
            |i: u32, peers: &[u32]| device(i, "L40S-48GB", peers.iter().map(|&p| link(p, "system", 0)).collect());
        let mixed = vec![
            device(0, "H100-80GB", vec![link(1, "nvlink", 18), link(2, "numa-node", 0)]),
            device(1, "H100-80GB", vec![link(0, "nvlink", 18), link(2, "system", 0)]),
            device(2, "MI300X-192GB", vec![link(0, "numa-node", 0), link(1, "system", 0)]),
        ];
        // Two NVLink bridges joining pairs of PCIe cards: every card has a peer, no mesh.
        let pairs = vec![
            device(0, "A100-80GB", vec![link(1, "nvlink", 12), link(2, "system", 0)]),
            device(1, "A100-80GB", vec![link(0, "nvlink", 12)]),
            device(2, "A100-80GB", vec![link(3, "nvlink", 12), link(0, "system", 0)]),
            device(3, "A100-80GB", vec![link(2, "nvlink", 12)]),
        ];
        let mi300x: Vec<AcceleratorView> = (0..8)
            .map(|i| {
                device(
                    i,
                    "MI300X-192GB",
                    (0..8).filter(|&p| p != i).map(|p| link(p, "xgmi", 1)).collect(),
                )
            })
            .collect();
        let cases: Vec<(Vec<AcceleratorView>, &str)> = vec![
            (hgx(8), "nvlink 8/8"),
            (mi300x, "xgmi 8/8"),
            (mixed, "nvlink 2/3"),
            (pairs, "nvlink 4/4 partial"),
            (vec![pcie(0, &[1]), pcie(1, &[0])], "pcie"),
            (vec![device(0, "H100-80GB", vec![])], "-"),
            (Vec::new(), "-"),
        ];
        for (devices, expected) in cases {
            check(&interconnect_summary(&devices), expected);
        }
    }

    #[test]
    fn topology_matrix_for_two_gpus() {
        let gpus = vec![
            AcceleratorView {
                numa_node: Some(0),
                ..device(0, "H100-80GB", vec![link(1, "pcie-host-bridge", 0)])
            },
            // The second device reports nothing: the first one's view of the path is used.
            device(1, "H100-80GB", vec![]),
        ];
        let expected = [
            vec![
                "        GPU0  GPU1  NUMA",
                "  GPU0  X     PHB   0",
                "  GPU1  PHB   X     -",
            ],
            legend(),
        ];
        check(&topology_matrix(&gpus).unwrap(), &lines(&expected.concat()));
    }

    #[test]
    fn topology_matrix_for_eight_gpus_fits_in_100_columns() {
        let mut gpus = hgx(8);
        // GPU7 sits behind a PCIe switch with GPU6 and has no fabric to the rest.
        for (i, gpu) in gpus.iter_mut().enumerate() {
            let i = i as u32;
            gpu.links.retain(|l| l.peer != 7 && i != 7);
        }
        gpus[7].links = (0..6)
            .map(|p| link(p, if p < 4 { "system" } else { "numa-node" }, 0))
            .collect();
        gpus[7].links.push(link(6, "pcie-switch", 0));
        let matrix = topology_matrix(&gpus).unwrap();
        let expected = [
            vec![
                "        GPU0  GPU1  GPU2  GPU3  GPU4  GPU5  GPU6  GPU7  NUMA",
                "  GPU0  X     NV18  NV18  NV18  NV18  NV18  NV18  SYS   0",
                "  GPU1  NV18  X     NV18  NV18  NV18  NV18  NV18  SYS   0",
                "  GPU2  NV18  NV18  X     NV18  NV18  NV18  NV18  SYS   0",
                "  GPU3  NV18  NV18  NV18  X     NV18  NV18  NV18  SYS   0",
                "  GPU4  NV18  NV18  NV18  NV18  X     NV18  NV18  NODE  1",
                "  GPU5  NV18  NV18  NV18  NV18  NV18  X     NV18  NODE  1",
                "  GPU6  NV18  NV18  NV18  NV18  NV18  NV18  X     PIX   1",
                "  GPU7  SYS   SYS   SYS   SYS   NODE  NODE  PIX   X     1",
            ],
            legend(),
        ];
        check(&matrix, &lines(&expected.concat()));
        assert!(matrix.lines().all(|l| l.chars().count() <= 100), "{matrix}");
    }

    #[test]
    fn topology_needs_two_devices_with_link_data() {
        assert_eq!(topology_matrix(&[]), None);
        assert_eq!(topology_matrix(&hgx(1)), None);
        let tpus: Vec<AcceleratorView> = (0..4).map(|i| device(i, "TPU-v5e", vec![])).collect();
        assert_eq!(topology_matrix(&tpus), None);
        let described = describe_node(&NodeDetail {
            node: node("tpu-1", tpus),
            events: Vec::new(),
        });
        assert!(
            described.contains(
                "Topology:\n  not reported (needs two or more devices with link data)\nReplicas:\n  none\nEvents:\n"
            ),
            "{described}"
        );
    }

    #[test]
    fn describe_lists_device_details_and_mig_instances() {
        let gpus = vec![
            mig_h100(),
            // A simulated GPU is idle: usage, throttling and XIDs read as zero / none.
            AcceleratorView {
                simulated: true,
                memory_used_bytes: Some(0),
                utilization_percent: Some(0),
                throttle_reasons: Some(Vec::new()),
                xid_count: Some(0),
                ..device(1, "H100-80GB", vec![link(0, "nvlink", 18)])
            },
        ];
        let described = describe_node(&NodeDetail {
            node: node("hgx-1", gpus),
            events: vec![EventView {
                time: "2026-11-24T01:43:49Z".into(),
                kind: "Normal".into(),
                reason: "Joined".into(),
                message: "joined from 10.0.0.7:51506 with token 4p6zrq".into(),
            }],
        });
        let from = described.find("Accelerators:").unwrap();
        let expected = [
            vec![
                "Accelerators:",
                "  GPU0: NVIDIA H100 80GB HBM3 (nvidia, H100-80GB)",
                "    UUID:           GPU-00000000",
                "    PCI bus id:     0000:18:00.0 (NUMA node 0)",
                "    Architecture:   9.0",
                "    Driver:         550.54.15 (CUDA 12.4)",
                "    Memory:         20GiB used of 80GiB",
                "    Usage:          util 35%, temp 41C, power 310W (limit 700W)",
                "    Clocks:         SM 1755 MHz (max 1980), memory 2619 MHz (max 2619)",
                "    Health:         degraded: XID 94 (contained ECC error), XID 31 (GPU memory page fault); healthy again after 10m without new errors",
                "    ECC:            enabled",
                "                    volatile 3 corrected, 0 uncorrected; aggregate 12 corrected, 1 uncorrected",
                "                    retired pages -; remapped rows 2; row remap pending a reset",
                "    XID errors:     2 (last XID 94)",
                "    Throttling:     sw_power_cap, hw_thermal_slowdown",
                "    MIG:            enabled, 2 instances",
                "      PROFILE   MEMORY   GI/CI   CLASS                   UUID",
                "      3g.40gb   40GiB    1/0     H100-80GB-MIG-3g.40gb   MIG-4f9b0bd4-0b6d-5f1a-9c4d-0123456789ab",
                "      1g.10gb   10GiB    5/0     H100-80GB-MIG-1g.10gb   MIG-7c1e2a90-55d3-5b8e-a1f0-fedcba987654",
                "  GPU1: NVIDIA H100 80GB HBM3 (nvidia, H100-80GB, simulated)",
                "    UUID:           GPU-00000001",
                "    PCI bus id:     -",
                "    Architecture:   -",
                "    Driver:         -",
                "    Memory:         0GiB used of 80GiB",
                "    Usage:          util 0%, temp -, power -",
                "    Clocks:         SM -, memory -",
                "    Health:         healthy",
                "    ECC:            -",
                "    XID errors:     0",
                "    Throttling:     none",
                "    MIG:            -",
                "Topology:",
                "        GPU0  GPU1  NUMA",
                "  GPU0  X     NV18  0",
                "  GPU1  NV18  X     -",
            ],
            legend(),
            vec![
                "Replicas:",
                "  none",
                "Events:",
                "  TIME                   TYPE     REASON   MESSAGE",
                "  2026-11-24T01:43:49Z   Normal   Joined   joined from 10.0.0.7:51506 with token 4p6zrq",
            ],
        ];
        check(&described[from..], &lines(&expected.concat()));
        // Layout fits 100 columns; only a health reason, printed in full, may run longer.
        assert!(
            described
                .lines()
                .filter(|l| !l.trim_start().starts_with("Health:"))
                .all(|l| l.chars().count() <= 100),
            "{described}"
        );
    }

    #[test]
    fn describe_shows_an_unhealthy_reason_in_full() {
        let reason =
            "XID 79: the GPU has fallen off the bus; reset the GPU or reboot the node (seen 3 times since 01:40)";
        let gpu = AcceleratorView {
            health: "unhealthy".into(),
            health_reason: reason.into(),
            ..device(0, "H100-80GB", vec![])
        };
        let described = describe_accelerator(&gpu);
        assert!(
            described.contains(&format!("    Health:         unhealthy: {reason}\n")),
            "{described}"
        );
        // A device that reports nothing but its identity says so plainly: `-`, never a
        // made-up 0.
        check(
            &described,
            &lines(&[
                "  GPU0: NVIDIA H100 80GB HBM3 (nvidia, H100-80GB)",
                "    UUID:           GPU-00000000",
                "    PCI bus id:     -",
                "    Architecture:   -",
                "    Driver:         -",
                "    Memory:         - used of 80GiB",
                "    Usage:          util -, temp -, power -",
                "    Clocks:         SM -, memory -",
                &format!("    Health:         unhealthy: {reason}"),
                "    ECC:            -",
                "    XID errors:     -",
                "    Throttling:     -",
                "    MIG:            -",
            ]),
        );
        // Lost before its memory could be read: the total is unknown too.
        let lost = describe_accelerator(&AcceleratorView { memory_bytes: 0, ..gpu });
        assert!(lost.contains("    Memory:         - used of -\n"), "{lost}");
    }

    /// What AMD and TPU backends do not read shows as `-`; the old rendering said "util 0%",
    /// "XID errors: 0", "Throttling: none" and "aggregate 0 corrected" for them.
    #[test]
    fn describe_shows_unreported_facts_as_dashes() {
        // An MI300X read through amdgpu sysfs: usage, clocks and the RAS counts since boot.
        let amd = AcceleratorView {
            memory_bytes: 192 << 30,
            memory_used_bytes: Some(3 << 30),
            utilization_percent: Some(64),
            temperature_celsius: Some(52),
            sm_clock_mhz: Some(1300),
            max_sm_clock_mhz: Some(2100),
            memory_clock_mhz: Some(1300),
            max_memory_clock_mhz: Some(1300),
            ecc_enabled: Some(true),
            ecc: Some(EccCountsView {
                volatile_corrected: 7,
                volatile_uncorrected: 1,
                ..EccCountsView::default()
            }),
            ..device(0, "MI300X-192GB", vec![])
        };
        check(
            &describe_accelerator(&amd),
            &lines(&[
                "  GPU0: AMD Instinct MI300X (amd, MI300X-192GB)",
                "    UUID:           GPU-00000000",
                "    PCI bus id:     -",
                "    Architecture:   -",
                "    Driver:         -",
                "    Memory:         3GiB used of 192GiB",
                "    Usage:          util 64%, temp 52C, power -",
                "    Clocks:         graphics 1300 MHz (max 2100), memory 1300 MHz (max 1300)",
                "    Health:         healthy",
                "    ECC:            enabled",
                "                    volatile 7 corrected, 1 uncorrected; aggregate - corrected, - uncorrected",
                "                    retired pages -; remapped rows -",
                "    XID errors:     -",
                "    Throttling:     -",
                "    MIG:            -",
            ]),
        );
        let tpu = describe_accelerator(&AcceleratorView {
            memory_bytes: 16 << 30,
            ..device(1, "TPU-v5e", vec![])
        });
        for expected in [
            "    Memory:         - used of 16GiB\n",
            "    Usage:          util -, temp -, power -\n",
            "    Clocks:         graphics -, memory -\n",
            "    XID errors:     -\n",
            "    Throttling:     -\n",
        ] {
            assert!(tpu.contains(expected), "{expected:?} missing from\n{tpu}");
        }
    }
}
