#!/usr/bin/env bash
# Access-log flood (issue 26): CLIENTS clients send GETs with a TARGET_KB request target as
# fast as they can for SECONDS, while the proxy's stderr is read at READ_KBPS by a slow reader
# (a log shipper that lags); meanwhile another client asks GET /versions every 100 ms. Per
# build: requests answered, the /versions latency (p50, p99, max, timeouts at 5 s), the
# proxy's RSS before and at its peak, the bytes its log produced, and (where the build counts
# them) access lines dropped. Upstream: a real Glance (noauth, cache off).
#
#   [PROXY_BIN=path] [BASELINE_BIN=path] bench/log-flood.sh [CLIENTS] [TARGET_KB] [SECONDS] [READ_KBPS]
#                 (defaults 16 60 20 1000)
# With BASELINE_BIN, that build runs too, in interleaved order (baseline first). All on
# 127.0.0.1; stops what it starts.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
export GLANCE_VENV=${GLANCE_VENV:-$HOME/.cache/glance-cache-proxy/glance-venv}
CLIENTS=${1:-16}
TARGET_KB=${2:-60}
SECONDS_=${3:-20}
READ_KBPS=${4:-1000}
LAUNCHER=scripts/glance-upstream/glance-upstream.sh

work=$(mktemp -d /tmp/gcp-bench-flood.XXXXXX)
gdata=$work/glance proxy_pid=""
cleanup() {
    [[ -n $proxy_pid ]] && kill "$proxy_pid" 2>/dev/null && wait "$proxy_pid" 2>/dev/null
    GLANCE_CACHE=0 "$LAUNCHER" stop "$gdata" >/dev/null 2>&1 || true
    rm -rf "$work"
}
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

if [[ -z ${PROXY_BIN:-} ]]; then
    cargo build --release --locked --bin glance-cache-proxy >&2
    PROXY_BIN=target/release/glance-cache-proxy
fi
gport=$(free_port)
glance=$(GLANCE_CACHE=0 "$LAUNCHER" start "$gport" "$gdata" | awk '{print $2}')

# run NAME BIN: one flood against a fresh proxy; prints one table row.
run() {
    local pport mport
    pport=$(free_port) mport=$(free_port)
    python3 - "$2" "$pport" "$mport" "$glance" "$work/cache-$1" "$CLIENTS" "$TARGET_KB" \
        "$SECONDS_" "$READ_KBPS" "$1" <<'PY'
import http.client, os, socket, statistics, subprocess, sys, threading, time
binary, pport, mport, glance, cache = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5]
clients, target_kb, seconds, read_kbps, name = (int(sys.argv[6]), int(sys.argv[7]),
                                                float(sys.argv[8]), int(sys.argv[9]), sys.argv[10])
env = dict(os.environ, RUST_LOG="info")
proxy = subprocess.Popen([binary, "--listen", f"127.0.0.1:{pport}", "--upstream", glance,
                          "--cache-dir", cache, "--metrics-listen", f"127.0.0.1:{mport}"],
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
logged = [0]
def slow_reader():
    chunk = 16 << 10
    pause = chunk / (read_kbps * 1000)
    while True:
        data = proxy.stderr.read1(chunk) if hasattr(proxy.stderr, "read1") else proxy.stderr.read(chunk)
        if not data:
            return
        logged[0] += len(data)
        time.sleep(pause)
threading.Thread(target=slow_reader, daemon=True).start()
for _ in range(300):
    try:
        socket.create_connection(("127.0.0.1", pport), timeout=1).close()
        break
    except OSError:
        time.sleep(0.1)
def rss():
    with open(f"/proc/{proxy.pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) // 1024
    return 0
before = rss()
stop = time.monotonic() + seconds
answered = [0]
request = (f"GET /v2/images/{'a' * (target_kb * 1000)} HTTP/1.1\r\nHost: x\r\n"
           "X-Auth-Token: noauth\r\n\r\n").encode()
def flood():
    while time.monotonic() < stop:
        try:
            s = socket.create_connection(("127.0.0.1", pport), timeout=5)
            while time.monotonic() < stop:
                s.sendall(request)
                head = s.recv(65536)
                if not head:
                    break
                answered[0] += 1
                if b"connection: close" in head.lower():
                    break
            s.close()
        except OSError:
            time.sleep(0.01)
threads = [threading.Thread(target=flood, daemon=True) for _ in range(clients)]
for t in threads:
    t.start()
lat, timeouts, peak = [], 0, before
while time.monotonic() < stop:
    t0 = time.monotonic()
    try:
        c = http.client.HTTPConnection("127.0.0.1", pport, timeout=5)
        c.request("GET", "/versions")
        r = c.getresponse(); r.read(); c.close()
        lat.append((time.monotonic() - t0) * 1000)
    except OSError:
        timeouts += 1
    peak = max(peak, rss())
    time.sleep(0.1)
for t in threads:
    t.join(timeout=10)
peak = max(peak, rss())
dropped = "-"
try:
    c = http.client.HTTPConnection("127.0.0.1", mport, timeout=5)
    c.request("GET", "/metrics")
    for line in c.getresponse().read().decode().splitlines():
        if line.startswith("glance_cache_proxy_access_log_dropped_total "):
            dropped = str(int(float(line.split()[1])))
except OSError:
    pass
proxy.kill(); proxy.wait()
q = lambda p: statistics.quantiles(lat, n=100, method="inclusive")[p - 1] if len(lat) >= 2 else float("nan")
print(f"| {name} | {answered[0]} | {len(lat)} | {q(50):.1f} | {q(99):.1f} | "
      f"{max(lat) if lat else float('nan'):.1f} | {timeouts} | {before} | {peak} | "
      f"{logged[0] / 1e6:.1f} | {dropped} |")
PY
}

echo "Flood: $CLIENTS clients x ${TARGET_KB} KB targets for ${SECONDS_} s, stderr read at ${READ_KBPS} KB/s"
echo
echo "| build | flood requests answered | /versions asked | p50 ms | p99 ms | max ms | timeouts (5 s) | RSS before MiB | RSS peak MiB | log read MB | lines dropped |"
echo "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"
if [[ -n ${BASELINE_BIN:-} ]]; then run baseline "$BASELINE_BIN"; fi
run this "$PROXY_BIN"
