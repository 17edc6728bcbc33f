#!/usr/bin/env bash
# End-to-end tests: a real Glance 33 (scripts/glance-upstream/) with the real clients
# (python-glanceclient, openstacksdk, the glance and openstack CLIs, curl) through the proxy.
# Installs the venv if needed, builds the proxy unless PROXY_BIN is set, runs pytest with the
# venv's python. Everything binds 127.0.0.1. Exit status: pytest's (non-zero on failure).
#
#   scripts/e2e.sh [pytest args]     e.g. scripts/e2e.sh -k sdk -x
#                                    or  scripts/e2e.sh tests/e2e/test_tls.py -x (that file only)
#
# Environment: GLANCE_VENV (default ~/.cache/glance-cache-proxy/glance-venv), PROXY_BIN
# (a prebuilt proxy binary; default: cargo build, target/debug/glance-cache-proxy), MKCERT_BIN
# (a prebuilt mkcert example; default: cargo build, target/debug/examples/mkcert). Temporary
# files go under TMPDIR (default /tmp); pytest's base temp there is removed at the end.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
export GLANCE_VENV=${GLANCE_VENV:-$HOME/.cache/glance-cache-proxy/glance-venv}

command -v curl >/dev/null || { echo "e2e: curl is needed" >&2; exit 1; }
# promtool (Debian's prometheus package) checks a real /metrics scrape (tests/e2e/test_ops.py).
if ! command -v promtool >/dev/null; then
    apt-get update -q >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends prometheus >/dev/null
fi
# nginx (Debian's) is the HTTPS front of Glance that checks the proxy's client certificate
# (tests/e2e/test_tls.py).
if ! command -v nginx >/dev/null && [[ ! -x /usr/sbin/nginx ]]; then
    apt-get update -q >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends nginx >/dev/null
fi
# haproxy (Debian's) shards the site tier of tests/e2e/test_fleet.py (deploy/haproxy/).
if ! command -v haproxy >/dev/null && [[ ! -x /usr/sbin/haproxy ]]; then
    apt-get update -q >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends haproxy >/dev/null
fi
# The default install has Glance, the clients, the openstack CLI and pytest; the Keystone
# extras are for tests/e2e/test_authz.py, which also runs Glance with a real Keystone.
scripts/glance-upstream/glance-upstream.sh install
GLANCE_AUTH=keystone scripts/glance-upstream/glance-upstream.sh install
if [[ -z ${PROXY_BIN:-} ]]; then
    cargo build --locked --bin glance-cache-proxy
    export PROXY_BIN=$PWD/target/debug/glance-cache-proxy
fi
[[ -x $PROXY_BIN ]] || { echo "e2e: no proxy binary at $PROXY_BIN" >&2; exit 1; }
# The test certificates (tests/e2e/test_tls.py) come from the mkcert example.
if [[ -z ${MKCERT_BIN:-} ]]; then
    cargo build --locked --example mkcert
    export MKCERT_BIN=$PWD/target/debug/examples/mkcert
fi
[[ -x $MKCERT_BIN ]] || { echo "e2e: no mkcert binary at $MKCERT_BIN" >&2; exit 1; }
# Test files or directories among the arguments replace the default, all of tests/e2e/.
paths=(tests/e2e)
for arg in "$@"; do
    if [[ $arg == tests/e2e/* ]]; then paths=(); fi
done
# pytest's temporary directories (tmp_path) go into a directory of this run, removed at the
# end (by default pytest keeps the last three runs' under the system temp dir,
# pytest-of-<user>, about 90 MB).
basetemp=$(mktemp -d "${TMPDIR:-/tmp}/gcp-e2e-pytest.XXXXXX")
trap 'rm -rf "$basetemp"' EXIT
# Bounded: SIGINT first (pytest then runs its teardown: Glance and the proxies are stopped),
# SIGKILL a minute later.
status=0
timeout -s INT -k 60 900 "$GLANCE_VENV/bin/python" -m pytest -p no:cacheprovider -q -rA \
    --basetemp "$basetemp/t" "${paths[@]}" "$@" || status=$?
exit "$status"
