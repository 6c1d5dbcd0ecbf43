//! sluicegate: a drop-in rate limit service for Envoy.
//!
//! Envoy's rate limit filter asks, over gRPC, whether a request should be limited;
//! sluicegate matches the request's descriptors against YAML rule trees (the reference
//! service's format) and answers from exact, bounded in-process counters.
//!
//! # Layout
//!
//! A request flows top to bottom:
//!
//! - [`grpc`], [`http`], [`json`]: the front ends (tonic gRPC on per-core runtimes,
//!   `/healthcheck` and `/json` on axum). Proto conversion only. [`tls`]: TLS and mTLS
//!   for gRPC. [`serve`] and [`accept`]: every listener's connections, and what a
//!   client can cost (caps, timeouts, backoff on accept errors).
//! - [`service`]: one `ShouldRateLimit` from request to response: validation, matching,
//!   `replaces`, shadow and quota modes, headers, dynamic metadata.
//! - [`rlqs`]: the Rate Limit Quota Service: Envoy's quota streams, bucket ids matched
//!   to the same rules, each bucket's limit divided among its clients by demand.
//! - [`rules`]: the compiled, immutable rule set and the matcher.
//! - [`limiter`]: units, limit parameters, and the pure decision functions.
//! - [`store`]: where counters live ([`store::memory`]: exact, bounded).
//! - [`clock`]: the one reader of the wall clock, and a fake for tests.
//!
//! Around them:
//!
//! - [`config`]: finding, reading and checking rule files (every error with
//!   `file:line:col`) into documents, which [`rules`] compiles.
//! - [`snapshot`]: the live rule set: a load of every file into a
//!   [`snapshot::ConfigSnapshot`], put in force whole, reloaded on change ([`watch`]).
//! - [`settings`]: the reference's environment variables, each also a flag.
//! - [`health`]: the components behind `/healthcheck` and gRPC health.
//! - [`stats`]: the reference's stats as Prometheus metrics (and statsd).
//! - [`app`]: start-up and shutdown; [`signal`]: SIGTERM and SIGINT; [`logging`]: logs.
//! - [`cli`]: the command line `main` parses.

pub mod accept;
pub mod app;
pub mod cli;
pub mod clock;
pub mod config;
pub mod grpc;
pub mod health;
pub mod http;
pub mod json;
pub mod limiter;
pub mod logging;
pub mod rlqs;
pub mod rules;
pub mod serve;
pub mod service;
pub mod settings;
pub mod signal;
pub mod snapshot;
pub mod stats;
pub mod store;
pub mod tls;
pub mod trace;
pub mod watch;
pub mod xds;
