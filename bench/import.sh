#!/usr/bin/env bash
# Import speed: `shoal import` of a CSV of ROWS rows (default 1 000 000:
# id INTEGER, name TEXT, score REAL) into a standalone `shoal serve` on
# 127.0.0.1, against raw SQLite on the same machine loading the same file
# the same way: Python's csv and sqlite3 modules, WAL, synchronous=FULL (a
# durable commit, as Shoal's), BATCH rows per transaction. Prints rows/s for
# both and their ratio.
#   ROWS=200000 BATCH=1000 bench/import.sh
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh
ROWS=${ROWS:-1000000}
BATCH=${BATCH:-1000}

build_shoal
work_dir
python3 - "$dir/in.csv" "$ROWS" <<'PY'
import csv, sys
path, rows = sys.argv[1], int(sys.argv[2])
with open(path, "w", newline="") as f:
    w = csv.writer(f)
    w.writerow(["id", "name", "score"])
    for i in range(rows):
        w.writerow([i, f"name {i}, row {i % 97}", f"{i % 1000}.{i % 100}"])
PY
SIZE=$(du -m "$dir/in.csv" | cut -f1)

mkdir -p "$dir/shoal"
start_standalone "$dir/shoal"
PIDS+=("$SHOAL_PID")
BASE=$("$SHOAL" base create --endpoint "$ENDPOINT" --token "$TOKEN" | awk '{print $NF}')
start=$(date +%s.%N)
"$SHOAL" import "$BASE" t "$dir/in.csv" --batch-rows "$BATCH" --endpoint "$ENDPOINT" --token "$TOKEN" >&2
end=$(date +%s.%N)
SHOAL_RATE=$(python3 -c "print(round($ROWS / ($end - $start)))")
COUNT=$("$SHOAL" sql "$BASE" "SELECT count(*) FROM t" --json --endpoint "$ENDPOINT" --token "$TOKEN" |
    python3 -c 'import json,sys; print(json.load(sys.stdin)["rows"][0][0])')
[ "$COUNT" = "$ROWS" ] || { echo "imported $COUNT rows, not $ROWS" >&2; exit 1; }

RAW_RATE=$(python3 - "$dir/in.csv" "$dir/raw.db" "$BATCH" <<'PY'
import csv, sqlite3, sys, time
path, db, batch = sys.argv[1], sys.argv[2], int(sys.argv[3])
start = time.time()
con = sqlite3.connect(db, isolation_level=None)
con.execute("PRAGMA journal_mode=WAL")
con.execute("PRAGMA synchronous=FULL")
con.execute("CREATE TABLE t (id INTEGER, name TEXT, score REAL)")
n = 0
def load(rows):
    con.execute("BEGIN")
    con.executemany("INSERT INTO t VALUES (?, ?, ?)",
                    [(int(a), b, float(c) if c else None) for a, b, c in rows])
    con.execute("COMMIT")
with open(path, newline="") as f:
    r = csv.reader(f)
    next(r)
    rows = []
    for rec in r:
        rows.append(rec)
        if len(rows) == batch:
            load(rows); n += len(rows); rows = []
    if rows:
        load(rows); n += len(rows)
print(round(n / (time.time() - start)))
PY
)
echo "Machine: $(machine); $ROWS rows ($SIZE MiB of CSV), $BATCH rows per transaction"
echo
echo "| loader | rows/s |"
echo "|---|---|"
echo "| shoal import (standalone server) | $SHOAL_RATE |"
echo "| raw SQLite (Python csv + sqlite3, WAL, synchronous=FULL) | $RAW_RATE |"
echo
python3 -c "print('shoal import / raw SQLite: %.2f' % ($SHOAL_RATE / $RAW_RATE))"
