#!/usr/bin/env bash
# Cold-miss benchmark against a real Glance (its own cache off), release build, one run
# (issue 16):
#  - one-core SHA-512 rate of this build's own `Digests` over the image's bytes
#    (cargo bench --bench hashrate -- --file), GB per CPU-second of the hashing thread,
#    once per round between the misses (the anchor follows the machine), median;
#  - Glance's direct download rate;
#  - the proxy's cold-miss rate and its CPU-seconds per GB of miss (utime+stime of the
#    process, from the request until the entry is committed), ROUNDS rounds, the entry dropped
#    through the cache API (DELETE /v2/cache/{id}) between rounds; medians;
#  - the same cold miss through nginx proxy_cache (one worker, sendfile, 256 KiB buffers; a
#    new cache key per round, and, as the proxy's entry is dropped before each of its rounds,
#    every file of nginx's cache deleted before each of nginx's rounds, checked empty): the
#    same three transfers (receive from Glance, write the cache file, send it to the client)
#    with no hashing, as what those transfers cost on this machine, in the same rounds;
#  - 64 clients asking for a cold image at once: one upstream download, total time;
#  - READERS (default 8) clients asking for the cold image at once, ROUNDS rounds: one
#    upstream download; the wall time until all are done and the proxy's CPU-seconds per GB
#    served (the coalesced readers of a miss, issue 30 point 3);
#  - who pays for each miss: the server's CPU, the client's (curl), Glance's and the whole
#    machine's (busy time in /proc/stat) over the same window, medians per GB: on loopback the
#    kernel's TCP work lands on whichever process is running when it happens;
#  - with BASELINE_BIN=path/to/an/older/glance-cache-proxy, the same for that build in the same
#    run: its rounds interleave with this build's, the order flipped every round (NEW_BIN= puts
#    another build in this tree's place).
# Targets (ratios from this one run): miss rate >= 0.75 x min(one-core SHA-512, Glance
# direct); proxy CPU per GB <= 1.6 x one core's SHA-512 CPU per GB (issue 16); the proxy's CPU
# per GB beyond one core's SHA-512 <= nginx's whole miss (issue 30).
#
#   [BASELINE_BIN=...] bench/miss.sh [IMAGE_MIB] [ROUNDS] [HERD_MIB]   (defaults 1024 3 256)
# On a VM with free page reporting, memory is settled first (bench/settle-memory.sh; SETTLE=0
# skips it). Everything on 127.0.0.1, stopped on exit. Prints markdown tables; exits 1 if the herd made
# more than one upstream download or a body was wrong.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
export GLANCE_VENV=${GLANCE_VENV:-$HOME/.cache/glance-cache-proxy/glance-venv}
IMAGE_MIB=${1:-1024}
ROUNDS=${2:-3}
HERD_MIB=${3:-256}
HERD=64
READERS=${READERS:-8}
LAUNCHER=scripts/glance-upstream/glance-upstream.sh
NEW_BIN=${NEW_BIN:-target/release/glance-cache-proxy}

work=$(mktemp -d /tmp/gcp-bench-miss.XXXXXX)
gdata=$work/glance pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    [[ -s $work/nginx.pid ]] && kill -QUIT "$(cat "$work/nginx.pid")" 2>/dev/null
    wait 2>/dev/null || true
    GLANCE_CACHE=0 "$LAUNCHER" stop "$gdata" >/dev/null 2>&1 || true
    rm -rf "$work"
    restore_memory
}
source bench/settle-memory.sh
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
now() { date +%s.%N; }
median() { sort -g | awk '{v[NR]=$1} END{print (NR%2 ? v[(NR+1)/2] : (v[NR/2]+v[NR/2+1])/2)}'; }
calc() { awk "BEGIN{printf \"%.2f\", $1}"; }
rounds() { awk '{printf "%s%s %s", (NR > 1 ? "; " : ""), $1, $2}' "$1"; }
col() { awk -v k="$1" '{print $k}' "$2" | median; }   # COLUMN FILE -> its median

cargo build --release --locked --bin glance-cache-proxy >&2
if ! command -v nginx >/dev/null; then
    apt-get update -q >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q nginx-light >/dev/null
fi

gport=$(free_port)
read -r glance_pid glance < <(GLANCE_CACHE=0 "$LAUNCHER" start "$gport" "$gdata")
upload() { # MIB FILE -> image id
    local id
    id=$(curl -sf -X POST -H 'X-Auth-Token: noauth' -H 'Content-Type: application/json' \
        -d '{"name":"bench","disk_format":"raw","container_format":"bare"}' "$glance/v2/images" |
        python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])')
    head -c "$(($1 << 20))" /dev/urandom > "$2"
    timeout 900 curl -sf -o /dev/null -H 'X-Auth-Token: noauth' \
        -H 'Content-Type: application/octet-stream' -T "$2" "$glance/v2/images/$id/file"
    echo "$id"
}
a=$(upload "$IMAGE_MIB" "$work/img")
b=$(upload "$HERD_MIB" "$work/herd-img")
want_b=$(cksum < "$work/herd-img")
bytes=$((IMAGE_MIB << 20))
gb=$(calc "$bytes / 1e9")

# One-core SHA-512 over the image's bytes, this build's `Digests`; checked against Glance's.
hashrate=$(cargo bench --locked --bench hashrate --no-run 2>&1 | sed -n 's/.*Executable .*(\(.*\))$/\1/p')
[[ -x $hashrate ]] || { echo "FAIL: the hashrate bench did not build" >&2; exit 1; }
read -r sha_cpu sha_wall sha_hex < <("$hashrate" --file "$work/img" 1)
glance_hash=$(curl -sf -H 'X-Auth-Token: noauth' "$glance/v2/images/$a" |
    python3 -c 'import json,sys; print(json.load(sys.stdin)["os_hash_value"])')
[[ $sha_hex == "$glance_hash" ]] || { echo "FAIL: sha512 of the file differs from Glance's" >&2; exit 1; }
rm -f "$work/herd-img"

# Proxies: "new" (this tree's build) and, with BASELINE_BIN, "base"; each its own cache dir.
declare -A url pid
start_proxy() { # NAME BIN
    local port; port=$(free_port)
    "$2" --listen "127.0.0.1:$port" --upstream "$glance" --cache-dir "$work/cache-$1" \
        --cache-max-size 20GiB --metrics-listen "" 2> "$work/proxy-$1.log" &
    pids+=($!) pid[$1]=$! url[$1]=http://127.0.0.1:$port
    for _ in $(seq 300); do curl -sf -o /dev/null "${url[$1]}/versions" && return; sleep 0.1; done
    echo "proxy $1 did not start" >&2; exit 1
}
builds=(new)
start_proxy new "$NEW_BIN"
# nginx proxy_cache in front of the same Glance: the transfers without hashing.
nport=$(free_port)
cat > "$work/nginx.conf" <<NGINX
# Workers must read the root-owned temporary directories.
user root;
worker_processes 1;
pid $work/nginx.pid;
error_log $work/nginx-error.log;
events { worker_connections 256; }
http {
    access_log off;
    sendfile on;
    tcp_nopush on;
    proxy_cache_path $work/nginx-cache levels=1:2 keys_zone=miss:10m max_size=20g inactive=1h use_temp_path=off;
    upstream glance { server 127.0.0.1:$gport; keepalive 8; }
    server {
        listen 127.0.0.1:$nport;
        location / {
            proxy_pass http://glance;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_cache miss;
            proxy_cache_key \$uri\$http_x_round;
            proxy_cache_valid 200 1h;
            proxy_buffer_size 256k;
            proxy_buffers 16 256k;
            proxy_busy_buffers_size 512k;
            proxy_ignore_headers Cache-Control Expires Set-Cookie Vary;
        }
    }
}
NGINX
nginx -c "$work/nginx.conf" -e "$work/nginx-error.log"
for _ in $(seq 50); do [[ -s $work/nginx.pid ]] && break; sleep 0.1; done
nginx_pids() { echo "$(cat "$work/nginx.pid") $(pgrep -P "$(cat "$work/nginx.pid")" | tr '\n' ' ')"; }
if [[ -n ${BASELINE_BIN:-} ]]; then builds+=(base); start_proxy base "$BASELINE_BIN"; fi

cpu_ticks() { for p in "$@"; do awk '{print $14 + $15}' "/proc/$p/stat"; done | awk '{s += $1} END {print s}'; }
hz=$(getconf CLK_TCK)
glance_pids() { echo "$glance_pid $(pgrep -P "$glance_pid" | tr '\n' ' ')"; }
busy_ticks() { awk '/^cpu / {print $2 + $3 + $4 + $7 + $8}' /proc/stat; }
TIMEFORMAT='%U %S'
fetch() { # URL [HEADER] -> "seconds client_cpu_seconds" (curl's own CPU, from bash's time)
    local out
    out=$( { time timeout 900 curl -sf -o /dev/null -w '%{time_total}\n' ${2:+-H "$2"} -H 'X-Auth-Token: noauth' "$1"; } 2>&1 ) || return 1
    awk 'NR == 1 {t = $1} NR == 2 {printf "%s %.2f\n", t, $1 + $2}' <<< "$out"
}
since() { # C0 G0 M0 SERVER_PIDS... -> "server glance machine" CPU-seconds since the marks
    local c0=$1 g0=$2 m0=$3; shift 3
    echo "$(calc "($(cpu_ticks "$@") - $c0) / $hz") $(calc "($(cpu_ticks $(glance_pids)) - $g0) / $hz") $(calc "($(busy_ticks) - $m0) / $hz")"
}
committed() { for _ in $(seq 1200); do [[ -f $1/images/$2 ]] && return; sleep 0.05; done; echo "not cached" >&2; exit 1; }
nginx_miss() { # ROUND -> "seconds cpu client glance machine" (CPU until its cache file is whole)
    local c0 g0 m0 t cl c g m f
    # Same conditions as the proxy, whose entry is dropped before each of its rounds: nginx's
    # cache directory holds no file when its round starts.
    find "$work/nginx-cache" -type f -delete 2>/dev/null || true
    [[ -z $(find "$work/nginx-cache" -type f 2>/dev/null) ]] || { echo "nginx's cache not emptied" >&2; exit 1; }
    c0=$(cpu_ticks $(nginx_pids)) g0=$(cpu_ticks $(glance_pids)) m0=$(busy_ticks)
    read -r t cl < <(fetch "http://127.0.0.1:$nport/v2/images/$a/file" "X-Round: $1")
    for _ in $(seq 1200); do   # the cache file: a header, then the image
        f=$(find "$work/nginx-cache" -type f -size +"$((bytes / 1024))"k | head -1)
        [[ -n $f ]] && break; sleep 0.05
    done
    [[ -n $f ]] || { echo "nginx did not cache the image" >&2; exit 1; }
    read -r c g m < <(since "$c0" "$g0" "$m0" $(nginx_pids))
    echo "$t $c $cl $g $m"
}
drop() { # NAME ID: through the cache API, then wait for the file to go
    curl -sf -o /dev/null -X DELETE -H 'X-Auth-Token: noauth' "${url[$1]}/v2/cache/$2"
    for _ in $(seq 200); do [[ ! -e $work/cache-$1/images/$2 ]] && return; sleep 0.05; done
    echo "entry not dropped" >&2; exit 1
}
direct() { # -> seconds
    timeout 900 curl -sf -o /dev/null -w '%{time_total}' -H 'X-Auth-Token: noauth' "$glance/v2/images/$a/file"
}
miss() { # NAME -> "seconds cpu client glance machine" (CPU until the entry is committed)
    local c0 g0 m0 t cl c g m
    c0=$(cpu_ticks "${pid[$1]}") g0=$(cpu_ticks $(glance_pids)) m0=$(busy_ticks)
    read -r t cl < <(fetch "${url[$1]}/v2/images/$a/file")
    committed "$work/cache-$1" "$a"
    read -r c g m < <(since "$c0" "$g0" "$m0" "${pid[$1]}")
    echo "$t $c $cl $g $m"
    drop "$1" "$a"
}

: > "$work/direct"; : > "$work/nginx"
for b_ in "${builds[@]}"; do : > "$work/miss-$b_"; done
settle_memory
load_before=$(uptime)
: > "$work/sha"
for r in $(seq "$ROUNDS"); do
    direct >> "$work/direct"; echo >> "$work/direct"
    "$hashrate" --file "$work/img" 1 | awk '{print $1}' >> "$work/sha"
    order=("${builds[@]}")
    if (( r % 2 == 0 )); then order=($(printf '%s\n' "${builds[@]}" | tac)); fi
    for b_ in "${order[@]}"; do miss "$b_" >> "$work/miss-$b_"; done
    nginx_miss "$r" >> "$work/nginx"
done
# Coalesced readers: READERS clients of the cold image at once, per build, rounds interleaved.
readers() { # NAME -> "seconds cpu_seconds downloads short" (CPU until all are done and committed)
    local c0 t0 i n0 n1 p t short=0 hp=()
    n0=$(grep -c "GET /v2/images/$a/file HTTP/1.1\" 200" "$gdata/log/access.log" || true)
    c0=$(cpu_ticks "${pid[$1]}")
    t0=$(now)
    for i in $(seq "$READERS"); do
        (timeout 900 curl -sf -o /dev/null -w '%{size_download}' -H 'X-Auth-Token: noauth' \
            "${url[$1]}/v2/images/$a/file" > "$work/reader.$i") &
        hp+=($!)
    done
    for p in "${hp[@]}"; do wait "$p" || true; done
    t=$(awk -v a="$t0" -v b="$(now)" 'BEGIN{printf "%.2f", b-a}')
    committed "$work/cache-$1" "$a"
    for i in $(seq "$READERS"); do [[ $(cat "$work/reader.$i") == "$bytes" ]] || short=$((short + 1)); done
    n1=$(grep -c "GET /v2/images/$a/file HTTP/1.1\" 200" "$gdata/log/access.log" || true)
    echo "$t $(calc "($(cpu_ticks "${pid[$1]}") - $c0) / $hz") $((n1 - n0)) $short"
    drop "$1" "$a"
}
for b_ in "${builds[@]}"; do : > "$work/readers-$b_"; done
for r in $(seq "$ROUNDS"); do
    order=("${builds[@]}")
    if (( r % 2 == 1 )); then order=($(printf '%s\n' "${builds[@]}" | tac)); fi
    for b_ in "${order[@]}"; do readers "$b_" >> "$work/readers-$b_"; done
done

rm -f "$work/img"
sha_cpu=$(median < "$work/sha")
t_direct=$(median < "$work/direct")
direct_gbps=$(calc "$gb / $t_direct")
min_rate=$(awk -v s="$sha_cpu" -v d="$direct_gbps" 'BEGIN{print (s < d ? s : d)}')

# Herd: 64 clients ask for the cold image b at once, per build (b dropped in between).
herd() { # NAME -> "seconds downloads bad"
    local t0 n0 i bad=0 hp=()
    n0=$(grep -c "GET /v2/images/$b/file HTTP/1.1\" 200" "$gdata/log/access.log" || true)
    t0=$(now)
    for i in $(seq "$HERD"); do
        (timeout 900 curl -sf -H 'X-Auth-Token: noauth' "${url[$1]}/v2/images/$b/file" | cksum > "$work/herd.$i") &
        hp+=($!)
    done
    for p in "${hp[@]}"; do wait "$p"; done
    local t; t=$(awk -v a="$t0" -v b="$(now)" 'BEGIN{printf "%.2f", b-a}')
    for i in $(seq "$HERD"); do [[ $(cat "$work/herd.$i") == "$want_b" ]] || bad=$((bad + 1)); done
    committed "$work/cache-$1" "$b"
    local n1; n1=$(grep -c "GET /v2/images/$b/file HTTP/1.1\" 200" "$gdata/log/access.log" || true)
    echo "$t $((n1 - n0)) $bad"
    drop "$1" "$b"
}
declare -A herd_out
for b_ in "${builds[@]}"; do herd_out[$b_]=$(herd "$b_"); done
load_after=$(uptime)

echo
echo "Cold-miss benchmark: ${IMAGE_MIB} MiB image, ${ROUNDS} rounds, herd ${HERD} x ${HERD_MIB} MiB; $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
echo "load before: ${load_before#*load average: }; after: ${load_after#*load average: }"
echo
echo "| anchor (${IMAGE_MIB} MiB) | GB/s | CPU-s per GB |"
echo "| --- | --- | --- |"
echo "| SHA-512, one core, this build's \`Digests\` over the image (per CPU-second, median of $ROUNDS, one per round: $(tr '\n' ' ' < "$work/sha")) | $sha_cpu | $(calc "1 / $sha_cpu") |"
echo "| Glance direct, curl to /dev/null (median of $ROUNDS) | $direct_gbps | |"
echo
echo "| cold miss (${IMAGE_MIB} MiB, median of $ROUNDS) | seconds | GB/s | proxy CPU-s per GB | rate / min(SHA-512, direct) (target >= 0.75) | CPU per GB / SHA-512's (target <= 1.6) | rounds: seconds, CPU-s |"
echo "| --- | --- | --- | --- | --- | --- | --- |"
for b_ in "${builds[@]}"; do
    t=$(awk '{print $1}' "$work/miss-$b_" | median)
    c=$(awk '{print $2}' "$work/miss-$b_" | median)
    name=$b_; [[ $b_ == base ]] && name="baseline ($(basename "$BASELINE_BIN"))"
    [[ $b_ == new ]] && name="this build"
    echo "| $name | $t | $(calc "$gb / $t") | $(calc "$c / $gb") | $(calc "($gb / $t) / $min_rate") | $(calc "($c / $gb) * $sha_cpu") | $(rounds "$work/miss-$b_") |"
done
t=$(awk '{print $1}' "$work/nginx" | median)
c=$(awk '{print $2}' "$work/nginx" | median)
echo "| ref: nginx proxy_cache, the same miss with no hashing (recv, cache-file write, sendfile) | $t | $(calc "$gb / $t") | $(calc "$c / $gb") | | | $(rounds "$work/nginx") |"
c_new=$(awk '{print $2}' "$work/miss-new" | median)
echo
paired=$(paste "$work/miss-new" "$work/sha" "$work/nginx" | awk -v gb="$gb" '{print ($2 / gb - 1 / $6) / ($8 / gb)}' | median)
echo "Beyond hashing: this build $(calc "$c_new / $gb - 1 / $sha_cpu") CPU-s per GB (its CPU per GB minus one core's SHA-512's); nginx's whole miss, which hashes nothing, $(calc "$c / $gb"): $(calc "($c_new / $gb - 1 / $sha_cpu) / ($c / $gb)")x nginx's (issue 30's target <= 1.0); round by round (each round's own SHA-512 and nginx miss), median $(calc "$paired")x. The CPU target of issue 16 leaves $(calc "0.6 / $sha_cpu") beyond hashing."
echo
echo "| who pays for a miss (median CPU-s per GB, same window) | server | client (curl) | Glance | whole machine | whole machine minus one core's SHA-512 |"
echo "| --- | --- | --- | --- | --- | --- |"
for f in "${builds[@]}" nginx; do
    file=$work/miss-$f; name="this build"
    [[ $f == base ]] && name="baseline"
    [[ $f == nginx ]] && file=$work/nginx name="nginx proxy_cache"
    m=$(calc "$(col 5 "$file") / $gb")
    [[ $f == nginx ]] && beyond="(hashes nothing)" || beyond=$(calc "$m - 1 / $sha_cpu")
    echo "| $name | $(calc "$(col 2 "$file") / $gb") | $(calc "$(col 3 "$file") / $gb") | $(calc "$(col 4 "$file") / $gb") | $m | $beyond |"
done
if [[ -n ${BASELINE_BIN:-} ]]; then
    paste "$work/miss-new" "$work/miss-base" | awk '{f += ($1 < $6); c += ($2 < $7)} END {
        printf "\nThis build vs the baseline, round by round: faster in %d of %d, less CPU in %d of %d.\n", f, NR, c, NR}'
fi
echo
served=$(calc "$READERS * $gb")
echo "| coalesced readers: ${READERS} clients of one cold ${IMAGE_MIB} MiB image (median of $ROUNDS) | all done (s) | proxy CPU-s per GB served | downloads from Glance, short bodies (all rounds) | rounds: seconds, CPU-s |"
echo "| --- | --- | --- | --- | --- |"
for b_ in "${builds[@]}"; do
    t=$(awk '{print $1}' "$work/readers-$b_" | median)
    c=$(awk '{print $2}' "$work/readers-$b_" | median)
    name="this build"; [[ $b_ == base ]] && name="baseline"
    echo "| $name | $t | $(calc "$c / $served") | $(awk '{d += $3; s += $4} END {print d ", " s}' "$work/readers-$b_") | $(awk '{print $1, $2}' "$work/readers-$b_" | tr '\n' ';' | sed 's/;$//; s/;/; /g') |"
    awk -v r="$ROUNDS" '{d += $3; s += $4} END {exit !(d == r && s == 0)}' "$work/readers-$b_" || fail_readers=1
done
echo
echo "| cold herd: ${HERD} clients, one ${HERD_MIB} MiB image | all done (s) | downloads from Glance | wrong bodies (cksum) |"
echo "| --- | --- | --- | --- |"
fail=0
for b_ in "${builds[@]}"; do
    read -r t n bad <<< "${herd_out[$b_]}"
    name="this build"; [[ $b_ == base ]] && name="baseline"
    echo "| $name | $t | $n | $bad |"
    [[ $n == 1 && $bad == 0 ]] || fail=1
done
[[ $fail == 0 ]] || { echo "FAIL: herd"; exit 1; }
[[ -z ${fail_readers:-} ]] || { echo "FAIL: coalesced readers (more than one download, or a short body)"; exit 1; }
