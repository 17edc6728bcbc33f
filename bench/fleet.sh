#!/usr/bin/env bash
# Fleet scenarios: why operators deploy the proxy, and how its tiers scale. Glance runs in a
# network namespace of its own behind a shaped link (veth; tbf for RATE, netem for RTT where
# the kernel has it), like a controller across a WAN or a busy network.
#
#   bench/fleet.sh [IMAGE_MIB] [CLIENTS] [RATE] [RTT_MS]   (defaults 1024 8 1gbit 10)
#     CLIENTS clients on this host each pull the same image, first directly from Glance, then
#     through one proxy (cache empty at the start): wall time and bytes over the link for both.
#
#   bench/fleet.sh storm [IMAGE_MIB] [NODES] [RATE] [SITES]  (defaults 1024 16 1gbit 3)
#     A boot storm through the large-fleet layout (README "Fleet topologies"): NODES network
#     namespaces ("compute nodes"), each with a node proxy and a client, all pull the same
#     image at once through HAProxy -> SITES site proxies -> one parent proxy -> Glance (the
#     site tier and the parent on this host). Round 1: HAProxy with today's plain consistent
#     hash (deploy/haproxy/haproxy.cfg without its hash-balance-factor line); round 2 (a second
#     image, fresh node caches, the same site proxies and parent): the shipped
#     deploy/haproxy/haproxy.cfg, bounded loads. Before and after, one client pulls an image
#     straight from Glance over the link: the one-transfer time the storms are compared with.
#     Prints the bytes each tier sent (the Glance link, the parent, each site proxy: max /
#     mean), wall time vs one transfer, and CPU seconds per GB of each tier (utime + stime from
#     /proc/PID/stat).
#
# Needs root (ip netns, tc). Test hosts only: 10.211.0.1 (this host) and 10.211.0.2 (Glance's
# namespace); for storm also 10.212.0.1 (a bridge on this host: the site tier) and
# 10.212.0.11... (the nodes), all created and removed by this script.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
export GLANCE_VENV=${GLANCE_VENV:-$HOME/.cache/glance-cache-proxy/glance-venv}
MODE=clients
if [[ ${1:-} == storm ]]; then
    MODE=storm
    shift
    IMAGE_MIB=${1:-1024}
    NODES=${2:-16}
    RATE=${3:-1gbit}
    SITES=${4:-3}
    RTT_MS=0
else
    IMAGE_MIB=${1:-1024}
    CLIENTS=${2:-8}
    RATE=${3:-1gbit}
    RTT_MS=${4:-10}
fi
NS=gcp-fleet HOST_IF=gcp-fh NS_IF=gcp-fu
BRIDGE=gcp-br
LAUNCHER=$PWD/scripts/glance-upstream/glance-upstream.sh
command -v tc >/dev/null || { apt-get update -q >/dev/null; apt-get install -y -q iproute2 >/dev/null; }
if [[ $MODE == storm ]] && ! command -v haproxy >/dev/null && [[ ! -x /usr/sbin/haproxy ]]; then
    apt-get update -q >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends haproxy >/dev/null
fi
HAPROXY=$(command -v haproxy || echo /usr/sbin/haproxy)

work=$(mktemp -d /tmp/gcp-bench-fleet.XXXXXX)
pids=()
cleanup() {
    local p
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
    ip netns exec "$NS" env GLANCE_CACHE=0 "$LAUNCHER" stop "$work/glance" >/dev/null 2>&1 || true
    ip netns del "$NS" 2>/dev/null || true
    for p in /run/netns/gcp-node*; do [[ -e $p ]] && ip netns del "$(basename "$p")"; done
    ip link del "$BRIDGE" 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT
ip netns del "$NS" 2>/dev/null || true

cargo build --release --locked --bin glance-cache-proxy >&2
BIN=$PWD/target/release/glance-cache-proxy
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
if ((half == 0)); then
    link="$link, no added delay"
elif ip netns exec "$NS" tc qdisc add dev "$NS_IF" parent 1:1 handle 10: netem delay "${half}ms" limit 100000 2>/dev/null &&
   tc qdisc add dev "$HOST_IF" root netem delay "${half}ms" limit 100000 2>/dev/null; then
    link="$link, ${RTT_MS} ms RTT"
else
    link="$link, no added delay (kernel without netem)"
fi

load0=$(cut -d' ' -f1-3 /proc/loadavg)
gport=9292
ip netns exec "$NS" env GLANCE_CACHE=0 GLANCE_BIND_ADDR=0.0.0.0 "$LAUNCHER" start "$gport" "$work/glance" >/dev/null
glance=http://10.211.0.2:$gport
for _ in $(seq 100); do curl -sf -o /dev/null "$glance/versions" && break; sleep 0.2; done

# upload NAME -> "ID CKSUM": a new image of IMAGE_MIB random MiB.
# Bodies are checked with cksum (CRC, hardware-assisted): sha256sums of every client's copy
# would cost more CPU than the proxy on this 2-core machine and become what is measured.
upload() {
    local id want
    id=$(curl -sf -X POST -H 'X-Auth-Token: noauth' -H 'Content-Type: application/json' \
        -d "{\"name\":\"$1\",\"disk_format\":\"raw\",\"container_format\":\"bare\"}" "$glance/v2/images" |
        python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])')
    head -c "$((IMAGE_MIB << 20))" /dev/urandom > "$work/img"
    want=$(cksum < "$work/img")
    timeout 1800 curl -sf -o /dev/null -H 'X-Auth-Token: noauth' -H 'Content-Type: application/octet-stream' \
        -T "$work/img" "$glance/v2/images/$id/file"
    rm -f "$work/img"
    echo "$id $want"
}
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
link_bytes() { cat "/sys/class/net/$HOST_IF/statistics/rx_bytes"; }
elapsed() { awk -v a="$1" -v b="$(date +%s.%N)" 'BEGIN{printf "%.1f", b-a}'; }

# ---- clients: CLIENTS clients on this host, directly vs through one proxy --------------------
clients_mode() {
    local id want pport proxy
    read -r id want < <(upload fleet)
    pport=$(free_port)
    "$BIN" --listen "127.0.0.1:$pport" --upstream "$glance" \
        --cache-dir "$work/cache" --cache-max-size 20GiB --metrics-listen "" 2> "$work/proxy.log" &
    pids+=($!)
    proxy=http://127.0.0.1:$pport
    for _ in $(seq 100); do curl -sf -o /dev/null "$proxy/versions" && break; sleep 0.1; done

    # run BASE -> "seconds bytes_over_link wrong_bodies"
    run() {
        local b0 t0 t ps=() bad=0
        b0=$(link_bytes); t0=$(date +%s.%N)
        for i in $(seq "$CLIENTS"); do
            (timeout 3600 curl -sf -H 'X-Auth-Token: noauth' "$1/v2/images/$id/file" | cksum > "$work/out.$i") &
            ps+=($!)
        done
        for p in "${ps[@]}"; do wait "$p"; done
        t=$(elapsed "$t0")
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
}

if [[ $MODE == clients ]]; then
    clients_mode
    exit 0
fi

# ---- storm: NODES node namespaces -> site tier on this host -> Glance ------------------------
HZ=$(getconf CLK_TCK)
# ticks PID... -> the processes' utime + stime, in clock ticks
ticks() {
    local t=0 p f
    for p in "$@"; do read -r -a f < "/proc/$p/stat"; t=$((t + f[13] + f[14])); done
    echo "$t"
}
# cpu -> "busy iowait total" jiffies of the whole machine (/proc/stat)
cpu() { awk '/^cpu / {print $2 + $3 + $4 + $7 + $8 + $9, $6, $2 + $3 + $4 + $5 + $6 + $7 + $8 + $9}' /proc/stat; }
# served METRICS_ADDR -> image bytes the proxy sent (served_bytes_total, all sources)
served() {
    curl -sf "http://$1/metrics" | awk '/^glance_cache_proxy_served_bytes_total/ {s += $2} END {printf "%.0f", s}'
}
ip link add "$BRIDGE" type bridge
ip addr add 10.212.0.1/24 dev "$BRIDGE"
ip link set "$BRIDGE" up
for i in $(seq "$NODES"); do
    ip netns add "gcp-node$i"
    ip link add "gcp-h$i" type veth peer name "gcp-n$i"
    ip link set "gcp-h$i" master "$BRIDGE" up
    ip link set "gcp-n$i" netns "gcp-node$i"
    ip netns exec "gcp-node$i" ip addr add "10.212.0.$((10 + i))/24" dev "gcp-n$i"
    ip netns exec "gcp-node$i" ip link set "gcp-n$i" up
    ip netns exec "gcp-node$i" ip link set lo up
done

# proxy NAME UPSTREAM -> a proxy on the bridge (API and metrics) with a fresh cache; sets
# px_pid, px_port, px_metrics
proxy() {
    px_port=$(free_port)
    px_metrics=10.212.0.1:$(free_port)
    "$BIN" --listen "10.212.0.1:$px_port" --upstream "$2" --cache-dir "$work/$1" \
        --cache-max-size 20GiB --metrics-listen "$px_metrics" 2> "$work/$1.log" &
    px_pid=$!
    pids+=("$px_pid")
    for _ in $(seq 100); do curl -sf -o /dev/null "http://10.212.0.1:$px_port/versions" && break; sleep 0.1; done
}
# nodes UPSTREAM -> a node proxy in every node namespace (127.0.0.1:9393 there, a fresh cache);
# sets node_pids
nodes() {
    local i
    node_pids=()
    for i in $(seq "$NODES"); do
        rm -rf "$work/node$i"
        ip netns exec "gcp-node$i" "$BIN" --listen 127.0.0.1:9393 --upstream "$1" \
            --cache-dir "$work/node$i" --cache-max-size 20GiB --metrics-listen "" 2> "$work/node$i.log" &
        node_pids+=($!)
        pids+=($!)
    done
    for i in $(seq "$NODES"); do
        for _ in $(seq 100); do
            ip netns exec "gcp-node$i" curl -sf -o /dev/null http://127.0.0.1:9393/versions && break
            sleep 0.1
        done
    done
}
stop_nodes() {
    local p
    for p in "${node_pids[@]}"; do kill "$p"; done
    for p in "${node_pids[@]}"; do wait "$p" || true; done
    rm -rf "$work"/node*
    sync
}
# one ID WANT -> seconds for one client pulling the image straight from Glance over the link
one() {
    local t0 got
    sync
    t0=$(date +%s.%N)
    got=$(timeout 3600 curl -sf -H 'X-Auth-Token: noauth' "$glance/v2/images/$1/file" | cksum)
    [[ $got == "$2" ]] || { echo "one transfer: wrong body" >&2; exit 1; }
    elapsed "$t0"
}
# balancer NAME BOUNDED -> HAProxy (deploy/haproxy/haproxy.cfg with this host's addresses, no
# syslog, no stats socket; BOUNDED=no drops its hash-balance-factor line) in front of the site
# proxies; sets lb_pid, lb_url
balancer() {
    local port i servers=""
    port=$(free_port)
    for i in "${!site_ports[@]}"; do
        servers+="    server site$((i + 1)) 10.212.0.1:${site_ports[$i]} port ${site_metrics[$i]##*:}"$'\n'
    done
    awk -v bind="10.212.0.1:$port" -v servers="$servers" -v bounded="$2" '
        /^ *(log \/dev\/log|stats socket)/ { next }
        /^ *hash-balance-factor / && bounded == "no" { next }
        /^ *bind / { print "    bind " bind; next }
        /^ *server / { if (!done) { printf "%s", servers; done = 1 } next }
        { print }' deploy/haproxy/haproxy.cfg > "$work/$1.cfg"
    "$HAPROXY" -db -f "$work/$1.cfg" > "$work/$1.log" 2>&1 &
    lb_pid=$!
    pids+=("$lb_pid")
    lb_url=http://10.212.0.1:$port
    for _ in $(seq 100); do curl -sf -o /dev/null "$lb_url/versions" && break; sleep 0.1; done
    sleep 5  # every site proxy passes its first health checks (inter 2s, rise 2)
}
# storm LABEL ID WANT -> one table row (node_pids, lb_pid, site_*, parent_* from above)
storm() {
    local label=$1 id=$2 want=$3 b0 t0 t bad=0 ps=() i s0=() p0 c_site c_node c_lb c_par sites=""
    sync
    b0=$(link_bytes); p0=$(served "$parent_metrics")
    for i in "${!site_metrics[@]}"; do s0+=("$(served "${site_metrics[$i]}")"); done
    c_site=$(ticks "${site_pids[@]}"); c_node=$(ticks "${node_pids[@]}"); c_lb=$(ticks "$lb_pid")
    c_par=$(ticks "$parent_pid")
    read -r m_busy m_wait m_all < <(cpu)
    t0=$(date +%s.%N)
    for i in $(seq "$NODES"); do
        (timeout 3600 ip netns exec "gcp-node$i" curl -sf -H 'X-Auth-Token: noauth' \
            "http://127.0.0.1:9393/v2/images/$id/file" | cksum > "$work/out.$i") &
        ps+=($!)
    done
    for p in "${ps[@]}"; do wait "$p"; done
    t=$(elapsed "$t0")
    read -r m_busy2 m_wait2 m_all2 < <(cpu)
    c_site=$(( $(ticks "${site_pids[@]}") - c_site )); c_node=$(( $(ticks "${node_pids[@]}") - c_node ))
    c_lb=$(( $(ticks "$lb_pid") - c_lb )); c_par=$(( $(ticks "$parent_pid") - c_par ))
    sleep 1  # the proxies count a response's bytes when it ends
    for i in "${!site_metrics[@]}"; do sites+="$(( $(served "${site_metrics[$i]}") - s0[i] )) "; done
    for i in $(seq "$NODES"); do [[ $(cat "$work/out.$i") == "$want" ]] || bad=$((bad + 1)); done
    awk -v l="$label" -v n="$NODES" -v t="$t" -v one="$one_t" -v lb="$(( $(link_bytes) - b0 ))" \
        -v img="$((IMAGE_MIB << 20))" -v sites="$sites" -v par="$(( $(served "$parent_metrics") - p0 ))" \
        -v hz="$HZ" -v cs="$c_site" -v cn="$c_node" -v cl="$c_lb" -v cp="$c_par" -v bad="$bad" \
        -v busy="$((m_busy2 - m_busy))" -v iow="$((m_wait2 - m_wait))" -v all="$((m_all2 - m_all))" 'BEGIN {
        gb = img / 1e9
        k = split(sites, sb, " "); sum = 0; max = 0; each = ""
        for (i = 1; i <= k; i++) {
            sum += sb[i]; if (sb[i] > max) max = sb[i]
            each = each (i > 1 ? " / " : "") sprintf("%.2f", sb[i] / 1e9)
        }
        printf "| %s | %d | %.1f | %.2fx | %.0f (%.2f images) | %.2f (%.2f images) | %s | %.2f | %.3f | %.3f | %.3f | %.3f | %.0f %% / %.0f %% | %d |\n",
            l, n, t, t / one, lb, lb / img, par / 1e9, par / img, each, max / (sum / k),
            cp / hz / (par / 1e9), cs / hz / (sum / 1e9), cl / hz / (sum / 1e9), cn / hz / (n * gb),
            100 * busy / all, 100 * iow / all, bad
    }'
}

read -r id1 want1 < <(upload storm-1)
read -r id2 want2 < <(upload storm-2)
one_a=$(one "$id1" "$want1")
one_t=$one_a

proxy parent "$glance"
parent_pid=$px_pid parent_metrics=$px_metrics parent_url=http://10.212.0.1:$px_port
site_pids=() site_ports=() site_metrics=()
for i in $(seq "$SITES"); do
    proxy "site$i" "$parent_url"
    site_pids+=("$px_pid"); site_ports+=("$px_port"); site_metrics+=("$px_metrics")
done

balancer plain no
nodes "$lb_url"
row1=$(storm "plain hash (hash-balance-factor 0)" "$id1" "$want1")
stop_nodes
kill "$lb_pid"; wait "$lb_pid" || true

balancer bounded yes
nodes "$lb_url"
row2=$(storm "bounded loads ($(awk '/^ *hash-balance-factor/ {print $2}' deploy/haproxy/haproxy.cfg))" "$id2" "$want2")
stop_nodes
one_b=$(one "$id2" "$want2")

echo
echo "Boot storm: $NODES nodes (network namespaces, a node proxy and a client each) x ${IMAGE_MIB} MiB image, all at once,"
echo "through HAProxy -> $SITES site proxies -> one parent proxy -> Glance (site tier and parent on this host);"
echo "Glance behind a shaped link: $link; $(nproc) cores; load before: $load0"
echo "One transfer straight from Glance over the link: ${one_a} s before the storms, ${one_b} s after (the storms are compared with the first)"
echo
echo "| HAProxy | nodes | wall (s) | vs one transfer | bytes over the Glance link | parent sent (GB) | each site proxy sent (GB) | site max / mean | parent CPU-s per GB sent | site CPU-s per GB sent | HAProxy CPU-s per GB | node CPU-s per GB served | machine CPU busy / iowait | wrong bodies |"
echo "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"
echo "$row1"
echo "$row2"
echo
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)"
