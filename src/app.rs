//! Builds every component from the `Config` and runs the API listener until shutdown.

use std::future::Future;
use std::sync::Arc;

use tokio::net::TcpListener;
use url::Url;

use crate::auth::Grants;
use crate::cache::scrub::Scrubber;
use crate::cache::store::StoreError;
use crate::server::tls::Tls;
use crate::tls::TlsError;

/// Why the proxy cannot start; each names the setting to fix.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot open the cache directory (cache.dir): {0}")]
    Cache(#[from] StoreError),
    #[error("cannot load a TLS file: {0}")]
    Tls(#[from] TlsError),
}
use crate::cache::Cache;
use crate::config::Config;
use crate::metrics::{Metrics, Snapshot};
use crate::prefetch::Prefetcher;
use crate::upstream::Upstream;

/// The shared state every request sees.
pub struct App {
    pub config: Config,
    pub upstream: Arc<Upstream>,
    /// `None` when `cache.enabled` is false.
    pub cache: Option<Arc<Cache>>,
    /// The persistent prefetch queue and its worker; with the cache.
    pub prefetch: Option<Arc<Prefetcher>>,
    /// The bit-rot scrubber; with the cache.
    pub scrub: Option<Arc<Scrubber>>,
    /// Which callers Glance let download which images (decides evictions on 404).
    pub grants: Grants,
    /// Fallback public URL (`http://` + the listen address) for requests without `Host`.
    pub listen_url: Url,
    pub metrics: Arc<Metrics>,
    /// HTTPS on the API listener (`server.tls_cert_file`), reloadable.
    pub tls: Option<Arc<Tls>>,
    /// Client connection slots (`server.max_connections`).
    pub slots: Arc<crate::server::slots::Slots>,
}

impl App {
    /// Build the components; opening the cache scans its directory (before serving).
    pub fn new(config: Config, listen_url: Url) -> Result<Self, StartError> {
        let tls = match &config.server.tls {
            Some((cert, key)) => Some(Arc::new(Tls::new(cert, key, config.server.ktls)?)),
            None => None,
        };
        let metrics = Arc::new(Metrics::new());
        let _ = crate::sys::dev_null(); // held for the process's life: open it now

        let upstream = Arc::new(Upstream::new(&config.upstream, Arc::clone(&metrics))?);
        let cache = if config.cache.enabled {
            Some(Arc::new(Cache::open(&config.cache)?))
        } else {
            None
        };
        let prefetch = match &cache {
            Some(cache) => Some(Arc::new(
                Prefetcher::open(
                    &config.prefetch,
                    Arc::clone(cache),
                    Arc::clone(&upstream),
                    config.upstream.body_idle_timeout,
                )
                .map_err(StoreError::from)?,
            )),
            None => None,
        };
        let scrub = cache.as_ref().map(|cache| {
            Arc::new(Scrubber::new(
                Arc::clone(cache),
                config.cache.scrub_rate,
                config.cache.scrub_interval,
            ))
        });
        let slots = crate::server::slots::Slots::new(config.server.max_connections);
        Ok(App {
            config,
            upstream,
            cache,
            prefetch,
            scrub,
            grants: Grants::default(),
            listen_url,
            tls,
            slots,
            metrics,
        })
    }

    /// The components' state for a metrics scrape.
    pub fn snapshot(&self) -> Snapshot {
        let mut snap = Snapshot {
            upstreams: self.upstream.health(),
            failovers: self.upstream.failovers(),
            sendfile_bytes: crate::serve::sendfile::bytes_sent(),
            cold_read_bytes: crate::serve::sendfile::bytes_warmed(),
            connections_open: self.slots.open() as u64,
            connections_shed: self.slots.shed(),
            ..Snapshot::default()
        };
        if let Some(cache) = &self.cache {
            let (bytes, reserved, entries, capacity, evictions) = cache.usage();
            snap.cache_enabled = true;
            snap.cache_bytes = bytes;
            snap.cache_reserved_bytes = reserved;
            snap.cache_entries = entries;
            snap.cache_capacity_bytes = capacity;
            snap.cache_evictions = evictions;
            snap.fills = cache.stats.fills.all();
            snap.fetched_bytes = cache
                .stats
                .fetched
                .load(std::sync::atomic::Ordering::Relaxed);
            snap.quarantined = cache.stats.quarantined.all();
        }
        if let Some(s) = &self.scrub {
            use std::sync::atomic::Ordering::Relaxed;
            snap.scrub_verified_bytes = s.stats.verified_bytes.load(Relaxed);
            snap.scrub_verified_entries = s.stats.verified_entries.load(Relaxed);
            snap.scrub_corruptions = s.stats.corruptions.load(Relaxed);
        }
        if let Some(p) = &self.prefetch {
            snap.prefetch_queued = p.queued().len() as u64;
            snap.prefetch_in_flight = p.in_flight() as u64;
            snap.prefetch_failures = p.failures();
        }
        snap
    }
}

/// Run the proxy on an already bound listener until `shutdown` resolves and the drain ends.
/// Fails only if the cache directory cannot be opened.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
) -> Result<(), StartError> {
    let listen_url = listener
        .local_addr()
        .ok()
        .and_then(|a| {
            let scheme = if config.server.tls.is_some() {
                "https"
            } else {
                "http"
            };
            Url::parse(&format!("{scheme}://{a}")).ok()
        })
        .unwrap_or_else(|| Url::parse("http://127.0.0.1/").expect("literal URL is valid"));
    let app = Arc::new(App::new(config, listen_url)?);
    serve(app, listener, None, shutdown).await;
    Ok(())
}

/// Build the components for `config` (scanning the cache directory), before any listener
/// exists: once the port accepts connections, leftovers are gone and the index is complete.
pub fn build(config: Config) -> Result<Arc<App>, StartError> {
    let listen = config.server.listen;
    let scheme = if config.server.tls.is_some() {
        "https"
    } else {
        "http"
    };
    let listen_url = Url::parse(&format!("{scheme}://{listen}"))
        .unwrap_or_else(|_| Url::parse("http://127.0.0.1/").expect("literal URL is valid"));
    Ok(Arc::new(App::new(config, listen_url)?))
}

/// Serve `app` on `listener` (and `/metrics`, `/healthz`, `/readyz` on `admin`) until
/// `shutdown` resolves and the drain ends.
pub async fn serve(
    app: Arc<App>,
    listener: TcpListener,
    admin: Option<TcpListener>,
    shutdown: impl Future<Output = ()>,
) {
    let worker = app
        .prefetch
        .as_ref()
        .map(|p| tokio::spawn(Arc::clone(p).run()));
    let scrub = app
        .scrub
        .as_ref()
        .map(|s| tokio::spawn(Arc::clone(s).run()));
    let admin = admin.map(|l| tokio::spawn(crate::server::admin::serve(l, Arc::clone(&app))));
    crate::server::serve(listener, app, shutdown).await;
    // Queued images stay queued on disk; a fetch cut short restarts next time; a scrub pass
    // cut short starts over with the same entry.
    for task in [worker, scrub, admin].into_iter().flatten() {
        task.abort();
    }
}
