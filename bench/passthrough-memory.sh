#!/usr/bin/env bash
# Passthrough memory benchmark: a 2 GiB upload (Content-Length and chunked) and a 2 GiB
# download through the proxy, against a real Glance (cache off on both sides), with the
# proxy's peak RSS (VmHWM) and CPU. Target: peak RSS < 64 MiB. Prints a markdown table.
#
#   bench/passthrough-memory.sh [SIZE_MIB]      (default 2048)
# Everything runs on 127.0.0.1 and is stopped on exit.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
export GLANCE_VENV=${GLANCE_VENV:-$HOME/.cache/glance-cache-proxy/glance-venv}
SIZE_MIB=${1:-2048}
LAUNCHER=scripts/glance-upstream/glance-upstream.sh

work=$(mktemp -d /tmp/gcp-bench-mem.XXXXXX)
gdata=$work/glance proxy_pid=""
cleanup() {
    [[ -n $proxy_pid ]] && kill "$proxy_pid" 2>/dev/null && wait "$proxy_pid" 2>/dev/null
    GLANCE_CACHE=0 "$LAUNCHER" stop "$gdata" >/dev/null 2>&1 || true
    rm -rf "$work"
}
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

cargo build --release --locked --bin glance-cache-proxy >&2
gport=$(free_port)
glance=$(GLANCE_CACHE=0 "$LAUNCHER" start "$gport" "$gdata" | awk '{print $2}')
pport=$(free_port)
proxy=http://127.0.0.1:$pport
printf '[cache]\nenabled = false\ndir = "%s"\n' "$work/cache" > "$work/proxy.toml"
target/release/glance-cache-proxy --config "$work/proxy.toml" --listen "127.0.0.1:$pport" \
    --upstream "$glance" --metrics-listen "" 2> "$work/proxy.log" &
proxy_pid=$!
for _ in $(seq 100); do curl -sf -o /dev/null "$proxy/versions" && break; sleep 0.1; done

head -c "$((SIZE_MIB << 20))" /dev/urandom > "$work/img"
want=$(sha256sum < "$work/img" | cut -d' ' -f1)
bytes=$((SIZE_MIB << 20))
clk=$(getconf CLK_TCK)
cpu() { awk -v t="$clk" '{printf "%.2f", ($14 + $15) / t}' "/proc/$proxy_pid/stat"; }
create() {
    curl -sf -X POST -H 'X-Auth-Token: noauth' -H 'Content-Type: application/json' \
        -d '{"name":"bench","disk_format":"raw","container_format":"bare"}' "$1/v2/images" |
        python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])'
}
rows=()
# row NAME SECONDS CPU_BEFORE CPU_AFTER
row() {
    rows+=("| $1 | $(awk -v b="$bytes" -v s="$2" 'BEGIN{printf "%.0f", b/s/1e6}') | $2 | $3 |")
}
timed() { local t0 t1; t0=$(date +%s.%N); "$@"; t1=$(date +%s.%N); awk -v a="$t0" -v b="$t1" 'BEGIN{printf "%.2f", b-a}'; }

id1=$(create "$proxy")
c0=$(cpu)
t=$(timed timeout 600 curl -sf -o /dev/null -H 'X-Auth-Token: noauth' -H 'Content-Type: application/octet-stream' \
    -T "$work/img" "$proxy/v2/images/$id1/file")
row "upload through proxy, Content-Length" "$t" "$(awk -v a="$c0" -v b="$(cpu)" 'BEGIN{printf "%.2f", b-a}')"
id2=$(create "$proxy")
c0=$(cpu)
t=$(timed timeout 600 curl -sf -o /dev/null -H 'X-Auth-Token: noauth' -H 'Content-Type: application/octet-stream' \
    -H 'Transfer-Encoding: chunked' -T - "$proxy/v2/images/$id2/file" < "$work/img")
row "upload through proxy, chunked" "$t" "$(awk -v a="$c0" -v b="$(cpu)" 'BEGIN{printf "%.2f", b-a}')"
t=$(timed timeout 600 curl -sf -o /dev/null -H 'X-Auth-Token: noauth' "$glance/v2/images/$id1/file")
row "download direct from Glance (baseline)" "$t" "-"
c0=$(cpu)
t=$(timed timeout 600 curl -sf -o /dev/null -H 'X-Auth-Token: noauth' "$proxy/v2/images/$id1/file")
row "download through proxy" "$t" "$(awk -v a="$c0" -v b="$(cpu)" 'BEGIN{printf "%.2f", b-a}')"
# Byte check, untimed: the chunked upload and the download must both be exact.
got=$(timeout 600 curl -sf -H 'X-Auth-Token: noauth' "$proxy/v2/images/$id2/file" | sha256sum | cut -d' ' -f1)
hwm=$(awk '/VmHWM/ {print $2}' "/proc/$proxy_pid/status")
rss=$(awk '/VmRSS/ {print $2}' "/proc/$proxy_pid/status")

echo
echo "Passthrough memory, ${SIZE_MIB} MiB image, $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
echo
echo "| transfer | MB/s | seconds | proxy CPU s |"
echo "| --- | --- | --- | --- |"
printf '%s\n' "${rows[@]}"
echo
echo "| proxy memory | KiB |"
echo "| --- | --- |"
echo "| peak RSS (VmHWM) | $hwm |"
echo "| RSS at the end (VmRSS) | $rss |"
echo
if [[ $got == "$want" ]]; then echo "download sha256: matches"; else echo "download sha256: MISMATCH"; exit 1; fi
if (( hwm < 64 * 1024 )); then echo "PASS: peak RSS $((hwm / 1024)) MiB < 64 MiB"; else echo "FAIL: peak RSS $((hwm / 1024)) MiB >= 64 MiB"; exit 1; fi
