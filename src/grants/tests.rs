//! Unit tests of `Grants`: windows, tickets, refusals and forgets, the two keys, the journal's read-back.

use super::*;
use http::{HeaderMap, HeaderValue};

fn test_secret() -> Secret {
    Secret::from_bytes(&[1; crate::auth::SECRET_LEN])
}

fn caller(token: &'static str) -> CallerKey {
    let mut h = HeaderMap::new();
    h.insert("x-auth-token", HeaderValue::from_static(token));
    CallerKey::of(&test_secret(), &h)
}

fn record(size: u64) -> Expected {
    Expected {
        size,
        md5: Some("0".repeat(32)),
        os_hash: None,
    }
}

/// A question asked at `at_ms` (wall clock) with ticket `seq`.
fn asked(at_ms: u64, seq: u64, expected: &Expected) -> Asked<'_> {
    Asked {
        at_ms,
        seq,
        expected,
        json: None,
        v2: true,
    }
}

fn give(g: &Grants, who: CallerKey, id: &str, expected: &Expected, at_ms: u64) {
    g.granted(Who::Exact(who), id, asked(at_ms, g.ticket(), expected));
}

fn windows(ttl: u64, grace: u64) -> AuthConfig {
    AuthConfig {
        grant_ttl: Duration::from_secs(ttl),
        offline_grace: Duration::from_secs(grace),
    }
}

#[test]
fn a_repeat_grant_within_the_renewal_step_is_not_written() {
    // grant_ttl 10 s: a step of 100 ms.
    let g = Grants::new(windows(10, 0));
    let (a, t) = (caller("a"), now_ms());
    give(&g, a, "img", &record(5), t);
    give(&g, a, "img", &record(5), t + 99);
    assert!(
        g.fresh_at(a, "img", t + 10_000).is_none(),
        "the renewal 99 ms later was skipped: the window runs from the first"
    );
    give(&g, a, "img", &record(5), t + 100);
    assert!(
        g.fresh_at(a, "img", t + 10_099).is_some(),
        "100 ms later: written"
    );
    give(&g, a, "img", &record(6), t + 150);
    assert_eq!(
        g.fresh_at(a, "img", t + 150).map(|e| e.size),
        Some(6),
        "another record is always written"
    );
    // Neither window set: a step of 1 s (the grant feeds only the 404 rule).
    let g = Grants::new(windows(0, 0));
    give(&g, a, "img", &record(5), t);
    assert_eq!(g.renew_step_ms(), 1000);
    give(&g, a, "img", &record(5), t + 999);
    assert_eq!(g.grant(a, "img").map(|x| x.at_ms), Some(t));
    give(&g, a, "img", &record(5), t + 1000);
    assert_eq!(g.grant(a, "img").map(|x| x.at_ms), Some(t + 1000));
    // After a forget, a newer grant is always written.
    g.forget("img");
    give(&g, a, "img", &record(5), t + 1001);
    assert!(
        g.was_granted(Who::Exact(a), "img"),
        "asked after the forget: kept"
    );
    // A refusal: a "yes" asked before it is never written, one asked after it is.
    let before = g.ticket();
    g.refused(Who::Exact(a), "img");
    g.granted(Who::Exact(a), "img", asked(t + 1002, before, &record(5)));
    assert!(
        !g.was_granted(Who::Exact(a), "img"),
        "asked before the refusal"
    );
    give(&g, a, "img", &record(5), t + 1003);
    assert!(
        g.was_granted(Who::Exact(a), "img"),
        "asked after the refusal"
    );
}

#[test]
fn an_identitys_grant_is_kept_under_both_keys_and_a_refusal_ends_both() {
    let g = Grants::new(windows(60, 3600));
    let t = now_ms() - 10;
    let (identity, exact, other) = (caller("alice"), caller("t1"), caller("t2"));
    let alice = Who::Identity {
        identity,
        exact,
        fresh: true,
    };
    g.granted(alice, "img", asked(t, g.ticket(), &record(1)));
    assert!(
        g.fresh_at(identity, "img", t + 1).is_some(),
        "the identity's"
    );
    assert!(g.fresh_at(exact, "img", t + 1).is_some(), "the token's own");
    let renewed = Who::Identity {
        identity,
        exact: other,
        fresh: true,
    };
    assert!(
        g.was_granted(renewed, "img"),
        "a renewed token reads the identity's"
    );
    assert!(!g.was_granted(Who::Exact(other), "img"), "its own: none");
    g.refused(renewed, "img");
    assert!(g.fresh_at(identity, "img", t + 1).is_none());
    assert!(
        g.fresh_at(exact, "img", t + 1).is_some(),
        "another token's own stays"
    );
    // A token Keystone refuses reads no grant, and ends its own credentials' one.
    g.granted(alice, "img", asked(t, g.ticket(), &record(1)));
    assert!(g.standing(Who::Refused { exact }, "img").held.is_none());
    assert!(g.fresh_at(exact, "img", t + 1).is_none());
    assert!(
        g.fresh_at(identity, "img", t + 1).is_some(),
        "the identity's stays"
    );
    g.granted(
        Who::Refused { exact },
        "img",
        asked(t, g.ticket(), &record(1)),
    );
    assert!(
        g.fresh_at(exact, "img", t + 1).is_none(),
        "nothing kept for it"
    );
    // A removal from the cache ends every key's.
    g.granted(alice, "img", asked(t, g.ticket(), &record(1)));
    g.forget("img");
    assert!(!g.was_granted(alice, "img"));
    assert!(!g.was_granted(Who::Exact(exact), "img"));
}

#[test]
fn fresh_only_within_the_ttl_and_for_the_same_caller() {
    let g = Grants::new(windows(30, 0));
    let (a, b, t) = (caller("a"), caller("b"), now_ms());
    give(&g, a, "img", &record(5), t);
    assert_eq!(g.fresh_at(a, "img", t).map(|e| e.size), Some(5));
    assert!(g.fresh_at(a, "img", t + 29_999).is_some());
    assert!(
        g.fresh_at(a, "img", t + 30_000).is_none(),
        "expired at the TTL"
    );
    assert!(g.fresh_at(b, "img", t + 1).is_none(), "another caller");
    assert!(g.fresh_at(a, "other", t + 1).is_none(), "another image");
    assert!(g.fresh_at(a, "img", t - 1).is_none(), "a clock gone back");
    assert!(
        g.offline_at(a, "img", t + 1).is_none(),
        "no grace: never offline"
    );
}

#[test]
fn a_zero_ttl_is_todays_behaviour_and_v1_grants_serve_no_window() {
    let g = Grants::new(windows(0, 0));
    let (a, t) = (caller("a"), now_ms());
    give(&g, a, "img", &record(5), t);
    assert!(g.fresh_at(a, "img", t).is_none());
    assert!(
        g.was_granted(Who::Exact(a), "img"),
        "still known for the 404 rule"
    );
    let g = Grants::new(windows(60, 3600));
    let five = record(5);
    let v1 = Asked {
        v2: false,
        ..asked(t, g.ticket(), &five)
    };
    g.granted(Who::Exact(a), "img", v1);
    assert!(g.was_granted(Who::Exact(a), "img"));
    assert!(
        g.fresh_at(a, "img", t + 1).is_none(),
        "v1 records have no os_hash"
    );
    assert!(g.offline_at(a, "img", t + 1).is_none());
}

#[test]
fn offline_within_the_grace_with_its_age() {
    let g = Grants::new(windows(0, 3600));
    let (a, t) = (caller("a"), now_ms());
    give(&g, a, "img", &record(7), t);
    let (grant, age) = g
        .offline_at(a, "img", t + 60_000)
        .expect("within the grace");
    assert_eq!((grant.expected.size, age), (7, Duration::from_secs(60)));
    assert!(g.offline_at(a, "img", t + 3_600_000).is_none());
    // Renewed: the window runs from the last grant.
    give(&g, a, "img", &record(7), t + 3_000_000);
    assert!(g.offline_at(a, "img", t + 3_600_000).is_some());
}

#[test]
fn refusals_and_removals_drop_grants_and_late_answers_do_not_revive_them() {
    let g = Grants::new(windows(60, 3600));
    let (a, b, one) = (caller("a"), caller("b"), record(1));
    let t = now_ms() - 10;
    for who in [a, b] {
        give(&g, who, "img", &one, t);
        give(&g, who, "keep", &one, t);
    }
    let early = g.ticket(); // a question asked before the refusal, answered after it
    g.refused(Who::Exact(a), "img");
    assert!(
        g.fresh_at(a, "img", t + 1).is_none(),
        "a refusal drops the caller's"
    );
    assert!(
        g.fresh_at(b, "img", t + 1).is_some(),
        "and only the caller's"
    );
    g.granted(Who::Exact(a), "img", asked(t, early, &one));
    assert!(
        g.fresh_at(a, "img", t + 1).is_none(),
        "a late yes is ignored"
    );
    g.forget("img");
    assert!(
        g.fresh_at(b, "img", t + 1).is_none(),
        "forget drops every caller's"
    );
    assert!(!g.was_granted(Who::Exact(b), "img"));
    g.granted(Who::Exact(b), "img", asked(t, early, &one));
    assert!(
        !g.was_granted(Who::Exact(b), "img"),
        "asked before the forget: ignored"
    );
    assert!(g.fresh_at(a, "keep", t + 1).is_some(), "other images stay");
    // Asked after the refusal and the forget (even in the same millisecond): counts.
    give(&g, a, "img", &one, t);
    give(&g, b, "img", &one, t);
    assert!(g.fresh_at(a, "img", t + 1).is_some());
    assert!(g.fresh_at(b, "img", t + 1).is_some());
}

#[test]
fn a_record_is_wanted_with_a_grace_until_one_is_kept_and_again_when_it_is_old() {
    let (a, t, five) = (caller("a"), now_ms(), record(5));
    let json = Bytes::from_static(b"{\"id\": \"img\"}");
    let with_json = |at| Asked {
        json: Some(&json),
        ..asked(at, 0, &five)
    };
    let none = Grants::new(windows(60, 0));
    assert!(!none.wants_record_at(a, "img", t), "no grace: never");
    let g = Grants::new(windows(0, 3600));
    assert!(g.wants_record_at(a, "img", t), "no grant");
    give(&g, a, "img", &five, t);
    assert!(g.wants_record_at(a, "img", t), "a grant without a record");
    g.granted(
        Who::Exact(a),
        "img",
        Asked {
            seq: g.ticket(),
            ..with_json(t)
        },
    );
    assert!(!g.wants_record_at(a, "img", t + 59_999), "kept, fresh");
    assert!(
        g.wants_record_at(a, "img", t + 60_000),
        "a minute old (grace/100 < 1 min)"
    );
    g.seen_record(Who::Exact(a), "img", &json);
    assert!(
        !g.wants_record_at(a, "img", now_ms()),
        "refreshed by a record read"
    );
    g.refused(Who::Exact(a), "img");
    assert!(g.wants_record_at(a, "img", now_ms()), "refused: no grant");
}

#[test]
fn the_record_is_the_one_sent_with_the_latest_grant() {
    let g = Grants::new(windows(60, 0));
    let (a, t) = (caller("a"), now_ms());
    let (one, two, three) = (record(1), record(2), record(3));
    let late = g.ticket(); // asked first, answered last
    give(&g, a, "img", &one, t);
    give(&g, a, "img", &two, t + 500);
    g.granted(Who::Exact(a), "img", asked(t + 400, late, &three));
    assert_eq!(g.fresh_at(a, "img", t + 600).map(|e| e.size), Some(2));
}

#[test]
fn the_store_is_bounded_in_bytes() {
    let g = Grants::new(windows(60, 0));
    let grant = Grant {
        at_ms: 0,
        seq: 0,
        expected: Arc::new(record(1)),
        record: None,
        record_ms: 0,
        v2: true,
        noted_ms: 0,
    };
    let each = u64::from(weight(
        &(caller("x"), "img".into()),
        &Memory::Granted(grant),
    ));
    let (n, t) = (MAX_BYTES / each + 10_000, now_ms());
    for i in 0..n {
        let mut h = HeaderMap::new();
        h.insert("x-auth-token", HeaderValue::from(i));
        give(&g, CallerKey::of(&test_secret(), &h), "img", &record(1), t);
    }
    let held = g.len();
    assert!(held < n, "{held} of {n} held");
    assert!(
        held * each <= MAX_BYTES,
        "{held} grants exceed the byte bound"
    );
    let mut h = HeaderMap::new();
    h.insert("x-auth-token", HeaderValue::from(n - 1));
    assert!(
        g.was_granted(Who::Exact(CallerKey::of(&test_secret(), &h)), "img"),
        "the newest is kept (LRU)"
    );
}

#[test]
fn with_a_grace_the_record_json_is_kept_once_refreshed_and_served_offline() {
    let json = Bytes::from_static(b"{\"id\": \"img\"}");
    let g = Grants::new(windows(0, 3600));
    // In the past: `offline_record` reads the clock, and a grant from the future is none.
    let (a, b, t) = (caller("a"), caller("b"), now_ms() - 10_000);
    let one = record(1);
    for who in [a, b] {
        let with_json = Asked {
            json: Some(&json),
            ..asked(t, g.ticket(), &one)
        };
        g.granted(Who::Exact(who), "img", with_json);
    }
    let (ra, rb) = (g.grant(a, "img"), g.grant(b, "img"));
    let (ra, rb) = (ra.and_then(|g| g.record), rb.and_then(|g| g.record));
    let shared = ra.as_ref().zip(rb.as_ref());
    assert!(shared.is_some_and(|(x, y)| Arc::ptr_eq(x, y)), "one copy");
    assert_eq!(
        g.offline_record(Who::Exact(a), "img").map(|(j, _)| j),
        Some(json.clone())
    );
    assert!(g.offline_record(Who::Exact(caller("c")), "img").is_none());
    // A renewal without JSON (a step later) keeps it; a newer record replaces it, not
    // the date.
    give(&g, a, "img", &record(1), t + 1000);
    assert_eq!(
        g.offline_record(Who::Exact(a), "img").map(|(j, _)| j),
        Some(json.clone())
    );
    let newer = Bytes::from_static(b"{\"id\": \"img\", \"name\": \"x\"}");
    g.seen_record(Who::Exact(a), "img", &newer);
    assert_eq!(
        g.offline_record(Who::Exact(a), "img").map(|(j, _)| j),
        Some(newer)
    );
    assert_eq!(g.grant(a, "img").map(|g| g.at_ms), Some(t + 1000));
    g.forget("img");
    assert!(g.offline_record(Who::Exact(a), "img").is_none());
    // Without a grace no record is kept.
    let g = Grants::new(windows(60, 0));
    let with_json = Asked {
        json: Some(&json),
        ..asked(t, g.ticket(), &one)
    };
    g.granted(Who::Exact(a), "img", with_json);
    assert!(g.grant(a, "img").and_then(|g| g.record).is_none());
}

#[test]
fn renewals_within_a_small_step_do_not_dirty_the_journal() {
    let g = Grants::new(windows(0, 3600));
    let (a, t) = (caller("a"), now_ms());
    let dirty = |g: &Grants| g.inner.dirty.swap(false, Ordering::Relaxed);
    give(&g, a, "img", &record(1), t);
    assert!(dirty(&g), "a new grant is news");
    give(&g, a, "img", &record(1), t + 1_000);
    assert!(!dirty(&g), "a renewal a second later is not");
    give(&g, a, "img", &record(1), t + 36_001);
    assert!(dirty(&g), "a hundredth of the grace is");
    give(&g, a, "img", &record(2), t + 37_000);
    assert!(dirty(&g), "a changed record is");
}
