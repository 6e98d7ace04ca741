#!/usr/bin/env bash
# What idle bases cost: creates N bases (default 100 000) in a standalone
# server and reports its resident memory and the disk used, before and after,
# and after reading every base once through the LRU of open bases.
#   N=100000 bench/idle-bases.sh
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh
N=${N:-100000}
build_shoal
dir=$(mktemp -d)
trap 'stop_pid "${SHOAL_PID:-}"; rm -rf "$dir"' EXIT
start_standalone "$dir" --max-open-bases 1024
rss() { awk '/VmRSS/ {printf "%.1f MiB", $2/1024}' "/proc/$SHOAL_PID/status"; }

echo "Machine: $(machine)"
echo "RSS at start: $(rss)"
"$SHOAL" bench --endpoint "$ENDPOINT" --token "$TOKEN" --workload create --ops "$N" \
    --concurrency 32 --duration 1h --keep
echo "RSS after creating $N bases: $(rss)"
echo "Disk: $(du -sh "$dir/data" | cut -f1) for $N bases ($(du -sb "$dir/data" | awk -v n="$N" '{printf "%.1f KiB", $1/n/1024}') each)"
# Read every base once (each open goes through the LRU), then measure again.
python3 - "$ENDPOINT" "$TOKEN" <<'PY'
import json, sys, urllib.request
endpoint, token = sys.argv[1], sys.argv[2]
def call(method, path, body=None):
    req = urllib.request.Request(endpoint + path, method=method, data=json.dumps(body).encode() if body else None,
                                 headers={"Authorization": "Bearer " + token})
    return json.load(urllib.request.urlopen(req))
after, n = None, 0
while True:
    page = call("GET", "/v1/bases?limit=1000" + (f"&after={after}" if after else ""))
    for b in page["bases"]:
        call("GET", f"/v1/bases/{b['id']}/tables")
        n += 1
    after = page.get("next_after")
    if not after:
        break
print(f"read the tables of {n} bases")
PY
echo "RSS after opening every base once: $(rss)"
curl -s "$ENDPOINT/metrics" | grep '^shoal_open_bases'
