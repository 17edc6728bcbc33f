"""Fixtures for the end-to-end tests: a real Glance 33 from the project's launcher
(scripts/glance-upstream/) and the real proxy binary in front of it, all on 127.0.0.1.

Run through scripts/e2e.sh, which installs the venv and builds the proxy. Environment:
PROXY_BIN (default target/debug/glance-cache-proxy), GLANCE_VENV (the venv; default: this
interpreter's).

Session fixtures:
  glance, proxy                 Glance (noauth, cache on) and the proxy in front of it
  keystone_glance               Glance with a real Keystone (cache off)
  glance_public, proxy_public   Glance with GLANCE_PUBLIC_ENDPOINT (it writes its own URL
                                into version hrefs) and a proxy in front; started only when
                                a test asks for them
  relay, proxy_traced           proxy -> recording TCP relay -> the `glance` above: the
                                request heads exactly as the proxy sent them
Every process started here is stopped at the end of the session, also after failures.
"""
import os
import re
import shutil
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
LAUNCHER = os.path.join(ROOT, "scripts", "glance-upstream", "glance-upstream.sh")
PROXY_BIN = os.environ.get("PROXY_BIN", os.path.join(ROOT, "target", "debug", "glance-cache-proxy"))
VENV = os.environ.get("GLANCE_VENV", sys.prefix)
BIN = os.path.join(VENV, "bin")
OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))
PROXY_START_TIMEOUT = 30

# Everything is on loopback: never let requests, curl or keystoneauth use an HTTP proxy
# from the environment.
for _k in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
    os.environ.pop(_k, None)
os.environ["no_proxy"] = os.environ["NO_PROXY"] = "127.0.0.1,localhost"
# HTTPS clients trust only the CA a test names: python-requests lets REQUESTS_CA_BUNDLE (or
# CURL_CA_BUNDLE) win over a session's own CA file, so `glance --os-cacert` would be ignored.
for _k in ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE"):
    os.environ.pop(_k, None)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url, timeout=30.0, proc=None, cafile=None, any_status=False):
    """Wait until url answers (any status below 500; with any_status, any HTTP answer at all).
    https:// URLs are checked trusting only cafile."""
    opener = OPENER
    if cafile is not None:
        ctx = ssl.create_default_context(cafile=cafile)
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}),
                                             urllib.request.HTTPSHandler(context=ctx))
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError("process exited with status %s" % proc.returncode)
        try:
            with opener.open(url, timeout=5) as r:
                if r.status < 500 or any_status:
                    return
        except urllib.error.HTTPError as e:
            if e.code < 500 or any_status:
                return
        except OSError:
            pass
        time.sleep(0.1)
    raise RuntimeError("%s did not answer within %ss" % (url, timeout))


class Glance:
    """A real Glance started by the project's launcher in a temporary DATADIR.

    Default: noauth, image cache on; env_extra adds launcher variables (GLANCE_CACHE,
    GLANCE_PUBLIC_ENDPOINT, GLANCE_AUTH, ...). Other GLANCE_* variables of the caller's
    environment (except the venv and interpreter) are not passed on.
    """

    def __init__(self, env_extra, port=None):
        self.port = port or free_port()
        self.data = tempfile.mkdtemp(prefix="gcp-e2e-glance-")
        keep = {"GLANCE_VENV", "GLANCE_PYTHON", "GLANCE_START_TIMEOUT"}
        env = {k: v for k, v in os.environ.items()
               if not (k.startswith(("GLANCE_", "KEYSTONE_")) and k not in keep)}
        self.env = dict(env, GLANCE_VENV=VENV, GLANCE_AUTH="noauth", GLANCE_CACHE="1")
        self.env.update(env_extra)
        try:
            out = subprocess.run(
                ["bash", LAUNCHER, "start", str(self.port), self.data],
                env=self.env, capture_output=True, text=True, timeout=240,
            )
        except BaseException as e:  # timeout, or Ctrl-C / SIGINT from scripts/e2e.sh's timeout
            # The launcher was killed; gunicorn (in its own session) may be up already.
            time.sleep(0.5)  # let it write its pid file
            self.stop()
            if isinstance(e, subprocess.TimeoutExpired):
                raise RuntimeError("glance did not start within %ss: %s" % (e.timeout, e.stderr)) from None
            raise
        if out.returncode != 0:
            self.stop()
            raise RuntimeError("glance did not start (%s): %s" % (out.returncode, out.stderr[-3000:]))
        self.url = out.stdout.split()[-1]

    def access_log(self):
        with open(os.path.join(self.data, "log", "access.log")) as f:
            return f.read()

    def stop(self):
        try:
            subprocess.run(["bash", LAUNCHER, "stop", self.data], env=self.env,
                           capture_output=True, timeout=60)
        finally:
            shutil.rmtree(self.data, ignore_errors=True)


class Proxy:
    """The proxy binary in front of `upstream` (None: the config file's upstream.urls); its
    stderr goes to a file (self.log_path).

    tls_ca: the proxy serves HTTPS (its certificate comes from a config file in extra_args,
    `--config FILE`) and the start check trusts only this CA file. wait_upstream=False: the
    start check takes any HTTP answer from the proxy (for an upstream meant to fail), not
    only one below 500.
    """

    def __init__(self, upstream, extra_args=(), metrics=False, tls_ca=None, wait_upstream=True):
        self.port = free_port()
        self.url = "%s://127.0.0.1:%d" % ("https" if tls_ca else "http", self.port)
        self.metrics_url = None
        metrics_listen = ""
        if metrics:
            metrics_listen = "127.0.0.1:%d" % free_port()
            self.metrics_url = "http://" + metrics_listen
        self.cache = tempfile.mkdtemp(prefix="gcp-e2e-cache-")
        self.log_path = self.cache + ".log"
        self.log = open(self.log_path, "w")
        self._final_tail = None
        upstream_args = ["--upstream", upstream] if upstream else []
        self.proc = subprocess.Popen(
            [PROXY_BIN, "--listen", "127.0.0.1:%d" % self.port, *upstream_args,
             "--cache-dir", os.path.join(self.cache, "c"), "--metrics-listen", metrics_listen, *extra_args],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=self.log,
            env=dict(os.environ, RUST_LOG="info"),
        )
        try:
            wait_http(self.url + "/versions", timeout=PROXY_START_TIMEOUT, proc=self.proc,
                      cafile=tls_ca, any_status=not wait_upstream)
        except Exception as e:
            self.kill()
            tail = self.tail()
            self.cleanup()
            raise RuntimeError("proxy did not start: %s\n--- proxy stderr (tail) ---\n%s" % (e, tail)) from None

    def access_lines(self, needle=""):
        """The proxy's access-log lines (one per request), optionally filtered. Its own thread
        writes them, every 50 ms while requests come: first wait until the log has not grown
        for several of those (at most 5 s), so every request that has ended is in it."""
        deadline, size, quiet = time.monotonic() + 5, -1, 0
        while quiet < 3 and time.monotonic() < deadline:
            now = os.path.getsize(self.log_path)
            quiet = quiet + 1 if now == size else 0
            size = now
            time.sleep(0.06)
        with open(self.log_path) as f:
            return [line for line in f if " access: " in line and needle in line]

    def tail(self, n=40, chars=8000):
        """The last n lines of the proxy's stderr (at most `chars` characters)."""
        if self._final_tail is not None:
            return self._final_tail
        try:
            with open(self.log_path, errors="replace") as f:
                return "".join(f.readlines()[-n:])[-chars:]
        except OSError:
            return "(no log)"

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=10)

    def stop(self):
        """SIGTERM, wait up to 20 s (then SIGKILL), remove the cache dir and the log (its
        tail stays available from tail()); returns the exit status."""
        if self.proc.poll() is None:
            self.proc.terminate()
        try:
            code = self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.kill()
            code = "killed after 20 s"
        self.cleanup()
        return code

    def cleanup(self):
        if self._final_tail is None:
            self.log.close()
            self._final_tail = self.tail()
        shutil.rmtree(self.cache, ignore_errors=True)
        try:
            os.unlink(self.log_path)
        except OSError:
            pass


class Relay:
    """TCP relay 127.0.0.1:port -> upstream_port that records what clients send (the first
    64 KiB of each connection), so a test can see the request heads on the wire."""

    CAP = 64 * 1024

    def __init__(self, upstream_port):
        self.upstream_port = upstream_port
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.url = "http://127.0.0.1:%d" % self.port
        self.sent = []  # one bytearray per connection: client -> upstream bytes
        self.lock = threading.Lock()
        self.closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while not self.closed:
            try:
                client, _ = self.sock.accept()
            except OSError:
                return
            try:
                up = socket.create_connection(("127.0.0.1", self.upstream_port), timeout=10)
                up.settimeout(None)
            except OSError:
                client.close()
                continue
            rec = bytearray()
            with self.lock:
                self.sent.append(rec)
            threading.Thread(target=self._pump, args=(client, up, rec), daemon=True).start()
            threading.Thread(target=self._pump, args=(up, client, None), daemon=True).start()

    def _pump(self, src, dst, rec):
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                if rec is not None and len(rec) < self.CAP:
                    with self.lock:
                        rec += data[:self.CAP - len(rec)]
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (dst, src):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def requests_with(self, needle):
        """Request heads (as lowercase text) seen on the wire that contain needle."""
        with self.lock:
            blobs = [bytes(r) for r in self.sent]
        heads = []
        for blob in blobs:
            for m in re.finditer(rb"(?:GET|POST|PUT|PATCH|DELETE|HEAD|OPTIONS) [^\r\n]* HTTP/1\.1\r\n.*?\r\n\r\n",
                                 blob, re.S):
                head = m.group(0).decode("latin1").lower()
                if needle.lower() in head:
                    heads.append(head)
        return heads

    def close(self):
        self.closed = True
        self.sock.close()


def _stop_proxy(p):
    code = p.stop()
    assert code == 0, "proxy exit status %s on SIGTERM\n--- proxy stderr (tail) ---\n%s" % (code, p.tail())


@pytest.fixture(scope="session")
def glance():
    g = Glance({})
    try:
        yield g
    finally:
        g.stop()


@pytest.fixture(scope="session")
def proxy(glance):
    p = Proxy(glance.url)
    try:
        yield p
    finally:
        _stop_proxy(p)


@pytest.fixture(scope="session")
def keystone_glance():
    """Glance with a real Keystone (the launcher's GLANCE_AUTH=keystone), its own cache off;
    `keystone_port` is Keystone's. Shared by the authorization tests of one and two tiers."""
    kport = free_port()
    g = Glance({"GLANCE_AUTH": "keystone", "KEYSTONE_PORT": str(kport), "GLANCE_CACHE": "0"})
    g.keystone_port = kport
    try:
        yield g
    finally:
        g.stop()


@pytest.fixture(scope="session")
def glance_public():
    """A Glance that writes its own URL into version hrefs (public_endpoint), cache off."""
    port = free_port()
    g = Glance({"GLANCE_PUBLIC_ENDPOINT": "http://127.0.0.1:%d" % port, "GLANCE_CACHE": "0"}, port)
    try:
        yield g
    finally:
        g.stop()


@pytest.fixture(scope="session")
def proxy_public(glance_public):
    p = Proxy(glance_public.url)
    try:
        yield p
    finally:
        _stop_proxy(p)


@pytest.fixture(scope="session")
def relay(glance):
    r = Relay(glance.port)
    try:
        yield r
    finally:
        r.close()


@pytest.fixture(scope="session")
def proxy_traced(relay):
    """A proxy whose upstream is the recording relay in front of the session's Glance."""
    p = Proxy(relay.url)
    try:
        yield p
    finally:
        _stop_proxy(p)


@pytest.hookimpl(tryfirst=True, hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """On a failed test, append the tail of the stderr of every proxy it used."""
    outcome = yield
    rep = outcome.get_result()
    if rep.failed and rep.when in ("setup", "call"):
        for name, value in getattr(item, "funcargs", {}).items():
            p = value if isinstance(value, Proxy) else getattr(value, "proxy", None)
            if isinstance(p, Proxy):
                rep.sections.append(("%s: proxy stderr (tail of %s)" % (name, p.log_path), p.tail()))
