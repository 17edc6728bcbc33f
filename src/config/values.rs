//! Pure parsers of configuration values: listen addresses, durations, base URLs, sizes, file
//! pairs; each returns the message an error names its key with.

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::time::Duration;

use url::Url;

use super::raw::RawSize;

// === value parsers (pure) ===

/// A listen address: `IP:PORT`, `[IPv6]:PORT` or `HOST:PORT`. A host name is resolved here,
/// once, by the system resolver (getaddrinfo, as upstream URLs' hosts are), and the first
/// address it returns is the one bound: its order follows /etc/hosts and /etc/gai.conf (so
/// `localhost` may give `127.0.0.1` or `::1`). Write an IP address to choose.
pub(super) fn parse_addr(s: &str) -> Result<SocketAddr, String> {
    let t = s.trim();
    if let Ok(addr) = t.parse() {
        return Ok(addr);
    }
    let (host, port) = match t.rsplit_once(':') {
        Some((host, port)) if !port.is_empty() => (host, port),
        _ => {
            return Err(format!(
                "`{s}` has no port: write ADDR:PORT or HOST:PORT (e.g. 127.0.0.1:9393, \
                 [::1]:9393, localhost:9393)"
            ))
        }
    };
    let port: u16 = port
        .parse()
        .map_err(|_| format!("`{s}`: `{port}` is not a port number (0-65535)"))?;
    if host.is_empty() {
        return Err(format!(
            "`{s}` has no host (e.g. 0.0.0.0:{port} for every address)"
        ));
    }
    if host.contains([':', '[', ']']) {
        return Err(format!(
            "`{s}` is not an ADDR:PORT socket address (an IPv6 address goes in brackets: [::1]:{port})"
        ));
    }
    let first = (host, port)
        .to_socket_addrs()
        .map_err(|e| format!("`{s}`: cannot resolve `{host}`: {e}"))?
        .next();
    first.ok_or_else(|| format!("`{s}`: `{host}` resolves to no address"))
}

/// The file `pick` chooses from an optional setting, as written in the file ("" for none):
/// the inverse of `non_empty_path` and `file_pair`.
pub(super) fn shown<T>(value: &Option<T>, pick: impl Fn(&T) -> &PathBuf) -> String {
    value
        .as_ref()
        .map(|v| pick(v).display().to_string())
        .unwrap_or_default()
}

pub(super) fn non_empty_path(s: &str) -> Option<PathBuf> {
    let s = s.trim();
    (!s.is_empty()).then(|| PathBuf::from(s))
}

/// A certificate file and its key file: both set or neither; the error names the unset key.
pub(super) fn file_pair(
    (cert_key, cert): (&'static str, &str),
    (key_key, key): (&'static str, &str),
) -> Result<Option<(PathBuf, PathBuf)>, (&'static str, String)> {
    match (non_empty_path(cert), non_empty_path(key)) {
        (None, None) => Ok(None),
        (None, Some(_)) => Err((cert_key, format!("must be set with {key_key}"))),
        (Some(_), None) => Err((key_key, format!("must be set with {cert_key}"))),
        (Some(c), Some(k)) => Ok(Some((c, k))),
    }
}

pub(super) fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s.trim())
        .map_err(|e| format!("`{s}` is not a duration such as 30s, 5m or 1h: {e}"))
}

pub(super) fn fmt_duration(d: Duration) -> String {
    humantime::format_duration(d).to_string()
}

/// A base URL: http(s), a host, no query or fragment; the trailing slash is dropped.
pub(super) fn parse_base_url(s: &str) -> Result<Url, String> {
    // A value without `://` (`127.0.0.1:9292`, `glance.example:9292`: the second parses as a
    // URL of scheme `glance.example`) is refused with the URL to write instead.
    let t = s.trim();
    if !t.contains("://") {
        return Err(format!(
            "`{s}` has no scheme: write `http://{}` (or `https://...`); a URL is `http://HOST:PORT`",
            t.trim_start_matches('/')
        ));
    }
    let url = Url::parse(t).map_err(|e| {
        format!("`{s}` is not a URL ({e}): write it as `http://HOST:PORT` or `https://HOST:PORT`")
    })?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(format!(
            "`{s}`: the scheme must be http or https, as in `http://HOST:PORT`"
        ));
    }
    if url.host_str().is_none() {
        return Err(format!("`{s}`: a host is needed"));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(format!("`{s}`: no query or fragment allowed"));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(format!("`{s}`: no credentials allowed in the URL"));
    }
    Ok(url)
}

/// Sizes: a byte count, or a number with a unit: `500MiB`, `10GiB`, `2GB` (decimal), `1.5 TiB`.
pub fn parse_size(raw: &RawSize) -> Result<u64, String> {
    match raw {
        RawSize::Bytes(n) => Ok(*n),
        RawSize::Text(s) => {
            let t = s.trim();
            if let Ok(n) = t.parse::<u64>() {
                return Ok(n);
            }
            t.parse::<bytesize::ByteSize>()
                .map(|b| b.as_u64())
                .map_err(|e| {
                    format!("`{s}` is not a size such as 1073741824, 500MiB, 10GiB or 2GB: {e}")
                })
        }
    }
}
