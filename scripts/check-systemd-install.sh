#!/usr/bin/env bash
# Tests the systemd install as a new operator does it: the commands in the header of
# deploy/systemd/glance-cache-proxy.service, run as written (the binary: BINARY; systemctl
# is skipped, there is no systemd here), then the service started the way systemd starts the
# unit: its CacheDirectory= created for its User=/Group= with CacheDirectoryMode=, its ExecStart=
# run as User=/Group= (setpriv: no capabilities, no new privileges, the unit's UMask=). It must
# read the config at the documented path, owner and mode, answer /healthz on the metrics port,
# fill its cache directory as its own user, and exit 0 on SIGTERM. The counter-case first: the
# layout the unit had before (DynamicUser=yes, config root:root 0640, its directory 0755 as
# ConfigurationDirectory= left it) fails with exit 64 "cannot read config file ...: Permission
# denied"; and a user outside the group cannot read the config (it may hold a password).
# Runs as root in a private mount namespace with overlays on /etc, /usr/local and /var/cache:
# the host's files are not changed. Ports on 127.0.0.1; everything stops and is removed.
#
#   scripts/check-systemd-install.sh [BINARY]   (default target/debug/glance-cache-proxy)
set -euo pipefail
SELF=$(realpath "${BASH_SOURCE[0]}")
cd "$(dirname "$SELF")/.."
UNIT=deploy/systemd/glance-cache-proxy.service
CONF=/etc/glance-cache-proxy/glance-cache-proxy.toml
say() { echo "systemd install: $*"; }
fail() { echo "systemd install: FAILED: $*" >&2; exit 1; }

if [[ -z ${GCP_INSTALL_NS:-} ]]; then
    BIN=$(realpath "${1:-target/debug/glance-cache-proxy}")
    [[ -x $BIN ]] || fail "no binary at $BIN"
    if [[ $(id -u) != 0 ]]; then
        say "NOT TESTED: needs root (a private mount namespace over /etc, /usr/local, /var/cache)"
        exit 0
    fi
    work=$(mktemp -d /tmp/gcp-check-install.XXXXXX)
    trap 'rm -rf "$work"' EXIT
    rc=0
    GCP_INSTALL_NS=$work unshare --mount --propagation private "$SELF" "$BIN" || rc=$?
    exit "$rc"
fi

# In the private mount namespace from here on.
work=$GCP_INSTALL_NS BIN=$1 proxy_pid=
for dir in /etc /usr/local /var/cache; do
    n=$work/overlay$(tr / _ <<< "$dir")
    mkdir -p "$n/upper" "$n/work"
    mount -t overlay overlay -o "lowerdir=$dir,upperdir=$n/upper,workdir=$n/work" "$dir"
done
cleanup() {
    [[ -z $proxy_pid ]] || { kill "$proxy_pid" 2>/dev/null; wait "$proxy_pid" 2>/dev/null; }
    umount /etc /usr/local /var/cache 2>/dev/null || true
}
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
unit_key() { sed -n "s/^$1=//p" "$UNIT" | tail -1; }
[[ -z $(unit_key DynamicUser) ]] || fail "the unit still has DynamicUser="
user=$(unit_key User) group=$(unit_key Group) umask=$(unit_key UMask)
exec_start=$(unit_key ExecStart)
cache_dir=/var/cache/$(unit_key CacheDirectory) cache_mode=$(unit_key CacheDirectoryMode)
[[ $exec_start == "/usr/local/bin/glance-cache-proxy --config $CONF" ]] ||
    fail "ExecStart= is not the documented command: $exec_start"
rm -rf /etc/glance-cache-proxy "$cache_dir"
port=$(free_port) mport=$(free_port)
# The operator's edit: upstream.urls (nothing answers there: /healthz does not need Glance),
# and ports free on this machine; the file keeps its inode, owner and mode.
configure() {
    python3 - "$CONF" "$port" "$mport" <<'EOF'
import re, sys
path, port, mport = sys.argv[1:]
text = open(path).read()
text = re.sub(r'(?m)^listen = "127.0.0.1:9393"$', f'listen = "127.0.0.1:{port}"', text, count=1)
text = re.sub(r'(?m)^listen = "127.0.0.1:9394"$', f'listen = "127.0.0.1:{mport}"', text, count=1)
text = re.sub(r'(?m)^urls = .*$', 'urls = ["http://127.0.0.1:9/"]', text, count=1)
open(path, "w").write(text)
EOF
}
# As systemd starts the unit: as UID:GID (names or numbers), no capabilities, the unit's umask.
start_service() { # USER GROUP LOG
    setpriv --reuid="$1" --regid="$2" --init-groups --no-new-privs --inh-caps=-all \
        --bounding-set=-all -- sh -c "umask $umask && exec $exec_start" 2> "$3" &
    proxy_pid=$!
}
[[ $(setpriv --help) == *--init-groups* ]] || fail "setpriv lacks --init-groups"

# The counter-case: the install this unit documented before, with an unprivileged UID as
# DynamicUser= would allocate (no passwd entry, no supplementary group).
dynamic_uid=61234
install -m 0755 "$BIN" /usr/local/bin/glance-cache-proxy
install -d -m 0755 /etc/glance-cache-proxy
install -m 0640 config/glance-cache-proxy.toml /etc/glance-cache-proxy/
install -d -o "$dynamic_uid" -g "$dynamic_uid" -m 0750 "$cache_dir"
rc=0
setpriv --reuid=$dynamic_uid --regid=$dynamic_uid --clear-groups --no-new-privs -- \
    sh -c "exec $exec_start" 2> "$work/before.log" || rc=$?
grep -q "cannot read config file $CONF: Permission denied" "$work/before.log" ||
    fail "before: not the expected error: $(cat "$work/before.log")"
[[ $rc == 64 ]] || fail "before: exit $rc, expected 64"
say "the former install (DynamicUser=yes, config root:root 0640) fails as reported: exit 64, Permission denied"
rm -rf /etc/glance-cache-proxy "$cache_dir" /usr/local/bin/glance-cache-proxy

# The documented install, command for command (continued lines joined; systemctl skipped).
steps=$(sed -n '/^# Install/,/^#$/p' "$UNIT" | sed -n 's/^#   //p' | sed -e ':a' -e '/\\$/N; s/\\\n *//; ta' |
    grep -v '^(' | sed 's/ \{2,\}#.*$//')
[[ $(grep -c '' <<< "$steps") -ge 6 ]] || fail "no install steps found in the unit's header"
while IFS= read -r step; do
    [[ $step == systemctl* ]] && continue
    if [[ $step == *--check-config* ]]; then configure; fi   # the edit comes before the check
    step=${step//target\/release\/glance-cache-proxy/$BIN}
    say "+ $step"
    eval "$step" > "$work/step.log" 2>&1 || { cat "$work/step.log"; fail "step failed: $step"; }
done <<< "$steps"
getent passwd "$user" >/dev/null || fail "no user $user after the install steps"
[[ $(stat -c '%U:%G %a' "$CONF") == "root:$group 640" ]] ||
    fail "config is $(stat -c '%U:%G %a' "$CONF"), expected root:$group 640"
[[ $(stat -c '%U:%G %a' /etc/glance-cache-proxy) == "root:$group 750" ]] ||
    fail "/etc/glance-cache-proxy is $(stat -c '%U:%G %a' /etc/glance-cache-proxy)"
if setpriv --reuid=$dynamic_uid --regid=$dynamic_uid --clear-groups -- cat "$CONF" >/dev/null 2>&1; then
    fail "a user outside $group can read $CONF"
fi
say "config root:$group 0640 in a 0750 directory; other users cannot read it"

# systemd's part of the start: CacheDirectory= for User=/Group=, then ExecStart=.
install -d -o "$user" -g "$group" -m "$cache_mode" "$cache_dir"
start_service "$user" "$group" "$work/proxy.log"
for _ in $(seq 200); do
    [[ $(curl -s "http://127.0.0.1:$mport/healthz" 2>/dev/null) == ok ]] && break
    kill -0 "$proxy_pid" 2>/dev/null || break
    sleep 0.1
done
[[ $(curl -s "http://127.0.0.1:$mport/healthz" 2>/dev/null) == ok ]] ||
    { cat "$work/proxy.log"; fail "the service did not answer /healthz"; }
owner=$(stat -c %U "$cache_dir/images")
[[ $owner == "$user" ]] || fail "$cache_dir/images belongs to $owner"
say "started as $user (uid $(id -u "$user")): /healthz ok, cache directory $cache_dir filled as $user"
kill -TERM "$proxy_pid"
rc=0
wait "$proxy_pid" || rc=$?
proxy_pid=
[[ $rc == 0 ]] || { cat "$work/proxy.log"; fail "exit $rc after SIGTERM"; }
say "SIGTERM: exit 0"
say "OK"
