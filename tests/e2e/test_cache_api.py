"""The proxy's own image-cache API with the real clients, in front of a real Glance 33 whose
cache is off (the usual deployment): `glance cache-*`, openstacksdk's cache calls and
`openstack cached image ...`. A queued image is prefetched within seconds and then served as a
hit. With Keystone: admin allowed, member 403, bad token 401, with Glance's cache on and off,
and the prefetcher's own Keystone credentials renewed after Glance refuses a revoked token.
"""
import os
import shutil
import tempfile
import time

import openstack
import pytest
import requests

from conftest import Glance, Proxy, free_port
from test_clients import glance_cli, osc

DATA = os.urandom(2 << 20)
NOAUTH = {"X-Auth-Token": "noauth"}
T = 60


@pytest.fixture(scope="module")
def glance_nocache():
    g = Glance({"GLANCE_CACHE": "0"})
    try:
        yield g
    finally:
        g.stop()


@pytest.fixture(scope="module")
def proxy_nocache(glance_nocache):
    p = Proxy(glance_nocache.url)
    try:
        yield p
    finally:
        assert p.stop() == 0, p.tail()


def new_image(base, headers=NOAUTH, name="cache-api", visibility="private"):
    r = requests.post(base + "/v2/images", headers=headers, timeout=T,
                      json={"name": name, "disk_format": "raw", "container_format": "bare",
                            "visibility": visibility})
    assert r.status_code == 201, r.text
    image_id = r.json()["id"]
    r = requests.put("%s/v2/images/%s/file" % (base, image_id), data=DATA, timeout=T,
                     headers=dict(headers, **{"Content-Type": "application/octet-stream"}))
    assert r.status_code == 204, r.text
    return image_id


def state(proxy, headers=NOAUTH):
    r = requests.get(proxy.url + "/v2/cache", headers=headers, timeout=T)
    assert r.status_code == 200, r.text
    return r.json()


def cached(proxy, headers=NOAUTH):
    return [e["image_id"] for e in state(proxy, headers)["cached_images"]]


def wait_cached(proxy, image_id, headers=NOAUTH, timeout=30):
    deadline = time.monotonic() + timeout
    while image_id not in cached(proxy, headers):
        assert time.monotonic() < deadline, "%s not cached in %ss\n%s" % (image_id, timeout, proxy.tail())
        time.sleep(0.1)


def assert_hit(proxy, image_id, headers=NOAUTH):
    r = requests.get("%s/v2/images/%s/file" % (proxy.url, image_id), headers=headers, timeout=T)
    assert r.status_code == 200 and r.content == DATA
    lines = proxy.access_lines(image_id + "/file")
    assert lines and 'cache="hit"' in lines[-1], lines[-1:]


def test_upstream_lacks_the_cache_api_versions_but_the_proxy_lists_them(glance_nocache, proxy_nocache):
    direct = [v["id"] for v in requests.get(glance_nocache.url + "/versions", timeout=T).json()["versions"]]
    assert "v2.14" not in direct, direct
    through = [v["id"] for v in requests.get(proxy_nocache.url + "/versions", timeout=T).json()["versions"]]
    assert {"v2.14", "v2.16", "v2.18"} <= set(through), through
    # Glance itself refuses the /v2.16 prefix with its cache off, and outside the cache API the
    # proxy answers as Glance does (issue 19: version prefixes as Glance answers them) ...
    direct = requests.get(glance_nocache.url + "/v2.16/images?limit=1", headers=NOAUTH, timeout=T)
    r = requests.get(proxy_nocache.url + "/v2.16/images?limit=1", headers=NOAUTH, timeout=T)
    assert direct.status_code == 300 and r.status_code == 300, (direct.status_code, r.status_code)
    # ... while the cache API, the proxy's own, answers under the versions it lists.
    r = requests.get(proxy_nocache.url + "/v2.16/cache", headers=NOAUTH, timeout=T)
    assert r.status_code == 200 and "cached_images" in r.json(), r.text


def test_glance_cli_cache_commands(proxy_nocache, glance_nocache):
    a = new_image(glance_nocache.url)
    b = new_image(glance_nocache.url)
    glance_cli(proxy_nocache, "cache-queue", a, b)
    wait_cached(proxy_nocache, a)
    wait_cached(proxy_nocache, b)
    out = glance_cli(proxy_nocache, "cache-list").stdout
    assert a in out and b in out, out
    assert_hit(proxy_nocache, a)
    glance_cli(proxy_nocache, "cache-delete", a)
    assert cached(proxy_nocache) == [b]
    # --target queue leaves the cache alone; --target cache empties it.
    glance_cli(proxy_nocache, "cache-clear", "--target", "queue")
    assert cached(proxy_nocache) == [b]
    glance_cli(proxy_nocache, "cache-clear", "--target", "cache")
    assert cached(proxy_nocache) == []
    glance_cli(proxy_nocache, "cache-queue", a)
    wait_cached(proxy_nocache, a)
    glance_cli(proxy_nocache, "cache-clear")
    assert state(proxy_nocache) == {"cached_images": [], "queued_images": []}


def test_openstacksdk_cache_calls(proxy_nocache, glance_nocache):
    conn = openstack.connection.Connection(auth_type="none", image_endpoint_override=proxy_nocache.url)
    a = new_image(glance_nocache.url)
    conn.image.queue_image(a)
    wait_cached(proxy_nocache, a)
    listing = conn.image.get_image_cache()
    entries = {e["image_id"]: e for e in listing.cached_images}
    assert entries[a]["size"] == len(DATA)
    assert isinstance(entries[a]["last_modified"], (int, float))
    assert_hit(proxy_nocache, a)
    conn.image.cache_delete_image(a)
    assert a not in cached(proxy_nocache)
    conn.image.cache_delete_image(a, ignore_missing=True)  # cached nowhere now: 404, swallowed
    conn.image.queue_image(a)
    wait_cached(proxy_nocache, a)
    conn.image.clear_cache("queue")
    assert a in cached(proxy_nocache)
    conn.image.clear_cache("cache")
    assert cached(proxy_nocache) == []
    conn.image.queue_image(a)
    wait_cached(proxy_nocache, a)
    conn.image.clear_cache("both")
    assert state(proxy_nocache) == {"cached_images": [], "queued_images": []}


def test_openstack_cli_cache_commands(proxy_nocache, glance_nocache):
    a = new_image(glance_nocache.url)
    osc(proxy_nocache, "cached", "image", "queue", a)
    wait_cached(proxy_nocache, a)
    out = osc(proxy_nocache, "cached", "image", "list").stdout
    assert a in out, out
    assert_hit(proxy_nocache, a)
    osc(proxy_nocache, "cached", "image", "delete", a)
    assert a not in cached(proxy_nocache)
    osc(proxy_nocache, "cached", "image", "queue", a)
    wait_cached(proxy_nocache, a)
    osc(proxy_nocache, "cached", "image", "clear", "--queue")
    assert a in cached(proxy_nocache)
    osc(proxy_nocache, "cached", "image", "clear", "--cache")
    assert cached(proxy_nocache) == []


# === Keystone ===

class KeystoneSite:
    """Glance with Keystone (tokens validated on every request, so revocation is immediate)
    and the proxy in front, its prefetcher authenticating as its own user."""

    def __init__(self, glance_cache):
        from keystoneauth1 import session
        from keystoneauth1.identity import v3

        self.kport = free_port()
        self.auth_url = "http://127.0.0.1:%d/v3" % self.kport
        self.glance = Glance({"GLANCE_AUTH": "keystone", "KEYSTONE_PORT": str(self.kport),
                              "GLANCE_CACHE": glance_cache, "GLANCE_TOKEN_CACHE_TIME": "-1"})
        self.proxy = None
        self.conf_dir = None
        try:
            def sess(user, password, project):
                return session.Session(auth=v3.Password(
                    auth_url=self.auth_url, username=user, password=password, project_name=project,
                    user_domain_name="Default", project_domain_name="Default"))
            self.admin = sess("admin", "admin-pass", "admin")
            # The prefetcher's own user: admin in the service project.
            self.prefetch_user = self._ensure_user("gcp-prefetch", "gcp-prefetch-pass", "service")
            self.token = {
                "admin": self.admin.get_token(),
                "member": sess("demo-member", "demo-member-pass", "demo").get_token(),
                "bad": "gAAAAABinvalid-token",
            }
            # The config holds the prefetcher's password: in a 0700 directory of its own,
            # removed by stop().
            self.conf_dir = tempfile.mkdtemp(prefix="gcp-e2e-prefetch-")
            self.conf = os.path.join(self.conf_dir, "proxy.toml")
            with open(self.conf, "w") as conf:
                conf.write('[prefetch]\nauth_url = "%s"\nusername = "gcp-prefetch"\n'
                           'password = "gcp-prefetch-pass"\nproject_name = "service"\n'
                           'retry_initial = "1s"\nretry_max = "5s"\n' % self.auth_url)
            self.proxy = Proxy(self.glance.url, ["--config", self.conf])
        except BaseException:
            self.stop()
            raise

    def _api(self, method, path, body=None):
        kw = {"json": body} if body is not None else {}
        r = self.admin.request(self.auth_url + path, method, raise_exc=True, **kw)
        return r.json() if r.content else None

    def _ensure_user(self, name, password, project):
        found = self._api("GET", "/users?name=" + name)["users"]
        user = found[0] if found else self._api("POST", "/users", {"user": {
            "name": name, "password": password, "domain_id": "default"}})["user"]
        project_id = self._api("GET", "/projects?name=" + project)["projects"][0]["id"]
        role_id = self._api("GET", "/roles?name=admin")["roles"][0]["id"]
        self._api("PUT", "/projects/%s/users/%s/roles/%s" % (project_id, user["id"], role_id))
        return user["id"]

    def revoke_prefetch_tokens(self):
        """Disable and re-enable the prefetcher's user: Keystone revokes its tokens."""
        for enabled in (False, True):
            self._api("PATCH", "/users/" + self.prefetch_user, {"user": {"enabled": enabled}})

    def headers(self, who):
        return {"X-Auth-Token": self.token[who]}

    def stop(self):
        if self.proxy is not None:
            self.proxy.stop()
        self.glance.stop()
        if self.conf_dir is not None:
            shutil.rmtree(self.conf_dir, ignore_errors=True)


@pytest.fixture(scope="module", params=["0", "1"], ids=["glance-cache-off", "glance-cache-on"])
def site(request):
    s = KeystoneSite(request.param)
    try:
        yield s
    finally:
        s.stop()


def test_keystone_authorization_and_prefetch_credentials(site):
    p = site.proxy
    for method, path in (("GET", "/v2/cache"), ("DELETE", "/v2/cache"),
                         ("POST", "/v2/cache/prune"), ("GET", "/v2/queued_images")):
        got = {who: requests.request(method, p.url + path, headers=site.headers(who), timeout=T).status_code
               for who in ("admin", "member", "bad")}
        assert got["member"] == 403 and got["bad"] == 401, (method, path, got)
        assert 200 <= got["admin"] < 300, (method, path, got)
    # As Glance: an image the member cannot see is 404, one it can see 403.
    private = new_image(site.glance.url, site.headers("admin"), "ks-private")
    r = requests.put("%s/v2/cache/%s" % (p.url, private), headers=site.headers("member"), timeout=T)
    assert r.status_code == 404
    image_id = new_image(site.glance.url, site.headers("admin"), "ks-cache", "public")
    r = requests.put("%s/v2/cache/%s" % (p.url, image_id), headers=site.headers("member"), timeout=T)
    assert r.status_code == 403
    r = requests.put("%s/v2/cache/%s" % (p.url, image_id), headers=site.headers("admin"), timeout=T)
    assert r.status_code == 202, r.text
    wait_cached(p, image_id, site.headers("admin"))
    assert_hit(p, image_id, site.headers("admin"))

    # The prefetcher's token is revoked: Glance refuses it, the proxy obtains a new one.
    issued = lambda: sum(1 for line in open(p.log_path) if "obtained a Keystone token" in line)
    assert issued() == 1
    site.revoke_prefetch_tokens()
    time.sleep(2)  # revocation events are kept to the second: renew strictly after
    second = new_image(site.glance.url, site.headers("admin"), "ks-cache-2")
    r = requests.put("%s/v2/cache/%s" % (p.url, second), headers=site.headers("admin"), timeout=T)
    assert r.status_code == 202, r.text
    wait_cached(p, second, site.headers("admin"))
    assert issued() == 2, p.tail()
