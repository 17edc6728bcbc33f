//! Pure request classification: (method, path) -> `Route`. No IO, no hyper or Tokio IO types.
//!
//! Glance accepts version prefixes `/v2`, `/v2.0` … `/v2.18` and rewrites them to `/v2` before
//! routing (glance-cache-spec §1.2); `normalize_path` does the same so later stages match one
//! form. Anything not claimed by a feature is `Route::Passthrough`.

use http::Method;

/// Highest `v2.N` minor version the proxy accepts as a URL prefix.
pub const MAX_V2_MINOR: u32 = 18;

/// What a request is, as far as the proxy cares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// `GET /` or `GET /versions`: the version document, whose links are rewritten.
    Versions,
    /// `GET /v2/images/{id}/file`: image data.
    ImageData { image_id: String },
    /// `DELETE /v2/images/{id}`.
    ImageDelete { image_id: String },
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

/// Classify a request by method, path (without the query string) and `Accept` header.
///
/// Like Glance's version negotiation, a path without a version prefix is taken as `/v2` when
/// `Accept` names `application/vnd.openstack.images-v2[.N]`.
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
    let rest = match normalize_path(path) {
        Some(rest) => rest,
        None if path.starts_with('/') && accepts_v2(accept) && !path.starts_with("/v") => {
            format!("/v2{path}")
        }
        None => return Route::Passthrough,
    };
    let segments: Vec<&str> = rest.split('/').collect();
    if let Some(op) = cache_op(method, &segments) {
        return Route::Cache(op);
    }
    match (method, segments.as_slice()) {
        (&Method::GET, ["", "v2", "images", id, "file"]) if is_image_id(id) => Route::ImageData {
            image_id: id.to_string(),
        },
        (&Method::DELETE, ["", "v2", "images", id]) if is_image_id(id) => Route::ImageDelete {
            image_id: id.to_string(),
        },
        _ => Route::Passthrough,
    }
}

/// Map a `/v2.N/...` path to `/v2/...`; `None` if the path has no v2 prefix we accept.
pub fn normalize_path(path: &str) -> Option<String> {
    let rest = path.strip_prefix("/v2")?;
    let (minor, tail) = match rest.strip_prefix('.') {
        Some(after_dot) => {
            let end = after_dot.find('/').unwrap_or(after_dot.len());
            let digits = &after_dot[..end];
            if digits.is_empty() || digits.len() > 2 || !digits.bytes().all(|b| b.is_ascii_digit())
            {
                return None;
            }
            (digits.parse::<u32>().ok()?, &after_dot[end..])
        }
        None => (0, rest),
    };
    if minor > MAX_V2_MINOR || !(tail.is_empty() || tail.starts_with('/')) {
        return None;
    }
    Some(format!("/v2{tail}"))
}

/// `Accept: application/vnd.openstack.images-v2` or `-v2.N` (N <= MAX_V2_MINOR).
fn accepts_v2(accept: Option<&str>) -> bool {
    accept.into_iter().flat_map(|a| a.split(',')).any(|item| {
        let media = item.split(';').next().unwrap_or("").trim();
        match media.strip_prefix("application/vnd.openstack.images-v2") {
            Some("") => true,
            Some(minor) => minor
                .strip_prefix('.')
                .and_then(|m| m.parse::<u32>().ok())
                .is_some_and(|m| m <= MAX_V2_MINOR),
            None => false,
        }
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
        check(Method::GET, &format!("/v2.18/images/{id}/file"), data(id));
        check(
            Method::GET,
            &format!("/v2.19/images/{id}/file"),
            Route::Passthrough,
        );
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
        check(Method::GET, &format!("/v2/images/{id}"), Route::Passthrough);
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
        let v2 = |a: &str| classify(&Method::GET, "/images/abc/file", Some(a));
        assert_eq!(v2("application/vnd.openstack.images-v2.1"), data(id));
        assert_eq!(
            v2("text/plain, application/vnd.openstack.images-v2;q=0.9"),
            data(id)
        );
        assert_eq!(v2("application/vnd.openstack.images-v2.18"), data(id));
        assert_eq!(
            v2("application/vnd.openstack.images-v2.19"),
            Route::Passthrough
        );
        assert_eq!(
            v2("application/vnd.openstack.images-v1"),
            Route::Passthrough
        );
        assert_eq!(v2("application/json"), Route::Passthrough);
        assert_eq!(
            classify(&Method::GET, "/images/abc/file", None),
            Route::Passthrough
        );
        // A versioned path wins over the header.
        assert_eq!(
            classify(
                &Method::GET,
                "/v1/images/abc",
                Some("application/vnd.openstack.images-v2")
            ),
            Route::V1ImageData {
                image_id: id.into()
            }
        );
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

    #[test]
    fn prefixes() {
        assert_eq!(normalize_path("/v2"), Some("/v2".into()));
        assert_eq!(normalize_path("/v2/"), Some("/v2/".into()));
        assert_eq!(normalize_path("/v2.14/cache"), Some("/v2/cache".into()));
        assert_eq!(normalize_path("/v2.7"), Some("/v2".into()));
        assert_eq!(normalize_path("/v2."), None);
        assert_eq!(normalize_path("/v2.x/images"), None);
        assert_eq!(normalize_path("/v2.100/images"), None);
        assert_eq!(normalize_path("/v20/images"), None);
        assert_eq!(normalize_path("/v1/images"), None);
    }
}
