//! Header rules for forwarding (pure): hop-by-hop removal per RFC 9110 §7.6.1, and the
//! forwarding headers (`X-Forwarded-*` set by the proxy, a client's `Forwarded` and other
//! `X-Forwarded-*` dropped). Every other header passes both ways untouched.

use std::net::IpAddr;

use http::header::{HeaderMap, HeaderName, HeaderValue, CONNECTION, EXPECT, FORWARDED, HOST};

use crate::config::Cidr;

const X_FORWARDED_FOR: &str = "x-forwarded-for";

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
    /// The peer of the client connection.
    pub client_ip: IpAddr,
    /// Peers whose `X-Forwarded-For` is believed (`server.trusted_proxies`).
    pub trusted_proxies: &'a [Cidr],
    /// Host (and port) the client asked for, as clients should see it.
    pub host: Option<&'a str>,
    /// `http` or `https`, as clients should see it.
    pub proto: &'a str,
}

/// Prepare client request headers for the upstream: strip hop-by-hop fields and `Expect`
/// (the proxy's own server answers `100-continue`), set `Host` to the upstream, and set what
/// Glance learns of the original request (`forwarding`).
pub fn prepare_request(headers: &mut HeaderMap, upstream_host: &HeaderValue, fwd: &ForwardedFor) {
    strip_hop_by_hop(headers);
    strip_identity_aliases(headers);
    headers.remove(EXPECT);
    headers.insert(HOST, upstream_host.clone());
    forwarding(headers, fwd);
}

/// Identity headers spelled with `_` (`X_Auth_Token`) go: a WSGI server may drop them or read
/// them as the header itself, so Glance and the caller's key (`auth::CallerKey`) could
/// disagree on who is asking (nginx drops them by default too).
fn strip_identity_aliases(headers: &mut HeaderMap) {
    let aliases: Vec<_> = headers
        .keys()
        .filter(|name| crate::auth::is_identity_alias(name.as_str()))
        .cloned()
        .collect();
    for name in aliases {
        headers.remove(name);
    }
}

/// The forwarding headers as Glance sees them, none of them the client's word alone.
///
/// Glance's `http_proxy_to_wsgi` (oslo.middleware) builds its links and `REMOTE_ADDR` from
/// `Forwarded` when present, else from `X-Forwarded-Proto/-Host/-For`, and prefixes every path
/// with `X-Forwarded-Prefix`; other frameworks read `X-Forwarded-Port`, `-Server`, `-Scheme`
/// or `-Ssl`. So: `Forwarded` and every `X-Forwarded-*` the client sent go; `X-Forwarded-For`
/// is the peer, appended to the chain the peer sent only when it is a trusted proxy;
/// `X-Forwarded-Proto` and `X-Forwarded-Host` describe the public URL.
fn forwarding(headers: &mut HeaderMap, fwd: &ForwardedFor) {
    let trusted = fwd
        .trusted_proxies
        .iter()
        .any(|p| p.contains(fwd.client_ip));
    let mut chain: Vec<String> = Vec::new();
    if trusted {
        chain.extend(
            headers
                .get_all(X_FORWARDED_FOR)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .map(|v| v.trim().to_string())
                .filter(|v| !v.is_empty()),
        );
    }
    chain.push(fwd.client_ip.to_canonical().to_string());
    let forwarding: Vec<HeaderName> = headers
        .keys()
        .filter(|k| *k == FORWARDED || k.as_str().starts_with("x-forwarded-"))
        .cloned()
        .collect();
    for name in forwarding {
        headers.remove(name);
    }
    if let Ok(v) = HeaderValue::from_str(&chain.join(", ")) {
        headers.insert(X_FORWARDED_FOR, v);
    }
    if let Ok(v) = HeaderValue::from_str(fwd.proto) {
        headers.insert(HeaderName::from_static("x-forwarded-proto"), v);
    }
    if let Some(v) = fwd.host.and_then(|h| HeaderValue::from_str(h).ok()) {
        headers.insert(HeaderName::from_static("x-forwarded-host"), v);
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
    fn identity_headers_spelled_with_underscores_go() {
        let mut h = map(&[
            ("x_auth_token", "other"),
            ("x_project_id", "p"),
            ("openstack_system_scope", "all"),
            ("x-auth-token", "tok"),
            ("x_custom_thing", "kept"),
        ]);
        strip_identity_aliases(&mut h);
        let mut left: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
        left.sort();
        assert_eq!(left, ["x-auth-token", "x_custom_thing"]);
    }

    /// The forwarding headers Glance gets for a request from `peer` with client headers
    /// `sent`, with `trusted` proxies: every `forwarded`/`x-forwarded-*` field, sorted.
    fn check(sent: &[(&str, &str)], peer: &str, trusted: &[&str], expected: &[(&str, &str)]) {
        let mut h = map(sent);
        let trusted: Vec<Cidr> = trusted.iter().map(|t| t.parse().expect("cidr")).collect();
        let fwd = ForwardedFor {
            client_ip: peer.parse().expect("ip"),
            trusted_proxies: &trusted,
            host: Some("proxy:9393"),
            proto: "https",
        };
        prepare_request(&mut h, &HeaderValue::from_static("glance:9292"), &fwd);
        assert_eq!(h["host"], "glance:9292");
        let mut got: Vec<(String, String)> = h
            .iter()
            .filter(|(k, _)| *k == FORWARDED || k.as_str().starts_with("x-forwarded-"))
            .map(|(k, v)| (k.to_string(), v.to_str().expect("ascii").to_string()))
            .collect();
        got.sort();
        let mut want: Vec<(String, String)> = expected
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        want.sort();
        assert_eq!(got, want, "sent {sent:?} from {peer}");
    }

    const PUBLIC: [(&str, &str); 2] = [
        ("x-forwarded-proto", "https"),
        ("x-forwarded-host", "proxy:9393"),
    ];

    fn with_public(xff: &str) -> Vec<(&str, &str)> {
        let mut v = vec![("x-forwarded-for", xff)];
        v.extend(PUBLIC);
        v
    }

    #[test]
    fn forwarding_headers_are_never_the_clients_word() {
        // Nothing sent: the chain is the peer.
        check(&[], "192.0.2.1", &[], &with_public("192.0.2.1"));
        // Issue 19: links came back as https://evil.example/... from Forwarded and the prefix.
        let hostile = [
            ("forwarded", "for=1.2.3.4;proto=https;host=evil.example"),
            ("x-forwarded-prefix", "/evil"),
            ("x-forwarded-host", "evil.example"),
            ("x-forwarded-proto", "gopher"),
            ("x-forwarded-port", "1"),
            ("x-forwarded-server", "evil.example"),
            ("x-forwarded-for", "1.2.3.4"),
        ];
        check(&hostile, "192.0.2.1", &[], &with_public("192.0.2.1"));
        // A trusted proxy's chain is kept, the peer appended; the rest still goes.
        check(
            &hostile,
            "10.0.0.5",
            &["10.0.0.0/8"],
            &with_public("1.2.3.4, 10.0.0.5"),
        );
        // An untrusted peer next to a trusted network.
        check(
            &hostile,
            "11.0.0.5",
            &["10.0.0.0/8"],
            &with_public("11.0.0.5"),
        );
        // Several X-Forwarded-For fields from a trusted peer join in order.
        check(
            &[
                ("x-forwarded-for", "1.1.1.1, 2.2.2.2"),
                ("x-forwarded-for", "3.3.3.3"),
            ],
            "::ffff:10.0.0.5",
            &["10.0.0.5"],
            &with_public("1.1.1.1, 2.2.2.2, 3.3.3.3, 10.0.0.5"),
        );
        check(
            &[],
            "2001:db8::7",
            &["2001:db8::/32"],
            &with_public("2001:db8::7"),
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
            trusted_proxies: &[],
            host: Some("proxy:9393"),
            proto: "http",
        };
        prepare_request(&mut h, &HeaderValue::from_static("glance:9292"), &fwd);
        assert_eq!(h["host"], "glance:9292");
        assert!(h.get("expect").is_none());
        // The client's X-Forwarded-For is not believed from an untrusted peer.
        assert_eq!(h["x-forwarded-for"], "127.0.0.2");
        assert_eq!(h["x-forwarded-host"], "proxy:9393");
        assert_eq!(h["x-forwarded-proto"], "http");
    }
}
