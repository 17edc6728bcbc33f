//! Glance's image-cache API, answered by the proxy for its own cache: `/v2/cache` (v2.14+),
//! the legacy `cached_images`/`queued_images` routes, status for status as Glance
//! (glance-cache-spec §1).
//!
//! Authorization is Glance's, with the caller's own credentials: every call first asks the
//! upstream `GET /v2/cache` (its `cache_list` policy, admin by default; see
//! `Upstream::cache_policy`). Glance checks that policy before it looks at whether its own
//! cache is on, so the answer is a decision even when the upstream caches nothing. Calls that
//! name an image also fetch its record with the caller's headers, so an image the caller
//! cannot see is 404, as in Glance. Nothing is decided from the proxy's own idea of roles.

use std::sync::Arc;

use bytes::Bytes;
use http::header::{HeaderValue, CONTENT_LENGTH, CONTENT_TYPE};
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use serde_json::{json, Value};

use crate::app::App;
use crate::body::{full, ProxyBody};
use crate::cache::Cache;
use crate::error::Error;
use crate::prefetch::Prefetcher;
use crate::route::CacheOp;
use crate::upstream::glance::{Api, ImageInfo, Small};
use crate::upstream::{Downstream, Forwarded};

/// Glance's explanation when its cache is off; also the proxy's when `cache.enabled` is false.
const NOT_SUPPORTED: &str = "Caching via API is not supported at this site.";

/// Answer one cache-API call.
pub async fn handle(
    app: &App,
    req: Request<Incoming>,
    op: CacheOp,
    down: &Downstream<'_>,
) -> Result<Forwarded, Error> {
    if let CacheOp::NotAllowed(allow) = op {
        return Err(Error::MethodNotAllowed { allow });
    }
    if op == CacheOp::State && has_body(&req) {
        return Err(Error::BadRequest(
            "This operation does not allow a request body".into(),
        ));
    }
    let caller = app.upstream.caller_headers(req.headers(), down);
    let target = crate::route::clear_target(
        req.headers()
            .get("x-image-cache-clear-target")
            .map(|v| v.as_bytes()),
    );
    // The image record, for calls that name an image, asked together with the policy.
    let image = match &op {
        CacheOp::Queue(id) | CacheOp::Delete(id) | CacheOp::Nodes(id) => Some(id.clone()),
        _ => None,
    };
    let (policy, record) = tokio::join!(app.upstream.cache_policy(&caller), async {
        match &image {
            Some(id) => Some(app.upstream.image_record(Api::V2, &caller, id).await),
            None => None,
        }
    });
    let record = record.transpose()?;
    let cache = app.cache.as_ref().zip(app.prefetch.as_ref());

    // Glance's order: a PUT looks the image up first (404 before 403); a DELETE is 404 only
    // when neither Glance nor the cache knows the id; everything else checks the policy first.
    if let (CacheOp::Queue(id), Some(record)) = (&op, &record) {
        if record.status != StatusCode::OK {
            return refused(record, id);
        }
    }
    if let (CacheOp::Delete(id), Some(record)) = (&op, &record) {
        let known = cache.is_some_and(|(c, p)| c.is_cached(id) || p.is_queued(id));
        if record.status != StatusCode::OK && !(record.status == StatusCode::NOT_FOUND && known) {
            return refused(record, id);
        }
    }
    if let Some(refusal) = decide(policy?) {
        return Ok(Forwarded {
            response: refusal,
            upstream: 0,
        });
    }
    let Some((cache, prefetch)) = cache else {
        return Err(Error::NotFound(NOT_SUPPORTED.into()));
    };

    let answer = match op {
        CacheOp::State => ok_json(json!({
            "cached_images": cached_images(cache),
            "queued_images": prefetch.queued(),
        })),
        CacheOp::Clear => {
            let Some(crate::route::ClearTarget {
                cache: cache_too,
                queue: queue_too,
            }) = target
            else {
                return Err(Error::BadRequest(
                    "If provided 'x-image-cache-clear-target' must be 'cache', 'queue' or empty string.".into(),
                ));
            };
            if queue_too {
                prefetch.clear();
            }
            if cache_too {
                cache.clear();
            }
            empty(StatusCode::NO_CONTENT)
        }
        CacheOp::Queue(id) => {
            let Some(record) = record else {
                return Err(Error::Internal("image record missing".into()));
            };
            let active = ImageInfo::parse(Api::V2, &record).is_some_and(|i| i.status == "active");
            if !active {
                return Err(Error::BadRequest(
                    "Only images with status active can be targeted for queueing".into(),
                ));
            }
            if !cache.is_cached(&id) {
                enqueue(prefetch, &id)?;
            }
            empty(StatusCode::ACCEPTED)
        }
        CacheOp::Delete(id) => {
            prefetch.dequeue(&id);
            cache.remove(&id);
            empty(StatusCode::NO_CONTENT)
        }
        CacheOp::Nodes(id) => {
            let Some(record) = record else {
                return Err(Error::Internal("image record missing".into()));
            };
            if record.status != StatusCode::OK {
                return refused(&record, &id);
            }
            let nodes: Vec<String> = if cache.is_cached(&id) {
                vec![down.public_url.as_str().trim_end_matches('/').to_string()]
            } else {
                Vec::new()
            };
            ok_json(json!(nodes))
        }
        // Failed fills are deleted at once and leftovers at start: nothing is ever stalled
        // or invalid, so cleaning finds nothing (and says so with Glance's empty 200).
        CacheOp::Clean => empty(StatusCode::OK),
        CacheOp::Prune => {
            let (files, bytes) = cache.prune();
            ok_json(json!({"total_files_pruned": files, "total_bytes_pruned": bytes}))
        }
        CacheOp::LegacyCached => ok_json(json!({"cached_images": cached_images(cache)})),
        CacheOp::LegacyUncache(id) => {
            cache.remove(&id);
            ok_json(Value::Null)
        }
        CacheOp::LegacyClearCached => ok_json(json!({"num_deleted": cache.clear()})),
        CacheOp::LegacyQueued => ok_json(json!({"queued_images": prefetch.queued()})),
        CacheOp::LegacyQueue(id) => {
            // Glance's legacy queue call checks nothing; the prefetcher skips what it cannot
            // cache.
            if !crate::cache::store::is_storable_id(&id) {
                return Err(Error::BadRequest(format!("`{id}` is not an image id")));
            }
            if !cache.is_cached(&id) {
                enqueue(prefetch, &id)?;
            }
            ok_json(Value::Null)
        }
        CacheOp::LegacyUnqueue(id) => {
            prefetch.dequeue(&id);
            ok_json(Value::Null)
        }
        CacheOp::LegacyClearQueued => ok_json(json!({"num_deleted": prefetch.clear()})),
        CacheOp::NotAllowed(allow) => return Err(Error::MethodNotAllowed { allow }),
    };
    Ok(Forwarded {
        response: answer,
        upstream: 0,
    })
}

/// Glance's answer to the policy question: `None` if the caller may manage the cache, else
/// the response to send. A 404 other than "caching not supported" means the upstream has no
/// cache API at all (before Yoga) and cannot decide: refuse rather than allow.
fn decide(policy: Small) -> Option<Response<ProxyBody>> {
    if policy.status.is_success() {
        return None;
    }
    if policy.status == StatusCode::NOT_FOUND {
        if String::from_utf8_lossy(&policy.body).contains(NOT_SUPPORTED) {
            return None;
        }
        let rid = policy
            .request_id()
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        return Some(crate::error::respond(
            &Error::Forbidden(
                "The upstream Glance has no cache API (v2.14, Yoga or later), so it cannot \
                 authorize cache management; refused."
                    .into(),
            ),
            &rid,
        ));
    }
    Some(policy.into_response())
}

/// An image lookup that did not succeed: a 404 in Glance's words, anything else as sent.
fn refused(record: &Small, id: &str) -> Result<Forwarded, Error> {
    if record.status == StatusCode::NOT_FOUND {
        return Err(Error::NotFound(format!("Image {id} not found.")));
    }
    let small = Small {
        status: record.status,
        headers: record.headers.clone(),
        body: record.body.clone(),
    };
    Ok(Forwarded {
        response: small.into_response(),
        upstream: 0,
    })
}

fn enqueue(prefetch: &Arc<Prefetcher>, id: &str) -> Result<(), Error> {
    prefetch.enqueue(id).map(|_| ()).map_err(|e| {
        tracing::error!(image_id = %id, error = %e, "cannot write a queue marker");
        Error::Internal(format!("cannot queue image {id}: {e}"))
    })
}

/// `cached_images` entries as Glance's sqlite driver lists them (epoch-second numbers).
fn cached_images(cache: &Cache) -> Vec<Value> {
    cache
        .entries()
        .into_iter()
        .map(|c| {
            json!({
                "image_id": c.meta.image_id,
                "hits": c.hits,
                "last_accessed": c.last_access_ms as f64 / 1000.0,
                "last_modified": c.meta.committed_ms as f64 / 1000.0,
                "size": c.meta.size,
            })
        })
        .collect()
}

fn has_body(req: &Request<Incoming>) -> bool {
    let h = req.headers();
    h.contains_key(http::header::TRANSFER_ENCODING)
        || h.get(CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.trim() != "0")
}

fn ok_json(value: Value) -> Response<ProxyBody> {
    let mut resp = Response::new(full(Bytes::from(value.to_string())));
    resp.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("application/json; charset=UTF-8"),
    );
    resp
}

fn empty(status: StatusCode) -> Response<ProxyBody> {
    let mut resp = Response::new(full(Bytes::new()));
    *resp.status_mut() = status;
    if status != StatusCode::NO_CONTENT {
        resp.headers_mut()
            .insert(CONTENT_LENGTH, HeaderValue::from_static("0"));
    }
    resp
}
