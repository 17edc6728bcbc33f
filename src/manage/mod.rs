//! Glance's image-cache API, answered by the proxy for its own cache: `/v2/cache` (v2.14+),
//! the legacy `cached_images`/`queued_images` routes, status for status as Glance
//! (glance-cache-spec §1).
//!
//! Authorization is Glance's, with the caller's own credentials: every call first asks the
//! upstream `GET /v2/cache` (its `cache_list` policy, admin by default; see
//! `Upstream::cache_policy`). Glance checks that policy before it looks at whether its own
//! cache is on, so the answer is a decision even when the upstream caches nothing. Calls that
//! name an image also look it up with the caller's headers, so an image the caller cannot see
//! is 404, as in Glance (see `image_lookup`). Nothing is decided from the proxy's own idea of
//! roles.

use std::sync::Arc;

use bytes::Bytes;
use http::header::{HeaderValue, CONTENT_LENGTH, CONTENT_TYPE};
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use serde_json::{json, Value};

use crate::body::{full, ProxyBody};
use crate::cache::Cache;
use crate::error::Error;
use crate::prefetch::Prefetcher;
use crate::route::CacheOp;
use crate::upstream::glance::{Api, ImageInfo, ImageRecord, ImageStatus, Small};
use crate::upstream::{Downstream, Forwarded, Upstream};

/// Glance's explanation when its cache is off; also the proxy's when `cache.enabled` is false.
const NOT_SUPPORTED: &str = "Caching via API is not supported at this site.";

/// What the cache API needs of the shared state.
pub struct Context<'a> {
    pub upstream: &'a Upstream,
    /// The proxy's cache and its prefetcher; `None` when `cache.enabled` is false.
    pub cache: Option<(&'a Arc<Cache>, &'a Arc<Prefetcher>)>,
}

/// What Glance said about one cache-API call, asked with the caller's credentials.
struct Asked {
    /// Its `cache_list` policy decision (`Upstream::cache_policy`).
    policy: Small,
    /// The image record, for calls that name an image.
    record: Option<Small>,
}

/// Answer one cache-API call: Glance's authorization first, then one function per operation.
pub async fn handle(
    ctx: &Context<'_>,
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
    let asked = ask(ctx, &req, &op, down).await?;
    let upstream = Some(asked.policy.upstream);
    if let Some(refusal) = refusal(ctx, &op, &asked)? {
        return Ok(refusal);
    }
    let Some((cache, prefetch)) = ctx.cache else {
        return Err(Error::NotFound(NOT_SUPPORTED.into()));
    };
    let answer = match op {
        CacheOp::State => state(cache, prefetch),
        CacheOp::Clear => clear(cache, prefetch, req.headers()).await?,
        CacheOp::Queue(id) => queue(cache, prefetch, &id, asked.record.as_ref()).await?,
        CacheOp::Delete(id) => delete(cache, prefetch, &id).await,
        CacheOp::Nodes(id) => match asked.record.as_ref() {
            Some(record) if record.status != StatusCode::OK => return refused(record, &id),
            _ => nodes(cache, &id, down),
        },
        // Failed fills are deleted at once and leftovers at start: nothing is ever stalled
        // or invalid, so cleaning finds nothing (and says so with Glance's empty 200).
        CacheOp::Clean => empty(StatusCode::OK),
        CacheOp::Prune => prune(cache).await,
        CacheOp::LegacyCached => ok_json(json!({"cached_images": cached_images(cache)})),
        CacheOp::LegacyUncache(id) => {
            cache.remove(&id).await;
            ok_json(Value::Null)
        }
        CacheOp::LegacyClearCached => ok_json(json!({"num_deleted": cache.clear().await})),
        CacheOp::LegacyQueued => ok_json(json!({"queued_images": prefetch.queued()})),
        CacheOp::LegacyQueue(id) => legacy_queue(cache, prefetch, &id).await?,
        CacheOp::LegacyUnqueue(id) => {
            prefetch.dequeue(&id).await;
            ok_json(Value::Null)
        }
        CacheOp::LegacyClearQueued => ok_json(json!({"num_deleted": prefetch.clear().await})),
        CacheOp::NotAllowed(allow) => return Err(Error::MethodNotAllowed { allow }),
    };
    Ok(Forwarded::new(answer, upstream))
}

/// Ask Glance, with the caller's headers, the policy question and (for calls that name an
/// image) the image record, at the same time.
async fn ask(
    ctx: &Context<'_>,
    req: &Request<Incoming>,
    op: &CacheOp,
    down: &Downstream<'_>,
) -> Result<Asked, Error> {
    let caller = ctx.upstream.caller_headers(req.headers(), down);
    let image = match op {
        CacheOp::Queue(id) | CacheOp::Delete(id) | CacheOp::Nodes(id) => Some(id.as_str()),
        _ => None,
    };
    let (policy, record) = tokio::join!(ctx.upstream.cache_policy(&caller), async {
        match image {
            Some(id) => Some(image_lookup(ctx.upstream, &caller, id).await),
            None => None,
        }
    });
    Ok(Asked {
        policy: policy?,
        record: record.transpose()?,
    })
}

/// Glance's refusal of this call, in Glance's order: a PUT looks the image up first (404
/// before 403); a DELETE is 404 only when neither Glance nor the cache knows the id; a call
/// naming an image needs its record; everything checks the policy. `None`: allowed.
fn refusal(ctx: &Context<'_>, op: &CacheOp, asked: &Asked) -> Result<Option<Forwarded>, Error> {
    let record = asked.record.as_ref();
    match (op, record) {
        (CacheOp::Queue(id), Some(record)) if record.status != StatusCode::OK => {
            return refused(record, id).map(Some);
        }
        (CacheOp::Delete(id), Some(record)) => {
            let known = ctx
                .cache
                .is_some_and(|(c, p)| c.is_cached(id) || p.is_queued(id));
            let gone_but_known = record.status == StatusCode::NOT_FOUND && known;
            if record.status != StatusCode::OK && !gone_but_known {
                return refused(record, id).map(Some);
            }
        }
        _ => {}
    }
    let index = asked.policy.upstream;
    if let Some(refusal) = decide(asked.policy.clone()) {
        return Ok(Some(Forwarded::new(refusal, index)));
    }
    Ok(None)
}

/// `GET /v2/cache`: what is cached and queued.
fn state(cache: &Cache, prefetch: &Prefetcher) -> Response<ProxyBody> {
    ok_json(json!({
        "cached_images": cached_images(cache),
        "queued_images": prefetch.queued(),
    }))
}

/// `DELETE /v2/cache`: the cache, the queue or both (`x-image-cache-clear-target`).
async fn clear(
    cache: &Arc<Cache>,
    prefetch: &Prefetcher,
    headers: &http::HeaderMap,
) -> Result<Response<ProxyBody>, Error> {
    let target = crate::route::clear_target(
        headers
            .get("x-image-cache-clear-target")
            .map(|v| v.as_bytes()),
    );
    let Some(crate::route::ClearTarget {
        cache: cache_too,
        queue: queue_too,
    }) = target
    else {
        return Err(Error::BadRequest(
            "If provided 'x-image-cache-clear-target' must be 'cache', 'queue' or empty string."
                .into(),
        ));
    };
    if queue_too {
        prefetch.clear().await;
    }
    if cache_too {
        cache.clear().await;
    }
    Ok(empty(StatusCode::NO_CONTENT))
}

/// `PUT /v2/cache/{id}`: queue an active image for the prefetcher (the record said it is
/// visible; `refusal` already answered otherwise).
async fn queue(
    cache: &Cache,
    prefetch: &Prefetcher,
    id: &str,
    record: Option<&Small>,
) -> Result<Response<ProxyBody>, Error> {
    let Some(record) = record else {
        return Err(Error::Internal("image record missing".into()));
    };
    let active = ImageInfo::parse(Api::V2, record).is_some_and(|i| i.status == ImageStatus::Active);
    if !active {
        return Err(Error::BadRequest(
            "Only images with status active can be targeted for queueing".into(),
        ));
    }
    if !cache.is_cached(id) {
        enqueue(prefetch, id).await?;
    }
    Ok(empty(StatusCode::ACCEPTED))
}

/// `DELETE /v2/cache/{id}`: out of the queue and the cache.
async fn delete(cache: &Arc<Cache>, prefetch: &Prefetcher, id: &str) -> Response<ProxyBody> {
    prefetch.dequeue(id).await;
    cache.remove(id).await;
    empty(StatusCode::NO_CONTENT)
}

/// `GET /v2/cache/{id}/nodes`: this proxy's URL if it holds the image.
fn nodes(cache: &Cache, id: &str, down: &Downstream<'_>) -> Response<ProxyBody> {
    let nodes: Vec<String> = if cache.is_cached(id) {
        vec![down.public_url.as_str().trim_end_matches('/').to_string()]
    } else {
        Vec::new()
    };
    ok_json(json!(nodes))
}

/// `POST /v2/cache/prune` (Glance's cache-manage `prune`): evict until within `max_size`.
async fn prune(cache: &Arc<Cache>) -> Response<ProxyBody> {
    let (files, bytes) = cache.prune().await;
    ok_json(json!({"total_files_pruned": files, "total_bytes_pruned": bytes}))
}

/// Legacy `PUT /v2/queued_images/{id}`: Glance's legacy queue call checks nothing; the
/// prefetcher skips what it cannot cache.
async fn legacy_queue(
    cache: &Cache,
    prefetch: &Prefetcher,
    id: &str,
) -> Result<Response<ProxyBody>, Error> {
    if !crate::disk::is_storable_id(id) {
        return Err(Error::BadRequest(format!("`{id}` is not an image id")));
    }
    if !cache.is_cached(id) {
        enqueue(prefetch, id).await?;
    }
    Ok(ok_json(Value::Null))
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

/// The image record as Glance's cache API finds it: by database visibility (owner, public,
/// community, shared membership; Glance's `cached_images.py` `image_repo.get`), before and
/// apart from the `get_image` policy. `GET /v2/images/{id}` also enforces that policy (a
/// reader role), so a caller of the owning project without it (e.g. `member` only) gets 404
/// there where Glance's cache API goes on to its policy (403). On that 404 only, the same
/// caller's own empty `PATCH` (`Upstream::image_record_visible`) asks Glance for the
/// database's answer; only a 200 record of this very image counts, anything else keeps the
/// 404. Both questions are Glance's, with the caller's credentials: an image the caller
/// cannot see stays 404, and the cache policy is still checked after.
async fn image_lookup(
    upstream: &Upstream,
    caller: &http::HeaderMap,
    id: &str,
) -> Result<Small, Error> {
    let record = upstream.image_record(Api::V2, caller, id).await?;
    if record.status != StatusCode::NOT_FOUND {
        return Ok(record);
    }
    match upstream.image_record_visible(caller, id).await {
        Ok(visible)
            if visible.status == StatusCode::OK
                && ImageRecord::parse(&visible.body).is_some_and(|r| r.id == id) =>
        {
            Ok(visible)
        }
        _ => Ok(record),
    }
}

/// An image lookup that did not succeed: a 404 in Glance's words, anything else as sent.
fn refused(record: &Small, id: &str) -> Result<Forwarded, Error> {
    if record.status == StatusCode::NOT_FOUND {
        return Err(Error::NotFound(format!("Image {id} not found.")));
    }
    Ok(Forwarded::new(
        record.clone().into_response(),
        record.upstream,
    ))
}

async fn enqueue(prefetch: &Prefetcher, id: &str) -> Result<(), Error> {
    prefetch.enqueue(id).await.map(|_| ()).map_err(|e| {
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
