#!/usr/bin/env bash
# What `shoal proxy` costs: one three-node Shoal cluster (plus a monitor,
# replication factor 3) on one etcd, and two proxies in front of it: one
# sending to the nodes over relay connections (the default), one with
# `--http-to-nodes` (one HTTP request per request). `shoal bench` runs
# single-row writes and point reads at concurrency 1, 16 and 64, straight to
# the nodes (the bench client finds each bucket's leader itself), then
# through each proxy, in the same run. Everything listens on 127.0.0.1 only.
# Prints one markdown table for docs/benchmarks.md, with the user+system CPU
# time the three nodes and the proxy used per operation.
#   DURATION=5s bench/proxy.sh
#   WORKLOADS=read CONCURRENCY=16 PATHS="nodes relay" bench/proxy.sh   (a subset)
#   ROUNDS=3 CONCURRENCY=64 PATHS="nodes relay" bench/proxy.sh   (each row 3 times)
#   PERF_OUT=/tmp/prof bench/proxy.sh   (also a `perf record -g` of the nodes
#   and the proxy during each run, one file per run in that directory;
#   PERF_ARGS="--call-graph dwarf -F 200" for other options)
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh
DURATION=${DURATION:-10s}
CONCURRENCY=${CONCURRENCY:-1 16 64}
PATHS=${PATHS:-nodes relay http}
WORKLOADS=${WORKLOADS:-write read}
ROUNDS=${ROUNDS:-1}
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
# One proxy per way of reaching the nodes.
start_proxy() { # NAME FLAGS...
    local name=$1
    shift
    "$SHOAL" proxy --listen 127.0.0.1:0 --addr-file "$dir/$name.addr" "${SHOAL_COMMON[@]}" "$@" \
        >"$dir/shoal-$name.log" 2>&1 &
    PIDS+=($!)
    eval "PROXY_PID_$name=$!"
    wait_for 30 "shoal proxy ($name)" test -s "$dir/$name.addr"
    eval "PROXY_URL_$name=http://$(cat "$dir/$name.addr")"
}
start_proxy relay ${PROXY_ARGS:-}
start_proxy http --http-to-nodes
PROXY_URL=$PROXY_URL_relay
wait_for 60 "a base to be created through the proxy" "$SHOAL" bench --endpoint "$PROXY_URL" \
    --token "$TOKEN" --workload write --concurrency 1 --ops 1 --duration 5s

ROWS=()
for round in $(seq 1 "$ROUNDS"); do
for workload in $WORKLOADS; do
    for c in $CONCURRENCY; do
        for path in $PATHS; do
            case $path in
            nodes) endpoints=$SHOAL_URLS PROXY_PID=0 label=nodes ;;
            relay) endpoints=$PROXY_URL_relay PROXY_PID=$PROXY_PID_relay label="proxy (relay)" ;;
            http) endpoints=$PROXY_URL_http PROXY_PID=$PROXY_PID_http label="proxy (--http-to-nodes)" ;;
            *) echo "unknown path $path (nodes, relay, http)" >&2; exit 2 ;;
            esac
            echo "round $round: $path $workload c=$c" >&2
            nodes_before=$(cpu_seconds "${SHOAL_PIDS[@]}")
            proxy_before=$(cpu_seconds "$PROXY_PID")
            perf_pid=
            if [ -n "${PERF_OUT:-}" ]; then
                mkdir -p "$PERF_OUT"
                pids=$(IFS=,; echo "${SHOAL_PIDS[*]}")
                [ "$PROXY_PID" = 0 ] || pids+=",$PROXY_PID"
                perf record ${PERF_ARGS:--g} -q -p "$pids" -o "$PERF_OUT/$path-$workload-$c-$round.data" 2>/dev/null &
                perf_pid=$!
            fi
            out=$("$SHOAL" bench --endpoint "$endpoints" --token "$TOKEN" --workload "$workload" \
                --concurrency "$c" --duration "$DURATION" --json)
            if [ -n "$perf_pid" ]; then
                kill -INT "$perf_pid"
                wait "$perf_pid" || true
            fi
            nodes_after=$(cpu_seconds "${SHOAL_PIDS[@]}")
            proxy_after=$(cpu_seconds "$PROXY_PID")
            ROWS+=("$(echo "$out" | python3 -c 'import json,sys; r=json.load(sys.stdin); l=r["latency_ms"]; a=[float(x) for x in sys.argv[2:]]; n=max(r["ops"],1); print("| %s | %s | %d | %.0f | %.2f | %.2f | %d | %.0f | %.0f |" % (sys.argv[1], r["workload"], r["concurrency"], r["ops_per_sec"], l["p50"], l["p99"], r["errors"], (a[1]-a[0])/n*1e6, (a[3]-a[2])/n*1e6))' "$label" "$nodes_before" "$nodes_after" "$proxy_before" "$proxy_after")")
        done
    done
done
done

echo "Machine: $(machine); $DURATION per run; load average before the runs: $LOAD_BEFORE"
echo
echo "| path | workload | concurrency | ops/s | p50 ms | p99 ms | errors | nodes' CPU µs/op | proxy's CPU µs/op |"
echo "|---|---|---|---|---|---|---|---|---|"
printf '%s\n' "${ROWS[@]}"
