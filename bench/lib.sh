# Helpers shared by the bench scripts: build the release binary, start a
# standalone server on a free 127.0.0.1 port, stop it by PID.

build_shoal() {
    cargo build --release --locked -p shoal >&2
    SHOAL="${CARGO_TARGET_DIR:-$(pwd)/target}/release/shoal"
}

# start_standalone DIR [extra serve flags...]: sets SHOAL_PID, ENDPOINT, TOKEN.
start_standalone() {
    local dir=$1
    shift
    "$SHOAL" serve --data-dir "$dir/data" --listen 127.0.0.1:0 --addr-file "$dir/addr" "$@" >"$dir/server.log" 2>&1 &
    SHOAL_PID=$!
    for _ in $(seq 1 300); do
        [ -s "$dir/addr" ] && break
        sleep 0.1
    done
    [ -s "$dir/addr" ] || { echo "server did not start:" >&2; cat "$dir/server.log" >&2; return 1; }
    ENDPOINT="http://$(cat "$dir/addr")"
    # With --admin-token the caller's TOKEN stands; else the one made.
    if [ -s "$dir/data/admin.token" ]; then
        TOKEN=$(cat "$dir/data/admin.token")
    fi
}

stop_pid() {
    if [ -n "${1:-}" ] && kill -0 "$1" 2>/dev/null; then
        kill "$1"
        wait "$1" 2>/dev/null || true
    fi
}

# work_dir: makes the scratch directory $dir and the process list PIDS;
# on exit, stops every PID in PIDS (waiting for each) and removes $dir.
work_dir() {
    dir=$(mktemp -d)
    PIDS=()
    trap 'for pid in "${PIDS[@]}"; do stop_pid "$pid"; done; rm -rf "$dir"' EXIT
}

# start_etcd NAME: a one-member etcd under $dir/NAME on free ports; adds it
# to PIDS, sets ETCD_URL and ETCD_PID, and waits until it is healthy.
start_etcd() {
    local name=$1 ports
    read -r -a ports <<<"$(free_ports 2)"
    etcd --name "$name" --data-dir "$dir/$name" \
        --listen-client-urls "http://127.0.0.1:${ports[0]}" --advertise-client-urls "http://127.0.0.1:${ports[0]}" \
        --listen-peer-urls "http://127.0.0.1:${ports[1]}" --initial-advertise-peer-urls "http://127.0.0.1:${ports[1]}" \
        --initial-cluster "$name=http://127.0.0.1:${ports[1]}" >"$dir/$name.log" 2>&1 &
    ETCD_PID=$!
    PIDS+=("$ETCD_PID")
    ETCD_URL="http://127.0.0.1:${ports[0]}"
    wait_for 60 "etcd $name" sh -c "curl -sf $ETCD_URL/health | grep -q '\"health\":\"true\"'"
}

# start_etcd_three: a three-member etcd under $dir on free ports; adds the
# members to PIDS, sets ETCD_CLIENTS (their host:port) and ETCD_PIDS, and
# waits until each is healthy.
start_etcd_three() {
    local P i initial=""
    read -r -a P <<<"$(free_ports 6)"
    ETCD_CLIENTS=() ETCD_PIDS=()
    for i in 0 1 2; do
        ETCD_CLIENTS+=("127.0.0.1:${P[$i]}")
        initial+="${initial:+,}e$i=http://127.0.0.1:${P[$((i + 3))]}"
    done
    for i in 0 1 2; do
        etcd --name "e$i" --data-dir "$dir/etcd$i" \
            --listen-client-urls "http://${ETCD_CLIENTS[$i]}" \
            --advertise-client-urls "http://${ETCD_CLIENTS[$i]}" \
            --listen-peer-urls "http://127.0.0.1:${P[$((i + 3))]}" \
            --initial-advertise-peer-urls "http://127.0.0.1:${P[$((i + 3))]}" \
            --initial-cluster "$initial" --initial-cluster-state new \
            --initial-cluster-token shoal-bench >"$dir/etcd$i.log" 2>&1 &
        PIDS+=($!)
        ETCD_PIDS+=($!)
    done
    for i in 0 1 2; do
        wait_for 60 "etcd member $i" sh -c "curl -sf http://${ETCD_CLIENTS[$i]}/health | grep -q '\"health\":\"true\"'"
    done
}

# start_shoal_cluster REGISTRY NAMESPACE: three `shoal node`s and a monitor
# (replication factor 3) under $dir, registered in REGISTRY under NAMESPACE
# with the admin token $TOKEN. Adds them to PIDS, sets SHOAL_COMMON (the
# flags they share), SHOAL_URLS (the nodes, comma-separated), SHOAL_PIDS
# (the nodes' process ids) and MONITOR_PID, and waits
# until the map is placed and every replica is hosted.
start_shoal_cluster() {
    SHOAL_COMMON=(--registry "$1" --namespace "$2" --node-ttl 3s --admin-token "$TOKEN")
    SHOAL_URLS=""
    local n
    SHOAL_PIDS=()
    for n in n1 n2 n3; do
        mkdir -p "$dir/$n"
        "$SHOAL" node --node-id "$n" --data-dir "$dir/$n/data" --listen 127.0.0.1:0 \
            --addr-file "$dir/$n/addr" "${SHOAL_COMMON[@]}" >"$dir/shoal-$n.log" 2>&1 &
        PIDS+=($!)
        SHOAL_PIDS+=($!)
    done
    mkdir -p "$dir/m0"
    "$SHOAL" monitor --monitor-id m0 --replication-factor 3 --listen 127.0.0.1:0 \
        --addr-file "$dir/m0/addr" "${SHOAL_COMMON[@]}" >"$dir/shoal-monitor.log" 2>&1 &
    PIDS+=($!)
    MONITOR_PID=$!
    for n in n1 n2 n3; do
        wait_for 30 "shoal node $n" test -s "$dir/$n/addr"
        SHOAL_URLS+="${SHOAL_URLS:+,}http://$(cat "$dir/$n/addr")"
    done
    wait_for 120 "the Shoal cluster to place and host every bucket" \
        shoal_cluster_ready "${SHOAL_URLS%%,*}"
}

# shoal_cluster_ready URL: the map is placed (epoch >= 1) and every replica
# is hosted, as the node at URL sees it.
shoal_cluster_ready() {
    curl -sf -H "Authorization: Bearer $TOKEN" "$1/v1/cluster" | python3 -c '
import json, sys
s = json.load(sys.stdin)
sys.exit(0 if s["epoch"] >= 1 and not s["moves_in_progress"] and not s["under_replicated"] else 1)'
}

# cpu_seconds PID...: the user+system CPU time the processes have used, in seconds.
cpu_seconds() {
    local pid total=0 hz
    hz=$(getconf CLK_TCK)
    for pid in "$@"; do
        total=$((total + $(awk '{print $14 + $15}' "/proc/$pid/stat" 2>/dev/null || echo 0)))
    done
    python3 -c "print($total / $hz)"
}

machine() {
    echo "$(nproc) cores ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')), $(free -g | awk '/Mem:/ {print $2}') GiB RAM, $(uname -sr)"
}

# Turns one `shoal bench --json` line on stdin into a markdown table row.
md_row() {
    python3 -c 'import json,sys; r=json.load(sys.stdin); l=r["latency_ms"]; print("| %s | %d | %.0f | %.2f | %.2f | %.2f | %d |" % (r["workload"], r["concurrency"], r["ops_per_sec"], l["p50"], l["p99"], l["max"], r["errors"]))'
}

# install_missing BINARY PACKAGE: apt-get installs PACKAGE if BINARY is absent.
install_missing() {
    command -v "$1" >/dev/null && return 0
    echo "installing $2" >&2
    apt-get install -y "$2" >&2 || { apt-get update >&2 && apt-get install -y "$2" >&2; }
}

# free_ports N: N distinct free TCP ports on 127.0.0.1.
free_ports() {
    python3 -c '
import socket, sys
socks = [socket.socket() for _ in range(int(sys.argv[1]))]
for s in socks: s.bind(("127.0.0.1", 0))
print(" ".join(str(s.getsockname()[1]) for s in socks))
for s in socks: s.close()' "$1"
}

# wait_for SECONDS WHAT COMMAND...: runs COMMAND every 0.2 s until it succeeds;
# on a timeout prints the tail of the logs in the caller's $dir.
wait_for() {
    local limit=$1 what=$2
    shift 2
    local deadline=$((SECONDS + limit))
    until "$@" >/dev/null 2>&1; do
        if [ $SECONDS -ge $deadline ]; then
            echo "timed out after ${limit}s waiting for $what; logs in $dir:" >&2
            tail -n 20 "$dir"/*.log >&2 || true
            return 1
        fi
        sleep 0.2
    done
}
