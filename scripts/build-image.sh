#!/usr/bin/env bash
# Builds the proxy's container image without pulling anything: `buildah from scratch` with a
# binary built on this machine and the shared libraries it links (ldd: glibc's loader, libc,
# libm, libgcc_s, OpenSSL 3's libcrypto and libssl), the system's CA bundle, passwd/group
# entries for the proxy's user (64064, the DaemonSet's runAsUser), the image's default config
# (deploy/container/glance-cache-proxy.toml) and the cache directory owned by that user, with
# the Containerfile's image settings (user, ports 9393/9394, volume, entrypoint, command).
# For machines that cannot pull the Containerfile's base images; the libraries are this
# machine's, so build on the distribution the Containerfile uses (Debian 12) or newer.
# Needs buildah (Debian: `apt-get install buildah`), as root or in a rootless set-up.
#
#   scripts/build-image.sh [--binary PATH] [IMAGE]
#     --binary  a built proxy (default: cargo build --release, target/release/glance-cache-proxy)
#     IMAGE     the name to commit (default localhost/glance-cache-proxy:VERSION, from Cargo.toml)
#
# Then, e.g.: podman push IMAGE docker://registry.example/glance-cache-proxy:0.1.0
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
UID_GID=64064

bin=
while [[ ${1-} == --* ]]; do
    case $1 in
        --binary) bin=$2; shift 2 ;;
        *) echo "build-image: unknown option $1" >&2; exit 64 ;;
    esac
done
version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)
image=${1:-localhost/glance-cache-proxy:$version}
command -v buildah >/dev/null || { echo "build-image: buildah is needed (Debian: apt-get install buildah)" >&2; exit 1; }
if [[ -z $bin ]]; then
    scripts/build-deps.sh
    cargo build --release --locked --bin glance-cache-proxy
    bin=target/release/glance-cache-proxy
fi
[[ -x $bin ]] || { echo "build-image: no binary at $bin" >&2; exit 1; }

stage=$(mktemp -d /tmp/gcp-image.XXXXXX)
ctr=
cleanup() {
    [[ -z $ctr ]] || buildah rm "$ctr" >/dev/null 2>&1 || true
    rm -rf "$stage"
}
trap cleanup EXIT

# The root file system, all owned by root: the binary, its libraries at the paths ldd
# resolves them to (the loader looks there without an ld.so.cache), /etc, an empty /tmp.
root=$stage/root
mkdir -p "$root/usr/local/bin" "$root/etc/glance-cache-proxy" "$root/etc/ssl/certs" "$root/tmp"
chmod 1777 "$root/tmp"
install -m 0755 "$bin" "$root/usr/local/bin/glance-cache-proxy"
libs=$(ldd "$bin" | awk '$2 == "=>" && $3 ~ /^\// {print $3} $1 ~ /^\// {print $1}')
for lib in $libs; do
    mkdir -p "$root$(dirname "$lib")"
    install -m 0755 "$lib" "$root$lib"    # follows the symlink: the library itself
done
grep -q 'libcrypto' <<< "$libs" || { echo "build-image: $bin does not link libcrypto?" >&2; exit 1; }
install -m 0644 deploy/container/glance-cache-proxy.toml "$root/etc/glance-cache-proxy/"
if [[ -f /etc/ssl/certs/ca-certificates.crt ]]; then
    # For https:// upstreams without upstream.ca_file (rustls-native-certs reads this file).
    install -m 0644 /etc/ssl/certs/ca-certificates.crt "$root/etc/ssl/certs/"
fi
printf 'root:x:0:0:root:/root:/sbin/nologin\nglance-cache-proxy:x:%s:%s:glance-cache-proxy:/var/cache/glance-cache-proxy:/sbin/nologin\n' \
    "$UID_GID" "$UID_GID" > "$root/etc/passwd"
printf 'root:x:0:\nglance-cache-proxy:x:%s:\n' "$UID_GID" > "$root/etc/group"
printf 'passwd: files\ngroup: files\nhosts: files dns\n' > "$root/etc/nsswitch.conf"
chmod 0644 "$root/etc/passwd" "$root/etc/group" "$root/etc/nsswitch.conf"
# The cache directory, the volume: the proxy's user's, 0750.
mkdir -p "$stage/cache"
chmod 0750 "$stage/cache"

ctr=$(buildah from scratch)
buildah copy --quiet "$ctr" "$root/" / >/dev/null
buildah copy --quiet --chown "$UID_GID:$UID_GID" "$ctr" "$stage/cache" /var/cache/glance-cache-proxy >/dev/null
buildah config \
    --user "$UID_GID:$UID_GID" \
    --port 9393/tcp --port 9394/tcp \
    --volume /var/cache/glance-cache-proxy \
    --entrypoint '["/usr/local/bin/glance-cache-proxy"]' \
    --cmd '["--config", "/etc/glance-cache-proxy/glance-cache-proxy.toml"]' \
    --label org.opencontainers.image.title=glance-cache-proxy \
    --label "org.opencontainers.image.description=Caching reverse proxy for the OpenStack Image service (Glance)" \
    --label "org.opencontainers.image.version=$version" \
    --label org.opencontainers.image.licenses=Apache-2.0 \
    "$ctr"
buildah commit --quiet --rm "$ctr" "$image" >/dev/null
ctr=
echo "build-image: $image ($(du -sh "$root" | cut -f1) unpacked; from $bin)"
