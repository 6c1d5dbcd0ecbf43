//! The floor of the stack: an RLS server that answers OK without matching or counting.
//!
//! Same tonic, same envoy-types, same current-thread runtime and listener setup as a
//! sluicegate gRPC worker; the only difference is the handler. Benchmarks run it beside
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
use tonic::transport::Server;
use tonic::transport::server::TcpIncoming;
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
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(&addr).await.expect("bind");
        eprintln!("noop RLS listening on {}", listener.local_addr().expect("address"));
        let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
        Server::builder()
            .add_service(RateLimitServiceServer::new(Noop))
            .serve_with_incoming(incoming)
            .await
            .expect("serve");
    });
}
