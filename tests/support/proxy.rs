//! `TestProxy`: the proxy library itself on 127.0.0.1:0 (optionally with its metrics
//! listener), and `config`, which builds a `TestConfig`: a `Config` with short timeouts and a
//! cache directory of its own, removed once the config and every proxy started from it are gone.

use std::net::SocketAddr;
use std::ops::{Deref, DerefMut};
use std::sync::Arc;
use std::time::Duration;

use glance_cache_proxy::app::App;
use glance_cache_proxy::config::Config;
use glance_cache_proxy::server::Server;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// The proxy library running on 127.0.0.1:0.
pub struct TestProxy {
    pub addr: SocketAddr,
    pub url: String,
    /// The metrics listener's URL, for proxies started with `start_with_admin`.
    pub admin_url: Option<String>,
    pub cache_dir: std::path::PathBuf,
    /// The running server (its shared state answers `is_cached`).
    server: Arc<Server>,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
    /// Keeps the cache directory while this proxy may use it (dropped after `task` is aborted).
    _cache: Option<Arc<CacheDir>>,
}

/// A `Config` (it derefs to one) that owns the cache directory `config` made for it. Clones
/// share the directory: a restart test starts a second proxy on `cfg.clone()`.
#[derive(Clone)]
pub struct TestConfig {
    config: Config,
    dir: Option<Arc<CacheDir>>,
}

impl TestConfig {
    /// The same test config (and cache directory) with `f` applied.
    pub fn map(mut self, f: impl FnOnce(&mut Config)) -> TestConfig {
        f(&mut self.config);
        self
    }

    /// A copy of the `Config` for an API that takes one (`app::build`); the directory lives
    /// as long as `self`, so keep it until that copy is done with.
    pub fn to_config(&self) -> Config {
        self.config.clone()
    }
}

impl From<Config> for TestConfig {
    /// A config whose cache directory belongs to the caller.
    fn from(config: Config) -> TestConfig {
        TestConfig { config, dir: None }
    }
}

impl Deref for TestConfig {
    type Target = Config;
    fn deref(&self) -> &Config {
        &self.config
    }
}

impl DerefMut for TestConfig {
    fn deref_mut(&mut self) -> &mut Config {
        &mut self.config
    }
}

/// A test's cache directory (`gcp-test-cache-*` in the temp dir), removed on drop.
struct CacheDir(tempfile::TempDir);

impl Drop for CacheDir {
    fn drop(&mut self) {
        // An aborted proxy's blocking work (a fill's writer, a quarantine) can still add a
        // file for a moment, failing one removal with ENOTEMPTY; once the directory is gone,
        // nothing re-creates it.
        for _ in 0..200 {
            match std::fs::remove_dir_all(self.0.path()) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    std::thread::sleep(Duration::from_millis(10))
                }
                _ => return,
            }
        }
    }
}

/// A config for tests: `extra` is TOML appended to short test timeouts and the upstreams.
pub fn config(upstreams: &[&str], extra: &str) -> TestConfig {
    let urls: Vec<String> = upstreams.iter().map(|u| format!("\"{u}\"")).collect();
    let dir = tempfile::Builder::new()
        .prefix("gcp-test-cache-")
        .tempdir()
        .expect("cache tempdir");
    let text = format!(
        "[upstream]\nurls = [{}]\nconnect_timeout = \"2s\"\nresponse_timeout = \"10s\"\nbody_idle_timeout = \"10s\"\n[cache]\ndir = \"{}\"\n{extra}",
        urls.join(", "),
        dir.path().display()
    );
    let text = merge_sections(&text);
    let config =
        Config::from_toml_str(&text, "test config").unwrap_or_else(|e| panic!("test config: {e}"));
    TestConfig {
        config,
        dir: Some(Arc::new(CacheDir(dir))),
    }
}

/// Let `extra` override keys of the `[upstream]` section given above it: later keys win.
fn merge_sections(text: &str) -> String {
    let mut sections: Vec<(String, Vec<(String, String)>)> = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with('[') {
            current = line.to_string();
            if !sections.iter().any(|(s, _)| *s == current) {
                sections.push((current.clone(), Vec::new()));
            }
        } else if let Some((k, v)) = line.split_once('=') {
            if let Some((_, keys)) = sections.iter_mut().find(|(s, _)| *s == current) {
                keys.retain(|(key, _)| key != k.trim());
                keys.push((k.trim().to_string(), v.trim().to_string()));
            }
        }
    }
    sections
        .iter()
        .map(|(s, keys)| {
            let body: Vec<String> = keys.iter().map(|(k, v)| format!("{k} = {v}")).collect();
            format!("{s}\n{}\n", body.join("\n"))
        })
        .collect()
}

impl TestProxy {
    pub async fn start(config: impl Into<TestConfig>) -> TestProxy {
        TestProxy::launch(config.into(), false).await
    }

    /// As `start`, with the metrics listener (`/metrics`, `/healthz`, `/readyz`) on a port
    /// of its own.
    pub async fn start_with_admin(config: impl Into<TestConfig>) -> TestProxy {
        TestProxy::launch(config.into(), true).await
    }

    /// Build the proxy here (`App::new`: a start error fails the test at once), then serve it
    /// in a task (`app::serve`), as `main` does.
    async fn launch(config: TestConfig, with_admin: bool) -> TestProxy {
        let TestConfig { config, dir } = config;
        // Logs show with `RUST_LOG=info cargo test -- --nocapture`.
        let _ = tracing_subscriber::fmt()
            .with_test_writer()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .try_init();
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let addr = listener.local_addr().expect("local addr");
        let admin = match with_admin {
            true => Some(TcpListener::bind("127.0.0.1:0").await.expect("bind admin")),
            false => None,
        };
        let admin_url = admin
            .as_ref()
            .map(|l| format!("http://{}", l.local_addr().expect("admin addr")));
        let scheme = if config.server.tls.is_some() {
            "https"
        } else {
            "http"
        };
        let listen_url = url::Url::parse(&format!("{scheme}://{addr}")).expect("listen URL");
        let cache_dir = config.cache.dir.clone();
        let app =
            App::new(config, listen_url).unwrap_or_else(|e| panic!("proxy failed to start: {e}"));
        let server = Arc::clone(&app.server);
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(glance_cache_proxy::app::serve(
            app,
            listener,
            admin,
            async move {
                let _ = rx.await;
            },
        ));
        TestProxy {
            addr,
            url: format!("{scheme}://{addr}"),
            admin_url,
            cache_dir,
            server,
            shutdown: Some(tx),
            task: Some(task),
            _cache: dir,
        }
    }

    /// Whether the proxy's index holds a committed entry for `id`, so that the next request
    /// is a hit. (The entry's files appear a moment earlier; a request then joins the fill.)
    pub fn is_cached(&self, id: &str) -> bool {
        self.server
            .shared
            .cache
            .as_ref()
            .is_some_and(|c| c.is_cached(id))
    }

    /// Bytes this proxy sent with sendfile.
    pub fn sendfile_bytes(&self) -> u64 {
        self.server.shared.sendfile.sent()
    }

    /// Signal shutdown; returns the task so a test can wait for the drain.
    pub fn begin_shutdown(&mut self) -> JoinHandle<()> {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        self.task.take().expect("proxy task present")
    }
}

impl Drop for TestProxy {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}
