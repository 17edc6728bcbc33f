#!/usr/bin/env bash
# Tests the offline container image (scripts/build-image.sh) as the DaemonSet runs it: built
# with buildah from BINARY, checked for its settings (non-root user 64064, ports 9393/9394, the
# cache volume, entrypoint and command), then run with podman on the host's network (as the
# DaemonSet's hostNetwork) in front of a real Glance (scripts/glance-upstream/, noauth, its
# own cache off): /healthz and /readyz on the metrics port (the probes), a miss, a hit from
# the cache volume (checked on /metrics and byte for byte), then SIGTERM: exit 0. Last, the
# README's container block as written (its `podman run` publishing 127.0.0.1:9393 and :9394,
# which must be free, its checks and its stop). Everything on 127.0.0.1, bounded in time;
# containers, volumes, image tags, Glance and temp files are removed.
#
# podman runs with the runc runtime when crun refuses (crun 1.8 cannot set up a container on a
# host with cgroups v1 and v2 mounted side by side, "hybrid mode", like this project's VMs), and
# with explicit --ulimit values: podman's defaults (nofile 1048576, nproc 4194304) are above
# the hard limits here and raising them needs CAP_SYS_RESOURCE, which this sandbox withholds.
# Where podman cannot run a container at all, the script says what refused and runs the
# image's root file system instead (buildah mount, chroot as 64064 in a private mount
# namespace): that tests the image's content (libraries, config, user, volume ownership) but
# not the container runtime's set-up; IMAGE_RUN=chroot forces that path.
# Without buildah (and no root to install it) it says so and exits 0: the image is untested.
# Run as root (CI does): the chroot path and installing the tools need it.
#
#   scripts/check-image.sh [BINARY]   (default target/debug/glance-cache-proxy)
#   IMAGE=NAME scripts/check-image.sh (test an image built elsewhere, e.g. from the Containerfile:
#                                      the same checks, nothing built; the image is kept)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
export GLANCE_VENV=${GLANCE_VENV:-$HOME/.cache/glance-cache-proxy/glance-venv}
LAUNCHER=scripts/glance-upstream/glance-upstream.sh
BIN=${1:-target/debug/glance-cache-proxy}
IMAGE_RUN=${IMAGE_RUN:-podman}
UID_GID=64064
say() { echo "image: $*"; }
fail() { echo "image: FAILED: $*" >&2; exit 1; }

if ! command -v buildah >/dev/null || ! command -v podman >/dev/null || ! command -v runc >/dev/null; then
    if [[ $(id -u) == 0 ]] && command -v apt-get >/dev/null; then
        apt-get update -q >/dev/null
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
            buildah podman runc >/dev/null
    fi
fi
if ! command -v buildah >/dev/null; then
    say "NOT BUILT: no buildah (Debian: apt-get install buildah, as root); the image is untested"
    exit 0
fi
if ! buildah info >/dev/null 2>&1; then
    say "NOT BUILT: buildah does not work here: $(buildah info 2>&1 | tail -1)"
    exit 0
fi

work=$(mktemp -d /tmp/gcp-check-image.XXXXXX)
tag=${IMAGE:-localhost/glance-cache-proxy-check:$$}
name=gcp-check-$$
ctr= rootfs_ctr= proxy_pid= gdata=$work/glance
# The README's container command (section "Container image"): what it names, made by the
# last part of this script and removed by cleanup.
README_IMAGE=registry.example/glance-cache-proxy:0.1.0 README_NAME=glance-cache-proxy
README_VOLUME=glance-cache-proxy-cache
readme_run= forward_pid=
cleanup() {
    set +e
    [[ -z $forward_pid ]] || { kill "$forward_pid" 2>/dev/null; wait "$forward_pid" 2>/dev/null; }
    if [[ -n $readme_run ]]; then
        podman rm -f -t 0 "$README_NAME" >/dev/null 2>&1
        podman volume rm -f "$README_VOLUME" >/dev/null 2>&1
        podman untag "$tag" "$README_IMAGE" >/dev/null 2>&1
    fi
    [[ -z $proxy_pid ]] || { kill "$proxy_pid" 2>/dev/null; wait "$proxy_pid" 2>/dev/null; }
    [[ -z $ctr ]] || podman rm -f -t 0 "$ctr" >/dev/null 2>&1
    podman volume rm -f "$name" >/dev/null 2>&1
    if [[ -n $rootfs_ctr ]]; then
        umount -R "$work/mnt" 2>/dev/null
        buildah umount "$rootfs_ctr" >/dev/null 2>&1
        buildah rm "$rootfs_ctr" >/dev/null 2>&1
    fi
    [[ -n ${IMAGE:-} ]] || buildah rmi -f "$tag" >/dev/null 2>&1
    GLANCE_CACHE=0 "$LAUNCHER" stop "$gdata" >/dev/null 2>&1
    rm -rf "$work"
}
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

[[ -n ${IMAGE:-} ]] || scripts/build-image.sh --binary "$BIN" "$tag"
# The image's settings, as the Containerfile sets them.
config=$(podman image inspect "$tag" --format \
    '{{.Config.User}}|{{.Config.Entrypoint}}|{{.Config.Cmd}}|{{.Config.ExposedPorts}}|{{.Config.Volumes}}')
want="$UID_GID:$UID_GID|[/usr/local/bin/glance-cache-proxy]|[--config /etc/glance-cache-proxy/glance-cache-proxy.toml]|map[9393/tcp:{} 9394/tcp:{}]|map[/var/cache/glance-cache-proxy:{}]"
[[ $config == "$want" ]] || fail "image settings: $config, expected $want"
say "settings OK (user $UID_GID, ports 9393/9394, volume /var/cache/glance-cache-proxy)"

# A real Glance with one image of 3 MiB of random bytes.
"$LAUNCHER" install >/dev/null
mkdir -p "$gdata"
glance=$(GLANCE_CACHE=0 "$LAUNCHER" start "$(free_port)" "$gdata" | awk '{print $2}')
head -c $((3 << 20)) /dev/urandom > "$work/img"
id=$(curl -sf -X POST -H 'X-Auth-Token: noauth' -H 'Content-Type: application/json' \
    -d '{"name":"image-check","disk_format":"raw","container_format":"bare"}' "$glance/v2/images" |
    python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])')
curl -sf -o /dev/null -H 'X-Auth-Token: noauth' -H 'Content-Type: application/octet-stream' \
    -T "$work/img" "$glance/v2/images/$id/file"
size=$(stat -c %s "$work/img")

port=$(free_port) mport=$(free_port)
args=(--config /etc/glance-cache-proxy/glance-cache-proxy.toml --listen "127.0.0.1:$port"
      --metrics-listen "127.0.0.1:$mport" --upstream "$glance")
# In a container: the podman runtimes in turn; the refusals are kept for the report.
run_podman() {
    local rt out
    for rt in crun runc; do
        command -v "$rt" >/dev/null || continue
        if out=$(timeout 120 podman --runtime "$rt" run -d --name "$name" --network host \
                --ulimit nofile=4096:4096 --ulimit nproc=4096:4096 \
                -v "$name:/var/cache/glance-cache-proxy" "$tag" "${args[@]}" 2>&1); then
            ctr=$name
            say "running in podman (runtime $rt, host network, named volume $name)"
            return 0
        fi
        say "podman with $rt refused: $(tail -1 <<< "$out")"
        podman rm -f -t 0 "$name" >/dev/null 2>&1 || true
    done
    return 1
}
# The image's root file system as 64064 in a private mount namespace (no container runtime).
run_chroot() {
    rootfs_ctr=$(buildah from "$tag")
    local root; root=$(buildah mount "$rootfs_ctr")
    mkdir -p "$root/proc" "$root/dev" "$work/mnt"
    cp /etc/hosts /etc/resolv.conf "$root/etc/" 2>/dev/null || true
    unshare --mount --propagation private sh -c '
        mount -t proc proc "$1/proc" && mount --rbind /dev "$1/dev" && shift &&
        exec chroot --userspec="$0:$0" "$@"' "$UID_GID" "$root" "$root" \
        /usr/local/bin/glance-cache-proxy "${args[@]}" 2> "$work/proxy.log" &
    proxy_pid=$!
    say "running the image's root file system as $UID_GID (chroot; the container runtime is untested)"
}
if [[ $IMAGE_RUN == podman ]] && run_podman; then :; else run_chroot; fi
logs() { if [[ -n $ctr ]]; then podman logs "$ctr" 2>&1; else cat "$work/proxy.log"; fi; }
running() {
    if [[ -n $ctr ]]; then [[ $(podman inspect -f '{{.State.Running}}' "$ctr") == true ]]
    else kill -0 "$proxy_pid" 2>/dev/null; fi
}

metrics=http://127.0.0.1:$mport proxy=http://127.0.0.1:$port
for _ in $(seq 300); do
    [[ $(curl -s "$metrics/healthz" 2>/dev/null) == ok ]] && break
    running || break
    sleep 0.1
done
[[ $(curl -s "$metrics/healthz") == ok ]] || { logs | tail -20; fail "/healthz did not answer ok"; }
curl -sf -o /dev/null "$metrics/readyz" || { logs | tail -20; fail "/readyz is not 200"; }
say "/healthz ok, /readyz 200 (the DaemonSet's probes)"

metric() { curl -sf "$metrics/metrics" | awk -v m="$1" '$1 == m {print $2}'; }
want_sum=$(sha256sum < "$work/img")
got=$(curl -sf -H 'X-Auth-Token: noauth' "$proxy/v2/images/$id/file" | sha256sum)
[[ $got == "$want_sum" ]] || fail "miss: the bytes differ from the image's"
for _ in $(seq 100); do
    [[ $(metric 'glance_cache_proxy_fills_total{result="committed"}') == 1 ]] && break
    sleep 0.1
done
[[ $(metric 'glance_cache_proxy_image_requests_total{outcome="miss",reason=""}') == 1 ]] ||
    fail "the first download was not a miss"
[[ $(metric 'glance_cache_proxy_fills_total{result="committed"}') == 1 ]] ||
    { logs | tail -20; fail "the miss was not committed to the cache volume"; }
say "miss: $size bytes, verified and committed to the cache volume"
got=$(curl -sf -H 'X-Auth-Token: noauth' "$proxy/v2/images/$id/file" | sha256sum)
[[ $got == "$want_sum" ]] || fail "hit: the bytes differ from the image's"
[[ $(metric 'glance_cache_proxy_image_requests_total{outcome="hit",reason=""}') == 1 ]] ||
    fail "the second download was not a hit"
[[ $(metric 'glance_cache_proxy_served_bytes_total{source="cache"}') == "$size" ]] ||
    fail "the hit was not served from the cache"
say "hit: $size bytes from the cache"

# SIGTERM (podman stop, a pod's termination): drain, exit 0.
if [[ -n $ctr ]]; then
    podman stop -t 30 "$ctr" >/dev/null
    rc=$(podman inspect "$ctr" --format '{{.State.ExitCode}}')
else
    kill -TERM "$proxy_pid"
    rc=0
    wait "$proxy_pid" || rc=$?
    proxy_pid=
fi
[[ $rc == 0 ]] || { logs | tail -20; fail "exit status $rc after SIGTERM"; }
say "SIGTERM: exit 0"

# The README's container block, run as written: its `podman run` (ports 9393 and 9394
# published on 127.0.0.1, the rlimits, the named volume), then its checks and its stop. The
# image is the one tested above, tagged with the README's name; inside the container,
# glance.example is 127.0.0.1 (a hosts file given to podman through CONTAINERS_CONF) where
# scripts/netns-forward.py passes connections on to the Glance on the host's loopback.
if [[ -n $ctr ]]; then
    block=$(awk '/<!-- scripts\/check-image.sh runs this block -->/ {f = 1; next}
                 f && /^```sh/ {g = 1; next} g && /^```/ {exit} g' README.md)
    # One command per line, continuation lines joined; comments after the command dropped.
    mapfile -t cmds < <(sed -e ':a' -e '/\\$/N; s/\\\n//; ta' <<< "$block" | sed 's/[[:space:]]*#.*$//' | grep .)
    [[ ${cmds[0]:-} == "podman run "* ]] || fail "README: no podman run block after the marker"
    for what in "container $README_NAME" "volume $README_VOLUME" "image $README_IMAGE"; do
        ! podman ${what%% *} exists "${what#* }" ||
            fail "README command: a $what exists already here; remove it to run this check"
    done
    for p in 9393 9394; do
        ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null ||
            fail "README command: 127.0.0.1:$p is in use here (another proxy?); it publishes 9393 and 9394"
    done
    readme_run=1
    podman tag "$tag" "$README_IMAGE"
    printf '127.0.0.1 localhost\n127.0.0.1 glance.example\n' > "$work/hosts"
    printf '[containers]\nbase_hosts_file = "%s"\n' "$work/hosts" > "$work/containers.conf"
    say "README: ${cmds[0]}"
    CONTAINERS_CONF=$work/containers.conf timeout 120 bash -c "${cmds[0]}" >/dev/null ||
        fail "the README's podman run failed"
    pid=$(podman inspect -f '{{.State.Pid}}' "$README_NAME")
    python3 scripts/netns-forward.py "$pid" 9292 "${glance##*:}" > "$work/forward.log" 2>&1 &
    forward_pid=$!
    for _ in $(seq 100); do grep -q ready "$work/forward.log" && break; sleep 0.1; done
    grep -q ready "$work/forward.log" || fail "netns-forward: $(cat "$work/forward.log")"
    for _ in $(seq 300); do
        [[ $(curl -s http://127.0.0.1:9394/readyz 2>/dev/null) == ready ]] && break
        sleep 0.1
    done
    for cmd in "${cmds[@]:1}"; do
        out=$(timeout 60 bash -c "$cmd" 2>&1) || { podman logs "$README_NAME" 2>&1 | tail; fail "README: \`$cmd\` failed: $out"; }
        case $cmd in
            *9394/healthz*) [[ $out == ok ]] || fail "README: $cmd said $out" ;;
            *9394/readyz*) [[ $out == ready ]] || fail "README: $cmd said $out" ;;
            *9393/versions*) grep -q '"href": *"http://127.0.0.1:9393/v2/' <<< "$out" ||
                fail "README: $cmd said $out" ;;
        esac
        say "README: $cmd: OK"
    done
    ! podman container exists "$README_NAME" || fail "README: the container is still there after its stop"
fi
say "OK"
