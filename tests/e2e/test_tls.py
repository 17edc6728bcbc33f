"""End to end over TLS on both sides, with certificates from a CA made by
`cargo run --example mkcert` (rcgen): the real clients speak HTTPS to the proxy, trusting only
that CA; the proxy speaks HTTPS to an nginx in front of the session's real Glance, which
demands a client certificate from the same CA (ssl_verify_client on) and passes the rest
through (no buffering, Host kept).

- The `glance` CLI (python-glanceclient, --os-cacert) and openstacksdk (cacert): create,
  upload, download twice, list. Bytes identical; the first download a miss whose fill was
  verified and published, the second a hit; nginx saw one whole download of the file (the hit
  only asked Glance, through nginx, for its one-byte authorization probe), and every request
  reached it with the proxy's client certificate.
- Refusals: an upstream certificate from another CA is a 502 (Glance's JSON error shape)
  naming the certificate problem, and nothing reaches nginx; without a client certificate
  nginx refuses (400) and the client gets no 2xx; a client that does not trust the CA fails
  its handshake with the proxy.

Environment: MKCERT_BIN (a built mkcert example; default: cargo run --example mkcert), and
nginx on PATH or in /usr/sbin (scripts/e2e.sh installs Debian's).
"""
import json
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import time
import types

import openstack
import pytest
import requests

from conftest import ROOT, Proxy, free_port
from test_clients import _field, glance_cli

DATA = os.urandom(5 * 1024 * 1024 + 12345)
NOAUTH = {"X-Auth-Token": "noauth"}
T = 120


@pytest.fixture(scope="module")
def certs():
    """ca.pem, server(-key).pem, client(-key).pem and other-ca.pem from the mkcert example."""
    d = tempfile.mkdtemp(prefix="gcp-e2e-certs-")
    try:
        mkcert = os.environ.get("MKCERT_BIN")
        cmd = ([mkcert, d] if mkcert else
               ["cargo", "run", "--quiet", "--locked", "--example", "mkcert", "--", d])
        out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
        assert out.returncode == 0, "%s: exit %s\n%s" % (" ".join(cmd), out.returncode, out.stderr[-3000:])
        yield types.SimpleNamespace(**{n.replace("-", "_"): os.path.join(d, n + ".pem") for n in (
            "ca", "server", "server-key", "client", "client-key", "other-ca")})
    finally:
        shutil.rmtree(d, ignore_errors=True)


class Nginx:
    """nginx as an HTTPS front of http://127.0.0.1:upstream_port that requires a client
    certificate from certs.ca; everything (config, logs, temp files, pid) in a temp dir."""

    LOG = '$remote_addr "$request" $status $body_bytes_sent "$http_range" "$ssl_client_s_dn"'

    def __init__(self, certs, upstream_port):
        binary = shutil.which("nginx", path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin")
        assert binary, "nginx is needed (scripts/e2e.sh installs it)"
        self.port = free_port()
        self.url = "https://127.0.0.1:%d" % self.port
        self.dir = tempfile.mkdtemp(prefix="gcp-e2e-nginx-")
        self.access_path = os.path.join(self.dir, "access.log")
        self.error_path = os.path.join(self.dir, "error.log")
        user = ""
        if os.geteuid() == 0:  # root's workers would run as nobody, who cannot enter self.dir
            user = "user root;"
        conf = os.path.join(self.dir, "nginx.conf")
        with open(conf, "w") as f:
            f.write("""
daemon off;
master_process on;
worker_processes 1;
%(user)s
pid %(dir)s/nginx.pid;
error_log %(dir)s/error.log info;
events { worker_connections 256; }
http {
    log_format e2e '%(log)s';
    access_log %(dir)s/access.log e2e;
    client_body_temp_path %(dir)s/body;
    proxy_temp_path %(dir)s/proxy;
    fastcgi_temp_path %(dir)s/fastcgi;
    uwsgi_temp_path %(dir)s/uwsgi;
    scgi_temp_path %(dir)s/scgi;
    server {
        listen 127.0.0.1:%(port)d ssl;
        ssl_certificate %(cert)s;
        ssl_certificate_key %(key)s;
        ssl_client_certificate %(ca)s;
        ssl_verify_client on;
        client_max_body_size 0;
        location / {
            proxy_pass http://127.0.0.1:%(upstream)d;
            proxy_http_version 1.1;
            proxy_set_header Host $http_host;
            proxy_set_header Connection "";
            proxy_buffering off;
            proxy_request_buffering off;
            proxy_read_timeout 300s;
        }
    }
}
""" % dict(user=user, dir=self.dir, log=self.LOG, port=self.port, cert=certs.server,
                    key=certs.server_key, ca=certs.ca, upstream=upstream_port))
        self.stderr = open(os.path.join(self.dir, "stderr.log"), "w")
        self.proc = subprocess.Popen(
            [binary, "-c", conf, "-p", self.dir + "/", "-e", self.error_path],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=self.stderr,
            start_new_session=True)  # its own process group: the workers go with the master
        try:
            self._wait_ready(certs)
        except BaseException as e:  # also Ctrl-C / SIGINT from scripts/e2e.sh's timeout
            log = self.error_log()
            self.stop()
            if not isinstance(e, Exception):
                raise
            raise RuntimeError("nginx did not start: %s\n--- error.log ---\n%s" % (e, log[-3000:])) from None

    def _wait_ready(self, certs, timeout=30):
        deadline = time.monotonic() + timeout
        while True:
            assert self.proc.poll() is None, "nginx exited with status %s" % self.proc.returncode
            try:
                r = requests.get(self.url + "/versions", verify=certs.ca, timeout=5,
                                 cert=(certs.client, certs.client_key))
                if r.status_code == 200:
                    return
            except requests.RequestException:
                pass
            assert time.monotonic() < deadline, "no answer from %s within %ss" % (self.url, timeout)
            time.sleep(0.1)

    def requests(self, needle=""):
        """Access-log lines: addr "request" status bytes "Range" "client certificate DN"."""
        with open(self.access_path) as f:
            return [line for line in f if needle in line]

    def error_log(self):
        try:
            with open(self.error_path, errors="replace") as f:
                return f.read()
        except OSError:
            return "(no error.log)"

    def stop(self):
        """SIGTERM (fast shutdown), wait up to 10 s, then SIGKILL the process group."""
        try:
            if self.proc.poll() is None:
                self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
        finally:
            self.stderr.close()
            shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture(scope="module")
def nginx(glance, certs):
    n = Nginx(certs, glance.port)
    try:
        yield n
    finally:
        n.stop()


def tls_proxy_config(certs, dirname, upstream, ca_file, client_cert=True):
    """A proxy config file: HTTPS with the mkcert server certificate; the upstream over
    HTTPS trusting ca_file, with the client certificate unless client_cert is False."""
    lines = ["[server]",
             "tls_cert_file = %s" % json.dumps(certs.server),
             "tls_key_file = %s" % json.dumps(certs.server_key),
             "[upstream]",
             "urls = [%s]" % json.dumps(upstream),
             "ca_file = %s" % json.dumps(ca_file)]
    if client_cert:
        lines += ["client_cert_file = %s" % json.dumps(certs.client),
                  "client_key_file = %s" % json.dumps(certs.client_key)]
    path = os.path.join(dirname, "proxy.toml")
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")
    return path


@pytest.fixture(scope="module")
def tls_proxy(nginx, certs):
    d = tempfile.mkdtemp(prefix="gcp-e2e-tlsconf-")
    try:
        conf = tls_proxy_config(certs, d, nginx.url, certs.ca)
        p = Proxy(None, ["--config", conf], tls_ca=certs.ca)
        try:
            yield p
        finally:
            assert p.stop() == 0, p.tail()
    finally:
        shutil.rmtree(d, ignore_errors=True)


def _wait(pred, what, timeout=30):
    deadline = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < deadline, "timed out waiting for " + what
        time.sleep(0.05)


def _wait_cached(proxy, image_id):
    """The entry is published (fsync, rename) just after the miss's last byte."""
    _wait(lambda: os.path.exists(os.path.join(proxy.cache, "c", "images", image_id)),
          "the cache entry of " + image_id)


def check_miss_then_one_fetch(proxy, nginx, image_id):
    """Two GETs of the image's data through the proxy: a miss whose fill was verified and
    published, then a hit; nginx saw one whole download (200, every byte) and otherwise only
    the hit's one-byte probe (206, Range: bytes=0-0), all with the proxy's client certificate."""
    gets = [l for l in proxy.access_lines(image_id + "/file") if 'method="GET"' in l]
    assert len(gets) == 2, gets
    assert 'cache="miss"' in gets[0] and "status=200" in gets[0], gets[0]
    assert 'cache="hit"' in gets[1] and "status=200" in gets[1], gets[1]
    assert all('outcome="complete"' in l for l in gets), gets
    with open(proxy.log_path) as f:
        assert re.search(r"\bcached\b.*image_id=%s" % image_id, f.read()), proxy.tail()
    # nginx writes its access line when the response is done; the hit's probe is the last.
    _wait(lambda: len(nginx.requests('"GET /v2/images/%s/file ' % image_id)) == 2,
          "nginx's log of the probe")
    lines = nginx.requests('"GET /v2/images/%s/file ' % image_id)
    # Glance's download is chunked: nginx counts the chunk framing in its bytes.
    whole = [l for l in lines if re.search(r'" 200 (\d+) "-" ', l)
             and int(re.search(r'" 200 (\d+) ', l).group(1)) >= len(DATA)]
    probes = [l for l in lines if '" 206 1 "bytes=0-0" ' in l]
    assert (len(whole), len(probes)) == (1, 1), lines
    seen = nginx.requests(image_id)
    assert len(seen) >= 4 and all(l.rstrip().endswith('"CN=gcp-client"') for l in seen), seen


def test_nginx_front_requires_a_client_certificate(nginx, certs):
    """The front is what the other tests rely on: Glance behind it, a client certificate
    required."""
    r = requests.get(nginx.url + "/versions", verify=certs.ca, timeout=30,
                     cert=(certs.client, certs.client_key))
    assert r.status_code == 200 and r.json()["versions"], r.text
    r = requests.get(nginx.url + "/versions", verify=certs.ca, timeout=30)
    assert r.status_code == 400 and "No required SSL certificate was sent" in r.text, r.text


def test_glance_cli_over_tls(tls_proxy, nginx, certs, tmp_path):
    src = tmp_path / "in.img"
    src.write_bytes(DATA)
    cli = ("--os-cacert", certs.ca)
    out = glance_cli(tls_proxy, *cli, "--os-image-api-version", "2", "image-create",
                     "--name", "e2e-tls-cli", "--disk-format", "raw", "--container-format", "bare")
    image_id = _field(out.stdout, "id")
    try:
        glance_cli(tls_proxy, *cli, "image-upload", "--file", str(src), image_id)
        assert _field(glance_cli(tls_proxy, *cli, "image-show", image_id).stdout, "status") == "active"
        for n in range(2):
            dst = tmp_path / ("out%d.img" % n)
            glance_cli(tls_proxy, *cli, "image-download", "--file", str(dst), image_id)
            assert dst.read_bytes() == DATA
            if n == 0:
                _wait_cached(tls_proxy, image_id)
        check_miss_then_one_fetch(tls_proxy, nginx, image_id)
        assert image_id in glance_cli(tls_proxy, *cli, "image-list").stdout
    finally:
        glance_cli(tls_proxy, *cli, "image-delete", image_id)


def test_openstacksdk_over_tls(tls_proxy, nginx, certs):
    conn = openstack.connection.Connection(auth_type="none", cacert=certs.ca,
                                           image_endpoint_override=tls_proxy.url)
    img = conn.image.create_image(name="e2e-tls-sdk", data=DATA, disk_format="raw",
                                  container_format="bare")
    try:
        # The SDK discovered its endpoint from the version document that Glance wrote behind
        # nginx (X-Forwarded-* from the proxy): it stays on the proxy, over https.
        assert conn.image.get_endpoint().startswith(tls_proxy.url + "/v2"), conn.image.get_endpoint()
        for n in range(2):  # download_image verifies os_hash_value
            assert conn.image.download_image(img.id).content == DATA
            if n == 0:
                _wait_cached(tls_proxy, img.id)
        check_miss_then_one_fetch(tls_proxy, nginx, img.id)
        assert any(i.id == img.id for i in conn.image.images())
    finally:
        conn.image.delete_image(img.id)
    assert len(tls_proxy.access_lines(img.id)) >= 5


def _refusing_proxy(certs, tmp_path, upstream, ca_file, client_cert=True):
    conf = tls_proxy_config(certs, str(tmp_path), upstream, ca_file, client_cert)
    return Proxy(None, ["--config", conf], tls_ca=certs.ca, wait_upstream=False)


def test_upstream_certificate_from_another_ca_is_a_502(nginx, certs, tmp_path):
    p = _refusing_proxy(certs, tmp_path, nginx.url, certs.other_ca)
    try:
        before = len(nginx.requests())
        r = requests.get(p.url + "/v2/images", headers=NOAUTH, verify=certs.ca, timeout=T)
        assert r.status_code == 502, r.text
        assert r.headers["Content-Type"] == "application/json" and r.headers["x-openstack-request-id"]
        assert r.json()["code"] == "502 Bad Gateway", r.text
        assert "certificate" in r.json()["message"], r.text
        line = p.access_lines(r.headers["x-openstack-request-id"])
        assert len(line) == 1 and "status=502" in line[0] and "certificate" in line[0], p.tail()
        # The handshake reached nginx and the proxy refused it: no request was sent.
        _wait(lambda: "alert unknown ca" in nginx.error_log(), "nginx's log of the refused handshake")
        assert len(nginx.requests()) == before, nginx.requests()[before:]
    finally:
        assert p.stop() == 0, p.tail()


def test_upstream_without_a_client_certificate_is_refused_by_nginx(nginx, certs, tmp_path):
    p = _refusing_proxy(certs, tmp_path, nginx.url, certs.ca, client_cert=False)
    try:
        r = requests.get(p.url + "/v2/images", headers=NOAUTH, verify=certs.ca, timeout=T)
        assert not 200 <= r.status_code < 300, r.text
        # nginx's own refusal, passed back as sent.
        assert r.status_code == 400 and "No required SSL certificate was sent" in r.text, r.text
        _wait(lambda: nginx.requests('"GET /v2/images HTTP/1.1" 400 '), "nginx's log of the 400")
    finally:
        assert p.stop() == 0, p.tail()


def test_a_client_that_does_not_trust_the_ca_fails_the_handshake(tls_proxy, certs):
    for ctx in (ssl.create_default_context(),  # the system's roots
                ssl.create_default_context(cafile=certs.other_ca)):
        with socket.create_connection(("127.0.0.1", tls_proxy.port), timeout=10) as s:
            with pytest.raises(ssl.SSLCertVerificationError):
                ctx.wrap_socket(s, server_hostname="127.0.0.1")
    with pytest.raises(requests.exceptions.SSLError):
        requests.get(tls_proxy.url + "/versions", verify=certs.other_ca, timeout=30)
    # The proxy is unharmed; a client trusting the CA gets through, by either name.
    r = requests.get(tls_proxy.url + "/versions", verify=certs.ca, timeout=30)
    assert r.status_code == 200, r.text
    ctx = ssl.create_default_context(cafile=certs.ca)
    with socket.create_connection(("127.0.0.1", tls_proxy.port), timeout=10) as s:
        with ctx.wrap_socket(s, server_hostname="localhost") as t:
            assert t.version() in ("TLSv1.2", "TLSv1.3")
