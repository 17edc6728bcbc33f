//! Header rules for forwarding (pure): hop-by-hop removal per RFC 9110 §7.6.1, and the
//! `X-Forwarded-*` headers the proxy adds. Every other header passes both ways untouched.

use std::net::IpAddr;

use http::header::{HeaderMap, HeaderName, HeaderValue, CONNECTION, EXPECT, HOST};

/// Connection-specific fields that never travel past one hop (RFC 9110 §7.6.1), plus the
/// obsolete `Proxy-Connection` and `Keep-Alive`.
const HOP_BY_HOP: [&str; 6] = [
    "connection",
    "proxy-connection",
    "keep-alive",
    "te",
    "transfer-encoding",
    "upgrade",
];

/// Remove hop-by-hop fields, including every field named in `Connection`.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|token| HeaderName::from_bytes(token.trim().as_bytes()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    for name in HOP_BY_HOP {
        headers.remove(name);
    }
}

/// What the proxy tells Glance about the original request.
pub struct ForwardedFor<'a> {
    pub client_ip: IpAddr,
    /// Host (and port) the client asked for, as clients should see it.
    pub host: Option<&'a str>,
    /// `http` or `https`, as clients should see it.
    pub proto: &'a str,
}

/// Prepare client request headers for the upstream: strip hop-by-hop fields and `Expect`
/// (the proxy's own server answers `100-continue`), set `Host` to the upstream, and set
/// `X-Forwarded-For` (appended), `X-Forwarded-Proto` and `X-Forwarded-Host`.
pub fn prepare_request(headers: &mut HeaderMap, upstream_host: &HeaderValue, fwd: &ForwardedFor) {
    strip_hop_by_hop(headers);
    headers.remove(EXPECT);
    headers.insert(HOST, upstream_host.clone());

    let xff = HeaderName::from_static("x-forwarded-for");
    let prior: Vec<String> = headers
        .get_all(&xff)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .map(str::to_string)
        .collect();
    let mut chain = prior.join(", ");
    if !chain.is_empty() {
        chain.push_str(", ");
    }
    chain.push_str(&fwd.client_ip.to_string());
    if let Ok(v) = HeaderValue::from_str(&chain) {
        headers.insert(xff, v);
    }
    if let Ok(v) = HeaderValue::from_str(fwd.proto) {
        headers.insert(HeaderName::from_static("x-forwarded-proto"), v);
    }
    match fwd.host.and_then(|h| HeaderValue::from_str(h).ok()) {
        Some(v) => {
            headers.insert(HeaderName::from_static("x-forwarded-host"), v);
        }
        None => {
            headers.remove("x-forwarded-host");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).expect("name"),
                HeaderValue::from_str(v).expect("value"),
            );
        }
        h
    }

    #[test]
    fn hop_by_hop_fields_go_end_to_end_fields_stay() {
        let mut h = map(&[
            ("connection", "keep-alive, X-Secret-Hop"),
            ("x-secret-hop", "1"),
            ("keep-alive", "timeout=5"),
            ("transfer-encoding", "chunked"),
            ("te", "trailers"),
            ("upgrade", "h2c"),
            ("proxy-connection", "keep-alive"),
            ("x-auth-token", "tok"),
            ("x-openstack-request-id", "req-1"),
            ("x-image-meta-name", "n"),
            ("content-md5", "abc"),
            ("content-length", "5"),
        ]);
        strip_hop_by_hop(&mut h);
        let mut left: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
        left.sort();
        assert_eq!(
            left,
            [
                "content-length",
                "content-md5",
                "x-auth-token",
                "x-image-meta-name",
                "x-openstack-request-id"
            ]
        );
    }

    #[test]
    fn forwarded_headers() {
        let mut h = map(&[
            ("host", "proxy:9393"),
            ("expect", "100-continue"),
            ("x-forwarded-for", "10.0.0.1"),
            ("x-forwarded-host", "spoofed"),
        ]);
        let fwd = ForwardedFor {
            client_ip: "127.0.0.2".parse().expect("ip"),
            host: Some("proxy:9393"),
            proto: "http",
        };
        prepare_request(&mut h, &HeaderValue::from_static("glance:9292"), &fwd);
        assert_eq!(h["host"], "glance:9292");
        assert!(h.get("expect").is_none());
        assert_eq!(h["x-forwarded-for"], "10.0.0.1, 127.0.0.2");
        assert_eq!(h["x-forwarded-host"], "proxy:9393");
        assert_eq!(h["x-forwarded-proto"], "http");
    }
}
