//! The floor of the stack: an RLS server that answers OK without matching or counting.
//!
//! Same tonic services, same envoy-types, same current-thread runtime, and the same
//! accept loop and connection handling (`sluicegate::serve`, with the default limits) as
//! a sluicegate gRPC worker; the only difference is the handler. Benchmarks run it beside
//! sluicegate in the same session and report sluicegate's cost as a ratio to this one.
//!
//! ```text
//! cargo run --release --example noop_rls -- 127.0.0.1:18081 [multi-thread]
//! ```
//!
//! With `multi-thread` it runs on a one-worker multi-thread runtime instead, to show what
//! the per-core current-thread design saves.

/// The same allocator as the `sluicegate` binary, so the comparison is like for like.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_response::{Code, DescriptorStatus};
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_service_server::{
    RateLimitService, RateLimitServiceServer,
};
use envoy_types::pb::envoy::service::ratelimit::v3::{RateLimitRequest, RateLimitResponse};
use sluicegate::accept::{AcceptMetrics, ConnectionCap, Incoming};
use sluicegate::serve::{Endpoint, Protocol, TimeoutMetrics};
use sluicegate::settings::Settings;
use sluicegate::stats::Stats;
use tonic::{Request, Response, Status};

#[derive(Clone, Copy, Debug, Default)]
struct Noop;

#[tonic::async_trait]
impl RateLimitService for Noop {
    async fn should_rate_limit(
        &self,
        request: Request<RateLimitRequest>,
    ) -> Result<Response<RateLimitResponse>, Status> {
        let statuses = request
            .get_ref()
            .descriptors
            .iter()
            .map(|_| DescriptorStatus { code: Code::Ok as i32, ..Default::default() })
            .collect();
        Ok(Response::new(RateLimitResponse { overall_code: Code::Ok as i32, statuses, ..Default::default() }))
    }
}

fn main() {
    let addr = std::env::args().nth(1).unwrap_or_else(|| "127.0.0.1:18081".into());
    let runtime = match std::env::args().nth(2).as_deref() {
        Some("multi-thread") => tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build(),
        _ => tokio::runtime::Builder::new_current_thread().enable_all().build(),
    }
    .expect("runtime");
    let limits = Settings::for_tests(vec![".".into()]).connection_limits.grpc;
    let stats = Stats::new(Default::default());
    let cap = ConnectionCap::new("grpc", limits.max_connections, AcceptMetrics::new(&stats, "grpc"));
    let endpoint = Endpoint {
        router: tonic::service::Routes::new(RateLimitServiceServer::new(Noop)).prepare().into_axum_router(),
        protocol: Protocol::Grpc(limits),
        tls: None,
        timeouts: TimeoutMetrics::new(&stats, "grpc"),
        calls: Default::default(),
    };
    // Never stops: the benchmark kills it.
    let stop = sluicegate::signal::Shutdown::never();
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(&addr).await.expect("bind");
        eprintln!("noop RLS listening on {}", listener.local_addr().expect("address"));
        sluicegate::serve::serve(Incoming::new(listener, cap), endpoint, stop).await;
    });
}
