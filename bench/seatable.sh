#!/usr/bin/env bash
# Appends through the SeaTable-compatible API against Shoal's own rows API,
# in one run on one standalone `shoal serve` on 127.0.0.1: CLIENTS clients
# (default 16) each appending batches of BATCH rows (default 100, one 100-byte
# text value each) for DURATION, the two workloads taking turns RUNS times
# (default 3). Prints rows/s of each run, the server's CPU time per row
# (user+system, from /proc), and the SeaTable API's rate as a share of the
# rows API's (median of the runs). Each run starts after a
# `sync`: a run writes over a gigabyte (Raft log, WAL, base files), and
# without it the page cache's dirty pages from earlier runs make later runs
# wait on the disk's writeback, which then decides both rates.
#   RUNS=5 DURATION=10s bench/seatable.sh
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh
RUNS=${RUNS:-3}
DURATION=${DURATION:-8s}
CLIENTS=${CLIENTS:-16}
BATCH=${BATCH:-100}

build_shoal
work_dir
start_standalone "$dir"
PIDS+=("$SHOAL_PID")
# rate WORKLOAD: prints its rows/s and the server's CPU time per row (µs).
rate() {
    local before after
    sync
    before=$(cpu_seconds "$SHOAL_PID")
    "$SHOAL" bench --endpoint "$ENDPOINT" --token "$TOKEN" --workload "$1" --batch "$BATCH" \
        --concurrency "$CLIENTS" --duration "$DURATION" --json >"$dir/run.json"
    after=$(cpu_seconds "$SHOAL_PID")
    python3 -c 'import json,sys
r = json.load(open(sys.argv[1])); assert r["errors"] == 0, r
rows = r["ops"] * int(sys.argv[4])
print(round(r["rows_per_sec"]), round((float(sys.argv[3]) - float(sys.argv[2])) * 1e6 / rows, 2))' \
        "$dir/run.json" "$before" "$after" "$BATCH"
}
ratios=()
for run in $(seq 1 "$RUNS"); do
    read -r rows rows_cpu <<<"$(rate append)"
    read -r st st_cpu <<<"$(rate seatable-append)"
    ratio=$(python3 -c "print(round($st / $rows, 3))")
    ratios+=("$ratio")
    echo "run $run: rows API $rows rows/s ($rows_cpu µs of server CPU per row), SeaTable API $st rows/s ($st_cpu µs per row), ratio $ratio"
done
python3 -c "import statistics,sys; r=[float(x) for x in sys.argv[1:]]; print(f'median ratio {statistics.median(r):.3f} over {len(r)} runs (gap {100*(1-statistics.median(r)):.0f} %)')" "${ratios[@]}"
