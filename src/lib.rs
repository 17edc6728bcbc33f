//! glance-cache-proxy: a caching reverse proxy for the OpenStack Image service (Glance).
//!
//! Codemap, top layer first (ARCHITECTURE.md has the layers and the invariants; a module
//! imports only modules below it):
//! - `app`: the composition root: builds the components from the config, runs the listeners.
//! - `server`: accept loop, connection slots, graceful drain; per request: classify,
//!   dispatch, error-to-response, access log; the operations listener.
//! - `image`: image data through the cache, as phases: authorize, plan, respond.
//! - `manage`: Glance's cache API (`/v2/cache`, legacy routes) for the proxy's own cache.
//! - `state`: the shared state handlers draw their narrow contexts from.
//! - `prefetch`: the persistent queue and the worker that fills the cache from it.
//! - `grants`: Glance's recent decisions (who may download what), bounded, for the windows
//!   `auth.grant_ttl` and `auth.offline_grace`, persisted for the grace.
//! - `identity`: who a Keystone token is (`auth.keystone_url`), cached, for the grants' keys.
//! - `fetch`: getting an image into the cache, for a miss and the prefetcher: plan (hit, join,
//!   or a registered fill) and start (Glance's download; room made after its 200).
//! - `cache`: the image cache: index, store, fills (the write side) and readers (the read
//!   side), verification, scrubber.
//! - `upstream`: the only outbound HTTP: pool, failover, timeouts, header rules, link rewriting.
//! - `error`: the proxy's own errors and the one table that turns them into responses.
//! - `metrics`: Prometheus names, counters and histograms, and the scrape-time snapshot.
//! - `body`: the response body types, the idle-timeout wrapper, and `follow` (the body of a
//!   growing file: sendfile spans or reads).
//! - `sendfile`: zero-copy hits: the file-span chunks, their guard, the socket wrapper.
//! - `writable`: whether the proxy can write its directories: the start-up probe and the
//!   running tally of cache write failures (`/readyz`).
//! - leaves: `auth` (caller identity headers and keys), `clock` (the wall clock), `config` (TOML ->
//!   validated `Config`), `digest` (what a record promises), `disk` (the blocking pool, the
//!   off-runtime check, id validation, private and durable writes), `outcome` (enums of what
//!   happened), `route` (pure classification), `sys` (the only unsafe), `tls` (PEM, roots,
//!   reloadable identities).

pub mod app;
pub mod auth;
pub mod body;
pub mod cache;
pub mod clock;
pub mod config;
pub mod digest;
pub mod disk;
pub mod error;
pub mod fetch;
pub mod grants;
pub mod identity;
pub mod image;
pub mod logging;
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
pub mod writable;
