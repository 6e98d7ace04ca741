"""SeaTable's official Python client (seatable-api 4.0.0) against Shoal.

Uses only the client's public API, as a user's script would. The server is
SHOAL_URL and SHOAL_API_TOKEN is a read-write API token of a fresh base.
Prints one line per check and exits 0 only if every check passes (it stops
at the first failure, since later checks build on earlier ones).

Leaves behind a table "Kept" with one row (Name "kept-row", Count 7), which
crates/shoal/tests/seatable.rs then reads through Shoal's own SQL API.
"""

import os

import checks
from checks import refusal
from seatable_api import Base
from seatable_api.constants import ColumnTypes

URL = os.environ["SHOAL_URL"]
TOKEN = os.environ["SHOAL_API_TOKEN"]

TABLE = "Tasks"
# Every supported column type, by the names SeaTable gives them.
TYPES = {
    "Name": ColumnTypes.TEXT,
    "Notes": ColumnTypes.LONG_TEXT,
    "Count": ColumnTypes.NUMBER,
    "Done": ColumnTypes.CHECKBOX,
    "Due": ColumnTypes.DATE,
    "Priority": ColumnTypes.SINGLE_SELECT,
    "Tags": ColumnTypes.MULTIPLE_SELECT,
}

base = Base(TOKEN, URL)
ids = {}  # row name -> _id


# --- helpers -----------------------------------------------------------------


def check_id(row):
    assert isinstance(row, dict), f"want a row dict, got {row!r}"
    rid = row.get("_id")
    assert isinstance(rid, str) and len(rid) == 22, f"want a 22-char _id, got {row!r}"
    return rid


def is_number(v):
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def by_name(rows):
    for r in rows:
        check_id(r)
    return {r.get("Name"): r for r in rows}


def names(rows):
    return [r.get("Name") for r in rows]


def column_map(columns):
    assert isinstance(columns, list), f"want a list of columns, got {columns!r}"
    for c in columns:
        assert {"key", "name", "type"} <= set(c), f"want key, name and type, got {c!r}"
    return {c["name"]: c for c in columns}


def option_names(column):
    options = (column.get("data") or {}).get("options") or []
    for o in options:
        assert "id" in o and "name" in o, f"want options with id and name, got {column!r}"
    return {o["name"] for o in options}


def all_rows():
    rows = base.list_rows(TABLE)
    assert isinstance(rows, list), f"want a list of rows, got {rows!r}"
    return rows


def unchecked(v):
    """A checkbox that is not ticked: false, or left out / null."""
    return v is False or v is None


# --- checks ------------------------------------------------------------------


def auth():
    base.auth()
    assert base.is_authed
    assert base.use_api_gateway, "want use_api_gateway from app-access-token"
    assert base.dtable_uuid, f"want a dtable_uuid, got {base.dtable_uuid!r}"
    assert base.jwt_token, f"want an access_token, got {base.jwt_token!r}"


def wrong_token_refused():
    refusal(Base("0" * 64, URL).auth)


def add_table_every_type():
    columns = [{"column_name": n, "column_type": t.value} for n, t in TYPES.items()]
    base.add_table(TABLE, lang="en", columns=columns)
    table = base.get_table_by_name(TABLE)
    assert table is not None, f"want {TABLE} in the tables, got {base.list_tables()!r}"
    assert table.get("_id"), f"want a table _id, got {table!r}"
    got = {n: c["type"] for n, c in column_map(table.get("columns")).items()}
    want = {n: t.value for n, t in TYPES.items()}
    assert got == want, f"want columns {want!r}, got {got!r}"


def get_metadata():
    meta = base.get_metadata()
    assert isinstance(meta, dict), f"want metadata, got {meta!r}"
    tables = meta.get("tables")
    assert isinstance(tables, list), f"want metadata tables, got {meta!r}"
    table = [t for t in tables if t.get("name") == TABLE]
    assert len(table) == 1, f"want one {TABLE}, got {tables!r}"
    got = [c["name"] for c in table[0].get("columns", [])]
    assert got == list(TYPES), f"want columns {list(TYPES)!r} in order, got {got!r}"


def add_and_delete_table():
    base.add_table("Scratch", columns=[{"column_name": "Title", "column_type": "text"}])
    assert base.get_table_by_name("Scratch") is not None, f"got {base.list_tables()!r}"
    base.delete_table("Scratch")
    got = [t.get("name") for t in base.list_tables()]
    assert "Scratch" not in got and TABLE in got, f"want Scratch gone, got {got!r}"


def rename_and_delete_tables_and_columns():
    base.add_table("Draft", columns=[{"column_name": "Title", "column_type": "text"},
                                     {"column_name": "Size", "column_type": "number"},
                                     {"column_name": "Gone", "column_type": "single-select"}])
    base.append_row("Draft", {"Title": "t1", "Size": 3, "Gone": "x"})
    renamed = base.rename_table("Draft", "Final")
    assert renamed.get("name") == "Final", f"got {renamed!r}"
    got = [t.get("name") for t in base.list_tables()]
    assert "Final" in got and "Draft" not in got, f"got {got!r}"
    cols = column_map(base.list_columns("Final"))
    size_key, title_key = cols["Size"]["key"], cols["Title"]["key"]
    column = base.rename_column("Final", size_key, "Weight")
    assert column.get("name") == "Weight" and column.get("key") == size_key, f"got {column!r}"
    cols = column_map(base.list_columns("Final"))
    assert "Size" not in cols and cols["Weight"]["key"] == size_key, f"got {cols!r}"
    base.delete_column("Final", cols["Gone"]["key"])
    got = [c.get("name") for c in base.list_columns("Final")]
    assert got == ["Title", "Weight"], f"got {got!r}"
    rows = base.list_rows("Final")
    assert [(r.get("Title"), r.get("Weight")) for r in rows] == [("t1", 3)], f"got {rows!r}"
    assert "Gone" not in rows[0], f"got {rows!r}"
    res = base.query("select Title, Weight from Final")
    assert [(r.get("Title"), r.get("Weight")) for r in res] == [("t1", 3)], f"got {res!r}"
    # Refused, and nothing changes: a taken table name, a taken column
    # name, the first column, a table that is not there.
    assert refusal(base.rename_table, "Final", TABLE) == 409
    assert refusal(base.rename_column, "Final", title_key, "Weight") == 409
    assert refusal(base.delete_column, "Final", title_key) == 400
    assert refusal(base.rename_table, "Nowhere", "Other") == 404
    assert refusal(base.rename_column, "Final", "nope", "Other") == 404
    got = [c.get("name") for c in base.list_columns("Final")]
    assert got == ["Title", "Weight"], f"got {got!r}"
    assert TABLE in [t.get("name") for t in base.list_tables()]
    base.delete_table("Final")


def insert_column():
    base.insert_column(TABLE, "Owner", ColumnTypes.TEXT)
    base.insert_column(TABLE, "Rating", ColumnTypes.NUMBER)
    cols = column_map(base.list_columns(TABLE))
    assert cols.get("Owner", {}).get("type") == "text", f"got {cols!r}"
    assert cols.get("Rating", {}).get("type") == "number", f"got {cols!r}"


def list_columns():
    cols = base.list_columns(TABLE)
    got = [c.get("name") for c in cols]
    want = list(TYPES) + ["Owner", "Rating"]
    assert got == want, f"want {want!r}, got {got!r}"
    types = {n: c["type"] for n, c in column_map(cols).items()}
    assert all(types[n] == t.value for n, t in TYPES.items()), f"got {types!r}"
    one = base.get_column_by_name(TABLE, "Count")
    assert one and one.get("type") == "number", f"got {one!r}"
    dates = base.get_columns_by_type(TABLE, ColumnTypes.DATE)
    assert [c["name"] for c in dates] == ["Due"], f"got {dates!r}"


def append_row():
    row = base.append_row(
        TABLE,
        {
            "Name": "alpha",
            "Notes": "first line\nsecond line",
            "Count": 1,
            "Done": True,
            "Due": "2024-05-01",
            "Priority": "High",
            "Tags": ["red", "blue"],
        },
    )
    ids["alpha"] = check_id(row)
    assert row.get("Name") == "alpha", f"want the row appended, got {row!r}"


def batch_append_rows():
    res = base.batch_append_rows(
        TABLE,
        [
            {"Name": "beta", "Notes": "b", "Count": 2, "Done": False,
             "Due": "2024-05-02", "Priority": "Low", "Tags": ["red"]},
            {"Name": "gamma", "Count": 3.5, "Done": True, "Due": "2024-05-03",
             "Priority": "High", "Tags": ["blue", "green"]},
            {"Name": "delta", "Notes": "d", "Count": 4, "Done": True,
             "Due": "2024-05-04", "Priority": "Medium"},
            {"Name": "epsilon", "Count": 5, "Due": "2024-05-05"},
        ],
    )
    assert isinstance(res, dict) and res.get("inserted_row_count") == 4, \
        f"want inserted_row_count 4, got {res!r}"
    rows = by_name(all_rows())
    assert set(rows) == {"alpha", "beta", "gamma", "delta", "epsilon"}, f"got {rows!r}"
    for name, row in rows.items():
        ids[name] = row["_id"]
    assert len(set(ids.values())) == 5, f"want distinct _ids, got {ids!r}"


def values_by_type():
    rows = by_name(all_rows())
    a, b, g, e = rows["alpha"], rows["beta"], rows["gamma"], rows["epsilon"]
    assert a.get("Notes") == "first line\nsecond line", f"long-text: got {a!r}"
    assert is_number(a.get("Count")) and a["Count"] == 1, f"number: got {a!r}"
    assert is_number(g.get("Count")) and g["Count"] == 3.5, f"number: got {g!r}"
    assert a.get("Done") is True, f"checkbox: got {a!r}"
    assert unchecked(b.get("Done")), f"checkbox: got {b!r}"
    assert unchecked(e.get("Done")), f"checkbox never set: got {e!r}"
    assert isinstance(a.get("Due"), str) and a["Due"].startswith("2024-05-01"), \
        f"date: got {a!r}"
    assert a.get("Priority") == "High" and b.get("Priority") == "Low", \
        f"single-select by option name: got {a!r} {b!r}"
    assert isinstance(a.get("Tags"), list) and sorted(a["Tags"]) == ["blue", "red"], \
        f"multiple-select by option names: got {a!r}"
    assert sorted(g.get("Tags") or []) == ["blue", "green"], f"got {g!r}"
    assert e.get("Priority") in (None, ""), f"unset single-select: got {e!r}"


def options_created_on_first_use():
    cols = column_map(base.list_columns(TABLE))
    got = option_names(cols["Priority"])
    assert got == {"High", "Low", "Medium"}, f"single-select options: got {cols['Priority']!r}"
    got = option_names(cols["Tags"])
    assert got == {"red", "blue", "green"}, f"multiple-select options: got {cols['Tags']!r}"


def list_rows_paging():
    full = all_rows()
    want = ["alpha", "beta", "gamma", "delta", "epsilon"]
    assert names(full) == want, f"want insertion order {want!r}, got {names(full)!r}"
    p1 = base.list_rows(TABLE, limit=2)
    p2 = base.list_rows(TABLE, start=2, limit=2)
    p3 = base.list_rows(TABLE, start=4, limit=2)
    p4 = base.list_rows(TABLE, start=10, limit=2)
    assert names(p1) == want[0:2], f"page 1: got {p1!r}"
    assert names(p2) == want[2:4], f"page 2: got {p2!r}"
    assert names(p3) == want[4:], f"page 3: got {p3!r}"
    assert not p4, f"past the end: got {p4!r}"
    got = [r["_id"] for r in p1 + p2 + p3]
    assert got == [r["_id"] for r in full], f"pages vs whole: got {got!r}"


def list_rows_order_by():
    desc = base.list_rows(TABLE, order_by="Count", desc=True)
    assert [r.get("Count") for r in desc] == [5, 4, 3.5, 2, 1], f"desc: got {desc!r}"
    asc = base.list_rows(TABLE, order_by="Count")
    assert [r.get("Count") for r in asc] == [1, 2, 3.5, 4, 5], f"asc: got {asc!r}"
    top = base.list_rows(TABLE, order_by="Count", desc=True, limit=2)
    assert names(top) == ["epsilon", "delta"], f"desc + limit: got {top!r}"
    by_text = base.list_rows(TABLE, order_by="Name", desc=True)
    want = sorted(ids, reverse=True)
    assert names(by_text) == want, f"text desc: want {want!r}, got {names(by_text)!r}"


def get_row():
    row = base.get_row(TABLE, ids["alpha"])
    assert check_id(row) == ids["alpha"], f"got {row!r}"
    assert row.get("Name") == "alpha" and row.get("Count") == 1, f"got {row!r}"
    assert is_number(row["Count"]) and row.get("Done") is True, f"got {row!r}"
    assert row.get("Priority") == "High", f"got {row!r}"
    assert sorted(row.get("Tags") or []) == ["blue", "red"], f"got {row!r}"


def update_row():
    base.update_row(
        TABLE,
        ids["alpha"],
        {"Count": 10, "Done": False, "Priority": "Low", "Notes": "changed",
         "Tags": ["blue"], "Owner": "ada"},
    )
    row = base.get_row(TABLE, ids["alpha"])
    assert row.get("Count") == 10 and is_number(row["Count"]), f"got {row!r}"
    assert unchecked(row.get("Done")), f"got {row!r}"
    assert row.get("Priority") == "Low" and row.get("Notes") == "changed", f"got {row!r}"
    assert row.get("Tags") == ["blue"] and row.get("Owner") == "ada", f"got {row!r}"
    assert row.get("Name") == "alpha" and str(row.get("Due")).startswith("2024-05-01"), \
        f"want the other cells kept, got {row!r}"


def batch_update_rows():
    base.batch_update_rows(
        TABLE,
        [
            {"row_id": ids["beta"], "row": {"Count": 20, "Done": True}},
            {"row_id": ids["gamma"], "row": {"Name": "gamma2", "Rating": 4.5,
                                             "Priority": "Urgent"}},
        ],
    )
    rows = by_name(all_rows())
    b, g = rows.get("beta"), rows.get("gamma2")
    assert b and b.get("Count") == 20 and b.get("Done") is True, f"got {b!r}"
    assert g and g["_id"] == ids["gamma"], f"want gamma renamed, got {sorted(rows)!r}"
    assert g.get("Rating") == 4.5 and is_number(g["Rating"]), f"got {g!r}"
    assert g.get("Priority") == "Urgent" and g.get("Count") == 3.5, f"got {g!r}"
    ids["gamma2"] = ids.pop("gamma")
    cols = column_map(base.list_columns(TABLE))
    assert "Urgent" in option_names(cols["Priority"]), f"got {cols['Priority']!r}"


def query_sql():
    res = base.query(f"select Name, Count from {TABLE} order by Count")
    assert isinstance(res, list), f"got {res!r}"
    for r in res:
        assert {"Name", "Count"} <= set(r), f"want rows keyed by column name, got {r!r}"
    got = [(r["Name"], r["Count"]) for r in res]
    want = [("gamma2", 3.5), ("delta", 4), ("epsilon", 5), ("alpha", 10), ("beta", 20)]
    assert got == want, f"want {want!r}, got {got!r}"
    assert all(is_number(r["Count"]) for r in res), f"got {res!r}"
    res = base.query(f"select Name, Done from {TABLE} where Name = 'beta'")
    assert len(res) == 1 and res[0].get("Done"), f"got {res!r}"


def query_sql_parameters():
    res = base.query(f"select Name, Count from {TABLE} where Count > ? order by Count",
                     parameters=[4])
    got = [(r.get("Name"), r.get("Count")) for r in res]
    assert got == [("epsilon", 5), ("alpha", 10), ("beta", 20)], f"got {res!r}"
    res = base.query(f"select Name from {TABLE} where Name = ? or Name = ? order by Name",
                     parameters=["delta", "alpha"])
    assert names(res) == ["alpha", "delta"], f"got {res!r}"


def filter_rows_on_the_server():
    # The filtered-rows call: conditions evaluated by the server.
    got = sorted(names(base.filter_rows(TABLE, [
        {"column_name": "Count", "filter_predicate": "greater", "filter_term": 4},
    ])))
    want = sorted(n for n, r in by_name(all_rows()).items() if (r.get("Count") or 0) > 4)
    assert got == want, f"Count > 4: want {want!r}, got {got!r}"
    got = names(base.filter_rows(TABLE, [
        {"column_name": "Name", "filter_predicate": "contains", "filter_term": "ALP"},
        {"column_name": "Name", "filter_predicate": "is", "filter_term": "delta"},
    ], filter_conjunction="Or"))
    assert sorted(got) == ["alpha", "delta"], f"contains or is: got {got!r}"


def filter_and_update():
    qs = base.filter(TABLE, "Count > 4")
    got = sorted(r.get("Name") for r in qs)
    assert got == ["alpha", "beta", "epsilon"], f"got {got!r}"
    assert qs.count() == 3 and qs.exists()
    one = base.filter(TABLE, "Name = 'delta'")
    assert names(one) == ["delta"], f"text filter: got {list(one)!r}"
    qs.update({"Owner": "filtered"})
    rows = by_name(all_rows())
    owners = {n: r.get("Owner") for n, r in rows.items()}
    assert owners["alpha"] == owners["beta"] == owners["epsilon"] == "filtered", \
        f"got {owners!r}"
    assert owners["delta"] in (None, "") and owners["gamma2"] in (None, ""), f"got {owners!r}"


def filter_and_delete():
    n = base.filter(TABLE, "Count > 15").delete()
    assert n == 1, f"want 1 deleted, got {n!r}"
    got = sorted(names(all_rows()))
    assert got == ["alpha", "delta", "epsilon", "gamma2"], f"got {got!r}"
    ids.pop("beta")


def delete_row():
    res = base.delete_row(TABLE, ids["epsilon"])
    assert isinstance(res, dict) and res.get("deleted_rows") == 1, \
        f"want deleted_rows 1, got {res!r}"
    got = sorted(names(all_rows()))
    assert got == ["alpha", "delta", "gamma2"], f"got {got!r}"
    ids.pop("epsilon")


def batch_delete_rows():
    base.batch_append_rows(TABLE, [{"Name": "tmp1", "Count": 100},
                                   {"Name": "tmp2", "Count": 101}])
    rows = by_name(all_rows())
    assert {"tmp1", "tmp2"} <= set(rows), f"got {sorted(rows)!r}"
    res = base.batch_delete_rows(TABLE, [rows["tmp1"]["_id"], rows["tmp2"]["_id"]])
    assert isinstance(res, dict) and res.get("deleted_rows") == 2, \
        f"want deleted_rows 2, got {res!r}"
    got = sorted(names(all_rows()))
    assert got == ["alpha", "delta", "gamma2"], f"got {got!r}"


def kept_table():
    # "Kept" is four letters, so the client also sends it as a table_id
    # (seatable_api.utils.like_table_id): the server must still find the
    # table by its name.
    base.add_table("Kept", columns=[{"column_name": "Name", "column_type": "text"},
                                    {"column_name": "Count", "column_type": "number"}])
    row = base.append_row("Kept", {"Name": "kept-row", "Count": 7})
    rid = check_id(row)
    rows = base.list_rows("Kept")
    assert [(r.get("_id"), r.get("Name"), r.get("Count")) for r in rows] == \
        [(rid, "kept-row", 7)], f"got {rows!r}"
    res = base.query("select Name, Count from Kept")
    assert [(r.get("Name"), r.get("Count")) for r in res] == [("kept-row", 7)], f"got {res!r}"


CHECKS = [
    auth,
    wrong_token_refused,
    add_table_every_type,
    get_metadata,
    add_and_delete_table,
    rename_and_delete_tables_and_columns,
    insert_column,
    list_columns,
    append_row,
    batch_append_rows,
    values_by_type,
    options_created_on_first_use,
    list_rows_paging,
    list_rows_order_by,
    get_row,
    update_row,
    batch_update_rows,
    query_sql,
    query_sql_parameters,
    filter_rows_on_the_server,
    filter_and_update,
    filter_and_delete,
    delete_row,
    batch_delete_rows,
    kept_table,
]


if __name__ == "__main__":
    checks.run(CHECKS)
