//! `pyxis-mock-runtime`: test support, NOT an inference runtime.
//!
//! A mock LLM server for Pyxis tests and dev mode. It loads no model: answers are
//! deterministic words taken from the prompt, and a token is a whitespace-separated word.
//! It speaks the OpenAI API (`/v1/chat/completions`, `/v1/completions`, `/v1/embeddings`,
//! `/v1/models`, SSE streaming with the final `usage` chunk) and imitates one real runtime
//! (`--flavor vllm|tgi|sglang|triton|trtllm|ollama|llama-cpp|openai`):
//!
//! - its command line ([`flavor`]): the runtime's own flags are accepted, the ones that
//!   matter (host, port, model, served name, metrics switch...) are used, and an unknown flag
//!   exits 2 naming it, so adapter launch lines are checked against the real interface;
//! - how it comes up ([`lifecycle`]): port closed, 503 or "not ready" while loading;
//! - its health, version and metrics endpoints with the real names ([`native`], [`metrics`]).
//!
//! Knobs (`--ttft-ms`, `--tpot-ms`, `--prefix-cache`, `--startup-ms`, `--hang`,
//! `--crash-after`, `--exit-after-ms`, `--spawn-child`, `--ignore-sigterm`,
//! `--max-concurrency`...) come before the runtime's arguments or from `PYXIS_MOCK_*`
//! variables. Once the API port is bound it prints `listening on HOST:PORT` on stdout, and
//! one log line per request.
//!
//! Exit codes: 0 after SIGTERM/SIGINT, 2 for a bad command line, 3 for a simulated crash,
//! 1 when a port cannot be bound.

mod cli;
mod engine;
mod flavor;
mod generate;
mod generation;
mod lifecycle;
mod metrics;
mod native;
mod openai;
mod server;

use clap::Parser;

fn main() {
    if std::env::args_os().nth(1).is_some_and(|arg| arg == server::CHILD_ARG) {
        std::process::exit(block_on(server::run_child()));
    }
    let cli = cli::Cli::parse();
    let launch = match flavor::parse(cli.flavor, &cli.runtime_args, &flavor::ProcessSource) {
        Ok(launch) => launch,
        Err(e) => {
            eprintln!(
                "{} (pyxis-mock-runtime --flavor {}): error: {e}",
                cli.flavor.program(),
                cli.flavor.name()
            );
            if let flavor::UsageError::UnknownFlag { flag } = &e {
                if cli::is_knob(flag) {
                    eprintln!(
                        "hint: {flag} is a pyxis-mock-runtime knob: put it before the runtime's arguments, or set \
                         its PYXIS_MOCK_* variable"
                    );
                }
            }
            std::process::exit(2);
        }
    };
    let config = cli.into_config(launch);
    let filter = tracing_subscriber::EnvFilter::try_from_env("PYXIS_MOCK_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_writer(std::io::stdout)
        .with_ansi(false)
        .with_target(false)
        .with_env_filter(filter)
        .init();
    std::process::exit(block_on(server::run(config)));
}

fn block_on(future: impl std::future::Future<Output = i32>) -> i32 {
    match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime.block_on(future),
        Err(e) => {
            eprintln!("pyxis-mock-runtime: cannot start the async runtime: {e}");
            1
        }
    }
}
