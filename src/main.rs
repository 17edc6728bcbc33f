//! The `glance-cache-proxy` binary: command line, config check, logging, signals.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use glance_cache_proxy::config::{Config, Overrides};
use glance_cache_proxy::server::access::AccessLog;
use tokio::net::TcpListener;

/// Exit status for a bad configuration or command line (EX_USAGE).
const EXIT_USAGE: u8 = 64;
/// Exit status for a directory the proxy must write but cannot, as its user (EX_CANTCREAT).
const EXIT_CANTCREAT: u8 = 73;

/// A caching reverse proxy for the OpenStack Image service (Glance).
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    /// TOML configuration file (default: built-in defaults, see config/glance-cache-proxy.toml).
    #[arg(long, value_name = "PATH")]
    config: Option<PathBuf>,
    /// Validate the configuration, print the effective configuration and exit.
    #[arg(long)]
    check_config: bool,
    /// Address of the API listener: IP:PORT or HOST:PORT (server.listen).
    #[arg(long, value_name = "ADDR:PORT")]
    listen: Option<String>,
    /// Upstream Glance URL; repeat for several, most preferred first (upstream.urls).
    #[arg(long = "upstream", value_name = "URL")]
    upstreams: Vec<String>,
    /// URL clients reach the proxy at, for rewritten links (server.public_url).
    #[arg(long, value_name = "URL")]
    public_url: Option<String>,
    /// Cache directory (cache.dir).
    #[arg(long, value_name = "DIR")]
    cache_dir: Option<String>,
    /// Cache size bound: bytes, or 500MiB, 10GiB, 2GB (cache.max_size).
    #[arg(long, value_name = "SIZE")]
    cache_max_size: Option<String>,
    /// Address of the metrics listener, IP:PORT or HOST:PORT; empty disables it (metrics.listen).
    #[arg(long, value_name = "ADDR:PORT")]
    metrics_listen: Option<String>,
}

impl Cli {
    fn overrides(&self) -> Overrides {
        Overrides {
            listen: self.listen.clone(),
            upstreams: self.upstreams.clone(),
            public_url: self.public_url.clone(),
            cache_dir: self.cache_dir.clone(),
            cache_max_size: self.cache_max_size.clone(),
            metrics_listen: self.metrics_listen.clone(),
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let config = match Config::load(cli.config.as_deref(), &cli.overrides()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("glance-cache-proxy: configuration error: {e}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    if cli.check_config {
        print!("{}", config.to_toml());
        return ExitCode::SUCCESS;
    }
    // Kept to the end: dropping it writes the events still queued.
    let _log = glance_cache_proxy::logging::init(&config);
    // Before any other thread: a fill's buffers are reused, not faulted in afresh (sys).
    if !glance_cache_proxy::sys::keep_freed_memory(4 << 20, 32 << 20) {
        tracing::debug!("malloc parameters left as they were");
    }
    // Test builds only: fault-injection points named in the FAILPOINTS environment variable.
    #[cfg(feature = "failpoints")]
    let _faults = fail::FailScenario::setup();
    match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => {
            let access = std::sync::OnceLock::new();
            let code = runtime.block_on(run(config, &access));
            // Requests still held by the runtime end (and log) here; then their lines out.
            drop(runtime);
            if let Some(access) = access.get() {
                access.flush();
            }
            code
        }
        Err(e) => {
            eprintln!("glance-cache-proxy: cannot start the runtime: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Open the cache, bind the listeners, serve until SIGTERM/SIGINT and the drain end. The
/// access log is handed out through `access`, to be flushed once the runtime has stopped.
async fn run(config: Config, access: &std::sync::OnceLock<std::sync::Arc<AccessLog>>) -> ExitCode {
    // The cache first: the port opens only once the index is rebuilt and leftovers of
    // interrupted fills are gone, so "accepting connections" means ready.
    let cache_dir = config.cache.dir.clone();
    let app = match glance_cache_proxy::app::build(config) {
        Ok(app) => app,
        Err(e) => {
            tracing::error!(dir = %cache_dir.display(), "{e}");
            return match e {
                glance_cache_proxy::app::StartError::Unwritable(_) => {
                    ExitCode::from(EXIT_CANTCREAT)
                }
                _ => ExitCode::FAILURE,
            };
        }
    };
    let _ = access.set(std::sync::Arc::clone(&app.server.access));
    let Some((listener, admin)) = bind_listeners(&app.config).await else {
        return ExitCode::FAILURE;
    };
    tracing::info!(
        listen = %app.config.server.listen,
        upstreams = ?app.config.upstream.urls.iter().map(|u| u.as_str()).collect::<Vec<_>>(),
        version = env!("CARGO_PKG_VERSION"),
        "glance-cache-proxy listening"
    );
    let identities: Vec<_> = app
        .tls
        .iter()
        .map(|tls| tls.identity())
        .chain(app.upstream.identity())
        .cloned()
        .collect();
    if !identities.is_empty() {
        tokio::spawn(reload_on_sighup(identities));
    }
    glance_cache_proxy::app::serve(app, listener, admin, shutdown_signal()).await;
    tracing::info!("stopped");
    ExitCode::SUCCESS
}

/// The API listener and, unless disabled, the metrics listener; `None` (logged, naming the
/// key) when either cannot be bound.
async fn bind_listeners(config: &Config) -> Option<(TcpListener, Option<TcpListener>)> {
    let listen = config.server.listen;
    let listener = match glance_cache_proxy::server::bind(listen) {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(%listen, error = %e, "cannot bind the API listener (server.listen)");
            return None;
        }
    };
    let admin = match config.metrics.listen {
        None => None,
        Some(addr) => match TcpListener::bind(addr).await {
            Ok(l) => Some(l),
            Err(e) => {
                tracing::error!(%addr, error = %e, "cannot bind the metrics listener (metrics.listen)");
                return None;
            }
        },
    };
    Some((listener, admin))
}

/// SIGHUP: load the TLS certificates and keys again (the listener's and the upstream client
/// certificate); open connections keep theirs.
async fn reload_on_sighup(identities: Vec<std::sync::Arc<glance_cache_proxy::tls::Identity>>) {
    use tokio::signal::unix::{signal, SignalKind};
    let Ok(mut hup) = signal(SignalKind::hangup()) else {
        tracing::warn!("cannot listen for SIGHUP; TLS certificates will not be reloaded");
        return;
    };
    while hup.recv().await.is_some() {
        for identity in &identities {
            // Reading the files is disk work: on the blocking pool, not a runtime thread.
            let reloading = std::sync::Arc::clone(identity);
            let reloaded = tokio::task::spawn_blocking(move || reloading.reload()).await;
            let Ok(reloaded) = reloaded else {
                tracing::error!("SIGHUP: the reload task failed; keeping the current certificate");
                continue;
            };
            match reloaded {
                Ok(()) => tracing::info!(
                    setting = identity.setting(),
                    "SIGHUP: TLS certificate reloaded"
                ),
                Err(e) => tracing::error!("SIGHUP: {e}; keeping the current certificate"),
            }
        }
    }
}

/// Resolves on the first SIGTERM or SIGINT.
async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let term = signal(SignalKind::terminate());
    let int = signal(SignalKind::interrupt());
    match (term, int) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => tracing::info!("SIGTERM received"),
                _ = int.recv() => tracing::info!("SIGINT received"),
            }
        }
        _ => {
            tracing::error!("cannot install signal handlers; stop with SIGKILL");
            std::future::pending::<()>().await;
        }
    }
}
