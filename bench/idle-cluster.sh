#!/usr/bin/env bash
# What an idle cluster costs: three Shoal nodes (one monitor, replication
# factor 3, a one-member etcd as registry) hosting all 256 buckets each, no
# requests. Prints each node's CPU (user+system) over SECONDS, as a share of
# one core: the heartbeats of its 256 groups, batched per peer.
#   SECONDS_IDLE=30 bench/idle-cluster.sh
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh
SECONDS_IDLE=${SECONDS_IDLE:-30}
TOKEN=idle-bench-token

install_missing etcd etcd-server
build_shoal
work_dir
start_etcd e0
start_shoal_cluster "etcd://${ETCD_URL#http://}" "idle-$$"
# Let start-up work (leader balance, first checkpoints) finish.
sleep 15
before=()
for pid in "${SHOAL_PIDS[@]}"; do before+=("$(cpu_seconds "$pid")"); done
sleep "$SECONDS_IDLE"
i=0
for pid in "${SHOAL_PIDS[@]}"; do
    after=$(cpu_seconds "$pid")
    python3 -c "import sys; print('node n%d: %.2f %% of one core over %s s idle (256 groups)' % (int(sys.argv[1]) + 1, (float(sys.argv[3]) - float(sys.argv[2])) / float(sys.argv[4]) * 100, sys.argv[4]))" "$i" "${before[$i]}" "$after" "$SECONDS_IDLE"
    i=$((i + 1))
done
echo "Machine: $(machine)"
