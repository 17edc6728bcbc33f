"""End to end through the proxy, with a real Glance 33 and the real clients:
python-glanceclient (Python API and `glance` CLI), openstacksdk, the `openstack` CLI, curl
and plain HTTP. Every download is verified by the client (md5 / sha512) and checked here.

Each client: create, upload (glanceclient chunked; openstacksdk, curl and the openstack CLI
with Content-Length; curl with Expect: 100-continue), download twice (proxy cache miss, then
hit) and compare, list, update a property, deactivate/reactivate, stage + import
(glance-direct), delete; the proxy's access log (one line per request) shows the calls went
through it. HTTP level: version documents, GET /v2 and Location point at the proxy (its
--public-url, else the request's Host), also when Glance writes its own public_endpoint;
request ids echo; unknown and identity headers reach Glance, with X-Forwarded-*.
"""
import atexit
import hashlib
import http.client
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid

import glanceclient
import openstack
import requests

from conftest import BIN, Proxy

HERE = os.path.dirname(os.path.abspath(__file__))
DATA = os.urandom(8 * 1024 * 1024)
MD5 = hashlib.md5(DATA).hexdigest()
SHA512 = hashlib.sha512(DATA).hexdigest()
TIMEOUT = 120
NOAUTH = {"X-Auth-Token": "noauth"}


def _cli_env():
    """Environment for the CLIs: no OS_* settings from the caller, a HOME of our own
    (the glance CLI writes a schema cache to ~/.glanceclient)."""
    global _CLI_HOME
    if _CLI_HOME is None:
        _CLI_HOME = tempfile.mkdtemp(prefix="gcp-e2e-home-")
        atexit.register(shutil.rmtree, _CLI_HOME, True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("OS_")}
    env["HOME"] = _CLI_HOME
    return env


_CLI_HOME = None


def glance_cli(proxy, *args, **kw):
    """The `glance` CLI (python-glanceclient) against the proxy, noauth."""
    return _run([os.path.join(BIN, "glance"), "--os-image-url", proxy.url,
                 "--os-auth-token", "noauth", *args], **kw)


def osc(proxy, *args, **kw):
    """The `openstack` CLI (python-openstackclient 10.5) against the proxy with no Keystone:
    auth type `none` and the proxy as the endpoint (the SDK underneath then discovers the
    image API from the proxy's GET /)."""
    return _run([os.path.join(BIN, "openstack"), "--os-auth-type", "none", "--os-endpoint", proxy.url,
                 "--os-image-api-version", "2", *args], **kw)


def _run(cmd, stdin=None):
    """Run a CLI (bounded time). Without stdin, its stdin is a pseudo-terminal, as for a
    user at a shell: both CLIs read image data from a stdin that is not a TTY (and the
    `openstack` CLI fails on a closed one)."""
    master = slave = None
    if stdin is None:
        master, slave = os.openpty()
        stdin = slave
    try:
        out = subprocess.run(cmd, env=_cli_env(), stdin=stdin, capture_output=True, text=True,
                             timeout=TIMEOUT)
    finally:
        for fd in (master, slave):
            if fd is not None:
                os.close(fd)
    assert out.returncode == 0, "%s: exit %s\nstdout: %s\nstderr: %s" % (
        " ".join(cmd), out.returncode, out.stdout[-2000:], out.stderr[-3000:])
    return out


def image_lines(proxy, image_id, needle=""):
    return proxy.access_lines(image_id + "/file" if not needle else needle)


def test_shared_smoke_passes_through_the_proxy(proxy):
    out = subprocess.run(
        [sys.executable, os.path.join(HERE, "smoke.py"), proxy.url, "--mib", "20"],
        capture_output=True, text=True, timeout=300)
    assert out.stdout.strip().splitlines()[-1] == "22 passed, 0 failed", out.stdout + out.stderr


def test_version_documents_and_locations_point_at_the_proxy(proxy, glance):
    for path, status in (("/", 300), ("/versions", 200)):
        r = requests.get(proxy.url + path, timeout=30)
        assert r.status_code == status
        hrefs = [l["href"] for v in r.json()["versions"] for l in v["links"]]
        assert len(hrefs) >= 19 and all(h == proxy.url + "/v2/" for h in hrefs), hrefs
    r = requests.get(proxy.url + "/v2", allow_redirects=False, timeout=30)
    assert r.status_code == 302 and r.headers["Location"] == proxy.url + "/v2/"
    r = requests.post(proxy.url + "/v2/images", json={"name": "loc", "disk_format": "raw",
                      "container_format": "bare"}, headers=NOAUTH, timeout=30)
    assert r.status_code == 201
    assert r.headers["Location"] == "%s/v2/images/%s" % (proxy.url, r.json()["id"])
    assert requests.delete(r.headers["Location"], headers=NOAUTH, timeout=30).status_code == 204


def _raw_get(url, path, host):
    """GET with an explicit Host header (http.client): (status, headers, body)."""
    port = int(url.rsplit(":", 1)[1])
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        c.putrequest("GET", path, skip_host=True)
        c.putheader("Host", host)
        c.endheaders()
        r = c.getresponse()
        return r.status, r.msg, r.read()  # r.msg: headers, case-insensitive
    finally:
        c.close()


def test_links_follow_the_host_header_or_the_public_url(proxy, glance):
    # No --public-url: the base is http://<Host of the request>.
    status, _, body = _raw_get(proxy.url, "/", "images.example:8080")
    assert status == 300
    hrefs = {l["href"] for v in json.loads(body)["versions"] for l in v["links"]}
    assert hrefs == {"http://images.example:8080/v2/"}
    status, headers, _ = _raw_get(proxy.url, "/v2", "images.example:8080")
    assert status == 302 and headers["Location"] == "http://images.example:8080/v2/"
    # --public-url wins over Host.
    p = Proxy(glance.url, ["--public-url", "https://glance.example.org:8443"])
    try:
        for path, status in (("/", 300), ("/versions", 200)):
            got, _, body = _raw_get(p.url, path, "ignored.example")
            assert got == status
            hrefs = {l["href"] for v in json.loads(body)["versions"] for l in v["links"]}
            assert hrefs == {"https://glance.example.org:8443/v2/"}, hrefs
        status, headers, _ = _raw_get(p.url, "/v2", "ignored.example")
        assert status == 302 and headers["Location"] == "https://glance.example.org:8443/v2/"
    finally:
        assert p.stop() == 0, p.tail()


def test_glance_public_endpoint_links_are_rewritten(glance_public, proxy_public):
    direct = requests.get(glance_public.url + "/", timeout=30).json()
    assert direct["versions"][0]["links"][0]["href"] == glance_public.url + "/v2/"
    through = requests.get(proxy_public.url + "/", timeout=30).json()
    assert {l["href"] for v in through["versions"] for l in v["links"]} == {proxy_public.url + "/v2/"}
    # openstacksdk discovers its endpoint from those hrefs: every call must reach the proxy.
    before = len(proxy_public.access_lines())
    conn = openstack.connection.Connection(auth_type="none", image_endpoint_override=proxy_public.url)
    assert conn.image.get_endpoint().startswith(proxy_public.url + "/v2"), conn.image.get_endpoint()
    img = conn.image.create_image(name="pub-sdk", data=DATA, disk_format="raw", container_format="bare")
    got = b"".join(conn.image.download_image(img.id, stream=True).iter_content(1 << 20))
    assert hashlib.sha512(got).hexdigest() == SHA512
    conn.image.delete_image(img.id)
    assert len(proxy_public.access_lines(img.id)) >= 4
    assert len(proxy_public.access_lines()) - before >= 5


def test_headers_pass_both_ways(proxy):
    rid = "req-" + str(uuid.uuid4())
    r = requests.get(proxy.url + "/v2/images", timeout=30,
                     headers=dict(NOAUTH, **{"X-Openstack-Request-Id": rid}))
    assert r.status_code == 200
    assert r.headers["x-openstack-request-id"] == rid
    assert proxy.access_lines(rid)
    # Unknown headers (legacy v1 X-Image-Meta-*, Content-MD5) pass; Glance accepts the calls.
    r = requests.post(proxy.url + "/v2/images", timeout=30,
                      json={"name": "hdr", "disk_format": "raw", "container_format": "bare"},
                      headers=dict(NOAUTH, **{"X-Image-Meta-Foo": "bar"}))
    assert r.status_code == 201, r.text
    image_id = r.json()["id"]
    try:
        r = requests.put("%s/v2/images/%s/file" % (proxy.url, image_id), data=DATA[:100000],
                         timeout=TIMEOUT, headers=dict(NOAUTH, **{
                             "Content-Type": "application/octet-stream", "X-Image-Meta-Foo": "bar",
                             "Content-MD5": hashlib.md5(DATA[:100000]).hexdigest()}))
        assert r.status_code == 204, r.text
        rec = requests.get("%s/v2/images/%s" % (proxy.url, image_id), headers=NOAUTH, timeout=30).json()
        assert (rec["status"], rec["checksum"]) == ("active", hashlib.md5(DATA[:100000]).hexdigest())
        # Identity headers reach Glance (its noauth mode honours them): another project does
        # not see this private image, its owner does.
        other = dict(NOAUTH, **{"X-Project-Id": "someone-else", "X-Roles": "member,reader"})
        r = requests.get(proxy.url + "/v2/images/" + image_id, headers=other, timeout=30)
        assert r.status_code == 404
        ids = [i["id"] for i in requests.get(proxy.url + "/v2/images", headers=other,
                                             timeout=30).json()["images"]]
        assert image_id not in ids
        r = requests.get(proxy.url + "/v2/images/%s/file" % image_id, headers=other, timeout=30)
        assert r.status_code == 404
    finally:
        requests.delete("%s/v2/images/%s" % (proxy.url, image_id), headers=NOAUTH, timeout=30)


def test_request_heads_reach_glance_with_forwarded_headers(proxy_traced, relay):
    """proxy -> recording relay -> Glance: what the proxy puts on the wire."""
    p = proxy_traced
    rid = "req-" + str(uuid.uuid4())
    r = requests.post(p.url + "/v2/images", timeout=30,
                      json={"name": "wire", "disk_format": "raw", "container_format": "bare"},
                      headers=dict(NOAUTH, **{"X-Image-Meta-Foo": "bar-" + rid,
                                              "X-Openstack-Request-Id": rid}))
    assert r.status_code == 201, r.text
    image_id = r.json()["id"]
    assert r.headers["Location"] == "%s/v2/images/%s" % (p.url, image_id)
    assert r.headers["x-openstack-request-id"] == rid
    try:
        heads = relay.requests_with(rid)
        assert len(heads) == 1, heads
        head = heads[0]
        assert head.startswith("post /v2/images http/1.1\r\n"), head
        for want in ("x-image-meta-foo: bar-" + rid, "x-openstack-request-id: " + rid,
                     "x-auth-token: noauth", "x-forwarded-for: 127.0.0.1",
                     "x-forwarded-proto: http", "x-forwarded-host: 127.0.0.1:%d" % p.port):
            assert "\r\n" + want + "\r\n" in head, (want, head)
        body = DATA[:100000]
        md5 = hashlib.md5(body).hexdigest()
        r = requests.put("%s/v2/images/%s/file" % (p.url, image_id), data=body, timeout=TIMEOUT,
                         headers=dict(NOAUTH, **{"Content-Type": "application/octet-stream",
                                                 "Content-MD5": md5}))
        assert r.status_code == 204, r.text
        heads = relay.requests_with("put /v2/images/%s/file " % image_id)
        assert len(heads) == 1, heads
        assert "\r\ncontent-md5: %s\r\n" % md5 in heads[0], heads[0]
        assert "\r\ncontent-length: %d\r\n" % len(body) in heads[0], heads[0]
        r = requests.get("%s/v2/images/%s/file" % (p.url, image_id), headers=NOAUTH, timeout=TIMEOUT)
        assert r.status_code == 200 and r.content == body
        assert r.headers["Content-MD5"] == md5
    finally:
        requests.delete("%s/v2/images/%s" % (p.url, image_id), headers=NOAUTH, timeout=30)


def _glance_uploads(glance, image_id):
    """Glance's access-log lines for PUT .../IMAGE/file or /stage (the launcher logs the
    request's Content-Length and Transfer-Encoding as the last two fields). Gunicorn writes
    the line just after the response, so wait for it."""
    needles = ('"PUT /v2/images/%s/file ' % image_id, '"PUT /v2/images/%s/stage ' % image_id)
    deadline = time.monotonic() + 10
    while True:
        lines = [l for l in glance.access_log().splitlines() if any(n in l for n in needles)]
        if lines or time.monotonic() > deadline:
            return lines
        time.sleep(0.05)


def test_glanceclient_api(proxy, glance):
    gc = glanceclient.Client("2", endpoint=proxy.url, token="noauth")
    img = gc.images.create(name="e2e-gc", disk_format="raw", container_format="bare")
    try:
        gc.images.upload(img.id, _Chunks(DATA))  # chunked upload
        uploads = _glance_uploads(glance, img.id)
        assert len(uploads) == 1 and uploads[0].endswith('"-" "chunked"'), uploads
        rec = gc.images.get(img.id)
        assert (rec.checksum, rec.os_hash_algo, rec.os_hash_value, rec.size) == (MD5, "sha512", SHA512, len(DATA))
        for _ in range(2):  # miss, then hit; glanceclient verifies os_hash_value on each
            got = b"".join(gc.images.data(img.id))
            assert (hashlib.md5(got).hexdigest(), hashlib.sha512(got).hexdigest()) == (MD5, SHA512)
            assert got == DATA
        assert [l for l in image_lines(proxy, img.id) if 'cache="miss"' in l]
        assert [l for l in image_lines(proxy, img.id) if 'cache="hit"' in l]
        assert any(i.id == img.id for i in gc.images.list())
        gc.images.update(img.id, e2e_prop="yes")
        assert gc.images.get(img.id)["e2e_prop"] == "yes"
        gc.images.deactivate(img.id)
        assert gc.images.get(img.id).status == "deactivated"
        gc.images.reactivate(img.id)
        assert gc.images.get(img.id).status == "active"
    finally:
        gc.images.delete(img.id)
    imp = gc.images.create(name="e2e-gc-import", disk_format="raw", container_format="bare")
    try:
        gc.images.stage(imp.id, _Chunks(DATA))
        gc.images.image_import(imp.id, method="glance-direct")
        _wait(lambda: gc.images.get(imp.id).status == "active")
        rec = gc.images.get(imp.id)
        assert (rec.checksum, rec.os_hash_value) == (MD5, SHA512)
        assert b"".join(gc.images.data(imp.id)) == DATA
    finally:
        gc.images.delete(imp.id)
    assert len(proxy.access_lines(img.id)) >= 10 and len(proxy.access_lines(imp.id)) >= 5


def test_openstacksdk(proxy, glance):
    conn = openstack.connection.Connection(auth_type="none", image_endpoint_override=proxy.url)
    before = len(proxy.access_lines())
    img = conn.image.create_image(name="e2e-sdk", data=DATA, disk_format="raw", container_format="bare")
    # The SDK discovered its endpoint from the proxy's (rewritten) version document.
    assert conn.image.get_endpoint().startswith(proxy.url + "/v2"), conn.image.get_endpoint()
    try:
        uploads = _glance_uploads(glance, img.id)  # Content-Length upload
        assert len(uploads) == 1 and uploads[0].endswith('"%d" "-"' % len(DATA)), uploads
        for _ in range(2):  # miss, then hit; download_image verifies os_hash_value
            got = conn.image.download_image(img.id).content
            assert (hashlib.md5(got).hexdigest(), hashlib.sha512(got).hexdigest()) == (MD5, SHA512)
        rec = conn.image.get_image(img.id)
        assert (rec.checksum, rec.hash_algo, rec.hash_value, rec.size) == (MD5, "sha512", SHA512, len(DATA))
        assert any(i.id == img.id for i in conn.image.images())
        conn.image.update_image(img.id, e2e_prop="sdk")
        assert conn.image.get_image(img.id).properties.get("e2e_prop") == "sdk"
        conn.image.deactivate_image(img.id)
        assert conn.image.get_image(img.id).status == "deactivated"
        conn.image.reactivate_image(img.id)
        assert conn.image.get_image(img.id).status == "active"
    finally:
        conn.image.delete_image(img.id)
    imp = conn.image.create_image(name="e2e-sdk-import", disk_format="raw", container_format="bare",
                                  allow_duplicates=True)
    try:
        conn.image.stage_image(imp, data=DATA)
        conn.image.import_image(imp, method="glance-direct")
        _wait(lambda: conn.image.get_image(imp.id).status == "active")
        assert conn.image.download_image(imp.id).content == DATA
    finally:
        conn.image.delete_image(imp.id)
    # Every call went through the proxy: per-image requests, plus the lists and creates.
    assert len(proxy.access_lines(img.id)) >= 12, proxy.access_lines(img.id)
    assert len(proxy.access_lines(imp.id)) >= 5, proxy.access_lines(imp.id)
    assert len(proxy.access_lines()) - before >= 20


def test_glance_cli(proxy, tmp_path):
    src = tmp_path / "in.img"
    src.write_bytes(DATA)
    out = glance_cli(proxy, "--os-image-api-version", "2", "image-create", "--name", "e2e-cli",
                     "--disk-format", "raw", "--container-format", "bare", "--file", str(src),
                     "--progress")
    image_id = _field(out.stdout, "id")
    try:
        for n in range(2):
            dst = tmp_path / ("out%d.img" % n)
            glance_cli(proxy, "image-download", "--file", str(dst), image_id)
            assert dst.read_bytes() == DATA
        assert image_id in glance_cli(proxy, "image-list").stdout
        glance_cli(proxy, "image-update", "--property", "e2e_prop=cli", image_id)
        assert "e2e_prop" in glance_cli(proxy, "image-show", image_id).stdout
        glance_cli(proxy, "image-deactivate", image_id)
        glance_cli(proxy, "image-reactivate", image_id)
        assert _field(glance_cli(proxy, "image-show", image_id).stdout, "status") == "active"
    finally:
        glance_cli(proxy, "image-delete", image_id)
    assert len(proxy.access_lines(image_id)) >= 8
    with open(src, "rb") as stdin:  # --file fails without a TTY; the data goes on stdin
        out = glance_cli(proxy, "image-create-via-import", "--name", "e2e-cli-import",
                         "--disk-format", "raw", "--container-format", "bare",
                         "--import-method", "glance-direct", stdin=stdin)
    imp = _field(out.stdout, "id")
    try:
        _wait(lambda: _status(proxy, imp) == "active")
        assert _field(glance_cli(proxy, "image-show", imp).stdout, "checksum") == MD5
        dst = tmp_path / "imported.img"
        glance_cli(proxy, "image-download", "--file", str(dst), imp)
        assert dst.read_bytes() == DATA
    finally:
        glance_cli(proxy, "image-delete", imp)
    assert proxy.access_lines(imp + "/stage") and proxy.access_lines(imp + "/import")


def test_openstack_cli(proxy, tmp_path):
    src = tmp_path / "in.img"
    src.write_bytes(DATA)
    out = osc(proxy, "image", "create", "--disk-format", "raw", "--container-format", "bare",
              "--file", str(src), "-f", "json", "e2e-osc")
    image_id = json.loads(out.stdout)["id"]
    try:
        rec = json.loads(osc(proxy, "image", "show", "-f", "json", image_id).stdout)
        assert (rec["checksum"], rec["size"]) == (MD5, len(DATA)), rec
        for n in range(2):  # the SDK underneath verifies os_hash_value
            dst = tmp_path / ("out%d.img" % n)
            osc(proxy, "image", "save", "--file", str(dst), image_id)
            got = dst.read_bytes()
            assert (hashlib.md5(got).hexdigest(), hashlib.sha512(got).hexdigest()) == (MD5, SHA512)
        assert image_id in osc(proxy, "image", "list", "-f", "value", "-c", "ID").stdout
        osc(proxy, "image", "set", "--property", "e2e_prop=osc", image_id)
        props = json.loads(osc(proxy, "image", "show", "-f", "json", image_id).stdout)["properties"]
        assert props.get("e2e_prop") == "osc"
        osc(proxy, "image", "set", "--deactivate", image_id)
        assert _status(proxy, image_id) == "deactivated"
        osc(proxy, "image", "set", "--activate", image_id)
        assert _status(proxy, image_id) == "active"
    finally:
        osc(proxy, "image", "delete", image_id)
    # The CLI went through the proxy (it has no other URL than the proxy's).
    assert len(proxy.access_lines(image_id + "/file")) >= 3
    out = osc(proxy, "image", "create", "--disk-format", "raw", "--container-format", "bare",
              "-f", "json", "e2e-osc-import")
    imp = json.loads(out.stdout)["id"]
    try:
        osc(proxy, "image", "stage", "--file", str(src), imp)
        osc(proxy, "image", "import", "--method", "glance-direct", imp)
        _wait(lambda: _status(proxy, imp) == "active")
        dst = tmp_path / "imported.img"
        osc(proxy, "image", "save", "--file", str(dst), imp)
        assert dst.read_bytes() == DATA
    finally:
        osc(proxy, "image", "delete", imp)
    assert proxy.access_lines(imp + "/stage") and proxy.access_lines(imp + "/import")


def test_curl_uploads_with_expect_100_continue(proxy, glance, tmp_path):
    src = tmp_path / "in.img"
    src.write_bytes(DATA)
    r = requests.post(proxy.url + "/v2/images", json={"name": "curl", "disk_format": "raw",
                      "container_format": "bare"}, headers=NOAUTH, timeout=30)
    image_id = r.json()["id"]
    try:
        out = subprocess.run(
            ["curl", "-sS", "-v", "--max-time", str(TIMEOUT), "-o", "/dev/null", "-w", "%{http_code}",
             "-T", str(src),
             "-H", "Expect: 100-continue", "-H", "Content-Type: application/octet-stream",
             "-H", "X-Auth-Token: noauth", "%s/v2/images/%s/file" % (proxy.url, image_id)],
            capture_output=True, text=True, timeout=TIMEOUT)
        assert out.stdout == "204", out.stderr
        assert "100 Continue" in out.stderr
        uploads = _glance_uploads(glance, image_id)
        assert len(uploads) == 1 and uploads[0].endswith('"%d" "-"' % len(DATA)), uploads
        got = subprocess.run(["curl", "-sS", "--max-time", str(TIMEOUT), "-D", "-",
                              "%s/v2/images/%s/file" % (proxy.url, image_id)],
                             capture_output=True, timeout=TIMEOUT).stdout
        head, _, body = got.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200"), head
        assert (hashlib.md5(body).hexdigest(), hashlib.sha512(body).hexdigest()) == (MD5, SHA512)
        assert ("content-md5: " + MD5).encode() in head.lower(), head
    finally:
        requests.delete("%s/v2/images/%s" % (proxy.url, image_id), headers=NOAUTH, timeout=30)


class _Chunks:
    """A file-like object without a length, so glanceclient uploads it chunked."""

    def __init__(self, data):
        self.data, self.pos = data, 0

    def read(self, n=65536):
        chunk = self.data[self.pos:self.pos + n]
        self.pos += len(chunk)
        return chunk


def _status(proxy, image_id):
    return requests.get("%s/v2/images/%s" % (proxy.url, image_id), headers=NOAUTH,
                        timeout=30).json()["status"]


def _field(table, name):
    for line in table.splitlines():
        cells = [c.strip() for c in line.split("|")]
        if len(cells) > 2 and cells[1] == name:
            return cells[2]
    raise AssertionError("no %s in:\n%s" % (name, table))


def _wait(pred, timeout=60):
    deadline = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.3)


def test_keep_alive_across_metadata_and_zero_copy_hits(proxy):
    h = {"X-Auth-Token": "noauth"}
    r = requests.post(proxy.url + "/v2/images", json={"name": "ka", "disk_format": "raw",
                      "container_format": "bare"}, headers=h, timeout=30)
    image_id = r.json()["id"]
    try:
        assert requests.put("%s/v2/images/%s/file" % (proxy.url, image_id), data=DATA,
                            headers=dict(h, **{"Content-Type": "application/octet-stream"}),
                            timeout=TIMEOUT).status_code == 204
        assert requests.get("%s/v2/images/%s/file" % (proxy.url, image_id), headers=h,
                            timeout=TIMEOUT).content == DATA  # miss: fills the cache
        # The entry is published just after the miss's last byte.
        _wait(lambda: os.path.exists(os.path.join(proxy.cache, "c", "images", image_id)))
        # python-requests Session: metadata, hit, metadata on one connection.
        s = requests.Session()
        meta = "%s/v2/images/%s" % (proxy.url, image_id)
        assert s.get(meta, headers=h, timeout=30).status_code == 200
        assert s.get(meta + "/file", headers=h, timeout=TIMEOUT).content == DATA
        assert s.get(meta, headers=h, timeout=30).status_code == 200
        pools = s.get_adapter(proxy.url).poolmanager.pools
        opened = sum(pools[k].num_connections for k in pools.keys())
        assert opened == 1, "requests opened %d connections" % opened
        # curl: three URLs, one connection.
        out = subprocess.run(["curl", "-sv", "-o", "/dev/null", "-o", "/dev/null", "-o", "/dev/null",
                              "-H", "X-Auth-Token: noauth", meta, meta + "/file", meta],
                             capture_output=True, text=True, timeout=TIMEOUT)
        assert out.returncode == 0, out.stderr
        assert out.stderr.count("Re-using existing connection") == 2, out.stderr[-2000:]
        hits = [l for l in proxy.access_lines(image_id + "/file") if 'cache="hit"' in l]
        assert len(hits) >= 2 and all('outcome="complete"' in l for l in hits)
    finally:
        requests.delete("%s/v2/images/%s" % (proxy.url, image_id), headers=h, timeout=30)
