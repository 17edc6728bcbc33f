"""Operations end to end: the proxy's /metrics after real traffic (a miss, a hit, metadata and
a cache-API call through a real Glance) passes `promtool check metrics` and shows that
traffic; /healthz and /readyz answer; the JSON access log has one parseable line per request
with the cache outcome and request id.
"""
import json
import os
import subprocess
import tempfile
import time

import pytest
import requests

from conftest import Proxy

NOAUTH = {"X-Auth-Token": "noauth"}
DATA = os.urandom(3 << 20)
T = 60


@pytest.fixture(scope="module")
def ops_proxy(glance):
    conf = tempfile.NamedTemporaryFile("w", suffix=".toml", delete=False)
    conf.write('[log]\nformat = "json"\n')
    conf.close()
    p = Proxy(glance.url, ["--config", conf.name], metrics=True)
    try:
        yield p
    finally:
        assert p.stop() == 0, p.tail()
        os.unlink(conf.name)


def scrape(p):
    r = requests.get(p.metrics_url + "/metrics", timeout=T)
    assert r.status_code == 200
    return r.text


def series(page, name):
    return sum(float(line.rsplit(" ", 1)[1]) for line in page.splitlines()
               if line.startswith(name) and not line.startswith("#"))


def test_metrics_scrape_passes_promtool_and_counts_the_traffic(ops_proxy, glance):
    p = ops_proxy
    r = requests.post(glance.url + "/v2/images", headers=NOAUTH, timeout=T,
                      json={"name": "ops", "disk_format": "raw", "container_format": "bare"})
    image_id = r.json()["id"]
    r = requests.put("%s/v2/images/%s/file" % (glance.url, image_id), data=DATA, timeout=T,
                     headers=dict(NOAUTH, **{"Content-Type": "application/octet-stream"}))
    assert r.status_code == 204
    url = "%s/v2/images/%s/file" % (p.url, image_id)
    assert requests.get(url, headers=NOAUTH, timeout=T).content == DATA      # miss
    deadline = time.monotonic() + 30
    while not os.path.exists(os.path.join(p.cache, "c", "images", image_id)):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert requests.get(url, headers=NOAUTH, timeout=T).content == DATA      # hit
    assert requests.get(p.url + "/v2/images", headers=NOAUTH, timeout=T).status_code == 200
    assert requests.get(p.url + "/v2/cache", headers=NOAUTH, timeout=T).status_code == 200
    time.sleep(0.3)  # requests are counted when their bodies are done

    page = scrape(p)
    out = subprocess.run(["promtool", "check", "metrics"], input=page, capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
    assert series(page, 'glance_cache_proxy_image_requests_total{outcome="hit"') >= 1
    assert series(page, 'glance_cache_proxy_image_requests_total{outcome="miss"') >= 1
    assert series(page, 'glance_cache_proxy_served_bytes_total{source="cache"}') >= len(DATA)
    assert series(page, 'glance_cache_proxy_fills_total{result="committed"}') >= 1
    assert series(page, "glance_cache_proxy_sendfile_bytes_total") >= len(DATA)
    assert series(page, 'glance_cache_proxy_requests_total{route="cache_api"') >= 1
    assert image_id not in page

    assert requests.get(p.metrics_url + "/healthz", timeout=T).status_code == 200
    assert requests.get(p.metrics_url + "/readyz", timeout=T).status_code == 200


def test_json_access_log_has_outcome_and_request_id(ops_proxy, glance):
    p = ops_proxy
    rid = "req-ops-%d" % os.getpid()
    requests.get(p.url + "/v2/images", headers=dict(NOAUTH, **{"X-Openstack-Request-Id": rid}), timeout=T)
    time.sleep(0.3)
    lines = []
    with open(p.log_path) as f:
        for line in f:
            doc = json.loads(line)  # every line is JSON
            if doc.get("target") == "access" or doc.get("route"):
                lines.append(doc)
    mine = [d for d in lines if d.get("path") == "/v2/images" and d.get("request_id")]
    assert mine, lines[-3:]
    hits = [d for d in lines if d.get("cache") == "hit"]
    assert hits and all(d.get("status") == 200 for d in hits), lines[-5:]
    for d in lines:
        for key in ("method", "path", "status", "bytes", "duration_ms", "request_id", "route", "cache", "outcome"):
            assert key in d, (key, d)
