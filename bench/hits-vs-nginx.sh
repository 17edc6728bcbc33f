#!/usr/bin/env bash
# Cache hits vs nginx on the same file: nginx (Debian nginx-light, sendfile on, tcp_nopush on)
# serves the proxy's cached image file directly; the proxy serves it as a hit (sendfile under
# hyper, after asking Glance whether the caller may download it). Interleaved rounds at 1, 8
# and 32 concurrent clients, with curl and with a lean C reader (bench/rawget.c): total
# throughput and server CPU seconds per GB, and the proxy/nginx ratios. Then wrk on a small
# metadata call, directly to Glance and through the proxy. Writes bench/hits-vs-nginx.png.
#
# Every cell runs in two placements, interleaved: "shared" (server and clients on all cores, as
# the scheduler likes) and "split" (the server on the first half of the cores, the clients on
# the other half, as with clients on other machines). On loopback the receivers' TCP work and
# wake-ups are charged to whichever process runs when they happen, and with shared cores the
# readers preempt the server inside sendfile, so the server's own CPU figure moves with
# scheduling; split cores keep the client's work off the server's cores.
#
#   bench/hits-vs-nginx.sh [IMAGE_MIB] [ROUNDS]    (defaults 512 3)
# Installs nginx-light, wrk and gcc's output as needed (root). All on 127.0.0.1.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
export GLANCE_VENV=${GLANCE_VENV:-$HOME/.cache/glance-cache-proxy/glance-venv}
IMAGE_MIB=${1:-512}
ROUNDS=${2:-3}
LAUNCHER=scripts/glance-upstream/glance-upstream.sh
if ! command -v nginx >/dev/null || ! command -v wrk >/dev/null; then
    apt-get update -q >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q nginx-light wrk >/dev/null
fi

work=$(mktemp -d /tmp/gcp-bench-hits.XXXXXX)
gdata=$work/glance proxy_pid="" nginx_conf=$work/nginx.conf
cleanup() {
    [[ -n $proxy_pid ]] && kill "$proxy_pid" 2>/dev/null && wait "$proxy_pid" 2>/dev/null
    [[ -f $work/nginx.pid ]] && kill -QUIT "$(cat "$work/nginx.pid")" 2>/dev/null
    GLANCE_CACHE=0 "$LAUNCHER" stop "$gdata" >/dev/null 2>&1 || true
    sleep 0.5
    rm -rf "$work"
}
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
clk=$(getconf CLK_TCK)
# cpu PID... -> utime+stime seconds of the processes
cpu() { for p in "$@"; do awk '{print $14 + $15}' "/proc/$p/stat"; done | awk -v t="$clk" '{s += $1} END {printf "%.3f", s / t}'; }
# busy CPU seconds of the whole machine (user, nice, system, irq, softirq, steal): on loopback
# the kernel charges much of the TCP work to whichever process runs when it happens, so the
# server's own figure moves with scheduling; the machine's total does not.
machine() { awk -v t="$clk" '/^cpu / {printf "%.3f", ($2 + $3 + $4 + $7 + $8 + $9) / t}' /proc/stat; }

cargo build --release --locked --bin glance-cache-proxy >&2
gcc -O2 -o "$work/rawget" bench/rawget.c

gport=$(free_port)
glance=$(GLANCE_CACHE=0 "$LAUNCHER" start "$gport" "$gdata" | awk '{print $2}')
pport=$(free_port)
target/release/glance-cache-proxy --listen "127.0.0.1:$pport" --upstream "$glance" \
    --cache-dir "$work/cache" --cache-max-size 20GiB --metrics-listen "" 2> "$work/proxy.log" &
proxy_pid=$!
for _ in $(seq 100); do curl -sf -o /dev/null "http://127.0.0.1:$pport/versions" && break; sleep 0.1; done

id=$(curl -sf -X POST -H 'X-Auth-Token: noauth' -H 'Content-Type: application/json' \
    -d '{"name":"bench","disk_format":"raw","container_format":"bare"}' "$glance/v2/images" |
    python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])')
head -c "$((IMAGE_MIB << 20))" /dev/urandom > "$work/img"
curl -sf -o /dev/null -H 'X-Auth-Token: noauth' -H 'Content-Type: application/octet-stream' \
    -T "$work/img" "$glance/v2/images/$id/file"
rm -f "$work/img"
curl -sf -o /dev/null "http://127.0.0.1:$pport/v2/images/$id/file"   # miss: fills the cache
for _ in $(seq 300); do [[ -f $work/cache/images/$id ]] && break; sleep 0.1; done
cat "$work/cache/images/$id" > /dev/null                                # both read from page cache

nport=$(free_port)
cat > "$nginx_conf" <<NGINX
# Workers must read the root-owned temporary cache directory.
user root;
worker_processes auto;
pid $work/nginx.pid;
error_log $work/nginx-error.log;
events { worker_connections 1024; }
http {
    access_log off;
    sendfile on;
    tcp_nopush on;
    keepalive_timeout 65;
    server {
        listen 127.0.0.1:$nport;
        root $work/cache/images;
        location / { default_type application/octet-stream; }
    }
}
NGINX
nginx -c "$nginx_conf" -e "$work/nginx-error.log"
for _ in $(seq 50); do [[ -f $work/nginx.pid ]] && break; sleep 0.1; done
nginx_pids() { echo "$(cat "$work/nginx.pid") $(pgrep -P "$(cat "$work/nginx.pid")" | tr '\n' ' ')"; }

ncpu=$(nproc)
server_cpus=0-$(( ncpu / 2 - 1 )) client_cpus=$(( ncpu / 2 ))-$(( ncpu - 1 ))
placements="shared split"
(( ncpu >= 2 )) || placements=shared
# place SERVER PLACEMENT: pin every thread of the server's processes (shared: all cores).
place() {
    local p cpus=0-$(( ncpu - 1 ))
    [[ $2 == split ]] && cpus=$server_cpus
    for p in "${@:3}"; do taskset -a -p -c "$cpus" "$p" > /dev/null; done
}

# run SERVER CLIENT N PLACEMENT -> "seconds cpu_seconds machine_seconds"; fails unless every
# client got every byte.
run() {
    local url port pids c0 m0 t0 got jobs=() pin=()
    if [[ $1 == nginx ]]; then port=$nport; url=/$id; read -ra pids <<< "$(nginx_pids)"
    else port=$pport; url=/v2/images/$id/file; pids=("$proxy_pid"); fi
    place "$1" "$4" "${pids[@]}"
    [[ $4 == split ]] && pin=(taskset -c "$client_cpus")
    c0=$(cpu "${pids[@]}"); m0=$(machine); t0=$(date +%s.%N)
    for i in $(seq "$3"); do
        if [[ $2 == curl ]]; then
            timeout 600 "${pin[@]}" curl -s -o /dev/null -w '%{size_download}\n' -H 'X-Auth-Token: noauth' \
                "http://127.0.0.1:$port$url" > "$work/got.$i" &
        else
            timeout 600 "${pin[@]}" "$work/rawget" 127.0.0.1 "$port" "$url" > "$work/got.$i" &
        fi
        jobs+=($!)
    done
    for j in "${jobs[@]}"; do wait "$j" || true; done
    got=$(cat "$work"/got.* | awk '{s += $1} END {printf "%.0f", s}')
    rm -f "$work"/got.*
    if [[ $got != $(( $3 * bytes )) ]]; then
        echo "bench: $1/$2/$3/$4 received $got of $(( $3 * bytes )) bytes" >&2
        exit 1
    fi
    awk -v a="$t0" -v b="$(date +%s.%N)" -v c0="$c0" -v c1="$(cpu "${pids[@]}")" -v m0="$m0" -v m1="$(machine)" \
        'BEGIN{printf "%.3f %.3f %.3f", b-a, c1-c0, m1-m0}'
}

results=$work/results.tsv
bytes=$((IMAGE_MIB << 20))
: > "$results"
for r in $(seq "$ROUNDS"); do
    for placement in $placements; do
        for n in 1 8 32; do
            for client in raw curl; do
                for server in nginx proxy; do   # interleaved: same round, same conditions
                    line=$(run "$server" "$client" "$n" "$placement") || exit 1
                    read -r secs cpus mach <<< "$line"
                    echo -e "$r\t$placement\t$n\t$client\t$server\t$secs\t$cpus\t$mach" >> "$results"
                done
            done
        done
    done
done
# Back to all cores for the metadata runs.
place nginx shared $(nginx_pids)
place proxy shared "$proxy_pid"

cp "$results" bench/hits-vs-nginx.tsv   # raw rows: round placement clients reader server s cpu-s machine-s
summary=$(python3 - "$results" "$bytes" <<'PY'
import statistics, sys
rows = [l.split("\t") for l in open(sys.argv[1]).read().split("\n") if l]
b = int(sys.argv[2])
# (placement, clients, reader) -> round -> server -> (GB/s, core-s/GB, machine core-s/GB)
cells = {}
for r, placement, n, client, server, secs, cpus, mach in rows:
    gb = int(n) * b / 1e9
    v = (gb / float(secs), float(cpus) / gb, float(mach) / gb)
    cells.setdefault((placement, int(n), client), {}).setdefault(r, {})[server] = v
med = statistics.median
print("| cores | clients | reader | nginx GB/s | proxy GB/s | ratio | nginx core-s/GB | proxy core-s/GB | ratio | machine core-s/GB nginx | proxy | ratio |")
print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
for placement in ("shared", "split"):
    for n in (1, 8, 32):
        for client in ("raw", "curl"):
            rounds = [x for x in cells.get((placement, n, client), {}).values() if len(x) == 2]
            if not rounds:
                continue
            # Absolute figures: medians over rounds. Ratios: the median of each round's
            # proxy/nginx ratio (the two ran back to back, under the same conditions).
            a = lambda s, i: med(x[s][i] for x in rounds)
            q = lambda i: med(x["proxy"][i] / max(x["nginx"][i], 1e-9) for x in rounds)
            print("| %s | %d | %s | %.2f | %.2f | %.2fx | %.3f | %.3f | %.2fx | %.3f | %.3f | %.2fx |" % (
                placement, n, client, a("nginx", 0), a("proxy", 0), q(0), a("nginx", 1),
                a("proxy", 1), q(1), a("nginx", 2), a("proxy", 2), q(2)))
PY
)

# Small metadata calls: wrk, directly to Glance and through the proxy.
meta=/v2/images/$id
wrk_run() { timeout 60 wrk -t2 -c16 -d8s --latency -H 'X-Auth-Token: noauth' "$1$meta" 2>&1; }
wrk_direct=$(wrk_run "$glance")
wrk_proxy=$(wrk_run "http://127.0.0.1:$pport")
parse() { awk '/Requests\/sec/ {r=$2} / 50%/ {p50=$2} / 99%/ {p99=$2} END {print r, p50, p99}' <<< "$1"; }
read -r d_rps d_p50 d_p99 <<< "$(parse "$wrk_direct")"
read -r p_rps p_p50 p_p99 <<< "$(parse "$wrk_proxy")"

# Chart of the throughput table (matplotlib from the project venv; installed on demand).
"$GLANCE_VENV/bin/python" -c 'import matplotlib' 2>/dev/null ||
    "$GLANCE_VENV/bin/python" -m pip install -q matplotlib >/dev/null
"$GLANCE_VENV/bin/python" - "$results" "$bytes" bench/hits-vs-nginx.png <<'PY'
import statistics, sys
import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt
rows = [l.split("\t") for l in open(sys.argv[1]).read().split("\n") if l]
b = int(sys.argv[2])
placements = [p for p in ("shared", "split") if any(r[1] == p for r in rows)]
groups = [(n, c) for n in (1, 8, 32) for c in ("raw", "curl")]
def med(p, n, c, s):
    return statistics.median(int(n_) * b / float(t) / 1e9 for _, p_, n_, c_, s_, t, _, _ in rows
                             if p_ == p and int(n_) == n and c_ == c and s_ == s)
xs = range(len(groups))
fig, axes = plt.subplots(1, len(placements), figsize=(6 * len(placements), 4), squeeze=False)
for ax, p in zip(axes[0], placements):
    ax.bar([x - 0.2 for x in xs], [med(p, n, c, "nginx") for n, c in groups], 0.4, label="nginx sendfile")
    ax.bar([x + 0.2 for x in xs], [med(p, n, c, "proxy") for n, c in groups], 0.4,
           label="glance-cache-proxy hit")
    ax.set_xticks(list(xs), ["%d x %s" % g for g in groups], fontsize=8)
    ax.set_ylabel("total GB/s (median)")
    ax.set_title("%s cores" % p if p == "shared" else "server and clients on split cores")
    ax.legend(fontsize=8)
fig.suptitle("Cache hits vs nginx, same file in page cache, 127.0.0.1")
fig.tight_layout()
fig.savefig(sys.argv[3], dpi=100)
PY

echo
echo "Hits vs nginx: ${IMAGE_MIB} MiB image in page cache, ${ROUNDS} interleaved rounds (figures: medians; ratios: median of the per-round proxy/nginx ratios); $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs); $(nginx -v 2>&1)"
echo
echo "$summary"
echo
echo "| metadata GET (wrk -t2 -c16 -d8s) | req/s | p50 | p99 |"
echo "| --- | --- | --- | --- |"
echo "| direct to Glance | $d_rps | $d_p50 | $d_p99 |"
echo "| through the proxy | $p_rps | $p_p50 | $p_p99 |"
awk -v a="$p_rps" -v b="$d_rps" 'BEGIN{printf "\nmetadata throughput through the proxy vs direct: %.2fx\n", a/b}'
echo "chart: bench/hits-vs-nginx.png"
