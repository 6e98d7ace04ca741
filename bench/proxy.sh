#!/usr/bin/env bash
# What `shoal proxy` costs: one three-node Shoal cluster (plus a monitor,
# replication factor 3) on one etcd, and one proxy in front of it. `shoal
# bench` runs single-row writes and point reads at concurrency 1, 16 and 64,
# first straight to the nodes (the bench client finds each bucket's leader
# itself), then through the proxy, in the same run. Everything listens on
# 127.0.0.1 only. Prints one markdown table for docs/benchmarks.md, with the
# user+system CPU time the three nodes and the proxy used per operation.
#   DURATION=5s bench/proxy.sh
#   WORKLOADS=read CONCURRENCY=16 bench/proxy.sh   (a subset)
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh
DURATION=${DURATION:-10s}
CONCURRENCY=${CONCURRENCY:-1 16 64}
WORKLOADS=${WORKLOADS:-write read}
TOKEN=proxy-bench-token

install_missing etcd etcd-server
build_shoal
LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)

# A scratch directory in $dir; the processes put in PIDS are stopped, and
# the directory removed, when the script exits.
work_dir

# --- etcd: one member, the cluster's registry ----------------------------------
start_etcd e0

# --- Shoal: three nodes, a monitor and a proxy ------------------------------------
start_shoal_cluster "etcd://${ETCD_URL#http://}" "shoal-proxy-bench-$$"
"$SHOAL" proxy --listen 127.0.0.1:0 --addr-file "$dir/proxy.addr" "${SHOAL_COMMON[@]}" \
    >"$dir/shoal-proxy.log" 2>&1 &
PIDS+=($!)
PROXY_PID=$!
wait_for 30 "shoal proxy" test -s "$dir/proxy.addr"
PROXY_URL="http://$(cat "$dir/proxy.addr")"
wait_for 60 "a base to be created through the proxy" "$SHOAL" bench --endpoint "$PROXY_URL" \
    --token "$TOKEN" --workload write --concurrency 1 --ops 1 --duration 5s

ROWS=()
for workload in $WORKLOADS; do
    for c in $CONCURRENCY; do
        for path in nodes proxy; do
            endpoints=$SHOAL_URLS
            [ "$path" = proxy ] && endpoints=$PROXY_URL
            echo "$path $workload c=$c" >&2
            nodes_before=$(cpu_seconds "${SHOAL_PIDS[@]}")
            proxy_before=$(cpu_seconds "$PROXY_PID")
            out=$("$SHOAL" bench --endpoint "$endpoints" --token "$TOKEN" --workload "$workload" \
                --concurrency "$c" --duration "$DURATION" --json)
            nodes_after=$(cpu_seconds "${SHOAL_PIDS[@]}")
            proxy_after=$(cpu_seconds "$PROXY_PID")
            ROWS+=("$(echo "$out" | python3 -c 'import json,sys; r=json.load(sys.stdin); l=r["latency_ms"]; a=[float(x) for x in sys.argv[2:]]; n=max(r["ops"],1); print("| %s | %s | %d | %.0f | %.2f | %.2f | %d | %.0f | %.0f |" % (sys.argv[1], r["workload"], r["concurrency"], r["ops_per_sec"], l["p50"], l["p99"], r["errors"], (a[1]-a[0])/n*1e6, (a[3]-a[2])/n*1e6))' "$path" "$nodes_before" "$nodes_after" "$proxy_before" "$proxy_after")")
        done
    done
done

echo "Machine: $(machine); $DURATION per run; load average before the runs: $LOAD_BEFORE"
echo
echo "| path | workload | concurrency | ops/s | p50 ms | p99 ms | errors | nodes' CPU µs/op | proxy's CPU µs/op |"
echo "|---|---|---|---|---|---|---|---|---|"
printf '%s\n' "${ROWS[@]}"
