#!/usr/bin/env bash
# What idle bases cost: creates N bases (default 100 000) in a standalone
# server, in ten steps, and reports its resident memory after each step and
# the disk used; then reads a sample of them (each read opens a base through
# the LRU of open bases) and reports memory again.
#   N=100000 SAMPLE=5000 bench/idle-bases.sh
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh
N=${N:-100000}
SAMPLE=${SAMPLE:-5000}
build_shoal
dir=$(mktemp -d)
trap 'stop_pid "${SHOAL_PID:-}"; rm -rf "$dir"' EXIT
start_standalone "$dir" --max-open-bases 1024
rss() { awk '/VmRSS/ {printf "%.1f MiB", $2/1024}' "/proc/$SHOAL_PID/status"; }

echo "Machine: $(machine)"
echo "RSS at start: $(rss)"
for step in $(seq 1 10); do
    "$SHOAL" bench --endpoint "$ENDPOINT" --token "$TOKEN" --workload create --ops $((N / 10)) \
        --concurrency 32 --duration 1h --keep
    echo "  after $((step * N / 10)) bases: RSS $(rss)"
done
echo "Disk: $(du -sh "$dir/data" | cut -f1) for $N bases"
# Read the tables of a sample of bases, spread over all buckets.
python3 - "$ENDPOINT" "$TOKEN" "$SAMPLE" <<'PY'
import json, sys, urllib.request
endpoint, token, sample = sys.argv[1], sys.argv[2], int(sys.argv[3])
def call(path):
    req = urllib.request.Request(endpoint + path, headers={"Authorization": "Bearer " + token})
    return json.load(urllib.request.urlopen(req))
ids, after = [], None
while True:
    page = call("/v1/bases?limit=1000" + (f"&after={after}" if after else ""))
    ids += [b["id"] for b in page["bases"]]
    after = page.get("next_after")
    if not after:
        break
step = max(1, len(ids) // sample)
for i in ids[::step][:sample]:
    call(f"/v1/bases/{i}/tables")
print(f"listed {len(ids)} bases, opened {min(sample, len(ids))} of them")
PY
echo "RSS after opening $SAMPLE bases: $(rss); $(curl -s "$ENDPOINT/metrics" | grep '^shoal_open_bases')"
echo "Disk after opening them: $(du -sh "$dir/data" | cut -f1)"
