//! The raw (serde) form of the configuration file, with its defaults, and its validation:
//! `RawConfig` (unknown keys rejected) -> one `validate` per section -> the typed `Config`;
//! every error names its key (and the flag that set it, if one did).

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use url::Url;

use super::values::*;
use super::*;

// === raw (serde) form ===

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawConfig {
    pub server: RawServer,
    pub upstream: RawUpstream,
    pub cache: RawCache,
    pub auth: RawAuth,
    pub prefetch: RawPrefetch,
    pub metrics: RawMetrics,
    pub log: RawLog,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawServer {
    pub listen: String,
    pub public_url: String,
    pub max_connections: usize,
    pub header_read_timeout: String,
    pub send_timeout: String,
    pub drain_timeout: String,
    pub client_body_timeout: String,
    pub tls_cert_file: String,
    pub tls_key_file: String,
    pub ktls: KtlsMode,
    pub trusted_proxies: Vec<String>,
}

impl Default for RawServer {
    fn default() -> Self {
        RawServer {
            listen: "127.0.0.1:9393".into(),
            public_url: String::new(),
            max_connections: 4096,
            header_read_timeout: "30s".into(),
            send_timeout: "60s".into(),
            drain_timeout: "60s".into(),
            client_body_timeout: "60s".into(),
            tls_cert_file: String::new(),
            tls_key_file: String::new(),
            ktls: KtlsMode::Auto,
            trusted_proxies: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawUpstream {
    pub urls: Vec<String>,
    pub rewrite_origins: Vec<String>,
    pub connect_timeout: String,
    pub response_timeout: String,
    pub body_idle_timeout: String,
    pub failure_backoff: String,
    pub pool_idle_timeout: String,
    pub pool_max_idle_per_host: usize,
    pub max_uploads: usize,
    pub max_age: String,
    pub ca_file: String,
    pub client_cert_file: String,
    pub client_key_file: String,
}

impl Default for RawUpstream {
    fn default() -> Self {
        RawUpstream {
            urls: vec!["http://127.0.0.1:9292".into()],
            rewrite_origins: Vec::new(),
            connect_timeout: "5s".into(),
            response_timeout: "5m".into(),
            body_idle_timeout: "5m".into(),
            failure_backoff: "10s".into(),
            pool_idle_timeout: "1s".into(),
            pool_max_idle_per_host: 64,
            max_uploads: 4,
            max_age: String::new(),
            ca_file: String::new(),
            client_cert_file: String::new(),
            client_key_file: String::new(),
        }
    }
}

/// A byte size written either as an integer or as a string such as `500MiB`, `10GiB`, `2GB`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(untagged)]
pub enum RawSize {
    Bytes(u64),
    Text(String),
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawCache {
    pub enabled: bool,
    pub dir: String,
    pub max_size: RawSize,
    pub cache_unverified: bool,
    pub verify_md5: bool,
    pub finish_abandoned_fills: bool,
    pub abandoned_fill_timeout: String,
    pub scrub_rate: RawSize,
    pub scrub_interval: String,
}

impl Default for RawCache {
    fn default() -> Self {
        RawCache {
            enabled: true,
            dir: "/var/cache/glance-cache-proxy".into(),
            max_size: RawSize::Text("10GiB".into()),
            cache_unverified: false,
            verify_md5: false,
            finish_abandoned_fills: true,
            abandoned_fill_timeout: "10m".into(),
            scrub_rate: RawSize::Text("32MiB".into()),
            scrub_interval: "24h".into(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawAuth {
    pub grant_ttl: String,
    pub offline_grace: String,
    pub keystone_url: String,
    pub identity_cache_ttl: String,
    pub keystone_timeout: String,
}

impl Default for RawAuth {
    fn default() -> Self {
        RawAuth {
            grant_ttl: "0s".into(),
            offline_grace: "0s".into(),
            keystone_url: String::new(),
            identity_cache_ttl: "5m".into(),
            keystone_timeout: "5s".into(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawPrefetch {
    pub concurrency: usize,
    pub retry_initial: String,
    pub retry_max: String,
    pub token: String,
    pub auth_url: String,
    pub username: String,
    pub password: String,
    pub user_domain_name: String,
    pub project_name: String,
    pub project_domain_name: String,
}

impl Default for RawPrefetch {
    fn default() -> Self {
        RawPrefetch {
            concurrency: 2,
            retry_initial: "10s".into(),
            retry_max: "10m".into(),
            token: String::new(),
            auth_url: String::new(),
            username: String::new(),
            password: String::new(),
            user_domain_name: "Default".into(),
            project_name: String::new(),
            project_domain_name: "Default".into(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawMetrics {
    pub listen: String,
}

impl Default for RawMetrics {
    fn default() -> Self {
        RawMetrics {
            listen: "127.0.0.1:9394".into(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawLog {
    pub level: String,
    pub format: LogFormat,
}

impl Default for RawLog {
    fn default() -> Self {
        RawLog {
            level: "info".into(),
            format: LogFormat::Text,
        }
    }
}

// === impl RawConfig ===

impl RawConfig {
    pub(super) fn apply(&mut self, o: &Overrides) {
        if let Some(v) = &o.listen {
            self.server.listen = v.clone();
        }
        if !o.upstreams.is_empty() {
            self.upstream.urls = o.upstreams.clone();
        }
        if let Some(v) = &o.public_url {
            self.server.public_url = v.clone();
        }
        if let Some(v) = &o.cache_dir {
            self.cache.dir = v.clone();
        }
        if let Some(v) = &o.cache_max_size {
            self.cache.max_size = RawSize::Text(v.clone());
        }
        if let Some(v) = &o.metrics_listen {
            self.metrics.listen = v.clone();
        }
    }

    /// Validate after overrides; an error in an overridden key names the flag too.
    pub(super) fn validate_with_flags(
        self,
        origin: &str,
        o: &Overrides,
    ) -> Result<Config, ConfigError> {
        self.validate(origin).map_err(|e| match e {
            ConfigError::Invalid {
                origin,
                key,
                message,
            } => {
                let flag = flag_for_key(&key, o);
                let origin = match flag {
                    Some(flag) => format!("command line {flag}"),
                    None => origin,
                };
                ConfigError::Invalid {
                    origin,
                    key,
                    message,
                }
            }
            other => other,
        })
    }

    /// Turn the raw strings into typed values, naming the key of the first bad one.
    pub fn validate(self, origin: &str) -> Result<Config, ConfigError> {
        let bad = |key: &str, message: String| ConfigError::Invalid {
            origin: origin.to_string(),
            key: key.to_string(),
            message,
        };
        let identity = self.auth.identity(&bad)?;
        Ok(Config {
            identity,
            server: self.server.validate(&bad)?,
            upstream: self.upstream.validate(&bad)?,
            cache: self.cache.validate(&bad)?,
            auth: self.auth.validate(&bad)?,
            prefetch: self.prefetch.validate(&bad)?,
            metrics: self.metrics.validate(&bad)?,
            log: self.log.validate(&bad)?,
        })
    }
}

/// Builds the error for a key (`RawConfig::validate` supplies the origin).
pub(super) type Bad<'a> = &'a dyn Fn(&str, String) -> ConfigError;

impl RawServer {
    pub(super) fn validate(self, bad: Bad) -> Result<ServerConfig, ConfigError> {
        let listen = parse_addr(&self.listen).map_err(|m| bad("server.listen", m))?;
        let public_url = if self.public_url.trim().is_empty() {
            None
        } else {
            Some(parse_base_url(&self.public_url).map_err(|m| bad("server.public_url", m))?)
        };
        if self.max_connections == 0 {
            return Err(bad("server.max_connections", "must be at least 1".into()));
        }
        Ok(ServerConfig {
            listen,
            public_url,
            max_connections: self.max_connections,
            header_read_timeout: positive_duration(
                bad,
                "server.header_read_timeout",
                &self.header_read_timeout,
            )?,
            send_timeout: positive_duration(bad, "server.send_timeout", &self.send_timeout)?,
            drain_timeout: duration(bad, "server.drain_timeout", &self.drain_timeout)?,
            client_body_timeout: positive_duration(
                bad,
                "server.client_body_timeout",
                &self.client_body_timeout,
            )?,
            tls: file_pair(
                ("server.tls_cert_file", &self.tls_cert_file),
                ("server.tls_key_file", &self.tls_key_file),
            )
            .map_err(|(key, m)| bad(key, m))?,
            ktls: self.ktls,
            trusted_proxies: self
                .trusted_proxies
                .iter()
                .enumerate()
                .map(|(i, p)| {
                    p.parse()
                        .map_err(|m| bad(&format!("server.trusted_proxies[{i}]"), m))
                })
                .collect::<Result<_, _>>()?,
        })
    }
}

impl RawUpstream {
    pub(super) fn validate(self, bad: Bad) -> Result<UpstreamConfig, ConfigError> {
        if self.urls.is_empty() {
            return Err(bad(
                "upstream.urls",
                "at least one upstream URL is needed".into(),
            ));
        }
        Ok(UpstreamConfig {
            urls: base_urls(bad, "upstream.urls", &self.urls)?,
            rewrite_origins: base_urls(bad, "upstream.rewrite_origins", &self.rewrite_origins)?,
            connect_timeout: positive_duration(
                bad,
                "upstream.connect_timeout",
                &self.connect_timeout,
            )?,
            response_timeout: positive_duration(
                bad,
                "upstream.response_timeout",
                &self.response_timeout,
            )?,
            body_idle_timeout: positive_duration(
                bad,
                "upstream.body_idle_timeout",
                &self.body_idle_timeout,
            )?,
            failure_backoff: duration(bad, "upstream.failure_backoff", &self.failure_backoff)?,
            pool_idle_timeout: duration(
                bad,
                "upstream.pool_idle_timeout",
                &self.pool_idle_timeout,
            )?,
            pool_max_idle_per_host: self.pool_max_idle_per_host,
            max_uploads: self.max_uploads,
            max_age: if self.max_age.trim().is_empty() {
                None
            } else {
                Some(duration(bad, "upstream.max_age", &self.max_age)?)
            },
            ca_file: non_empty_path(&self.ca_file),
            client_identity: file_pair(
                ("upstream.client_cert_file", &self.client_cert_file),
                ("upstream.client_key_file", &self.client_key_file),
            )
            .map_err(|(key, m)| bad(key, m))?,
        })
    }
}

/// Longest `auth.grant_ttl`: a day (a decision older than that is no decision).
const MAX_GRANT_TTL: Duration = Duration::from_secs(24 * 3600);
/// Longest `auth.offline_grace`: thirty days.
const MAX_OFFLINE_GRACE: Duration = Duration::from_secs(30 * 24 * 3600);

/// Longest `auth.identity_cache_ttl`: an hour (Keystone's default token life; a revoked
/// token is served at most this long while Keystone answers).
const MAX_IDENTITY_CACHE_TTL: Duration = Duration::from_secs(3600);

/// Longest `auth.keystone_timeout`: a minute (every request with a token not yet resolved
/// waits for Keystone's answer up to this long).
const MAX_KEYSTONE_TIMEOUT: Duration = Duration::from_secs(60);

impl RawAuth {
    pub(super) fn identity(&self, bad: Bad) -> Result<IdentityConfig, ConfigError> {
        let keystone_url = match self.keystone_url.trim() {
            "" => None,
            url => Some(parse_base_url(url).map_err(|m| bad("auth.keystone_url", m))?),
        };
        let cache_ttl = duration(bad, "auth.identity_cache_ttl", &self.identity_cache_ttl)?;
        if cache_ttl > MAX_IDENTITY_CACHE_TTL {
            return Err(bad("auth.identity_cache_ttl", "must be at most 1h".into()));
        }
        let keystone_timeout = duration(bad, "auth.keystone_timeout", &self.keystone_timeout)?;
        if keystone_timeout.is_zero() || keystone_timeout > MAX_KEYSTONE_TIMEOUT {
            return Err(bad(
                "auth.keystone_timeout",
                "must be more than 0s and at most 1m".into(),
            ));
        }
        Ok(IdentityConfig {
            keystone_url,
            cache_ttl,
            keystone_timeout,
        })
    }

    pub(super) fn validate(self, bad: Bad) -> Result<AuthConfig, ConfigError> {
        let grant_ttl = duration(bad, "auth.grant_ttl", &self.grant_ttl)?;
        if grant_ttl > MAX_GRANT_TTL {
            return Err(bad("auth.grant_ttl", "must be at most 24h".into()));
        }
        let offline_grace = duration(bad, "auth.offline_grace", &self.offline_grace)?;
        if offline_grace > MAX_OFFLINE_GRACE {
            return Err(bad("auth.offline_grace", "must be at most 30d".into()));
        }
        Ok(AuthConfig {
            grant_ttl,
            offline_grace,
        })
    }
}

impl RawCache {
    pub(super) fn validate(self, bad: Bad) -> Result<CacheConfig, ConfigError> {
        if self.dir.trim().is_empty() {
            return Err(bad("cache.dir", "must not be empty".into()));
        }
        let max_size = parse_size(&self.max_size).map_err(|m| bad("cache.max_size", m))?;
        let abandoned_fill_timeout = duration(
            bad,
            "cache.abandoned_fill_timeout",
            &self.abandoned_fill_timeout,
        )?;
        let scrub_rate = parse_size(&self.scrub_rate).map_err(|m| bad("cache.scrub_rate", m))?;
        let scrub_interval = duration(bad, "cache.scrub_interval", &self.scrub_interval)?;
        if scrub_interval < Duration::from_secs(1) {
            return Err(bad("cache.scrub_interval", "must be at least 1s".into()));
        }
        Ok(CacheConfig {
            enabled: self.enabled,
            dir: PathBuf::from(self.dir),
            max_size,
            cache_unverified: self.cache_unverified,
            verify_md5: self.verify_md5,
            finish_abandoned_fills: self.finish_abandoned_fills,
            abandoned_fill_timeout,
            scrub_rate,
            scrub_interval,
        })
    }
}

impl RawPrefetch {
    pub(super) fn validate(self, bad: Bad) -> Result<PrefetchConfig, ConfigError> {
        if self.concurrency == 0 {
            return Err(bad("prefetch.concurrency", "must be at least 1".into()));
        }
        let retry_initial = positive_duration(bad, "prefetch.retry_initial", &self.retry_initial)?;
        let retry_max = duration(bad, "prefetch.retry_max", &self.retry_max)?;
        if retry_max < retry_initial {
            return Err(bad(
                "prefetch.retry_max",
                "must not be less than prefetch.retry_initial".into(),
            ));
        }
        Ok(PrefetchConfig {
            concurrency: self.concurrency,
            retry_initial,
            retry_max,
            credentials: self.credentials(bad)?,
        })
    }

    /// None, a fixed token, or Keystone (with `auth_url`); stray settings are errors.
    pub(super) fn credentials(self, bad: Bad) -> Result<ServiceCredentials, ConfigError> {
        let token = self.token.trim();
        if !self.auth_url.trim().is_empty() {
            if !token.is_empty() {
                return Err(bad(
                    "prefetch.token",
                    "set either prefetch.token or prefetch.auth_url, not both".into(),
                ));
            }
            return self.keystone(bad).map(ServiceCredentials::Keystone);
        }
        for (key, v) in [
            ("prefetch.username", &self.username),
            ("prefetch.password", &self.password),
            ("prefetch.project_name", &self.project_name),
        ] {
            if !v.is_empty() {
                return Err(bad(key, "is used only with prefetch.auth_url".into()));
            }
        }
        Ok(if token.is_empty() {
            ServiceCredentials::None
        } else {
            ServiceCredentials::Token(token.to_string())
        })
    }

    pub(super) fn keystone(self, bad: Bad) -> Result<KeystoneAuth, ConfigError> {
        let auth_url = parse_base_url(&self.auth_url).map_err(|m| bad("prefetch.auth_url", m))?;
        if auth_url.scheme() != "http" {
            return Err(bad(
                "prefetch.auth_url",
                "only http:// for now (TLS comes with the hardening release)".into(),
            ));
        }
        for (key, v) in [
            ("prefetch.username", &self.username),
            ("prefetch.password", &self.password),
            ("prefetch.project_name", &self.project_name),
            ("prefetch.user_domain_name", &self.user_domain_name),
            ("prefetch.project_domain_name", &self.project_domain_name),
        ] {
            if v.trim().is_empty() {
                return Err(bad(key, "is needed with prefetch.auth_url".into()));
            }
        }
        Ok(KeystoneAuth {
            auth_url,
            username: self.username,
            password: self.password,
            user_domain_name: self.user_domain_name,
            project_name: self.project_name,
            project_domain_name: self.project_domain_name,
        })
    }
}

impl RawMetrics {
    pub(super) fn validate(self, bad: Bad) -> Result<MetricsConfig, ConfigError> {
        let listen = if self.listen.trim().is_empty() {
            None
        } else {
            Some(parse_addr(&self.listen).map_err(|m| bad("metrics.listen", m))?)
        };
        Ok(MetricsConfig { listen })
    }
}

impl RawLog {
    pub(super) fn validate(self, bad: Bad) -> Result<LogConfig, ConfigError> {
        if self.level.trim().is_empty() {
            return Err(bad("log.level", "must not be empty".into()));
        }
        tracing_subscriber::EnvFilter::try_new(&self.level)
            .map_err(|e| bad("log.level", format!("invalid filter `{}`: {e}", self.level)))?;
        Ok(LogConfig {
            level: self.level,
            format: self.format,
        })
    }
}

/// `key[i]` for each of `urls`, parsed as base URLs.
pub(super) fn base_urls(bad: Bad, key: &str, urls: &[String]) -> Result<Vec<Url>, ConfigError> {
    urls.iter()
        .enumerate()
        .map(|(i, u)| parse_base_url(u).map_err(|m| bad(&format!("{key}[{i}]"), m)))
        .collect()
}

pub(super) fn duration(bad: Bad, key: &str, value: &str) -> Result<Duration, ConfigError> {
    parse_duration(value).map_err(|m| bad(key, m))
}

pub(super) fn positive_duration(bad: Bad, key: &str, value: &str) -> Result<Duration, ConfigError> {
    let d = duration(bad, key, value)?;
    if d.is_zero() {
        return Err(bad(key, "must be greater than zero".into()));
    }
    Ok(d)
}

pub(super) fn flag_for_key(key: &str, o: &Overrides) -> Option<&'static str> {
    match key {
        "server.listen" if o.listen.is_some() => Some("--listen"),
        "server.public_url" if o.public_url.is_some() => Some("--public-url"),
        "cache.dir" if o.cache_dir.is_some() => Some("--cache-dir"),
        "cache.max_size" if o.cache_max_size.is_some() => Some("--cache-max-size"),
        "metrics.listen" if o.metrics_listen.is_some() => Some("--metrics-listen"),
        k if k.starts_with("upstream.urls") && !o.upstreams.is_empty() => Some("--upstream"),
        _ => None,
    }
}
