#!/usr/bin/env bash
# Where a write's CPU goes: a three-node Shoal cluster (one monitor,
# replication factor 3, a one-member etcd registry) under 64 writing clients
# for DURATION; prints, per kind of thread of the three nodes (Raft loop, log
# writer, apply thread, tokio workers), the CPU time and the context
# switches per acknowledged write, summed over the nodes, and the Raft
# traffic per write from /metrics.
#   DURATION=10 bench/cpu-by-thread.sh
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh
DURATION=${DURATION:-10}
TOKEN=threads-bench-token

install_missing etcd etcd-server
build_shoal
work_dir
start_etcd e0
start_shoal_cluster "etcd://${ETCD_URL#http://}" "threads-$$"

# threads: "kind context-switches cpu-ticks" for every thread kind of the nodes.
threads() {
    for p in "${SHOAL_PIDS[@]}"; do
        for d in /proc/"$p"/task/*; do
            echo "$(cat "$d/comm") $(awk '/ctxt_switches/ {s += $2} END {print s}' "$d/status") $(awk '{print $14 + $15}' "$d/stat")"
        done
    done | awk '{c[$1] += $2; t[$1] += $3} END {for (k in c) print k, c[k], t[k]}' | sort
}
# raft_metrics: the nodes' Raft counters, summed.
raft_metrics() {
    for u in ${SHOAL_URLS//,/ }; do
        curl -s -H "Authorization: Bearer $TOKEN" "$u/metrics" |
            grep -E '^shoal_raft_(log_writes|log_fsyncs|frames_sent|messages_sent)_total'
    done | awk '{s[$1] += $2} END {for (k in s) print k, s[k]}' | sort
}

raft_metrics >"$dir/metrics.before"
threads >"$dir/threads.before"
out=$("$SHOAL" bench --endpoint "$SHOAL_URLS" --token "$TOKEN" --workload write \
    --concurrency 64 --duration "${DURATION}s" --json)
threads >"$dir/threads.after"
raft_metrics >"$dir/metrics.after"
ops=$(echo "$out" | python3 -c 'import json,sys; print(json.load(sys.stdin)["ops"])')
echo "$out" | python3 -c 'import json,sys; r=json.load(sys.stdin); print("%d writes, %.0f/s, %d errors" % (r["ops"], r["ops_per_sec"], r["errors"]))'
hz=$(getconf CLK_TCK)
join "$dir/threads.before" "$dir/threads.after" | awk -v ops="$ops" -v hz="$hz" \
    '{printf "%-18s CPU %5.1f us/write  context switches %.2f/write\n", $1, ($5 - $3) / hz * 1e6 / ops, ($4 - $2) / ops}'
join "$dir/metrics.before" "$dir/metrics.after" | awk -v ops="$ops" '{printf "%-36s %.3f per write\n", $1, ($3 - $2) / ops}'
echo "Machine: $(machine)"
