#!/usr/bin/env bash
# Build and run the proxy (release build) with the defaults of config/glance-cache-proxy.toml:
# listen on 127.0.0.1:9393, upstream Glance http://127.0.0.1:9292.
#
#   scripts/run.sh [--with-glance] [proxy flags...]
#   scripts/run.sh --help
#
# --with-glance  first start a local real Glance 33 on 127.0.0.1:9292 (no Keystone: any token
#                works, e.g. "noauth"), and stop it when the proxy exits. The first run
#                installs Glance, python-glanceclient, openstacksdk and the openstack CLI into
#                a venv (about a minute; scripts/glance-upstream/README.md). The clients are in
#                its bin/: export PATH="$GLANCE_VENV/bin:$PATH", then
#                  glance --os-image-url http://127.0.0.1:9393 --os-auth-token noauth image-list
# Other arguments go to the proxy (e.g. --upstream URL, --config FILE, --listen ADDR:PORT;
# target/release/glance-cache-proxy --help lists them). Stop with Ctrl-C or SIGTERM (the
# proxy drains, then Glance is stopped).
#
# Environment:
#   CACHE_DIR      the proxy's cache (default ~/.cache/glance-cache-proxy/cache), unless a
#                  --cache-dir or --config flag is given
#   GLANCE_VENV    with --with-glance: the venv Glance and the clients are installed into
#                  (default ~/.cache/glance-cache-proxy/glance-venv)
#   XDG_DATA_HOME  with --with-glance: Glance's data (images, database, log) go to
#                  $XDG_DATA_HOME/glance-cache-proxy/glance (default ~/.local/share/...); they
#                  are kept between runs
#   GLANCE_AUTH=keystone, GLANCE_CACHE, GLANCE_WORKERS, GLANCE_DEBUG, ...  with --with-glance:
#                  passed to the launcher (its header in scripts/glance-upstream/glance-upstream.sh
#                  lists them; keystone: also a real Keystone, and real tokens are needed)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
export GLANCE_VENV=${GLANCE_VENV:-$HOME/.cache/glance-cache-proxy/glance-venv}
LAUNCHER=scripts/glance-upstream/glance-upstream.sh

with_glance=0
args=()
for a in "$@"; do
    case $a in
        -h|--help) sed -n '2,/^set -euo/{/^set -euo/d; s/^# \{0,1\}//; p}' "$0"; exit 0 ;;
        --with-glance) with_glance=1 ;;
        *) args+=("$a") ;;
    esac
done
if [[ " ${args[*]-} " != *" --cache-dir"* && " ${args[*]-} " != *" --config"* ]]; then
    args+=(--cache-dir "${CACHE_DIR:-$HOME/.cache/glance-cache-proxy/cache}")
fi

"$(dirname "${BASH_SOURCE[0]}")/build-deps.sh"
cargo build --release --locked --bin glance-cache-proxy

if [[ $with_glance == 1 ]]; then
    data=${XDG_DATA_HOME:-$HOME/.local/share}/glance-cache-proxy/glance
    mkdir -p "$data"
    trap '"$LAUNCHER" stop "$data" || true' EXIT
    "$LAUNCHER" start 9292 "$data" >/dev/null
    echo "run.sh: Glance on http://127.0.0.1:9292 (data $data; clients: $GLANCE_VENV/bin/{glance,openstack})" >&2
fi

echo "run.sh: proxy on http://127.0.0.1:9393 unless --listen says otherwise (Ctrl-C to stop)" >&2
target/release/glance-cache-proxy "${args[@]}" &
proxy=$!
# A background job ignores SIGINT: hand Ctrl-C and SIGTERM to the proxy as one SIGTERM.
trap 'kill -TERM "$proxy" 2>/dev/null || true' INT TERM HUP
status=0
while kill -0 "$proxy" 2>/dev/null; do
    wait "$proxy" && status=0 || status=$?   # > 128 also when a trapped signal interrupted it
done
if ((status > 128)); then
    # The proxy may have exited while `wait` was interrupted: its status is still to collect
    # (127: it was already collected).
    rc=0
    wait "$proxy" 2>/dev/null || rc=$?
    ((rc == 127)) || status=$rc
fi
exit "$status"
