"""Differential authorization test: every image download answers the same status through the
proxy as directly from Glance, for every kind of caller, with the image cold (not cached) and
warm (cached by an admin's download first). Run against the kit's noauth Glance (identity
from X-Project-Id / X-Roles) and its Keystone mode (real tokens; a forged X-Roles must change
nothing). tests/e2e/test_fleet.py runs the same table through two tiers of proxies.
"""
import os
import time

import pytest
import requests

from conftest import Proxy

DATA = os.urandom(1 << 20)
T = 60


class World:
    """One Glance with a proxy in front, and its callers."""

    def __init__(self, glance, proxy, callers, owner):
        self.glance, self.proxy, self.callers, self.owner = glance, proxy, callers, owner

    def call(self, base, who, method, path, **kw):
        headers = dict(self.callers[who])
        headers.update(kw.pop("headers", {}))
        return requests.request(method, base + path, headers=headers, timeout=T, **kw)

    def new_image(self, visibility="private"):
        r = self.call(self.glance.url, self.owner, "POST", "/v2/images",
                      json={"name": "authz", "disk_format": "raw", "container_format": "bare"})
        assert r.status_code == 201, r.text
        image_id = r.json()["id"]
        r = self.call(self.glance.url, self.owner, "PUT", "/v2/images/%s/file" % image_id,
                      data=DATA, headers={"Content-Type": "application/octet-stream"})
        assert r.status_code == 204, r.text
        if visibility != "private":
            who = "admin" if visibility == "public" else self.owner
            r = self.call(self.glance.url, who, "PATCH", "/v2/images/" + image_id,
                          json=[{"op": "replace", "path": "/visibility", "value": visibility}],
                          headers={"Content-Type": "application/openstack-images-v2.1-json-patch"})
            assert r.status_code == 200, r.text
        return image_id

    def download(self, base, who, image_id, extra=None):
        r = self.call(base, who, "GET", "/v2/images/%s/file" % image_id, headers=extra or {})
        if r.status_code == 200:
            assert r.content == DATA, "wrong bytes for %s" % who
        return r.status_code

    def cached(self, image_id):
        return os.path.exists(os.path.join(self.proxy.cache, "c", "images", image_id))

    def prime(self, image_id):
        assert self.download(self.proxy.url, "admin", image_id) == 200
        deadline = time.monotonic() + 30
        while not self.cached(image_id):
            assert time.monotonic() < deadline, "not cached: " + self.proxy.tail()
            time.sleep(0.05)


def noauth_world(glance, proxy):
    project = "noauth-project"
    callers = {
        "admin": {"X-Auth-Token": "noauth"},
        "member": {"X-Auth-Token": "noauth", "X-Project-Id": project, "X-User-Id": "m",
                   "X-Roles": "member,reader"},
        "reader": {"X-Auth-Token": "noauth", "X-Project-Id": project, "X-User-Id": "r",
                   "X-Roles": "reader"},
        "other": {"X-Auth-Token": "noauth", "X-Project-Id": "other-project", "X-User-Id": "o",
                  "X-Roles": "member,reader"},
    }
    w = World(glance, proxy, callers, "member")
    w.other_project = "other-project"
    return w


def keystone_world_over(glance, proxy):
    """A World for the Keystone Glance (conftest's `keystone_glance`) behind `proxy`, with
    real tokens for each kind of caller."""
    from keystoneauth1 import session
    from keystoneauth1.identity import v3

    auth_url = "http://127.0.0.1:%d/v3" % glance.keystone_port
    sessions = {}
    for user, project in (("admin", "admin"), ("demo-member", "demo"),
                          ("demo-reader", "demo"), ("other-member", "other")):
        sessions[user] = session.Session(auth=v3.Password(
            auth_url=auth_url, username=user, password=user + "-pass",
            project_name=project, user_domain_name="Default", project_domain_name="Default"))
    token = {u: s.get_token() for u, s in sessions.items()}
    callers = {
        "admin": {"X-Auth-Token": token["admin"]},
        "member": {"X-Auth-Token": token["demo-member"]},
        "reader": {"X-Auth-Token": token["demo-reader"]},
        "other": {"X-Auth-Token": token["other-member"]},
    }
    w = World(glance, proxy, callers, "member")
    w.other_project = sessions["other-member"].get_project_id()
    w.demo_project = sessions["demo-member"].get_project_id()
    return w


@pytest.fixture(scope="session")
def keystone_world(keystone_glance):
    p = Proxy(keystone_glance.url)
    try:
        yield keystone_world_over(keystone_glance, p)
    finally:
        p.stop()


@pytest.fixture(params=["noauth", "keystone"])
def world(request, glance, proxy):
    if request.param == "noauth":
        return noauth_world(glance, proxy)
    return request.getfixturevalue("keystone_world")


def both(w, who, image_id, extra=None):
    """(direct status, proxy status)"""
    return (w.download(w.glance.url, who, image_id, extra),
            w.download(w.proxy.url, who, image_id, extra))


@pytest.mark.parametrize("who,visibility,expected", [
    ("admin", "private", 200),
    ("member", "private", 200),
    ("reader", "private", 403),   # may see the image, may not download it (download_image)
    ("other", "private", 404),
    ("other", "public", 200),
])
def test_same_answer_cold_and_warm(world, who, visibility, expected):
    cold = world.new_image(visibility)
    assert both(world, who, cold) == (expected, expected)
    warm = world.new_image(visibility)
    world.prime(warm)
    assert both(world, who, warm) == (expected, expected)
    assert world.cached(warm), "a refused caller must not evict a good entry"


def test_shared_image_member(world):
    for state in ("cold", "warm"):
        image_id = world.new_image("shared")
        r = world.call(world.glance.url, "member", "POST", "/v2/images/%s/members" % image_id,
                       json={"member": world.other_project})
        assert r.status_code == 200, r.text
        r = world.call(world.glance.url, "other", "PUT",
                       "/v2/images/%s/members/%s" % (image_id, world.other_project),
                       json={"status": "accepted"})
        assert r.status_code == 200, r.text
        if state == "warm":
            world.prime(image_id)
        assert both(world, "other", image_id) == (200, 200), state
        # Not a member: still hidden.
        assert both(world, "reader", image_id) == (403, 403), state


def test_deactivated_image(world):
    for state in ("cold", "warm"):
        image_id = world.new_image()
        if state == "warm":
            world.prime(image_id)
        r = world.call(world.glance.url, "admin", "POST", "/v2/images/%s/actions/deactivate" % image_id)
        assert r.status_code == 204, r.text
        assert both(world, "member", image_id) == (403, 403), state
        assert both(world, "admin", image_id) == (200, 200), state


def test_deleted_image_is_404_and_evicted(world):
    image_id = world.new_image()
    world.prime(image_id)
    r = world.call(world.glance.url, "member", "DELETE", "/v2/images/" + image_id)
    assert r.status_code == 204, r.text  # deleted behind the proxy's back
    assert both(world, "admin", image_id) == (404, 404)
    assert not world.cached(image_id)


def test_forged_identity_headers_change_nothing(keystone_world):
    w = keystone_world
    image_id = w.new_image()
    w.prime(image_id)
    forged = {"X-Roles": "admin,member,reader", "X-Project-Id": w.demo_project,
              "X-Identity-Status": "Confirmed", "X-User-Id": "admin"}
    assert both(w, "reader", image_id, forged) == (403, 403)
    assert both(w, "other", image_id, dict(forged, **{"X-Project-Id": w.demo_project})) == (404, 404)
    bad = {"X-Auth-Token": "gAAAAABinvalid-token"}
    assert (requests.get("%s/v2/images/%s/file" % (w.glance.url, image_id), headers=bad, timeout=T).status_code,
            requests.get("%s/v2/images/%s/file" % (w.proxy.url, image_id), headers=bad, timeout=T).status_code) == (401, 401)
