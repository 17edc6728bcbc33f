#!/usr/bin/env bash
# Cache benchmark against a real Glance (its own cache off), release build, one run:
#  - miss throughput vs a direct download from Glance vs this machine's sha512+md5 rate
#    (cargo bench --bench hashrate, the proxy's own Digests);
#  - hit throughput vs the direct download;
#  - 64 concurrent cold requests for one image: wall time vs one cold download, and how
#    many downloads Glance served;
#  - index rebuild at start with 10,000 entries on disk.
#
#   bench/cache.sh [IMAGE_MIB] [HERD_MIB]     (defaults 1024 and 256)
# Everything on 127.0.0.1, stopped on exit. Prints markdown tables.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
export GLANCE_VENV=${GLANCE_VENV:-$HOME/.cache/glance-cache-proxy/glance-venv}
IMAGE_MIB=${1:-1024}
HERD_MIB=${2:-256}
HERD=64
LAUNCHER=scripts/glance-upstream/glance-upstream.sh

work=$(mktemp -d /tmp/gcp-bench-cache.XXXXXX)
gdata=$work/glance pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    GLANCE_CACHE=0 "$LAUNCHER" stop "$gdata" >/dev/null 2>&1 || true
    rm -rf "$work"
}
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN{printf "%.2f", b-a}'; }
mbps() { awk -v m="$1" -v s="$2" 'BEGIN{printf "%.0f", m*1048576/s/1e6}'; }

cargo build --release --locked --bin glance-cache-proxy >&2
hashtable=$(cargo bench --locked --bench hashrate -- "$IMAGE_MIB" 3 2>/dev/null) # 3 repetitions

gport=$(free_port)
glance=$(GLANCE_CACHE=0 "$LAUNCHER" start "$gport" "$gdata" | awk '{print $2}')
start_proxy() { # CACHE_DIR LOG -> sets proxy, appends pid
    local port; port=$(free_port)
    target/release/glance-cache-proxy --listen "127.0.0.1:$port" --upstream "$glance" \
        --cache-dir "$1" --cache-max-size 20GiB --metrics-listen "" 2> "$2" &
    pids+=($!)
    proxy=http://127.0.0.1:$port
    for _ in $(seq 300); do curl -sf -o /dev/null "$proxy/versions" && return; sleep 0.1; done
    echo "proxy did not start" >&2; exit 1
}
upload() { # MIB -> image id
    local id
    id=$(curl -sf -X POST -H 'X-Auth-Token: noauth' -H 'Content-Type: application/json' \
        -d '{"name":"bench","disk_format":"raw","container_format":"bare"}' "$glance/v2/images" |
        python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])')
    head -c "$(($1 << 20))" /dev/urandom > "$work/img"
    timeout 900 curl -sf -o /dev/null -H 'X-Auth-Token: noauth' \
        -H 'Content-Type: application/octet-stream' -T "$work/img" "$glance/v2/images/$id/file"
    echo "$id"
}
fetch() { timeout 900 curl -sf -o /dev/null -H 'X-Auth-Token: noauth' "$1"; }
committed() { for _ in $(seq 600); do [[ -f $1/images/$2 ]] && return; sleep 0.1; done; echo "not cached" >&2; exit 1; }

start_proxy "$work/cache" "$work/proxy.log"
a=$(upload "$IMAGE_MIB")
b=$(upload "$HERD_MIB")
# Herd bodies are checked with cksum (CRC, hardware-assisted): sha256sum would cost more CPU
# than the proxy and become what the herd measures.
want=$(cksum < "$work/img")   # image b's bytes

t0=$(now); fetch "$glance/v2/images/$a/file"; t_direct=$(since "$t0")
t0=$(now); fetch "$proxy/v2/images/$a/file"; t_miss=$(since "$t0")
committed "$work/cache" "$a"
hits=()
for _ in 1 2 3; do t0=$(now); fetch "$proxy/v2/images/$a/file"; hits+=("$(since "$t0")"); done
t_hit=$(printf '%s\n' "${hits[@]}" | sort -n | sed -n 2p)
t0=$(now); fetch "$glance/v2/images/$a/file"; t_direct2=$(since "$t0")

# Herd: 64 clients ask for the cold image b at once.
t0=$(now)
herd=()
for i in $(seq "$HERD"); do
    (timeout 900 curl -sf -H 'X-Auth-Token: noauth' "$proxy/v2/images/$b/file" | cksum > "$work/herd.$i") &
    herd+=($!)
done
for p in "${herd[@]}"; do wait "$p"; done
t_herd=$(since "$t0")
bad=0
for i in $(seq "$HERD"); do [[ $(cat "$work/herd.$i") == "$want" ]] || bad=$((bad + 1)); done
upstream_b=$(grep -c "GET /v2/images/$b/file HTTP/1.1\" 200" "$gdata/log/access.log" || true)
committed "$work/cache" "$b"
# One cold download of the same size, for comparison: evict b and fetch it alone.
curl -sf -o /dev/null -X DELETE -H 'X-Auth-Token: noauth' "$proxy/v2/images/$a" || true
kill "${pids[-1]}"; wait "${pids[-1]}" 2>/dev/null || true
rm -rf "$work/cache"
start_proxy "$work/cache" "$work/proxy2.log"
t0=$(now); fetch "$proxy/v2/images/$b/file"; t_one=$(since "$t0")

# Index rebuild: 10,000 committed entries on disk.
python3 - "$work/many" <<'PY'
import json, os, sys
d = os.path.join(sys.argv[1], "images"); os.makedirs(d)
for i in range(10000):
    iid = "00000000-0000-4000-8000-%012d" % i
    with open(os.path.join(d, iid), "wb") as f:
        f.write(b"x" * 1024)
    with open(os.path.join(d, iid + ".meta"), "w") as f:
        json.dump({"image_id": iid, "size": 1024, "checksum": "0" * 32, "os_hash_algo": "sha512",
                   "os_hash_value": "0" * 128, "committed_ms": 1}, f)
PY
sync; echo 3 > /proc/sys/vm/drop_caches 2>/dev/null || true
start_proxy "$work/many" "$work/proxy3.log"
opened=$(grep -o 'cache opened.*' "$work/proxy3.log" | head -1)
entries=$(sed -n 's/.*entries=\([0-9]*\).*/\1/p' <<< "$opened")
rebuild_ms=$(sed -n 's/.*elapsed_ms=\([0-9.]*\).*/\1/p' <<< "$opened")

echo
echo "Cache benchmark: ${IMAGE_MIB} MiB image, herd ${HERD} x ${HERD_MIB} MiB; $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
echo
echo "$hashtable"
echo
echo "| download (${IMAGE_MIB} MiB, curl to /dev/null) | seconds | MB/s |"
echo "| --- | --- | --- |"
echo "| direct from Glance (before) | $t_direct | $(mbps "$IMAGE_MIB" "$t_direct") |"
echo "| through the proxy, miss (tee + sha512 + md5 + fsync) | $t_miss | $(mbps "$IMAGE_MIB" "$t_miss") |"
echo "| through the proxy, hit (median of 3) | $t_hit | $(mbps "$IMAGE_MIB" "$t_hit") |"
echo "| direct from Glance (after) | $t_direct2 | $(mbps "$IMAGE_MIB" "$t_direct2") |"
echo
echo "| cold herd (${HERD_MIB} MiB image) | value |"
echo "| --- | --- |"
echo "| one cold download, alone | ${t_one} s |"
echo "| ${HERD} concurrent cold downloads, all done | ${t_herd} s |"
echo "| downloads Glance served for the herd | $upstream_b |"
echo "| herd bodies with a wrong checksum (cksum) | $bad |"
echo
echo "| index rebuild at start | value |"
echo "| --- | --- |"
echo "| entries found | $entries |"
echo "| rebuild time (scan + index), page cache dropped | ${rebuild_ms} ms |"
[[ $bad == 0 && $upstream_b == 1 ]] || { echo "FAIL: herd"; exit 1; }
