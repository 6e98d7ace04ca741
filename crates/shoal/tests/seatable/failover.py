"""A SeaTable script that keeps writing while the base's leader is killed.

SHOAL_URL (a proxy), SHOAL_API_TOKEN (read-write), SHOAL_SECONDS (how long
to write). Appends rows one at a time, keeping every row whose append was
acknowledged; a call that fails (the leader died under it) is retried after
a pause, re-authenticating, as a script that wants to go on would do. At
the end every acknowledged row must be in the table. Prints the counts and
exits 0 only if nothing acknowledged is missing.
"""

import os
import time

import requests
import checks
from seatable_api import Base

URL = os.environ["SHOAL_URL"]
TOKEN = os.environ["SHOAL_API_TOKEN"]
SECONDS = float(os.environ.get("SHOAL_SECONDS", "8"))
TABLE = "Ledger"


def until_done(what, fn, seconds=30):
    """fn(), retried through failures for up to `seconds`."""
    deadline = time.time() + seconds
    while True:
        try:
            return fn()
        except (ConnectionError, requests.RequestException) as e:
            if time.time() > deadline:
                raise
            print(f"retry {what}: {e}", flush=True)
            time.sleep(0.2)


def main():
    base = Base(TOKEN, URL)
    until_done("auth", base.auth)
    until_done("add_table", lambda: base.add_table(TABLE, columns=[
        {"column_name": "Seq", "column_type": "number"},
    ]))
    print("writing", flush=True)
    acked, failures = {}, 0
    seq = 0
    end = time.time() + SECONDS
    while time.time() < end:
        seq += 1
        try:
            row = base.append_row(TABLE, {"Seq": seq})
            acked[row["_id"]] = seq
        except (ConnectionError, requests.RequestException) as e:
            failures += 1
            print(f"append {seq} failed: {e}", flush=True)
            time.sleep(0.2)
            until_done("auth", base.auth)
    rows = []
    start = 0
    while True:
        page = until_done("list_rows", lambda: base.list_rows(TABLE, start=start, limit=1000))
        rows.extend(page)
        if len(page) < 1000:
            break
        start += 1000
    stored = {r["_id"]: r.get("Seq") for r in rows}
    missing = {i: s for i, s in acked.items() if stored.get(i) != s}
    print(f"acknowledged {len(acked)}, failed {failures}, stored {len(stored)}, missing {len(missing)}")
    assert len(acked) > 0, "no append was acknowledged"
    assert not missing, f"acknowledged rows missing: {missing!r}"
    print("ok   no acknowledged row lost")


if __name__ == "__main__":
    checks.run([main])
