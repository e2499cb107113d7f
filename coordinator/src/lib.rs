//! The Pyxis coordinator: the thin central control plane, and the `pyxis` CLI.
//!
//! Entry point: [`server::Coordinator::start`]. Modules:
//! - [`config`]: file + flags into a validated configuration.
//! - [`store`]: SQLite behind a narrow interface (durable state only).
//! - [`registry`]: the sans-IO node registry and liveness.
//! - [`tokens`]: join tokens.
//! - [`link`]: the QUIC side of the agent link (enrollment, registration, reports).
//! - [`api`] / [`api_types`]: the admin REST API and its JSON contract.
//! - [`metrics`]: Prometheus exposition.
//! - [`dev`]: `--dev` mode.
//! - [`cli`]: the `pyxis` operator CLI.

pub mod api;
pub mod api_objects;
pub mod api_types;
pub mod apikeys;
pub mod audit;
pub mod cli;
pub mod config;
pub mod dev;
pub mod gateway;
pub mod link;
pub mod manifest;
pub mod metrics;
pub mod objects;
pub mod otel;
pub mod placement;
pub mod reconciler;
pub mod registry;
pub mod server;
pub mod store;
pub mod time;
pub mod tokens;
pub mod views;

/// This coordinator's software version.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
