"""Differential test of the cache API (issue 15, point 7): every `/v2/cache` call answers the
same status through the proxy as straight from a real Glance 33 with its own image cache on
(the oracle), for every kind of noauth caller and every kind of target image.

Glance's rule (G `glance/api/v2/cached_images.py::CacheController`):
  GET /v2/cache            policy `cache_list`, then "caching not supported" (404)
  DELETE /v2/cache         policy `cache_delete`, then 404 / 400 for a bad clear target
  PUT /v2/cache/{id}       image lookup first (`gateway.get_repo(ctx).get`: database
                           visibility, no API policy; 404), then `cache_image` (403), then
                           status != active (400)
  DELETE /v2/cache/{id}    image lookup first (404 only when also absent from Glance's cache
                           and queue), then `cache_delete` (403)
The lookup is the database's visibility (G `glance/db/utils.py::is_image_visible`: admin,
owner == caller's project, public/community, shared membership), not the `get_image` API
policy that `GET /v2/images/{id}` enforces (reader role): a member-only caller of the owning
project gets 403 from Glance, where a lookup with `GET /v2/images/{id}` says 404.

Callers are noauth identities (the kit's noauth filter: X-Project-Id, X-Roles, X-User-Id;
none of them = admin of noauth-project). Calls that would change state (admin's) run last, so
that earlier cells see the same cache and queue on both sides.
"""
import requests

T = 60
PROJECT = "noauth-project"
OTHER = "other-project"
DATA = b"parity" * 1000

CALLERS = {
    "admin": {"X-Auth-Token": "noauth"},
    "member+reader": {"X-Auth-Token": "noauth", "X-Project-Id": PROJECT, "X-User-Id": "mr",
                      "X-Roles": "member,reader"},
    "member-only": {"X-Auth-Token": "noauth", "X-Project-Id": PROJECT, "X-User-Id": "mo",
                    "X-Roles": "member"},
    "reader-only": {"X-Auth-Token": "noauth", "X-Project-Id": PROJECT, "X-User-Id": "ro",
                    "X-Roles": "reader"},
    "other-project": {"X-Auth-Token": "noauth", "X-Project-Id": OTHER, "X-User-Id": "op",
                      "X-Roles": "member,reader"},
}
# Admin last: its PUT queues (and Glance's worker caches), its DELETEs clear.
ORDER = ["member+reader", "member-only", "reader-only", "other-project", "admin"]


def new_image(base, who, visibility="private", data=True):
    h = CALLERS[who]
    r = requests.post(base + "/v2/images", headers=h, timeout=T,
                      json={"name": "parity-" + visibility, "disk_format": "raw",
                            "container_format": "bare", "visibility": visibility})
    assert r.status_code == 201, r.text
    image_id = r.json()["id"]
    if data:
        r = requests.put("%s/v2/images/%s/file" % (base, image_id), data=DATA, timeout=T,
                         headers=dict(h, **{"Content-Type": "application/octet-stream"}))
        assert r.status_code == 204, r.text
    return image_id


def call(base, who, method, path):
    # As glanceclient sends them: no body, Content-Type application/octet-stream (GC
    # common/http.py); no microversion header (Glance's version document has none).
    headers = dict(CALLERS[who], **{"Content-Type": "application/octet-stream"})
    r = requests.request(method, base + path, headers=headers, timeout=T)
    return r.status_code


def table(rows):
    out = ["%-14s %-28s %-15s %6s %6s" % ("caller", "call", "target", "glance", "proxy")]
    for who, what, target, g, p in rows:
        out.append("%-14s %-28s %-15s %6s %6s%s" % (who, what, target, g, p,
                                                    "" if g == p else "   <-- differs"))
    return "\n".join(out)


def test_cache_api_same_status_as_glance(glance, proxy):
    targets = {
        "active": new_image(glance.url, "member+reader"),
        "queued": new_image(glance.url, "member+reader", data=False),
        "shared": new_image(glance.url, "member+reader", "shared"),
        "community-other": new_image(glance.url, "other-project", "community"),
        "missing": "0badc0de-0000-4000-8000-000000000000",
    }
    rows = []

    def both(who, method, path, target="-"):
        g = call(glance.url, who, method, path)
        p = call(proxy.url, who, method, path)
        rows.append((who, "%s %s" % (method, path.replace(targets.get(target, "@"), "{id}")),
                     target, g, p))

    for who in ORDER:
        both(who, "GET", "/v2/cache")
        for name, image_id in targets.items():
            both(who, "PUT", "/v2/cache/" + image_id, name)
        for name, image_id in targets.items():
            both(who, "DELETE", "/v2/cache/" + image_id, name)
        both(who, "DELETE", "/v2/cache")
    print(table(rows))
    differ = [r for r in rows if r[3] != r[4]]
    assert not differ, "%d of %d cells differ from Glance:\n%s" % (len(differ), len(rows), table(rows))


def test_legacy_routes_are_the_proxys_own(glance, proxy):
    """Glance 33 has no `cached_images`/`queued_images` routes any more (404 for everyone);
    the proxy keeps them as its own compatibility, authorized like `/v2/cache`."""
    for path in ("/v2/cached_images", "/v2/queued_images"):
        for who in ORDER:
            assert call(glance.url, who, "GET", path) == 404, (who, path)
            expected = 200 if who == "admin" else 403
            assert call(proxy.url, who, "GET", path) == expected, (who, path)
