"""Grants that follow the Keystone identity (issue 29; README "Edge sites") with the kit's real
Keystone 30 and Glance 33 (GLANCE_AUTH=keystone), the proxy set with `auth.keystone_url`,
`grant_ttl`, `offline_grace` and a short `identity_cache_ttl`:

1. token A's miss, then token B of the same user (a second token Keystone issued) is served
   with no request about the image in Glance's own access log;
2. Glance stopped (Keystone up): a token of the same user issued after the stop is served,
   another project's token and a made-up one are not;
3. a token revoked in Keystone (DELETE /v3/auth/tokens) is refused within
   `identity_cache_ttl` (plus the time of a request or two);
4. Keystone stopped too: only a token whose own credentials Glance granted (A) is served; B and
   the token issued after Glance's stop, served on the identity before, are not.

It stops its own Glance and then its own Keystone (the launcher's stop-glance and
stop-keystone), so it has its own pair; everything it starts is stopped at the end.
"""
import os
import socket
import subprocess
import time

import pytest
import requests

from conftest import LAUNCHER, Glance, Proxy, free_port
from test_authz import DATA, T, World
from test_edge import config_file, metric, new_session

# The proxy's identity_cache_ttl (s): how late a revocation may arrive.
IDENTITY_TTL = 2
# What a request or two through the proxy may add to it on this shared machine.
SLACK = 4


@pytest.fixture(scope="module")
def identity_site():
    """Glance with its own Keystone, and a proxy whose grants follow Keystone identities."""
    kport = free_port()
    g = Glance({"GLANCE_AUTH": "keystone", "KEYSTONE_PORT": str(kport), "GLANCE_CACHE": "0"})
    g.keystone_port = kport
    g.auth_url = "http://127.0.0.1:%d/v3" % kport
    cfg = config_file(
        '[auth]\ngrant_ttl = "60s"\noffline_grace = "1h"\n'
        'keystone_url = "%s"\nidentity_cache_ttl = "%ds"\n' % (g.auth_url, IDENTITY_TTL))
    proxy = None
    try:
        proxy = Proxy(g.url, extra_args=["--config", cfg], metrics=True)
        yield g, proxy
    finally:
        if proxy is not None:
            proxy.stop()
        os.unlink(cfg)
        g.stop()


def token(g, who):
    """A new token Keystone issues for `who` (test_edge.USERS)."""
    return new_session(g.auth_url, who).get_token()


def get(proxy, tok, image_id):
    r = requests.get("%s/v2/images/%s/file" % (proxy.url, image_id),
                     headers={"X-Auth-Token": tok}, timeout=T)
    if r.status_code == 200:
        assert r.content == DATA, "wrong bytes"
    return r.status_code


def glance_asked(g, admin, image_id):
    """Requests about image_id in Glance's own access log, once every request that ended
    before this call is in it: a marker request (`?marker=...`, answered by Glance directly)
    is waited for, and not counted."""
    marker = "marker-%d" % time.monotonic_ns()
    r = requests.get("%s/v2/images/%s?%s" % (g.url, image_id, marker),
                     headers={"X-Auth-Token": admin}, timeout=T)
    assert r.status_code in (200, 400), r.text
    deadline = time.monotonic() + 10
    while True:
        lines = g.access_log().splitlines()
        if any(marker in line for line in lines):
            return sum(1 for line in lines if image_id in line and "marker-" not in line)
        assert time.monotonic() < deadline, "Glance's access log does not show the marker"
        time.sleep(0.05)


def launcher(g, command):
    subprocess.run(["bash", LAUNCHER, command, g.data], env=g.env, capture_output=True,
                   timeout=60, check=True)


def refuses(port):
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return False
    except OSError:
        return True


def until_refused(proxy, tok, image_id, bound, what):
    """Poll until the proxy refuses `tok` (502: Glance is down and no grant serves it); every
    answer before is 200. Fails after `bound` seconds; returns the seconds it took."""
    t0 = time.monotonic()
    while True:
        status = get(proxy, tok, image_id)
        if status == 502:
            return time.monotonic() - t0
        assert status == 200, (what, status)
        assert time.monotonic() - t0 < bound, "%s: still served %.1f s on" % (what, bound)
        time.sleep(0.1)


def test_grants_follow_the_keystone_identity(identity_site):
    g, proxy = identity_site
    admin = token(g, "admin")
    w = World(g, proxy, {"member": {"X-Auth-Token": token(g, "member")}}, "member")
    image_id = w.new_image()
    a = w.callers["member"]["X-Auth-Token"]

    # 1. A's miss asks Glance; B, the same user's second token, is served on the identity's
    # grant: nothing about the image reaches Glance.
    assert get(proxy, a, image_id) == 200
    deadline = time.monotonic() + 30
    while not w.cached(image_id):
        assert time.monotonic() < deadline, proxy.tail()
        time.sleep(0.05)
    before = glance_asked(g, admin, image_id)
    assert before >= 2, "the upload and A's miss are in Glance's log"
    b = token(g, "member")
    assert b != a
    assert get(proxy, b, image_id) == 200
    assert glance_asked(g, admin, image_id) == before, "B reached Glance"

    # 2. Glance stopped, Keystone up.
    launcher(g, "stop-glance")
    assert refuses(g.port), "Glance still answers"
    c = token(g, "member")  # issued after the stop
    assert get(proxy, c, image_id) == 200, "a token issued after the stop"
    assert get(proxy, token(g, "other"), image_id) == 502, "another project's token"
    assert get(proxy, "gAAAAABmade-up-token", image_id) == 502, "a made-up token"

    # 3. A token revoked in Keystone stops being served within identity_cache_ttl.
    revoked = token(g, "member")
    assert get(proxy, revoked, image_id) == 200, "served on the identity before"
    r = requests.delete(g.auth_url + "/auth/tokens", timeout=T,
                        headers={"X-Auth-Token": admin, "X-Subject-Token": revoked})
    assert r.status_code == 204, r.text
    took = until_refused(proxy, revoked, image_id, IDENTITY_TTL + SLACK, "the revoked token")
    print("revoked token refused %.2f s after the revocation (identity_cache_ttl %d s)"
          % (took, IDENTITY_TTL))
    assert get(proxy, c, image_id) == 200, "the identity's other tokens still are"

    # 4. Keystone stopped too: B and C were served on the identity only; once their cached
    # identities expire they are not. A's own credentials were granted: it still is.
    launcher(g, "stop-keystone")
    assert refuses(g.keystone_port), "Keystone still answers"
    until_refused(proxy, b, image_id, IDENTITY_TTL + SLACK, "B with Keystone stopped")
    assert get(proxy, c, image_id) == 502, "C, issued after Glance's stop"
    assert get(proxy, a, image_id) == 200, "A, whose own credentials Glance granted"
    assert get(proxy, revoked, image_id) == 502, "the revoked token"
    series = 'glance_cache_proxy_identity_resolutions_total{result="fallback"}'
    assert metric(proxy, series) >= 3, "resolved by the exact credentials"
