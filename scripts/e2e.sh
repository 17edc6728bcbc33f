#!/usr/bin/env bash
# End-to-end tests: a real Glance 33 (scripts/glance-upstream/) with the real clients
# (python-glanceclient, openstacksdk, the glance and openstack CLIs) through the proxy.
# Installs the venv if needed, builds the proxy unless PROXY_BIN is set, runs pytest.
#
#   scripts/e2e.sh [pytest args]     e.g. scripts/e2e.sh -k sdk -x
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
export GLANCE_VENV=${GLANCE_VENV:-$HOME/.cache/glance-cache-proxy/glance-venv}

scripts/glance-upstream/glance-upstream.sh install
if [[ -z ${PROXY_BIN:-} ]]; then
    cargo build --locked --bin glance-cache-proxy
    export PROXY_BIN=$PWD/target/debug/glance-cache-proxy
fi
command -v curl >/dev/null || { echo "e2e: curl is needed" >&2; exit 1; }
exec timeout 1500 "$GLANCE_VENV/bin/python" -m pytest -p no:cacheprovider -q -rA tests/e2e "$@"
