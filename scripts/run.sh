#!/usr/bin/env bash
# Build and run the proxy (release build) with the default configuration: listen on
# 127.0.0.1:9393, upstream Glance http://127.0.0.1:9292.
#
#   scripts/run.sh [--with-glance] [proxy flags...]
#
# --with-glance  first start a local real Glance 33 on 127.0.0.1:9292 (installed into a venv
#                by scripts/glance-upstream/; data in ${XDG_DATA_HOME:-~/.local/share}/
#                glance-cache-proxy/glance), and stop it when the proxy exits.
# The cache goes to $CACHE_DIR (default ~/.cache/glance-cache-proxy/cache) unless a
# --cache-dir or --config flag is given. Stop with Ctrl-C (graceful drain).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
export GLANCE_VENV=${GLANCE_VENV:-$HOME/.cache/glance-cache-proxy/glance-venv}

with_glance=0
args=()
for a in "$@"; do
    case $a in
        --with-glance) with_glance=1 ;;
        *) args+=("$a") ;;
    esac
done
if [[ " ${args[*]-} " != *" --cache-dir"* && " ${args[*]-} " != *" --config"* ]]; then
    args+=(--cache-dir "${CACHE_DIR:-$HOME/.cache/glance-cache-proxy/cache}")
fi

cargo build --release --locked --bin glance-cache-proxy

if [[ $with_glance == 1 ]]; then
    data=${XDG_DATA_HOME:-$HOME/.local/share}/glance-cache-proxy/glance
    mkdir -p "$data"
    scripts/glance-upstream/glance-upstream.sh start 9292 "$data" >/dev/null
    trap 'scripts/glance-upstream/glance-upstream.sh stop "$data"' EXIT
    echo "run.sh: Glance on http://127.0.0.1:9292 (clients: $GLANCE_VENV/bin/{glance,openstack})" >&2
fi
echo "run.sh: proxy on http://127.0.0.1:9393 (Ctrl-C to stop)" >&2
status=0
target/release/glance-cache-proxy "${args[@]}" || status=$?
exit "$status"
