#!/usr/bin/env bash
# Cold-page-cache hits must not stall the runtime: latency of small metadata calls through the
# proxy (one keep-alive client, back to back) while nothing else runs, during 4 concurrent hits
# of 4 different 1 GiB images whose cached files were dropped from the page cache, and during
# the same 4 hits with the files in the page cache. Prints p50/p99/max per phase, the hits'
# throughput and how much of each file was resident before the phase (fincore). A second
# client calls the proxy's own /healthz (metrics listener, same runtime, no Glance): its
# latency is the proxy's responsiveness alone, without Glance's share of the disk and CPU.
#
#   bench/cold-hits.sh [IMAGE_MIB] [ROUNDS] [MB_PER_S]   (defaults 1024 2 250)
# Each hit client reads at most MB_PER_S (as behind a 2.5 Gbit link), so the machine's two
# cores are not saturated and what shows is the runtime waiting for the disk, if it does.
#   BASELINE_BIN=path/to/older/glance-cache-proxy bench/cold-hits.sh   also measures that build
#                                                 in the same run, on the same cache files
#   READ_MBPS=100 bench/cold-hits.sh 256          the proxy's disk reads throttled to 100 MB/s
#       (a cgroup v1 blkio or v2 io.max limit on the cache's disk): a slow disk, as in
#       production, where a cold sendfile call blocks for tens of milliseconds
# Root (page-cache control via posix_fadvise on the cache files only). All on 127.0.0.1.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
export GLANCE_VENV=${GLANCE_VENV:-$HOME/.cache/glance-cache-proxy/glance-venv}
IMAGE_MIB=${1:-1024}
ROUNDS=${2:-2}
PACE=${3:-250}
HITS=4
LAUNCHER=scripts/glance-upstream/glance-upstream.sh

work=$(mktemp -d /tmp/gcp-bench-cold.XXXXXX)
gdata=$work/glance proxy_pid=""
cgroup=""
cleanup() {
    [[ -n $proxy_pid ]] && kill "$proxy_pid" 2>/dev/null && wait "$proxy_pid" 2>/dev/null
    GLANCE_CACHE=0 "$LAUNCHER" stop "$gdata" >/dev/null 2>&1 || true
    [[ -n $cgroup ]] && rmdir "$cgroup" 2>/dev/null
    rm -rf "$work"
}
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

cargo build --release --locked --bin glance-cache-proxy >&2
gcc -O2 -o "$work/rawget" bench/rawget.c

gport=$(free_port)
glance=$(GLANCE_CACHE=0 "$LAUNCHER" start "$gport" "$gdata" | awk '{print $2}')
pport=$(free_port)
mport=$(free_port)
start_proxy() {
    "$1" --listen "127.0.0.1:$pport" --upstream "$glance" --cache-dir "$work/cache" \
        --cache-max-size 20GiB --metrics-listen "127.0.0.1:$mport" 2>> "$work/proxy.log" &
    proxy_pid=$!
    for _ in $(seq 300); do curl -sf -o /dev/null "http://127.0.0.1:$pport/versions" && return; sleep 0.1; done
    echo "bench: the proxy did not start" >&2; exit 1
}
stop_proxy() { kill "$proxy_pid"; wait "$proxy_pid" 2>/dev/null || true; proxy_pid=""; }
# throttle PID: cap its reads from the cache's disk at READ_MBPS (whole disk device).
throttle() {
    [[ -z ${READ_MBPS:-} ]] && return
    local dev disk
    dev=$(findmnt -no SOURCE -T "$work")
    disk=$(lsblk -no PKNAME "$dev" 2>/dev/null | head -1)
    disk=/dev/${disk:-$(basename "$dev")}
    local majmin; majmin=$(lsblk -dno MAJ:MIN "$disk" | tr -d ' ')
    if [[ -d /sys/fs/cgroup/blkio ]]; then
        cgroup=/sys/fs/cgroup/blkio/gcp-cold-hits
        mkdir -p "$cgroup"
        echo "$majmin $((READ_MBPS * 1000000))" > "$cgroup/blkio.throttle.read_bps_device"
    else
        cgroup=/sys/fs/cgroup/gcp-cold-hits
        mkdir -p "$cgroup"
        echo "+io" > /sys/fs/cgroup/cgroup.subtree_control 2>/dev/null || true
        echo "$majmin rbps=$((READ_MBPS * 1000000))" > "$cgroup/io.max"
    fi
    echo "$1" > "$cgroup/cgroup.procs"
}
start_proxy target/release/glance-cache-proxy

ids=()
for i in $(seq "$HITS"); do
    id=$(curl -sf -X POST -H 'X-Auth-Token: noauth' -H 'Content-Type: application/json' \
        -d "{\"name\":\"cold-$i\",\"disk_format\":\"raw\",\"container_format\":\"bare\"}" "$glance/v2/images" |
        python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])')
    head -c "$((IMAGE_MIB << 20))" /dev/urandom |
        curl -sf -o /dev/null -H 'X-Auth-Token: noauth' -H 'Content-Type: application/octet-stream' \
            -T - "$glance/v2/images/$id/file"
    curl -sf -o /dev/null "http://127.0.0.1:$pport/v2/images/$id/file"   # miss: fills the cache
    ids+=("$id")
done
for id in "${ids[@]}"; do
    for _ in $(seq 600); do [[ -f $work/cache/images/$id ]] && break; sleep 0.1; done
done
meta_id=${ids[0]}
stop_proxy

# drop|load the cached files' pages
pages() {
    python3 - "$1" "${ids[@]/#/$work/cache/images/}" <<'PY'
import os, sys
for path in sys.argv[2:]:
    fd = os.open(path, os.O_RDONLY)
    if sys.argv[1] == "drop":
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    else:
        while os.read(fd, 1 << 20):
            pass
    os.close(fd)
PY
}
resident() { fincore -b -n -o RES "${ids[@]/#/$work/cache/images/}" | awk '{s += $1} END {printf "%.0f%%", 100 * s / (n * m)}' n="$HITS" m="$((IMAGE_MIB << 20))"; }

# Calls back to back on one keep-alive connection until the stop file appears (or for
# SECONDS); prints "count p50_ms p99_ms max_ms" ("- - - -" if the URL never answers 200).
metaloop() { loop "$pport" "/v2/images/$meta_id" "$1"; }
healthloop() { loop "$mport" /healthz "$1"; }
loop() {
    python3 - "$1" "$2" "$3" "$work/stop" <<'PY'
import http.client, os, statistics, sys, time
port, path, seconds, stop = int(sys.argv[1]), sys.argv[2], float(sys.argv[3]), sys.argv[4]
conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
lat, end = [], time.monotonic() + seconds
while time.monotonic() < end and not os.path.exists(stop):
    t = time.monotonic()
    try:
        conn.request("GET", path, headers={"X-Auth-Token": "noauth"})
        r = conn.getresponse(); r.read()
    except OSError:
        break  # e.g. an older build without the metrics listener
    if r.status != 200:
        break
    lat.append((time.monotonic() - t) * 1000)
if not lat:
    print("- - - -"); sys.exit(0)
lat.sort()
q = lambda p: lat[min(len(lat) - 1, int(p * len(lat)))]
print(len(lat), "%.1f" % q(0.5), "%.1f" % q(0.99), "%.1f" % lat[-1])
PY
}

# phase NAME -> one table row: metadata latency while HITS concurrent hits run.
phase() {
    local build=$1 name=$2 res t0 t1 jobs=() got meta
    if [[ $name == cold ]]; then pages drop; else pages load; fi
    res=$(resident)
    rm -f "$work/stop"
    metaloop 600 > "$work/meta" &
    local meta_pid=$!
    healthloop 600 > "$work/health" &
    local health_pid=$!
    sleep 1
    t0=$(date +%s.%N)
    for id in "${ids[@]}"; do
        timeout 600 "$work/rawget" 127.0.0.1 "$pport" "/v2/images/$id/file" "$PACE" > "$work/got.$id" &
        jobs+=($!)
    done
    for j in "${jobs[@]}"; do wait "$j" || true; done
    t1=$(date +%s.%N)
    touch "$work/stop"; wait "$meta_pid" "$health_pid"
    got=$(cat "$work"/got.* | awk '{s += $1} END {printf "%.0f", s}'); rm -f "$work"/got.*
    if [[ $got != $(( HITS * (IMAGE_MIB << 20) )) ]]; then
        echo "bench: $build $name: hits received $got bytes" >&2; exit 1
    fi
    read -r n p50 p99 max < "$work/meta"
    read -r _ h50 h99 hmax < "$work/health"
    awk -v b="$build" -v p="$name" -v r="$res" -v n="$n" -v p50="$p50" -v p99="$p99" -v mx="$max" \
        -v h50="$h50" -v h99="$h99" -v hmax="$hmax" \
        -v bytes="$(( HITS * (IMAGE_MIB << 20) ))" -v s="$(awk -v a="$t0" -v b="$t1" 'BEGIN{print b-a}')" \
        'BEGIN{printf "| %s | %s | %s | %d | %s | %s | %s | %s | %s | %s | %.2f |\n", b, p, r, n, p50, p99, mx, h50, h99, hmax, bytes/1e9/s}'
}

builds=("this build=target/release/glance-cache-proxy")
[[ -n ${BASELINE_BIN:-} ]] && builds+=("baseline=$BASELINE_BIN")
rows=()
for r in $(seq "$ROUNDS"); do
    for b in "${builds[@]}"; do
        name=${b%%=*} bin=${b#*=}
        start_proxy "$bin"
        throttle "$proxy_pid"
        rm -f "$work/stop"
        idle=$(metaloop 5)
        read -r n p50 p99 max <<< "$idle"
        read -r _ h50 h99 hmax <<< "$(healthloop 3)"
        rows+=("| $name | idle (no hits) | - | $n | $p50 | $p99 | $max | $h50 | $h99 | $hmax | - |")
        rows+=("$(phase "$name" cold)")
        rows+=("$(phase "$name" warm)")
        stop_proxy
    done
done

echo
echo "Metadata latency during $HITS concurrent hits of ${IMAGE_MIB} MiB images (rawget, each paced to $PACE MB/s), one keep-alive"
echo "metadata client back to back (GET /v2/images/ID through the proxy to Glance); $(nproc) cores; $ROUNDS rounds${READ_MBPS:+; disk reads of the proxy throttled to $READ_MBPS MB/s}"
echo
echo "| build | phase | cached before | metadata calls | p50 ms | p99 ms | max ms | /healthz p50 ms | p99 ms | max ms | hits GB/s |"
echo "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"
printf '%s\n' "${rows[@]}"
