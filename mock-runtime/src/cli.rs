//! The mock's own knobs (flags and `PYXIS_MOCK_*` variables) and the validated [`Config`]
//! built from them and the flavour's launch line.

use std::time::Duration;

use clap::builder::BoolishValueParser;
use clap::{ArgAction, Parser};

use crate::engine::EngineConfig;
use crate::flavor::{Flavor, Launch};

const ABOUT: &str = "MOCK inference runtime for Pyxis tests and dev mode. Not a runtime: it generates \
                     deterministic words, no model is loaded.";

const LONG_ABOUT: &str = "MOCK inference runtime for Pyxis tests and dev mode. Not a runtime: no model \
is loaded; answers are deterministic words taken from the prompt.

It serves the OpenAI API (/v1/chat/completions, /v1/completions, /v1/embeddings, /v1/models, \
streaming included) and imitates one real runtime (--flavor): that runtime's command line \
(unknown flags exit 2), health and loading behaviour, version endpoint and Prometheus metric \
names. Tokens are whitespace-separated words.

Mock knobs come first, then the runtime's own arguments:
  pyxis-mock-runtime --flavor vllm --ttft-ms 200 serve MODEL --host 127.0.0.1 --port 0
Every knob can also be set with its PYXIS_MOCK_* variable (see each flag), so a test can set \
them through a replica's environment.

Prints `listening on HOST:PORT` once the API port is bound (port 0 binds any free port).";

/// `pyxis-mock-runtime [KNOBS] [RUNTIME ARGS]...`
#[derive(Debug, Parser)]
#[command(name = "pyxis-mock-runtime", version, about = ABOUT, long_about = LONG_ABOUT)]
pub struct Cli {
    /// Real runtime to imitate: command line, health, version and metrics endpoints.
    #[arg(long, env = "PYXIS_MOCK_FLAVOR", value_enum, default_value = "openai")]
    pub flavor: Flavor,

    /// Time to first token, in milliseconds.
    #[arg(long, env = "PYXIS_MOCK_TTFT_MS", value_name = "MS", default_value_t = 50)]
    pub ttft_ms: u64,

    /// Time per output token after the first, in milliseconds.
    #[arg(long, env = "PYXIS_MOCK_TPOT_MS", value_name = "MS", default_value_t = 10)]
    pub tpot_ms: u64,

    /// Prefix cache: a prompt whose first --prefix-chars characters were seen before gets a
    /// shorter TTFT and counts a hit. `--prefix-cache=false` turns it off.
    #[arg(
        long,
        env = "PYXIS_MOCK_PREFIX_CACHE",
        value_name = "BOOL",
        action = ArgAction::Set,
        value_parser = BoolishValueParser::new(),
        num_args = 0..=1,
        require_equals = true,
        default_value_t = true,
        default_missing_value = "true"
    )]
    pub prefix_cache: bool,

    /// Characters of a prompt that make its cached prefix (shorter prompts never hit).
    #[arg(long, env = "PYXIS_MOCK_PREFIX_CHARS", value_name = "N", default_value_t = 64,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub prefix_chars: u32,

    /// TTFT of a prefix-cache hit, in percent of --ttft-ms.
    #[arg(long, env = "PYXIS_MOCK_PREFIX_HIT_TTFT_PERCENT", value_name = "PERCENT", default_value_t = 20,
          value_parser = clap::value_parser!(u32).range(0..=100))]
    pub prefix_hit_ttft_percent: u32,

    /// Slow start: milliseconds before the model is "loaded". Meanwhile the port is closed
    /// (vllm, tgi, trtllm), closed then 503 (sglang), or health says loading (llama-cpp 503,
    /// triton ready 400, openai 503; ollama answers `/` but requests wait).
    #[arg(long, env = "PYXIS_MOCK_STARTUP_MS", value_name = "MS", default_value_t = 0)]
    pub startup_ms: u64,

    /// Never become ready: vllm binds its port but never answers; tgi and trtllm never open
    /// it; the others answer "loading" forever.
    #[arg(long, env = "PYXIS_MOCK_HANG", value_parser = BoolishValueParser::new())]
    pub hang: bool,

    /// Exit with code 3 after N completed requests (chat, completions, embeddings).
    #[arg(long, env = "PYXIS_MOCK_CRASH_AFTER", value_name = "N",
          value_parser = clap::value_parser!(u64).range(1..))]
    pub crash_after: Option<u64>,

    /// Exit with code 3 this many milliseconds after start.
    #[arg(long, env = "PYXIS_MOCK_EXIT_AFTER_MS", value_name = "MS")]
    pub exit_after_ms: Option<u64>,

    /// Start a child process (this binary, sleeping) in the same process group and print
    /// `spawned child pid N`, so tests can check the whole tree is stopped.
    #[arg(long, env = "PYXIS_MOCK_SPAWN_CHILD", value_parser = BoolishValueParser::new())]
    pub spawn_child: bool,

    /// Answer every inference request (chat, completions, embeddings) with this HTTP status
    /// and an error body, while health and metrics stay fine: a replica that is up but
    /// broken, for the gateway's retry.
    #[arg(long, env = "PYXIS_MOCK_FAIL_STATUS", value_name = "CODE",
          value_parser = clap::value_parser!(u16).range(400..=599))]
    pub fail_status: Option<u16>,

    /// Ignore SIGTERM (the child too), so tests can check SIGKILL after the grace period.
    #[arg(long, env = "PYXIS_MOCK_IGNORE_SIGTERM", value_parser = BoolishValueParser::new())]
    pub ignore_sigterm: bool,

    /// Requests generated at once; more wait in the queue. Default: the flavour's flag
    /// (--max-num-seqs, --max-running-requests, -np, OLLAMA_NUM_PARALLEL...), else 256
    /// (ollama 1, llama-cpp 4).
    #[arg(long, env = "PYXIS_MOCK_MAX_CONCURRENCY", value_name = "N",
          value_parser = clap::value_parser!(u64).range(1..))]
    pub max_concurrency: Option<u64>,

    /// KV-cache capacity in tokens: KV usage is in-flight tokens over this. Default: the
    /// flavour's flag (-c, --max-total-tokens...), else 16384.
    #[arg(long, env = "PYXIS_MOCK_KV_CAPACITY_TOKENS", value_name = "TOKENS",
          value_parser = clap::value_parser!(u64).range(1..))]
    pub kv_capacity_tokens: Option<u64>,

    /// Version the version endpoint reports (llama-cpp: build_info `b<VERSION>`).
    #[arg(
        long,
        env = "PYXIS_MOCK_VERSION",
        value_name = "VERSION",
        default_value = "0.0.0-mock"
    )]
    pub mock_version: String,

    /// Model served when the command line names none (ollama, which otherwise serves only
    /// what `POST /api/pull` fetched).
    #[arg(long, env = "PYXIS_MOCK_MODEL", value_name = "NAME")]
    pub mock_model: Option<String>,

    /// Dimensions of the embeddings.
    #[arg(long, env = "PYXIS_MOCK_EMBEDDING_DIM", value_name = "N", default_value_t = 32,
          value_parser = clap::value_parser!(u32).range(1..=8192))]
    pub embedding_dim: u32,

    /// The imitated runtime's own arguments (e.g. `serve MODEL --port 0` for vllm).
    #[arg(trailing_var_arg = true, allow_hyphen_values = true, value_name = "RUNTIME ARGS")]
    pub runtime_args: Vec<String>,
}

/// Whether `flag` (`--name`) is one of the mock's own knobs.
pub fn is_knob(flag: &str) -> bool {
    let command = <Cli as clap::CommandFactory>::command();
    let found = command
        .get_arguments()
        .filter_map(|arg| arg.get_long())
        .any(|long| flag.strip_prefix("--") == Some(long));
    found
}

/// Everything the server needs, validated.
#[derive(Debug, Clone)]
pub struct Config {
    /// What the runtime command line said.
    pub launch: Launch,
    /// Engine behaviour.
    pub engine: EngineConfig,
    /// Requests generated at once.
    pub max_concurrency: usize,
    /// Longest prompt + completion in tokens.
    pub context_tokens: u64,
    /// `--startup-ms`.
    pub startup: Duration,
    /// `--hang`.
    pub hang: bool,
    /// `--crash-after`.
    pub crash_after: Option<u64>,
    /// `--exit-after-ms`.
    pub exit_after: Option<Duration>,
    /// `--spawn-child`.
    pub spawn_child: bool,
    /// `--ignore-sigterm`.
    pub ignore_sigterm: bool,
    /// `--fail-status`.
    pub fail_status: Option<u16>,
    /// `--mock-version`.
    pub version: String,
    /// `--embedding-dim`.
    pub embedding_dim: usize,
}

/// Context length when the command line sets none.
const DEFAULT_CONTEXT_TOKENS: u64 = 32_768;
/// KV-cache capacity when the command line sets none.
const DEFAULT_KV_CAPACITY_TOKENS: u64 = 16_384;

impl Cli {
    /// Combines the knobs with the parsed launch line.
    pub fn into_config(self, mut launch: Launch) -> Config {
        if launch.served_names.is_empty() {
            launch.served_names.extend(self.mock_model.clone());
        }
        let default_concurrency = match launch.flavor {
            Flavor::Ollama => 1,
            _ => 256,
        };
        let max_concurrency = self
            .max_concurrency
            .map(|n| usize::try_from(n).unwrap_or(usize::MAX))
            .or(launch.max_concurrency)
            .unwrap_or(default_concurrency);
        let kv_capacity_tokens = self
            .kv_capacity_tokens
            .or(launch.kv_capacity_tokens)
            .unwrap_or(DEFAULT_KV_CAPACITY_TOKENS);
        let context_tokens = launch.context_tokens.unwrap_or(DEFAULT_CONTEXT_TOKENS);
        Config {
            engine: EngineConfig {
                ttft: Duration::from_millis(self.ttft_ms),
                tpot: Duration::from_millis(self.tpot_ms),
                prefix_cache: self.prefix_cache,
                prefix_chars: self.prefix_chars as usize,
                prefix_hit_ttft_percent: self.prefix_hit_ttft_percent,
                kv_capacity_tokens,
            },
            launch,
            max_concurrency,
            context_tokens,
            startup: Duration::from_millis(self.startup_ms),
            hang: self.hang,
            crash_after: self.crash_after,
            exit_after: self.exit_after_ms.map(Duration::from_millis),
            spawn_child: self.spawn_child,
            ignore_sigterm: self.ignore_sigterm,
            fail_status: self.fail_status,
            version: self.mock_version,
            embedding_dim: self.embedding_dim as usize,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(line: &str) -> Result<Cli, String> {
        Cli::try_parse_from(std::iter::once("pyxis-mock-runtime").chain(line.split_whitespace()))
            .map_err(|e| e.kind().to_string())
    }

    #[test]
    fn knobs_come_first_and_runtime_arguments_follow() {
        let cli = parse("--flavor vllm --ttft-ms 5 serve m --port 0 --hang").unwrap();
        assert_eq!(cli.flavor, Flavor::Vllm);
        assert_eq!(cli.ttft_ms, 5);
        // After the runtime's arguments begin, mock knobs are runtime arguments (and will be
        // rejected by the flavour as unknown).
        assert_eq!(cli.runtime_args, vec!["serve", "m", "--port", "0", "--hang"]);
        assert!(!cli.hang);
        let cli = parse("--flavor sglang --model-path m --enable-metrics").unwrap();
        assert_eq!(cli.runtime_args, vec!["--model-path", "m", "--enable-metrics"]);
        let cli = parse("--flavor llama-cpp -m x -c 5").unwrap();
        assert_eq!(cli.flavor, Flavor::LlamaCpp);
        assert_eq!(cli.runtime_args, vec!["-m", "x", "-c", "5"]);
    }

    #[test]
    fn prefix_cache_is_on_by_default_and_can_be_turned_off() {
        assert!(parse("").unwrap().prefix_cache);
        assert!(parse("--prefix-cache").unwrap().prefix_cache);
        assert!(
            !parse("--prefix-cache=false --flavor vllm serve m")
                .unwrap()
                .prefix_cache
        );
        // A bare switch never swallows the runtime's first argument.
        let cli = parse("--flavor vllm --prefix-cache serve m").unwrap();
        assert!(cli.prefix_cache);
        assert_eq!(cli.runtime_args, vec!["serve", "m"]);
    }

    #[test]
    fn knobs_are_recognised_by_name() {
        assert!(is_knob("--ttft-ms"));
        assert!(!is_knob("--port"));
        assert!(!is_knob("ttft-ms"));
    }

    #[test]
    fn switches_take_boolish_environment_values() {
        for (value, expected) in [
            ("1", true),
            ("true", true),
            ("yes", true),
            ("on", true),
            ("0", false),
            ("false", false),
            ("off", false),
        ] {
            let cli = Cli::try_parse_from(["pyxis-mock-runtime", &format!("--prefix-cache={value}")]).unwrap();
            assert_eq!(cli.prefix_cache, expected, "{value}");
        }
    }

    #[test]
    fn bad_knobs_are_usage_errors() {
        assert!(parse("--ttft-ms abc").is_err());
        assert!(parse("--crash-after 0").is_err());
        assert!(parse("--prefix-hit-ttft-percent 101").is_err());
        assert!(parse("--flavor nope").is_err());
    }
}
