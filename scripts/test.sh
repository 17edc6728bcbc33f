#!/usr/bin/env bash
# Runs every test: Rust unit, integration and tidy tests (cargo test), then the end-to-end
# suite against a real Glance with the real clients (scripts/e2e.sh, which installs the
# Glance venv it needs). Everything binds 127.0.0.1 only.
#
#   scripts/test.sh            # all tests
#   SKIP_E2E=1 scripts/test.sh # no end-to-end tests
#   FUZZ_SECONDS=0 scripts/test.sh  # no fuzzing (default: 60 s per target)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

scripts/build-deps.sh
echo "== cargo test"
cargo test --all-targets --locked --features failpoints,ktls

echo "== deployment files (systemd unit, Kubernetes manifests, alert rules)"
scripts/check-deploy.sh

if [[ ${FUZZ_SECONDS:-60} != 0 ]]; then
    echo "== fuzzing every parser of outside input (${FUZZ_SECONDS:-60} s per target)"
    scripts/fuzz.sh "${FUZZ_SECONDS:-60}"
fi

if [[ ${SKIP_E2E:-0} == 1 ]]; then
    echo "== end-to-end tests skipped (SKIP_E2E=1)"
    exit 0
fi
echo "== end-to-end tests against a real Glance"
scripts/e2e.sh
