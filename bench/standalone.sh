#!/usr/bin/env bash
# Standalone Shoal under `shoal bench`: single-row writes and point reads at
# concurrency 1, 16 and 64. Prints a markdown table for docs/benchmarks.md.
#   DURATION=10s bench/standalone.sh
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh
DURATION=${DURATION:-10s}
build_shoal
dir=$(mktemp -d)
trap 'stop_pid "${SHOAL_PID:-}"; rm -rf "$dir"' EXIT
start_standalone "$dir"

echo "Machine: $(machine); $DURATION per run"
echo
echo "| workload | concurrency | ops/s | p50 ms | p99 ms | max ms | errors |"
echo "|---|---|---|---|---|---|---|"
for workload in write read mixed; do
    for c in 1 16 64; do
        "$SHOAL" bench --endpoint "$ENDPOINT" --token "$TOKEN" --workload "$workload" \
            --concurrency "$c" --duration "$DURATION" --json |
            md_row
    done
done
