#!/usr/bin/env bash
# Fuzz every parser of outside input (fuzz/fuzz_targets/: route, range, config, rewrite,
# cache_api, disk) with cargo-fuzz (libFuzzer) for SECONDS each. Runs on the stable toolchain
# (`--sanitizer none`; the crate forbids unsafe code outside src/sys.rs, which no target
# reaches) with debug assertions and overflow checks on. Seeds are read from fuzz/corpus/;
# inputs the run discovers go to a scratch directory, so the repository stays clean. A crash
# fails the script and leaves the input under fuzz/artifacts/<target>/ (reproduce with
# `cargo fuzz run <target> <file> -s none`).
#
#   scripts/fuzz.sh [SECONDS]        (default 60)
#   scripts/fuzz.sh 600 config       (one target)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
SECONDS_EACH=${1:-60}
shift || true
TOOLS=${GCP_TOOLS:-$HOME/.cache/glance-cache-proxy/cargo-tools}
export PATH="$TOOLS/bin:$PATH"
if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "fuzz: installing cargo-fuzz into $TOOLS"
    cargo install --locked --quiet --root "$TOOLS" cargo-fuzz
fi
targets=("$@")
[[ ${#targets[@]} -gt 0 ]] || mapfile -t targets < <(cargo fuzz list)
scratch=$(mktemp -d /tmp/gcp-fuzz.XXXXXX)
trap 'rm -rf "$scratch"' EXIT
cargo fuzz build -s none -a
for t in "${targets[@]}"; do
    mkdir -p "$scratch/$t" "fuzz/corpus/$t"
    echo "== fuzz $t (${SECONDS_EACH}s)"
    status=0
    cargo fuzz run -s none -a "$t" "$scratch/$t" "fuzz/corpus/$t" -- \
        -max_total_time="$SECONDS_EACH" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
        > "$scratch/$t.log" 2>&1 || status=$?
    grep -E "^(stat::number_of_executed_units|stat::new_units_added|==[0-9]+== ERROR|SUMMARY)|panicked" \
        "$scratch/$t.log" || true
    if [[ $status != 0 ]]; then
        tail -40 "$scratch/$t.log" >&2
        echo "fuzz: $t failed (exit $status); the input is under fuzz/artifacts/$t/" >&2
        exit 1
    fi
done
echo "fuzz: ${#targets[@]} targets, ${SECONDS_EACH}s each, no crash"
