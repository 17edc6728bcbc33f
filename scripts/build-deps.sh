#!/usr/bin/env bash
# Installs what building the proxy needs beyond a Rust toolchain and gcc: OpenSSL's headers
# and pkg-config (the image digests use the system's libcrypto; bench/RESULTS.md, "Hashing
# implementations"). Debian's packages, with apt as root; a no-op when they are there.
set -euo pipefail
if pkg-config --exists libcrypto 2>/dev/null; then
    exit 0
fi
if [[ $(id -u) != 0 ]] || ! command -v apt-get >/dev/null; then
    echo "build-deps: install OpenSSL's headers and pkg-config (Debian: libssl-dev pkg-config)" >&2
    exit 1
fi
apt-get update -q >/dev/null
DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends libssl-dev pkg-config >/dev/null
