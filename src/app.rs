//! The composition root: builds every component from the `Config` (the shared state, the
//! server around it) and runs the listeners until shutdown. The only module that names them
//! all; nothing in the crate imports it (`main` and the tests' `TestProxy` call it).

use std::future::Future;
use std::sync::Arc;

use tokio::net::TcpListener;
use url::Url;

use crate::cache::scrub::Scrubber;
use crate::cache::store::StoreError;
use crate::server::tls::Tls;
use crate::tls::TlsError;
use crate::writable::{DiskHealth, Unwritable};

/// Why the proxy cannot start; each names the setting to fix.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot open the cache directory (cache.dir): {0}")]
    Cache(#[from] StoreError),
    /// A directory the proxy writes is not writable by its user (`main` exits 73).
    #[error("the cache directory (cache.dir) is not writable: {0}")]
    Unwritable(Box<Unwritable>),
    #[error("cannot load a TLS file: {0}")]
    Tls(#[from] TlsError),
}
use crate::cache::Cache;
use crate::config::Config;
use crate::grants::Grants;
use crate::metrics::Metrics;
use crate::prefetch::Prefetcher;
use crate::server::slots::Slots;
use crate::server::Server;
use crate::state::Shared;
use crate::upstream::Upstream;

/// The proxy, built from its configuration: the server and the handles `main` needs.
pub struct App {
    pub config: Config,
    pub upstream: Arc<Upstream>,
    /// HTTPS on the API listener (`server.tls_cert_file`), reloadable.
    pub tls: Option<Arc<Tls>>,
    pub server: Arc<Server>,
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
        let upstream = Upstream::new(&config.upstream, Arc::clone(&metrics))?
            .with_trusted_proxies(config.server.trusted_proxies.clone())
            .with_client_body_timeout(config.server.client_body_timeout);
        let upstream = Arc::new(upstream);
        let shared = shared(&config, Arc::clone(&upstream), metrics)?;
        let server = Arc::new(Server {
            shared,
            config: config.server.clone(),
            tls: tls.clone(),
            slots: Slots::new(config.server.max_connections),
            listen_url,
            last_host: std::sync::Mutex::default(),
            access: Arc::new(crate::server::access::AccessLog::new()),
        });
        Ok(App {
            config,
            upstream,
            tls,
            server,
        })
    }
}

/// The shared state: the cache (scanned now), its prefetcher and scrubber, the grants.
fn shared(
    config: &Config,
    upstream: Arc<Upstream>,
    metrics: Arc<Metrics>,
) -> Result<Shared, StartError> {
    let cache = if config.cache.enabled {
        let disk = Arc::new(writable_dirs(&config.cache.dir)?);
        Some(Arc::new(Cache::open(&config.cache, disk)?))
    } else {
        None
    };
    let prefetch = match &cache {
        Some(cache) => Some(Arc::new(
            Prefetcher::open(&config.prefetch, Arc::clone(cache), Arc::clone(&upstream))
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
    // Grants persist beside the cache (for `auth.offline_grace`) and follow its removals.
    let grants = match &cache {
        Some(cache) => {
            let grants = crate::disk::startup(|| {
                Grants::open(config.auth, &config.cache.dir, |id| cache.is_cached(id))
            })
            .map_err(StoreError::from)?;
            cache.on_removed(grants.forgetter());
            grants
        }
        None => Grants::new(config.auth),
    };
    let identity = Arc::new(crate::identity::Resolver::new(
        &config.identity,
        Arc::clone(&upstream),
        Arc::clone(&metrics),
    ));
    Ok(Shared {
        upstream,
        cache,
        prefetch,
        scrub,
        grants,
        identity,
        metrics,
        sendfile: Arc::default(),
    })
}

/// Every directory the proxy writes (the cache root: the grants journal; entries, fills and
/// quarantine reports; the prefetch queue), each probed as the proxy's user before anything
/// opens them: the one that cannot be written stops the start, named with its fix.
fn writable_dirs(root: &std::path::Path) -> Result<DiskHealth, StartError> {
    let mut dirs = vec![root.to_path_buf()];
    dirs.extend(crate::cache::store::dirs(root));
    dirs.push(root.join(crate::prefetch::queue::QUEUE_DIR));
    crate::disk::startup(|| crate::writable::check(root, &dirs)).map_err(StartError::Unwritable)?;
    Ok(DiskHealth::new(root.to_path_buf(), dirs))
}

/// Build the components for `config` (scanning the cache directory), before any listener
/// exists: once the port accepts connections, leftovers are gone and the index is complete.
pub fn build(config: Config) -> Result<App, StartError> {
    let listen = config.server.listen;
    let scheme = if config.server.tls.is_some() {
        "https"
    } else {
        "http"
    };
    let listen_url = Url::parse(&format!("{scheme}://{listen}"))
        .unwrap_or_else(|_| Url::parse("http://127.0.0.1/").expect("literal URL is valid"));
    App::new(config, listen_url)
}

/// Serve `app` on `listener` (and `/metrics`, `/healthz`, `/readyz` on `admin`) until
/// `shutdown` resolves and the drain ends.
pub async fn serve(
    app: App,
    listener: TcpListener,
    admin: Option<TcpListener>,
    shutdown: impl Future<Output = ()>,
) {
    let server = app.server;
    let shared = &server.shared;
    let worker = shared
        .prefetch
        .as_ref()
        .map(|p| tokio::spawn(Arc::clone(p).run()));
    let scrub = shared
        .scrub
        .as_ref()
        .map(|s| tokio::spawn(Arc::clone(s).run()));
    let admin = admin.map(|l| tokio::spawn(crate::server::admin::serve(l, Arc::clone(&server))));
    let grants = shared.grants.clone();
    crate::server::serve(listener, server, shutdown).await;
    // Queued images stay queued on disk; a fetch cut short restarts next time; a scrub pass
    // cut short starts over with the same entry.
    for task in [worker, scrub, admin].into_iter().flatten() {
        task.abort();
    }
    // The grants the last batch did not write (for `auth.offline_grace`).
    if let Ok(Err(e)) = crate::disk::blocking(move || grants.save()).await {
        tracing::warn!(error = %e, "cannot write the remembered grants at stop");
    }
}
