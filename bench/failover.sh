#!/usr/bin/env bash
# Failover under load: a three-node Shoal cluster (one monitor, replication
# factor 3, a one-member etcd as its registry), all on 127.0.0.1. Each round:
#   1. 64 clients write (shoal bench) while a bucket's leader is killed with
#      SIGKILL; a probe writes to a base of that bucket through the other
#      nodes until a write succeeds: the time from the kill to that success
#      is the round's recovery time;
#   2. the node restarts; once it hosts its replicas again the leader
#      balancer hands groups back to it (Raft leadership transfer) while
#      64 clients write again: that run must see 0 failed requests.
# Prints every round, then the recovery times' p50, p99 and max, and the
# failed requests of both kinds of run. Default settings throughout.
#   ROUNDS=10 bench/failover.sh
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh
ROUNDS=${ROUNDS:-10}
TOKEN=failover-bench-token

install_missing etcd etcd-server
build_shoal
work_dir

start_etcd e0
start_shoal_cluster "etcd://${ETCD_URL#http://}" "failover-$$"
read -r -a URLS <<<"${SHOAL_URLS//,/ }"

# Probe bases, one in each of 16 buckets spread over the map.
PROBES=()
for i in $(seq 0 15); do
    id=$(printf '%02x%06x-0000-4000-8000-00000000f00d' $((i * 16 + 3)) "$i")
    curl -sf -H "Authorization: Bearer $TOKEN" -X POST "${URLS[0]}/v1/bases" -d "{\"id\": \"$id\"}" >/dev/null
    curl -sf -H "Authorization: Bearer $TOKEN" -X POST "${URLS[0]}/v1/bases/$id/execute" \
        -d '{"statements": [{"sql": "CREATE TABLE p (k INTEGER PRIMARY KEY, at TEXT)"}]}' >/dev/null
    PROBES+=("$id")
done

# leader_of BASE: the node URL (among URLS) that leads BASE's bucket.
leader_of() {
    curl -sf -H "Authorization: Bearer $TOKEN" "${URLS[0]}/v1/bases/$1/location" | python3 -c '
import json, sys
l = json.load(sys.stdin)["leader"]
print(l["node_url"] if l else "")'
}

# probe BASE KILLED_URL: writes to BASE through the other nodes, each attempt
# with a 1 s timeout, until one succeeds; prints the seconds since the kill
# (KILLED_AT, epoch seconds).
probe() {
    python3 - "$1" "$2" "$KILLED_AT" "$TOKEN" "${URLS[@]}" <<'EOF'
import json, sys, time, urllib.request
base, killed, killed_at, token, urls = sys.argv[1], sys.argv[2], float(sys.argv[3]), sys.argv[4], sys.argv[5:]
others = [u for u in urls if u != killed]
n = 0
while True:
    url = others[n % len(others)]
    n += 1
    body = json.dumps({"statements": [{"sql": "INSERT INTO p (at) VALUES (?)", "params": [str(time.time())]}]}).encode()
    req = urllib.request.Request(f"{url}/v1/bases/{base}/execute", data=body, method="POST",
                                 headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=1) as r:
            if 200 <= r.status < 300:
                print("%.3f" % (time.time() - killed_at))
                break
    except Exception:
        time.sleep(0.005)
    if time.time() - killed_at > 60:
        print("timeout")
        break
EOF
}

# load SECONDS OUT: 64 clients writing for SECONDS through every node; the
# JSON result goes to OUT.
load() {
    "$SHOAL" bench --endpoint "$SHOAL_URLS" --token "$TOKEN" --workload write \
        --concurrency 64 --duration "$1s" --json >"$2" 2>"$2.err"
}

errors_in() { python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["errors"])' "$1"; }

RECOVERY=()
KILL_ERRORS=0
MOVE_ERRORS=0
for round in $(seq 1 "$ROUNDS"); do
    base=${PROBES[$(((round - 1) % ${#PROBES[@]}))]}
    victim=$(leader_of "$base")
    [ -n "$victim" ] || { echo "round $round: no leader known for $base" >&2; exit 1; }
    n=0
    for i in 0 1 2; do [ "${URLS[$i]}" = "$victim" ] && n=$i; done
    load 6 "$dir/kill-$round.json" &
    LOAD=$!
    sleep 2
    KILLED_AT=$(python3 -c 'import time; print(time.time())')
    kill -KILL "${SHOAL_PIDS[$n]}"
    took=$(probe "$base" "$victim")
    wait "${SHOAL_PIDS[$n]}" 2>/dev/null || true
    wait "$LOAD" || true
    kill_errors=$(errors_in "$dir/kill-$round.json")
    KILL_ERRORS=$((KILL_ERRORS + kill_errors))
    RECOVERY+=("$took")
    # The node comes back on its port and data; its leaderships come back
    # by transfer while 64 clients write.
    name="n$((n + 1))"
    addr=${victim#http://}
    "$SHOAL" node --node-id "$name" --data-dir "$dir/$name/data" --listen "$addr" \
        "${SHOAL_COMMON[@]}" >>"$dir/shoal-$name.log" 2>&1 &
    SHOAL_PIDS[n]=$!
    PIDS+=($!)
    wait_for 120 "$name to host its replicas again" shoal_cluster_ready "${URLS[$(((n + 1) % 3))]}"
    load 8 "$dir/move-$round.json"
    move_errors=$(errors_in "$dir/move-$round.json")
    MOVE_ERRORS=$((MOVE_ERRORS + move_errors))
    echo "round $round: killed the leader of ${base:0:2} ($name); writes to it again after ${took}s; failed writes: $kill_errors during the kill, $move_errors while leaderships moved back"
done

python3 - "${RECOVERY[@]}" <<'EOF'
import sys
xs = sorted(float(x) for x in sys.argv[1:] if x != "timeout")
lost = sum(1 for x in sys.argv[1:] if x == "timeout")
def pct(p):
    return xs[min(len(xs) - 1, int(round(p * (len(xs) - 1))))]
print(f"recovery after SIGKILL of a leader, {len(sys.argv) - 1} rounds: p50 {pct(0.5):.3f} s, p99 {pct(0.99):.3f} s, max {xs[-1]:.3f} s" + (f", {lost} never recovered" if lost else ""))
EOF
echo "failed writes of the 64 clients: $KILL_ERRORS in the runs with a kill, $MOVE_ERRORS in the runs while leaderships moved back"
echo "Machine: $(machine)"
