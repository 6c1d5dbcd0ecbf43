//! Running: serving every listener until shutdown, then draining.
//!
//! Owns the shutdown sequence: at the signal, report not-ready at once (health checks
//! fail, so the load balancer stops sending) while still answering for
//! `SHUTDOWN_GRACE_PERIOD`; then stop accepting and send every connection its GOAWAY (or
//! close idle HTTP/1 ones); then wait until every gRPC worker has closed its connections
//! or no call is in flight (clients that ignore GOAWAY must not hold the process), at
//! most `serve::DRAIN_TIMEOUT`; then send the spans still queued (tracing, within the
//! export timeout), flush statsd and return.

use std::future::Future;
use std::sync::Arc;

use envoy_types::pb::envoy::service::rate_limit_quota::v3::rate_limit_quota_service_server::RateLimitQuotaServiceServer;
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_service_server::RateLimitServiceServer;

use crate::accept::{AcceptMetrics, ConnectionCap, Incoming};
use crate::grpc::{self, RlsService};
use crate::http::{self, HttpState};
use crate::rlqs::RlqsService;
use crate::serve::{CallsInFlight, DRAIN_TIMEOUT, Endpoint, HttpLimits, Protocol, TimeoutMetrics};
use crate::signal::{Shutdown, ShutdownTrigger};
use crate::stats::Stats;
use crate::store::Store;

use super::background::{statsd_loop, sweep_loop, upkeep_loop};
use super::{StartError, Started};

impl Started {
    /// Serves until `shutdown` completes, then drains (docs/architecture.md) and returns.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> Result<(), StartError> {
        let Started { shared, watching, tls, settings, grpc_listeners, http_listener, debug_listener, .. } = self;
        let (stop_tx, stop_rx) = ShutdownTrigger::new();
        // Before anything waits: a TLS file the exporter cannot read is a start-up error.
        let (tracer, exporter) = (settings.tracing.clone())
            .map(|options| crate::trace::Tracer::start(options, &shared.stats))
            .transpose()
            .map_err(StartError::Tracing)?
            .unzip();
        // The xDS provider: start the client; without FORCE_START_WITHOUT_INITIAL_CONFIG,
        // serve nothing until the first config is in force (as the reference waits for
        // its first config event).
        let mut shutdown = std::pin::pin!(shutdown);
        if let Some(options) = settings.xds.clone() {
            tokio::spawn(crate::xds::client::run(options, shared.reloader.clone(), stop_rx.clone()));
            if !settings.force_start_without_initial_config {
                tracing::warn!("waiting for the first rate limit config from the xDS server");
                let first_config = async {
                    while shared.reloader.version_in_force().is_none() {
                        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                    }
                };
                tokio::select! {
                    _ = first_config => {}
                    _ = &mut shutdown => {
                        stop_tx.trigger();
                        return Ok(());
                    }
                }
            }
        }

        let (reporter, health_server) = tonic_health::server::health_reporter();
        let health_task = tokio::spawn(grpc::follow_health(shared.health.clone(), reporter));
        let mut workers = Vec::new();
        let mut in_flight: Vec<Arc<CallsInFlight>> = Vec::new();
        let (runtime_tx, runtime_rx) = std::sync::mpsc::channel();
        let limits = &settings.connection_limits;
        let grpc_cap =
            ConnectionCap::new("grpc", limits.grpc.max_connections, AcceptMetrics::new(&shared.stats, "grpc"));
        let grpc_timeouts = TimeoutMetrics::new(&shared.stats, "grpc");
        for (index, listener) in grpc_listeners.into_iter().enumerate() {
            let rls = RlsService::new(shared.limiter.clone(), index).traced(tracer.clone());
            let rlqs = RlqsService::new(shared.rlqs.clone(), stop_rx.clone());
            let calls = Arc::new(CallsInFlight::default());
            in_flight.push(calls.clone());
            let (done_tx, done_rx) = tokio::sync::oneshot::channel();
            let endpoint = Endpoint {
                router: grpc::router(
                    RateLimitServiceServer::new(rls),
                    RateLimitQuotaServiceServer::new(rlqs),
                    health_server.clone(),
                ),
                protocol: Protocol::Grpc(limits.grpc.clone()),
                tls: tls.as_ref().map(|(tls, _)| tls.clone()),
                timeouts: grpc_timeouts.clone(),
                calls,
            };
            let (cap, ready) = (grpc_cap.clone(), runtime_tx.clone());
            grpc::spawn_worker(index, listener, endpoint, cap, stop_rx.clone(), done_tx, ready)
                .map_err(StartError::Io)?;
            workers.push(done_rx);
        }

        let state = HttpState {
            limiter: shared.limiter.clone(),
            health: shared.health.clone(),
            reloader: shared.reloader.clone(),
            stats: shared.stats.clone(),
            rlqs: shared.rlqs.clone(),
        };
        let (stats, http_limits) = (&shared.stats, &limits.http);
        let http =
            serve_http("http", http_listener, http::router(state.clone()), http_limits.clone(), stats, &stop_rx)?;
        let debug =
            serve_http("debug", debug_listener, http::debug_router(state), http_limits.clone(), stats, &stop_rx)?;
        let mut background = vec![
            tokio::spawn(watching.follow(stop_rx.clone(), {
                let reloader = shared.reloader.clone();
                move || {
                    let _ = reloader.reload();
                }
            })),
            tokio::spawn(upkeep_loop(shared.stats.clone(), stop_rx.clone())),
            tokio::spawn(shared.rlqs.clone().run(stop_rx.clone())),
        ];
        if let Some(memory) = shared.memory.clone() {
            let clock = shared.limiter.clock().clone();
            background.push(tokio::spawn(sweep_loop(memory, clock, shared.stats.clone(), stop_rx.clone())));
        }
        if let Some(statsd) = shared.stats.statsd.clone() {
            background.push(tokio::spawn(statsd_loop(statsd, stop_rx.clone())));
        }
        if let Some(redis) = shared.redis.clone() {
            // Each worker gets its own Redis connections, driven on its own runtime, so a
            // call never crosses threads; other callers (/json) use this runtime's.
            drop(runtime_tx);
            let mut worker_runtimes: Vec<(usize, tokio::runtime::Handle)> = runtime_rx.iter().collect();
            worker_runtimes.sort_by_key(|(i, _)| *i);
            let runtimes = worker_runtimes.into_iter().map(|(_, h)| h).collect();
            let health = shared.health.clone();
            let serving = move |ok| health.set_backend_ok(ok);
            let main = tokio::runtime::Handle::current();
            background.extend(redis.maintain(&stop_rx, main, runtimes, &shared.stats, serving));
            if let Store::Leased(leased) = shared.limiter.store() {
                background.extend(leased.maintain(&stop_rx, &shared.stats));
            }
        }
        if let Some((tls, watching)) = tls {
            background.push(tokio::spawn(watching.follow(stop_rx.clone(), move || tls.reload())));
        }

        shutdown.await;
        shared.health.start_draining();
        tracing::warn!(
            grace_period = ?settings.shutdown_grace_period,
            "shutting down: reporting not serving, still answering during the grace period"
        );
        tokio::time::sleep(settings.shutdown_grace_period).await;
        stop_tx.trigger();
        // Stop once every worker has closed its connections, or once no call is in flight
        // (idle connections of clients that ignore GOAWAY must not hold the process).
        let calls_in_flight = || in_flight.iter().map(|calls| calls.count()).sum::<usize>();
        let workers_done = async {
            for worker in workers {
                let _ = worker.await;
            }
        };
        let no_calls_in_flight = async {
            // A call counts from when hyper hands its request over until its answer is
            // written; after GOAWAY no new stream starts, so once every worker is idle at
            // the same time, the drain is done.
            while calls_in_flight() > 0 {
                for calls in &in_flight {
                    calls.idle().await;
                }
            }
        };
        let drained = tokio::time::timeout(DRAIN_TIMEOUT, async {
            tokio::select! {
                _ = workers_done => {}
                _ = no_calls_in_flight => {}
            }
            let _ = http.await;
            let _ = debug.await;
        })
        .await;
        if drained.is_err() {
            tracing::warn!(
                timeout = ?DRAIN_TIMEOUT,
                in_flight = calls_in_flight(),
                "calls still in flight after the drain timeout; stopping anyway"
            );
        }
        for task in background {
            task.abort();
        }
        if let Some(exporter) = exporter {
            // The spans of the last calls, so a clean stop loses none (bounded by the
            // export timeout). Before statsd's flush, which then counts any it dropped.
            exporter.finish().await;
        }
        if let Some(statsd) = shared.stats.statsd.clone() {
            // The last interval's stats, so a clean stop loses none.
            let _ = tokio::task::spawn_blocking(move || statsd.flush()).await;
        }
        health_task.abort();
        tracing::warn!("stopped");
        Ok(())
    }
}

/// Serves `router` on an HTTP listener (`name`: `http` or `debug`, in metrics and logs),
/// which has a connection cap of its own.
fn serve_http(
    name: &'static str,
    listener: std::net::TcpListener,
    router: axum::Router,
    limits: HttpLimits,
    stats: &Stats,
    stop: &Shutdown,
) -> Result<tokio::task::JoinHandle<()>, StartError> {
    let listener = tokio::net::TcpListener::from_std(listener).map_err(StartError::Io)?;
    let cap = ConnectionCap::new(name, limits.max_connections, AcceptMetrics::new(stats, name));
    let endpoint = Endpoint {
        router,
        protocol: Protocol::Http1(limits),
        tls: None,
        timeouts: TimeoutMetrics::new(stats, name),
        calls: Arc::default(),
    };
    Ok(tokio::spawn(crate::serve::serve(Incoming::new(listener, cap), endpoint, stop.clone())))
}
