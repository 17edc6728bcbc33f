"""Hostile clients (issue 19, acceptance 8): the probe's attack list against a real Glance 33,
kept so that each finding stays closed.

The oracle is Glance itself, with its image cache off (the normal deployment behind the
proxy): every hostile request goes once straight to Glance and once through the proxy, with
the same identity (noauth: X-Project-Id / X-Roles), and the statuses must be the same, except
where the proxy is meant to answer for itself (asterisk and authority targets, a client's
broken upload: 400, never 502). Throughout:
  - no image byte to a refused identity (another project's member, a reader of the owner's
    project who may not download);
  - the image under attack stays cached (no refill) and its cached file is the image's bytes;
  - glance_cache_proxy_upstream_up stays 1 (a client fault never blames Glance), and the
    proxy never answers 502/504.
Stalled readers (point 2) are covered by the Rust tests (tests/hostile.rs and the send-timeout
tests), not here.

The table of every comparison (request, caller, Glance's status, the proxy's) is printed at
the end of the module (`scripts/e2e.sh tests/e2e/test_hostile.py -s`) and with any failure.
"""
import hashlib
import http.client
import os
import re
import socket
import time

import glanceclient
import pytest

from conftest import Glance, Proxy, Relay

T = 30
DATA = os.urandom(1 << 20)
SHA256 = hashlib.sha256(DATA).hexdigest()
MD5 = hashlib.md5(DATA).hexdigest()
PROJECT, OTHER = "noauth-project", "other-project"
CALLERS = {
    "admin": {"X-Auth-Token": "noauth"},  # noauth: no X-Roles = admin of noauth-project
    "member": {"X-Auth-Token": "noauth", "X-Project-Id": PROJECT, "X-User-Id": "m",
               "X-Roles": "member,reader"},
    "reader": {"X-Auth-Token": "noauth", "X-Project-Id": PROJECT, "X-User-Id": "r",
               "X-Roles": "reader"},
    "other": {"X-Auth-Token": "noauth", "X-Project-Id": OTHER, "X-User-Id": "o",
              "X-Roles": "member,reader"},
}
REFUSED = ("reader", "other")  # may not download the owner's private image
V21 = "application/vnd.openstack.images-v2.1"
EVIL = {"Forwarded": "for=203.0.113.9;host=evil.example;proto=https",
        "X-Forwarded-Prefix": "/evil", "X-Forwarded-Host": "evil.example",
        "X-Forwarded-Proto": "https", "X-Forwarded-Port": "443",
        "X-Forwarded-Server": "evil.example", "X-Forwarded-For": "203.0.113.9"}

# Any 32 bytes of DATA contain one of these 16-byte windows: a leak of 32 bytes or more of
# the image in a response body is found wherever it starts.
WINDOW = 16
WINDOWS = {DATA[i:i + WINDOW] for i in range(0, len(DATA) - WINDOW + 1, WINDOW)}

# Every comparison of the run: (point, request, caller, Glance, proxy, parity expected).
ROWS = []


def leaks(body):
    return any(body[i:i + WINDOW] in WINDOWS for i in range(len(body) - WINDOW + 1))


def table(rows=None):
    rows = ROWS if rows is None else rows
    out = ["%-3s %-64s %-7s %-9s %-9s" % ("pt", "request", "caller", "glance", "proxy")]
    for point, what, who, g, p, parity in rows:
        mark = "" if g in (p, "-") else ("   <-- differs" if parity else "   (the proxy's own answer)")
        out.append("%-3s %-64s %-7s %-9s %-9s%s" % (point, what[:64], who, g, p, mark))
    return "\n".join(out)


def send(base, method, target, headers=(), body=None):
    """One request with http.client, the target exactly as given (no normalization);
    headers: a dict or a list of (name, value) pairs (repeated names allowed).
    Returns (status, headers, body)."""
    host, port = base.split("//")[1].rsplit(":", 1)
    c = http.client.HTTPConnection(host, int(port), timeout=T)
    try:
        c.putrequest(method, target, skip_accept_encoding=True)
        pairs = headers.items() if isinstance(headers, dict) else headers
        for k, v in pairs:
            c.putheader(k, v)
        if body is not None:
            c.putheader("Content-Length", str(len(body)))
        c.endheaders(body)
        r = c.getresponse()
        return r.status, r.getheaders(), r.read()
    finally:
        c.close()


def raw(port, data, timeout=10, half_close=False):
    """Send bytes on a new connection and read until the server closes it."""
    buf = b""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(data)
        if half_close:
            s.shutdown(socket.SHUT_WR)
        try:
            while True:
                d = s.recv(65536)
                if not d:
                    break
                buf += d
        except socket.timeout:
            buf += b"\0timeout"
        except ConnectionResetError:
            buf += b"\0reset"
    return buf


def raw_status(answer):
    m = re.match(rb"HTTP/1\.[01] (\d{3}) ", answer)
    if m:
        return int(m.group(1))
    return "timeout" if answer.endswith(b"\0timeout") else "closed"


class World:
    def __init__(self, glance, proxy):
        self.glance, self.proxy = glance, proxy

    # -- images --------------------------------------------------------------------------

    def new_image(self, data=DATA, who="member"):
        """A private image of noauth-project (created straight at Glance); data=None:
        queued, no data."""
        h = dict(CALLERS[who], **{"Content-Type": "application/json"})
        status, _, body = send(self.glance.url, "POST", "/v2/images", h,
                               b'{"name": "hostile", "disk_format": "raw", "container_format": "bare"}')
        assert status == 201, body
        image_id = re.search(rb'"id": "([^"]+)"', body).group(1).decode()
        if data is not None:
            status, _, body = send(self.glance.url, "PUT", "/v2/images/%s/file" % image_id,
                                   dict(CALLERS[who], **{"Content-Type": "application/octet-stream"}),
                                   data)
            assert status == 204, body
        return image_id

    def cache_file(self, image_id):
        return os.path.join(self.proxy.cache, "c", "images", image_id)

    def cached(self, image_id):
        f = self.cache_file(image_id)
        return os.path.exists(f) and os.path.exists(f + ".meta")

    def warm(self, image_id):
        """A plain GET through the proxy by the owner's member (a miss), then wait until
        the fill is committed."""
        status, _, body = send(self.proxy.url, "GET", "/v2/images/%s/file" % image_id,
                               CALLERS["member"])
        assert status == 200 and body == DATA
        wait(lambda: self.cached(image_id), "cached: " + image_id, self.proxy)

    def check_cached_bytes(self, image_id):
        assert self.cached(image_id), "evicted: " + image_id
        with open(self.cache_file(image_id), "rb") as f:
            assert hashlib.sha256(f.read()).hexdigest() == SHA256, "wrong bytes cached"

    def glance_data_serves(self, image_id):
        """How many times Glance sent this image's whole data (its access log)."""
        pattern = r'"GET [^"]*%s[^"]* HTTP/1\.1" 200 %d ' % (image_id, len(DATA))
        return len(re.findall(pattern, self.glance.access_log()))

    # -- the proxy's state -------------------------------------------------------------

    def metric(self, prefix):
        _, _, page = send(self.proxy.metrics_url, "GET", "/metrics")
        return sum(float(line.rsplit(" ", 1)[1]) for line in page.decode().splitlines()
                   if line.startswith(prefix))

    def assert_upstream_up(self, what):
        up = self.metric("glance_cache_proxy_upstream_up")
        assert up == 1, "upstream_up %s after %s\n%s" % (up, what, self.proxy.tail())

    def access_mark(self):
        return len(self.proxy.access_lines())

    def assert_no_5xx_of_its_own(self, since):
        """No 502/504 among the proxy's access lines after `since` (an access_mark)."""
        bad = [l for l in self.proxy.access_lines()[since:] if re.search(r" status=50[24] ", l)]
        assert not bad, "".join(bad[-5:])

    # -- comparisons -------------------------------------------------------------------

    def both(self, point, method, target, who, headers=None, pairs=(), body=None, label=None,
             parity=True):
        """The same request straight to Glance and through the proxy. A refused caller gets
        no image byte from either; a permitted one gets the same bytes from both.
        Returns (Glance's status, the proxy's, the proxy's headers, its body)."""
        h = list(CALLERS[who].items()) + list((headers or {}).items()) + list(pairs)
        g, _, gbody = send(self.glance.url, method, target, h, body)
        p, ph, pbody = send(self.proxy.url, method, target, h, body)
        ROWS.append((point, label or "%s %s %s" % (method, target, _short(headers, pairs)),
                     who, g, p, parity))
        if who in REFUSED:
            assert not leaks(pbody), "image bytes to %s: %s %s" % (who, method, target)
        elif parity and g == p and 200 <= p < 300 and method == "GET" and "file" in target:
            assert pbody == gbody, "different bytes: %s %s (%s)" % (method, target, who)
        return g, p, ph, pbody


def _short(headers, pairs):
    items = list((headers or {}).items()) + list(pairs)
    return " ".join("%s:%s" % (k, v.replace("application/vnd.openstack.images-", "vnd..images-")
                                     .replace("APPLICATION/VND.OPENSTACK.IMAGES-", "VND..IMAGES-"))
                    for k, v in items)


def wait(pred, what, proxy=None, timeout=30):
    deadline = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < deadline, "timed out: %s\n%s" % (what, proxy.tail() if proxy else "")
        time.sleep(0.05)


def shown(target, image_id):
    return target.replace(image_id, "{id}").replace(image_id.upper(), "{ID}")


def assert_parity(rows):
    differ = [r for r in rows if r[5] and r[3] != r[4]]
    assert not differ, "%d of %d differ from Glance:\n%s" % (len(differ), len(rows), table(rows))


@pytest.fixture(scope="module")
def world():
    g = Glance({"GLANCE_CACHE": "0"})
    p = None
    try:
        p = Proxy(g.url, metrics=True)
        yield World(g, p)
    finally:
        print("\n--- hostile clients: Glance (cache off) vs the proxy ---\n" + table())
        try:
            if p is not None:
                assert p.stop() == 0, p.tail()
        finally:
            g.stop()


@pytest.fixture(scope="module")
def traced(world):
    """The proxy -> a recording relay -> the same Glance: what the proxy sends upstream."""
    r = Relay(world.glance.port)
    p = None
    try:
        p = Proxy(r.url)
        yield p, r
    finally:
        try:
            if p is not None:
                assert p.stop() == 0, p.tail()
        finally:
            r.close()


def test_version_accept_cannot_evict_and_accept_form_is_image_data(world):
    """Finding 1: `Accept: application/vnd.openstack.images-v2.1` on /v2/images/{id}/file
    (Glance routes it to /v2/v2/...: 404) made the side requests 404 and evicted the image.
    Now: 404 as Glance, the image stays cached, an admin's download is a hit and Glance has
    sent the data once (for the first miss); /images/{id}/file with that Accept is the image."""
    w = world
    start = len(ROWS)
    image_id = w.new_image()
    w.warm(image_id)
    wait(lambda: w.glance_data_serves(image_id) >= 1, "Glance's access line for the miss")
    assert w.glance_data_serves(image_id) == 1
    target = "/v2/images/%s/file" % image_id
    w.both("1", "GET", target, "member", {"Accept": V21}, label="GET /v2/images/{id}/file Accept:v2.1")
    statuses = [send(w.proxy.url, "GET", target, dict(CALLERS["member"], Accept=V21))[0]
                for _ in range(19)]
    ROWS.append(("1", "  ... 19 more through the proxy, back to back", "member", "-",
                 "/".join(sorted({str(s) for s in statuses})), False))
    assert statuses == [404] * 19
    for who in REFUSED:
        w.both("1", "GET", target, who, {"Accept": V21}, label="GET /v2/images/{id}/file Accept:v2.1")
    assert w.cached(image_id), "evicted by the Accept form\n" + w.proxy.tail()

    # An admin's download with a real client (glanceclient checks the md5): a hit.
    hits = w.metric('glance_cache_proxy_image_requests_total{outcome="hit"')
    client = glanceclient.Client("2", endpoint=w.proxy.url, token="noauth")
    assert b"".join(client.images.data(image_id)) == DATA
    wait(lambda: w.metric('glance_cache_proxy_image_requests_total{outcome="hit"') == hits + 1,
         "the admin download counted as a hit", w.proxy, timeout=5)
    time.sleep(0.3)  # gunicorn writes its access line after the response
    assert w.glance_data_serves(image_id) == 1, "Glance sent the data again"

    # The Accept form of image data: /images/{id}/file + version Accept is the image.
    for who in ("member", "admin") + REFUSED:
        g, p, _, body = w.both("1", "GET", "/images/%s/file" % image_id, who, {"Accept": V21},
                               label="GET /images/{id}/file Accept:v2.1")
        if who in ("member", "admin"):
            assert (g, p) == (200, 200) and body == DATA
    hit_lines = [l for l in w.proxy.access_lines('path="/images/%s/file" ' % image_id)
                 if " status=200 " in l]
    assert hit_lines and all('cache="hit"' in l for l in hit_lines), hit_lines
    w.check_cached_bytes(image_id)
    w.assert_upstream_up("the Accept forms")
    assert_parity(ROWS[start:])


def test_hostile_forms_on_a_hit_answer_as_glance(world):
    """Findings 7 and the rest of the probe's forms, each tried while the image is cached
    (no refill in between): multiple ranges, unknown ?prefer=, version prefixes Glance only
    accepts with its cache (300 here) or multiple stores, Accept versions, odd paths,
    conditionals and repeated identity headers. Same status as Glance for every caller,
    same bytes for the owner's member, no byte for the refused."""
    w = world
    start = len(ROWS)
    image_id = w.new_image()
    w.warm(image_id)
    fills = w.metric("glance_cache_proxy_fills_total")
    f = "/v2/images/%s/file" % image_id
    forms = [
        (f, {"Range": "bytes=0-5,10-20"}),
        (f, {"Range": "bytes=0-5, 6-7"}),
        (f, {"Range": "bytes=-5"}),
        (f, {"Range": "bytes=5-"}),
        (f, {"Range": "bytes=5-1"}),
        (f, {"Range": "bytes=99999999-"}),
        (f, {"Range": "items=0-5"}),
        (f, {"Range": "bytes=abc"}),
        (f, {"Range": "bytes=0-5", "If-Range": '"nope"'}),
        (f, {"Content-Range": "bytes 0-5/10"}),
        (f, {"If-None-Match": "*"}),
        (f, {"If-Match": '"nope"'}),
        (f, {"If-Modified-Since": "Sun, 29 Nov 2099 00:00:00 GMT"}),
        (f + "?prefer=nonexistent", {}),
        (f + "?prefer=", {}),
        (f + "?foo=bar", {}),
        (f + "/", {}),
        ("/v2/images/%s//file" % image_id, {}),
        ("/v2//images/%s/file" % image_id, {}),
        ("//v2/images/%s/file" % image_id, {}),
        ("/v2/images/%s/file/../file" % image_id, {}),
        ("/v2/images/%s/./file" % image_id, {}),
        ("/v2/images/%s%%2Ffile" % image_id, {}),
        ("/v2/images/%s/fil%%65" % image_id, {}),
        ("/v2/images/%s/file;x=1" % image_id, {}),
        ("/v2/images/%s/file#frag" % image_id, {}),
        ("/v2/images/%s/FILE" % image_id, {}),
        ("/V2/images/%s/file" % image_id, {}),
        ("/v2/images/%s/file" % image_id.upper(), {}),
        (f, {"Accept": "application/vnd.openstack.images-v2.18"}),
        ("/images/%s/file" % image_id, {"Accept": "application/vnd.openstack.images-v2.18"}),
        ("/images/%s/file" % image_id, {"Accept": "application/vnd.openstack.images-v2"}),
        ("/images/%s/file" % image_id, {"Accept": "application/vnd.openstack.images-v2.8"}),
        ("/images/%s/file" % image_id, {"Accept": "application/vnd.openstack.images-v9"}),
        ("/images/%s/file" % image_id, {"Accept": "text/html, " + V21}),
        ("/images/%s/file" % image_id, {"Accept": V21.upper()}),
        ("/v2.1/images/%s/file" % image_id, {"Accept": V21}),
    ] + [("/%s/images/%s/file" % (v, image_id), {}) for v in (
        "v2.18", "v2.16", "v2.14", "v2.8", "v2.10", "v2.1", "v2.0", "v2.17", "v2.01", "v2.19",
        "v2.", "v3", "v1")] + [
        ("/v2/images/%s" % image_id, {}),
        ("/v1/images/%s" % image_id, {}),
    ]
    for who in ("member",) + REFUSED:
        for target, headers in forms:
            w.both("7", "GET", target, who, headers, label="GET %s %s" % (
                shown(target, image_id), _short(headers, ())))
        for method in ("HEAD", "POST", "PATCH", "OPTIONS"):
            w.both("7", method, f, who, label="%s /v2/images/{id}/file" % method)
    # Repeated identity headers: Glance joins them with a comma; the proxy must ask Glance
    # with exactly what the caller sent.
    base = [("X-Auth-Token", "noauth"), ("X-User-Id", "dup")]
    repeated = {
        "X-Project-Id: other, owner": [("X-Project-Id", OTHER), ("X-Project-Id", PROJECT),
                                        ("X-Roles", "member,reader")],
        "X-Project-Id: owner, other": [("X-Project-Id", PROJECT), ("X-Project-Id", OTHER),
                                        ("X-Roles", "member,reader")],
        "X-Project-Id: '', owner": [("X-Project-Id", ""), ("X-Project-Id", PROJECT),
                                     ("X-Roles", "member,reader")],
        "X-Roles: reader, member (owner)": [("X-Project-Id", PROJECT), ("X-Roles", "reader"),
                                            ("X-Roles", "member")],
        "other + X-Tenant-Id: owner": [("X-Project-Id", OTHER), ("X-Tenant-Id", PROJECT),
                                       ("X-Roles", "member,reader")],
        "other + X_Project_Id: owner": [("X-Project-Id", OTHER), ("X_Project_Id", PROJECT),
                                        ("X-Roles", "member,reader")],
        "other + X-Roles: ''": [("X-Project-Id", OTHER), ("X-Roles", "")],
    }
    for name, pairs in repeated.items():
        for target in (f, "/v2/images/%s" % image_id):
            h = base + pairs
            g, _, gbody = send(w.glance.url, "GET", target, h)
            p, _, pbody = send(w.proxy.url, "GET", target, h)
            ROWS.append(("7", "GET %s [%s]" % (shown(target, image_id), name), "dup", g, p, True))
            if g != 200:
                assert not leaks(pbody), name
            elif target == f:
                assert pbody == DATA == gbody, name
    assert w.metric("glance_cache_proxy_fills_total") == fills, "the image was fetched again"
    w.check_cached_bytes(image_id)

    # State-changing attempts by callers who may not change the image: nothing evicted.
    for who in REFUSED:
        w.both("7", "DELETE", "/v2/images/%s" % image_id, who, label="DELETE /v2/images/{id}")
        w.both("7", "PUT", f, who, {"Content-Type": "application/octet-stream"}, body=b"x" * 100,
               label="PUT /v2/images/{id}/file (100 B)")
    w.both("7", "PUT", f, "member", {"Content-Type": "application/octet-stream"}, body=b"x" * 100,
           label="PUT /v2/images/{id}/file (100 B)")
    # The cache API: Glance with its cache off is not its oracle (test_cache_api_parity.py);
    # here only: a caller who may not manage the cache evicts nothing.
    for who in ("member",) + REFUSED:
        _, p, _, _ = w.both("7", "DELETE", "/v2/cache/%s" % image_id, who, parity=False,
                            label="DELETE /v2/cache/{id}")
        assert p in (403, 404), (who, p)
    status, _, body = send(w.proxy.url, "GET", f, CALLERS["admin"])
    assert status == 200 and body == DATA
    assert w.metric("glance_cache_proxy_fills_total") == fills, "the image was fetched again"
    w.check_cached_bytes(image_id)
    w.assert_upstream_up("the hostile forms")
    assert_parity(ROWS[start:])


def test_asterisk_and_authority_targets_are_answered_by_the_proxy(world):
    """Finding 3: `GET *` made the proxy connect to port 80 of Glance's host, answer 502
    naming the upstream URL and mark Glance down. Now: 400 from the proxy itself, no
    upstream asked, its URL never named, upstream_up 1. Absolute-form targets go to the
    configured upstream whatever authority they name."""
    w = world
    mark = w.access_mark()
    start = len(ROWS)
    gport, pport = w.glance.port, w.proxy.port
    upstream_names = [b"127.0.0.1:%d" % gport, b":%d" % gport]
    own = [
        "%s * HTTP/1.1" % m for m in ("GET", "OPTIONS", "POST", "PUT", "DELETE", "HEAD")
    ] + ["CONNECT 127.0.0.1:80 HTTP/1.1", "CONNECT 127.0.0.1:%d HTTP/1.1" % gport]
    forwarded = [
        "GET http://127.0.0.1:1/v2/images HTTP/1.1",
        "GET http://evil.example/versions HTTP/1.1",
        "GET //evil.example/v2/images HTTP/1.1",
        "GET @evil.example/v2/images HTTP/1.1",
        "GET :80/v2/images HTTP/1.1",
    ]
    for line in own + forwarded:
        req = ("%s\r\nHost: 127.0.0.1\r\nX-Auth-Token: noauth\r\nContent-Length: 0\r\n"
               "Connection: close\r\n\r\n" % line).encode()
        g = raw(gport, req)
        p = raw(pport, req)
        is_own = line in own
        ROWS.append(("3", line.replace(str(gport), "{glance port}"), "admin", raw_status(g),
                     raw_status(p), not is_own))
        for name in upstream_names:
            assert name not in p, "%r: the answer names the upstream: %r" % (line, p)
        assert b"evil" not in p, "%r: %r" % (line, p)
        if is_own:
            assert raw_status(p) == 400, "%r: %r" % (line, p)
        w.assert_upstream_up(line)
    lines = [l for l in w.proxy.access_lines() if ' path="*" ' in l]
    assert len(lines) >= 6 and all(" upstream=- " in l for l in lines), lines
    status, _, _ = send(w.proxy.url, "GET", "/v2/images", CALLERS["admin"])
    assert status == 200
    w.assert_no_5xx_of_its_own(mark)
    assert_parity(ROWS[start:])


CHUNKED = {
    "overflowing chunk size": b"3\r\nabc\r\nFFFFFFFFFFFFFFFFFFFFFFFF\r\nabc\r\n0\r\n\r\n",
    "negative chunk size": b"3\r\nabc\r\n-5\r\nhello\r\n0\r\n\r\n",
    "bare LF": b"3\r\nabc\r\n5\nhello\n0\n\n",
    "bad hex size": b"3\r\nabc\r\nzz\r\nhello\r\n0\r\n\r\n",
}


def test_malformed_chunked_uploads_are_the_clients_fault(world):
    """Finding 4: a client's broken chunked body was a 502 that marked Glance failed. Now:
    400 (or a closed connection), upstream_up 1, and the next upload works. Glance's own
    answer is taken with the request half-closed (it otherwise waits for more body): it
    answers these with a 500."""
    w = world
    mark = w.access_mark()
    start = len(ROWS)
    head = ("PUT /v2/images/%s/file HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Auth-Token: noauth\r\n"
            "X-Project-Id: " + PROJECT + "\r\nX-Roles: member,reader\r\n"
            "Content-Type: application/octet-stream\r\nTransfer-Encoding: chunked\r\n\r\n")
    for name, body in CHUNKED.items():
        g = raw(w.glance.port, (head % w.new_image(None)).encode() + body, half_close=True)
        p = raw(w.proxy.port, (head % w.new_image(None)).encode() + body)
        ROWS.append(("4", "PUT /v2/images/{id}/file chunked: " + name, "member", raw_status(g),
                     raw_status(p), False))
        assert raw_status(p) in (400, "closed"), "%s: %r" % (name, p)
        w.assert_upstream_up(name)
    # The next request and a good chunked upload work, and the image is right.
    image_id = w.new_image(None)
    data = os.urandom(300_000)
    chunks = b"".join(b"%x\r\n%s\r\n" % (len(c), c) for c in
                      (data[i:i + 65536] for i in range(0, len(data), 65536))) + b"0\r\n\r\n"
    p = raw(w.proxy.port, (head % image_id).encode().replace(b"\r\n\r\n", b"\r\nConnection: close\r\n\r\n") + chunks)
    ROWS.append(("4", "PUT /v2/images/{id}/file chunked: well-formed", "member", "-",
                 raw_status(p), False))
    assert raw_status(p) == 204, p
    status, _, body = send(w.proxy.url, "GET", "/v2/images/%s/file" % image_id, CALLERS["member"])
    assert status == 200 and body == data
    w.assert_upstream_up("the bad uploads")
    w.assert_no_5xx_of_its_own(mark)
    assert_parity(ROWS[start:])


def test_clients_forwarding_headers_do_not_reach_links(world, traced):
    """Finding 5: a client's `Forwarded` and `X-Forwarded-Prefix` reached Glance, whose
    links then pointed at https://evil.example/evil/... Now no link of the proxy's answer
    names them, and the X-Forwarded-For Glance gets starts at the client's address."""
    w = world
    start = len(ROWS)
    for target in ("/versions", "/", "/v2/images", "/v2/images?limit=1", "/v3/images"):
        g, p, ph, body = w.both("5", "GET", target, "member", EVIL,
                                label="GET %s +Forwarded/X-Forwarded-*" % target)
        text = body + b"".join(v.encode() for _, v in ph)
        assert b"evil" not in text, "%s: %r" % (target, text[:2000])
    g, p, ph, body = w.both("5", "POST", "/v2/images", "member",
                            dict(EVIL, **{"Content-Type": "application/json"}),
                            body=b'{"name": "fwd", "disk_format": "raw", "container_format": "bare"}',
                            label="POST /v2/images +Forwarded/X-Forwarded-* (Location)")
    location = dict((k.lower(), v) for k, v in ph).get("location", "")
    assert location.startswith(w.proxy.url + "/v2/images/"), location
    assert b"evil" not in body

    # What Glance is sent (through the recording relay): the proxy's forwarding headers only.
    proxy, relay = traced
    status, _, _ = send(proxy.url, "GET", "/versions?hostile=1", EVIL)
    assert status == 200
    heads = relay.requests_with("/versions?hostile=1")
    assert heads, "the relay saw no request"
    headers = dict(line.split(":", 1) for line in heads[-1].split("\r\n")[1:] if ":" in line)
    headers = {k.strip(): v.strip() for k, v in headers.items()}
    for dropped in ("forwarded", "x-forwarded-prefix", "x-forwarded-port", "x-forwarded-server"):
        assert dropped not in headers, (dropped, headers)
    assert headers.get("x-forwarded-for") == "127.0.0.1", headers
    assert headers.get("x-forwarded-host") == "127.0.0.1:%d" % proxy.port, headers
    assert headers.get("x-forwarded-proto") == "http", headers
    assert_parity(ROWS[start:])


def test_keep_alive_reuse_past_glances_idle_close_costs_no_request(world):
    """Finding 6: pooled connections idle past gunicorn's keep-alive (2 s) got 502
    "connection reset by peer". 300 sequential requests (metadata, version document, ranged
    and whole hits) with pauses just around and past 2 s: none is a 5xx."""
    w = world
    mark = w.access_mark()
    image_id = w.new_image()
    w.warm(image_id)
    f = "/v2/images/%s/file" % image_id
    mix = [
        ("/v2/images?limit=1", {}),
        ("/v2/images/" + image_id, {}),
        ("/versions", {}),
        (f, {"Range": "bytes=0-99"}),
    ]
    pauses = {40: 2.5, 100: 2.0, 160: 2.5, 230: 2.1, 280: 2.5}
    statuses = {}
    host, port = "127.0.0.1", w.proxy.port
    conn = http.client.HTTPConnection(host, port, timeout=T)  # one keep-alive connection
    try:
        for i in range(300):
            if i in pauses:
                time.sleep(pauses[i])
            target, headers = mix[i % len(mix)] if i % 50 != 49 else (f, {})
            conn.request("GET", target, headers=dict(CALLERS["member"], **headers))
            r = conn.getresponse()
            body = r.read()
            statuses[r.status] = statuses.get(r.status, 0) + 1
            assert r.status < 500, "request %d %s: %s %r" % (i, target, r.status, body[:300])
            if target == f and not headers:
                assert body == DATA
    finally:
        conn.close()
    ROWS.append(("6", "300 GETs on one connection, 2-2.5 s pauses", "member", "-",
                 " ".join("%sx%d" % kv for kv in sorted(statuses.items())), False))
    assert set(statuses) <= {200, 206}, statuses
    w.check_cached_bytes(image_id)
    w.assert_upstream_up("keep-alive reuse")
    w.assert_no_5xx_of_its_own(mark)
