//! The `pyxis` operator CLI: a thin, kubectl-like client of the admin API.
//!
//! Output contract: `-o json` and `-o yaml` print exactly the API's documented shapes on
//! stdout; tables are for humans; diagnostics go to stderr. Exit codes: 0 ok, 1 the
//! request failed (unreachable server, refused token, not found), 2 usage error.

use std::{io::Write, path::PathBuf, time::Duration};

use clap::{Parser, Subcommand, ValueEnum};
use serde::{de::DeserializeOwned, Serialize};

use crate::api_types::{ErrorBody, List, NodeDetail, NodeView, TokenRequest, TokenResponse};

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
    /// List resources.
    Get {
        /// Kind to list.
        #[arg(ignore_case = true)]
        kind: GetKind,
        /// Only this one.
        name: Option<String>,
        /// Tenant of namespaced kinds (nodes are cluster-wide and ignore it).
        #[arg(short = 'n', long = "namespace", value_name = "TENANT")]
        namespace: Option<String>,
        /// All tenants (nodes are cluster-wide and ignore it).
        #[arg(short = 'A', long = "all-tenants")]
        all_tenants: bool,
        /// Output format.
        #[arg(short, long, value_enum, default_value = "table")]
        output: Output,
    },
    /// Show one resource in detail, with its events.
    Describe {
        /// Kind.
        #[arg(ignore_case = true)]
        kind: GetKind,
        /// Name.
        #[arg(value_parser = parse_name)]
        name: String,
        /// Output format (table is the human description).
        #[arg(short, long, value_enum, default_value = "table")]
        output: Output,
    },
    /// Delete a resource. Deleting a node forgets it: its certificate stops working and
    /// its name may join again with a new token (the way back after `node revoke`).
    Delete {
        /// Kind.
        #[arg(ignore_case = true)]
        kind: GetKind,
        /// Name.
        #[arg(value_parser = parse_name)]
        name: String,
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

fn parse_name(text: &str) -> Result<String, String> {
    if text.trim().is_empty() {
        Err("must not be empty".into())
    } else {
        Ok(text.to_string())
    }
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

/// Kinds `get` and `describe` know in this release.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum GetKind {
    /// Nodes (agents).
    #[value(alias = "node", alias = "no")]
    Nodes,
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
        let message = serde_json::from_str::<ErrorBody>(&text).map(|b| b.error.message).unwrap_or_else(|_| {
            let snippet: String = text.chars().take(200).collect();
            format!("HTTP {status} without a Pyxis error body from {} (is that a Pyxis coordinator's admin API?) {snippet}", self.server)
        });
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
        Command::Describe {
            kind: GetKind::Nodes,
            name,
            output,
        } => {
            let detail: NodeDetail = client.call("GET", &format!("/api/v1/nodes/{}", encode(&name)), None::<&()>)?;
            match output {
                Output::Json | Output::Yaml => print_structured(out, &detail, output),
                _ => write(out, describe_node(&detail)),
            }
        }
        Command::Delete {
            kind: GetKind::Nodes,
            name,
        } => {
            let _: serde_json::Value =
                client.call("DELETE", &format!("/api/v1/nodes/{}", encode(&name)), None::<&()>)?;
            write(
                out,
                format!("node/{name} deleted; it may join again with a new token\n"),
            )
        }
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
    let mut text = groups
        .iter()
        .map(|(class, n, sim)| format!("{n}x{class}{}", if *sim { "(sim)" } else { "" }))
        .collect::<Vec<_>>()
        .join(",");
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
        header.extend(["ADDRESS", "OS", "KERNEL", "CPUS", "MEMORY", "RUNTIMES", "REASON"]);
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
    } else {
        let mut rows = vec![[
            "INDEX",
            "VENDOR",
            "MODEL",
            "CLASS",
            "MEMORY",
            "USED",
            "UTIL",
            "TEMP",
            "POWER",
            "HEALTH",
            "SIMULATED",
            "UUID",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect::<Vec<_>>()];
        for a in &n.accelerators {
            let health = if a.health_reason.is_empty() {
                a.health.clone()
            } else {
                format!("{} ({})", a.health, a.health_reason)
            };
            rows.push(vec![
                a.index.to_string(),
                a.vendor.clone(),
                a.model.clone(),
                a.hardware_class.clone(),
                gib(a.memory_bytes),
                gib(a.memory_used_bytes),
                format!("{}%", a.utilization_percent),
                a.temperature_celsius
                    .map(|t| format!("{t}C"))
                    .unwrap_or_else(|| "-".into()),
                a.power_watts.map(|w| format!("{w}W")).unwrap_or_else(|| "-".into()),
                health,
                a.simulated.to_string(),
                a.uuid.clone(),
            ]);
        }
        for line in table(rows).lines() {
            out.push_str(&format!("  {line}\n"));
        }
    }
    out.push_str("Events:\n");
    if detail.events.is_empty() {
        out.push_str("  none\n");
    } else {
        let mut rows = vec![vec![
            "TIME".to_string(),
            "TYPE".into(),
            "REASON".into(),
            "MESSAGE".into(),
        ]];
        for e in &detail.events {
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
    }
    out
}
