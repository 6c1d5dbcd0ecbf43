//! The gRPC front end: `RateLimitService`, `RateLimitQuotaService` (served by `rlqs`)
//! and `grpc.health.v1.Health` on tonic.
//!
//! Owns serving gRPC on worker threads. Each worker is a current-thread tokio runtime
//! with its own listening socket on the shared port (`SO_REUSEPORT`, so the kernel
//! spreads connections) and shares nothing with the others but the rule snapshot, the
//! counters and the connection cap. On this hardware a gRPC server on a current-thread
//! runtime costs about half the CPU per call of the same server on a multi-thread
//! runtime; the RLS is a sidecar whose CPU is the product, so that is the design. How
//! connections are accepted, bounded and closed is [`crate::serve`]'s.
//!
//! The conversion to and from protos is the only logic here; decisions are `service`'s.

use std::sync::Arc;
use std::thread::JoinHandle;

use envoy_types::pb::envoy::service::rate_limit_quota::v3::rate_limit_quota_service_server::RateLimitQuotaServiceServer;
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_service_server::{
    RateLimitService, RateLimitServiceServer,
};
use envoy_types::pb::envoy::service::ratelimit::v3::{RateLimitRequest, RateLimitResponse, rate_limit_response};
use tonic::server::NamedService;
use tonic::{Request, Response, Status};
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

use crate::accept::{ConnectionCap, Incoming};
use crate::health::Health;
use crate::rlqs::RlqsService;
use crate::serve::{self, Endpoint};
use crate::service::RateLimiter;
use crate::signal::Shutdown;
use crate::store::Lane;
use crate::trace::Tracer;

/// `envoy.service.ratelimit.v3.RateLimitService` over the shared [`RateLimiter`]. Each
/// worker has its own, so its calls go to its own lane of backend connections. (Calls in
/// flight are counted for the drain by the worker's endpoint, `serve::CallsInFlight`.)
#[derive(Clone, Debug)]
pub struct RlsService {
    limiter: Arc<RateLimiter>,
    /// This worker's lane: per-runtime backend connections are picked by it.
    lane: Lane,
    /// `TRACING_ENABLED`: a span per call; `None` costs the call one branch.
    tracer: Option<Arc<Tracer>>,
}

impl RlsService {
    /// The service of gRPC worker `worker`.
    pub fn new(limiter: Arc<RateLimiter>, worker: usize) -> Self {
        RlsService { limiter, lane: Lane::Worker(worker), tracer: None }
    }

    /// The same, with a span per call.
    pub fn traced(mut self, tracer: Option<Arc<Tracer>>) -> Self {
        self.tracer = tracer;
        self
    }

    async fn answer(&self, request: &RateLimitRequest) -> Result<Response<RateLimitResponse>, Status> {
        let stats = self.limiter.stats();
        let started = stats.enabled().then(std::time::Instant::now);
        let result = self.limiter.should_rate_limit_on(request, self.lane).await;
        if let Some(started) = started {
            stats.total_requests.increment(1);
            stats.response_time.record(started.elapsed().as_secs_f64());
        }
        match result {
            Ok(response) => Ok(Response::new(response)),
            Err(e) => Err(e.into()),
        }
    }

    /// [`Self::answer`] in a span with the domain and the overall code (or the error).
    async fn answer_traced(
        &self,
        tracer: &Tracer,
        request: Request<RateLimitRequest>,
    ) -> Result<Response<RateLimitResponse>, Status> {
        let span = tracer.start_span(request.metadata());
        let result = self.answer(request.get_ref()).await;
        let (code, error) = match &result {
            Ok(response) => (
                rate_limit_response::Code::try_from(response.get_ref().overall_code)
                    .map_or("UNKNOWN", |c| c.as_str_name()),
                None,
            ),
            Err(status) => ("ERROR", Some(status.message().to_string())),
        };
        tracer.finish(span, &request.get_ref().domain, code, error);
        result
    }
}

#[tonic::async_trait]
impl RateLimitService for RlsService {
    async fn should_rate_limit(
        &self,
        request: Request<RateLimitRequest>,
    ) -> Result<Response<RateLimitResponse>, Status> {
        match &self.tracer {
            None => self.answer(request.get_ref()).await,
            Some(tracer) => self.answer_traced(tracer, request).await,
        }
    }
}

/// Service names the health service answers for: the reference's `ratelimit`, the
/// overall server (`""`), and the full gRPC service names.
const HEALTH_NAMES: [&str; 4] = [
    "",
    "ratelimit",
    <RateLimitServiceServer<RlsService> as NamedService>::NAME,
    <RateLimitQuotaServiceServer<RlqsService> as NamedService>::NAME,
];

/// Keeps the gRPC health service in step with [`Health`] until `health` is dropped.
pub async fn follow_health(health: Arc<Health>, reporter: HealthReporter) {
    let mut changes = health.subscribe();
    drop(health);
    loop {
        let status = if *changes.borrow_and_update() { ServingStatus::Serving } else { ServingStatus::NotServing };
        for name in HEALTH_NAMES {
            reporter.set_service_status(name, status).await;
        }
        if changes.changed().await.is_err() {
            return;
        }
    }
}

/// A listener a worker serves on.
#[derive(Debug)]
pub enum GrpcListener {
    Tcp(std::net::TcpListener),
    Unix(std::os::unix::net::UnixListener),
}

/// The router of one worker: the rate limit and quota services and gRPC health, as
/// tonic routes them.
pub fn router(
    rls: RateLimitServiceServer<RlsService>,
    rlqs: RateLimitQuotaServiceServer<RlqsService>,
    health: tonic_health::pb::health_server::HealthServer<impl tonic_health::pb::health_server::Health>,
) -> axum::Router {
    tonic::service::Routes::new(rls).add_service(rlqs).add_service(health).prepare().into_axum_router()
}

/// Runs `endpoint` on `listener` on a new thread with its own current-thread runtime,
/// until `stop` turns true; then stops accepting and lets open calls finish. Connections
/// count against `cap`, which all workers share. `done` is signalled when the thread's
/// server has fully stopped; `runtime_ready` receives the worker's runtime handle as soon
/// as it exists.
pub fn spawn_worker(
    index: usize,
    listener: GrpcListener,
    endpoint: Endpoint,
    cap: Arc<ConnectionCap>,
    stop: Shutdown,
    done: tokio::sync::oneshot::Sender<()>,
    runtime_ready: std::sync::mpsc::Sender<(usize, tokio::runtime::Handle)>,
) -> std::io::Result<JoinHandle<()>> {
    std::thread::Builder::new().name(format!("grpc-{index}")).spawn(move || {
        let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
            Ok(rt) => rt,
            Err(e) => {
                tracing::error!(worker = index, error = %e, "cannot start a gRPC worker runtime");
                return;
            }
        };
        let _ = runtime_ready.send((index, runtime.handle().clone()));
        drop(runtime_ready); // the receiver waits for every worker's sender to go

        runtime.block_on(async move {
            // Registering with the reactor needs the runtime, so it happens here.
            let unusable = match listener {
                GrpcListener::Tcp(l) => match tokio::net::TcpListener::from_std(l) {
                    Ok(l) => return serve::serve(Incoming::new(l, cap), endpoint, stop).await,
                    Err(e) => e,
                },
                GrpcListener::Unix(l) => match tokio::net::UnixListener::from_std(l) {
                    Ok(l) => return serve::serve(Incoming::new(l, cap), endpoint, stop).await,
                    Err(e) => e,
                },
            };
            tracing::error!(worker = index, error = %unusable, "cannot use the gRPC listener");
        });
        let _ = done.send(());
    })
}
