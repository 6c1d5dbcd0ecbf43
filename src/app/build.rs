//! Building the service from its settings: the rules loaded and put in force, the
//! counter store, the limiter.
//!
//! Owns the start-up order (the store, not connected yet, and the quota service over
//! it; watch the rule files before the first load, so a change during it still
//! reloads; load) and the [`Installer`], through which
//! every good load goes in force with its stats series, and health and metrics follow.

use std::sync::Arc;

use crate::clock::Clock;
use crate::config::diag::Diagnostics;
use crate::health::Health;
use crate::rlqs::{FleetShares, Rlqs};
use crate::rules::LimitRegistry;
use crate::service::{Active, RateLimiter, SharedConfig};
use crate::settings::{Backend, Listen, Settings};
use crate::snapshot::{self, ConfigLoader, ConfigSnapshot, Install, Reloader};
use crate::stats::Stats;
use crate::store::{LeasedStore, MemoryStore, RedisStore, Store};
use crate::tls::Tls;

use super::bind::{bind_grpc, bind_plain};
use super::{Server, Shared, StartError, Started};

/// Puts good loads in force: the snapshot with its stats series in one swap, then the
/// health (ready once a load has rules), the load metrics, and the quota service (which
/// reassigns or abandons buckets at once).
#[derive(Debug)]
pub struct Installer {
    pub config: SharedConfig,
    pub stats: Arc<Stats>,
    pub health: Arc<Health>,
    pub rlqs: Arc<Rlqs>,
}

impl Install for Installer {
    fn install(&self, snapshot: ConfigSnapshot) {
        let domains = snapshot.rules.domains().len();
        self.stats.config_loaded(snapshot.version, snapshot.loaded_at, domains);
        self.config.store(Some(Arc::new(Active::new(snapshot))));
        self.health.set_config_loaded(domains);
        self.rlqs.rules_changed();
    }

    fn failed(&self, _errors: &Diagnostics) {
        self.stats.config_failed();
    }

    fn version_in_force(&self) -> Option<u64> {
        self.config.load().as_ref().map(|active| active.snapshot.version)
    }
}

impl Server {
    /// Loads the rules and binds every listener, with the system clock.
    pub fn start(settings: Settings) -> Result<Started, StartError> {
        Self::start_with_clock(settings, Clock::System)
    }

    /// As [`Server::start`], with the given clock (tests pass a fake one).
    pub fn start_with_clock(settings: Settings, clock: Clock) -> Result<Started, StartError> {
        for warning in &settings.warnings {
            tracing::warn!("{warning}");
        }
        let registry = Arc::new(LimitRegistry::new());
        let options = settings.rules;
        let stats = Stats::new(settings.stats.clone());
        let health = Arc::new(Health::new(settings.healthy_with_at_least_one_config_loaded));
        let config = SharedConfig::default();
        let (store, memory, redis) = match &settings.backend {
            Backend::Memory => {
                let memory = Arc::new(MemoryStore::new(registry.clone(), settings.memory_max_counters));
                (Store::Memory(memory.clone()), Some(memory), None)
            }
            Backend::Redis(options) => {
                let policy = options.failure_policy;
                let local = MemoryStore::new(registry.clone(), settings.memory_max_counters);
                let redis = Arc::new(RedisStore::new((**options).clone(), local, stats.backend_error.clone()));
                // Until Redis first answers, the policy says whether calls can be answered.
                health.set_backend_ok(redis.serving());
                for backend in redis.backends() {
                    tracing::warn!(
                        "counting in Redis ({}): {}; BACKEND_FAILURE_POLICY={policy:?}",
                        backend.name,
                        backend.target.describe()
                    );
                }
                let store = if options.leasing {
                    tracing::warn!(
                        "leased mode (REDIS_LEASING): windows and token buckets are admitted from leases reserved in Redis"
                    );
                    Store::Leased(Arc::new(LeasedStore::new(redis.clone(), settings.memory_max_counters)))
                } else {
                    Store::Redis(redis.clone())
                };
                (store, redis.fallback().cloned(), Some(redis))
            }
        };
        let rlqs = Rlqs::new(config.clone(), clock.clone(), settings.rlqs.clone(), &stats);
        // With Redis, RLQS divides each limit among the replicas by their clients' demand.
        let rlqs = match redis.as_ref().and_then(|r| r.backends().next()) {
            Some(main) => {
                let prefix = redis.as_ref().map_or("", |r| r.options().key_prefix.as_str());
                rlqs.with_fleet(Arc::new(FleetShares::new(main.clone(), prefix, clock.clone())))
            }
            None => rlqs,
        };
        let rlqs = Arc::new(rlqs);
        let installer =
            Installer { config: config.clone(), stats: stats.clone(), health: health.clone(), rlqs: rlqs.clone() };
        let loader = ConfigLoader::new(settings.config_source.clone(), options, registry.clone())
            .on_empty(settings.empty_config);
        let reloader = Arc::new(Reloader::new(loader, Arc::new(installer)));
        // With CONFIG_TYPE=GRPC_XDS_SOTW no file is watched or loaded: `run` starts the xDS
        // client instead. Otherwise: watch first, load second (a change during the load
        // still reloads).
        let (watching, first_load) = match &settings.xds {
            Some(_) => (crate::watch::Watching::arm_targets(Box::new(Vec::new)), Ok(())),
            None => (snapshot::arm(&settings.config_source), Err(())),
        };
        if let Err(diags) = first_load.or_else(|()| reloader.reload()) {
            if !settings.force_start_without_initial_config {
                return Err(StartError::Config(diags));
            }
            tracing::warn!(
                "starting without rules (FORCE_START_WITHOUT_INITIAL_CONFIG); every call is UNAVAILABLE until a config loads"
            );
        }
        let limiter =
            Arc::new(RateLimiter::new(config, store, clock, settings.service.clone()).with_stats(stats.clone()));

        let tls = match &settings.grpc_tls {
            Some(t) => {
                let watching = Tls::watching_files(t);
                Some((Tls::load(t.clone()).map_err(StartError::Tls)?, watching))
            }
            None => None,
        };
        let (grpc_listeners, grpc_addr) = bind_grpc(&settings)?;
        let http_listener = bind_plain("HTTP", &settings.http.0, settings.http.1)?;
        let debug_listener = bind_plain("debug", &settings.debug.0, settings.debug.1)?;
        let http_addr = http_listener.local_addr().map_err(StartError::Io)?;
        let debug_addr = debug_listener.local_addr().map_err(StartError::Io)?;
        // The reference's start-up lines, at the level it uses, so they show by default.
        tracing::warn!("Listening for debug on '{debug_addr}'");
        match (&settings.grpc, grpc_addr) {
            (_, Some(addr)) => tracing::warn!("Listening for gRPC on '{addr}' ({} workers)", grpc_listeners.len()),
            (Listen::Unix(path), None) => {
                tracing::warn!("Listening for gRPC on unix socket '{}'", path.display())
            }
            _ => {}
        }
        tracing::warn!("Listening for HTTP on '{http_addr}'");
        Ok(Started {
            shared: Shared { limiter, health, reloader, stats, memory, redis, rlqs },
            watching,
            tls,
            settings,
            grpc_listeners,
            http_listener,
            debug_listener,
            grpc_addr,
            http_addr,
            debug_addr,
        })
    }
}
