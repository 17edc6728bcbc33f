//! Configuration: TOML text -> `RawConfig` (serde, unknown keys rejected) -> `validate` -> typed `Config`.
//!
//! `Config::from_toml_str` is the pure unit tests call; `Config::load` is the thin IO wrapper;
//! the serde form and its validation are `raw`, the value parsers `values`.
//! Every error names the key (and the file, when there is one) so an operator can fix it
//! without reading code. Components receive only their own section.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use url::Url;

mod raw;
mod values;

pub use raw::*;
use values::*;

/// A configuration problem, always naming where it is.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{origin}: {message}")]
    Parse { origin: String, message: String },
    #[error("{origin}: key `{key}`: {message}")]
    Invalid {
        origin: String,
        key: String,
        message: String,
    },
}

/// The validated, typed configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub server: ServerConfig,
    pub upstream: UpstreamConfig,
    pub cache: CacheConfig,
    pub auth: AuthConfig,
    /// `[auth] keystone_url`, `identity_cache_ttl`: grants keyed by the Keystone identity.
    pub identity: IdentityConfig,
    pub prefetch: PrefetchConfig,
    pub metrics: MetricsConfig,
    pub log: LogConfig,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ServerConfig {
    /// The address bound: a host name in the file is resolved at validation (`parse_addr`).
    pub listen: SocketAddr,
    /// Base URL clients use to reach the proxy; `None` derives it from each request's `Host`.
    pub public_url: Option<Url>,
    pub max_connections: usize,
    pub header_read_timeout: Duration,
    /// A response that cannot write a byte for this long is closed (a client that stopped
    /// reading gives its connection slot back).
    pub send_timeout: Duration,
    pub drain_timeout: Duration,
    /// A request body that sends nothing for this long is a 408 (nginx's
    /// `client_body_timeout`): small bodies are read whole before they go upstream, so a
    /// stalled one never reaches Glance.
    pub client_body_timeout: Duration,
    /// HTTPS: PEM certificate chain and private key files (both or neither).
    pub tls: Option<(PathBuf, PathBuf)>,
    /// Kernel TLS for hits over HTTPS where available.
    pub ktls: KtlsMode,
    /// Peers whose `X-Forwarded-For` is believed (load balancers in front of the proxy); from
    /// anyone else the chain Glance sees starts at the peer.
    pub trusted_proxies: Vec<Cidr>,
}

/// An IP network: an address and a prefix length (`10.0.0.0/8`, `fd00::/8`; a bare address is
/// one host).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

impl Cidr {
    /// Whether `ip` is in this network; an IPv4-mapped IPv6 address (`::ffff:a.b.c.d`, as a
    /// dual-stack listener sees IPv4 peers) counts as its IPv4 address.
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr.to_canonical(), ip.to_canonical()) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                mask(u32::from(ip).into(), self.prefix, 32) == u32::from(net).into()
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                mask(u128::from(ip), self.prefix, 128) == u128::from(net)
            }
            _ => false,
        }
    }
}

/// `bits` (an address of `width` bits) with all but the first `prefix` bits cleared.
fn mask(bits: u128, prefix: u8, width: u8) -> u128 {
    let host_bits = u32::from(width.saturating_sub(prefix));
    bits.checked_shr(host_bits)
        .and_then(|b| b.checked_shl(host_bits))
        .unwrap_or(0)
}

impl std::fmt::Display for Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

impl std::str::FromStr for Cidr {
    type Err = String;

    /// `ADDR` or `ADDR/PREFIX`; host bits set under the prefix are refused (a typo, most likely).
    fn from_str(s: &str) -> Result<Cidr, String> {
        let t = s.trim();
        let (addr, prefix) = t.split_once('/').unwrap_or((t, ""));
        let addr: IpAddr = addr.parse().map_err(|_| {
            format!("`{s}` is not an IP address or network (e.g. 10.0.0.0/8, fd00::/8, 192.0.2.7)")
        })?;
        let width: u8 = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            "" => width,
            p => p
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= width)
                .ok_or_else(|| format!("`{s}`: prefix length must be 0-{width}"))?,
        };
        let bits = match addr {
            IpAddr::V4(a) => u128::from(u32::from(a)),
            IpAddr::V6(a) => u128::from(a),
        };
        if mask(bits, prefix, width) != bits {
            return Err(format!(
                "`{s}` has host bits set under its /{prefix} prefix"
            ));
        }
        Ok(Cidr { addr, prefix })
    }
}

/// `server.ktls`: "auto" uses kernel TLS + sendfile for hits over HTTPS where the build and
/// the kernel support it; "off" always encrypts them in user space.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KtlsMode {
    #[default]
    Auto,
    Off,
}

#[derive(Debug, Clone, PartialEq)]
pub struct UpstreamConfig {
    /// Glance API base URLs, in order of preference.
    pub urls: Vec<Url>,
    /// Further origins that Glance may put in absolute links (e.g. its `public_endpoint`).
    pub rewrite_origins: Vec<Url>,
    pub connect_timeout: Duration,
    pub response_timeout: Duration,
    pub body_idle_timeout: Duration,
    pub failure_backoff: Duration,
    pub pool_idle_timeout: Duration,
    pub pool_max_idle_per_host: usize,
    /// Request bodies streamed to each upstream at once (image uploads, and any body too
    /// large to read whole first); more wait in the proxy. 0: no bound.
    pub max_uploads: usize,
    /// Sent as `Cache-Control: max-age` on the proxy's own questions (when the upstream is a
    /// site proxy: the oldest grant it may answer on; `0s` makes it ask Glance).
    pub max_age: Option<Duration>,
    /// PEM CA bundle that `https://` upstreams' certificates must chain to; `None`: the
    /// system's trust store.
    pub ca_file: Option<PathBuf>,
    /// Client certificate chain and key presented to `https://` upstreams.
    pub client_identity: Option<(PathBuf, PathBuf)>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct CacheConfig {
    /// `false`: every image passes through uncached.
    pub enabled: bool,
    pub dir: PathBuf,
    pub max_size: u64,
    /// Cache images whose record has a size but no checksum or os_hash (verified by size only).
    pub cache_unverified: bool,
    /// Also compute and compare md5 when the record has an os_hash (which alone suffices).
    pub verify_md5: bool,
    /// Keep filling when every client of a fill has gone away.
    pub finish_abandoned_fills: bool,
    /// ... for at most this long after the last one left.
    pub abandoned_fill_timeout: Duration,
    /// Bytes per second the scrubber re-reads; 0: no scrubbing.
    pub scrub_rate: u64,
    /// How often each entry is re-verified at most.
    pub scrub_interval: Duration,
}

/// How long Glance's recent decisions stand (README "Edge sites"). Both zero: Glance is
/// asked on every request and a cached image is never served while it cannot answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct AuthConfig {
    /// A caller Glance let download an image within this long is served a cached copy
    /// without asking again.
    pub grant_ttl: Duration,
    /// While no upstream answers, a caller Glance let download an image within this long is
    /// served a cached, verified copy (grants persist in the cache directory).
    pub offline_grace: Duration,
}

/// Grants that follow the Keystone identity (README "Edge sites"): with a Keystone URL, a
/// caller's token is validated against Keystone (itself as subject) and grants are keyed by
/// the identity it resolves to, so a renewed token of the same identity keeps them.
#[derive(Debug, Clone, PartialEq)]
pub struct IdentityConfig {
    /// Keystone's base URL (`.../identity` or `.../identity/v3`); `None`: grants are keyed by
    /// the exact credentials.
    pub keystone_url: Option<Url>,
    /// How long a token's resolution stands (never past the token's `expires_at`): the bound
    /// on serving a revoked token while Keystone answers (keystonemiddleware's
    /// `token_cache_time`).
    pub cache_ttl: Duration,
    /// How long Keystone's answer to a token's validation is waited for; past it, Keystone
    /// cannot say (the exact credentials key the request, and Keystone rests for
    /// `identity::RETRY_AFTER`), rather than the request waiting `upstream.response_timeout`.
    pub keystone_timeout: Duration,
}

#[derive(Debug, Clone, PartialEq)]
pub struct PrefetchConfig {
    /// Images fetched at the same time.
    pub concurrency: usize,
    /// First wait after a failed attempt; doubles per failure up to `retry_max`.
    pub retry_initial: Duration,
    pub retry_max: Duration,
    pub credentials: ServiceCredentials,
}

/// The proxy's own identity towards Glance, for the prefetcher.
#[derive(Clone, PartialEq)]
pub enum ServiceCredentials {
    /// No `X-Auth-Token` (a Glance without authentication).
    None,
    /// A fixed token.
    Token(String),
    /// Keystone v3 password authentication, renewed before expiry and on a 401.
    Keystone(KeystoneAuth),
}

#[derive(Clone, PartialEq)]
pub struct KeystoneAuth {
    pub auth_url: Url,
    pub username: String,
    pub password: String,
    pub user_domain_name: String,
    pub project_name: String,
    pub project_domain_name: String,
}

impl std::fmt::Debug for ServiceCredentials {
    // Never print secrets (logs, --check-config's debug output).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ServiceCredentials::None => write!(f, "None"),
            ServiceCredentials::Token(_) => write!(f, "Token(<hidden>)"),
            ServiceCredentials::Keystone(k) => write!(
                f,
                "Keystone({} user {} project {})",
                k.auth_url, k.username, k.project_name
            ),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct MetricsConfig {
    /// `None` when disabled (an empty `listen`); a host name is resolved as `server.listen`'s.
    pub listen: Option<SocketAddr>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, PartialEq)]
pub struct LogConfig {
    /// A `tracing` filter directive such as `info` or `glance_cache_proxy=debug`.
    pub level: String,
    pub format: LogFormat,
}

/// Command-line overrides, applied on top of the file (or the defaults).
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    pub listen: Option<String>,
    pub upstreams: Vec<String>,
    pub public_url: Option<String>,
    pub cache_dir: Option<String>,
    pub cache_max_size: Option<String>,
    pub metrics_listen: Option<String>,
}

// === impl Config ===

impl Default for Config {
    fn default() -> Self {
        // The defaults are valid by construction; a unit test proves it.
        match RawConfig::default().validate("defaults") {
            Ok(config) => config,
            Err(e) => panic!("built-in defaults are invalid: {e}"),
        }
    }
}

impl Config {
    /// Parse and validate TOML text; `origin` (a file name) prefixes every error.
    pub fn from_toml_str(text: &str, origin: &str) -> Result<Config, ConfigError> {
        Self::from_toml_str_with(text, origin, &Overrides::default())
    }

    /// As `from_toml_str`, with command-line overrides applied before validation.
    pub fn from_toml_str_with(
        text: &str,
        origin: &str,
        overrides: &Overrides,
    ) -> Result<Config, ConfigError> {
        let mut raw: RawConfig = toml::from_str(text).map_err(|e| ConfigError::Parse {
            origin: origin.to_string(),
            message: e.to_string().trim_end().to_string(),
        })?;
        raw.apply(overrides);
        raw.validate_with_flags(origin, overrides)
    }

    /// Read `path` (or use the defaults when `None`) and apply `overrides`.
    pub fn load(path: Option<&Path>, overrides: &Overrides) -> Result<Config, ConfigError> {
        match path {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                    path: path.to_path_buf(),
                    source,
                })?;
                Self::from_toml_str_with(&text, &path.display().to_string(), overrides)
            }
            None => {
                let mut raw = RawConfig::default();
                raw.apply(overrides);
                raw.validate_with_flags("defaults", overrides)
            }
        }
    }

    /// `[auth]` as the file says it: the windows and the identity.
    fn raw_auth(&self) -> RawAuth {
        let keystone_url = self.identity.keystone_url.as_ref();
        RawAuth {
            grant_ttl: fmt_duration(self.auth.grant_ttl),
            offline_grace: fmt_duration(self.auth.offline_grace),
            keystone_url: keystone_url.map(Url::to_string).unwrap_or_default(),
            identity_cache_ttl: fmt_duration(self.identity.cache_ttl),
            keystone_timeout: fmt_duration(self.identity.keystone_timeout),
        }
    }

    /// The effective configuration as TOML, as `--check-config` prints it.
    pub fn to_toml(&self) -> String {
        let raw = RawConfig {
            server: RawServer {
                listen: self.server.listen.to_string(),
                public_url: self
                    .server
                    .public_url
                    .as_ref()
                    .map(Url::to_string)
                    .unwrap_or_default(),
                max_connections: self.server.max_connections,
                header_read_timeout: fmt_duration(self.server.header_read_timeout),
                send_timeout: fmt_duration(self.server.send_timeout),
                drain_timeout: fmt_duration(self.server.drain_timeout),
                client_body_timeout: fmt_duration(self.server.client_body_timeout),
                tls_cert_file: shown(&self.server.tls, |(c, _)| c),
                tls_key_file: shown(&self.server.tls, |(_, k)| k),
                ktls: self.server.ktls,
                trusted_proxies: self
                    .server
                    .trusted_proxies
                    .iter()
                    .map(Cidr::to_string)
                    .collect(),
            },
            upstream: RawUpstream {
                urls: self.upstream.urls.iter().map(Url::to_string).collect(),
                rewrite_origins: self
                    .upstream
                    .rewrite_origins
                    .iter()
                    .map(Url::to_string)
                    .collect(),
                connect_timeout: fmt_duration(self.upstream.connect_timeout),
                response_timeout: fmt_duration(self.upstream.response_timeout),
                body_idle_timeout: fmt_duration(self.upstream.body_idle_timeout),
                failure_backoff: fmt_duration(self.upstream.failure_backoff),
                pool_idle_timeout: fmt_duration(self.upstream.pool_idle_timeout),
                pool_max_idle_per_host: self.upstream.pool_max_idle_per_host,
                max_uploads: self.upstream.max_uploads,
                max_age: self.upstream.max_age.map(fmt_duration).unwrap_or_default(),
                ca_file: shown(&self.upstream.ca_file, |f| f),
                client_cert_file: shown(&self.upstream.client_identity, |(c, _)| c),
                client_key_file: shown(&self.upstream.client_identity, |(_, k)| k),
            },
            cache: RawCache {
                enabled: self.cache.enabled,
                dir: self.cache.dir.display().to_string(),
                max_size: RawSize::Bytes(self.cache.max_size),
                cache_unverified: self.cache.cache_unverified,
                verify_md5: self.cache.verify_md5,
                finish_abandoned_fills: self.cache.finish_abandoned_fills,
                abandoned_fill_timeout: fmt_duration(self.cache.abandoned_fill_timeout),
                scrub_rate: RawSize::Bytes(self.cache.scrub_rate),
                scrub_interval: fmt_duration(self.cache.scrub_interval),
            },
            auth: self.raw_auth(),
            prefetch: {
                let p = &self.prefetch;
                let mut raw = RawPrefetch {
                    concurrency: p.concurrency,
                    retry_initial: fmt_duration(p.retry_initial),
                    retry_max: fmt_duration(p.retry_max),
                    ..RawPrefetch::default()
                };
                match &p.credentials {
                    ServiceCredentials::None => {}
                    ServiceCredentials::Token(_) => raw.token = "<hidden>".into(),
                    ServiceCredentials::Keystone(k) => {
                        raw.auth_url = k.auth_url.to_string();
                        raw.username = k.username.clone();
                        raw.password = "<hidden>".into();
                        raw.user_domain_name = k.user_domain_name.clone();
                        raw.project_name = k.project_name.clone();
                        raw.project_domain_name = k.project_domain_name.clone();
                    }
                }
                raw
            },
            metrics: RawMetrics {
                listen: self
                    .metrics
                    .listen
                    .map(|a| a.to_string())
                    .unwrap_or_default(),
            },
            log: RawLog {
                level: self.log.level.clone(),
                format: self.log.format,
            },
        };
        // Serializing plain strings and integers cannot fail.
        toml::to_string(&raw).unwrap_or_else(|e| format!("# cannot print config: {e}\n"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check_err(text: &str, expect: &[&str]) {
        let err = Config::from_toml_str(text, "test.toml")
            .expect_err("config should be rejected")
            .to_string();
        for e in expect {
            assert!(err.contains(e), "error {err:?} lacks {e:?}");
        }
    }

    #[test]
    fn defaults_are_valid() {
        let c = Config::default();
        assert_eq!(c.server.listen.to_string(), "127.0.0.1:9393");
        assert_eq!(c.upstream.urls[0].as_str(), "http://127.0.0.1:9292/");
        assert_eq!(c.cache.max_size, 10 * 1024 * 1024 * 1024);
        assert_eq!(Config::from_toml_str("", "empty.toml").ok(), Some(c));
    }

    #[test]
    fn example_file_parses_and_matches_defaults() {
        let text = include_str!("../../config/glance-cache-proxy.toml");
        let c = Config::from_toml_str(text, "config/glance-cache-proxy.toml")
            .unwrap_or_else(|e| panic!("example config: {e}"));
        assert_eq!(
            c,
            Config::default(),
            "the example must document the defaults"
        );
    }

    #[test]
    fn example_file_documents_every_key() {
        let text = include_str!("../../config/glance-cache-proxy.toml");
        let printed = Config::default().to_toml();
        let mut section = String::new();
        for line in printed.lines() {
            if let Some(s) = line.strip_prefix('[') {
                section = s.trim_end_matches(']').to_string();
                assert!(
                    text.contains(&format!("[{section}]")),
                    "missing [{section}]"
                );
            } else if let Some((key, _)) = line.split_once(" = ") {
                assert!(
                    text.lines().any(|l| l.starts_with(&format!("{key} ="))
                        || l.starts_with(&format!("# {key} ="))),
                    "example lacks key {section}.{key}"
                );
            }
        }
    }

    #[test]
    fn unknown_keys_are_rejected_by_name() {
        check_err(
            "[server]\nlisten_addr = \"1.2.3.4:1\"\n",
            &["test.toml", "listen_addr"],
        );
        check_err("[cahce]\ndir = \"/x\"\n", &["test.toml", "cahce"]);
    }

    #[test]
    fn keystone_identity_keys() {
        let default = Config::default();
        assert_eq!(default.identity.keystone_url, None, "exact credentials");
        assert_eq!(default.identity.cache_ttl, Duration::from_secs(300));
        let set = Config::from_toml_str(
            "[auth]\nkeystone_url = \"https://keystone.example/identity/v3\"\nidentity_cache_ttl = \"30s\"\n",
            "test.toml",
        )
        .expect("valid");
        assert_eq!(
            set.identity.keystone_url.as_ref().map(Url::as_str),
            Some("https://keystone.example/identity/v3")
        );
        assert_eq!(set.identity.cache_ttl, Duration::from_secs(30));
        check_err(
            "[auth]\nkeystone_url = \"ftp://k\"\n",
            &["auth.keystone_url"],
        );
        check_err(
            "[auth]\nidentity_cache_ttl = \"2h\"\n",
            &["auth.identity_cache_ttl", "at most 1h"],
        );
        assert_eq!(default.identity.keystone_timeout, Duration::from_secs(5));
        assert_eq!(
            Config::from_toml_str("[auth]\nkeystone_timeout = \"750ms\"\n", "test.toml")
                .expect("valid")
                .identity
                .keystone_timeout,
            Duration::from_millis(750)
        );
        for bad in ["0s", "2m"] {
            check_err(
                &format!("[auth]\nkeystone_timeout = \"{bad}\"\n"),
                &["auth.keystone_timeout", "at most 1m"],
            );
        }
        check_err(
            "[auth]\nkeystone_timeout = \"soon\"\n",
            &["auth.keystone_timeout"],
        );
    }

    #[test]
    fn urls_without_a_scheme_say_what_to_write() {
        // (value of upstream.urls, what the error must say)
        let cases = [
            ("127.0.0.1:9292", "write `http://127.0.0.1:9292`"),
            ("glance.example:9292", "write `http://glance.example:9292`"),
            ("glance.example", "write `http://glance.example`"),
            ("ftp://glance.example", "as in `http://HOST:PORT`"),
            ("http://", "`http://HOST:PORT`"),
        ];
        for (url, says) in cases {
            let text = format!("[upstream]\nurls = [\"{url}\"]\n");
            check_err(&text, &["test.toml", "upstream.urls[0]", url, says]);
        }
        check_err(
            "[server]\npublic_url = \"proxy.example:9393\"\n",
            &["server.public_url", "write `http://proxy.example:9393`"],
        );
        let o = Overrides {
            upstreams: vec!["127.0.0.1:9292".into()],
            ..Default::default()
        };
        let err = Config::from_toml_str_with("", "f.toml", &o)
            .expect_err("no scheme")
            .to_string();
        assert!(
            err.contains("--upstream") && err.contains("write `http://127.0.0.1:9292`"),
            "{err}"
        );
    }

    #[test]
    fn bad_values_name_the_key() {
        check_err(
            "[server]\nlisten = \"nope\"\n",
            &["test.toml", "server.listen"],
        );
        check_err(
            "[upstream]\nurls = [\"http://a:1\", \"ftp://b\"]\n",
            &["upstream.urls[1]", "http"],
        );
        check_err("[upstream]\nurls = []\n", &["upstream.urls"]);
        check_err(
            "[upstream]\nclient_cert_file = \"/c.pem\"\n",
            &[
                "upstream.client_key_file",
                "must be set with upstream.client_cert_file",
            ],
        );
        check_err(
            "[server]\ntls_key_file = \"/k.pem\"\n",
            &[
                "server.tls_cert_file",
                "must be set with server.tls_key_file",
            ],
        );
        check_err(
            "[upstream]\nconnect_timeout = \"5 parsecs\"\n",
            &["upstream.connect_timeout"],
        );
        check_err(
            "[upstream]\nresponse_timeout = \"0s\"\n",
            &["upstream.response_timeout"],
        );
        check_err("[cache]\nmax_size = \"lots\"\n", &["cache.max_size"]);
        check_err(
            "[server]\ntrusted_proxies = [\"10.0.0.1\", \"proxy.example\"]\n",
            &[
                "test.toml",
                "server.trusted_proxies[1]",
                "not an IP address",
            ],
        );
        check_err(
            "[server]\ntrusted_proxies = [\"10.1.2.3/8\"]\n",
            &["server.trusted_proxies[0]", "host bits"],
        );
        check_err(
            "[server]\ntrusted_proxies = [\"fd00::/129\"]\n",
            &["server.trusted_proxies[0]", "prefix length"],
        );
        check_err(
            "[server]\nmax_connections = 0\n",
            &["server.max_connections"],
        );
        check_err("[log]\nformat = \"xml\"\n", &["test.toml", "xml"]);
        check_err(
            "[server]\npublic_url = \"http://p/?x=1\"\n",
            &["server.public_url"],
        );
        check_err("[server\n", &["test.toml"]);
        check_err("[prefetch]\nconcurrency = 0\n", &["prefetch.concurrency"]);
        check_err(
            "[prefetch]\nretry_initial = \"1m\"\nretry_max = \"10s\"\n",
            &["prefetch.retry_max"],
        );
        check_err(
            "[prefetch]\nauth_url = \"http://k:5000/v3\"\nusername = \"u\"\npassword = \"p\"\n",
            &["prefetch.project_name", "needed"],
        );
        check_err(
            "[prefetch]\ntoken = \"t\"\nauth_url = \"http://k:5000\"\n",
            &["prefetch.token", "not both"],
        );
        check_err(
            "[prefetch]\nusername = \"u\"\n",
            &["prefetch.username", "auth_url"],
        );
    }

    #[test]
    fn secrets_are_never_printed() {
        let text = "[prefetch]\nauth_url = \"http://k:5000/v3\"\nusername = \"svc\"\npassword = \"s3cret\"\nproject_name = \"service\"\n";
        let config = Config::from_toml_str(text, "t").expect("valid");
        assert!(!config.to_toml().contains("s3cret"));
        assert!(!format!("{config:?}").contains("s3cret"));
        let config = Config::from_toml_str("[prefetch]\ntoken = \"tok3n\"\n", "t").expect("valid");
        assert!(!config.to_toml().contains("tok3n"));
        assert!(!format!("{config:?}").contains("tok3n"));
    }

    #[test]
    fn sizes() {
        let cases: &[(&str, u64)] = &[
            ("1048576", 1 << 20),
            ("500MiB", 500 << 20),
            ("10GiB", 10 << 30),
            ("2GB", 2_000_000_000),
            ("1.5 GiB", 3 << 29),
        ];
        for (text, want) in cases {
            assert_eq!(
                parse_size(&RawSize::Text(text.to_string())),
                Ok(*want),
                "{text}"
            );
        }
        assert_eq!(parse_size(&RawSize::Bytes(7)), Ok(7));
        assert!(parse_size(&RawSize::Text("-1".into())).is_err());
        assert!(parse_size(&RawSize::Text("12 parsecs".into())).is_err());
    }

    #[test]
    fn overrides_apply_and_name_the_flag() {
        let o = Overrides {
            listen: Some("0.0.0.0:8000".into()),
            upstreams: vec!["http://a:1".into(), "http://b:2/image".into()],
            cache_max_size: Some("2GB".into()),
            metrics_listen: Some(String::new()),
            ..Default::default()
        };
        let c = Config::from_toml_str_with("", "f.toml", &o).expect("valid");
        assert_eq!(c.server.listen.to_string(), "0.0.0.0:8000");
        assert_eq!(c.upstream.urls.len(), 2);
        assert_eq!(c.upstream.urls[1].path(), "/image");
        assert_eq!(c.cache.max_size, 2_000_000_000);
        assert_eq!(c.metrics.listen, None);

        let o = Overrides {
            upstreams: vec!["not a url".into()],
            ..Default::default()
        };
        let err = Config::from_toml_str_with("", "f.toml", &o)
            .expect_err("bad flag")
            .to_string();
        assert!(
            err.contains("--upstream") && err.contains("upstream.urls[0]"),
            "{err}"
        );
    }

    #[test]
    fn listen_accepts_host_names() {
        let text =
            "[server]\nlisten = \"localhost:9393\"\n[metrics]\nlisten = \"localhost:9394\"\n";
        let c = Config::from_toml_str(text, "t").expect("localhost resolves");
        assert!(c.server.listen.ip().is_loopback(), "{}", c.server.listen);
        assert_eq!(c.server.listen.port(), 9393);
        let metrics = c.metrics.listen.expect("metrics on");
        assert!(
            metrics.ip().is_loopback() && metrics.port() == 9394,
            "{metrics}"
        );
        // --check-config prints the address bound, which parses back to the same config.
        let printed = c.to_toml();
        assert!(!printed.contains("localhost"), "{printed}");
        assert_eq!(Config::from_toml_str(&printed, "printed").ok(), Some(c));

        let o = Overrides {
            listen: Some("localhost:8000".into()),
            ..Default::default()
        };
        let c = Config::from_toml_str_with("", "f.toml", &o).expect("flag resolves");
        assert!(c.server.listen.ip().is_loopback() && c.server.listen.port() == 8000);
        for literal in ["0.0.0.0:9393", "[::1]:9393", " 127.0.0.1:1 "] {
            assert_eq!(
                parse_addr(literal),
                Ok(literal.trim().parse().expect("literal"))
            );
        }
    }

    #[test]
    fn bad_listen_addresses_name_the_key() {
        check_err(
            "[server]\nlisten = \"nosuchhost.invalid:1\"\n",
            &[
                "test.toml",
                "server.listen",
                "cannot resolve `nosuchhost.invalid`",
            ],
        );
        check_err(
            "[metrics]\nlisten = \"nosuchhost.invalid:1\"\n",
            &["test.toml", "metrics.listen", "cannot resolve"],
        );
        for (listen, why) in [
            ("localhost", "has no port"),
            ("localhost:", "has no port"),
            ("127.0.0.1", "has no port"),
            ("localhost:http", "not a port number"),
            ("localhost:65536", "not a port number"),
            (":9393", "has no host"),
            ("::1:9393", "in brackets"),
        ] {
            check_err(
                &format!("[server]\nlisten = \"{listen}\"\n"),
                &["test.toml", "server.listen", why],
            );
        }
        let o = Overrides {
            listen: Some("nosuchhost.invalid:1".into()),
            ..Default::default()
        };
        let err = Config::from_toml_str_with("", "f.toml", &o)
            .expect_err("unresolvable flag")
            .to_string();
        assert!(
            err.contains("--listen") && err.contains("server.listen"),
            "{err}"
        );
        let o = Overrides {
            metrics_listen: Some("localhost".into()),
            ..Default::default()
        };
        let err = Config::from_toml_str_with("", "f.toml", &o)
            .expect_err("no port")
            .to_string();
        assert!(
            err.contains("--metrics-listen") && err.contains("metrics.listen"),
            "{err}"
        );
    }

    #[test]
    fn printed_config_round_trips() {
        let c = Config::default();
        let again = Config::from_toml_str(&c.to_toml(), "printed").expect("round trip");
        assert_eq!(c, again);
        let text = "[server]\ntrusted_proxies = [\"10.0.0.0/8\", \"192.0.2.7\", \"fd00::/8\"]\n";
        let c = Config::from_toml_str(text, "t").expect("valid");
        let printed = c.to_toml();
        assert!(printed.contains("\"192.0.2.7/32\""), "{printed}");
        assert_eq!(Config::from_toml_str(&printed, "printed").ok(), Some(c));
    }

    /// Whether `ip` is in network `net`.
    fn check_cidr(net: &str, ip: &str, expected: bool) {
        let cidr: Cidr = net.parse().expect("network");
        let ip: IpAddr = ip.parse().expect("address");
        assert_eq!(cidr.contains(ip), expected, "{ip} in {net}");
    }

    #[test]
    fn trusted_networks() {
        check_cidr("10.0.0.0/8", "10.255.0.1", true);
        check_cidr("10.0.0.0/8", "11.0.0.1", false);
        check_cidr("192.0.2.7", "192.0.2.7", true);
        check_cidr("192.0.2.7", "192.0.2.8", false);
        check_cidr("0.0.0.0/0", "203.0.113.9", true);
        check_cidr("0.0.0.0/0", "::1", false);
        check_cidr("127.0.0.1", "::ffff:127.0.0.1", true);
        check_cidr("fd00::/8", "fd12::1", true);
        check_cidr("fd00::/8", "fe80::1", false);
        check_cidr("::/0", "2001:db8::1", true);
        check_cidr("::1", "::1", true);
    }
}
