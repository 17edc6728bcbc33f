#!/usr/bin/env bash
# glance-upstream.sh - install and run a real OpenStack Glance API server for
# glance-cache-proxy's end-to-end tests. The project's own copy of the shared
# kit (shared/glance-upstream/), so that tests, CI and scripts/run.sh work on a
# fresh machine. Differences from the kit: the default venv is
# $HOME/.cache/glance-cache-proxy/glance-venv; the default install also has
# python-openstackclient and pytest; GLANCE_BIND_ADDR; stop-glance and
# stop-keystone (outages of one service).
#
# No Keystone (every request is an admin of one fixed project), SQLite
# database, `file` store, image cache + /v2/cache API, glance-direct import,
# bound to 127.0.0.1 only. With GLANCE_AUTH=keystone, also a real Keystone
# (SQLite, fernet tokens) and Glance's keystone paste flavor with
# keystonemiddleware: real tokens, projects and roles.
#
#   glance-upstream.sh install                 # venv: glance, glanceclient, openstacksdk, gunicorn,
#                                              #   openstackclient, pytest (+ keystone if GLANCE_AUTH=keystone)
#   glance-upstream.sh start [PORT] [DATADIR]  # prints "PID URL" once the API answers
#   glance-upstream.sh stop DATADIR            # stops Glance (and its Keystone, if any)
#   glance-upstream.sh stop-glance DATADIR     # stops Glance only (its Keystone keeps running)
#   glance-upstream.sh stop-keystone DATADIR   # stops Keystone only (an outage of the identity
#                                              #   service; `stop` still stops Glance later)
#   glance-upstream.sh status DATADIR          # "PID URL" (+ "keystone PID URL")
#
# Environment:
#   GLANCE_VENV           venv directory (default $HOME/.cache/glance-cache-proxy/glance-venv)
#   GLANCE_PYTHON         interpreter used to create the venv (default python3; Glance 33 needs >= 3.11)
#   GLANCE_START_TIMEOUT  seconds to wait for the API to answer (default 90)
#   GLANCE_CACHE          1 (default): image cache middleware + /v2/cache API; 0: none
#   GLANCE_WORKERS, GLANCE_THREADS  gunicorn processes / threads each (default 1 / 8)
#   GLANCE_DEBUG          true: debug logging in DATADIR/log/glance-api.log
#   GLANCE_PUBLIC_ENDPOINT  if set, used for the hrefs of GET / (version discovery)
#   GLANCE_NOAUTH_PROJECT, GLANCE_NOAUTH_USER  identity given to requests
#                         (default noauth-project / noauth-user, roles admin,member,reader)
#   GLANCE_AUTH           noauth (default) or keystone: `install` adds keystone
#                         and keystonemiddleware; `start` also runs Keystone
#                         (data in DATADIR/keystone)
#   KEYSTONE_PORT         Keystone's port (default PORT+1000)
#   GLANCE_TOKEN_CACHE_TIME  keystonemiddleware's token_cache_time (default 300 s;
#                         -1: validate every request, so a revoked token is refused at once)
#   GLANCE_BIND_ADDR      address Glance binds (default 127.0.0.1; bench/fleet.sh
#                         uses 0.0.0.0 inside its own network namespace)
#   GLANCE_CATALOG_URL    URL of the image endpoints in Keystone's catalog
#                         (default Glance's own URL; e.g. a proxy's)
#
# Glance 33 has no standalone server any more (`glance-api` only prints an
# error): the WSGI app glance.wsgi.api:application is served by gunicorn.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
GLANCE_VENV=${GLANCE_VENV:-$HOME/.cache/glance-cache-proxy/glance-venv}
GLANCE_PYTHON=${GLANCE_PYTHON:-python3}
GLANCE_START_TIMEOUT=${GLANCE_START_TIMEOUT:-90}
GLANCE_CACHE=${GLANCE_CACHE:-1}
GLANCE_WORKERS=${GLANCE_WORKERS:-1}
GLANCE_THREADS=${GLANCE_THREADS:-8}
GLANCE_AUTH=${GLANCE_AUTH:-noauth}
# Top-level pins; constraints.txt (next to this script, optional) pins the rest.
# python-openstackclient (the `openstack` CLI) and pytest are for the project's
# end-to-end tests (tests/e2e/), in the default install too.
PKGS=(glance==33.0.0 python-glanceclient==4.13.0 openstacksdk==4.22.0 gunicorn==27.0.1
      python-openstackclient==10.5.0 pytest==8.4.2)
# Added on top for GLANCE_AUTH=keystone (same venv: pip's resolver finds no
# conflict; keystonemiddleware is already a dependency of glance).
KEYSTONE_PKGS=(keystone==30.0.0 keystonemiddleware==13.0.1 python-openstackclient==10.5.0)

die() { echo "glance-upstream: $*" >&2; exit 1; }
log() { echo "glance-upstream: $*" >&2; }

case $GLANCE_AUTH in
    noauth|keystone) ;;
    *) die "GLANCE_AUTH must be noauth or keystone, not: $GLANCE_AUTH" ;;
esac

cmd_install() {
    local constraints=() stamp_want kstamp_want="" pkgs=("${PKGS[@]}")
    [[ -f $HERE/constraints.txt ]] && constraints=(-c "$HERE/constraints.txt")
    stamp_want=$(printf '%s\n' "${PKGS[@]}"; cat "$HERE/constraints.txt" 2>/dev/null || true)
    if [[ $GLANCE_AUTH == keystone ]]; then
        # A second stamp for the keystone extras, so that the default mode's
        # stamp (and its no-op check) stays what it was.
        pkgs+=("${KEYSTONE_PKGS[@]}")
        kstamp_want=$(printf '%s\n' "${KEYSTONE_PKGS[@]}"; cat "$HERE/constraints.txt" 2>/dev/null || true)
    fi
    if [[ -x $GLANCE_VENV/bin/gunicorn && -f $GLANCE_VENV/.glance-upstream-stamp ]] &&
       [[ $(cat "$GLANCE_VENV/.glance-upstream-stamp") == "$stamp_want" ]] &&
       { [[ $GLANCE_AUTH != keystone ]] ||
         [[ -x $GLANCE_VENV/bin/keystone-manage && -f $GLANCE_VENV/.glance-upstream-stamp-keystone &&
            $(cat "$GLANCE_VENV/.glance-upstream-stamp-keystone") == "$kstamp_want" ]]; }; then
        log "venv up to date: $GLANCE_VENV"
        return 0
    fi
    "$GLANCE_PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' ||
        die "$GLANCE_PYTHON is older than 3.11 (Glance 33 needs >= 3.11); set GLANCE_PYTHON"
    log "installing ${pkgs[*]} into $GLANCE_VENV"
    mkdir -p "$(dirname "$GLANCE_VENV")"
    [[ -x $GLANCE_VENV/bin/python ]] || "$GLANCE_PYTHON" -m venv "$GLANCE_VENV" ||
        die "venv creation failed (Debian's python3 needs: apt-get install python3-venv)"
    "$GLANCE_VENV/bin/python" -m pip install --quiet --disable-pip-version-check \
        "${constraints[@]}" "${pkgs[@]}"
    printf '%s\n' "$stamp_want" > "$GLANCE_VENV/.glance-upstream-stamp"
    [[ -z $kstamp_want ]] ||
        printf '%s\n' "$kstamp_want" > "$GLANCE_VENV/.glance-upstream-stamp-keystone"
    log "installed: $("$GLANCE_VENV/bin/python" -m pip show glance | sed -n 's/^Version: /glance /p')"
}

# PID of the gunicorn master running for DATADIR, or nothing.
running_pid() {
    local pidfile=$1/run/gunicorn.pid pid
    [[ -f $pidfile ]] || return 0
    pid=$(cat "$pidfile" 2>/dev/null || true)
    if [[ -n $pid ]] && kill -0 "$pid" 2>/dev/null &&
       grep -q gunicorn "/proc/$pid/cmdline" 2>/dev/null; then
        echo "$pid"
    fi
}

# write_config PORT DATADIR [KEYSTONE_URL]: Glance's config files in DATADIR;
# with KEYSTONE_URL (GLANCE_AUTH=keystone), keystonemiddleware against it.
write_config() {
    local port=$1 dir=$2 kurl=${3:-} flavor="" cache_filter="" cache_conf=""
    local auth_filters=noauth auth_sections auth_conf=""
    mkdir -p "$dir"/{images,staging,tasks,cache,locks,log,run}
    if [[ $GLANCE_CACHE == 1 ]]; then
        # Image cache middleware + /v2/cache API. The centralized_db cache
        # driver (the default) needs worker_self_reference_url.
        flavor=caching cache_filter=" cache"
        cache_conf="image_cache_dir = $dir/cache
image_cache_driver = centralized_db
worker_self_reference_url = http://127.0.0.1:$port"
    fi
    auth_sections="[filter:noauth]
paste.filter_factory = glance_noauth:filter_factory
user_id = ${GLANCE_NOAUTH_USER:-noauth-user}
project_id = ${GLANCE_NOAUTH_PROJECT:-noauth-project}"
    if [[ -n $kurl ]]; then
        # Glance's own `keystone` / `keystone+caching` flavor: keystonemiddleware
        # (authtoken) validates X-Auth-Token against Keystone and sets the
        # identity headers (dropping any the client sent); `context` builds
        # the request context, and answers 401 for a missing or bad token
        # (delay_auth_decision, as in Glance's stock paste file). `sqlite`
        # (glance_sqlite.py) only loads the SQLite hook of glance_noauth.py;
        # the noauth filter itself is not in this pipeline.
        flavor=keystone${flavor:++$flavor}
        auth_filters="sqlite authtoken"
        auth_sections="[filter:sqlite]
paste.filter_factory = glance_sqlite:filter_factory

[filter:authtoken]
paste.filter_factory = keystonemiddleware.auth_token:filter_factory
delay_auth_decision = true"
        # No memcached_servers: keystonemiddleware caches validated tokens in
        # the worker's memory (token_cache_time, 300 s unless GLANCE_TOKEN_CACHE_TIME).
        auth_conf="

[keystone_authtoken]
www_authenticate_uri = $kurl
auth_url = $kurl
auth_type = password
user_domain_name = Default
project_domain_name = Default
project_name = service
username = glance
password = $("$GLANCE_VENV/bin/python" "$HERE/keystone_setup.py" password glance)
region_name = RegionOne
interface = public
token_cache_time = ${GLANCE_TOKEN_CACHE_TIME:-300}"
        cat > "$dir/glance_sqlite.py" <<'EOF'
# Paste filter that changes nothing: importing glance_noauth registers its
# SQLite "BEGIN IMMEDIATE" hook (see there); its noauth filter is unused.
import glance_noauth  # noqa: F401


def filter_factory(global_conf, **conf):
    return lambda app: app
EOF
    fi
    # Paste filter, loaded from DATADIR (gunicorn --pythonpath):
    # 1. Stand-in for keystonemiddleware: marks each request as authenticated
    #    for a fixed user/project with roles admin,member,reader (a request may
    #    set X-User-Id, X-Project-Id, X-Roles itself). Glance's own `context`
    #    filter then builds the request context from these headers, as behind
    #    Keystone. (The stock "unauthenticated-context" filter leaves
    #    project_id empty, which breaks image import: tasks.owner is NOT NULL.)
    # 2. SQLite under concurrent requests: oslo.db opens transactions with a
    #    deferred BEGIN, so one that reads and then writes fails at once with
    #    "database is locked" while another writes. BEGIN IMMEDIATE instead
    #    waits (busy timeout, ?timeout= in [database] connection) for the lock.
    cat > "$dir/glance_noauth.py" <<'EOF'
import sqlalchemy
import sqlalchemy.engine


@sqlalchemy.event.listens_for(sqlalchemy.engine.Engine, "begin")
def _begin_immediate(conn):
    # Runs before oslo.db's own "begin" listener, which then sees
    # in_transaction and emits nothing.
    if conn.dialect.name == "sqlite" and "in_transaction" not in conn.info:
        conn.exec_driver_sql("BEGIN IMMEDIATE")
        conn.info["in_transaction"] = True


def filter_factory(global_conf, **conf):
    defaults = {
        'HTTP_X_USER_ID': conf.get('user_id', 'noauth-user'),
        'HTTP_X_PROJECT_ID': conf.get('project_id', 'noauth-project'),
        'HTTP_X_ROLES': conf.get('roles', 'admin,member,reader'),
    }

    def make_filter(app):
        def noauth(environ, start_response):
            environ['HTTP_X_IDENTITY_STATUS'] = 'Confirmed'
            for key, value in defaults.items():
                environ.setdefault(key, value)
            return app(environ, start_response)
        return noauth
    return make_filter
EOF
    # Paste pipeline: the stock filters, with noauth + context in place of
    # authtoken + context (GLANCE_AUTH=keystone: sqlite authtoken context),
    # plus the cache filter when enabled.
    cat > "$dir/glance-api-paste.ini" <<EOF
[composite:glance-api${flavor:+-$flavor}]
paste.composite_factory = glance.api:root_app_factory
/: api
/healthcheck: healthcheck

[pipeline:api]
pipeline = cors http_proxy_to_wsgi versionnegotiation osprofiler ${auth_filters} context${cache_filter} rootapp

[composite:rootapp]
paste.composite_factory = glance.api:root_app_factory
/: apiversions
/v2: apiv2app

[app:apiversions]
paste.app_factory = glance.api.versions:create_resource

[app:apiv2app]
paste.app_factory = glance.api.v2.router:API.factory

[app:healthcheck]
paste.app_factory = oslo_middleware:Healthcheck.app_factory
backends = disable_by_file
disable_by_file_path = $dir/run/healthcheck_disable

${auth_sections}

[filter:context]
paste.filter_factory = glance.api.middleware.context:ContextMiddleware.factory

[filter:versionnegotiation]
paste.filter_factory = glance.api.middleware.version_negotiation:VersionNegotiationFilter.factory

[filter:cache]
paste.filter_factory = glance.api.middleware.cache:CacheFilter.factory

[filter:osprofiler]
paste.filter_factory = osprofiler.web:WsgiMiddleware.factory

[filter:cors]
paste.filter_factory = oslo_middleware.cors:filter_factory
oslo_config_project = glance
oslo_config_program = glance-api

[filter:http_proxy_to_wsgi]
paste.filter_factory = oslo_middleware:HTTPProxyToWSGI.factory
EOF
    cat > "$dir/glance-api.conf" <<EOF
# Generated by glance-upstream.sh
[DEFAULT]
debug = ${GLANCE_DEBUG:-false}
log_file = $dir/log/glance-api.log
enabled_backends = fs:file
enabled_import_methods = [glance-direct,web-download,copy-image]
$cache_conf
${GLANCE_PUBLIC_ENDPOINT:+public_endpoint = $GLANCE_PUBLIC_ENDPOINT}

[database]
connection = sqlite:///$dir/glance.sqlite?timeout=60

[glance_store]
default_backend = fs

[fs]
filesystem_store_datadir = $dir/images

[os_glance_staging_store]
filesystem_store_datadir = $dir/staging

[os_glance_tasks_store]
filesystem_store_datadir = $dir/tasks

[oslo_concurrency]
lock_path = $dir/locks

[oslo_middleware]
# honour X-Forwarded-Proto/-Host and Forwarded from a proxy in front
enable_proxy_headers_parsing = true

[paste_deploy]
flavor = $flavor
config_file = $dir/glance-api-paste.ini${auth_conf}
EOF
    cat > "$dir/glance-manage.conf" <<EOF
[DEFAULT]
log_file = $dir/log/glance-manage.log
[database]
connection = sqlite:///$dir/glance.sqlite
EOF
}

# wait_http URL BGPID [TOKEN]: wait until GET URL answers 200 (sending
# X-Auth-Token TOKEN if given); fail if process BGPID exits or after
# GLANCE_START_TIMEOUT seconds.
wait_http() {
    "$GLANCE_VENV/bin/python" - "$1" "$2" "$GLANCE_START_TIMEOUT" "${3:-}" <<'EOF'
import os, sys, time, urllib.request
url, bgpid, timeout, token = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), sys.argv[4]
opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
deadline = time.monotonic() + timeout
while time.monotonic() < deadline:
    try:
        os.kill(bgpid, 0)
    except OSError:
        sys.exit(1)
    try:
        req = urllib.request.Request(url, headers={"X-Auth-Token": token} if token else {})
        with opener.open(req, timeout=5) as r:
            if r.status == 200:
                sys.exit(0)
    except Exception:
        pass
    time.sleep(0.1)
sys.exit(1)
EOF
}

write_keystone_config() {
    local kdir=$1
    # keystone.server.configure() parses sys.argv with oslo.config, which
    # rejects gunicorn's command line ("unrecognized arguments"): the app is
    # loaded through this wrapper, which hides it.
    cat > "$kdir/keystone_wsgi.py" <<'EOF'
import sys

sys.argv = sys.argv[:1]
from keystone.wsgi.api import application  # noqa: E402,F401
EOF
    cat > "$kdir/keystone.conf" <<EOF
# Generated by glance-upstream.sh (GLANCE_AUTH=keystone)
[DEFAULT]
debug = ${GLANCE_DEBUG:-false}
log_file = $kdir/log/keystone.log

[database]
connection = sqlite:///$kdir/keystone.sqlite?timeout=60

[token]
provider = fernet

[fernet_tokens]
key_repository = $kdir/fernet-keys

[credential]
key_repository = $kdir/credential-keys

[identity]
# Test-only: bcrypt's minimum cost (about 1 ms a check). The default (12)
# costs about 0.23 s of CPU for every password check, i.e. every token issued.
password_hash_rounds = 4
# bcrypt uses 72 bytes at most; with the default (4096) every password check
# logs a "Truncating password" warning.
max_password_length = 72
EOF
}

# start_keystone PORT KDIR CATALOG_URL: start (or reuse) the Keystone of KDIR
# on 127.0.0.1:PORT, then provision it (keystone_setup.py). Sets KURL and
# KTOKEN (an admin token, for Glance's readiness check).
start_keystone() {
    local kport=$1 kdir=$2 catalog_url=$3 kpid url
    if ! [[ $kport =~ ^[0-9]+$ ]] || (( kport > 65535 )); then die "bad KEYSTONE_PORT: $kport"; fi
    url=http://127.0.0.1:$kport
    mkdir -p "$kdir"/{log,run}
    kpid=$(running_pid "$kdir")
    if [[ -n $kpid ]]; then
        grep -q "127.0.0.1:$kport\$" "$kdir/run/url" 2>/dev/null ||
            die "Keystone already running for $kdir (pid $kpid) on another port: $(cat "$kdir/run/url")"
        log "Keystone already running: pid $kpid $url"
    else
        if (exec 3<>"/dev/tcp/127.0.0.1/$kport") 2>/dev/null; then
            die "127.0.0.1:$kport (Keystone) is already in use"
        fi
        write_keystone_config "$kdir"
        local manage=(env PYTHONWARNINGS=ignore "$GLANCE_VENV/bin/keystone-manage"
                      --config-file "$kdir/keystone.conf")
        local owner=(--keystone-user "$(id -un)" --keystone-group "$(id -gn)")
        local bootstrap=1 admin_pw
        # bootstrap is idempotent, but costs 2 s: skip it when this database
        # was already bootstrapped for this URL.
        [[ -f $kdir/keystone.sqlite && $(cat "$kdir/run/bootstrapped" 2>/dev/null) == "$url" ]] &&
            bootstrap=""
        admin_pw=$("$GLANCE_VENV/bin/python" "$HERE/keystone_setup.py" password admin)
        (
            # first start: fernet + credential key repositories, in parallel
            # with the schema (db_sync, idempotent)
            pids=()
            [[ -f $kdir/fernet-keys/0 ]] || { "${manage[@]}" fernet_setup "${owner[@]}" & pids+=($!); }
            [[ -f $kdir/credential-keys/0 ]] || { "${manage[@]}" credential_setup "${owner[@]}" & pids+=($!); }
            "${manage[@]}" db_sync || exit 1
            for p in "${pids[@]}"; do wait "$p" || exit 1; done
            # admin user/project (role admin), roles admin/manager/member/
            # reader/service, region RegionOne, identity endpoints
            [[ -z $bootstrap ]] || "${manage[@]}" bootstrap --bootstrap-password "$admin_pw" \
                --bootstrap-admin-url "$url/v3" --bootstrap-internal-url "$url/v3" \
                --bootstrap-public-url "$url/v3" --bootstrap-region-id RegionOne || exit 1
        ) >> "$kdir/log/keystone-manage.out" 2>&1 ||
            { tail -n 20 "$kdir/log/keystone-manage.out" >&2; die "keystone-manage failed (logs in $kdir/log)"; }
        echo "$url" > "$kdir/run/bootstrapped"
        rm -f "$kdir/run/gunicorn.pid"
        echo "$url" > "$kdir/run/url"
        OS_KEYSTONE_CONFIG_DIR=$kdir PYTHONWARNINGS=ignore setsid -w "$GLANCE_VENV/bin/gunicorn" \
            --bind "127.0.0.1:$kport" --worker-class gthread --workers 1 --threads 8 \
            --timeout 0 --graceful-timeout 10 --no-control-socket --pythonpath "$kdir" \
            --pid "$kdir/run/gunicorn.pid" --error-logfile "$kdir/log/gunicorn.log" \
            --access-logfile "$kdir/log/access.log" \
            --access-logformat '%(h)s "%(r)s" %(s)s %(B)s %(M)sms' \
            keystone_wsgi:application < /dev/null >> "$kdir/log/gunicorn.out" 2>&1 &
        if ! wait_http "$url/v3" "$!"; then
            tail -n 25 "$kdir/log/gunicorn.log" "$kdir/log/keystone.log" >&2 || true
            stop_gunicorn "$kdir" keystone >/dev/null 2>&1 || true
            die "Keystone did not start on 127.0.0.1:$kport (logs in $kdir/log)"
        fi
    fi
    if ! KTOKEN=$("$GLANCE_VENV/bin/python" "$HERE/keystone_setup.py" setup "$url" "$catalog_url" "$kdir"); then
        stop_gunicorn "$kdir" keystone >/dev/null 2>&1 || true
        die "Keystone provisioning failed (logs in $kdir/log)"
    fi
    KURL=$url
}

cmd_start() {
    local port=${1:-9292} dir=${2:-${TMPDIR:-/tmp}/glance-upstream-${1:-9292}} pid auth
    [[ $port =~ ^[0-9]+$ ]] || die "bad port: $port"
    mkdir -p "$dir" && dir=$(cd "$dir" && pwd)
    pid=$(running_pid "$dir")
    if [[ -n $pid ]]; then
        grep -q "127.0.0.1:$port\$" "$dir/run/url" 2>/dev/null ||
            die "already running for $dir (pid $pid) on another port: $(cat "$dir/run/url")"
        auth=$(cat "$dir/run/auth" 2>/dev/null || echo noauth)
        [[ $auth == "$GLANCE_AUTH" ]] ||
            die "already running for $dir (pid $pid) with GLANCE_AUTH=$auth"
        [[ $auth != keystone || -n $(running_pid "$dir/keystone") ]] ||
            die "Glance runs for $dir (pid $pid) but its Keystone does not: stop, then start again"
        echo "$pid http://127.0.0.1:$port"
        return 0
    fi
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
        die "127.0.0.1:$port is already in use"
    fi
    cmd_install
    KURL="" KTOKEN=""
    if [[ $GLANCE_AUTH == keystone ]]; then
        local kport=${KEYSTONE_PORT:-$((port + 1000))} dbsync
        # Any failure from here on (Keystone's or Glance's) stops Keystone too.
        # shellcheck disable=SC2064
        trap "stop_gunicorn $(printf %q "$dir/keystone") keystone >/dev/null 2>&1 || true" EXIT
        write_config "$port" "$dir" "http://127.0.0.1:$kport"
        echo keystone > "$dir/run/auth"
        # Glance's db_sync runs while Keystone starts.
        "$GLANCE_VENV/bin/glance-manage" --config-file "$dir/glance-manage.conf" db_sync \
            >> "$dir/log/db_sync.out" 2>&1 & dbsync=$!
        start_keystone "$kport" "$dir/keystone" "${GLANCE_CATALOG_URL:-http://127.0.0.1:$port}"
        wait "$dbsync" || { tail -n 20 "$dir/log/db_sync.out" >&2; die "db_sync failed"; }
    else
        write_config "$port" "$dir"
        rm -f "$dir/run/auth"
        "$GLANCE_VENV/bin/glance-manage" --config-file "$dir/glance-manage.conf" db_sync \
            >> "$dir/log/db_sync.out" 2>&1 || { tail -n 20 "$dir/log/db_sync.out" >&2; die "db_sync failed"; }
    fi
    rm -f "$dir/run/gunicorn.pid"
    echo "http://127.0.0.1:$port" > "$dir/run/url"
    # gthread workers: the image cache worker and import tasks run as threads
    # in each worker process. --timeout 0: long uploads/downloads are fine.
    OS_GLANCE_CONFIG_DIR=$dir PYTHONWARNINGS=ignore setsid -w "$GLANCE_VENV/bin/gunicorn" \
        --bind "${GLANCE_BIND_ADDR:-127.0.0.1}:$port" --worker-class gthread \
        --workers "$GLANCE_WORKERS" --threads "$GLANCE_THREADS" \
        --timeout 0 --graceful-timeout 10 --no-control-socket --pythonpath "$dir" \
        --pid "$dir/run/gunicorn.pid" --error-logfile "$dir/log/gunicorn.log" \
        --access-logfile "$dir/log/access.log" \
        --access-logformat '%(h)s "%(r)s" %(s)s %(B)s %(M)sms "%({content-length}i)s" "%({transfer-encoding}i)s"' \
        glance.wsgi.api:application < /dev/null >> "$dir/log/gunicorn.out" 2>&1 &
    # Wait until the v2 API (not just /healthcheck) answers 200 (with
    # Keystone: to an admin token, so keystonemiddleware works too); give up
    # early if the server process exits.
    if ! wait_http "http://127.0.0.1:$port/v2/images?limit=1" "$!" "$KTOKEN"; then
        tail -n 25 "$dir/log/gunicorn.log" "$dir/log/glance-api.log" >&2 || true
        cmd_stop "$dir" >/dev/null 2>&1 || true
        die "Glance did not start on 127.0.0.1:$port (logs in $dir/log)"
    fi
    if [[ -n $KURL ]]; then
        trap - EXIT
        log "keystone $(cat "$dir/keystone/run/gunicorn.pid") $KURL/v3 (clients: $dir/keystone/clouds.yaml, openrc-*)"
    fi
    echo "$(cat "$dir/run/gunicorn.pid") http://127.0.0.1:$port"
}

# stop_gunicorn DIR [LABEL]: stop the gunicorn master of DIR (pid file
# DIR/run/gunicorn.pid) and wait for it.
stop_gunicorn() {
    local dir=$1 label=${2:+$2 } pid workers
    pid=$(running_pid "$dir")
    if [[ -z $pid ]]; then log "${label}not running ($dir)"; rm -f "$dir/run/gunicorn.pid"; return 0; fi
    workers=$(ps -o pid= --ppid "$pid" || true)
    kill -TERM "$pid"   # gunicorn master: stops its workers, then exits
    for _ in $(seq 1 150); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    if kill -0 "$pid" 2>/dev/null; then
        log "${label}pid $pid did not stop in 15s, sending KILL"
        # shellcheck disable=SC2086
        kill -KILL "$pid" $workers 2>/dev/null || true
    fi
    rm -f "$dir/run/gunicorn.pid"
    log "stopped ${label}pid $pid"
}

cmd_stop() {
    local dir=${1:?usage: stop DATADIR}
    dir=$(cd "$dir" 2>/dev/null && pwd) || { log "no such dir: $1"; return 0; }
    # GLANCE_AUTH=keystone: its Keystone too (whatever GLANCE_AUTH is now),
    # in parallel
    local kstop=""
    if [[ -f $dir/keystone/run/gunicorn.pid ]]; then
        stop_gunicorn "$dir/keystone" keystone & kstop=$!
    fi
    stop_gunicorn "$dir"
    [[ -z $kstop ]] || wait "$kstop"
}

# stop-glance DATADIR / stop-keystone DATADIR: one of the two only (an outage of
# that service while the other keeps answering).
cmd_stop_one() {
    local which=$1 dir=${2:?usage: stop-$1 DATADIR}
    dir=$(cd "$dir" 2>/dev/null && pwd) || { log "no such dir: $2"; return 0; }
    case $which in
        glance) stop_gunicorn "$dir" ;;
        keystone) stop_gunicorn "$dir/keystone" keystone ;;
    esac
}

cmd_status() {
    local dir=${1:?usage: status DATADIR} pid kpid rc=0
    dir=$(cd "$dir" 2>/dev/null && pwd) || die "no such dir: $1"
    pid=$(running_pid "$dir")
    if [[ -n $pid ]]; then echo "$pid $(cat "$dir/run/url")"; else echo "not running"; rc=1; fi
    # Keystone: when this DATADIR was started with GLANCE_AUTH=keystone
    if [[ $(cat "$dir/run/auth" 2>/dev/null) == keystone || -f $dir/keystone/run/gunicorn.pid ]]; then
        kpid=$(running_pid "$dir/keystone")
        if [[ -n $kpid ]]; then
            echo "keystone $kpid $(cat "$dir/keystone/run/url")/v3"
        else
            echo "keystone not running"; rc=1
        fi
    fi
    return $rc
}

case ${1:-} in
    install) shift; cmd_install "$@" ;;
    start)   shift; cmd_start "$@" ;;
    stop)    shift; cmd_stop "$@" ;;
    stop-glance)   shift; cmd_stop_one glance "$@" ;;
    stop-keystone) shift; cmd_stop_one keystone "$@" ;;
    status)  shift; cmd_status "$@" ;;
    *) sed -n '2,47p' "$0" | sed 's/^# \{0,1\}//'; exit 2 ;;
esac
