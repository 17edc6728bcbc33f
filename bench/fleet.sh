#!/usr/bin/env bash
# Fleet scenario: why operators deploy the proxy. Glance runs in a network namespace of its
# own behind a shaped link (veth; tbf for RATE, netem for RTT where the kernel has it), like
# a controller across a WAN or a
# busy network. 8 clients on this host each pull the same image, first directly from Glance,
# then through the proxy (cache empty at the start). Prints wall time and the bytes that
# crossed the link for both.
#
#   bench/fleet.sh [IMAGE_MIB] [CLIENTS] [RATE] [RTT_MS]   (defaults 1024 8 1gbit 10)
# Needs root (ip netns, tc). Test hosts only: 10.211.0.1 (this host) and 10.211.0.2 (Glance's
# namespace), created and removed by this script.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
export GLANCE_VENV=${GLANCE_VENV:-$HOME/.cache/glance-cache-proxy/glance-venv}
IMAGE_MIB=${1:-1024}
CLIENTS=${2:-8}
RATE=${3:-1gbit}
RTT_MS=${4:-10}
NS=gcp-fleet HOST_IF=gcp-fh NS_IF=gcp-fu
LAUNCHER=$PWD/scripts/glance-upstream/glance-upstream.sh
command -v tc >/dev/null || { apt-get update -q >/dev/null; apt-get install -y -q iproute2 >/dev/null; }

work=$(mktemp -d /tmp/gcp-bench-fleet.XXXXXX)
proxy_pid=""
cleanup() {
    [[ -n $proxy_pid ]] && kill "$proxy_pid" 2>/dev/null && wait "$proxy_pid" 2>/dev/null
    ip netns exec "$NS" env GLANCE_CACHE=0 "$LAUNCHER" stop "$work/glance" >/dev/null 2>&1 || true
    ip netns del "$NS" 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT
ip netns del "$NS" 2>/dev/null || true

cargo build --release --locked --bin glance-cache-proxy >&2
ip netns add "$NS"
ip link add "$HOST_IF" type veth peer name "$NS_IF"
ip link set "$NS_IF" netns "$NS"
ip addr add 10.211.0.1/24 dev "$HOST_IF"
ip link set "$HOST_IF" up
ip netns exec "$NS" ip addr add 10.211.0.2/24 dev "$NS_IF"
ip netns exec "$NS" ip link set "$NS_IF" up
ip netns exec "$NS" ip link set lo up
half=$((RTT_MS / 2))
# Glance -> host: the bottleneck rate (tbf). Delay needs netem, which some kernels lack (this
# project's VM kernel has no sch_netem): then the link is rate-limited only.
ip netns exec "$NS" tc qdisc add dev "$NS_IF" root handle 1: tbf rate "$RATE" burst 1mb latency 100ms
link="$RATE"
if ip netns exec "$NS" tc qdisc add dev "$NS_IF" parent 1:1 handle 10: netem delay "${half}ms" limit 100000 2>/dev/null &&
   tc qdisc add dev "$HOST_IF" root netem delay "${half}ms" limit 100000 2>/dev/null; then
    link="$link, ${RTT_MS} ms RTT"
else
    link="$link, no added delay (kernel without netem)"
fi

gport=9292
ip netns exec "$NS" env GLANCE_CACHE=0 GLANCE_BIND_ADDR=0.0.0.0 "$LAUNCHER" start "$gport" "$work/glance" >/dev/null
glance=http://10.211.0.2:$gport
for _ in $(seq 100); do curl -sf -o /dev/null "$glance/versions" && break; sleep 0.2; done

id=$(curl -sf -X POST -H 'X-Auth-Token: noauth' -H 'Content-Type: application/json' \
    -d '{"name":"fleet","disk_format":"raw","container_format":"bare"}' "$glance/v2/images" |
    python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])')
head -c "$((IMAGE_MIB << 20))" /dev/urandom > "$work/img"
# Bodies are checked with cksum (CRC, hardware-assisted): 8 sha256sums of the image would
# cost more CPU than the proxy on this 2-core machine and become what is measured.
want=$(cksum < "$work/img")
timeout 1800 curl -sf -o /dev/null -H 'X-Auth-Token: noauth' -H 'Content-Type: application/octet-stream' \
    -T "$work/img" "$glance/v2/images/$id/file"
rm -f "$work/img"

pport=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
target/release/glance-cache-proxy --listen "127.0.0.1:$pport" --upstream "$glance" \
    --cache-dir "$work/cache" --cache-max-size 20GiB --metrics-listen "" 2> "$work/proxy.log" &
proxy_pid=$!
proxy=http://127.0.0.1:$pport
for _ in $(seq 100); do curl -sf -o /dev/null "$proxy/versions" && break; sleep 0.1; done

link_bytes() { cat "/sys/class/net/$HOST_IF/statistics/rx_bytes"; }
# run BASE -> "seconds bytes_over_link wrong_bodies"
run() {
    local b0 t0 t pids=() bad=0
    b0=$(link_bytes); t0=$(date +%s.%N)
    for i in $(seq "$CLIENTS"); do
        (timeout 3600 curl -sf -H 'X-Auth-Token: noauth' "$1/v2/images/$id/file" | cksum > "$work/out.$i") &
        pids+=($!)
    done
    for p in "${pids[@]}"; do wait "$p"; done
    t=$(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN{printf "%.1f", b-a}')
    for i in $(seq "$CLIENTS"); do [[ $(cat "$work/out.$i") == "$want" ]] || bad=$((bad + 1)); done
    echo "$t $(( $(link_bytes) - b0 )) $bad"
}
read -r t_direct b_direct bad_direct <<< "$(run "$glance")"
read -r t_proxy b_proxy bad_proxy <<< "$(run "$proxy")"

echo
echo "Fleet: $CLIENTS clients x ${IMAGE_MIB} MiB image; Glance behind a shaped link: $link; $(nproc) cores"
echo
echo "| $CLIENTS clients, same image | wall time (s) | bytes over the link | MiB over the link | wrong bodies |"
echo "| --- | --- | --- | --- | --- |"
echo "| directly from Glance | $t_direct | $b_direct | $((b_direct >> 20)) | $bad_direct |"
echo "| through the proxy (cold cache) | $t_proxy | $b_proxy | $((b_proxy >> 20)) | $bad_proxy |"
awk -v a="$t_direct" -v b="$t_proxy" -v x="$b_direct" -v y="$b_proxy" \
    'BEGIN{printf "\nproxy vs direct: %.1fx faster, %.1fx fewer bytes over the link\n", a/b, x/y}'
