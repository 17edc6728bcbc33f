#!/usr/bin/env bash
# Edge sites (issue 17): cache hits with auth.grant_ttl 0 and 60 s when Glance is a WAN round
# trip away, against Glance direct and nginx proxy_cache, and on loopback against nginx.
#
# 1. WAN: Glance (real, noauth, its cache off) behind bench/delay-relay.py, which adds
#    ONE_WAY_MS to every chunk in each direction (this kernel has no netem) and a handshake's
#    round trip to each new connection. Clients (curl, a new connection per request, on
#    loopback to the server they ask) download an IMAGE_MIB image:
#      direct      curl -> relay -> Glance (each request is a download from Glance)
#      nginx       curl -> nginx proxy_cache (warm) -> relay -> Glance; serves hits from its
#                  cache without asking Glance anything: no authorization (the comparison point)
#      grant_ttl 0 curl -> proxy -> relay -> Glance: each hit asks Glance the 1-byte download
#                  probe (whose head names the entry's size and md5), then sends the cached file
#      grant_ttl 60s  the same proxy setting auth.grant_ttl = "60s"
#    Each configuration gets HITS timed hits round-robin over 10 identities (X-Auth-Token and
#    X-User-Id; noauth Glance accepts any) after one warm-up request per identity, in ROUNDS
#    interleaved rounds (the order rotates per round). As references, Glance's own record
#    GET and 1-byte ranged GET, directly on loopback, the record through the relay on an open
#    connection, and a grant_ttl 0 hit on an open client connection, in the same rounds. Then, per
#    configuration, 100 hits by 10 new identities: requests Glance received (its access log)
#    and the proxy's authorization decisions (its metrics).
# 2. Loopback: a repeat hit of a BIG_MIB image, the proxy with grant_ttl 0 and 60 s (upstream:
#    Glance directly) and nginx (sendfile on, tcp_nopush on) on the grant_ttl proxy's own
#    cached file; every server pinned to CPU 0, the clients to CPU 1 (as bench/hits-vs-nginx.sh's
#    "split"); BIG_ROUNDS interleaved rounds with curl and with bench/rawget.c.
#
#   [PROXY_BIN=path] bench/edge.sh [IMAGE_MIB] [HITS] [ROUNDS] [ONE_WAY_MS] [BIG_MIB] [BIG_ROUNDS]
#                 (defaults 16 200 4 25 512 10)
# Installs nginx-light as needed (root). All on 127.0.0.1; stops what it starts.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
export GLANCE_VENV=${GLANCE_VENV:-$HOME/.cache/glance-cache-proxy/glance-venv}
IMAGE_MIB=${1:-16}
HITS=${2:-200}
ROUNDS=${3:-4}
ONE_WAY_MS=${4:-25}
BIG_MIB=${5:-512}
BIG_ROUNDS=${6:-10}
IDENTITIES=10
LAUNCHER=scripts/glance-upstream/glance-upstream.sh
if ! command -v nginx >/dev/null; then
    apt-get update -q >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q nginx-light >/dev/null
fi

work=$(mktemp -d /tmp/gcp-bench-edge.XXXXXX)
gdata=$work/glance pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    [[ -f $work/nginx.pid ]] && kill -QUIT "$(cat "$work/nginx.pid")" 2>/dev/null
    wait 2>/dev/null || true
    GLANCE_CACHE=0 "$LAUNCHER" stop "$gdata" >/dev/null 2>&1 || true
    sleep 0.5
    rm -rf "$work"
}
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_url() { for _ in $(seq 300); do curl -sf -o /dev/null "$1" && return; sleep 0.1; done; echo "bench: $1 did not answer" >&2; exit 1; }

cargo build --release --locked --bin glance-cache-proxy >&2
gcc -O2 -o "$work/rawget" bench/rawget.c
load_before=$(uptime)

gport=$(free_port)
glance=$(GLANCE_CACHE=0 "$LAUNCHER" start "$gport" "$gdata" | awk '{print $2}')
access=$gdata/log/access.log
upload() { # MIB -> image id
    local id
    id=$(curl -sf -X POST -H 'X-Auth-Token: noauth' -H 'Content-Type: application/json' \
        -d '{"name":"edge","disk_format":"raw","container_format":"bare"}' "$glance/v2/images" |
        python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])')
    head -c "$(($1 << 20))" /dev/urandom > "$work/img"
    timeout 900 curl -sf -o /dev/null -H 'X-Auth-Token: noauth' \
        -H 'Content-Type: application/octet-stream' -T "$work/img" "$glance/v2/images/$id/file"
    rm -f "$work/img"
    echo "$id"
}
small=$(upload "$IMAGE_MIB") big=$(upload "$BIG_MIB")

rport=$(free_port)
python3 bench/delay-relay.py "$rport" "127.0.0.1:$gport" "$ONE_WAY_MS" 2> "$work/relay.log" &
pids+=($!)
relay=http://127.0.0.1:$rport
wait_url "$relay/versions"

# start_proxy NAME UPSTREAM GRANT_TTL: sets port_NAME, metrics_NAME, pid_NAME
start_proxy() {
    local port mport
    port=$(free_port) mport=$(free_port)
    printf '[auth]\ngrant_ttl = "%s"\n' "$3" > "$work/$1.toml"
    "${PROXY_BIN:-target/release/glance-cache-proxy}" --config "$work/$1.toml" --listen "127.0.0.1:$port" \
        --upstream "$2" --cache-dir "$work/cache-$1" --cache-max-size 20GiB \
        --metrics-listen "127.0.0.1:$mport" 2> "$work/$1.log" &
    pids+=($!)
    printf -v "port_$1" %s "$port"
    printf -v "metrics_$1" %s "$mport"
    printf -v "pid_$1" %s "$!"
    wait_url "http://127.0.0.1:$port/versions"
}
start_proxy ttl0 "$relay" 0s
start_proxy ttl60 "$relay" 60s
start_proxy lo0 "$glance" 0s
start_proxy lo60 "$glance" 60s
# fill NAME ID: one miss through the proxy, then wait for the committed file.
fill() {
    curl -sf -o /dev/null -H 'X-Auth-Token: fill' "http://127.0.0.1:$(port_of "$1")/v2/images/$2/file"
    for _ in $(seq 600); do [[ -f $work/cache-$1/images/$2 ]] && return; sleep 0.1; done
    echo "bench: $2 not cached by $1" >&2; exit 1
}
port_of() { local v="port_$1"; echo "${!v}"; }
fill ttl0 "$small"; fill ttl60 "$small"; fill lo0 "$big"; fill lo60 "$big"
cat "$work/cache-lo0/images/$big" "$work/cache-lo60/images/$big" > /dev/null   # page cache

nc_port=$(free_port) ns_port=$(free_port) nh_port=$(free_port)
cat > "$work/nginx.conf" <<NGINX
# Workers must read the root-owned temporary directories.
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
    proxy_cache_path $work/nginx-cache levels=1:2 keys_zone=glance:10m max_size=4g inactive=1h use_temp_path=off;
    upstream glance { server 127.0.0.1:$rport; keepalive 8; }
    # proxy_cache in front of the relayed Glance: one copy for every caller, no authorization.
    server {
        listen 127.0.0.1:$nc_port;
        location / {
            proxy_pass http://glance;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_cache glance;
            proxy_cache_key \$uri;
            proxy_cache_valid 200 1h;
            proxy_cache_lock on;
            proxy_ignore_headers Cache-Control Expires Set-Cookie Vary;
            add_header X-Cache-Status \$upstream_cache_status;
        }
    }
    # A plain hop to the relayed Glance, no cache: what one proxy hop costs nginx.
    server {
        listen 127.0.0.1:$nh_port;
        location / {
            proxy_pass http://glance;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }
    }
    # The grant_ttl proxy's own cached file, served as a static file (sendfile).
    server {
        listen 127.0.0.1:$ns_port;
        root $work/cache-lo60/images;
        location / { default_type application/octet-stream; }
    }
}
NGINX
nginx -c "$work/nginx.conf" -e "$work/nginx-error.log"
for _ in $(seq 50); do [[ -f $work/nginx.pid ]] && break; sleep 0.1; done
nginx_pids() { echo "$(cat "$work/nginx.pid") $(pgrep -P "$(cat "$work/nginx.pid")" | tr '\n' ' ')"; }
cached=$(curl -s -o /dev/null -D - "http://127.0.0.1:$nc_port/v2/images/$small/file" |
    tr -d '\r' | awk -F': ' 'tolower($1) == "x-cache-status" {print $2}')
[[ $cached == MISS ]] || { echo "bench: nginx's first request was $cached, not MISS" >&2; exit 1; }

# --- 1. WAN ------------------------------------------------------------------------------
small_bytes=$((IMAGE_MIB << 20)) big_bytes=$((BIG_MIB << 20))
# url CONFIG -> "URL EXPECTED_STATUS EXPECTED_BYTES(or -)"
url() {
    case $1 in
        direct) echo "$relay/v2/images/$small/file 200 $small_bytes" ;;
        nginx) echo "http://127.0.0.1:$nc_port/v2/images/$small/file 200 $small_bytes" ;;
        ttl0|ttl60) echo "http://127.0.0.1:$(port_of "$1")/v2/images/$small/file 200 $small_bytes" ;;
        record) echo "$glance/v2/images/$small 200 -" ;;
        probe) echo "$glance/v2/images/$small/file 206 1" ;;
        pair|relayed|relayedprobe|ttl0open|hop|hopprobe) echo "- - -" ;;
    esac
}
# hit CONFIG IDENTITY -> "ttfb total" (seconds); fails on a wrong status or byte count.
hit() {
    local u code want size got range=()
    read -r u code want <<< "$(url "$1")"
    [[ $1 == probe ]] && range=(-H 'Range: bytes=0-0')
    [[ $1 == pair ]] && { pair "$2"; return; }
    [[ $1 == relayed ]] && { relayed "$2" "$relay"; return; }
    [[ $1 == hop ]] && { relayed "$2" "http://127.0.0.1:$nh_port"; return; }
    [[ $1 == relayedprobe ]] && { relayed "$2" "$relay" probe; return; }
    [[ $1 == hopprobe ]] && { relayed "$2" "http://127.0.0.1:$nh_port" probe; return; }
    [[ $1 == ttl0open ]] && { reopened "$2"; return; }
    got=$(timeout 60 curl -s -o /dev/null -w '%{http_code} %{size_download} %{time_starttransfer} %{time_total}' \
        -H "X-Auth-Token: $2" -H "X-User-Id: $2-user" "${range[@]}" "$u") || true
    read -r c size ttfb total <<< "$got"
    if [[ $c != "$code" || ($want != - && $size != "$want") ]]; then
        echo "bench: $1 as $2: status $c, $size bytes (want $code, $want)" >&2
        exit 1
    fi
    echo "$ttfb $total"
}
# pair IDENTITY -> "ttfb total" of the later of Glance's record and 1-byte probe asked at
# once, on loopback (what a grant_ttl 0 hit asked before the probe alone sufficed, minus the WAN).
pair() {
    local w='%{http_code} %{time_starttransfer} %{time_total}\n' h=(-H "X-Auth-Token: $1" -H "X-User-Id: $1-user")
    timeout 60 curl -s -Z --parallel-immediate -o /dev/null -w "$w" "${h[@]}" "$glance/v2/images/$small" \
        --next -s -o /dev/null -w "$w" "${h[@]}" -H 'Range: bytes=0-0' "$glance/v2/images/$small/file" 2> /dev/null |
        awk '{codes = codes " " $1; if ($2 > t) t = $2; if ($3 > a) a = $3}
             END {if (codes != " 200 206" && codes != " 206 200") {print "bench: pair got" codes > "/dev/stderr"; exit 1}
                  printf "%s %s", t, a}'
}
# relayed IDENTITY -> "ttfb total" of Glance's record through the relay on a connection already
# open (the second of two requests on one connection): one RTT + the record + the relay's cost.
# relayed IDENTITY BASE [probe]: the same through BASE (the relay, or nginx's plain hop to it);
# with "probe", Glance's 1-byte download probe (the question a grant_ttl 0 hit asks) instead.
relayed() {
    local u="$2/v2/images/$small" range=() code=200
    [[ ${3:-} == probe ]] && { u="$u/file"; range=(-H 'Range: bytes=0-0'); code=206; }
    timeout 60 curl -s -o /dev/null -o /dev/null -w '%{http_code} %{num_connects} %{time_starttransfer} %{time_total}\n' \
        -H "X-Auth-Token: $1" -H "X-User-Id: $1-user" "${range[@]}" "$u" "$u" |
        awk -v code="$code" 'NR == 2 {if ($1 != code || $2 != 0) {print "bench: relayed got " $0 > "/dev/stderr"; exit 1}
                      printf "%s %s", $3, $4}'
}
# reopened IDENTITY -> "ttfb total" of a grant_ttl 0 hit on a client connection already open
# (the second of two hits on one connection), to compare with `relayed` like for like.
reopened() {
    local u="http://127.0.0.1:$port_ttl0/v2/images/$small/file"
    timeout 60 curl -s -o /dev/null -o /dev/null -w '%{http_code} %{num_connects} %{size_download} %{time_starttransfer} %{time_total}\n' \
        -H "X-Auth-Token: $1" -H "X-User-Id: $1-user" "$u" "$u" |
        awk -v want="$small_bytes" 'NR == 2 {if ($1 != 200 || $2 != 0 || $3 != want) {print "bench: reopened got " $0 > "/dev/stderr"; exit 1}
                      printf "%s %s", $4, $5}'
}
# decisions NAME -> "allowed cached" from the proxy's metrics (0 0 for the others)
decisions() {
    local v="metrics_$1"
    [[ -n ${!v:-} ]] || { echo "0 0"; return; }
    curl -sf "http://127.0.0.1:${!v}/metrics" | awk '
        /^glance_cache_proxy_authorization_decisions_total/ && /decision="allowed"/ {a += $NF}
        /^glance_cache_proxy_authorization_decisions_total/ && /decision="cached"/ {c += $NF}
        END {printf "%d %d", a, c}'
}
# batch PHASE CONFIG ROUND FIRST COUNT PREFIX: COUNT hits, identities PREFIX-(i mod 10) from
# i = FIRST; appends the hits to hits.tsv and the batch's Glance requests and decisions.
batch() {
    local i a0 c0 a1 c1 l0 l1 t how=- before=0 after
    read -r a0 c0 <<< "$(decisions "$2")"
    l0=$(wc -l < "$access")
    for ((i = $4; i < $4 + $5; i++)); do
        [[ $2 == ttl60 ]] && before=$(decisions "$2")
        t=$(hit "$2" "$6-$((i % IDENTITIES))") || exit 1
        if [[ $2 == ttl60 ]]; then   # served on a grant, or asked Glance (the grant had passed)?
            after=$(decisions "$2")
            how=glance
            [[ ${after#* } != "${before#* }" ]] && how=grant
        fi
        echo -e "$1\t$2\t$3\t${t% *}\t${t#* }\t$how" >> "$work/hits.tsv"
    done
    sleep 0.2   # Glance logs a request after its response
    l1=$(wc -l < "$access")
    read -r a1 c1 <<< "$(decisions "$2")"
    sed -n "$((l0 + 1)),${l1}p" "$access" | awk -v phase="$1" -v cfg="$2" -v n="$5" \
        -v a=$((a1 - a0)) -v c=$((c1 - c0)) '
        # host "GET path HTTP/1.1" status bytes time ...
        $5 == 206 {probe++} $3 ~ /\/file$/ && $5 == 200 {dl++} $3 ~ /^\/v2\/images\/[^\/]+$/ {rec++}
        {all++} END {printf "%s\t%s\t%d\t%d\t%d\t%d\t%d\t%d\t%d\n", phase, cfg, n, all, rec, probe, dl, a, c}' \
        >> "$work/batches.tsv"
    # Glance's own time (ms) for the record and probe requests of the proxy with grant_ttl 0.
    [[ $2 == ttl0 ]] && sed -n "$((l0 + 1)),${l1}p" "$access" | awk '
        $5 == 206 {sub(/ms$/, "", $7); print "probe\t" $7}
        $3 ~ /^\/v2\/images\/[^\/]+$/ {sub(/ms$/, "", $7); print "record\t" $7}' >> "$work/glance-ms.tsv"
    return 0
}
: > "$work/hits.tsv"; : > "$work/batches.tsv"; : > "$work/glance-ms.tsv"; : > "$work/big.tsv"
wan=(direct nginx ttl0 ttl60 record probe pair relayed relayedprobe ttl0open hop hopprobe)
if (( HITS > 0 )); then   # HITS=0 skips part 1
    for cfg in "${wan[@]}"; do batch warm "$cfg" 0 0 "$IDENTITIES" lat; done
    per=$(( (HITS + ROUNDS - 1) / ROUNDS ))
    for ((r = 0; r < ROUNDS; r++)); do
        n=$(( r == ROUNDS - 1 ? HITS - per * r : per ))
        for ((k = 0; k < ${#wan[@]}; k++)); do   # rotate the order each round
            cfg=${wan[$(( (k + r) % ${#wan[@]} ))]}
            batch timed "$cfg" "$r" $((per * r)) "$n" lat
        done
    done
    for cfg in direct nginx ttl0 ttl60; do batch count "$cfg" 0 0 100 new; done
fi
load_wan=$(uptime)

# --- 2. Loopback, BIG_MIB repeat hits, servers on CPU 0, clients on CPU 1 -----------------
ncpu=$(nproc) spin=() cpin=()
if (( ncpu >= 2 )); then
    for p in $(nginx_pids) "$pid_lo0" "$pid_lo60"; do taskset -a -p -c 0 "$p" > /dev/null; done
    cpin=(taskset -c 1)
fi
big_url() {
    case $1 in
        nginx) echo "$ns_port /$big" ;;
        *) echo "$(port_of "$1") /v2/images/$big/file" ;;
    esac
}
# big_hit SERVER READER -> "ttfb total" (rawget: wall time around it, no ttfb: "-")
big_hit() {
    local port path out t0
    read -r port path <<< "$(big_url "$1")"
    if [[ $2 == curl ]]; then
        out=$(timeout 120 "${cpin[@]}" curl -s -o /dev/null -H 'X-Auth-Token: noauth' \
            -w '%{size_download} %{time_starttransfer} %{time_total}' "http://127.0.0.1:$port$path")
        [[ ${out%% *} == "$big_bytes" ]] || { echo "bench: $1 curl got $out" >&2; exit 1; }
        echo "${out#* }"
    else
        t0=$(date +%s.%N)
        out=$(timeout 120 "${cpin[@]}" "$work/rawget" 127.0.0.1 "$port" "$path")
        [[ $out == "$big_bytes" ]] || { echo "bench: $1 rawget got $out bytes" >&2; exit 1; }
        awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN{printf "- %.6f", b - a}'
    fi
}
servers=(nginx lo0 lo60)
clk=$(getconf CLK_TCK)
spids() { case $1 in nginx) nginx_pids ;; *) local v="pid_$1"; echo "${!v}" ;; esac; }
# cpu SERVER -> utime+stime ticks of its processes (every thread)
cpu() { for p in $(spids "$1"); do awk '{print $14 + $15}' "/proc/$p/stat"; done | awk '{s += $1} END {print s}'; }
metric() { local v="metrics_$1"; curl -sf "http://127.0.0.1:${!v}/metrics" | awk -v m="$2" '$1 == m {print $2}'; }
read -r lo60_a0 lo60_c0 <<< "$(decisions lo60)"
cold0=$(( $(metric lo0 glance_cache_proxy_cold_read_bytes_total) + $(metric lo60 glance_cache_proxy_cold_read_bytes_total) ))
(( BIG_ROUNDS > 0 )) &&   # BIG_ROUNDS=0 skips part 2
    for s in "${servers[@]}"; do big_hit "$s" curl > /dev/null; big_hit "$s" raw > /dev/null; done # warm
for ((r = 0; r < BIG_ROUNDS; r++)); do
    for reader in raw curl; do
        for ((k = 0; k < ${#servers[@]}; k++)); do
            s=${servers[$(( (k + r) % ${#servers[@]} ))]}
            c0=$(cpu "$s")
            t=$(big_hit "$s" "$reader") || exit 1
            echo -e "$r\t$reader\t$s\t${t% *}\t${t#* }\t$(( $(cpu "$s") - c0 ))" >> "$work/big.tsv"
        done
    done
done
read -r lo60_a1 lo60_c1 <<< "$(decisions lo60)"
cold1=$(( $(metric lo0 glance_cache_proxy_cold_read_bytes_total) + $(metric lo60 glance_cache_proxy_cold_read_bytes_total) ))
load_after=$(uptime)

python3 - "$work" "$ONE_WAY_MS" "$IMAGE_MIB" "$HITS" "$ROUNDS" "$BIG_MIB" "$BIG_ROUNDS" \
    "$((lo60_a1 - lo60_a0))" "$((lo60_c1 - lo60_c0))" "$(( (cold1 - cold0) >> 20 ))" "$clk" <<'PY'
import math, statistics, sys
work, one_way, mib, hits, rounds, big_mib, big_rounds, lo_a, lo_c, cold, clk = sys.argv[1:]
one_way, rtt = float(one_way), 2 * float(one_way)
rows = [l.split("\t") for l in open(work + "/hits.tsv").read().splitlines() if l]
batches = [l.split("\t") for l in open(work + "/batches.tsv").read().splitlines() if l]
gms = [l.split("\t") for l in open(work + "/glance-ms.tsv").read().splitlines() if l]
med = statistics.median
def pct(xs, p):
    xs = sorted(xs)
    return xs[max(0, math.ceil(p / 100 * len(xs)) - 1)]   # nearest rank
names = {
    "direct": "Glance direct through the relay (download)",
    "nginx": "nginx proxy_cache, warm (no authorization)",
    "ttl0": "proxy, grant_ttl 0 (asks Glance every hit)",
    "ttl60": "proxy, grant_ttl 60 s",
    "record": "ref: Glance record GET, loopback, no relay",
    "probe": "ref: Glance 1-byte ranged GET, loopback, no relay",
    "pair": "ref: both at once (the later of the two), loopback, no relay",
    "relayed": "ref: Glance record GET through the relay, connection already open",
    "ttl0open": "proxy, grant_ttl 0, client connection already open (the second of two hits)",
    "hop": "ref: the record through nginx (a plain proxy_pass hop, no cache) and the relay, connections open",
    "relayedprobe": "ref: Glance's 1-byte probe (what a grant_ttl 0 hit asks) through the relay, connection already open",
    "hopprobe": "ref: that probe through nginx's plain hop and the relay, connections open",
}
def glance(phase, cfg):
    b = [x for x in batches if x[0] == phase and x[1] == cfg]
    s = lambda i: sum(int(x[i]) for x in b)
    return s(2), s(3), s(4), s(5), s(6), s(7), s(8)
stats, count = {}, {}
if not rows:
    print("(WAN part skipped)")
else:
    print("WAN: %s MiB image, Glance behind a relay adding %g ms each way (RTT %g ms; a new "
          "connection to it pays one more RTT); %s hits per configuration, round-robin over 10 "
          "identities after one warm-up each, %s interleaved rounds; curl, one connection per "
          "request, times in ms" % (mib, one_way, rtt, hits, rounds))
    print()
    print("| configuration | TTFB p50 | TTFB p99 | total p50 | total p99 | Glance requests per 100 timed hits | of which record / probe / download | proxy: asked Glance / on a grant |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for cfg in ("direct", "nginx", "ttl0", "ttl60", "record", "probe", "pair", "relayed", "ttl0open",
                "hop", "relayedprobe", "hopprobe"):
        t = [float(r[3]) * 1000 for r in rows if r[0] == "timed" and r[1] == cfg]
        tot = [float(r[4]) * 1000 for r in rows if r[0] == "timed" and r[1] == cfg]
        if not t:
            continue
        n, allr, rec, probe, dl, a, c = glance("timed", cfg)
        stats[cfg] = (med(t), pct(t, 99), med(tot), pct(tot, 99), a, c)
        per = lambda x: "%.0f" % (100 * x / n)
        if cfg in ("record", "probe", "pair", "relayed", "ttl0open", "hop", "relayedprobe", "hopprobe"):
            gl, split, dec = "-", "-", "-"
        else:
            gl, split = per(allr), "%s / %s / %s" % (per(rec), per(probe), per(dl))
            dec = "%d / %d" % (a, c) if cfg.startswith("ttl") else "-"
        print("| %s | %.2f | %.2f | %.2f | %.2f | %s | %s | %s |" % (
            names[cfg], med(t), pct(t, 99), med(tot), pct(tot, 99), gl, split, dec))
        if cfg == "ttl60" and a:   # some grants passed during the run: the hits on a grant alone
            t = [float(r[3]) * 1000 for r in rows if r[0] == "timed" and r[1] == cfg and r[5] == "grant"]
            tot = [float(r[4]) * 1000 for r in rows if r[0] == "timed" and r[1] == cfg and r[5] == "grant"]
            stats["grant"] = (med(t), pct(t, 99))
            print("| %s, the %d hits served on a grant | %.2f | %.2f | %.2f | %.2f | 0 | - | - |" % (
                names[cfg], len(t), med(t), pct(t, 99), med(tot), pct(tot, 99)))
    rec_ms = [float(x[1]) for x in gms if x[0] == "record"]
    probe_ms = [float(x[1]) for x in gms if x[0] == "probe"]
    if rec_ms:
        print()
        print("Glance's own time (its access log) for the grant_ttl 0 proxy's requests: record p50 "
              "%.0f ms (p99 %.0f), probe p50 %.0f ms (p99 %.0f)" % (
                  med(rec_ms), pct(rec_ms, 99), med(probe_ms), pct(probe_ms, 99)))
    print()
    print("100 hits by 10 new identities (no warm-up), one configuration at a time:")
    print()
    print("| configuration | Glance requests | record / probe / download | Glance authorizations (proxy: asked / on a grant) |")
    print("| --- | --- | --- | --- |")
    for cfg in ("direct", "nginx", "ttl0", "ttl60"):
        n, allr, rec, probe, dl, a, c = glance("count", cfg)
        if not n:
            continue
        count[cfg] = (allr, a, c)
        auth = "%d / %d" % (a, c) if cfg.startswith("ttl") else ("%d (each download)" % dl if cfg == "direct" else "none")
        print("| %s | %d | %d / %d / %d | %s |" % (names[cfg], allr, rec, probe, dl, auth))

big = [l.split("\t") for l in open(work + "/big.tsv").read().splitlines() if l]
b = int(big_mib) << 20
ratios = {}
if not big:
    print("\n(loopback part skipped)")
else:
    print()
    print("Loopback: repeat hit of a %s MiB image, servers pinned to CPU 0, the client to CPU 1, "
          "%s interleaved rounds; nginx serves the grant_ttl 60 s proxy's own cached file "
          "(sendfile on, tcp_nopush on); medians; ratio: median of the per-round ratios" % (big_mib, big_rounds))
    print()
    print("| reader | server | TTFB ms | total ms | after the first byte ms | GB/s | vs nginx | server CPU ms per hit |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for reader in ("raw", "curl"):
        per_round = {}
        for r, rd, s, ttfb, total, ticks in big:
            if rd == reader:
                per_round.setdefault(r, {})[s] = (ttfb, float(total), int(ticks) * 1000 / int(clk))
        for s, label in (("nginx", "nginx sendfile"), ("lo0", "proxy, grant_ttl 0"), ("lo60", "proxy, grant_ttl 60 s")):
            x = [v[s] for v in per_round.values() if s in v]
            tot = [v[1] for v in x]
            tt = [float(v[0]) * 1000 for v in x if v[0] != "-"]
            after = [v[1] * 1000 - float(v[0]) * 1000 for v in x if v[0] != "-"]
            q = med(v["nginx"][1] / v[s][1] for v in per_round.values() if s in v and "nginx" in v)
            ratios[(reader, s)] = q
            print("| %s | %s | %s | %.1f | %s | %.2f | %.2fx | %.0f |" % (
                reader, label, "%.2f" % med(tt) if tt else "-", med(tot) * 1000,
                "%.1f" % med(after) if after else "-", b / med(tot) / 1e9, q, med(v[2] for v in x)))
    print()
    print("grant_ttl 60 s proxy during the loopback rounds: %s hits asked Glance, %s on a grant; "
          "both proxies read %s MiB into the page cache first (cold_read_bytes_total: windows "
          "cachestat found not wholly resident)" % (lo_a, lo_c, cold))

print()
print("Targets:")
if "ttl60" in stats:
    p50, p99 = stats["grant"] if "grant" in stats else stats["ttl60"][:2]
    print("- grant_ttl 60 s, repeat hit (on a grant) first byte within 2 ms: p50 %.2f ms, p99 %.2f ms -> %s" % (
        p50, p99, "holds (p50 and p99)" if p99 <= 2 else "holds (p50)" if p50 <= 2 else "does not hold"))
if "ttl60" in count:
    allr, a, c = count["ttl60"]
    print("- grant_ttl 60 s, 10 Glance authorizations per 100 hits by 10 identities: %d (%d requests) -> %s" % (
        a, allr, "holds" if a <= 10 else "does not hold"))
if "ttl0" in stats and "relayed" in stats:
    # One round trip on this link (the relay's delay and its own cost) + Glance's record
    # time, measured: the record through the relay on an open connection.
    bound = stats["relayed"][0]
    print("- grant_ttl 0, first byte no worse than one RTT + Glance's record time (the record through "
          "the relay on an open connection): p50 %.2f ms vs %.2f ms -> %s" % (
              stats["ttl0"][0], bound, "holds" if stats["ttl0"][0] <= bound else "does not hold"))
    if "ttl0open" in stats:
        print("  (like for like, both on a client connection already open: p50 %.2f ms vs %.2f ms -> %s)" % (
            stats["ttl0open"][0], bound, "holds" if stats["ttl0open"][0] <= bound else "does not hold"))
    if "ttl0open" in stats and "hop" in stats:
        print("  (what a proxy hop adds to the record through the relay: nginx's plain proxy_pass %+.2f ms; "
              "this proxy's grant_ttl 0 hit, Glance's probe instead of the record, %+.2f ms)" % (
                  stats["hop"][0] - bound, stats["ttl0open"][0] - bound))
if all(k in stats for k in ("ttl0open", "relayedprobe", "hopprobe", "relayed")):
    ask = stats["relayedprobe"][0]
    print("  (the same question through the relay, Glance's probe, %.2f ms (%+.2f ms against its record): "
          "a proxy hop on top of it costs nginx's plain proxy_pass %+.2f ms and this proxy's grant_ttl 0 "
          "hit, which also opens and sends the cached file, %+.2f ms)" % (
              ask, ask - stats["relayed"][0], stats["hopprobe"][0] - ask, stats["ttl0open"][0] - ask))
if "ttl0" in stats and "record" in stats:
    nominal = rtt + stats["record"][0]
    print("  (against the nominal RTT + the record on loopback, without the relay's own cost: "
          "%.0f + %.2f = %.2f ms -> %s)" % (rtt, stats["record"][0], nominal,
                                           "holds" if stats["ttl0"][0] <= nominal else "does not hold"))
    if "pair" in stats:
        print("  (one RTT + Glance's record and probe asked at once, as a hit asked them before the "
              "probe alone sufficed: %.0f + %.2f = %.2f ms)" % (rtt, stats["pair"][0], rtt + stats["pair"][0]))
    if "relayed" in stats:
        print("  (the relay's own cost: the record through it on an open connection, %.2f ms, minus "
              "RTT and the record on loopback: %.2f ms)" % (
                  stats["relayed"][0], stats["relayed"][0] - rtt - stats["record"][0]))
for reader in ("raw", "curl"):
    q = ratios.get((reader, "lo60"))
    if q is not None:
        print("- loopback %s MiB repeat hit, grant_ttl on vs nginx (%s): %.2fx (grant_ttl 0: %.2fx) -> %s" % (
            big_mib, reader, q, ratios[(reader, "lo0")], "holds" if q >= 1.0 else "does not hold"))
PY
echo
echo "load: before $load_before"
echo "load: after WAN part $load_wan"
echo "load: after loopback part $load_after"
echo "$(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs); $(nginx -v 2>&1)"
