#!/usr/bin/env bash
# The registries side by side on this machine, everything on 127.0.0.1: a
# three-member etcd and a three-member embedded registry (`shoal meta`),
# each driven by the same client (crates/shoal-registry/examples/
# registry_bench.rs, through the `connect` every Shoal process uses):
# CLIENTS tasks put 100-byte values, then read them (linearizable reads),
# for SECONDS each, RUNS times, the two systems in turn within each run.
#   RUNS=3 CLIENTS=16 SECONDS_EACH=5 bench/registry.sh
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh
RUNS=${RUNS:-3}
CLIENTS=${CLIENTS:-16}
SECONDS_EACH=${SECONDS_EACH:-5}

build_shoal
cargo build --release --locked -p shoal-registry --example registry_bench >&2
BENCH="${CARGO_TARGET_DIR:-$(pwd)/target}/release/examples/registry_bench"
work_dir
TOKEN=registry-bench
# The embedded registry's members ask every call for it (etcd ignores it).
export SHOAL_ADMIN_TOKEN=$TOKEN

start_etcd_three
ETCD=("${ETCD_CLIENTS[@]}")

# The embedded registry: three members started together.
read -r -a P <<<"$(free_ports 3)"
members=""
META=()
for i in 0 1 2; do
    members+="${members:+,}m$i=127.0.0.1:${P[$i]}"
    META+=("127.0.0.1:${P[$i]}")
done
for i in 0 1 2; do
    "$SHOAL" meta --name "m$i" --listen "127.0.0.1:${P[$i]}" --data-dir "$dir/meta$i" \
        --initial-members "$members" --admin-token "$TOKEN" >"$dir/meta$i.log" 2>&1 &
    PIDS+=($!)
done
wait_for 60 "the embedded registry" "$SHOAL" meta status --registry "shoal://${META[0]}"

etcd_url="etcd://$(IFS=,; echo "${ETCD[*]}")"
meta_url="shoal://$(IFS=,; echo "${META[*]}")"
echo "Machine: $(nproc) cores ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')), $(uname -sr); $CLIENTS clients, ${SECONDS_EACH}s per measurement, $RUNS runs"
echo
echo "| run | workload | etcd ops/s | etcd p50 / p99 ms | embedded ops/s | embedded p50 / p99 ms | embedded / etcd |"
echo "|---|---|---|---|---|---|---|"
for run in $(seq 1 "$RUNS"); do
    for workload in put get; do
        read -r _ e_ops e_p50 e_p99 e_err <<<"$("$BENCH" "$etcd_url" "$workload" "$CLIENTS" "$SECONDS_EACH")"
        read -r _ m_ops m_p50 m_p99 m_err <<<"$("$BENCH" "$meta_url" "$workload" "$CLIENTS" "$SECONDS_EACH")"
        [ "$e_err" = 0 ] && [ "$m_err" = 0 ] || echo "errors: etcd $e_err, embedded $m_err" >&2
        ratio=$(python3 -c "print(f'{$m_ops / $e_ops:.2f}')")
        echo "| $run | $workload | $e_ops | $e_p50 / $e_p99 | $m_ops | $m_p50 / $m_p99 | $ratio |"
    done
done
