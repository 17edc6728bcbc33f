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
            Route::Passthrough => "passthrough",
        }
    }
}

/// Classify a request by method and path (the path without the query string).
pub fn classify(method: &Method, path: &str) -> Route {
    if matches!(path, "/" | "/versions") {
        return if method == Method::GET {
            Route::Versions
        } else {
            Route::Passthrough
        };
    }
    let Some(rest) = normalize_path(path) else {
        return Route::Passthrough;
    };
    let segments: Vec<&str> = rest.split('/').collect();
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

/// Glance image ids are UUIDs, but Glance matches `[^/]+`; reject only what cannot be an id.
fn is_image_id(s: &str) -> bool {
    !s.is_empty() && s.len() <= 255 && s != "detail"
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(method: Method, path: &str, want: Route) {
        assert_eq!(classify(&method, path), want, "{method} {path}");
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
        check(Method::GET, "/v1/images/x", Route::Passthrough);
        check(Method::GET, "/v2x/images/x/file", Route::Passthrough);
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
