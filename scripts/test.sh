#!/usr/bin/env bash
# Runs every test: Rust unit, integration and tidy tests (cargo test), the deployment checks,
# fuzzing, then the end-to-end suite against a real Glance with the real clients
# (scripts/e2e.sh, which installs the Glance venv it needs) and the README's walkthrough
# (scripts/try-it.sh, which needs 127.0.0.1:9292, :9393 and :9394 free). Everything binds
# 127.0.0.1 only.
# Each stage prints its time; a closing summary gives the Rust tests passed and failed, the
# fuzz targets run, the end-to-end tests passed and failed, and each stage's time. A failed
# stage does not stop the later ones; the exit status is non-zero if any failed.
#
# The run's temporary files go to a directory of its own (TMPDIR points into it), removed at
# the end. Last, the leftovers check lists what is new in the system temp dirs (/tmp,
# /var/tmp) and /var/cache/glance-cache-proxy since the start, and what tests left in the
# run's own directory; CHECK_LEFTOVERS=fail (CI) makes a leftover outside the run's directory fail the run, the default
# (warn) only prints it, since other users of a shared machine write to /tmp too.
#
#   scripts/test.sh                 # all tests
#   SKIP_E2E=1 scripts/test.sh      # no end-to-end tests (nor the walkthrough)
#   FUZZ_SECONDS=0 scripts/test.sh  # no fuzzing (default: 60 s per target)
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
FUZZ_SECONDS=${FUZZ_SECONDS:-60}
CHECK_LEFTOVERS=${CHECK_LEFTOVERS:-warn}
WATCHED=(/tmp /var/tmp /var/cache/glance-cache-proxy)
run_start=$SECONDS

work=$(mktemp -d "${TMPDIR:-/tmp}/gcp-test-run.XXXXXX")
trap 'rm -rf "$work"' EXIT
logs=$work/logs
mkdir -p "$logs" "$work/tmp"
# The temporary directory works as /tmp does: tests run the proxy as an unprivileged user
# (tests/unwritable.rs), which must get through to its files.
chmod 0755 "$work"
chmod 0700 "$logs"
chmod 1777 "$work/tmp"
# What exists before the run, in each watched directory (the directory itself included).
listing() {
    local d
    for d in "${WATCHED[@]}"; do
        [[ -e $d ]] && echo "$d"
        [[ -d $d ]] && find "$d" -mindepth 1 -maxdepth 1 2>/dev/null
    done | grep -v -x -F "$work" | sort
}
listing > "$logs/before"
export TMPDIR=$work/tmp

names=() times=() results=() notes=()
failed=0
# stage NAME COMMAND...: run it, its output to the terminal and to $logs/NAME.log; record
# its time and result.
stage() {
    local name=$1 started=$SECONDS status=0
    shift
    echo "== $name"
    "$@" 2>&1 | tee "$logs/$name.log" || status=$?
    names+=("$name")
    times+=($((SECONDS - started)))
    if [[ $status == 0 ]]; then results+=(ok); else results+=("FAILED ($status)"); failed=1; fi
    echo "== $name: ${results[-1]} in $((SECONDS - started)) s"
}
note() { notes[${#names[@]} - 1]=$1; }

stage build-deps scripts/build-deps.sh

stage cargo-test cargo test --all-targets --locked --no-fail-fast --features failpoints,ktls
# "test result: ok. 12 passed; 0 failed; ..." per test binary.
read -r rust_passed rust_failed rust_binaries < <(awk '/^test result:/ {
    for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i }
    n++ } END { printf "%d %d %d\n", p, f, n }' "$logs/cargo-test.log")
note "Rust tests: $rust_passed passed, $rust_failed failed ($rust_binaries test binaries)"

stage deploy-checks scripts/check-deploy.sh

if [[ $FUZZ_SECONDS != 0 ]]; then
    stage fuzz scripts/fuzz.sh "$FUZZ_SECONDS"
    fuzzed=$(grep -c '^== fuzz ' "$logs/fuzz.log" || true)
    note "fuzz targets: $fuzzed run, ${FUZZ_SECONDS} s each"
fi

if [[ ${SKIP_E2E:-0} == 1 ]]; then
    echo "== end-to-end tests skipped (SKIP_E2E=1)"
else
    stage e2e scripts/e2e.sh
    # pytest's last line: "80 passed, 1 failed, 2 skipped in 250.31s (0:04:10)".
    e2e_line=$(grep -E '[0-9]+ (passed|failed|errors?|skipped).* in [0-9.]+s' "$logs/e2e.log" | tail -1)
    e2e_count() {
        local n
        n=$(grep -oE "[0-9]+ $1" <<<"$e2e_line" | head -1 | cut -d' ' -f1)
        echo "${n:-0}"
    }
    note "e2e: $(e2e_count passed) passed, $(e2e_count failed) failed, $(e2e_count error) errors, $(e2e_count skipped) skipped"
    # The README's "Then try it", as written, with scripts/run.sh --with-glance.
    stage try-it scripts/try-it.sh
fi

# Leftovers: new names in the watched directories, and whatever is left in the run's own
# temporary directory (a test that did not remove its files).
leftovers() {
    listing > "$logs/after"
    local new inside
    new=$(comm -13 "$logs/before" "$logs/after")
    inside=$(find "$work/tmp" -mindepth 1 -maxdepth 1 2>/dev/null)
    if [[ -z $new && -z $inside ]]; then
        echo "nothing left in ${WATCHED[*]} or the run's temporary directory"
        return 0
    fi
    echo "$(grep -c . <<<"$new") new in ${WATCHED[*]}, $(grep -c . <<<"$inside") left in the run's temporary directory (listed below)"
    [[ -z $new ]] || printf 'new since the start, outside the run'"'"'s directory:\n%s\n' "$new"
    [[ -z $inside ]] || printf 'left in the run'"'"'s temporary directory (removed with it; a test that should clean up):\n%s\n' "$inside"
    # Only files outside the run's own directory fail the run (CHECK_LEFTOVERS=fail).
    [[ $CHECK_LEFTOVERS != fail || -z $new ]]
}
stage leftovers leftovers
note "$(head -1 "$logs/leftovers.log")"

echo
echo "== summary: $((SECONDS - run_start)) s in all"
for i in "${!names[@]}"; do
    printf '  %-14s %-12s %5d s  %s\n' "${names[$i]}" "${results[$i]}" "${times[$i]}" "${notes[$i]:-}"
done
exit "$failed"
