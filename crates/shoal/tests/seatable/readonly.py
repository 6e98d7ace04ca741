"""A read-only API token through SeaTable's Python client: reads, no writes.

SHOAL_URL is the server, SHOAL_RW_API_TOKEN a read-write token of a fresh
base (used only to set up a table) and SHOAL_API_TOKEN a read-only token of
the same base. Prints one line per check and exits 0 only if all pass.
"""

import os

import checks
from checks import refusal
from seatable_api import Base
from seatable_api.constants import ColumnTypes

URL = os.environ["SHOAL_URL"]
TOKEN = os.environ["SHOAL_API_TOKEN"]
RW_TOKEN = os.environ["SHOAL_RW_API_TOKEN"]

TABLE = "Items"
WANT = [("apple", 3), ("pear", 5)]

rw = Base(RW_TOKEN, URL)
ro = Base(TOKEN, URL)
state = {}


def rows_of(base):
    rows = base.list_rows(TABLE)
    assert isinstance(rows, list), f"got {rows!r}"
    return [(r.get("Name"), r.get("Count")) for r in rows]


def setup_with_rw_token():
    rw.auth()
    rw.add_table(TABLE, columns=[{"column_name": "Name", "column_type": "text"},
                                 {"column_name": "Count", "column_type": "number"}])
    rw.batch_append_rows(TABLE, [{"Name": n, "Count": c} for n, c in WANT])
    assert rows_of(rw) == WANT, f"got {rows_of(rw)!r}"


def auth():
    ro.auth()
    assert ro.is_authed and ro.use_api_gateway
    assert ro.dtable_uuid == rw.dtable_uuid, f"got {ro.dtable_uuid!r} vs {rw.dtable_uuid!r}"


def reads_work():
    meta = ro.get_metadata()
    assert [t.get("name") for t in meta.get("tables", [])].count(TABLE) == 1, f"got {meta!r}"
    rows = ro.list_rows(TABLE)
    assert [(r.get("Name"), r.get("Count")) for r in rows] == WANT, f"got {rows!r}"
    rid = rows[0].get("_id")
    assert isinstance(rid, str) and len(rid) == 22, f"got {rows!r}"
    state["row_id"] = rid
    row = ro.get_row(TABLE, rid)
    assert row.get("Name") == "apple" and row.get("_id") == rid, f"got {row!r}"
    cols = ro.list_columns(TABLE)
    assert [c.get("name") for c in cols] == ["Name", "Count"], f"got {cols!r}"
    res = ro.query(f"select Name, Count from {TABLE} where Count > ?", parameters=[4])
    assert [(r.get("Name"), r.get("Count")) for r in res] == [("pear", 5)], f"got {res!r}"
    got = [r.get("Name") for r in ro.filter(TABLE, "Count > 4")]
    assert got == ["pear"], f"got {got!r}"


def append_row_refused():
    refusal(ro.append_row, TABLE, {"Name": "plum", "Count": 1})


def other_writes_refused():
    refusal(ro.batch_append_rows, TABLE, [{"Name": "plum", "Count": 1}])
    refusal(ro.update_row, TABLE, state["row_id"], {"Count": 0})
    refusal(ro.batch_update_rows, TABLE, [{"row_id": state["row_id"], "row": {"Count": 0}}])
    refusal(ro.delete_row, TABLE, state["row_id"])
    refusal(ro.batch_delete_rows, TABLE, [state["row_id"]])
    refusal(ro.add_table, "Other", columns=[{"column_name": "Name", "column_type": "text"}])
    refusal(ro.delete_table, TABLE)
    refusal(ro.insert_column, TABLE, "Extra", ColumnTypes.TEXT)
    refusal(ro.rename_table, TABLE, "Other")
    refusal(ro.filter(TABLE, "Count > 4").delete)


def sql_write_refused():
    # SeaTable's SQL also takes INSERT/UPDATE/DELETE: not with this token.
    for sql in (f"update {TABLE} set Count = 0",
                f"delete from {TABLE}",
                f"insert into {TABLE} (Name, Count) values ('plum', 1)"):
        try:
            got = ro.query(sql)
        except Exception:
            continue
        raise AssertionError(f"want {sql!r} refused, got {got!r}")


def nothing_changed():
    assert rows_of(rw) == WANT, f"got {rows_of(rw)!r}"
    tables = [t.get("name") for t in rw.list_tables()]
    assert tables.count(TABLE) == 1 and "Other" not in tables, f"got {tables!r}"
    cols = [c.get("name") for c in rw.list_columns(TABLE)]
    assert cols == ["Name", "Count"], f"got {cols!r}"


CHECKS = [
    setup_with_rw_token,
    auth,
    reads_work,
    append_row_refused,
    other_writes_refused,
    sql_write_refused,
    nothing_changed,
]


if __name__ == "__main__":
    checks.run(CHECKS)
