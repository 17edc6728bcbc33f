#!/usr/bin/env bash
# Same-run A/B of two builds on the paths a change must not slow down: hits of a large image
# (1 client, 8 clients), hits of a small image (where the per-request work shows: the record
# question to Glance, the decision, the headers) and metadata calls passed through to Glance.
# Both proxies run at once against one real Glance (noauth, its own cache off), each with its
# own cache directory holding the same images, warm in the page cache; rounds interleave the
# builds and flip their order every round. Proxy CPU is utime+stime from /proc/PID/stat.
# Prints medians per build, new/old ratios and in how many rounds the new build was worse.
#
#   OLD_BIN=path/to/older/glance-cache-proxy [NEW_BIN=...] bench/ab.sh [BIG_MIB] [ROUNDS] [SMALL_REQS]
#       defaults 512 7 2000; NEW_BIN defaults to this tree's release build (built if absent)
# All on 127.0.0.1; everything started is stopped, the work directory removed.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
export GLANCE_VENV=${GLANCE_VENV:-$HOME/.cache/glance-cache-proxy/glance-venv}
BIG_MIB=${1:-512}
ROUNDS=${2:-7}
SMALL_REQS=${3:-2000}
CLIENTS=4
LAUNCHER=scripts/glance-upstream/glance-upstream.sh
[[ -x ${OLD_BIN:-} ]] || { echo "bench/ab.sh: set OLD_BIN to the older build's binary" >&2; exit 2; }
if [[ -z ${NEW_BIN:-} ]]; then
    cargo build --release --locked --bin glance-cache-proxy >&2
    NEW_BIN=target/release/glance-cache-proxy
fi

work=$(mktemp -d /tmp/gcp-bench-ab.XXXXXX)
gdata=$work/glance
declare -A pid port
cleanup() {
    for b in old new; do
        [[ -n ${pid[$b]:-} ]] && kill "${pid[$b]}" 2>/dev/null && wait "${pid[$b]}" 2>/dev/null
    done
    GLANCE_CACHE=0 "$LAUNCHER" stop "$gdata" >/dev/null 2>&1 || true
    rm -rf "$work"
}
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
gcc -O2 -o "$work/rawget" bench/rawget.c

gport=$(free_port)
glance=$(GLANCE_CACHE=0 "$LAUNCHER" start "$gport" "$gdata" | awk '{print $2}')
upload() { # NAME MIB -> image id
    local id
    id=$(curl -sf -X POST -H 'X-Auth-Token: noauth' -H 'Content-Type: application/json' \
        -d "{\"name\":\"$1\",\"disk_format\":\"raw\",\"container_format\":\"bare\"}" "$glance/v2/images" |
        python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])')
    head -c "$(($2 << 20))" /dev/urandom |
        curl -sf -o /dev/null -H 'X-Auth-Token: noauth' -H 'Content-Type: application/octet-stream' \
            -T - "$glance/v2/images/$id/file"
    echo "$id"
}
big=$(upload ab-big "$BIG_MIB")
small=$(upload ab-small 1)

start_proxy() { # NAME BIN
    port[$1]=$(free_port)
    "$2" --listen "127.0.0.1:${port[$1]}" --upstream "$glance" --cache-dir "$work/cache-$1" \
        --cache-max-size 20GiB --metrics-listen "" 2>> "$work/proxy-$1.log" &
    pid[$1]=$!
    for _ in $(seq 300); do curl -sf -o /dev/null "http://127.0.0.1:${port[$1]}/versions" && return; sleep 0.1; done
    echo "bench/ab.sh: the $1 proxy did not start (log: $work/proxy-$1.log)" >&2; exit 1
}
start_proxy old "$OLD_BIN"
start_proxy new "$NEW_BIN"
for b in old new; do
    for id in "$big" "$small"; do
        curl -sf -o /dev/null "http://127.0.0.1:${port[$b]}/v2/images/$id/file"
        for _ in $(seq 600); do [[ -f $work/cache-$b/images/$id ]] && break; sleep 0.1; done
        [[ -f $work/cache-$b/images/$id ]] || { echo "bench/ab.sh: $b did not cache $id" >&2; exit 1; }
        cat "$work/cache-$b/images/$id" > /dev/null   # warm in the page cache
    done
done

# The keep-alive client of the small-request phases: CLIENTS processes, N requests each,
# every response read whole and its status checked; prints the wall seconds of the slowest.
cat > "$work/many.py" <<'PY'
import http.client, sys, time
from multiprocessing import Pool
port, path, n, clients, want = int(sys.argv[1]), sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
def one(_):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    t = time.monotonic()
    for _ in range(n):
        c.request("GET", path, headers={"X-Auth-Token": "noauth"})
        r = c.getresponse()
        body = r.read()
        if r.status != 200 or (want and len(body) != want):
            raise SystemExit(f"status {r.status}, {len(body)} bytes")
    return time.monotonic() - t
with Pool(clients) as p:
    print(max(p.map(one, range(clients))))
PY
cpu() { awk '{print $14 + $15}' "/proc/${pid[$1]}/stat"; }   # clock ticks
tick=$(getconf CLK_TCK)

# phase BUILD NAME -> appends "build phase wall cpu_seconds units" to results
phase() {
    local b=$1 name=$2 p=${port[$1]} c0 t0 t1 c1 units
    c0=$(cpu "$b"); t0=$(date +%s.%N)
    case $name in
        hit1) "$work/rawget" 127.0.0.1 "$p" "/v2/images/$big/file" > "$work/got"; units=$BIG_MIB ;;
        hit8)
            local pids=()
            for i in $(seq 8); do
                "$work/rawget" 127.0.0.1 "$p" "/v2/images/$big/file" > "$work/got.$i" &
                pids+=($!)
            done
            wait "${pids[@]}"; units=$((8 * BIG_MIB)) ;;
        small) python3 "$work/many.py" "$p" "/v2/images/$small/file" "$((SMALL_REQS / CLIENTS))" "$CLIENTS" 1048576 > /dev/null
            units=$SMALL_REQS ;;
        meta) python3 "$work/many.py" "$p" "/v2/images/$small" "$((SMALL_REQS / CLIENTS))" "$CLIENTS" 0 > /dev/null
            units=$SMALL_REQS ;;
    esac
    t1=$(date +%s.%N); c1=$(cpu "$b")
    if [[ $name == hit* ]]; then
        for f in "$work"/got*; do
            [[ $(cat "$f") == $((BIG_MIB << 20)) ]] || { echo "bench/ab.sh: $b $name short body" >&2; exit 1; }
        done
        rm -f "$work"/got*
    fi
    echo "$b $name $(echo "$t1 - $t0" | bc -l) $(echo "($c1 - $c0) / $tick" | bc -l) $units" >> "$work/results"
}

echo "bench/ab.sh: $ROUNDS rounds, load before: $(cut -d' ' -f1-3 /proc/loadavg)" >&2
for r in $(seq "$ROUNDS"); do
    order=(old new); (( r % 2 == 0 )) && order=(new old)
    for name in hit1 hit8 small meta; do
        for b in "${order[@]}"; do phase "$b" "$name"; done
    done
    echo "round $r done, load $(cut -d' ' -f1 /proc/loadavg)" >&2
done
echo "bench/ab.sh: load after: $(cut -d' ' -f1-3 /proc/loadavg)" >&2

python3 - "$work/results" "$BIG_MIB" "$ROUNDS" "$OLD_BIN" "$NEW_BIN" <<'PY'
import statistics, sys
from collections import defaultdict
rows = defaultdict(list)  # (build, phase) -> [(wall, cpu, units)]
for line in open(sys.argv[1]):
    b, name, wall, cpu, units = line.split()
    rows[(b, name)].append((float(wall), float(cpu), float(units)))
big, rounds = int(sys.argv[2]), int(sys.argv[3])
print(f"old = `{sys.argv[4]}`, new = `{sys.argv[5]}`; {big} MiB image, {rounds} rounds, medians\n")
print("| phase | metric | old | new | new/old | rounds new worse |")
print("| --- | --- | --- | --- | --- | --- |")
label = {"hit1": "hit, 1 client", "hit8": "hit, 8 clients", "small": "hit, 1 MiB image, 4 keep-alive clients",
         "meta": "metadata (GET /v2/images/ID), 4 keep-alive clients"}
for name in ("hit1", "hit8", "small", "meta"):
    o, n = rows[("old", name)], rows[("new", name)]
    if name.startswith("hit"):
        metrics = [("MB/s (higher is better)", lambda w, c, u: u * 1.048576 / w, True),
                   ("proxy CPU-s per GB", lambda w, c, u: c / (u * 1.048576 / 1000), False)]
    else:
        metrics = [("requests/s (higher is better)", lambda w, c, u: u / w, True),
                   ("proxy CPU us per request", lambda w, c, u: c * 1e6 / u, False)]
    for mname, f, higher in metrics:
        ov = [f(*x) for x in o]
        nv = [f(*x) for x in n]
        worse = sum(1 for a, b in zip(ov, nv) if (b < a if higher else b > a))
        mo, mn = statistics.median(ov), statistics.median(nv)
        print(f"| {label[name]} | {mname} | {mo:.3g} | {mn:.3g} | {mn / mo:.2f} | {worse} of {len(ov)} |")
PY
