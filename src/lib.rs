//! glance-cache-proxy: a caching reverse proxy for the OpenStack Image service (Glance).
//!
//! Codemap, in reading order (see ARCHITECTURE.md for the invariants):
//! - `clock`: the wall clock (one place, so tests can step it).
//! - `config`: TOML -> validated, typed `Config`; every error names its key and file.
//! - `app`: builds the components from the config and runs the listener.
//! - `server`: accept loop, connection limit, graceful drain; per request: classify,
//!   dispatch, error-to-response, access log.
//! - `route`: pure (method, path) -> `Route`, including Glance's `/v2.N` prefixes.
//! - `auth`: caller keys and the memory of download grants (Glance decides access).
//! - `upstream`: the only outbound HTTP: pool, failover, timeouts, header rules, link rewriting.
//! - `error`: the proxy's own errors and the one table that turns them into responses.
//! - `body`: the response body type and the idle-timeout wrapper.
//! - `cache`: the image cache (`cache::verify`: digests and their comparison).
//! - `manage`: Glance's cache API (`/v2/cache`, legacy routes) for the proxy's own cache.
//! - `prefetch`: the persistent queue and the worker that fills the cache from it.
//! - `metrics`: Prometheus names, counters and histograms, and the scrape-time snapshot.
//! - `tls`: what both TLS sides share: PEM loading, trust roots, reloadable identities.

pub mod app;
pub mod auth;
pub mod body;
pub mod cache;
pub mod clock;
pub mod config;
pub mod digest;
pub mod error;
pub mod image;
pub mod manage;
pub mod metrics;
pub mod outcome;
pub mod prefetch;
pub mod route;
pub mod sendfile;
pub mod server;
pub mod state;
pub mod sys;
pub mod tls;
pub mod upstream;
