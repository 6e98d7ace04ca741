#!/usr/bin/env bash
# Shoal next to etcd and dqlite on the same machine, everything on 127.0.0.1:
# - a three-member etcd (JSON gateway), a three-node dqlite-demo and a
#   three-node Shoal cluster (plus one monitor, replication factor 3,
#   registered in that etcd under its own namespace), driven by `shoal bench`
#   with single-row writes and point reads at concurrency 1, 16 and 64, and
#   the Shoal cluster once more with 64 clients writing to ONE base (one
#   bucket, one Raft group: "shoal-hot");
# - then, alone on the machine, a one-member etcd next to standalone
#   `shoal serve` (its embedded default: one process, in-process registry).
# The CPU column is the server processes' user+system time over the run
# divided by the acknowledged operations. Prints one markdown table for
# docs/benchmarks.md.
#   DURATION=10s bench/compare.sh
#   SYSTEMS="etcd shoal" WORKLOADS=write CONCURRENCY=64 bench/compare.sh   (a subset)
# SYSTEMS picks among: etcd dqlite shoal etcd1 standalone (default: all).
# The systems run one after the other (dqlite is stopped before Shoal
# starts; etcd stays up as Shoal's registry; the cluster and its etcd are
# stopped before the one-member etcd and the standalone server start), so
# each has the machine to itself, apart from the load generator.
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh
DURATION=${DURATION:-10s}
CONCURRENCY=${CONCURRENCY:-1 16 64}
WORKLOADS=${WORKLOADS:-write read}
# Which systems to measure; etcd always runs, as Shoal's registry.
SYSTEMS=${SYSTEMS:-etcd dqlite shoal etcd1 standalone}
TOKEN=compare-bench-token

install_missing etcd etcd-server
case " $SYSTEMS " in *" dqlite "*) install_missing dqlite-demo go-dqlite ;; esac
build_shoal
LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)

# A scratch directory in $dir; the processes put in PIDS are stopped, and
# the directory removed, when the script exits.
work_dir

ROWS=()
# bench_one SYSTEM TARGET ENDPOINTS WORKLOAD CONCURRENCY "EXTRA FLAGS" PID...:
# one run; adds a table row. The CPU column is the user+system time of the
# server processes PID... over the run, divided by the acknowledged operations.
bench_one() {
    local system=$1 target=$2 endpoints=$3 workload=$4 c=$5 extra=$6 out before after
    shift 6
    echo "$system $workload c=$c $extra" >&2
    before=$(cpu_seconds "$@")
    # shellcheck disable=SC2086 # EXTRA is a list of flags
    out=$("$SHOAL" bench --target "$target" --endpoint "$endpoints" --token "$TOKEN" \
        --workload "$workload" --concurrency "$c" --duration "$DURATION" --json $extra)
    after=$(cpu_seconds "$@")
    ROWS+=("$(echo "$out" | python3 -c 'import json,sys; r=json.load(sys.stdin); l=r["latency_ms"]; cpu=(float(sys.argv[3])-float(sys.argv[2]))/max(r["ops"],1)*1e6; print("| %s | %s | %d | %.0f | %.2f | %.2f | %d | %.0f |" % (sys.argv[1], r["workload"], r["concurrency"], r["ops_per_sec"], l["p50"], l["p99"], r["errors"], cpu))' "$system" "$before" "$after")")
}

# bench_all SYSTEM TARGET ENDPOINTS PID...: every workload and concurrency.
bench_all() {
    local system=$1 target=$2 endpoints=$3 workload c
    shift 3
    for workload in $WORKLOADS; do
        for c in $CONCURRENCY; do
            bench_one "$system" "$target" "$endpoints" "$workload" "$c" "" "$@"
        done
    done
}

# --- etcd: three members -----------------------------------------------------
start_etcd_three
etcd_urls=$(printf 'http://%s,' "${ETCD_CLIENTS[@]}")
case " $SYSTEMS " in *" etcd "*) bench_all etcd etcd "${etcd_urls%,}" "${ETCD_PIDS[@]}" ;; esac

# --- dqlite-demo: three nodes ------------------------------------------------
if [[ " $SYSTEMS " == *" dqlite "* ]]; then
read -r -a P <<<"$(free_ports 6)"
DQ_API=() DQ_DB=()
DQ_PIDS=()
for i in 0 1 2; do
    DQ_API+=("127.0.0.1:${P[$i]}")
    DQ_DB+=("127.0.0.1:${P[$((i + 3))]}")
    join=()
    [ "$i" -gt 0 ] && join=(--join "${DQ_DB[0]}")
    dqlite-demo --api "${DQ_API[$i]}" --db "${DQ_DB[$i]}" --dir "$dir/dqlite" "${join[@]}" \
        >"$dir/dqlite$i.log" 2>&1 &
    PIDS+=($!)
    DQ_PIDS+=($!)
    # The demo answers 200 (with an error text for a missing key) once its
    # database is open.
    wait_for 60 "dqlite node $i" curl -sf "http://${DQ_API[$i]}/ready"
done
wait_for 60 "three dqlite voters" sh -c "[ \$(dqlite -s ${DQ_DB[0]} demo .cluster | grep -c voter) -eq 3 ]"
dq_urls=$(printf 'http://%s,' "${DQ_API[@]}")
bench_all dqlite dqlite "${dq_urls%,}" "${DQ_PIDS[@]}"
for pid in "${DQ_PIDS[@]}"; do stop_pid "$pid"; done
fi

# --- Shoal: three nodes and a monitor, registered in the etcd above ------------
if [[ " $SYSTEMS " == *" shoal "* ]]; then
start_shoal_cluster "etcd://$(IFS=,; echo "${ETCD_CLIENTS[*]}")" "shoal-bench-$$"
# Creating a base (and dropping it) works end to end.
wait_for 60 "a base to be created" "$SHOAL" bench --endpoint "$SHOAL_URLS" --token "$TOKEN" \
    --workload write --concurrency 1 --ops 1 --duration 5s
bench_all shoal shoal "$SHOAL_URLS" "${SHOAL_PIDS[@]}"
# A hot base: 64 clients on one base, so one bucket and one Raft group.
case " $WORKLOADS " in *" write "*)
    bench_one shoal-hot shoal "$SHOAL_URLS" write 64 "--bases 1" "${SHOAL_PIDS[@]}" ;;
esac
fi

# --- One member each: etcd and standalone Shoal -------------------------------
# The clusters go first, so that these have the machine to themselves.
if [[ " $SYSTEMS " == *" etcd1 "* || " $SYSTEMS " == *" standalone "* ]]; then
    for pid in "${SHOAL_PIDS[@]}" ${MONITOR_PID:-} "${ETCD_PIDS[@]}"; do stop_pid "$pid"; done
fi
if [[ " $SYSTEMS " == *" etcd1 "* ]]; then
    start_etcd solo
    bench_all etcd1 etcd "$ETCD_URL" "$ETCD_PID"
    stop_pid "$ETCD_PID"
fi
if [[ " $SYSTEMS " == *" standalone "* ]]; then
    mkdir -p "$dir/standalone"
    start_standalone "$dir/standalone" --admin-token "$TOKEN"
    PIDS+=("$SHOAL_PID")
    bench_all standalone shoal "$ENDPOINT" "$SHOAL_PID"
    stop_pid "$SHOAL_PID"
fi

echo "Machine: $(machine); $DURATION per run; load average before the runs: $LOAD_BEFORE"
echo
echo "| system | workload | concurrency | ops/s | p50 ms | p99 ms | errors | server CPU µs/op |"
echo "|---|---|---|---|---|---|---|---|"
printf '%s\n' "${ROWS[@]}"
