#!/usr/bin/env bash
# Shows the syscalls of a cache hit: strace on the proxy while curl fetches a cached image
# (with a metadata call before and after on the same connection). Expected: the response
# heads go out with writev, the body with sendfile, and the cached file is never read().
#
#   bench/strace-hit.sh [IMAGE_MIB]     (default 64)
# Installs strace if needed (root). All on 127.0.0.1, stopped on exit.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
export GLANCE_VENV=${GLANCE_VENV:-$HOME/.cache/glance-cache-proxy/glance-venv}
IMAGE_MIB=${1:-64}
LAUNCHER=scripts/glance-upstream/glance-upstream.sh
command -v strace >/dev/null || { apt-get update -q >/dev/null; apt-get install -y -q strace >/dev/null; }

work=$(mktemp -d /tmp/gcp-bench-strace.XXXXXX)
gdata=$work/glance proxy_pid="" strace_pid=""
cleanup() {
    [[ -n $strace_pid ]] && kill "$strace_pid" 2>/dev/null
    [[ -n $proxy_pid ]] && kill "$proxy_pid" 2>/dev/null && wait "$proxy_pid" 2>/dev/null
    GLANCE_CACHE=0 "$LAUNCHER" stop "$gdata" >/dev/null 2>&1 || true
    rm -rf "$work"
}
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

cargo build --release --locked --bin glance-cache-proxy >&2
glance=$(GLANCE_CACHE=0 "$LAUNCHER" start "$(free_port)" "$gdata" | awk '{print $2}')
pport=$(free_port)
target/release/glance-cache-proxy --listen "127.0.0.1:$pport" --upstream "$glance" \
    --cache-dir "$work/cache" --metrics-listen "" 2> "$work/proxy.log" &
proxy_pid=$!
proxy=http://127.0.0.1:$pport
for _ in $(seq 100); do curl -sf -o /dev/null "$proxy/versions" && break; sleep 0.1; done
id=$(curl -sf -X POST -H 'X-Auth-Token: noauth' -H 'Content-Type: application/json' \
    -d '{"name":"strace","disk_format":"raw","container_format":"bare"}' "$glance/v2/images" |
    python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])')
head -c "$((IMAGE_MIB << 20))" /dev/urandom | curl -sf -o /dev/null -H 'X-Auth-Token: noauth' \
    -H 'Content-Type: application/octet-stream' -T - "$glance/v2/images/$id/file"
curl -sf -o /dev/null "$proxy/v2/images/$id/file"          # miss: fills the cache
for _ in $(seq 300); do [[ -f $work/cache/images/$id ]] && break; sleep 0.1; done

strace -f -qq -e trace=sendfile,read,pread64,readv,write,writev,openat -o "$work/trace" -p "$proxy_pid" &
strace_pid=$!
sleep 1
curl -sv -o /dev/null -o /dev/null -o /dev/null "$proxy/v2/images/$id" "$proxy/v2/images/$id/file" \
    "$proxy/v2/images/$id" 2> "$work/curl.err"
sleep 0.5
kill "$strace_pid"; wait "$strace_pid" 2>/dev/null || true; strace_pid=""

fd=$(grep -E "openat\(.*images/$id\"" "$work/trace" | grep -oE '= [0-9]+' | head -1 | tr -dc 0-9)
calls=$(grep -c 'sendfile(' "$work/trace" || true)
sent=$(grep -oE 'sendfile\([0-9]+, [0-9]+, \[[0-9]+\] => \[[0-9]+\], [0-9]+\) = [0-9]+' "$work/trace" |
    awk '{s += $NF} END {printf "%.0f", s}')
reads=0
if [[ -n $fd ]]; then
    reads=$(grep -cE "^[0-9]+ +(read|pread64|readv)\($fd," "$work/trace" || true)
fi
echo "Syscalls of one keep-alive connection: metadata GET, ${IMAGE_MIB} MiB hit, metadata GET"
echo
echo '```'
grep -E 'sendfile\(|writev\(|openat\(.*images' "$work/trace" | head -4
echo "..."
grep -E 'sendfile\(' "$work/trace" | tail -2
grep -E 'writev\(' "$work/trace" | tail -1
echo '```'
echo
echo "| what | value |"
echo "| --- | --- |"
echo "| cached file fd | ${fd:-?} |"
echo "| sendfile calls | $calls |"
echo "| bytes sent by sendfile | $sent (image: $((IMAGE_MIB << 20))) |"
echo "| read/pread64/readv calls on the cached file | $reads |"
echo "| curl: connection re-used | $(grep -c 'Re-using existing connection' "$work/curl.err") of 2 |"
if [[ $sent == $((IMAGE_MIB << 20)) && $reads == 0 ]]; then echo "PASS: zero-copy"; else echo "FAIL"; exit 1; fi
