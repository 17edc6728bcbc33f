"""Fleet topologies end to end (README "Fleet topologies"), a real Glance on 127.0.0.1:

- two tiers: three node proxies -> one site proxy -> Glance. A chain's revocation bound is the
  sum of its windows, or the node's own with `upstream.max_age = "0s"`. Each image crosses Glance once,
  a second round is served from the nodes' own caches, the cache API at a node answers for
  that node, and a node whose site proxy is down fails over to Glance; the differential
  authorization table of test_authz.py (noauth and a real Keystone) passes through both
  tiers, each asking Glance with the caller's own credentials.
- the large-fleet layout: six node proxies -> HAProxy (Debian's, with deploy/haproxy/haproxy.cfg,
  addresses replaced by loopback ports: bounded-load consistent hashing) -> three site proxies
  -> a parent proxy -> Glance (through a throttled relay, so a transfer lasts long enough to
  overlap others or be cut). One image pulled by every node at once is served by several site
  proxies while Glance sends it once; images pulled one after another stay on their site
  proxies; clients on all nodes at once make one Glance download per image; a site proxy
  SIGKILLed mid-transfer makes its clients' transfers abort (never a complete wrong body), the
  retry succeeds through another site proxy, and no node caches a wrong byte; a site proxy
  drained through HAProxy's runtime API finishes its transfer, gets no new request and stops
  cleanly (the upgrade procedure).
"""
import concurrent.futures
import hashlib
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time

import pytest
import requests

import test_authz
from conftest import ROOT, Proxy, Relay, free_port, wait_http
# The authorization table, run here through two tiers (the `world` and `keystone_world`
# fixtures below replace test_authz's).
from test_authz import (World, noauth_world, test_deactivated_image,  # noqa: F401
                        test_forged_identity_headers_change_nothing, test_same_answer_cold_and_warm,
                        test_shared_image_member)

NOAUTH = {"X-Auth-Token": "noauth"}
T = 60
MIB = 1 << 20
HAPROXY_CFG = os.path.join(ROOT, "deploy", "haproxy", "haproxy.cfg")
HAPROXY = shutil.which("haproxy") or "/usr/sbin/haproxy"
# Glance -> the parent proxy in the large-fleet layout: bytes per second per connection.
RELAY_RATE = 16 * MIB


# -- helpers ---------------------------------------------------------------------------------

def new_image(glance, data):
    r = requests.post(glance.url + "/v2/images", headers=NOAUTH, timeout=T,
                      json={"name": "fleet", "disk_format": "raw", "container_format": "bare"})
    assert r.status_code == 201, r.text
    image_id = r.json()["id"]
    r = requests.put("%s/v2/images/%s/file" % (glance.url, image_id), data=data, timeout=T,
                     headers=dict(NOAUTH, **{"Content-Type": "application/octet-stream"}))
    assert r.status_code == 204, r.text
    return image_id


def glance_serves(glance, image_id, size):
    """How many times Glance sent this image's whole data (its access log; gunicorn writes a
    line just after the response, so give it a moment)."""
    pattern = r'"GET [^"]*%s/file HTTP/1\.1" 200 %d ' % (image_id, size)
    time.sleep(0.3)
    return len(re.findall(pattern, glance.access_log()))


def full_sends(proxy, image_id, size):
    """How many times the proxy sent this image's whole data (its access log)."""
    return sum(" status=200 bytes=%d " % size in l for l in proxy.access_lines(image_id + "/file"))


def glance_calls(glance, image_id):
    """Glance's access-log lines that name the image."""
    time.sleep(0.3)
    return [l for l in glance.access_log().splitlines() if image_id in l]


def cache_file(proxy, image_id):
    return os.path.join(proxy.cache, "c", "images", image_id)


def holds(proxy, image_id):
    return os.path.exists(cache_file(proxy, image_id))


def wait_held(proxies, image_id, timeout=30):
    deadline = time.monotonic() + timeout
    for p in proxies:
        while not holds(p, image_id):
            assert time.monotonic() < deadline, "not cached: %s\n%s" % (image_id, p.tail())
            time.sleep(0.05)


def metric(proxy, prefix):
    """Sum of the proxy's series whose line starts with prefix."""
    page = requests.get(proxy.metrics_url + "/metrics", timeout=T).text
    return sum(float(line.rsplit(" ", 1)[1]) for line in page.splitlines() if line.startswith(prefix))


SERVED_FROM_CACHE = 'glance_cache_proxy_served_bytes_total{source="cache"}'
HITS = 'glance_cache_proxy_image_requests_total{outcome="hit"'


def download(proxy, image_id, headers=NOAUTH):
    r = requests.get("%s/v2/images/%s/file" % (proxy.url, image_id), headers=headers, timeout=T)
    return r.status_code, r.content


def all_at_once(proxies, image_id):
    """Every proxy's client downloads the image at the same time: [(status, body)]."""
    with concurrent.futures.ThreadPoolExecutor(len(proxies)) as pool:
        return list(pool.map(lambda p: download(p, image_id), proxies))


def cached_ids(proxy):
    r = requests.get(proxy.url + "/v2/cache", headers=NOAUTH, timeout=T)
    assert r.status_code == 200, r.text
    return {e["image_id"] for e in r.json()["cached_images"]}


def stop_all(proxies):
    codes = {}
    for p in proxies:
        codes[p.url] = p.stop()
    return codes


# -- two tiers: nodes -> site -> Glance -----------------------------------------------------

@pytest.fixture(scope="module")
def tiers(glance):
    """(site, [node0, node1, node2]): the site proxy in front of the session's Glance, three
    node proxies in front of the site proxy; metrics on for all."""
    started = []
    try:
        site = Proxy(glance.url, metrics=True)
        started.append(site)
        for _ in range(3):
            started.append(Proxy(site.url, metrics=True))
        yield started[0], started[1:]
    finally:
        codes = stop_all(started)
        assert set(codes.values()) <= {0}, codes


def test_each_image_crosses_glance_once_then_nodes_serve_their_own(glance, tiers):
    site, nodes = tiers
    data = os.urandom(8 * MIB)
    image_id = new_image(glance, data)
    # Round 1: a client on every node at once; the site tier coalesces the nodes' misses.
    assert all_at_once(nodes, image_id) == [(200, data)] * 3
    assert glance_serves(glance, image_id, len(data)) == 1
    wait_held([site] + nodes, image_id)
    # Round 2: from each node's own cache (the site sends only the one-byte probes).
    node_bytes = [metric(n, SERVED_FROM_CACHE) for n in nodes]
    site_bytes = metric(site, 'glance_cache_proxy_served_bytes_total')
    calls = glance_calls(glance, image_id)
    assert all_at_once(nodes, image_id) == [(200, data)] * 3
    # What a hit at a node still asks Glance, with the caller's token: one question, the
    # one-byte download probe (the node's probe is a hit at the site, which asks Glance its
    # own; each head names the image's size and md5, so no record is asked).
    calls = glance_calls(glance, image_id)[len(calls):]
    assert len(calls) == 3, calls
    assert sum('/file HTTP/1.1" 206 1 ' in l for l in calls) == 3, calls
    for n, before in zip(nodes, node_bytes):
        assert metric(n, SERVED_FROM_CACHE) - before == len(data), n.tail()
        assert 'cache="hit"' in n.access_lines(image_id + "/file")[-1]
    assert metric(site, 'glance_cache_proxy_served_bytes_total') - site_bytes < 1024
    assert glance_serves(glance, image_id, len(data)) == 1


def test_a_node_miss_is_the_site_hit(glance, tiers):
    site, nodes = tiers
    data = os.urandom(4 * MIB)
    image_id = new_image(glance, data)
    assert download(nodes[0], image_id) == (200, data)
    wait_held([site], image_id)
    hits = metric(site, HITS)
    for n in nodes[1:]:
        assert download(n, image_id) == (200, data)
        assert 'cache="miss"' in n.access_lines(image_id + "/file")[-1]
    assert metric(site, HITS) - hits == 2
    assert glance_serves(glance, image_id, len(data)) == 1


def test_cache_api_at_a_node_answers_for_that_node(glance, tiers):
    site, nodes = tiers
    data = os.urandom(1 * MIB)
    image_id = new_image(glance, data)
    assert download(nodes[0], image_id) == (200, data)
    wait_held([nodes[0], site], image_id)
    assert image_id in cached_ids(nodes[0])
    assert image_id not in cached_ids(nodes[1])
    assert image_id in cached_ids(site)
    # Deleting at a node removes that node's copy only.
    r = requests.delete("%s/v2/cache/%s" % (nodes[0].url, image_id), headers=NOAUTH, timeout=T)
    assert r.status_code == 204, r.text
    assert image_id not in cached_ids(nodes[0]) and not holds(nodes[0], image_id)
    assert image_id in cached_ids(site) and holds(site, image_id)


def test_a_node_goes_to_glance_while_its_site_proxy_is_down(glance):
    """upstream.urls = [site, Glance] at a node: a stopped site proxy (an upgrade) is a
    refused connection, and the node fails over to Glance."""
    started = [Proxy(glance.url)]
    try:
        site = started[0]
        started.append(Proxy(site.url, extra_args=["--upstream", glance.url]))
        node = started[1]
        data = os.urandom(1 * MIB)
        image_id = new_image(glance, data)
        assert site.stop() == 0
        assert download(node, image_id) == (200, data)
        wait_held([node], image_id)
        assert download(node, image_id) == (200, data)
    finally:
        codes = stop_all(started)
        assert set(codes.values()) <= {0}, codes


# -- the authorization table through two tiers ----------------------------------------------

def test_a_chains_revocation_bound_is_one_window_with_max_age_0(glance):
    """The windows of a chain add up (a node's grant on a site's answer that was itself a
    grant), unless the node says `upstream.max_age = "0s"`: then the site asks Glance for the
    node's questions, and a revocation reaches the node within its own grant_ttl."""
    owner = dict(NOAUTH, **{"X-Project-Id": "noauth-project", "X-User-Id": "o",
                            "X-Roles": "member,reader"})
    member = dict(NOAUTH, **{"X-Project-Id": "fleet-other", "X-User-Id": "m",
                             "X-Roles": "member,reader"})
    r = requests.post(glance.url + "/v2/images", headers=owner, timeout=T,
                      json={"name": "revoked", "disk_format": "raw", "container_format": "bare"})
    assert r.status_code == 201, r.text
    image_id = r.json()["id"]
    data = os.urandom(MIB)
    r = requests.put("%s/v2/images/%s/file" % (glance.url, image_id), data=data, timeout=T,
                     headers=dict(owner, **{"Content-Type": "application/octet-stream"}))
    assert r.status_code == 204, r.text
    r = requests.post("%s/v2/images/%s/members" % (glance.url, image_id), headers=owner,
                      timeout=T, json={"member": "fleet-other"})
    assert r.status_code == 200, r.text
    r = requests.put("%s/v2/images/%s/members/fleet-other" % (glance.url, image_id),
                     headers=member, timeout=T, json={"status": "accepted"})
    assert r.status_code == 200, r.text
    confs = tempfile.mkdtemp(prefix="gcp-e2e-maxage-")
    started = []
    try:
        def proxy(upstream, text):
            path = os.path.join(confs, "%d.toml" % len(started))
            with open(path, "w") as f:
                f.write(text)
            p = Proxy(upstream, extra_args=["--config", path])
            started.append(p)
            return p
        site = proxy(glance.url, '[auth]\ngrant_ttl = "60s"\n')
        plain = proxy(site.url, '[auth]\ngrant_ttl = "2s"\n')
        fresh = proxy(site.url, '[auth]\ngrant_ttl = "2s"\n[upstream]\nmax_age = "0s"\n')
        for node in (plain, fresh):
            assert download(node, image_id, member) == (200, data)
            wait_held([node], image_id)
        r = requests.delete("%s/v2/images/%s/members/fleet-other" % (glance.url, image_id),
                            headers=owner, timeout=T)
        assert r.status_code == 204, r.text
        assert requests.get("%s/v2/images/%s/file" % (glance.url, image_id), headers=member,
                            timeout=T).status_code == 404
        time.sleep(2.5)  # past the nodes' grant_ttl, well within the site's
        # The windows add up: the plain node asks the site, which answers on its own grant.
        assert download(plain, image_id, member) == (200, data)
        # max-age=0: the site asks Glance for this node's question, and Glance's 404 comes back.
        status, body = download(fresh, image_id, member)
        assert status == 404 and data[:4096] not in body
    finally:
        codes = stop_all(started)
        shutil.rmtree(confs, ignore_errors=True)
        assert set(codes.values()) <= {0}, codes


class TwoTierWorld(World):
    """test_authz's World with `proxy` a node proxy in front of `site`: an image counts as
    cached only when both tiers hold it."""

    def __init__(self, world, site):
        super().__init__(world.glance, world.proxy, world.callers, world.owner)
        self.__dict__.update({k: v for k, v in world.__dict__.items() if k not in self.__dict__})
        self.site = site

    def cached(self, image_id):
        return holds(self.proxy, image_id) and holds(self.site, image_id)


@pytest.fixture(scope="module")
def noauth_two_tier(glance, tiers):
    site, nodes = tiers
    return TwoTierWorld(noauth_world(glance, nodes[0]), site)


@pytest.fixture(scope="module")
def keystone_world(keystone_glance):
    """The Keystone world of test_authz, through a node proxy and a site proxy."""
    started = []
    try:
        site = Proxy(keystone_glance.url)
        started.append(site)
        node = Proxy(site.url)
        started.append(node)
        yield TwoTierWorld(test_authz.keystone_world_over(keystone_glance, node), site)
    finally:
        codes = stop_all(started)
        assert set(codes.values()) <= {0}, codes


@pytest.fixture(params=["noauth", "keystone"])
def world(request):
    if request.param == "noauth":
        return request.getfixturevalue("noauth_two_tier")
    return request.getfixturevalue("keystone_world")


def test_deleted_image_is_404_and_evicted_at_both_tiers(world):
    image_id = world.new_image()
    world.prime(image_id)
    r = world.call(world.glance.url, "member", "DELETE", "/v2/images/" + image_id)
    assert r.status_code == 204, r.text
    assert test_authz.both(world, "admin", image_id) == (404, 404)
    assert not holds(world.proxy, image_id) and not holds(world.site, image_id)


# -- the large-fleet layout: nodes -> HAProxy -> site proxies -> parent -> Glance ------------

class ThrottledRelay(Relay):
    """conftest's recording relay, sending upstream -> client at most RELAY_RATE bytes per
    second per connection."""

    def _pump(self, src, dst, rec):
        if rec is not None:
            return super()._pump(src, dst, rec)
        start, sent = time.monotonic(), 0
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                dst.sendall(data)
                sent += len(data)
                ahead = sent / RELAY_RATE - (time.monotonic() - start)
                if ahead > 0:
                    time.sleep(ahead)
        except OSError:
            pass
        finally:
            for s in (dst, src):
                try:
                    s.shutdown(2)
                except OSError:
                    pass


def haproxy_config(port, sites, admin_sock):
    """deploy/haproxy/haproxy.cfg with its listener on 127.0.0.1:port, one server line per
    site proxy (health checks on its metrics port) and the runtime API on admin_sock; no
    syslog."""
    with open(HAPROXY_CFG) as f:
        lines = f.read().splitlines()
    assert sum(l.strip().startswith("bind ") for l in lines) == 1
    assert sum(l.strip().startswith("server ") for l in lines) >= 2
    out = []
    for line in lines:
        s = line.strip()
        if s.startswith("log /dev/log") or s.startswith("server "):
            continue
        if s.startswith("stats socket "):
            line = line.replace(s.split()[2], admin_sock)
        out.append("    bind 127.0.0.1:%d" % port if s.startswith("bind ") else line)
    assert lines[-1].strip().startswith("server "), "server lines end the file"
    for i, p in enumerate(sites, 1):
        out.append("    server site%d 127.0.0.1:%d port %s" % (i, p.port, p.metrics_url.rsplit(":", 1)[1]))
    return "\n".join(out) + "\n"


class Sharded:
    """Glance -> throttled relay -> a parent proxy -> `sites` site proxies -> HAProxy (the
    shipped haproxy.cfg) -> `nodes` node proxies."""

    def __init__(self, glance, nodes=6, sites=3):
        self.relay = ThrottledRelay(glance.port)
        self.parent, self.sites, self.nodes, self.killed = None, [], [], set()
        self.dir = tempfile.mkdtemp(prefix="gcp-e2e-haproxy-")
        self.haproxy = self.log = None
        try:
            self._start(nodes, sites)
        except BaseException:
            self.stop()  # what did start
            raise

    def _start(self, nodes, sites):
        self.parent = Proxy(self.relay.url, metrics=True)
        for _ in range(sites):
            self.sites.append(Proxy(self.parent.url, metrics=True))
        port = free_port()
        cfg = os.path.join(self.dir, "haproxy.cfg")
        self.admin_sock = os.path.join(self.dir, "admin.sock")
        with open(cfg, "w") as f:
            f.write(haproxy_config(port, self.sites, self.admin_sock))
        self.log = open(os.path.join(self.dir, "haproxy.log"), "w")
        self.haproxy = subprocess.Popen([HAPROXY, "-db", "-f", cfg], stdin=subprocess.DEVNULL,
                                        stdout=self.log, stderr=subprocess.STDOUT)
        self.url = "http://127.0.0.1:%d" % port
        try:
            wait_http(self.url + "/versions", proc=self.haproxy)
        except RuntimeError as e:
            with open(self.log.name) as f:
                raise RuntimeError("haproxy: %s\n%s" % (e, f.read()[-3000:])) from None
        for _ in range(nodes):
            self.nodes.append(Proxy(self.url, metrics=True))

    def admin(self, command):
        """One command to HAProxy's runtime API; its answer."""
        with socket.socket(socket.AF_UNIX) as sock:
            sock.settimeout(10)
            sock.connect(self.admin_sock)
            sock.sendall(command.encode() + b"\n")
            out = b""
            while True:
                data = sock.recv(65536)
                if not data:
                    return out.decode()
                out += data

    def kill(self, site):
        site.kill()
        self.killed.add(site.url)

    def stop(self):
        codes = stop_all(self.nodes)
        if self.haproxy is not None and self.haproxy.poll() is None:
            self.haproxy.send_signal(signal.SIGTERM)
            self.haproxy.wait(timeout=20)
        if self.log is not None:
            self.log.close()
        codes.update({url: code for url, code in stop_all(self.sites).items() if url not in self.killed})
        if self.parent is not None:
            codes.update(stop_all([self.parent]))
        self.relay.close()
        shutil.rmtree(self.dir, ignore_errors=True)
        return codes


@pytest.fixture(scope="module")
def sharded(glance):
    s = None
    try:
        s = Sharded(glance)
        yield s
    finally:
        if s is not None:
            codes = s.stop()
            assert set(codes.values()) <= {0}, codes


def test_sharded_site_tier_one_glance_download_per_image(glance, sharded):
    images = {}
    for _ in range(4):
        data = os.urandom(4 * MIB)
        images[new_image(glance, data)] = data
    with concurrent.futures.ThreadPoolExecutor(12) as pool:
        jobs = {(i, n.url): pool.submit(download, n, i) for i in images for n in sharded.nodes}
        for (image_id, _), job in jobs.items():
            assert job.result() == (200, images[image_id])
    for image_id, data in images.items():
        assert glance_serves(glance, image_id, len(data)) == 1
        wait_held(sharded.nodes, image_id)
        # The site proxies that took the image (its own, and its ring neighbours while that
        # one was loaded) each fetched it once from the parent.
        takers = [s for s in sharded.sites if full_sends(s, image_id, len(data))]
        assert takers and full_sends(sharded.parent, image_id, len(data)) == len(takers)


def test_one_image_to_every_node_at_once_spreads_over_the_site_tier(glance, sharded):
    """Issue 27: a storm of one image goes to several site proxies (HAProxy's bounded loads)
    and still crosses Glance once (the parent)."""
    data = os.urandom(32 * MIB)  # 2 s through the throttled relay: the downloads overlap
    image_id = new_image(glance, data)
    served = [metric(s, "glance_cache_proxy_served_bytes_total") for s in sharded.sites]
    assert all_at_once(sharded.nodes, image_id) == [(200, data)] * len(sharded.nodes)
    assert glance_serves(glance, image_id, len(data)) == 1
    # Whole copies each site proxy sent (its access log, waited for), and its image bytes.
    sends = [full_sends(s, image_id, len(data)) for s in sharded.sites]
    served = [metric(s, "glance_cache_proxy_served_bytes_total") - b for s, b in zip(sharded.sites, served)]
    assert sum(sends) == len(sharded.nodes), sends
    assert served == [n * len(data) for n in sends], (served, sends)
    takers = sum(n > 0 for n in sends)
    assert takers >= 2, sends
    # Each of them fetched it once from the parent, which fetched it once from Glance.
    assert full_sends(sharded.parent, image_id, len(data)) == takers


def test_images_one_after_another_stay_on_their_site_proxies(glance, sharded):
    """Issue 27: without overlapping transfers every image goes to the site proxy it hashes
    to, so a second node's pulls are that site proxy's hits: no new download from the
    parent."""
    images = {}
    for _ in range(6):
        data = os.urandom(2 * MIB)
        images[new_image(glance, data)] = data
    first, second = sharded.nodes[0], sharded.nodes[1]
    for image_id, data in images.items():
        assert download(first, image_id) == (200, data)
    owners = {}
    deadline = time.monotonic() + 30
    for image_id in images:
        while not [s for s in sharded.sites if holds(s, image_id)]:
            assert time.monotonic() < deadline, "no site proxy holds " + image_id
            time.sleep(0.05)
        held = [s for s in sharded.sites if holds(s, image_id)]
        assert len(held) == 1, (image_id, [s.url for s in held])
        owners[image_id] = held[0]
    parent_bytes = metric(sharded.parent, "glance_cache_proxy_served_bytes_total")
    for image_id, data in images.items():
        assert download(second, image_id) == (200, data)
        assert 'cache="hit"' in owners[image_id].access_lines(image_id + "/file")[-1]
    # The parent sent only the site proxies' one-byte probes.
    assert metric(sharded.parent, "glance_cache_proxy_served_bytes_total") - parent_bytes < 1024
    for image_id, data in images.items():
        assert [s for s in sharded.sites if holds(s, image_id)] == [owners[image_id]]
        assert full_sends(sharded.parent, image_id, len(data)) == 1
        assert glance_serves(glance, image_id, len(data)) == 1


def test_drain_a_site_proxy_for_an_upgrade(glance):
    """README "Upgrading a tier": drain a site proxy through HAProxy's runtime API while it
    serves an image; the transfer in flight finishes, new requests go to the other site
    proxy, the drained one stops with status 0 and nobody sees a failure."""
    s = Sharded(glance, nodes=2)
    try:
        data = os.urandom(32 * MIB)  # 2 s through the throttled relay
        image_id = new_image(glance, data)
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            first = pool.submit(download, s.nodes[0], image_id)
            deadline = time.monotonic() + 30
            while True:
                filling = [p for p in s.sites if os.listdir(os.path.join(p.cache, "c", "tmp"))]
                if filling:
                    break
                assert time.monotonic() < deadline, "no site proxy fills the image"
                time.sleep(0.05)
            name = "site%d" % (s.sites.index(filling[0]) + 1)
            assert s.admin("set server glance_sites/%s state drain" % name).strip() == ""
            assert first.result() == (200, data)
        drained, others = filling[0], [p for p in s.sites if p is not filling[0]]
        deadline = time.monotonic() + 10
        while not drained.access_lines(image_id + "/file"):  # written as the body ends
            assert time.monotonic() < deadline, drained.tail()
            time.sleep(0.05)
        before = len(drained.access_lines(image_id))
        assert download(s.nodes[1], image_id) == (200, data)
        assert len(drained.access_lines(image_id)) == before, "a drained site proxy got a request"
        assert any(p.access_lines(image_id + "/file") for p in others)
        assert drained.stop() == 0
        s.killed.add(drained.url)  # stopped already
        for n in s.nodes:
            assert download(n, image_id) == (200, data)
    finally:
        codes = s.stop()
        assert set(codes.values()) <= {0}, codes


def test_site_proxy_killed_mid_transfer(glance, sharded):
    data = os.urandom(64 * MIB)
    digest = hashlib.sha256(data).hexdigest()
    image_id = new_image(glance, data)
    outs = [os.path.join(sharded.dir, "out.%d" % i) for i in range(len(sharded.nodes))]
    curls = [subprocess.Popen(["curl", "-sS", "-o", out, "-H", "X-Auth-Token: noauth",
                               "%s/v2/images/%s/file" % (n.url, image_id)],
                              stdin=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
             for n, out in zip(sharded.nodes, outs)]
    try:
        # A site proxy that fills the image (bounded loads spread the six over several),
        # once every client has some of it.
        deadline = time.monotonic() + 30
        while True:
            filling = [s for s in sharded.sites if os.listdir(os.path.join(s.cache, "c", "tmp"))]
            sizes = [os.path.getsize(o) if os.path.exists(o) else 0 for o in outs]
            if filling and min(sizes) >= 2 * MIB:
                break
            assert time.monotonic() < deadline, (filling, sizes)
            time.sleep(0.05)
        sharded.kill(filling[0])
        codes = [c.wait(timeout=T) for c in curls]
    finally:
        for c in curls:
            if c.poll() is None:
                c.kill()
                c.wait()
    # The killed site proxy's clients: aborted (curl 18: partial file; 56: receive failure),
    # never complete; the other site proxies' clients: complete and byte-exact.
    assert set(codes) <= {0, 18, 56} and {18, 56} & set(codes), codes
    for code, out, n in zip(codes, outs, sharded.nodes):
        if code:
            assert os.path.getsize(out) < len(data)
            # The cut fill was not published at that node.
            assert not holds(n, image_id), n.url
        else:
            with open(out, "rb") as f:
                assert hashlib.sha256(f.read()).hexdigest() == digest, "wrong body through " + n.url
    # The retry goes to another site proxy (HAProxy redispatches the refused connection,
    # then marks the dead one down), and every node ends up with the right bytes cached.
    for n in sharded.nodes:
        assert download(n, image_id) == (200, data), n.tail()
    wait_held(sharded.nodes, image_id)
    for n in sharded.nodes:
        with open(cache_file(n, image_id), "rb") as f:
            assert hashlib.sha256(f.read()).hexdigest() == digest, "wrong bytes cached at " + n.url
        assert metric(n, 'glance_cache_proxy_fills_total{result="hash_mismatch"}') == 0
    alive = [s for s in sharded.sites if s.url not in sharded.killed]
    assert any(holds(s, image_id) for s in alive)
