//! Builds every component from the `Config` and runs the API listener until shutdown.

use std::future::Future;
use std::sync::Arc;

use tokio::net::TcpListener;
use url::Url;

use crate::config::Config;
use crate::upstream::Upstream;

/// The shared state every request sees.
pub struct App {
    pub config: Config,
    pub upstream: Upstream,
    /// Fallback public URL (`http://` + the listen address) for requests without `Host`.
    pub listen_url: Url,
}

impl App {
    pub fn new(config: Config, listen_url: Url) -> Self {
        let upstream = Upstream::new(&config.upstream);
        App {
            config,
            upstream,
            listen_url,
        }
    }
}

/// Run the proxy on an already bound listener until `shutdown` resolves and the drain ends.
pub async fn run(config: Config, listener: TcpListener, shutdown: impl Future<Output = ()>) {
    let listen_url = listener
        .local_addr()
        .ok()
        .and_then(|a| Url::parse(&format!("http://{a}")).ok())
        .unwrap_or_else(|| Url::parse("http://127.0.0.1/").expect("literal URL is valid"));
    let app = Arc::new(App::new(config, listen_url));
    crate::server::serve(listener, app, shutdown).await;
}
