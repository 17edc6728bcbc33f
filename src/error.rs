//! Errors the proxy itself answers for, and `respond`: the one table from error to response.
//!
//! Glance's own 4xx/5xx answers are responses, not errors: they pass through untouched. Only
//! what the proxy decides (upstream unreachable, timed out, unusable; bad input) lands here.
//! Once response headers are sent an error can no longer become a status: bodies fail instead.

use std::time::Duration;

use http::{header, HeaderValue, Response, StatusCode};

use crate::body::{full, ProxyBody};

/// Who is to blame: decides the status family and the `side` label in logs and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// The client sent something we cannot handle.
    Downstream,
    /// Glance is unreachable, slow or answered something unusable.
    Upstream,
    /// The proxy itself failed.
    Internal,
}

impl Side {
    pub fn as_str(self) -> &'static str {
        match self {
            Side::Downstream => "downstream",
            Side::Upstream => "upstream",
            Side::Internal => "internal",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No upstream accepted a connection, or the connection broke before a response.
    #[error("no upstream Glance could be reached: {0}")]
    Unreachable(String),
    /// An upstream accepted the request but sent no response head in time.
    #[error("upstream Glance did not respond within {0:?}")]
    Timeout(Duration),
    /// The upstream answered, but with something the proxy cannot pass on.
    #[error("upstream Glance sent an unusable response: {0}")]
    BadUpstream(String),
    /// The client's request is malformed.
    #[error("{0}")]
    BadRequest(String),
    /// The client stopped sending its request body (`server.client_body_timeout`).
    #[error("{0}")]
    ClientTimeout(String),
    /// What the request names does not exist (for this caller).
    #[error("{0}")]
    NotFound(String),
    /// The proxy refuses the caller (it could not have Glance decide).
    #[error("{0}")]
    Forbidden(String),
    /// A method the path does not take; `Allow` lists those it does.
    #[error("The method is not allowed for this resource")]
    MethodNotAllowed { allow: &'static str },
    /// The proxy's own disk or state failed.
    #[error("{0}")]
    Internal(String),
}

impl Error {
    pub fn side(&self) -> Side {
        match self {
            Error::Unreachable(_) | Error::Timeout(_) | Error::BadUpstream(_) => Side::Upstream,
            Error::BadRequest(_)
            | Error::ClientTimeout(_)
            | Error::NotFound(_)
            | Error::Forbidden(_)
            | Error::MethodNotAllowed { .. } => Side::Downstream,
            Error::Internal(_) => Side::Internal,
        }
    }

    /// Short bounded reason for logs and metric labels.
    pub fn reason(&self) -> &'static str {
        match self {
            Error::Unreachable(_) => "unreachable",
            Error::Timeout(_) => "timeout",
            Error::BadUpstream(_) => "bad_upstream",
            Error::BadRequest(_) => "bad_request",
            Error::ClientTimeout(_) => "client_timeout",
            Error::NotFound(_) => "not_found",
            Error::Forbidden(_) => "forbidden",
            Error::MethodNotAllowed { .. } => "method_not_allowed",
            Error::Internal(_) => "internal",
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            Error::Unreachable(_) | Error::BadUpstream(_) => StatusCode::BAD_GATEWAY,
            Error::Timeout(_) => StatusCode::GATEWAY_TIMEOUT,
            Error::BadRequest(_) => StatusCode::BAD_REQUEST,
            Error::ClientTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            Error::NotFound(_) => StatusCode::NOT_FOUND,
            Error::Forbidden(_) => StatusCode::FORBIDDEN,
            Error::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            Error::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

/// Turn an error into the response a Glance client understands: Glance's JSON error shape
/// `{"message", "code", "title"}` plus an `x-openstack-request-id`.
pub fn respond(err: &Error, request_id: &str) -> Response<ProxyBody> {
    let mut resp = error_response(err.status(), &err.to_string(), request_id);
    if let Error::MethodNotAllowed { allow } = err {
        resp.headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static(allow));
    }
    resp
}

/// A Glance-shaped JSON error response for `status`.
pub fn error_response(status: StatusCode, message: &str, request_id: &str) -> Response<ProxyBody> {
    let title = status.canonical_reason().unwrap_or("Error");
    let body = serde_json::json!({
        "message": message,
        "code": format!("{} {}", status.as_u16(), title),
        "title": title,
    })
    .to_string();
    let mut response = Response::new(full(body));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    if let Ok(v) = HeaderValue::from_str(request_id) {
        headers.insert("x-openstack-request-id", v);
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    #[tokio::test]
    async fn error_table() {
        let cases = [
            (Error::Unreachable("x".into()), 502, Side::Upstream),
            (Error::Timeout(Duration::from_secs(1)), 504, Side::Upstream),
            (Error::BadUpstream("x".into()), 502, Side::Upstream),
            (Error::BadRequest("x".into()), 400, Side::Downstream),
            (Error::ClientTimeout("x".into()), 408, Side::Downstream),
            (Error::NotFound("x".into()), 404, Side::Downstream),
            (Error::Forbidden("x".into()), 403, Side::Downstream),
            (
                Error::MethodNotAllowed { allow: "GET" },
                405,
                Side::Downstream,
            ),
            (Error::Internal("x".into()), 500, Side::Internal),
        ];
        for (err, status, side) in cases {
            assert_eq!(err.side(), side);
            let resp = respond(&err, "req-1");
            assert_eq!(resp.status().as_u16(), status);
            assert_eq!(resp.headers()["x-openstack-request-id"], "req-1");
            if status == 405 {
                assert_eq!(resp.headers()["allow"], "GET");
            }
            let bytes = resp
                .into_body()
                .collect()
                .await
                .expect("full body")
                .to_bytes();
            let v: serde_json::Value = serde_json::from_slice(&bytes).expect("json");
            assert!(v["code"]
                .as_str()
                .is_some_and(|c| c.starts_with(&status.to_string())));
            assert!(v["title"].is_string() && v["message"].is_string());
        }
    }
}
