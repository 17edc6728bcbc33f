#!/usr/bin/env bash
# perf profiles of cold misses through the proxy and through nginx proxy_cache (issue 30),
# two of each, alternated, each after its cache was emptied; prints per profile: samples
# (cpu-clock, ns), shares by DSO, by thread (the proxy's), self and children by symbol.
#   bench/perf-miss.sh [MIB]   (default 512; a real Glance, cache off; 127.0.0.1; root for perf)
# Memory is settled first on a VM with free page reporting (bench/settle-memory.sh; SETTLE=0
# skips it).
set -u
cd "$(dirname "${BASH_SOURCE[0]}")/.."
export GLANCE_VENV=$HOME/.cache/glance-cache-proxy/glance-venv
MIB=${1:-512}
cargo build --release --locked --bin glance-cache-proxy >&2
LAUNCHER=scripts/glance-upstream/glance-upstream.sh
work=$(mktemp -d /tmp/gcp-perfmiss.XXXXXX); gdata=$work/glance; pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  [[ -s $work/nginx.pid ]] && kill -QUIT "$(cat "$work/nginx.pid")" 2>/dev/null; wait 2>/dev/null || true
  GLANCE_CACHE=0 "$LAUNCHER" stop "$gdata" >/dev/null 2>&1 || true; rm -rf "$work"; restore_memory; }
source bench/settle-memory.sh
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
gport=$(free_port)
glance=$(GLANCE_CACHE=0 "$LAUNCHER" start "$gport" "$gdata" | awk '{print $2}')
id=$(curl -sf -X POST -H 'X-Auth-Token: noauth' -H 'Content-Type: application/json' \
    -d '{"name":"bench","disk_format":"raw","container_format":"bare"}' "$glance/v2/images" |
    python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])')
head -c "$((MIB << 20))" /dev/urandom > "$work/img"
curl -sf -o /dev/null -H 'X-Auth-Token: noauth' -H 'Content-Type: application/octet-stream' -T "$work/img" "$glance/v2/images/$id/file"
rm -f "$work/img"
pport=$(free_port)
target/release/glance-cache-proxy --listen "127.0.0.1:$pport" --upstream "$glance" --cache-dir "$work/cache" \
  --cache-max-size 20GiB --metrics-listen "" 2> "$work/proxy.log" & ppid=$!; pids+=($ppid)
for _ in $(seq 300); do curl -sf -o /dev/null "http://127.0.0.1:$pport/versions" && break; sleep 0.1; done
nport=$(free_port)
cat > "$work/nginx.conf" <<NGINX
user root; worker_processes 1; pid $work/nginx.pid; error_log $work/nginx-error.log;
events { worker_connections 256; }
http { access_log off; sendfile on; tcp_nopush on;
  proxy_cache_path $work/nginx-cache levels=1:2 keys_zone=miss:10m max_size=20g inactive=1h use_temp_path=off;
  upstream glance { server 127.0.0.1:$gport; keepalive 8; }
  server { listen 127.0.0.1:$nport; location / { proxy_pass http://glance; proxy_http_version 1.1;
    proxy_set_header Connection ""; proxy_cache miss; proxy_cache_key \$uri\$http_x_round; proxy_cache_valid 200 1h;
    proxy_buffer_size 256k; proxy_buffers 16 256k; proxy_busy_buffers_size 512k;
    proxy_ignore_headers Cache-Control Expires Set-Cookie Vary; } } }
NGINX
nginx -c "$work/nginx.conf" -e "$work/nginx-error.log"
for _ in $(seq 50); do [[ -s $work/nginx.pid ]] && break; sleep 0.1; done
worker=$(pgrep -f "nginx: worker" -P "$(cat "$work/nginx.pid")" | head -1)
settle_memory
# warm-up rounds (one each), then the profiled ones
curl -sf -o /dev/null -H 'X-Auth-Token: noauth' "http://127.0.0.1:$pport/v2/images/$id/file"
sleep 1; curl -sf -o /dev/null -X DELETE -H 'X-Auth-Token: noauth' "http://127.0.0.1:$pport/v2/cache/$id"; sleep 1
for r in 1 2; do
  perf record -F 999 -g -p "$ppid" -o "$work/proxy$r.data" -- sleep 30 2>/dev/null & perfp=$!
  sleep 0.5
  curl -sf -o /dev/null -H 'X-Auth-Token: noauth' "http://127.0.0.1:$pport/v2/images/$id/file"
  for _ in $(seq 600); do [[ -f $work/cache/images/$id ]] && break; sleep 0.05; done
  kill -INT $perfp; wait $perfp || true
  curl -sf -o /dev/null -X DELETE -H 'X-Auth-Token: noauth' "http://127.0.0.1:$pport/v2/cache/$id"; sleep 1
  find "$work/nginx-cache" -type f -delete 2>/dev/null || true
  perf record -F 999 -g -p "$worker" -o "$work/nginx$r.data" -- sleep 30 2>/dev/null & perfp=$!
  sleep 0.5
  curl -sf -o /dev/null -H "X-Round: $r" -H 'X-Auth-Token: noauth' "http://127.0.0.1:$nport/v2/images/$id/file"
  sleep 0.5
  kill -INT $perfp; wait $perfp || true
  for w in proxy nginx; do
    perf report -i "$work/$w$r.data" --no-children --sort sym --stdio -g none 2>/dev/null | grep -v "^#" | grep "%" | head -25 > "$work/$w$r-self.txt"
    perf report -i "$work/$w$r.data" --children --sort sym --stdio -g none 2>/dev/null | grep -v "^#" | grep "%" | head -40 > "$work/$w$r-children.txt"
    perf report -i "$work/$w$r.data" --no-children --sort dso --stdio -g none 2>/dev/null | grep -v "^#" | grep "%" | head -12 > "$work/$w$r-dso.txt"
    perf report -i "$work/$w$r.data" --no-children --sort pid,dso --stdio -g none 2>/dev/null | grep -v "^#" | grep "%" | head -12 > "$work/$w$r-threads.txt"
    perf report -i "$work/$w$r.data" --stdio --sort comm 2>/dev/null | grep -E "samples|Event count" | head -3 > "$work/$w$r-count.txt"
  done
done
for r in 1 2; do for w in proxy nginx; do
  echo "== $w, round $r: $(cat "$work/$w$r-count.txt")"; echo "-- by DSO"; cat "$work/$w$r-dso.txt"; echo "-- by thread and DSO"; cat "$work/$w$r-threads.txt"
  echo "-- self"; head -12 "$work/$w$r-self.txt"; echo "-- children"; head -25 "$work/$w$r-children.txt"
done; done
