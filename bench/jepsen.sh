#!/usr/bin/env bash
# A long run of the linearizability test (crates/shoal/tests/jepsen.rs):
# a real etcd and three `shoal node`s on 127.0.0.1, six clients reading,
# writing and compare-and-setting four keys while nodes are killed and
# paused, then every key's history checked. Prints the test's summary.
#   bench/jepsen.sh                                  # 600 s of workload
#   DURATION=30m SEED=123 bench/jepsen.sh
#   CARGO_TEST_FLAGS=--release bench/jepsen.sh       # optimized build
# See docs/reliability.md.
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=${DURATION:-600s}
export SHOAL_JEPSEN_DURATION="$DURATION"
if [ -n "${SEED:-}" ]; then
    export SHOAL_JEPSEN_SEED="$SEED"
fi
command -v etcd >/dev/null 2>&1 || scripts/install-test-deps
# shellcheck disable=SC2086 # CARGO_TEST_FLAGS is a list of flags
cargo test ${CARGO_TEST_FLAGS:-} --locked -p shoal --test jepsen -- --nocapture --test-threads 1
