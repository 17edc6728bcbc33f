"""End to end through the proxy, with a real Glance 33 and the real clients:
python-glanceclient (Python API and `glance` CLI), openstacksdk, the `openstack` CLI, curl
and plain HTTP. Every download is verified by the client (md5 / sha512) and checked here.
"""
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import uuid

import glanceclient
import openstack
import requests

from conftest import BIN, OPENER  # noqa: F401

HERE = os.path.dirname(os.path.abspath(__file__))
DATA = os.urandom(8 * 1024 * 1024)
MD5 = hashlib.md5(DATA).hexdigest()
SHA512 = hashlib.sha512(DATA).hexdigest()
TIMEOUT = 120


def glance_cli(proxy, *args, **kw):
    home = tempfile.mkdtemp(prefix="gcp-e2e-home-")
    env = dict(os.environ, HOME=home)
    return subprocess.run(
        [os.path.join(BIN, "glance"), "--os-image-url", proxy.url, "--os-auth-token", "noauth", *args],
        env=env, capture_output=True, text=True, timeout=TIMEOUT, check=True, **kw)


def osc(proxy, *args, **kw):
    env = {k: v for k, v in os.environ.items() if not k.startswith("OS_")}
    env["HOME"] = tempfile.mkdtemp(prefix="gcp-e2e-home-")
    return subprocess.run(
        [os.path.join(BIN, "openstack"), "--os-auth-type", "none", "--os-endpoint", proxy.url,
         "--os-image-api-version", "2", *args],
        env=env, capture_output=True, text=True, timeout=TIMEOUT, check=True, **kw)


def image_lines(proxy, image_id, needle=""):
    return proxy.access_lines(image_id + "/file" if not needle else needle)


def test_shared_smoke_passes_through_the_proxy(proxy):
    out = subprocess.run(
        [sys.executable, os.path.join(HERE, "smoke.py"), proxy.url, "--mib", "20"],
        capture_output=True, text=True, timeout=600)
    assert out.stdout.strip().splitlines()[-1] == "22 passed, 0 failed", out.stdout + out.stderr


def test_version_documents_and_locations_point_at_the_proxy(proxy, glance):
    for path, status in (("/", 300), ("/versions", 200)):
        r = requests.get(proxy.url + path, timeout=30)
        assert r.status_code == status
        hrefs = [l["href"] for v in r.json()["versions"] for l in v["links"]]
        assert hrefs and all(h == proxy.url + "/v2/" for h in hrefs), hrefs
    r = requests.get(proxy.url + "/v2", allow_redirects=False, timeout=30)
    assert r.status_code == 302 and r.headers["Location"] == proxy.url + "/v2/"
    r = requests.post(proxy.url + "/v2/images", json={"name": "loc", "disk_format": "raw",
                      "container_format": "bare"}, headers={"X-Auth-Token": "noauth"}, timeout=30)
    assert r.status_code == 201
    assert r.headers["Location"] == "%s/v2/images/%s" % (proxy.url, r.json()["id"])
    assert requests.delete(r.headers["Location"], headers={"X-Auth-Token": "noauth"},
                           timeout=30).status_code == 204


def test_glance_public_endpoint_links_are_rewritten(glance_public, proxy_public):
    direct = requests.get(glance_public.url + "/", timeout=30).json()
    assert direct["versions"][0]["links"][0]["href"] == glance_public.url + "/v2/"
    through = requests.get(proxy_public.url + "/", timeout=30).json()
    assert {l["href"] for v in through["versions"] for l in v["links"]} == {proxy_public.url + "/v2/"}
    # openstacksdk discovers its endpoint from those hrefs: every call must reach the proxy.
    before = len(proxy_public.access_lines())
    conn = openstack.connection.Connection(auth_type="none", image_endpoint_override=proxy_public.url)
    img = conn.image.create_image(name="pub-sdk", data=DATA, disk_format="raw", container_format="bare")
    got = b"".join(conn.image.download_image(img.id, stream=True).iter_content(1 << 20))
    assert hashlib.sha512(got).hexdigest() == SHA512
    conn.image.delete_image(img.id)
    assert len(proxy_public.access_lines(img.id)) >= 4
    assert len(proxy_public.access_lines()) - before >= 5


def test_headers_pass_both_ways(proxy):
    rid = "req-" + str(uuid.uuid4())
    r = requests.get(proxy.url + "/v2/images", timeout=30,
                     headers={"X-Auth-Token": "noauth", "X-Openstack-Request-Id": rid})
    assert r.status_code == 200
    assert r.headers["x-openstack-request-id"] == rid
    assert proxy.access_lines(rid)
    # Identity headers reach Glance (noauth mode honours them): another project sees nothing.
    r = requests.get(proxy.url + "/v2/images", timeout=30,
                     headers={"X-Auth-Token": "noauth", "X-Project-Id": "someone-else",
                              "X-Roles": "member,reader"})
    assert r.status_code == 200


def test_glanceclient_api(proxy):
    gc = glanceclient.Client("2", endpoint=proxy.url, token="noauth")
    img = gc.images.create(name="e2e-gc", disk_format="raw", container_format="bare")
    try:
        gc.images.upload(img.id, _Chunks(DATA))  # chunked upload
        rec = gc.images.get(img.id)
        assert (rec.checksum, rec.os_hash_algo, rec.os_hash_value, rec.size) == (MD5, "sha512", SHA512, len(DATA))
        for _ in range(2):  # miss, then hit; glanceclient verifies sha512 on each
            assert b"".join(gc.images.data(img.id)) == DATA
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
        assert b"".join(gc.images.data(imp.id)) == DATA
    finally:
        gc.images.delete(imp.id)


def test_openstacksdk(proxy):
    conn = openstack.connection.Connection(auth_type="none", image_endpoint_override=proxy.url)
    img = conn.image.create_image(name="e2e-sdk", data=DATA, disk_format="raw", container_format="bare")
    try:
        for _ in range(2):  # download_image verifies os_hash_value
            assert conn.image.download_image(img.id).content == DATA
        assert any(i.id == img.id for i in conn.image.images())
        conn.image.update_image(img.id, e2e_prop="sdk")
        assert conn.image.get_image(img.id).properties.get("e2e_prop") == "sdk"
        conn.image.deactivate_image(img.id)
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
    out = glance_cli(proxy, "image-create-via-import", "--name", "e2e-cli-import",
                     "--disk-format", "raw", "--container-format", "bare",
                     "--import-method", "glance-direct", input=None, stdin=open(src, "rb"))
    imp = _field(out.stdout, "id")
    try:
        _wait(lambda: _field(glance_cli(proxy, "image-show", imp).stdout, "status") == "active")
    finally:
        glance_cli(proxy, "image-delete", imp)


def test_openstack_cli(proxy, tmp_path):
    src = tmp_path / "in.img"
    src.write_bytes(DATA)
    out = osc(proxy, "image", "create", "--disk-format", "raw", "--container-format", "bare",
              "--file", str(src), "-f", "json", "e2e-osc")
    image_id = json.loads(out.stdout)["id"]
    try:
        for n in range(2):
            dst = tmp_path / ("out%d.img" % n)
            osc(proxy, "image", "save", "--file", str(dst), image_id)
            assert dst.read_bytes() == DATA
        assert image_id in osc(proxy, "image", "list", "-f", "value", "-c", "ID").stdout
        osc(proxy, "image", "set", "--property", "e2e_prop=osc", image_id)
        props = json.loads(osc(proxy, "image", "show", "-f", "json", image_id).stdout)["properties"]
        assert props.get("e2e_prop") == "osc"
        osc(proxy, "image", "set", "--deactivate", image_id)
        osc(proxy, "image", "set", "--activate", image_id)
        assert json.loads(osc(proxy, "image", "show", "-f", "json", image_id).stdout)["status"] == "active"
    finally:
        osc(proxy, "image", "delete", image_id)
    assert proxy.access_lines(image_id)
    # Interoperable import: stage, then glance-direct. The image is created through the API:
    # `openstack image create` without --file reads stdin when it is not a TTY (as here) and
    # would make an active, empty image.
    r = requests.post(proxy.url + "/v2/images", json={"name": "e2e-osc-import", "disk_format": "raw",
                      "container_format": "bare"}, headers={"X-Auth-Token": "noauth"}, timeout=30)
    imp = r.json()["id"]
    try:
        osc(proxy, "image", "stage", "--file", str(src), imp)
        osc(proxy, "image", "import", "--method", "glance-direct", imp)
        _wait(lambda: json.loads(osc(proxy, "image", "show", "-f", "json", imp).stdout)["status"] == "active")
        dst = tmp_path / "imported.img"
        osc(proxy, "image", "save", "--file", str(dst), imp)
        assert dst.read_bytes() == DATA
    finally:
        osc(proxy, "image", "delete", imp)
    assert proxy.access_lines(imp + "/stage") and proxy.access_lines(imp + "/import")


def test_curl_uploads_with_expect_100_continue(proxy, tmp_path):
    src = tmp_path / "in.img"
    src.write_bytes(DATA)
    r = requests.post(proxy.url + "/v2/images", json={"name": "curl", "disk_format": "raw",
                      "container_format": "bare"}, headers={"X-Auth-Token": "noauth"}, timeout=30)
    image_id = r.json()["id"]
    try:
        out = subprocess.run(
            ["curl", "-sS", "-v", "-o", "/dev/null", "-w", "%{http_code}", "-T", str(src),
             "-H", "Expect: 100-continue", "-H", "Content-Type: application/octet-stream",
             "-H", "X-Auth-Token: noauth", "%s/v2/images/%s/file" % (proxy.url, image_id)],
            capture_output=True, text=True, timeout=TIMEOUT)
        assert out.stdout == "204", out.stderr
        assert "100 Continue" in out.stderr
        got = subprocess.run(["curl", "-sS", "%s/v2/images/%s/file" % (proxy.url, image_id)],
                             capture_output=True, timeout=TIMEOUT).stdout
        assert hashlib.md5(got).hexdigest() == MD5
    finally:
        requests.delete("%s/v2/images/%s" % (proxy.url, image_id), timeout=30)


class _Chunks:
    """A file-like object without a length, so glanceclient uploads it chunked."""

    def __init__(self, data):
        self.data, self.pos = data, 0

    def read(self, n=65536):
        chunk = self.data[self.pos:self.pos + n]
        self.pos += len(chunk)
        return chunk


def _field(table, name):
    for line in table.splitlines():
        cells = [c.strip() for c in line.split("|")]
        if len(cells) > 2 and cells[1] == name:
            return cells[2]
    raise AssertionError("no %s in:\n%s" % (name, table))


def _wait(pred, timeout=60):
    import time
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
