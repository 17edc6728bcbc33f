"""(Copied from shared/glance-upstream/smoke.py.) End-to-end smoke test of a Glance endpoint with the real clients.

Run it with the venv's python, against Glance itself or against a proxy
in front of it:

    $GLANCE_VENV/bin/python smoke.py http://127.0.0.1:9292 [--mib 50] [--only glanceclient,sdk,cli]

Covers, for python-glanceclient (Python API), openstacksdk and the `glance`
CLI: create, upload, checksum / os_hash_algo / os_hash_value, download and
compare, list, property update, deactivate / reactivate, stage + import
(glance-direct), the /v2/cache API (queue, list, delete, clear), delete.
Cache checks are skipped when GET /v2/cache is not 200 (GLANCE_CACHE=0).
Ends with "N passed, N failed"; exit status 1 on any failure.
"""
import argparse
import hashlib
import io
import os
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
import urllib.request
import warnings

warnings.filterwarnings("ignore")

args = argparse.ArgumentParser()
args.add_argument("url")
args.add_argument("--mib", type=int, default=50)
args.add_argument("--only", default="glanceclient,sdk,cli")
args = args.parse_args()
URL = args.url.rstrip("/")
DATA = os.urandom(args.mib * 1024 * 1024)
MD5 = hashlib.md5(DATA).hexdigest()
SHA512 = hashlib.sha512(DATA).hexdigest()
RESULTS = {"passed": 0, "failed": 0}


def check(name, fn):
    t0 = time.monotonic()
    try:
        fn()
    except Exception:
        RESULTS["failed"] += 1
        print("FAIL %s" % name)
        traceback.print_exc()
        return False
    RESULTS["passed"] += 1
    print("ok   %s (%.2fs)" % (name, time.monotonic() - t0))
    return True


def assert_hashes(checksum, algo, value, size):
    assert checksum == MD5, ("checksum", checksum, MD5)
    assert algo == "sha512", algo
    assert value == SHA512, "os_hash_value differs"
    assert size == len(DATA), size


def wait_for(fn, timeout=60):
    deadline = time.monotonic() + timeout
    while True:
        if fn():
            return
        if time.monotonic() > deadline:
            raise AssertionError("timed out")
        time.sleep(0.3)


def cache_enabled():
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        return opener.open(URL + "/v2/cache", timeout=10).status == 200
    except Exception:
        return False


CACHE = cache_enabled()
print("endpoint %s, %d MiB payload, cache API %s" % (URL, args.mib, "on" if CACHE else "off"))


def glanceclient_tests():
    from glanceclient import Client

    gc = Client("2", endpoint=URL, token="noauth")
    st = {}

    def create():
        st["id"] = gc.images.create(name="smoke-gc", disk_format="raw",
                                    container_format="bare")["id"]

    def upload():  # glanceclient sends Transfer-Encoding: chunked
        gc.images.upload(st["id"], io.BytesIO(DATA), image_size=len(DATA))
        img = gc.images.get(st["id"])
        assert img["status"] == "active", img["status"]
        assert_hashes(img["checksum"], img["os_hash_algo"], img["os_hash_value"], img["size"])

    def download():
        assert b"".join(gc.images.data(st["id"])) == DATA

    def listing():
        assert st["id"] in [i["id"] for i in gc.images.list()]

    def update():
        assert gc.images.update(st["id"], smoke="gc")["smoke"] == "gc"

    def deactivate():
        gc.images.deactivate(st["id"])
        assert gc.images.get(st["id"])["status"] == "deactivated"
        gc.images.reactivate(st["id"])
        assert gc.images.get(st["id"])["status"] == "active"

    def stage_import():
        i = gc.images.create(name="smoke-gc-import", disk_format="raw", container_format="bare")
        st["id2"] = i["id"]
        gc.images.stage(i["id"], io.BytesIO(DATA), image_size=len(DATA))
        assert gc.images.get(i["id"])["status"] == "uploading"
        gc.images.image_import(i["id"], method="glance-direct")
        wait_for(lambda: gc.images.get(i["id"])["status"] == "active")
        img = gc.images.get(i["id"])
        assert_hashes(img["checksum"], img["os_hash_algo"], img["os_hash_value"], img["size"])

    def cache():
        gc.cache.clear("both")
        gc.cache.queue(st["id"])
        wait_for(lambda: any(c["image_id"] == st["id"] for c in gc.cache.list()["cached_images"]))
        gc.cache.delete(st["id"])
        assert not any(c["image_id"] == st["id"] for c in gc.cache.list()["cached_images"])
        gc.cache.clear("cache")

    def delete():
        for k in ("id", "id2"):
            if k in st:
                gc.images.delete(st.pop(k))

    for name, fn in [("create", create), ("upload", upload), ("download", download),
                     ("list", listing), ("update property", update),
                     ("deactivate/reactivate", deactivate),
                     ("stage + import glance-direct", stage_import)] + \
            ([("cache queue/list/delete/clear", cache)] if CACHE else []):
        if not check("glanceclient: " + name, fn) and name in ("create", "upload"):
            break
    check("glanceclient: delete", delete)


def sdk_tests():
    import openstack

    conn = openstack.connection.Connection(auth_type="none", image_endpoint_override=URL)
    st = {}

    def create_upload():  # one PUT with Content-Length
        img = conn.image.create_image(name="smoke-sdk", data=io.BytesIO(DATA), disk_format="raw",
                                      container_format="bare", allow_duplicates=True)
        st["id"] = img.id
        img = conn.image.get_image(img.id)
        assert img.status == "active", img.status
        assert_hashes(img.checksum, img.hash_algo, img.hash_value, img.size)

    def download():  # the SDK also verifies os_hash_value itself
        assert conn.image.download_image(st["id"]).content == DATA

    def listing():
        assert st["id"] in [i.id for i in conn.image.images()]

    def update():
        # Pass the id: with an Image from get_image() openstacksdk 4.22 also
        # sends {"op": "remove", "path": "/stores"}, which Glance answers 409.
        conn.image.update_image(st["id"], smoke="sdk")
        assert conn.image.get_image(st["id"]).properties["smoke"] == "sdk"

    def deactivate():
        conn.image.deactivate_image(st["id"])
        assert conn.image.get_image(st["id"]).status == "deactivated"
        conn.image.reactivate_image(st["id"])
        assert conn.image.get_image(st["id"]).status == "active"

    def stage_import():
        img = conn.image.create_image(name="smoke-sdk-import", disk_format="raw",
                                      container_format="bare", allow_duplicates=True)
        st["id2"] = img.id
        conn.image.stage_image(img, data=io.BytesIO(DATA))
        conn.image.import_image(img, method="glance-direct")
        wait_for(lambda: conn.image.get_image(img.id).status == "active")
        img = conn.image.get_image(img.id)
        assert_hashes(img.checksum, img.hash_algo, img.hash_value, img.size)

    def cache():
        conn.image.clear_cache("both")
        conn.image.queue_image(st["id"])
        wait_for(lambda: any(c.image_id == st["id"]
                             for c in conn.image.get_image_cache().cached_images))
        conn.image.cache_delete_image(st["id"])
        assert not any(c.image_id == st["id"] for c in conn.image.get_image_cache().cached_images)
        conn.image.clear_cache("cache")

    def delete():
        for k in ("id", "id2"):
            if k in st:
                conn.image.delete_image(st.pop(k))

    for name, fn in [("create + upload", create_upload), ("download", download),
                     ("list", listing), ("update property", update),
                     ("deactivate/reactivate", deactivate),
                     ("stage + import glance-direct", stage_import)] + \
            ([("cache queue/get/delete/clear", cache)] if CACHE else []):
        if not check("sdk: " + name, fn) and name == "create + upload":
            break
    check("sdk: delete", delete)


def cli_tests():
    glance = os.path.join(os.path.dirname(sys.executable), "glance")
    tmp = tempfile.mkdtemp(prefix="glance-smoke-")
    # HOME: the CLI caches schemas in ~/.glanceclient
    env = dict(os.environ, HOME=tmp, PYTHONWARNINGS="ignore")
    path = os.path.join(tmp, "data.bin")
    with open(path, "wb") as f:
        f.write(DATA)
    st = {}

    def g(*a, stdin=subprocess.DEVNULL):
        r = subprocess.run([glance, "--os-image-url", URL, "--os-auth-token", "noauth", *a],
                           env=env, stdin=stdin, capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, (a, r.stdout, r.stderr)
        return r.stdout

    def field(out, name):
        for line in out.splitlines():
            cells = [c.strip() for c in line.split("|")]
            if len(cells) > 2 and cells[1] == name:
                return cells[2]

    def create():
        out = g("image-create", "--name", "smoke-cli", "--disk-format", "raw",
                "--container-format", "bare", "--file", path)
        st["id"] = field(out, "id")
        assert field(out, "checksum") == MD5 and field(out, "status") == "active", out

    def download():
        g("image-download", st["id"], "--file", path + ".out")
        with open(path + ".out", "rb") as f:
            assert f.read() == DATA

    def create_via_import():
        # glance-direct via the CLI reads the data from stdin when stdin is
        # not a TTY (--file then fails: "cannot use both --file and stdin")
        with open(path, "rb") as f:
            out = g("image-create-via-import", "--name", "smoke-cli-import", "--disk-format",
                    "raw", "--container-format", "bare", "--import-method", "glance-direct",
                    stdin=f)
        st["id2"] = field(out, "id")
        wait_for(lambda: field(g("image-show", st["id2"]), "status") == "active")
        assert field(g("image-show", st["id2"]), "checksum") == MD5

    def cache():
        g("cache-clear")
        g("cache-queue", st["id"])
        wait_for(lambda: st["id"] in g("cache-list"))
        g("cache-delete", st["id"])
        assert st["id"] not in g("cache-list")

    def delete():
        for k in ("id", "id2"):
            if k in st:
                g("image-delete", st.pop(k))

    if check("cli: image-create --file", create):
        check("cli: image-download", download)
        check("cli: image-create-via-import glance-direct", create_via_import)
        if CACHE:
            check("cli: cache-queue/cache-list/cache-delete", cache)
    check("cli: image-delete", delete)
    shutil.rmtree(tmp, ignore_errors=True)


sections = args.only.split(",")
if "glanceclient" in sections:
    glanceclient_tests()
if "sdk" in sections:
    sdk_tests()
if "cli" in sections:
    cli_tests()
print("%d passed, %d failed" % (RESULTS["passed"], RESULTS["failed"]))
sys.exit(1 if RESULTS["failed"] else 0)
