#!/usr/bin/env bash
# Runs the README's "Then try it" as a newcomer would: `scripts/run.sh --with-glance` in the
# background (its output is the first shell's), the README's block as written in a second
# shell (bash -e, in a scratch directory), then the checks the README's paragraph after the
# block names: the access lines (a miss, then a hit), the counters on /metrics, the cache
# API's answers; then Ctrl-C (SIGINT to run.sh's process group, as a terminal sends it): the
# proxy drains and run.sh exits 0, with Glance stopped.
#
# 127.0.0.1:9292, :9393 and :9394 must be free (the README's ports). run.sh's cache and
# Glance's data go to a temporary directory (CACHE_DIR, XDG_DATA_HOME), removed at the end.
# Bounded: the release build and start within TRY_START_TIMEOUT (default 1800 s), the block
# within 300 s, the stop within 120 s.
#
#   scripts/try-it.sh
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
say() { echo "try-it: $*"; }
fail() { echo "try-it: FAILED: $*" >&2; exit 1; }
LAUNCHER=scripts/glance-upstream/glance-upstream.sh

work=$(mktemp -d "${TMPDIR:-/tmp}/gcp-try-it.XXXXXX")
run_pid=
cleanup() {
    set +e
    if [[ -n $run_pid ]] && kill -0 "$run_pid" 2>/dev/null; then
        kill -INT -- "-$run_pid" 2>/dev/null
        for _ in $(seq 100); do kill -0 "$run_pid" 2>/dev/null || break; sleep 0.2; done
        kill -KILL -- "-$run_pid" 2>/dev/null
    fi
    "$LAUNCHER" stop "$work/data/glance-cache-proxy/glance" >/dev/null 2>&1
    rm -rf "$work"
}
trap cleanup EXIT

block=$(awk '/<!-- scripts\/try-it.sh runs this block -->/ {f = 1; next}
             f && /^```sh/ {g = 1; next} g && /^```/ {exit} g' README.md)
[[ $block == *"glance image-download"* ]] || fail "no walkthrough block after the README's marker"
for p in 9292 9393 9394; do
    ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null || fail "127.0.0.1:$p is in use; the walkthrough needs it"
done

# The first shell. Job control on: the job gets a process group of its own and SIGINT is not
# ignored in it, as in a terminal.
set -m
CACHE_DIR=$work/cache XDG_DATA_HOME=$work/data scripts/run.sh --with-glance > "$work/run.log" 2>&1 &
run_pid=$!
set +m
say "scripts/run.sh --with-glance (pid $run_pid): building and starting"
deadline=$((SECONDS + ${TRY_START_TIMEOUT:-1800}))
until [[ $(curl -s -m 5 http://127.0.0.1:9394/readyz 2>/dev/null) == ready ]]; do
    kill -0 "$run_pid" 2>/dev/null || { tail -30 "$work/run.log"; fail "run.sh exited before the proxy was ready"; }
    ((SECONDS < deadline)) || { tail -30 "$work/run.log"; fail "the proxy was not ready in time"; }
    sleep 1
done
say "proxy ready; running the README's block"

# The second shell.
mkdir -p "$work/shell"
status=0
(cd "$work/shell" && timeout 300 bash -e -x -c "$block") > "$work/try.log" 2>&1 || status=$?
cat "$work/try.log"
[[ $status == 0 ]] || fail "the README's block failed (exit $status)"
grep -qx 'same bytes' "$work/try.log" || fail "the download differs from the upload"
for outcome in miss hit; do
    grep -q "^glance_cache_proxy_image_requests_total{outcome=\"$outcome\",reason=\"\"} 1$" "$work/try.log" ||
        fail "/metrics does not count one $outcome"
done
grep -q '| cached ' "$work/try.log" || fail "glance cache-list shows no cached image"
# The access lines of the two downloads, in order: a miss, then a hit.
seen=$(grep -E 'access: method="?GET"? path="?/v2/images/[^ "]+/file"? status=200' "$work/run.log" |
    grep -oE 'cache="[a-z]*"' | tr '\n' ' ')
[[ $seen == 'cache="miss" cache="hit" '* ]] || fail "run.sh's log shows the downloads as: $seen"
say "the block ran: a miss then a hit in run.sh's log and on /metrics, the cache API answered"

# Ctrl-C in the first shell.
kill -INT -- "-$run_pid"
rc=0
timeout 120 tail --pid="$run_pid" -f /dev/null || fail "run.sh did not stop within 120 s of Ctrl-C"
wait "$run_pid" || rc=$?
run_pid=
[[ $rc == 0 ]] || { tail -20 "$work/run.log"; fail "run.sh exited $rc after Ctrl-C"; }
for p in 9292 9393 9394; do
    ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null || fail "127.0.0.1:$p still answers after Ctrl-C"
done
say "Ctrl-C: run.sh exited 0, the proxy and Glance stopped"
say "OK"
