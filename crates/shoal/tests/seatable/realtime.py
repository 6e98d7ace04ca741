"""Real-time events of the SeaTable-compatible API, with SeaTable's client.

SHOAL_URL, SHOAL_API_TOKEN (read-write) as for api.py. SHOAL_TRANSPORT is
"websocket" (the client's default: a polling handshake, then an upgrade)
or "polling" (long-polling only). SHOAL_EXPECT_REFUSAL=1 instead checks
that a bad access token is refused and disconnected.

A socket joins the base's room with base.auth(with_socket_io=True); writes
made through REST and through SQL must each arrive as one update-dtable
event with the operation and the version. Prints one line per check and
exits 0 only if every check passes.
"""

import json
import os
import time

import checks
from seatable_api import Base
from seatable_api import socket_io

URL = os.environ["SHOAL_URL"]
TOKEN = os.environ["SHOAL_API_TOKEN"]
TRANSPORT = os.environ.get("SHOAL_TRANSPORT", "websocket")

if TRANSPORT == "polling":
    # The client's Socket.IO object, told to stay on long-polling.
    connect = socket_io.SIO.connect

    def polling_only(self, *args, **kwargs):
        kwargs["transports"] = ["polling"]
        return connect(self, *args, **kwargs)

    socket_io.SIO.connect = polling_only


def wait_for(what, predicate, seconds=10):
    deadline = time.time() + seconds
    while time.time() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def refused():
    base = Base(TOKEN, URL)
    base.auth()
    base.jwt_token = base.jwt_token[:-2] + ("AA" if not base.jwt_token.endswith("AA") else "BB")
    errors = []
    base.socketIO = socket_io.SocketIO(base._clone())
    base.socketIO.sio.on("error", lambda msg, *a: errors.append(msg))
    base.socketIO._connect()
    wait_for("the refusal", lambda: errors)
    wait_for("the disconnect", lambda: not base.socketIO.sio.connected)
    print("ok   a tampered access token is refused and disconnected:", errors[0])


def main():
    if os.environ.get("SHOAL_EXPECT_REFUSAL") == "1":
        refused()
        return
    base = Base(TOKEN, URL)
    base.auth(with_socket_io=True)
    events = []
    base.socketIO.on("update-dtable", lambda data, version, *a: events.append((json.loads(data), version)))
    base.add_table("Live", columns=[
        {"column_name": "Name", "column_type": "text"},
        {"column_name": "Level", "column_type": "single-select"},
        {"column_name": "Notes", "column_type": "long-text"},
    ])
    wait_for("the join", lambda: base.socketIO.sio.connected)
    time.sleep(0.3)  # join-room is sent once connected
    meta = base.get_metadata()
    table = [t for t in meta["tables"] if t["name"] == "Live"][0]
    key = {c["name"]: c["key"] for c in table["columns"]}

    row = base.append_row("Live", {"Name": "first", "Level": "High", "Notes": "some text"})
    wait_for("insert_row", lambda: len(events) >= 1)
    op, version = events[0]
    assert op["op_type"] == "insert_row", op
    assert op["table_id"] == table["_id"] and op["row_id"] == row["_id"], (op, row)
    assert op["row_data"][key["Name"]] == "first", op
    level = [c for c in base.list_columns("Live") if c["name"] == "Level"][0]
    high = [o for o in level["data"]["options"] if o["name"] == "High"][0]
    assert op["row_data"][key["Level"]] == high["id"], (op, level)
    assert op["row_data"][key["Notes"]]["text"] == "some text", op
    assert isinstance(version, int), version
    print("ok   insert_row arrives with values by column key, options by id")

    base.update_row("Live", row["_id"], {"Name": "renamed"})
    wait_for("modify_row", lambda: len(events) >= 2)
    op, v2 = events[1]
    assert op["op_type"] == "modify_row" and op["row_id"] == row["_id"], op
    assert op["updated"][key["Name"]] == "renamed", op
    assert v2 > version, (v2, version)
    print("ok   modify_row")

    base.query("insert into Live (Name) values ('from sql')")
    wait_for("the SQL insert", lambda: len(events) >= 3)
    op, _ = events[2]
    assert op["op_type"] == "insert_row" and op["row_data"][key["Name"]] == "from sql", op
    assert len(op["row_id"]) == 22, op
    print("ok   a write made with SQL arrives too")

    base.delete_row("Live", row["_id"])
    wait_for("delete_row", lambda: len(events) >= 4)
    op, _ = events[3]
    assert op["op_type"] == "delete_row" and op["row_id"] == row["_id"], op
    print("ok   delete_row names the deleted row")

    time.sleep(0.5)
    assert len(events) == 4, f"want one event per write, got {events!r}"
    transport = base.socketIO.sio.transport()
    assert transport == TRANSPORT, f"want transport {TRANSPORT}, got {transport}"
    print(f"ok   one event per write, over {transport}")
    base.socketIO.sio.disconnect()


if __name__ == "__main__":
    checks.run([main])
