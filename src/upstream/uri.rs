//! The request that goes upstream for one attempt (`build_request`): its URI built from parts
//! (`upstream_uri`: the upstream's scheme, authority and base path, then the client's path and
//! query; only origin-form targets, so no target chooses where the proxy connects) and `Host`
//! naming the upstream.

use http::{request, Request, Uri};
use url::Url;

use super::{OutBody, Target};
use crate::error::Error;

/// The request for one attempt at `target`, its URI from `upstream_uri`; `Host` names the
/// upstream.
pub(super) fn build_request(
    target: &Target,
    parts: &request::Parts,
    body: OutBody,
) -> Result<Request<OutBody>, Error> {
    let mut req = Request::new(body);
    *req.method_mut() = parts.method.clone();
    *req.uri_mut() = upstream_uri(&target.base, &parts.uri)?;
    *req.headers_mut() = parts.headers.clone();
    req.headers_mut()
        .insert(http::header::HOST, target.host.clone());
    Ok(req)
}

/// The upstream URI for a client's request target, built from parts: the upstream's scheme
/// and authority, its base path, then the target's path and query. Only an origin-form target
/// (a path starting with `/`; the path and query of an absolute-form one) is forwarded, so
/// no target can choose where the proxy connects: `*` (asterisk form) and authority form
/// are the client's error, answered without naming the upstream.
pub(super) fn upstream_uri(base: &Url, target: &Uri) -> Result<Uri, Error> {
    let path = target.path();
    if !path.starts_with('/') {
        return Err(Error::BadRequest(
            "the request target must be a path starting with '/'".into(),
        ));
    }
    // The path goes as the client sent it: Glance negotiates its version itself (the proxy's
    // cache API, which it answers under /v2.14-/v2.18 too, never goes upstream).
    let mut path_and_query = base.path().trim_end_matches('/').to_string();
    path_and_query.push_str(path);
    if let Some(query) = target.query() {
        path_and_query.push('?');
        path_and_query.push_str(query);
    }
    let authority = match (base.host_str(), base.port()) {
        (Some(host), Some(port)) => format!("{host}:{port}"),
        (Some(host), None) => host.to_string(),
        (None, _) => String::new(),
    };
    Uri::builder()
        .scheme(base.scheme())
        .authority(authority)
        .path_and_query(path_and_query)
        .build()
        .map_err(|e| Error::BadRequest(format!("cannot forward the request target: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::StatusCode;

    /// The URI a request target goes upstream as, or `None` when it is refused.
    fn check(base: &str, target: &str, expected: Option<&str>) {
        let base = Url::parse(base).expect("base URL");
        let target: Uri = target.parse().expect("request target");
        let got = upstream_uri(&base, &target).ok().map(|u| u.to_string());
        assert_eq!(got.as_deref(), expected, "{base} + {target}");
    }

    #[test]
    fn request_targets_never_change_the_upstream() {
        let glance = "http://127.0.0.1:9700/";
        check(
            glance,
            "/v2/images?limit=1",
            Some("http://127.0.0.1:9700/v2/images?limit=1"),
        );
        check(glance, "/", Some("http://127.0.0.1:9700/"));
        // Version prefixes go as sent: Glance negotiates them itself.
        check(
            glance,
            "/v2.16/images",
            Some("http://127.0.0.1:9700/v2.16/images"),
        );
        check(
            glance,
            "/v2.99/x?a=b",
            Some("http://127.0.0.1:9700/v2.99/x?a=b"),
        );
        check(
            "https://ctl/image/",
            "/v2/images",
            Some("https://ctl/image/v2/images"),
        );
        check(
            "http://[::1]:9292",
            "/versions",
            Some("http://[::1]:9292/versions"),
        );
        // A path that looks like an authority stays a path on the configured upstream.
        check(
            glance,
            "//evil.example/x",
            Some("http://127.0.0.1:9700//evil.example/x"),
        );
        // Absolute form: only its path and query go on, to the configured upstream.
        check(
            glance,
            "http://evil.example:80/v2/images?x",
            Some("http://127.0.0.1:9700/v2/images?x"),
        );
        // Asterisk form and authority form are refused.
        check(glance, "*", None);
        check(glance, "evil.example:443", None);
    }

    #[test]
    fn a_refused_target_does_not_name_the_upstream() {
        let base = Url::parse("http://127.0.0.1:9700/").expect("base URL");
        let err = upstream_uri(&base, &"*".parse().expect("asterisk")).expect_err("refused");
        assert_eq!(err.status(), StatusCode::BAD_REQUEST);
        assert!(!err.to_string().contains("9700"), "{err}");
    }
}
