"""Edge sites with the real Glance 33 (noauth and Keystone) and the real clients (README "Edge
sites"): with `auth.grant_ttl = 20s` the proxy answers every caller as Glance does, except that
a refusal after a deactivation, a member removal or a token revocation arrives late, and no
later than the TTL (+2 s); with `auth.offline_grace`, Glance stopped, openstacksdk's
`download_image` (record, then data, verified) works for a user Glance had allowed and fails for
everyone else. The differential test of test_authz.py runs unchanged with both settings at 0.

The offline test stops its Glance: it runs last in this module (its Keystone stays up).
"""
import os
import signal
import socket
import tempfile
import time

import pytest
import requests

from conftest import Glance, Proxy, free_port
from test_authz import DATA, T, World, both, noauth_world

TTL = 20


def config_file(text):
    fd, path = tempfile.mkstemp(prefix="gcp-e2e-edge-", suffix=".toml")
    os.write(fd, text.encode())
    os.close(fd)
    return path


@pytest.fixture(scope="module")
def edge_keystone_glance():
    """Glance with a real Keystone; keystonemiddleware validates every token (no token cache),
    so a revoked token is refused by Glance at once."""
    kport = free_port()
    g = Glance({"GLANCE_AUTH": "keystone", "KEYSTONE_PORT": str(kport), "GLANCE_CACHE": "0",
                "GLANCE_TOKEN_CACHE_TIME": "-1"})
    g.auth_url = "http://127.0.0.1:%d/v3" % kport
    try:
        yield g
    finally:
        g.stop()


USERS = {"admin": ("admin", "admin"), "member": ("demo-member", "demo"),
         "reader": ("demo-reader", "demo"), "other": ("other-member", "other")}


def password(auth_url, who):
    user, project = USERS[who]
    return dict(auth_url=auth_url, username=user, password=user + "-pass", project_name=project,
                user_domain_name="Default", project_domain_name="Default")


def new_session(auth_url, who):
    from keystoneauth1 import session
    from keystoneauth1.identity import v3
    return session.Session(auth=v3.Password(**password(auth_url, who)))


def keystone_world(g, proxy):
    sessions = {who: new_session(g.auth_url, who) for who in USERS}
    callers = {who: {"X-Auth-Token": s.get_token()} for who, s in sessions.items()}
    w = World(g, proxy, callers, "member")
    w.other_project = sessions["other"].get_project_id()
    return w


@pytest.fixture(params=["noauth", "keystone"])
def ttl_world(request, glance):
    g = glance if request.param == "noauth" else request.getfixturevalue("edge_keystone_glance")
    cfg = config_file('[auth]\ngrant_ttl = "%ds"\n' % TTL)
    proxy = Proxy(g.url, extra_args=["--config", cfg], metrics=True)
    try:
        w = noauth_world(g, proxy) if request.param == "noauth" else keystone_world(g, proxy)
        w.kind = request.param
        yield w
    finally:
        proxy.stop()
        os.unlink(cfg)


def metric(proxy, series):
    page = requests.get(proxy.metrics_url + "/metrics", timeout=T).text
    for line in page.splitlines():
        if line.startswith(series + " "):
            return float(line.split()[-1])
    return 0.0


CASES = [("admin", "private", 200), ("member", "private", 200), ("reader", "private", 403),
         ("other", "private", 404), ("other", "public", 200)]


def test_with_a_grant_ttl_every_caller_gets_glances_answer(ttl_world):
    w = ttl_world
    for who, visibility, expected in CASES:
        cold = w.new_image(visibility)
        assert both(w, who, cold) == (expected, expected), (who, visibility, "cold")
        warm = w.new_image(visibility)
        w.prime(warm)
        for repeat in range(2):  # the second within the TTL
            assert both(w, who, warm) == (expected, expected), (who, visibility, repeat)
    series = 'glance_cache_proxy_authorization_decisions_total{decision="cached"}'
    assert metric(w.proxy, series) >= 3, "repeat hits were answered on the grant"


def grant(w, who, image_id):
    assert w.download(w.proxy.url, who, image_id) == 200
    deadline = time.monotonic() + 30
    while not w.cached(image_id):
        assert time.monotonic() < deadline, w.proxy.tail()
        time.sleep(0.05)
    assert w.download(w.proxy.url, who, image_id) == 200  # a hit: the grant is Glance's now


def test_refusals_arrive_no_later_than_the_ttl(ttl_world):
    """Deactivation, member removal and (Keystone) token revocation, all at once: Glance
    refuses at once; the proxy keeps serving the granted caller, then refuses within TTL+2s."""
    w = ttl_world
    admin = w.callers["admin"]
    deact = w.new_image()
    shared = w.new_image("shared")
    r = w.call(w.glance.url, "member", "POST", "/v2/images/%s/members" % shared,
               json={"member": w.other_project})
    assert r.status_code == 200, r.text
    r = w.call(w.glance.url, "other", "PUT", "/v2/images/%s/members/%s" % (shared, w.other_project),
               json={"status": "accepted"})
    assert r.status_code == 200, r.text
    cases = [("deactivation", "member", deact, 403), ("member removal", "other", shared, 404)]
    if w.kind == "keystone":
        w.callers["fresh"] = {"X-Auth-Token": new_session(w.glance.auth_url, "member").get_token()}
        revoked = w.new_image()
        cases.append(("token revocation", "fresh", revoked, 401))
    for _, who, image_id, _ in cases:
        grant(w, who, image_id)

    t0 = time.monotonic()
    r = w.call(w.glance.url, "admin", "POST", "/v2/images/%s/actions/deactivate" % deact)
    assert r.status_code == 204, r.text
    r = w.call(w.glance.url, "member", "DELETE", "/v2/images/%s/members/%s" % (shared, w.other_project))
    assert r.status_code == 204, r.text
    if w.kind == "keystone":
        r = requests.delete(w.glance.auth_url + "/auth/tokens", timeout=T, headers={
            "X-Auth-Token": admin["X-Auth-Token"],
            "X-Subject-Token": w.callers["fresh"]["X-Auth-Token"]})
        assert r.status_code == 204, r.text
    for name, who, image_id, refused in cases:
        assert w.download(w.glance.url, who, image_id) == refused, "Glance refuses at once: " + name

    # Each poll's start time: the proxy must refuse every request that starts later than the
    # TTL after the change (the grants were given before it), measured at the request's start
    # (a refusal through the proxy itself takes Glance's and Keystone's time to come back).
    refused_at, last_served, first = {}, {}, {}
    while len(refused_at) < len(cases) and time.monotonic() < t0 + TTL + 5:
        for name, who, image_id, refused in cases:
            if name in refused_at:
                continue
            started = time.monotonic() - t0
            status = w.download(w.proxy.url, who, image_id)
            first.setdefault(name, status)
            assert status in (200, refused), (name, status)
            if status == refused:
                refused_at[name] = started
            else:
                last_served[name] = started
        time.sleep(0.1)
    print("grant_ttl %ds: last served / first refused, s after the change: %s" % (TTL, {
        name: (round(last_served.get(name, -1), 2), round(refused_at.get(name, -1), 2))
        for name, _, _, _ in cases}))
    for name, _, _, _ in cases:
        assert name in refused_at, "%s: still served %.1f s after the change" % (name, time.monotonic() - t0)
        assert refused_at[name] <= TTL + 2, (name, refused_at[name])
        assert last_served.get(name, 0) <= TTL, (name, last_served.get(name))
        assert first[name] == 200, "%s: the grant stood (the only difference is the delay)" % name


def stop_glance_only(g):
    """SIGTERM Glance's gunicorn master (its Keystone keeps running) and wait until its port
    refuses connections."""
    with open(os.path.join(g.data, "run", "gunicorn.pid")) as f:
        os.kill(int(f.read().strip()), signal.SIGTERM)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", g.port), timeout=1).close()
        except OSError:
            return
        time.sleep(0.2)
    raise AssertionError("Glance did not stop")


def sdk(auth_url, who, proxy):
    import openstack
    return openstack.connection.Connection(
        auth_type="password", auth=password(auth_url, who), image_endpoint_override=proxy.url)


def test_offline_grace_with_glance_stopped(edge_keystone_glance):
    """Last in this module: it stops its Glance."""
    g = edge_keystone_glance
    cfg = config_file('[auth]\noffline_grace = "1h"\n')
    proxy = Proxy(g.url, extra_args=["--config", cfg], metrics=True)
    try:
        w = keystone_world(g, proxy)
        image_id = w.new_image()
        conns = {who: sdk(g.auth_url, who, proxy) for who in ("member", "admin", "reader", "other")}
        # The member downloads it (a miss, verified by the SDK against os_hash_value), twice.
        for _ in range(2):
            assert conns["member"].image.download_image(image_id).content == DATA
        # The others ask once while Glance is up: the reader and the other project are refused.
        for who in ("reader", "other"):
            with pytest.raises(Exception):
                conns[who].image.download_image(image_id)

        stop_glance_only(g)
        got = conns["member"].image.download_image(image_id)
        assert got.content == DATA, "served, and verified by the SDK"
        for who in ("admin", "reader", "other"):  # the admin never downloaded it
            with pytest.raises(Exception):
                conns[who].image.download_image(image_id)
        series = 'glance_cache_proxy_authorization_decisions_total{decision="offline"}'
        assert metric(proxy, series) >= 2, "the record and the data, on the grant"
        with open(proxy.log_path, errors="replace") as f:
            assert "within auth.offline_grace" in f.read(), "each offline hit logs a warning"
    finally:
        proxy.stop()
        os.unlink(cfg)
