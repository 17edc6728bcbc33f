# Sourced by benches that write files of hundreds of MiB (miss.sh, perf-miss.sh): settle a
# virtual machine's memory so that every server writes into page-cache pages the host backs.
#
# Why: on a VM with free page reporting (virtio-balloon; Firecracker's guests here report with
# `min_free_ms=0`), pages freed by deleting the previous round's cache file are handed back
# to the host at once, and the next write into them takes a host fault per page: the file
# write (`copy_folio_from_iter_atomic`) then costs 0.1-1.2 CPU-s per 512 MiB, by round, for
# whichever server happens to get those pages (bench/RESULTS.md, "Cold misses on a settled
# machine"). Bare-metal hosts have no such cost. Settling turns reporting off for the run
# (`page_reporting_order` above the largest order, so no free block qualifies), touches the
# free memory once so it is backed, and restores the setting on exit.
#
#   settle_memory     # SETTLE=0 skips it; a no-op without the knob or without root
#   restore_memory    # call from the script's exit trap
SETTLE_KNOB=/sys/module/page_reporting/parameters/page_reporting_order
settle_saved=

settle_memory() {
    if [[ ${SETTLE:-1} == 0 ]]; then
        echo "memory: not settled (SETTLE=0)" >&2
        return
    fi
    if [[ ! -w $SETTLE_KNOB ]]; then
        echo "memory: no free page reporting knob to turn off (bare metal, or not root): as is" >&2
        return
    fi
    settle_saved=$(cat "$SETTLE_KNOB")
    echo 11 > "$SETTLE_KNOB"
    # Touch all but 1 GiB of the free memory once, then free it (backed from now on).
    local free_kib
    free_kib=$(awk '/^MemFree:/ {print $2}' /proc/meminfo)
    echo "memory: free page reporting off (order $settle_saved -> 11); touching $((free_kib >> 20)) GiB once ..." >&2
    python3 - "$(( (free_kib - (1 << 20)) << 10 ))" <<'PY'
import mmap, sys
n = max(int(sys.argv[1]), 0) // mmap.PAGESIZE * mmap.PAGESIZE
if n:
    m = mmap.mmap(-1, n, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | mmap.MAP_POPULATE)
    m.close()
PY
}

restore_memory() {
    if [[ -n $settle_saved ]]; then
        echo "$settle_saved" > "$SETTLE_KNOB" 2>/dev/null || true
        settle_saved=
    fi
}
