//! `GET /v2/images/{id}`, the image record: passed through to Glance, and learnt from
//! (`decide::record_teaches`): a refusal ends the caller's grant but never evicts (only the
//! download says an image is gone); with `auth.offline_grace`, an allowed caller's record
//! (small, so read whole) refreshes the JSON kept with the grant, or ends the grant when the
//! image is no longer active. While no upstream answers (an outage as `decide::Reply::of`
//! tells it), a caller with a grant within the grace for a cached image gets that JSON
//! (clients such as nova and openstacksdk read the record before the data), with a warning.

use http::header::{HeaderValue, CONTENT_LENGTH, CONTENT_TYPE};
use http::{Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;

use super::decide::{record_teaches, Answered, Reply};
use super::Context;
use crate::error::Error;
use crate::grants::Who;
use crate::outcome::Decision;
use crate::upstream::glance::{ImageRecord, ImageStatus};
use crate::upstream::{Downstream, Forwarded};

/// The largest record read whole to learn from (Glance's are a few KiB).
const MAX_RECORD: u64 = 256 << 10;

/// Answer `GET /v2/images/{id}`; the decision, when one was made here (`Offline`).
pub async fn record(
    ctx: &Context<'_>,
    req: Request<Incoming>,
    image_id: &str,
    down: &Downstream<'_>,
) -> Result<(Forwarded, Option<Decision>), Error> {
    let who = ctx
        .who(&ctx.upstream.caller_headers(req.headers(), down))
        .await;
    let answer = ctx.upstream.forward(req, down).await;
    let answered = match &answer {
        Ok(forwarded) => Answered::Status(forwarded.response.status()),
        Err(e) => super::authorize::answered_error(e),
    };
    let outage = Reply::of(answered, ctx.upstream.all_held_down(), || ()) == Reply::Outage;
    if !outage {
        return Ok((learn(ctx, who, image_id, answer?).await?, None));
    }
    let cached = ctx.cache.is_some_and(|c| c.is_cached(image_id));
    let Some((json, age)) = cached
        .then(|| ctx.grants.offline_record(who, image_id))
        .flatten()
    else {
        return answer.map(|forwarded| (forwarded, None));
    };
    tracing::warn!(
        image_id,
        grant_age_s = age.as_secs(),
        "no upstream Glance answers; serving the image record kept with a grant within auth.offline_grace"
    );
    let mut resp = Response::new(crate::body::full(json));
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    if let Ok(id) = HeaderValue::from_str(&format!("req-{}", uuid::Uuid::new_v4())) {
        resp.headers_mut().insert("x-openstack-request-id", id);
    }
    Ok((Forwarded::new(resp, None), Some(Decision::Offline)))
}

/// What Glance's answer to the record tells the grants; the answer goes back unchanged.
async fn learn(
    ctx: &Context<'_>,
    who: Who,
    id: &str,
    forwarded: Forwarded,
) -> Result<Forwarded, Error> {
    let grants = ctx.grants;
    let status = forwarded.response.status();
    if status != StatusCode::OK {
        if record_teaches(Reply::No(status)).refuse {
            grants.refused(who, id);
        }
        return Ok(forwarded);
    }
    let small = forwarded
        .response
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
        .is_some_and(|n| n <= MAX_RECORD);
    let keeps = !grants.windows().offline_grace.is_zero() && grants.was_granted(who, id);
    if !small || !keeps {
        return Ok(forwarded);
    }
    let upstream = forwarded.upstream;
    let (parts, body) = forwarded.response.into_parts();
    let json = body
        .collect()
        .await
        .map_err(|e| Error::BadUpstream(format!("the image record's body broke: {e}")))?
        .to_bytes();
    let active = ImageRecord::parse(&json).is_some_and(|r| r.status == ImageStatus::Active);
    if record_teaches(Reply::Yes(active)).refuse {
        grants.refused(who, id);
    } else {
        grants.seen_record(who, id, &json);
    }
    let resp = Response::from_parts(parts, crate::body::full(json));
    Ok(Forwarded::new(resp, upstream))
}
