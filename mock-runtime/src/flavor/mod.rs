//! Flavours: which real runtime the mock imitates, and that runtime's own command line.
//!
//! Each flavour keeps the list of flags its real CLI knows (from `docs/runtimes.md` and the
//! runtimes' `--help`). The mock accepts those, reads the few that matter (host, port, model,
//! served name, metrics switch...) and ignores the rest; an unknown flag is rejected with
//! exit code 2 and a message naming it, as the real CLIs do. That is how adapter launch lines
//! are checked against the real interfaces.
//!
//! Pure: the environment and the filesystem come in through [`LaunchSource`], so every table
//! is unit-tested without touching the process. The tables themselves are in [`mod@flags`].

mod flags;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The real runtime the mock imitates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Flavor {
    /// `vllm serve MODEL ...`
    Vllm,
    /// `text-generation-launcher --model-id MODEL ...` (Hugging Face TGI).
    Tgi,
    /// `python -m sglang.launch_server --model-path MODEL ...`
    Sglang,
    /// `tritonserver --model-repository DIR ...` (NVIDIA Triton).
    Triton,
    /// `trtllm-serve MODEL ...` (TensorRT-LLM).
    Trtllm,
    /// `ollama serve` with `OLLAMA_HOST`.
    Ollama,
    /// `llama-server -m FILE ...` (llama.cpp).
    LlamaCpp,
    /// No real runtime: a plain OpenAI-compatible server (`--host --port --model`).
    Openai,
}

impl Flavor {
    /// The name used on the command line and in logs.
    pub fn name(self) -> &'static str {
        match self {
            Flavor::Vllm => "vllm",
            Flavor::Tgi => "tgi",
            Flavor::Sglang => "sglang",
            Flavor::Triton => "triton",
            Flavor::Trtllm => "trtllm",
            Flavor::Ollama => "ollama",
            Flavor::LlamaCpp => "llama-cpp",
            Flavor::Openai => "openai",
        }
    }

    /// The real program the flavour stands in for (used in error messages).
    pub fn program(self) -> &'static str {
        match self {
            Flavor::Vllm => "vllm serve",
            Flavor::Tgi => "text-generation-launcher",
            Flavor::Sglang => "sglang.launch_server",
            Flavor::Triton => "tritonserver",
            Flavor::Trtllm => "trtllm-serve",
            Flavor::Ollama => "ollama",
            Flavor::LlamaCpp => "llama-server",
            Flavor::Openai => "pyxis-mock-runtime",
        }
    }

    /// Whether the real runtime serves the OpenAI API. `tritonserver` does not: that is its
    /// separate OpenAI frontend (a plain Triton answers 404 under `/v1`).
    pub fn has_openai_api(self) -> bool {
        self != Flavor::Triton
    }

    /// Whether the real runtime has `/v1/embeddings`.
    pub fn has_embeddings(self) -> bool {
        !matches!(self, Flavor::Tgi | Flavor::Trtllm | Flavor::Triton)
    }

    /// Whether the real runtime sends the final `usage` chunk for
    /// `stream_options.include_usage` (TGI does not, per TGI#2531).
    pub fn streams_usage(self) -> bool {
        self != Flavor::Tgi
    }
}

use flags::{flags, Arity, Role};
use Arity::{OptionalValue, Switch, Value, Values};
use Role::*;

/// Where a launch reads what is not on the command line. Injected so parsing is testable.
pub trait LaunchSource {
    /// An environment variable (`OLLAMA_HOST`, `VLLM_API_KEY`, `LLAMA_ARG_*`...).
    fn var(&self, name: &str) -> Option<String>;
    /// The model directories in a Triton model repository, sorted; empty if it is unreadable.
    fn model_dirs(&self, repository: &str) -> Vec<String>;
    /// The models pulled into an Ollama store (`OLLAMA_MODELS`), sorted.
    fn ollama_models(&self, root: &str) -> Vec<String>;
}

/// The process environment and filesystem.
#[derive(Debug, Clone, Copy)]
pub struct ProcessSource;

impl LaunchSource for ProcessSource {
    fn var(&self, name: &str) -> Option<String> {
        std::env::var(name).ok()
    }

    fn model_dirs(&self, repository: &str) -> Vec<String> {
        let Ok(entries) = std::fs::read_dir(repository) else {
            return Vec::new();
        };
        let mut names: Vec<String> = entries
            .filter_map(Result::ok)
            .filter(|e| e.file_type().map(|t| t.is_dir()).unwrap_or(false))
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|name| !name.starts_with('.'))
            .collect();
        names.sort();
        names
    }

    fn ollama_models(&self, root: &str) -> Vec<String> {
        let manifests = Path::new(root).join("manifests");
        let mut names = Vec::new();
        for host in subdirs(&manifests) {
            for namespace in subdirs(&manifests.join(&host)) {
                for model in subdirs(&manifests.join(&host).join(&namespace)) {
                    let Ok(tags) = std::fs::read_dir(manifests.join(&host).join(&namespace).join(&model)) else {
                        continue;
                    };
                    for tag in tags
                        .filter_map(Result::ok)
                        .filter_map(|e| e.file_name().into_string().ok())
                    {
                        names.push(ollama_name_of(&host, &namespace, &model, &tag));
                    }
                }
            }
        }
        names.sort();
        names
    }
}

fn subdirs(dir: &Path) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .filter_map(Result::ok)
        .filter(|e| e.file_type().map(|t| t.is_dir()).unwrap_or(false))
        .filter_map(|e| e.file_name().into_string().ok())
        .collect()
}

const OLLAMA_REGISTRY: &str = "registry.ollama.ai";

/// The name Ollama shows for `manifests/HOST/NAMESPACE/MODEL/TAG`.
fn ollama_name_of(host: &str, namespace: &str, model: &str, tag: &str) -> String {
    match (host, namespace) {
        (OLLAMA_REGISTRY, "library") => format!("{model}:{tag}"),
        (OLLAMA_REGISTRY, _) => format!("{namespace}/{model}:{tag}"),
        _ => format!("{host}/{namespace}/{model}:{tag}"),
    }
}

/// Where Ollama keeps the manifest of `name` (`[HOST/][NAMESPACE/]MODEL[:TAG]`) under
/// `root`; `None` for a name that is not one (empty parts, `..`, odd characters), so a
/// request body never chooses an arbitrary path.
pub fn ollama_manifest_path(root: &str, name: &str) -> Option<PathBuf> {
    let (path, tag) = match name.rsplit_once(':') {
        Some((path, tag)) if !tag.contains('/') => (path, tag),
        _ => (name, "latest"),
    };
    let parts: Vec<&str> = path.split('/').collect();
    let (host, namespace, model) = match parts.as_slice() {
        [model] => (OLLAMA_REGISTRY, "library", *model),
        [namespace, model] => (OLLAMA_REGISTRY, *namespace, *model),
        [host, namespace, model] => (*host, *namespace, *model),
        _ => return None,
    };
    let valid = |part: &str| {
        !part.is_empty()
            && part != "."
            && part != ".."
            && part
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))
    };
    if ![host, namespace, model, tag].into_iter().all(valid) {
        return None;
    }
    Some(
        Path::new(root)
            .join("manifests")
            .join(host)
            .join(namespace)
            .join(model)
            .join(tag),
    )
}

/// Why a runtime command line is rejected (exit code 2, like the real CLIs).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UsageError {
    /// A flag the real runtime does not know.
    #[error("unrecognized arguments: {flag}")]
    UnknownFlag {
        /// The flag as given.
        flag: String,
    },
    /// A flag that needs a value came last, or before another flag.
    #[error("argument {flag}: expected one argument")]
    MissingValue {
        /// The flag.
        flag: String,
    },
    /// A switch given a value (`--enforce-eager=1`).
    #[error("argument {flag}: ignored explicit argument '{value}'")]
    UnexpectedValue {
        /// The flag.
        flag: String,
        /// The value.
        value: String,
    },
    /// A value of the wrong type (`--port abc`).
    #[error("argument {flag}: invalid value '{value}': {reason}")]
    InvalidValue {
        /// The flag (or environment variable).
        flag: String,
        /// The value.
        value: String,
        /// What was expected.
        reason: &'static str,
    },
    /// A positional argument the runtime does not take.
    #[error("unrecognized arguments: {arg}")]
    UnexpectedArgument {
        /// The argument.
        arg: String,
    },
    /// The runtime's subcommand is missing or wrong (`vllm` without `serve`).
    #[error("expected subcommand '{expected}', got {got}")]
    Subcommand {
        /// The subcommand the mock imitates.
        expected: &'static str,
        /// What came instead.
        got: String,
    },
    /// No model was named.
    #[error("no model given: pass {how}")]
    MissingModel {
        /// The flag or argument that names it.
        how: &'static str,
    },
}

/// Everything the mock takes from a runtime command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Launch {
    /// The flavour.
    pub flavor: Flavor,
    /// Address to bind (the flavour's default when not given).
    pub host: String,
    /// Port to bind; 0 binds any free port.
    pub port: u16,
    /// The model as given (HF id, path, GGUF file, repository).
    pub model: String,
    /// Names a request may use in `model`; the first is listed by `/v1/models`.
    pub served_names: Vec<String>,
    /// The real runtime ignores the request's `model` (TGI, llama.cpp single-model).
    pub accept_any_model: bool,
    /// Bearer key required on the OpenAI routes.
    pub api_key: Option<String>,
    /// Whether the metrics endpoint answers.
    pub metrics_enabled: bool,
    /// Triton: the separate metrics listener (address, port).
    pub metrics_listener: Option<(String, u16)>,
    /// Triton: the gRPC listener (address, port); bound but not spoken.
    pub grpc_listener: Option<(String, u16)>,
    /// Requests processed at once, when the command line says.
    pub max_concurrency: Option<usize>,
    /// Longest prompt + completion in tokens, when the command line says.
    pub context_tokens: Option<u64>,
    /// KV-cache capacity in tokens, when the command line says.
    pub kv_capacity_tokens: Option<u64>,
    /// Tensor-parallel size (reported in info endpoints).
    pub tensor_parallel: u32,
    /// Triton: `--metrics-config histogram_latencies=true`.
    pub latency_histograms: bool,
    /// Ollama: `OLLAMA_MODELS`, where pulled models are recorded.
    pub ollama_models: Option<String>,
    /// Every flag given, canonical name without dashes (underscores) → value, for the
    /// info endpoints that echo the server arguments.
    pub settings: BTreeMap<String, String>,
}

/// The flags of a command line, before flavour defaults.
#[derive(Debug, Default)]
struct Given {
    host: Option<String>,
    port: Option<u16>,
    model: Option<String>,
    served: Vec<String>,
    api_key: Option<String>,
    enable_metrics: bool,
    allow_metrics: Option<bool>,
    allow_grpc: Option<bool>,
    metrics_port: Option<u16>,
    metrics_address: Option<String>,
    grpc_port: Option<u16>,
    grpc_address: Option<String>,
    metrics_config: Vec<String>,
    load_model: Vec<String>,
    max_concurrency: Option<usize>,
    context: Option<u64>,
    kv_capacity: Option<u64>,
    tensor_parallel: Option<u32>,
    positionals: Vec<String>,
    settings: BTreeMap<String, String>,
}

/// Parses the arguments that follow `--flavor X` as the real runtime would.
pub fn parse(flavor: Flavor, args: &[String], source: &dyn LaunchSource) -> Result<Launch, UsageError> {
    let rest = strip_subcommand(flavor, args)?;
    let given = parse_flags(flavor, rest)?;
    finish(flavor, given, source)
}

fn strip_subcommand(flavor: Flavor, args: &[String]) -> Result<&[String], UsageError> {
    let first = args.first().map(String::as_str);
    match flavor {
        Flavor::Vllm | Flavor::Ollama => match first {
            Some("serve") => Ok(&args[1..]),
            Some(other) => Err(UsageError::Subcommand {
                expected: "serve",
                got: format!("'{other}'"),
            }),
            None => Err(UsageError::Subcommand {
                expected: "serve",
                got: "nothing".to_string(),
            }),
        },
        // `trtllm-serve MODEL` and `trtllm-serve serve MODEL` are the same command.
        Flavor::Trtllm if first == Some("serve") => Ok(&args[1..]),
        _ => Ok(args),
    }
}

fn lookup(flavor: Flavor, name: &str) -> Option<(&'static str, Arity, Role)> {
    flags(flavor).iter().find_map(|(names, arity, role)| {
        names
            .split('|')
            .any(|alias| alias == name)
            .then(|| (names.split('|').next().unwrap_or(names), *arity, *role))
    })
}

/// Looks a flag up, with vLLM's spellings: `--tensor_parallel_size` is `--tensor-parallel-size`
/// and a switch `--x` also has `--no-x` (argparse `BooleanOptionalAction`).
fn resolve(flavor: Flavor, name: &str) -> Option<(&'static str, Arity, Role, bool)> {
    if flavor != Flavor::Vllm || !name.starts_with("--") {
        return lookup(flavor, name).map(|(n, a, r)| (n, a, r, true));
    }
    let normalised = name.replace('_', "-");
    if let Some((n, a, r)) = lookup(flavor, &normalised) {
        return Some((n, a, r, true));
    }
    let positive = format!("--{}", normalised.strip_prefix("--no-")?);
    match lookup(flavor, &positive) {
        Some((n, Switch, r)) => Some((n, Switch, r, false)),
        _ => None,
    }
}

/// argparse (vLLM, SGLang) accepts a single-dash option with its value attached: `-O3`,
/// `-tp2`. Returns the option and the value when `arg` is one of those.
fn attached_short_value(flavor: Flavor, arg: &str) -> Option<(&str, String)> {
    if !matches!(flavor, Flavor::Vllm | Flavor::Sglang) || arg.starts_with("--") {
        return None;
    }
    // The longest alias wins: `-dpn3` is `-dpn 3`, not `-dp n3`.
    flags(flavor)
        .iter()
        .filter(|(_, arity, _)| *arity == Value)
        .flat_map(|(names, _, _)| names.split('|').filter(|alias| !alias.starts_with("--")))
        .filter(|short| arg.len() > short.len() && arg.starts_with(short))
        .max_by_key(|short| short.len())
        .map(|short| (&arg[..short.len()], arg[short.len()..].to_string()))
}

fn looks_like_flag(arg: &str) -> bool {
    arg.starts_with('-') && arg.len() > 1 && arg.parse::<f64>().is_err()
}

fn parse_flags(flavor: Flavor, args: &[String]) -> Result<Given, UsageError> {
    let mut given = Given::default();
    let mut i = 0;
    while i < args.len() {
        let arg = &args[i];
        i += 1;
        if arg == "--" {
            given.positionals.extend(args[i..].iter().cloned());
            break;
        }
        if !looks_like_flag(arg) {
            given.positionals.push(arg.clone());
            continue;
        }
        let (name, inline) = match arg.split_once('=') {
            Some((name, value)) if arg.starts_with("--") => (name, Some(value.to_string())),
            _ => (arg.as_str(), None),
        };
        let (name, inline) = match (resolve(flavor, name), inline) {
            (None, None) => match attached_short_value(flavor, name) {
                Some((short, value)) => (short, Some(value)),
                None => (name, None),
            },
            (_, inline) => (name, inline),
        };
        let Some((canonical, arity, role, positive)) = resolve(flavor, name) else {
            return Err(UsageError::UnknownFlag { flag: name.to_string() });
        };
        let mut values = Vec::new();
        match (arity, inline) {
            (Switch, Some(value)) => {
                return Err(UsageError::UnexpectedValue {
                    flag: name.to_string(),
                    value,
                })
            }
            (Switch, None) => {}
            (_, Some(value)) => values.push(value),
            (Value, None) => match args.get(i) {
                Some(next) if !looks_like_flag(next) => {
                    values.push(next.clone());
                    i += 1;
                }
                _ => return Err(UsageError::MissingValue { flag: name.to_string() }),
            },
            (OptionalValue, None) => {
                if let Some(next) = args.get(i).filter(|next| !looks_like_flag(next)) {
                    values.push(next.clone());
                    i += 1;
                }
            }
            (Values, None) => {
                while let Some(next) = args.get(i).filter(|next| !looks_like_flag(next)) {
                    values.push(next.clone());
                    i += 1;
                }
                if values.is_empty() {
                    return Err(UsageError::MissingValue { flag: name.to_string() });
                }
            }
        }
        let key = canonical.trim_start_matches('-').replace('-', "_");
        let shown = if arity == Switch {
            positive.to_string()
        } else {
            values.join(" ")
        };
        given.settings.insert(key, shown);
        apply(&mut given, name, role, positive, values)?;
    }
    Ok(given)
}

fn number<T: std::str::FromStr>(flag: &str, value: &str, reason: &'static str) -> Result<T, UsageError> {
    value.trim().parse().map_err(|_| UsageError::InvalidValue {
        flag: flag.to_string(),
        value: value.to_string(),
        reason,
    })
}

fn positive<T: std::str::FromStr + PartialEq + Default>(flag: &str, value: &str) -> Result<T, UsageError> {
    let parsed: T = number(flag, value, "expected a positive integer")?;
    if parsed == T::default() {
        return Err(UsageError::InvalidValue {
            flag: flag.to_string(),
            value: value.to_string(),
            reason: "expected a positive integer",
        });
    }
    Ok(parsed)
}

fn boolean(flag: &str, value: &str) -> Result<bool, UsageError> {
    match value.trim().to_ascii_lowercase().as_str() {
        "true" | "on" | "1" | "yes" => Ok(true),
        "false" | "off" | "0" | "no" => Ok(false),
        _ => Err(UsageError::InvalidValue {
            flag: flag.to_string(),
            value: value.to_string(),
            reason: "expected true or false",
        }),
    }
}

fn apply(given: &mut Given, flag: &str, role: Role, switch_on: bool, values: Vec<String>) -> Result<(), UsageError> {
    let value = values.first().cloned().unwrap_or_default();
    match role {
        Host => given.host = Some(value),
        Port => given.port = Some(number(flag, &value, "expected a port number (0-65535)")?),
        Model => given.model = Some(value),
        ServedName => given.served = values,
        ApiKey => given.api_key = Some(value),
        EnableMetrics => given.enable_metrics = switch_on,
        AllowMetrics => given.allow_metrics = Some(boolean(flag, &value)?),
        AllowGrpc => given.allow_grpc = Some(boolean(flag, &value)?),
        MetricsPort => given.metrics_port = Some(number(flag, &value, "expected a port number (0-65535)")?),
        MetricsAddress => given.metrics_address = Some(value),
        GrpcPort => given.grpc_port = Some(number(flag, &value, "expected a port number (0-65535)")?),
        GrpcAddress => given.grpc_address = Some(value),
        MetricsConfig => given.metrics_config.push(value),
        LoadModel => given.load_model.push(value),
        MaxConcurrency => given.max_concurrency = Some(positive(flag, &value)?),
        // llama.cpp `-c 0` means "the model's own context length".
        Context => given.context = Some(number::<u64>(flag, &value, "expected an integer")?).filter(|c| *c > 0),
        KvCapacity => given.kv_capacity = Some(positive(flag, &value)?),
        TensorParallel => given.tensor_parallel = Some(positive(flag, &value)?),
        Other => {}
    }
    Ok(())
}

fn no_positionals(given: &Given) -> Result<(), UsageError> {
    match given.positionals.first() {
        Some(arg) => Err(UsageError::UnexpectedArgument { arg: arg.clone() }),
        None => Ok(()),
    }
}

fn env_number<T: std::str::FromStr>(source: &dyn LaunchSource, name: &str) -> Result<Option<T>, UsageError> {
    source
        .var(name)
        .map(|value| number(name, &value, "expected a number"))
        .transpose()
}

fn finish(flavor: Flavor, mut given: Given, source: &dyn LaunchSource) -> Result<Launch, UsageError> {
    let mut launch = Launch {
        flavor,
        host: String::new(),
        port: 0,
        model: String::new(),
        served_names: Vec::new(),
        accept_any_model: false,
        api_key: given.api_key.take(),
        metrics_enabled: true,
        metrics_listener: None,
        grpc_listener: None,
        max_concurrency: given.max_concurrency,
        context_tokens: given.context,
        kv_capacity_tokens: given.kv_capacity,
        tensor_parallel: given.tensor_parallel.unwrap_or(1),
        latency_histograms: false,
        ollama_models: None,
        settings: std::mem::take(&mut given.settings),
    };
    match flavor {
        Flavor::Vllm => {
            let model = match (given.positionals.as_slice(), given.model.take()) {
                ([], Some(model)) => model,
                ([model], _) => model.clone(),
                ([], None) => return Err(UsageError::MissingModel { how: "serve MODEL" }),
                ([_, extra, ..], _) => return Err(UsageError::UnexpectedArgument { arg: extra.clone() }),
            };
            // Unset host means every interface (uvicorn binds "").
            launch.host = given.host.unwrap_or_else(|| "0.0.0.0".to_string());
            launch.port = given.port.unwrap_or(8000);
            launch.api_key = launch.api_key.or_else(|| source.var("VLLM_API_KEY"));
            launch.served_names = named_or(given.served, &model);
            launch.model = model;
        }
        Flavor::Tgi => {
            no_positionals(&given)?;
            let model = given
                .model
                .or_else(|| source.var("MODEL_ID"))
                .unwrap_or_else(|| "bigscience/bloom-560m".to_string());
            launch.host = given.host.unwrap_or_else(|| "0.0.0.0".to_string());
            launch.port = given.port.unwrap_or(3000);
            launch.served_names = vec![model.clone()];
            launch.model = model;
            launch.accept_any_model = true;
        }
        Flavor::Sglang => {
            no_positionals(&given)?;
            let model = given.model.ok_or(UsageError::MissingModel { how: "--model-path" })?;
            launch.host = given.host.unwrap_or_else(|| "127.0.0.1".to_string());
            launch.port = given.port.unwrap_or(30000);
            launch.served_names = named_or(given.served, &model);
            launch.model = model;
            launch.metrics_enabled = given.enable_metrics;
        }
        Flavor::Triton => {
            no_positionals(&given)?;
            let repository = given.model.ok_or(UsageError::MissingModel {
                how: "--model-repository",
            })?;
            let mut names = given.load_model;
            if names.is_empty() {
                names = source.model_dirs(&repository);
            }
            if names.is_empty() {
                let base = repository.trim_end_matches('/').rsplit('/').next().unwrap_or("");
                names.push(if base.is_empty() {
                    "model".to_string()
                } else {
                    base.to_string()
                });
            }
            let address = given.host.unwrap_or_else(|| "0.0.0.0".to_string());
            launch.served_names = names;
            launch.model = repository;
            launch.port = given.port.unwrap_or(8000);
            launch.metrics_enabled = given.allow_metrics.unwrap_or(true);
            if launch.metrics_enabled {
                let metrics_address = given.metrics_address.unwrap_or_else(|| address.clone());
                launch.metrics_listener = Some((metrics_address, given.metrics_port.unwrap_or(8002)));
            }
            if given.allow_grpc.unwrap_or(true) {
                let grpc_address = given.grpc_address.unwrap_or_else(|| address.clone());
                launch.grpc_listener = Some((grpc_address, given.grpc_port.unwrap_or(8001)));
            }
            launch.latency_histograms = given
                .metrics_config
                .iter()
                .any(|c| c.replace(' ', "").eq_ignore_ascii_case("histogram_latencies=true"));
            launch.host = address;
        }
        Flavor::Trtllm => {
            let model = match given.positionals.as_slice() {
                [model] => model.clone(),
                [] => return Err(UsageError::MissingModel { how: "MODEL" }),
                [_, extra, ..] => return Err(UsageError::UnexpectedArgument { arg: extra.clone() }),
            };
            launch.host = given.host.unwrap_or_else(|| "localhost".to_string());
            launch.port = given.port.unwrap_or(8000);
            launch.served_names = named_or(given.served, &model);
            launch.model = model;
        }
        Flavor::Ollama => {
            no_positionals(&given)?;
            let (host, port) = ollama_host(source.var("OLLAMA_HOST").as_deref())?;
            launch.host = host;
            launch.port = port;
            launch.metrics_enabled = false;
            launch.ollama_models = source.var("OLLAMA_MODELS").filter(|dir| !dir.is_empty());
            if let Some(root) = &launch.ollama_models {
                launch.served_names = source.ollama_models(root);
            }
            launch.max_concurrency = env_number::<usize>(source, "OLLAMA_NUM_PARALLEL")?.filter(|n| *n > 0);
            launch.context_tokens = env_number::<u64>(source, "OLLAMA_CONTEXT_LENGTH")?.filter(|n| *n > 0);
        }
        Flavor::LlamaCpp => {
            no_positionals(&given)?;
            let model = given
                .model
                .or_else(|| source.var("LLAMA_ARG_MODEL"))
                .ok_or(UsageError::MissingModel {
                    how: "-m FILE or -hf REPO",
                })?;
            launch.host = given
                .host
                .or_else(|| source.var("LLAMA_ARG_HOST"))
                .unwrap_or_else(|| "127.0.0.1".to_string());
            launch.port = match given.port {
                Some(port) => port,
                None => env_number::<u16>(source, "LLAMA_ARG_PORT")?.unwrap_or(8080),
            };
            let alias = given
                .served
                .into_iter()
                .next()
                .or_else(|| source.var("LLAMA_ARG_ALIAS"));
            launch.served_names = vec![alias.unwrap_or_else(|| model.clone())];
            launch.model = model;
            launch.accept_any_model = true;
            launch.api_key = launch.api_key.or_else(|| source.var("LLAMA_API_KEY"));
            launch.metrics_enabled = given.enable_metrics
                || source
                    .var("LLAMA_ARG_ENDPOINT_METRICS")
                    .is_some_and(|v| matches!(v.as_str(), "1" | "true" | "on" | "enabled"));
            // -np omitted: 4 slots sharing one (unified) KV cache of -c tokens; an explicit
            // -np N gives each slot c/N (llama.cpp PR #16736).
            let explicit_slots = match launch.max_concurrency {
                Some(slots) => Some(slots),
                None => env_number::<usize>(source, "LLAMA_ARG_N_PARALLEL")?.filter(|n| *n > 0),
            };
            let total = match launch.context_tokens {
                Some(c) => c,
                None => env_number::<u64>(source, "LLAMA_ARG_CTX_SIZE")?
                    .filter(|c| *c > 0)
                    .unwrap_or(4096),
            };
            launch.max_concurrency = Some(explicit_slots.unwrap_or(4));
            launch.kv_capacity_tokens = Some(total);
            launch.context_tokens = Some(match explicit_slots {
                Some(slots) => (total / slots as u64).max(1),
                None => total,
            });
        }
        Flavor::Openai => {
            no_positionals(&given)?;
            let model = given.model.unwrap_or_else(|| "mock-model".to_string());
            launch.host = given.host.unwrap_or_else(|| "127.0.0.1".to_string());
            launch.port = given.port.unwrap_or(8000);
            launch.served_names = named_or(given.served, &model);
            launch.model = model;
        }
    }
    Ok(launch)
}

fn named_or(served: Vec<String>, model: &str) -> Vec<String> {
    if served.is_empty() {
        vec![model.to_string()]
    } else {
        served
    }
}

/// `OLLAMA_HOST`: `HOST`, `HOST:PORT`, `:PORT`, `[V6]:PORT`, optionally `http://`; default
/// `127.0.0.1:11434`.
fn ollama_host(value: Option<&str>) -> Result<(String, u16), UsageError> {
    let raw = value.map(str::trim).unwrap_or("");
    let without_scheme = raw
        .strip_prefix("http://")
        .or_else(|| raw.strip_prefix("https://"))
        .unwrap_or(raw)
        .trim_end_matches('/');
    if without_scheme.is_empty() {
        return Ok(("127.0.0.1".to_string(), 11434));
    }
    let invalid = || UsageError::InvalidValue {
        flag: "OLLAMA_HOST".to_string(),
        value: raw.to_string(),
        reason: "expected HOST[:PORT]",
    };
    let (host, port) = if let Some(rest) = without_scheme.strip_prefix('[') {
        let (host, after) = rest.split_once(']').ok_or_else(invalid)?;
        (host, after.strip_prefix(':'))
    } else {
        match without_scheme.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (without_scheme, None),
        }
    };
    let port = match port {
        Some(port) => port.parse().map_err(|_| invalid())?,
        None => 11434,
    };
    let host = if host.is_empty() { "127.0.0.1" } else { host };
    Ok((host.to_string(), port))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default)]
    struct FakeSource {
        vars: Vec<(&'static str, &'static str)>,
        dirs: Vec<&'static str>,
    }

    impl LaunchSource for FakeSource {
        fn var(&self, name: &str) -> Option<String> {
            self.vars.iter().find(|(k, _)| *k == name).map(|(_, v)| v.to_string())
        }
        fn model_dirs(&self, _repository: &str) -> Vec<String> {
            self.dirs.iter().map(|d| d.to_string()).collect()
        }
        fn ollama_models(&self, _root: &str) -> Vec<String> {
            self.dirs.iter().map(|d| d.to_string()).collect()
        }
    }

    fn args(line: &str) -> Vec<String> {
        line.split_whitespace().map(str::to_string).collect()
    }

    /// Parses `line` for `flavor` and returns (host, port, served names) or the error text.
    fn check(flavor: Flavor, line: &str, expected: Result<(&str, u16, &[&str]), &str>) {
        check_with(flavor, line, &FakeSource::default(), expected)
    }

    fn check_with(flavor: Flavor, line: &str, source: &FakeSource, expected: Result<(&str, u16, &[&str]), &str>) {
        let got = parse(flavor, &args(line), source)
            .map(|l| (l.host, l.port, l.served_names))
            .map_err(|e| e.to_string());
        let expected = expected
            .map(|(h, p, n)| (h.to_string(), p, n.iter().map(|s| s.to_string()).collect::<Vec<_>>()))
            .map_err(str::to_string);
        assert_eq!(got, expected, "{flavor:?}: {line}");
    }

    #[test]
    fn vllm_command_lines() {
        use Flavor::Vllm;
        check(
            Vllm,
            "serve Qwen/Qwen2.5-7B",
            Ok(("0.0.0.0", 8000, &["Qwen/Qwen2.5-7B"])),
        );
        check(
            Vllm,
            "serve /m --host 127.0.0.1 --port 0 --served-model-name a b --tensor-parallel-size 2 \
             --gpu-memory-utilization 0.9 --max-model-len 8192 --enforce-eager --no-enable-prefix-caching",
            Ok(("127.0.0.1", 0, &["a", "b"])),
        );
        check(
            Vllm,
            "serve /m --tensor_parallel_size=2 -tp 2 --port=9",
            Ok(("0.0.0.0", 9, &["/m"])),
        );
        check(Vllm, "serve /m -O3 -tp2", Ok(("0.0.0.0", 8000, &["/m"])));
        check(Vllm, "serve /m -Z3", Err("unrecognized arguments: -Z3"));
        check(Vllm, "serve --model /m", Ok(("0.0.0.0", 8000, &["/m"])));
        check(Vllm, "serve /m --bogus 1", Err("unrecognized arguments: --bogus"));
        check(
            Vllm,
            "serve /m --no-max-model-len",
            Err("unrecognized arguments: --no-max-model-len"),
        );
        check(Vllm, "serve /m --port", Err("argument --port: expected one argument"));
        check(
            Vllm,
            "serve /m --port --host x",
            Err("argument --port: expected one argument"),
        );
        check(
            Vllm,
            "serve /m --port abc",
            Err("argument --port: invalid value 'abc': expected a port number (0-65535)"),
        );
        check(Vllm, "serve /m extra", Err("unrecognized arguments: extra"));
        check(Vllm, "serve", Err("no model given: pass serve MODEL"));
        check(Vllm, "/m --port 1", Err("expected subcommand 'serve', got '/m'"));
        check(
            Vllm,
            "serve /m --enforce-eager=1",
            Err("argument --enforce-eager: ignored explicit argument '1'"),
        );
    }

    #[test]
    fn vllm_reads_the_api_key_from_its_environment() {
        let source = FakeSource {
            vars: vec![("VLLM_API_KEY", "k")],
            ..Default::default()
        };
        let launch = parse(Flavor::Vllm, &args("serve m"), &source).unwrap();
        assert_eq!(launch.api_key.as_deref(), Some("k"));
        let launch = parse(Flavor::Vllm, &args("serve m --api-key x"), &source).unwrap();
        assert_eq!(launch.api_key.as_deref(), Some("x"));
    }

    #[test]
    fn other_flavours_command_lines() {
        check(
            Flavor::Tgi,
            "--model-id m --hostname 127.0.0.1 -p 0 --num-shard 2 --max-total-tokens 4096 --trust-remote-code",
            Ok(("127.0.0.1", 0, &["m"])),
        );
        check(Flavor::Tgi, "", Ok(("0.0.0.0", 3000, &["bigscience/bloom-560m"])));
        check(Flavor::Tgi, "--model-id m --tp 2", Err("unrecognized arguments: --tp"));
        check(
            Flavor::Sglang,
            "--model-path m --host 0.0.0.0 --port 1 --enable-metrics --tp 2 --served-model-name s",
            Ok(("0.0.0.0", 1, &["s"])),
        );
        check(Flavor::Sglang, "--model m", Ok(("127.0.0.1", 30000, &["m"])));
        check(Flavor::Sglang, "--port 1", Err("no model given: pass --model-path"));
        check(
            Flavor::Sglang,
            "--model-path m --tensor-parallel_size 2",
            Err("unrecognized arguments: --tensor-parallel_size"),
        );
        check(
            Flavor::Trtllm,
            "serve m --host 0.0.0.0 --port 5 --tp_size 2 --kv_cache_free_gpu_memory_fraction 0.9",
            Ok(("0.0.0.0", 5, &["m"])),
        );
        check(Flavor::Trtllm, "m", Ok(("localhost", 8000, &["m"])));
        check(
            Flavor::Trtllm,
            "m --tp-size 2",
            Err("unrecognized arguments: --tp-size"),
        );
        check(Flavor::Trtllm, "--port 1", Err("no model given: pass MODEL"));
        check(
            Flavor::LlamaCpp,
            "-m /m.gguf --host 0.0.0.0 --port 7 -c 8192 --metrics -t 8 -ngl 99 -fa --jinja",
            Ok(("0.0.0.0", 7, &["/m.gguf"])),
        );
        check(
            Flavor::LlamaCpp,
            "-hf a/b:Q4 -a alias -fa on",
            Ok(("127.0.0.1", 8080, &["alias"])),
        );
        check(Flavor::LlamaCpp, "-m x --tp 2", Err("unrecognized arguments: --tp"));
        check(Flavor::Ollama, "serve", Ok(("127.0.0.1", 11434, &[])));
        check(Flavor::Ollama, "serve --port 1", Err("unrecognized arguments: --port"));
        check(
            Flavor::Ollama,
            "run llama3",
            Err("expected subcommand 'serve', got 'run'"),
        );
        check(Flavor::Openai, "--model m --port 0", Ok(("127.0.0.1", 0, &["m"])));
        check(
            Flavor::Openai,
            "--model m --bogus",
            Err("unrecognized arguments: --bogus"),
        );
    }

    #[test]
    fn triton_ports_and_model_names() {
        let source = FakeSource {
            dirs: vec!["llama", "mistral"],
            ..Default::default()
        };
        let launch = parse(
            Flavor::Triton,
            &args("--model-repository=/models --http-port 0 --grpc-port 0 --metrics-port 0 --strict-readiness true"),
            &source,
        )
        .unwrap();
        assert_eq!(launch.served_names, vec!["llama", "mistral"]);
        assert_eq!((launch.host.as_str(), launch.port), ("0.0.0.0", 0));
        assert_eq!(launch.metrics_listener, Some(("0.0.0.0".to_string(), 0)));
        assert_eq!(launch.grpc_listener, Some(("0.0.0.0".to_string(), 0)));
        assert!(!launch.latency_histograms);

        let launch = parse(
            Flavor::Triton,
            &args("--model-repository /r/ --load-model m --allow-metrics false --allow-grpc=false --metrics-config histogram_latencies=true"),
            &FakeSource::default(),
        )
        .unwrap();
        assert_eq!(launch.served_names, vec!["m"]);
        assert_eq!((launch.metrics_listener, launch.grpc_listener), (None, None));
        assert!(launch.latency_histograms);
        let launch = parse(
            Flavor::Triton,
            &args("--model-repository /r/models"),
            &FakeSource::default(),
        )
        .unwrap();
        assert_eq!(launch.served_names, vec!["models"]);
        check(
            Flavor::Triton,
            "--model-repository /r --allow-metrics maybe",
            Err("argument --allow-metrics: invalid value 'maybe': expected true or false"),
        );
        check(
            Flavor::Triton,
            "--model-repository /r --port 1",
            Err("unrecognized arguments: --port"),
        );
    }

    #[test]
    fn ollama_host_forms() {
        type Case = (Option<&'static str>, Option<(&'static str, u16)>);
        let cases: &[Case] = &[
            (None, Some(("127.0.0.1", 11434))),
            (Some("0.0.0.0"), Some(("0.0.0.0", 11434))),
            (Some("0.0.0.0:9"), Some(("0.0.0.0", 9))),
            (Some(":0"), Some(("127.0.0.1", 0))),
            (Some("http://localhost:5/"), Some(("localhost", 5))),
            (Some("[::1]:6"), Some(("::1", 6))),
            (Some("host:x"), None),
        ];
        for (value, expected) in cases {
            let got = ollama_host(*value).ok();
            let expected = expected.map(|(h, p)| (h.to_string(), p));
            assert_eq!(got, expected, "{value:?}");
        }
    }

    #[test]
    fn ollama_serves_what_its_store_holds() {
        let source = FakeSource {
            vars: vec![("OLLAMA_MODELS", "/store")],
            dirs: vec!["llama3.2:latest"],
        };
        let launch = parse(Flavor::Ollama, &args("serve"), &source).unwrap();
        assert_eq!(launch.served_names, vec!["llama3.2:latest"]);
        assert_eq!(launch.ollama_models.as_deref(), Some("/store"));
    }

    #[test]
    fn ollama_manifest_paths_round_trip_and_refuse_traversal() {
        let cases: &[(&str, Option<&str>)] = &[
            (
                "llama3.2",
                Some("/s/manifests/registry.ollama.ai/library/llama3.2/latest"),
            ),
            (
                "llama3.2:1b",
                Some("/s/manifests/registry.ollama.ai/library/llama3.2/1b"),
            ),
            ("me/model:q4", Some("/s/manifests/registry.ollama.ai/me/model/q4")),
            ("hf.co/org/repo:Q4_K_M", Some("/s/manifests/hf.co/org/repo/Q4_K_M")),
            ("../etc/passwd", None),
            ("a/b/c/d", None),
            ("model:../x", None),
            ("", None),
        ];
        for (name, expected) in cases {
            let got = ollama_manifest_path("/s", name);
            assert_eq!(got.as_deref(), expected.map(Path::new), "{name}");
        }
        assert_eq!(
            ollama_name_of(OLLAMA_REGISTRY, "library", "llama3.2", "1b"),
            "llama3.2:1b"
        );
        assert_eq!(ollama_name_of(OLLAMA_REGISTRY, "me", "m", "q4"), "me/m:q4");
        assert_eq!(ollama_name_of("hf.co", "org", "repo", "Q4"), "hf.co/org/repo:Q4");
    }

    #[test]
    fn llama_cpp_slots_share_the_context() {
        let launch = parse(Flavor::LlamaCpp, &args("-m m -c 8192 -np 4"), &FakeSource::default()).unwrap();
        assert_eq!(
            (launch.max_concurrency, launch.context_tokens, launch.kv_capacity_tokens),
            (Some(4), Some(2048), Some(8192))
        );
        let launch = parse(Flavor::LlamaCpp, &args("-m m -c 8192"), &FakeSource::default()).unwrap();
        assert_eq!((launch.max_concurrency, launch.context_tokens), (Some(4), Some(8192)));
        let source = FakeSource {
            vars: vec![
                ("LLAMA_ARG_MODEL", "/e.gguf"),
                ("LLAMA_ARG_PORT", "0"),
                ("LLAMA_ARG_ENDPOINT_METRICS", "1"),
            ],
            ..Default::default()
        };
        let launch = parse(Flavor::LlamaCpp, &[], &source).unwrap();
        assert_eq!(
            (launch.model.as_str(), launch.port, launch.metrics_enabled),
            ("/e.gguf", 0, true)
        );
    }

    #[test]
    fn settings_echo_the_flags_given() {
        let launch = parse(
            Flavor::Sglang,
            &args("--model-path m --tp 2 --enable-metrics"),
            &FakeSource::default(),
        )
        .unwrap();
        assert_eq!(launch.settings.get("model_path").map(String::as_str), Some("m"));
        assert_eq!(
            launch.settings.get("tensor_parallel_size").map(String::as_str),
            Some("2")
        );
        assert_eq!(launch.settings.get("enable_metrics").map(String::as_str), Some("true"));
        assert_eq!(launch.tensor_parallel, 2);
    }
}
