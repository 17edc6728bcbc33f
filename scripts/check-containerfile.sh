#!/usr/bin/env bash
# Builds the Containerfile on a machine that cannot pull its base images, with stand-ins
# assembled from this machine (Debian 12), then tests the result with scripts/check-image.sh
# (podman, a real Glance: /healthz, /readyz, a miss, a hit, SIGTERM).
#   - the build stage's RUST_IMAGE: an empty image whose RUN steps see this machine's /usr
#     and Rust toolchain read-only (buildah build -v), with ~/.cargo for the registry cache
#     and target/ for the build (cargo reuses a release build made here: run
#     `cargo build --release --locked` first, or the build stage compiles the crate, ~5 min);
#   - RUNTIME_IMAGE: what distroless cc-debian12 holds that the proxy uses (glibc's loader,
#     libc, libm, libgcc_s, the CA bundle, passwd/group, /tmp), and no OpenSSL, so the
#     Containerfile must bring libcrypto and libssl itself.
# What stays untested: the real base images (their pull, and that the build stage's
# `scripts/build-deps.sh` finds libssl-dev and pkg-config in rust:1.95-bookworm).
# Not part of scripts/test.sh (CI builds no release binary). As root (buildah's storage).
# Removes its images and temp files.
#
#   scripts/check-containerfile.sh
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
command -v buildah >/dev/null || { echo "check-containerfile: buildah is needed" >&2; exit 1; }
RUSTUP_HOME=${RUSTUP_HOME:-$HOME/.rustup} CARGO_HOME=${CARGO_HOME:-$HOME/.cargo}
tag=$$
rust_image=localhost/standin-rust:$tag runtime_image=localhost/standin-distroless-cc:$tag
image=localhost/glance-cache-proxy-containerfile:$tag
work=$(mktemp -d /tmp/gcp-containerfile.XXXXXX)
ctr=
cleanup() {
    set +e
    [[ -z $ctr ]] || buildah rm "$ctr" >/dev/null 2>&1
    buildah rmi -f "$image" "$rust_image" "$runtime_image" >/dev/null 2>&1
    rm -rf "$work"
}
trap cleanup EXIT

# RUST_IMAGE: merged-/usr links and mount points; the tools come from the host (-v below).
mkdir -p "$work/rust/usr" "$work/rust/etc/alternatives" "$work/rust/tmp" "$work/rust/src" "$work/rust/$RUSTUP_HOME" "$work/rust/$CARGO_HOME"
chmod 1777 "$work/rust/tmp"
for d in bin sbin lib lib64; do ln -s "usr/$d" "$work/rust/$d"; done
ctr=$(buildah from scratch)
buildah copy --quiet "$ctr" "$work/rust/" / >/dev/null
buildah config --env "PATH=$CARGO_HOME/bin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin" \
    --env "HOME=$HOME" --env "RUSTUP_HOME=$RUSTUP_HOME" --env "CARGO_HOME=$CARGO_HOME" "$ctr"
buildah commit --quiet --rm "$ctr" "$rust_image" >/dev/null
ctr=

# RUNTIME_IMAGE: distroless cc-debian12's parts the proxy uses, from this machine.
r=$work/runtime multiarch=$(gcc -dumpmachine)
mkdir -p "$r/lib/$multiarch" "$r/lib64" "$r/etc/ssl/certs" "$r/tmp" "$r/home/nonroot"
chmod 1777 "$r/tmp"
for lib in libc.so.6 libm.so.6 libgcc_s.so.1; do install -m 0755 "/lib/$multiarch/$lib" "$r/lib/$multiarch/"; done
install -m 0755 /lib64/ld-linux-x86-64.so.2 "$r/lib64/"
install -m 0644 /etc/ssl/certs/ca-certificates.crt "$r/etc/ssl/certs/"
printf 'root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n' > "$r/etc/passwd"
printf 'root:x:0:\nnonroot:x:65532:\n' > "$r/etc/group"
ctr=$(buildah from scratch)
buildah copy --quiet "$ctr" "$r/" / >/dev/null
buildah commit --quiet --rm "$ctr" "$runtime_image" >/dev/null
ctr=

echo "check-containerfile: buildah build -f Containerfile with stand-in base images"
# runc: crun refuses hosts with cgroups v1 and v2 side by side (scripts/check-image.sh).
runtime=()
if command -v runc >/dev/null; then runtime=(--runtime runc); fi
buildah build "${runtime[@]}" --quiet --layers=false --network host \
    --ulimit nofile=4096:4096 --ulimit nproc=4096:4096 \
    --build-arg "RUST_IMAGE=$rust_image" --build-arg "RUNTIME_IMAGE=$runtime_image" \
    -v /usr:/usr:ro -v /etc/alternatives:/etc/alternatives:ro -v "$RUSTUP_HOME:$RUSTUP_HOME:ro" -v "$CARGO_HOME:$CARGO_HOME" \
    -v "$PWD/target:/src/target" \
    -f Containerfile -t "$image" . >/dev/null
IMAGE=$image scripts/check-image.sh
