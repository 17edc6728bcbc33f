"""Fixtures for the end-to-end tests: a real Glance 33 from the project's launcher
(scripts/glance-upstream/) and the real proxy binary in front of it, all on 127.0.0.1.

Run through scripts/e2e.sh, which installs the venv and builds the proxy. Environment:
PROXY_BIN (default target/debug/glance-cache-proxy), GLANCE_VENV (the venv; default: this
interpreter's).
"""
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
LAUNCHER = os.path.join(ROOT, "scripts", "glance-upstream", "glance-upstream.sh")
PROXY_BIN = os.environ.get("PROXY_BIN", os.path.join(ROOT, "target", "debug", "glance-cache-proxy"))
VENV = os.environ.get("GLANCE_VENV", sys.prefix)
BIN = os.path.join(VENV, "bin")
OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url, timeout=30.0, proc=None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError("process exited with %s" % proc.returncode)
        try:
            with OPENER.open(url, timeout=5) as r:
                if r.status < 500:
                    return
        except urllib.error.HTTPError as e:
            if e.code < 500:
                return
        except OSError:
            pass
        time.sleep(0.1)
    raise RuntimeError("%s did not answer within %ss" % (url, timeout))


class Glance:
    def __init__(self, env_extra, port=None):
        self.port = port or free_port()
        self.data = tempfile.mkdtemp(prefix="gcp-e2e-glance-")
        self.env = dict(os.environ, GLANCE_VENV=VENV, **env_extra)
        out = subprocess.run(
            ["bash", LAUNCHER, "start", str(self.port), self.data],
            env=self.env, capture_output=True, text=True, timeout=180,
        )
        if out.returncode != 0:
            raise RuntimeError("glance did not start: %s" % out.stderr[-3000:])
        self.url = out.stdout.split()[-1]

    def stop(self):
        subprocess.run(["bash", LAUNCHER, "stop", self.data], env=self.env,
                       capture_output=True, timeout=60)
        subprocess.run(["rm", "-rf", self.data], timeout=60)


class Proxy:
    def __init__(self, upstream, extra_args=()):
        self.port = free_port()
        self.url = "http://127.0.0.1:%d" % self.port
        self.cache = tempfile.mkdtemp(prefix="gcp-e2e-cache-")
        self.log_path = os.path.join(self.cache, "..", os.path.basename(self.cache) + ".log")
        self.log = open(self.log_path, "w")
        self.proc = subprocess.Popen(
            [PROXY_BIN, "--listen", "127.0.0.1:%d" % self.port, "--upstream", upstream,
             "--cache-dir", os.path.join(self.cache, "c"), "--metrics-listen", "", *extra_args],
            stdout=subprocess.DEVNULL, stderr=self.log, env=dict(os.environ, RUST_LOG="info"),
        )
        wait_http(self.url + "/versions", proc=self.proc)

    def access_lines(self, needle=""):
        """The proxy's access-log lines (one per request), optionally filtered."""
        with open(self.log_path) as f:
            return [l for l in f if " access: " in l and needle in l]

    def stop(self):
        self.proc.terminate()
        try:
            code = self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait(timeout=10)
        self.log.close()
        subprocess.run(["rm", "-rf", self.cache, self.log_path], timeout=60)
        return code

    def tail(self, n=40):
        with open(self.log_path) as f:
            return "".join(f.readlines()[-n:])


@pytest.fixture(scope="session")
def glance():
    g = Glance({})
    yield g
    g.stop()


@pytest.fixture(scope="session")
def proxy(glance):
    p = Proxy(glance.url)
    yield p
    code = p.stop()
    assert code == 0, "proxy exit status %s on SIGTERM" % code


@pytest.fixture(scope="session")
def glance_public():
    """A Glance that writes its own URL into version hrefs (public_endpoint), cache off."""
    port = free_port()
    g = Glance({"GLANCE_PUBLIC_ENDPOINT": "http://127.0.0.1:%d" % port, "GLANCE_CACHE": "0"}, port)
    yield g
    g.stop()


@pytest.fixture(scope="session")
def proxy_public(glance_public):
    p = Proxy(glance_public.url)
    yield p
    p.stop()


@pytest.hookimpl(tryfirst=True, hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    if rep.when == "call" and rep.failed:
        for name in ("proxy", "proxy_public"):
            p = item.funcargs.get(name)
            if p is not None:
                rep.sections.append(("%s log (tail)" % name, p.tail()))
