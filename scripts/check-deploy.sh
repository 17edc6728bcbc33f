#!/usr/bin/env bash
# Checks the operations files: the systemd unit (systemd-analyze verify, and its documented
# install run in a private mount namespace: scripts/check-systemd-install.sh), the Kubernetes
# manifests (kubernetes-validate --strict, from PyPI; the ServiceMonitor is a CRD it has no
# schema for, so it only warns there), the alert rules (promtool check rules, from Debian's
# prometheus package), the HAProxy configuration of the site tier (haproxy -c, Debian's
# haproxy), the parent tier's proxy configuration (--check-config) and the dashboard's JSON.
# Installs what it needs (apt as root; a venv under ~/.cache/glance-cache-proxy/tools-venv).
# A metrics scrape is checked with `promtool check metrics` by the end-to-end suite
# (tests/e2e/test_ops.py). Then the container image: built offline from the debug binary with
# buildah and run with podman in front of a real Glance (scripts/check-image.sh; it says so
# when buildah cannot build here).
#
#   scripts/check-deploy.sh
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
TOOLS_VENV=${TOOLS_VENV:-$HOME/.cache/glance-cache-proxy/tools-venv}

need_apt=()
command -v systemd-analyze >/dev/null || need_apt+=(systemd)
command -v promtool >/dev/null || need_apt+=(prometheus)
command -v haproxy >/dev/null || [[ -x /usr/sbin/haproxy ]] || need_apt+=(haproxy)
if ((${#need_apt[@]})); then
    apt-get update -q >/dev/null
    # prometheus: only for promtool, haproxy only for `haproxy -c`; their services are not
    # started in containers (policy-rc.d).
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${need_apt[@]}" >/dev/null
fi
if [[ ! -x $TOOLS_VENV/bin/kubernetes-validate ]]; then
    python3 -m venv "$TOOLS_VENV"
    "$TOOLS_VENV/bin/pip" install -q kubernetes-validate==1.37.0
fi

echo "== systemd-analyze verify deploy/systemd/glance-cache-proxy.service"
cargo build --locked --bin glance-cache-proxy
unit=$(mktemp -d)/glance-cache-proxy.service
trap 'rm -rf "$(dirname "$unit")"' EXIT
# verify checks that ExecStart's program exists: point it at the freshly built binary.
sed "s|/usr/local/bin/glance-cache-proxy|$PWD/target/debug/glance-cache-proxy|" \
    deploy/systemd/glance-cache-proxy.service > "$unit"
out=$(systemd-analyze verify "$unit" 2>&1) || { echo "$out"; exit 1; }
# verify exits 0 on some warnings; none are acceptable for this unit.
if grep -i "glance-cache-proxy.service" <<< "$out"; then exit 1; fi
echo "== the unit's install steps, and the service started as its user (scripts/check-systemd-install.sh)"
scripts/check-systemd-install.sh target/debug/glance-cache-proxy

echo "== kubernetes-validate --strict deploy/kubernetes/*.yaml"
"$TOOLS_VENV/bin/kubernetes-validate" --strict deploy/kubernetes/*.yaml

echo "== promtool check rules deploy/prometheus/alerts.yml"
promtool check rules deploy/prometheus/alerts.yml

echo "== haproxy -c -f deploy/haproxy/haproxy.cfg"
PATH=$PATH:/usr/sbin haproxy -c -q -f deploy/haproxy/haproxy.cfg

echo "== glance-cache-proxy --check-config: deploy/parent/glance-cache-proxy.toml"
target/debug/glance-cache-proxy --config deploy/parent/glance-cache-proxy.toml --check-config >/dev/null

echo "== grafana/*.json parse"
for f in grafana/*.json; do python3 -m json.tool "$f" >/dev/null; done

echo "== container image: scripts/build-image.sh, run with podman (scripts/check-image.sh)"
scripts/check-image.sh target/debug/glance-cache-proxy
echo "deploy files OK"
