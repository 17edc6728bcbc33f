//! Pure request classification: (method, path) -> `Route`. No IO, no hyper or Tokio IO types.
//!
//! Glance negotiates the version before routing (its `VersionNegotiationFilter`): from an
//! `Accept: application/vnd.openstack.images-vX` header, else from the path's first segment;
//! a version it does not accept gets its list of versions (300). `negotiate` does exactly the
//! same, so the proxy serves a route only where Glance would route it, and passes everything
//! else through for Glance to answer. Anything not claimed by a feature is
//! `Route::Passthrough`.

use http::Method;

/// What a request is, as far as the proxy cares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// `GET /` or `GET /versions`: the version document, whose links are rewritten.
    Versions,
    /// `GET /v2/images/{id}/file`: image data.
    ImageData { image_id: String },
    /// `DELETE /v2/images/{id}`.
    ImageDelete { image_id: String },
    /// `GET /v2/images/{id}`: the record, passed through (while no upstream answers, the one
    /// remembered with the caller's offline grant).
    ImageRecord { image_id: String },
    /// Legacy v1 `GET /v1/images/{id}`: image data, with the record in `x-image-meta-*`.
    V1ImageData { image_id: String },
    /// Legacy v1 `DELETE /v1/images/{id}`.
    V1ImageDelete { image_id: String },
    /// Glance's image-cache API (`/v2/cache...`, legacy `cached_images`/`queued_images`),
    /// answered by the proxy for its own cache.
    Cache(CacheOp),
    /// Everything else goes upstream unchanged.
    Passthrough,
}

impl Route {
    /// Label for logs and metrics (bounded set).
    pub fn as_str(&self) -> &'static str {
        match self {
            Route::Versions => "versions",
            Route::ImageData { .. } => "image_data",
            Route::ImageDelete { .. } => "image_delete",
            Route::ImageRecord { .. } => "image_record",
            Route::V1ImageData { .. } => "v1_image_data",
            Route::V1ImageDelete { .. } => "v1_image_delete",
            Route::Cache(_) => "cache_api",
            Route::Passthrough => "passthrough",
        }
    }
}

/// A cache-management call (glance-cache-spec §1.1 and §1.3).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CacheOp {
    /// `GET /v2/cache`
    State,
    /// `DELETE /v2/cache` (the target comes from `x-image-cache-clear-target`)
    Clear,
    /// `PUT /v2/cache/{id}`
    Queue(String),
    /// `DELETE /v2/cache/{id}`
    Delete(String),
    /// `GET /v2/cache/nodes/{id}`
    Nodes(String),
    /// `POST /v2/cache/clean`
    Clean,
    /// `POST /v2/cache/prune`
    Prune,
    /// `GET /v2/cached_images`
    LegacyCached,
    /// `DELETE /v2/cached_images/{id}`
    LegacyUncache(String),
    /// `DELETE /v2/cached_images`
    LegacyClearCached,
    /// `GET /v2/queued_images`
    LegacyQueued,
    /// `PUT /v2/queued_images/{id}`: queue only, no checks
    LegacyQueue(String),
    /// `DELETE /v2/queued_images/{id}`
    LegacyUnqueue(String),
    /// `DELETE /v2/queued_images`
    LegacyClearQueued,
    /// A cache path with a method it does not take: 405 with this `Allow`.
    NotAllowed(&'static str),
}

/// What `DELETE /v2/cache` clears.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClearTarget {
    pub cache: bool,
    pub queue: bool,
}

/// The `x-image-cache-clear-target` header as Glance reads it: absent or empty clears both,
/// `cache` or `queue` (any case, spaces around) one of them; anything else is `None` (400).
pub fn clear_target(header: Option<&[u8]>) -> Option<ClearTarget> {
    let Some(raw) = header else {
        return Some(ClearTarget {
            cache: true,
            queue: true,
        });
    };
    let text = std::str::from_utf8(raw).ok()?.trim().to_ascii_lowercase();
    match text.as_str() {
        "" => Some(ClearTarget {
            cache: true,
            queue: true,
        }),
        "cache" => Some(ClearTarget {
            cache: true,
            queue: false,
        }),
        "queue" => Some(ClearTarget {
            cache: false,
            queue: true,
        }),
        _ => None,
    }
}

/// The cache-API call for `segments` of a `/v2/...` path (or a pre-Rocky `/v1/...` legacy
/// one), if it is one. Paths are matched as Glance's router does, first route first.
fn cache_op(method: &Method, segments: &[&str]) -> Option<CacheOp> {
    use CacheOp::*;
    let m = |allowed: &[(Method, CacheOp)], allow: &'static str| {
        Some(
            allowed
                .iter()
                .find(|(am, _)| am == method)
                .map_or(NotAllowed(allow), |(_, op)| op.clone()),
        )
    };
    let id = |s: &str| s.to_string();
    match segments {
        ["", "v2", "cache"] => m(
            &[(Method::GET, State), (Method::DELETE, Clear)],
            "GET, DELETE",
        ),
        // Glance connects `/cache/{image_id}` before `/cache/clean` and `/cache/prune`, but
        // its 2.18 API documents POST on those two; only POST is taken as them here.
        ["", "v2", "cache", "clean"] if method == Method::POST => Some(Clean),
        ["", "v2", "cache", "prune"] if method == Method::POST => Some(Prune),
        ["", "v2", "cache", i] if is_image_id(i) => m(
            &[(Method::DELETE, Delete(id(i))), (Method::PUT, Queue(id(i)))],
            "DELETE, PUT",
        ),
        ["", "v2", "cache", "nodes", i] if is_image_id(i) => {
            m(&[(Method::GET, Nodes(id(i)))], "GET")
        }
        ["", "v1" | "v2", "cached_images"] => m(
            &[
                (Method::GET, LegacyCached),
                (Method::DELETE, LegacyClearCached),
            ],
            "GET, DELETE",
        ),
        ["", "v1" | "v2", "cached_images", i] if is_image_id(i) => {
            m(&[(Method::DELETE, LegacyUncache(id(i)))], "DELETE")
        }
        ["", "v1" | "v2", "queued_images"] => m(
            &[
                (Method::GET, LegacyQueued),
                (Method::DELETE, LegacyClearQueued),
            ],
            "GET, DELETE",
        ),
        ["", "v1" | "v2", "queued_images", i] if is_image_id(i) => m(
            &[
                (Method::PUT, LegacyQueue(id(i))),
                (Method::DELETE, LegacyUnqueue(id(i))),
            ],
            "PUT, DELETE",
        ),
        _ => None,
    }
}

/// Classify a request by method, path (without the query string) and `Accept` header, after
/// Glance's version negotiation (`negotiate`).
pub fn classify(method: &Method, path: &str, accept: Option<&str>) -> Route {
    if matches!(path, "/" | "/versions") {
        return if method == Method::GET {
            Route::Versions
        } else {
            Route::Passthrough
        };
    }
    if path.starts_with("/v1/") {
        let segments: Vec<&str> = path.split('/').collect();
        if let Some(op) = cache_op(method, &segments) {
            return Route::Cache(op);
        }
    }
    if let Some(id) = path.strip_prefix("/v1/images/") {
        if is_image_id(id) && !id.contains('/') {
            let image_id = id.to_string();
            return match *method {
                Method::GET => Route::V1ImageData { image_id },
                Method::DELETE => Route::V1ImageDelete { image_id },
                _ => Route::Passthrough,
            };
        }
    }
    let Some(Negotiated { path: rest, always }) = negotiate(path, accept) else {
        return Route::Passthrough;
    };
    let segments: Vec<&str> = rest.split('/').collect();
    if let Some(op) = cache_op(method, &segments) {
        return Route::Cache(op);
    }
    if !always {
        // A version only some Glance configurations accept: Glance answers for itself.
        return Route::Passthrough;
    }
    match (method, segments.as_slice()) {
        (&Method::GET, ["", "v2", "images", id, "file"]) if is_image_id(id) => Route::ImageData {
            image_id: id.to_string(),
        },
        (&Method::DELETE, ["", "v2", "images", id]) if is_image_id(id) => Route::ImageDelete {
            image_id: id.to_string(),
        },
        (&Method::GET, ["", "v2", "images", id]) if is_image_id(id) => Route::ImageRecord {
            image_id: id.to_string(),
        },
        _ => Route::Passthrough,
    }
}

/// The path Glance routes a request to, after its version negotiation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Negotiated {
    /// `/v2/...`.
    pub path: String,
    /// The version is one every Glance 33 accepts; `false`: one it accepts only with its image
    /// cache configured (the versions of the cache API, which the proxy answers itself).
    pub always: bool,
}

/// Versions every Glance 33 accepts, whatever its configuration (`VersionNegotiationFilter.
/// _get_allowed_versions`); v2.8 and v2.10-v2.13 need `enabled_backends` (multi-store), v2.14, v2.16 and
/// v2.18 its image cache.
const ALWAYS: [&str; 12] = [
    "v2", "v2.0", "v2.1", "v2.2", "v2.3", "v2.4", "v2.5", "v2.6", "v2.7", "v2.9", "v2.15", "v2.17",
];
/// The versions of the cache API, accepted by a Glance with its cache (and by the proxy,
/// which has one).
const WITH_CACHE: [&str; 3] = ["v2.14", "v2.16", "v2.18"];
/// Glance's media-type versioning prefix.
const VND: &str = "application/vnd.openstack.images-";

/// Glance's version negotiation, exactly: when `Accept` starts with
/// `application/vnd.openstack.images-`, the rest of it is the version and the whole path is
/// routed under `/v2`; otherwise the path's first segment is the version and the rest is
/// routed under `/v2`. `None`: a version Glance may not accept (it answers with version
/// choices, 300, or by its configuration), so the proxy passes the request through.
pub fn negotiate(path: &str, accept: Option<&str>) -> Option<Negotiated> {
    let (version, rest) = match accept.and_then(|a| a.strip_prefix(VND)) {
        Some(version) => (version, path),
        None => {
            let trimmed = path.trim_start_matches('/');
            let end = trimmed.find('/').unwrap_or(trimmed.len());
            (&trimmed[..end], &trimmed[end..])
        }
    };
    let always = ALWAYS.contains(&version);
    if !always && !WITH_CACHE.contains(&version) {
        return None;
    }
    Some(Negotiated {
        path: format!("/v2{rest}"),
        always,
    })
}

/// Glance image ids are UUIDs, but Glance matches `[^/]+`; reject only what cannot be an id.
fn is_image_id(s: &str) -> bool {
    !s.is_empty() && s.len() <= 255 && s != "detail"
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clear_targets_as_glance_reads_them() {
        let both = Some(ClearTarget {
            cache: true,
            queue: true,
        });
        assert_eq!(clear_target(None), both);
        assert_eq!(clear_target(Some(b"")), both);
        assert_eq!(clear_target(Some(b"  ")), both);
        assert_eq!(
            clear_target(Some(b" Cache ")),
            Some(ClearTarget {
                cache: true,
                queue: false
            })
        );
        assert_eq!(
            clear_target(Some(b"QUEUE")),
            Some(ClearTarget {
                cache: false,
                queue: true
            })
        );
        assert_eq!(clear_target(Some(b"both")), None);
        assert_eq!(clear_target(Some(b"\xff")), None);
    }

    fn check(method: Method, path: &str, want: Route) {
        assert_eq!(classify(&method, path, None), want, "{method} {path}");
    }

    fn data(id: &str) -> Route {
        Route::ImageData {
            image_id: id.into(),
        }
    }

    #[test]
    fn classification() {
        let id = "2337d8ce-eb33-4592-b0fa-b6b639b02963";
        check(Method::GET, "/", Route::Versions);
        check(Method::GET, "/versions", Route::Versions);
        check(Method::POST, "/versions", Route::Passthrough);
        check(Method::GET, &format!("/v2/images/{id}/file"), data(id));
        check(Method::GET, &format!("/v2.0/images/{id}/file"), data(id));
        check(Method::GET, &format!("/v2.17/images/{id}/file"), data(id));
        // Versions only some Glance configurations accept (its cache, multiple stores), and
        // ones it never accepts: Glance answers (300 where it does not accept them).
        for v in ["v2.8", "v2.14", "v2.16", "v2.18", "v2.19", "v2.01", "v3"] {
            check(
                Method::GET,
                &format!("/{v}/images/{id}/file"),
                Route::Passthrough,
            );
        }
        check(
            Method::PUT,
            &format!("/v2/images/{id}/file"),
            Route::Passthrough,
        );
        check(
            Method::GET,
            &format!("/v2/images/{id}/file/x"),
            Route::Passthrough,
        );
        check(Method::GET, "/v2/images//file", Route::Passthrough);
        check(
            Method::DELETE,
            &format!("/v2/images/{id}"),
            Route::ImageDelete {
                image_id: id.into(),
            },
        );
        check(
            Method::GET,
            &format!("/v2/images/{id}"),
            Route::ImageRecord {
                image_id: id.into(),
            },
        );
        check(
            Method::PATCH,
            &format!("/v2/images/{id}"),
            Route::Passthrough,
        );
        check(Method::GET, "/v2/images", Route::Passthrough);
        check(
            Method::GET,
            "/v1/images/x",
            Route::V1ImageData {
                image_id: "x".into(),
            },
        );
        check(
            Method::DELETE,
            "/v1/images/x",
            Route::V1ImageDelete {
                image_id: "x".into(),
            },
        );
        check(Method::HEAD, "/v1/images/x", Route::Passthrough);
        check(Method::GET, "/v1/images/detail", Route::Passthrough);
        check(Method::GET, "/v1/images/x/members", Route::Passthrough);
        check(Method::GET, "/v2x/images/x/file", Route::Passthrough);
    }

    #[test]
    fn accept_header_version() {
        let id = "abc";
        let on = |path: &str, a: &str| classify(&Method::GET, path, Some(a));
        let v2 = |a: &str| on("/images/abc/file", a);
        assert_eq!(v2("application/vnd.openstack.images-v2.1"), data(id));
        assert_eq!(v2("application/vnd.openstack.images-v2"), data(id));
        // Glance takes the whole rest of the header as the version: anything else in it, or a
        // version only some configurations accept, gets Glance's own answer.
        for other in [
            "text/plain, application/vnd.openstack.images-v2;q=0.9",
            "application/vnd.openstack.images-v2.1;q=0.9",
            "application/vnd.openstack.images-v2.1, */*",
            "application/vnd.openstack.images-v2.18",
            "application/vnd.openstack.images-v2.19",
            "application/vnd.openstack.images-v1",
            "application/json",
        ] {
            assert_eq!(v2(other), Route::Passthrough, "{other}");
        }
        assert_eq!(
            classify(&Method::GET, "/images/abc/file", None),
            Route::Passthrough
        );
        // With a versioned Accept, Glance routes a /v2 path under /v2 again: not image data.
        assert_eq!(
            on(
                "/v2/images/abc/file",
                "application/vnd.openstack.images-v2.1"
            ),
            Route::Passthrough
        );
        // The legacy v1 routes are the proxy's own (Glance 33 has no v1).
        assert_eq!(
            on("/v1/images/abc", "application/vnd.openstack.images-v2"),
            Route::V1ImageData {
                image_id: id.into()
            }
        );
    }

    #[test]
    fn negotiation_as_glance() {
        let n = |p: &str, a: Option<&str>| negotiate(p, a).map(|n| (n.path, n.always));
        assert_eq!(n("/v2/images", None), Some(("/v2/images".into(), true)));
        assert_eq!(n("/v2.9/images", None), Some(("/v2/images".into(), true)));
        assert_eq!(n("/v2.16/cache", None), Some(("/v2/cache".into(), false)));
        assert_eq!(n("//v2/images", None), Some(("/v2/images".into(), true)));
        assert_eq!(n("/v2", None), Some(("/v2".into(), true)));
        assert_eq!(n("/v2.8/images", None), None);
        assert_eq!(n("/images", None), None);
        assert_eq!(n("", None), None);
        let vnd = Some("application/vnd.openstack.images-v2.15");
        assert_eq!(n("/images", vnd), Some(("/v2/images".into(), true)));
        assert_eq!(n("/v2/images", vnd), Some(("/v2/v2/images".into(), true)));
    }

    #[test]
    fn cache_api_routes() {
        use CacheOp::*;
        let c = |m: Method, p: &str| match classify(&m, p, None) {
            Route::Cache(op) => Some(op),
            _ => None,
        };
        assert_eq!(c(Method::GET, "/v2/cache"), Some(State));
        assert_eq!(c(Method::GET, "/v2.14/cache"), Some(State));
        assert_eq!(c(Method::DELETE, "/v2.18/cache"), Some(Clear));
        assert_eq!(
            c(Method::POST, "/v2/cache"),
            Some(NotAllowed("GET, DELETE"))
        );
        assert_eq!(c(Method::PUT, "/v2/cache/abc"), Some(Queue("abc".into())));
        assert_eq!(
            c(Method::DELETE, "/v2/cache/abc"),
            Some(Delete("abc".into()))
        );
        assert_eq!(
            c(Method::GET, "/v2/cache/abc"),
            Some(NotAllowed("DELETE, PUT"))
        );
        assert_eq!(c(Method::POST, "/v2/cache/clean"), Some(Clean));
        assert_eq!(c(Method::POST, "/v2/cache/prune"), Some(Prune));
        assert_eq!(
            c(Method::PUT, "/v2/cache/clean"),
            Some(Queue("clean".into()))
        );
        assert_eq!(
            c(Method::GET, "/v2/cache/nodes/abc"),
            Some(Nodes("abc".into()))
        );
        assert_eq!(
            c(Method::PUT, "/v2/cache/nodes/abc"),
            Some(NotAllowed("GET"))
        );
        assert_eq!(c(Method::GET, "/v2/cache/a/b/c"), None);
        assert_eq!(c(Method::GET, "/v2/cached_images"), Some(LegacyCached));
        assert_eq!(c(Method::GET, "/v1/cached_images"), Some(LegacyCached));
        assert_eq!(
            c(Method::DELETE, "/v2/cached_images"),
            Some(LegacyClearCached)
        );
        assert_eq!(
            c(Method::DELETE, "/v1/cached_images/x"),
            Some(LegacyUncache("x".into()))
        );
        assert_eq!(
            c(Method::PUT, "/v2/cached_images/x"),
            Some(NotAllowed("DELETE"))
        );
        assert_eq!(c(Method::GET, "/v2/queued_images"), Some(LegacyQueued));
        assert_eq!(
            c(Method::DELETE, "/v2/queued_images"),
            Some(LegacyClearQueued)
        );
        assert_eq!(
            c(Method::PUT, "/v2/queued_images/x"),
            Some(LegacyQueue("x".into()))
        );
        assert_eq!(
            c(Method::DELETE, "/v1/queued_images/x"),
            Some(LegacyUnqueue("x".into()))
        );
        assert_eq!(
            c(Method::POST, "/v2/queued_images"),
            Some(NotAllowed("GET, DELETE"))
        );
        assert_eq!(c(Method::GET, "/v2/cachex"), None);
        assert_eq!(
            classify(
                &Method::GET,
                "/cache",
                Some("application/vnd.openstack.images-v2.14")
            ),
            Route::Cache(State)
        );
    }
}
