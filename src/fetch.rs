//! Getting an image into the cache, shared by a client's miss (`image`) and the prefetcher:
//! `plan` looks the image up (a hit, a fill to join, or a new fill registered, with no room
//! made yet) and `start` asks Glance for the download with the caller's headers and, only on
//! its 200 of the right size, makes room and starts the fill in a task of its own.

use std::sync::Arc;

use http::{HeaderMap, HeaderValue, Response};
use hyper::body::Incoming;

use crate::cache::fill::{Fill, Keep, Progress};
use crate::cache::{Begin, Cache, Hit, Lookup, Starter};
use crate::digest::Expected;
use crate::error::Error;
use crate::outcome::BypassReason;
use crate::upstream::glance::{is_full_download, warn_if_md5_differs, Api};
use crate::upstream::Upstream;

/// How the cache will serve an image Glance allowed.
pub enum Plan {
    /// A verified entry on disk.
    Hit(Hit),
    /// A fill in progress, started by another request (it has begun).
    Join(Arc<Fill>),
    /// This request fills: the starter waits for Glance's download (room is made then).
    Fill(Starter),
    /// Not from the cache.
    Bypass(BypassReason),
}

/// Look `id` up as the image of `expected`: `opened` is the entry, already opened while
/// Glance was asked (used if it is still current); `ranged`: only a whole entry will do.
pub async fn plan(
    cache: &Arc<Cache>,
    id: &str,
    expected: &Expected,
    ranged: bool,
    opened: Option<Hit>,
) -> Plan {
    if let Some(hit) = opened.filter(|hit| cache.is_current(hit) && hit.expected == *expected) {
        return Plan::Hit(hit);
    }
    let plan = match cache.lookup(id, expected).await {
        Lookup::Hit(hit) => Plan::Hit(hit),
        // A range is answered only from a whole entry.
        Lookup::Filling(_) | Lookup::Miss if ranged => Plan::Bypass(BypassReason::Range),
        Lookup::Filling(fill) => Plan::Join(fill),
        Lookup::Miss => match cache.begin_fill(id, expected).await {
            Begin::Started(starter) => Plan::Fill(starter),
            Begin::Joined(fill) => Plan::Join(fill),
            Begin::Bypass(reason) => Plan::Bypass(reason),
        },
    };
    match plan {
        Plan::Join(fill) => match fill.started().await {
            Progress::Running { .. } | Progress::Verified | Progress::Committed => Plan::Join(fill),
            // The fill failed before it began: Glance answers, as for anyone.
            Progress::Starting | Progress::Failed(_) => Plan::Bypass(BypassReason::FillFailed),
        },
        other => other,
    }
}

/// The download a fill asks Glance for: whose headers, which image, which query.
pub struct Download<'a> {
    pub api: Api,
    /// The caller's headers as they go to Glance.
    pub caller: &'a HeaderMap,
    pub image_id: &'a str,
    /// `?prefer=` and friends, as the client sent them.
    pub query: Option<&'a str>,
}

/// What became of a fill's download request.
pub enum Started {
    /// Glance sent the image: the fill runs; the starter's reader registration (hold it
    /// until a reader or a wait holds its own), Glance's `x-openstack-request-id`, and
    /// which upstream answered.
    Fill(Keep, Option<HeaderValue>, usize),
    /// Glance sent the image, but the cache has no room for it: it goes to the client
    /// uncached.
    NoRoom(Response<Incoming>, usize, BypassReason),
    /// Glance answered something else: it goes back to the client as is.
    Refused(Response<Incoming>, usize),
}

/// Request the image and start the fill in a task of its own, so that the fill goes on (and
/// serves later requests) even if the client that started it hangs up before Glance answers.
/// Room in the cache is made only now, after Glance's 200 (`Starter::start`).
pub async fn start(
    upstream: &Arc<Upstream>,
    starter: Starter,
    download: &Download<'_>,
    expected: &Expected,
) -> Result<Started, Error> {
    let upstream = Arc::clone(upstream);
    let expected = expected.clone();
    let (api, caller) = (download.api, download.caller.clone());
    let query = download.query.map(str::to_string);
    let image_id = download.image_id.to_string();
    let (tx, rx) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let started = match upstream
            .download(api, &caller, &image_id, query.as_deref())
            .await
        {
            Ok((resp, index)) if is_full_download(&resp, &expected) => {
                warn_if_md5_differs(&image_id, &resp, &expected);
                let request_id = resp.headers().get("x-openstack-request-id").cloned();
                let idle = upstream.body_idle_timeout;
                let (parts, body) = resp.into_parts();
                match starter.start(body, idle).await {
                    Ok(keep) => Ok(Started::Fill(keep, request_id, index)),
                    Err((reason, body)) => Ok(Started::NoRoom(
                        Response::from_parts(parts, body),
                        index,
                        reason,
                    )),
                }
            }
            // Dropping the starter undoes the registration (joiners then pass through).
            Ok((resp, index)) => Ok(Started::Refused(resp, index)),
            Err(e) => Err(e),
        };
        let _ = tx.send(started);
    });
    rx.await
        .map_err(|_| Error::Unreachable("fill task ended without an answer".into()))?
}
