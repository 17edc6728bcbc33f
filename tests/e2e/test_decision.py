"""The authorization decision (src/image/decide.rs) against a real Glance 33 as the oracle: the
four faults the second hostile-client probe found, kept closed (issue 25).

Glance runs noauth with its own cache off and one worker of eight threads (the kit's
default); the proxy has the windows set (grant_ttl, offline_grace) and a small cache. Each
request goes once straight to Glance and once through the proxy with the same identity, and
the statuses must be the same. Throughout, no image byte reaches a caller Glance refuses.
  1. A reader of another project asks for a large public image (Glance: record 200, download
     403): the proxy answers 403 and evicts nothing.
  2. Stalled JSON creates and stalled image uploads through the proxy do not hold Glance:
     another caller's GET /v2/images still gets 200 within seconds, and a caller whose
     membership was removed gets Glance's 404 (not the cached image on the grace).
  3. OpenStack-System-Scope (oslo.context reads it) is part of the caller: Glance's answer to
     that caller comes back, and nothing is evicted. The proxy's identity-header list holds
     every header the installed oslo.context and keystonemiddleware read.
  4. A member without the reader role (Glance: record 404, download 200) downloads through
     the proxy, cached or not.
"""
import json
import os
import re
import socket
import time

import pytest

from conftest import Glance, Proxy
from test_hostile import send, wait  # one client for the differential tests

T = 30
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PROJECT, OTHER = "noauth-project", "other-project"
CALLERS = {
    "admin": {"X-Auth-Token": "noauth"},
    "member": {"X-Auth-Token": "noauth", "X-Project-Id": PROJECT, "X-User-Id": "m",
               "X-Roles": "member,reader"},
    "member-only": {"X-Auth-Token": "noauth", "X-Project-Id": PROJECT, "X-User-Id": "mo",
                    "X-Roles": "member"},
    "other-reader": {"X-Auth-Token": "noauth", "X-Project-Id": OTHER, "X-User-Id": "or",
                     "X-Roles": "reader"},
    "other-member": {"X-Auth-Token": "noauth", "X-Project-Id": OTHER, "X-User-Id": "om",
                     "X-Roles": "member,reader"},
}
MIB = 1 << 20
ROWS = []


class World:
    def __init__(self, glance, proxy):
        self.glance, self.proxy = glance, proxy
        self.data = {}

    def new_image(self, size, who="member", visibility=None):
        body = {"name": "decision", "disk_format": "raw", "container_format": "bare"}
        if visibility:
            body["visibility"] = visibility
        h = dict(CALLERS[who], **{"Content-Type": "application/json"})
        status, _, out = send(self.glance.url, "POST", "/v2/images", h, json.dumps(body).encode())
        assert status == 201, out
        image_id = json.loads(out)["id"]
        data = os.urandom(size)
        status, _, out = send(self.glance.url, "PUT", "/v2/images/%s/file" % image_id,
                              dict(CALLERS[who], **{"Content-Type": "application/octet-stream"}),
                              data)
        assert status == 204, out
        self.data[image_id] = data
        return image_id

    def cached(self, image_id):
        f = os.path.join(self.proxy.cache, "c", "images", image_id)
        return os.path.exists(f) and os.path.exists(f + ".meta")

    def warm(self, image_id, who="member"):
        status, _, body = send(self.proxy.url, "GET", "/v2/images/%s/file" % image_id, CALLERS[who])
        assert status == 200 and body == self.data[image_id]
        wait(lambda: self.cached(image_id), "cached: " + image_id, self.proxy)

    def both(self, what, method, target, who, extra=None, image_id=None):
        """The same request to Glance and through the proxy; statuses must be equal, and a
        refused caller gets no byte of the image."""
        h = dict(CALLERS[who], **(extra or {}))
        g, _, gbody = send(self.glance.url, method, target, h)
        p, _, pbody = send(self.proxy.url, method, target, h)
        ROWS.append((what, who, g, p))
        assert g == p, "%s as %s: Glance %s, the proxy %s\n%s" % (what, who, g, p, self.proxy.tail())
        if image_id and not 200 <= g < 300:
            data = self.data[image_id]
            assert data[:4096] not in pbody, "image bytes to a refused caller"
        if image_id and 200 <= g < 300 and method == "GET":
            assert pbody == gbody == self.data[image_id]
        return g


@pytest.fixture(scope="module")
def world():
    g = Glance({"GLANCE_CACHE": "0"})
    p = None
    try:
        cfg = os.path.join(g.data, "proxy.toml")
        with open(cfg, "w") as f:
            f.write('[cache]\nmax_size = "3MiB"\n'
                    '[auth]\ngrant_ttl = "2s"\noffline_grace = "1h"\n'
                    '[upstream]\nresponse_timeout = "20s"\n')
        p = Proxy(g.url, extra_args=["--config", cfg], metrics=True)
        yield World(g, p)
    finally:
        print("\n--- the decision: Glance (cache off) vs the proxy ---")
        for row in ROWS:
            print("%-58s %-13s glance %-4s proxy %s" % row)
        try:
            if p is not None:
                assert p.stop() == 0, p.tail()
        finally:
            g.stop()


def test_a_refused_caller_evicts_nothing(world):
    kept = [world.new_image(MIB), world.new_image(MIB)]
    for image_id in kept:
        world.warm(image_id)
    public = world.new_image(2 * MIB, who="admin", visibility="public")
    for _ in range(3):
        assert world.both("record of a public image", "GET", "/v2/images/%s" % public,
                          "other-reader") == 200
        assert world.both("download of a public image", "GET", "/v2/images/%s/file" % public,
                          "other-reader", image_id=public) == 403
        for image_id in kept:
            assert world.cached(image_id), "evicted by a refused caller"
    assert not world.cached(public)


def stalled(url, method, path, length, sent):
    host, port = url.split("//")[1].rsplit(":", 1)
    s = socket.create_connection((host, int(port)), timeout=T)
    s.sendall(("%s %s HTTP/1.1\r\nHost: x\r\nX-Auth-Token: noauth\r\nX-Project-Id: %s\r\n"
               "X-Roles: member,reader\r\nContent-Type: %s\r\nContent-Length: %d\r\n\r\n"
               % (method, path, PROJECT,
                  "application/octet-stream" if method == "PUT" else "application/json",
                  length)).encode() + b"{" * sent)
    return s


def test_stalled_uploads_hold_neither_glance_nor_a_revoked_grant(world):
    # A shared image: the other project's member downloads it (granted), then loses it.
    image_id = world.new_image(MIB)
    h = dict(CALLERS["member"], **{"Content-Type": "application/json"})
    status, _, out = send(world.glance.url, "POST", "/v2/images/%s/members" % image_id, h,
                          json.dumps({"member": OTHER}).encode())
    assert status == 200, out
    status, _, out = send(world.glance.url, "PUT", "/v2/images/%s/members/%s" % (image_id, OTHER),
                          dict(CALLERS["other-member"], **{"Content-Type": "application/json"}),
                          json.dumps({"status": "accepted"}).encode())
    assert status == 200, out
    world.warm(image_id, who="other-member")
    status, _, _ = send(world.glance.url, "DELETE", "/v2/images/%s/members/%s" % (image_id, OTHER),
                        CALLERS["member"])
    assert status == 204
    time.sleep(2.5)  # past grant_ttl
    holders = []
    try:
        for _ in range(6):
            holders.append(stalled(world.proxy.url, "POST", "/v2/images", 100000, 9))
        for _ in range(6):
            h = dict(CALLERS["member"], **{"Content-Type": "application/json"})
            status, _, out = send(world.glance.url, "POST", "/v2/images", h,
                                  b'{"name": "stall", "disk_format": "raw", "container_format": "bare"}')
            assert status == 201, out
            target = json.loads(out)["id"]
            holders.append(stalled(world.proxy.url, "PUT", "/v2/images/%s/file" % target, 100000, 9))
        time.sleep(1)
        started = time.monotonic()
        status, _, _ = send(world.proxy.url, "GET", "/v2/images", CALLERS["other-reader"])
        assert status == 200
        assert time.monotonic() - started < 2, "Glance held by stalled uploads"
        # Glance answers the removed member 404, and so does the proxy (no grace on a slow
        # answer).
        assert world.both("download after the membership went", "GET",
                          "/v2/images/%s/file" % image_id, "other-member", image_id=image_id) == 404
    finally:
        for s in holders:
            s.close()
    waits = [l for l in send(world.proxy.metrics_url, "GET", "/metrics")[2].decode().splitlines()
             if l.startswith("glance_cache_proxy_upstream_upload_waits_total")]
    assert waits and float(waits[0].split()[-1]) >= 2, waits


def test_openstack_system_scope_is_part_of_the_caller(world):
    image_id = world.new_image(MIB // 2)
    world.warm(image_id)
    scoped = {"OpenStack-System-Scope": "all"}
    world.both("record with OpenStack-System-Scope", "GET", "/v2/images/%s" % image_id,
               "member", extra=scoped)
    world.both("download with OpenStack-System-Scope", "GET", "/v2/images/%s/file" % image_id,
               "member", extra=scoped, image_id=image_id)
    assert world.cached(image_id), "evicted on another caller's answer"


def test_a_member_without_the_reader_role_downloads_as_from_glance(world):
    image_id = world.new_image(MIB // 2)
    assert world.both("record, member only", "GET", "/v2/images/%s" % image_id,
                      "member-only") == 404
    # Uncached: Glance answers the download itself.
    assert world.both("download, member only, uncached", "GET",
                      "/v2/images/%s/file" % image_id, "member-only", image_id=image_id) == 200
    world.warm(image_id)
    assert world.both("download, member only, cached", "GET",
                      "/v2/images/%s/file" % image_id, "member-only", image_id=image_id) == 200
    assert world.cached(image_id)


def test_the_identity_headers_are_every_header_oslo_context_and_keystonemiddleware_read():
    from keystonemiddleware.auth_token import _request
    from oslo_context import context

    with open(os.path.join(ROOT, "src", "auth.rs")) as f:
        source = f.read()
    listed = set(re.findall(r'"([a-z0-9-]+)"',
                            re.search(r"IDENTITY_HEADERS: \[&str; \d+\] = \[(.*?)\];",
                                      source, re.S).group(1)))
    read = set()
    for names in context._ENVIRON_HEADERS.values():
        read.update(n for n in names if n.startswith("HTTP_"))
    read.update(["HTTP_X_ROLES", "HTTP_X_ROLE", "HTTP_X_SERVICE_ROLES", "HTTP_X_IS_ADMIN_PROJECT"])
    headers = {n[len("HTTP_"):].lower().replace("_", "-") for n in read}
    req = _request._AuthTokenRequest.blank("/")
    headers.update(h.lower() for h in req._all_auth_headers())
    headers.update(["x-auth-token", "x-storage-token", "x-service-token",
                    _request._AuthTokenRequest._SYSTEM_SCOPE_HEADER.lower()])
    missing = sorted(headers - listed)
    assert not missing, "read by oslo.context or keystonemiddleware, not in src/auth.rs: %s" % missing
