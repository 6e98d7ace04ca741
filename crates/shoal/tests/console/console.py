"""The web console in a real headless Chromium, against a real cluster.

Environment:
  SHOAL_NODE_URLS     comma-separated node URLs (n1, n2, n3 order)
  SHOAL_NODE_IDS      their node ids, in the same order
  SHOAL_PROXY_URL     a proxy of the same cluster
  SHOAL_TOKEN         the admin token
  SHOAL_KILL_PID      the pid of the last node's process (SIGKILLed here)
  SHOAL_SCREENSHOTS   optional: a directory for 1280x800 PNG screenshots

Prints one `ok   <what>` line per check; exits non-zero at the first failure.
Every wait is bounded.
"""

import json
import os
import shutil
import signal
import sys
import tempfile
import time
import urllib.error
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import checks  # noqa: E402

from selenium import webdriver  # noqa: E402
from selenium.common.exceptions import (  # noqa: E402
    NoSuchElementException,
    StaleElementReferenceException,
    TimeoutException,
)
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import Select, WebDriverWait  # noqa: E402

NODE_URLS = [u.rstrip("/") for u in os.environ["SHOAL_NODE_URLS"].split(",") if u]
NODE_IDS = [n for n in os.environ["SHOAL_NODE_IDS"].split(",") if n]
PROXY_URL = os.environ["SHOAL_PROXY_URL"].rstrip("/")
TOKEN = os.environ["SHOAL_TOKEN"]
KILL_PID = int(os.environ["SHOAL_KILL_PID"])
SHOTS = os.environ.get("SHOAL_SCREENSHOTS") or None

WIDTH, HEIGHT = 1280, 800
# The console re-polls every 2 s; a page change shows within a few polls.
SHORT = 15
# A killed node counts as dead once its registry lease expires (the test
# cluster's TTL is a few seconds), then its buckets elect new leaders.
DEAD = 40

assert len(NODE_URLS) == len(NODE_IDS) >= 2, "SHOAL_NODE_URLS and SHOAL_NODE_IDS must match"
NODE = NODE_URLS[0]
DEAD_ID = NODE_IDS[-1]
LIVE_IDS = NODE_IDS[:-1]

# The API, bypassing any proxy of the environment.
_http = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def api(method, path, body=None, base=NODE):
    """Calls the API; returns (status, parsed JSON)."""
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(base + path, data=data, method=method)
    req.add_header("Authorization", f"Bearer {TOKEN}")
    if data is not None:
        req.add_header("Content-Type", "application/json")
    try:
        with _http.open(req, timeout=10) as resp:
            raw = resp.read()
            return resp.status, json.loads(raw) if raw else None
    except urllib.error.HTTPError as e:
        raw = e.read()
        return e.code, json.loads(raw) if raw else None


def start_browser():
    options = webdriver.ChromeOptions()
    for arg in [
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-proxy-server",
        f"--window-size={WIDTH},{HEIGHT}",
        f"--user-data-dir={PROFILE}",
    ]:
        options.add_argument(arg)
    options.binary_location = "/usr/bin/chromium"
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    d = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)
    d.set_page_load_timeout(30)
    d.set_script_timeout(30)
    # Screenshots are of the page's viewport: make it exactly 1280x800.
    d.execute_cdp_cmd(
        "Emulation.setDeviceMetricsOverride",
        {"width": WIDTH, "height": HEIGHT, "deviceScaleFactor": 1, "mobile": False},
    )
    return d


PROFILE = tempfile.mkdtemp(prefix="shoal-console-chromium-")
driver = None
state = {}


def js(script, *args):
    return driver.execute_script(script, *args)


def wait(cond, timeout=SHORT, what="condition"):
    """Waits (bounded) until cond() is truthy; returns its value."""
    w = WebDriverWait(
        driver,
        timeout,
        poll_frequency=0.2,
        ignored_exceptions=(StaleElementReferenceException, NoSuchElementException),
    )
    try:
        return w.until(lambda _d: cond())
    except TimeoutException:
        raise AssertionError(f"timed out after {timeout} s waiting for {what}") from None


def find(css, timeout=SHORT):
    """The visible element matching css, waiting for it."""
    def visible():
        el = driver.find_element(By.CSS_SELECTOR, css)
        return el if el.is_displayed() else None
    return wait(visible, timeout, f"{css} to show")


def click(css, timeout=SHORT):
    def clickable():
        el = driver.find_element(By.CSS_SELECTOR, css)
        if el.is_displayed() and el.is_enabled():
            el.click()
            return True
        return False
    wait(clickable, timeout, f"{css} to be clickable")


def type_into(css, text):
    el = find(css)
    el.clear()
    el.send_keys(text)
    return el


def text_of(css):
    return js("const e = document.querySelector(arguments[0]); return e ? e.textContent : null;", css)


def collect_logs():
    """Keeps the browser's console messages (reading them empties its buffer)."""
    try:
        state.setdefault("logs", []).extend(driver.get_log("browser"))
    except Exception:
        pass


def shot(name):
    collect_logs()
    if not SHOTS:
        return
    os.makedirs(SHOTS, exist_ok=True)
    # Let the last render settle (fonts, a poll in flight).
    time.sleep(0.3)
    driver.save_screenshot(os.path.join(SHOTS, f"{name}.png"))


def open_console(base):
    collect_logs()
    driver.get(base + "/ui/")
    find("#token")


def sign_in(token):
    type_into("#token", token)
    click("#sign-in")


def search_until(cond, what, timeout=SHORT):
    """Submits the Bases page's search until cond() holds: a list is read
    from the replicas, so a base just created may take a moment to show."""
    def again():
        if cond():
            return True
        click("#search")
        try:
            WebDriverWait(driver, 1, poll_frequency=0.1).until(lambda _d: cond())
            return True
        except TimeoutException:
            return False
    wait(again, timeout, what)


def map_leaders():
    """{bucket: leader} as the bucket map's cells show them."""
    return js(
        "const m = {}; for (const c of document.querySelectorAll('#bucket-grid .cell[data-bucket]'))"
        " m[c.dataset.bucket] = c.dataset.leader; return m;"
    )


def api_leaders():
    status, body = api("GET", "/v1/cluster/buckets")
    assert status == 200, f"GET /v1/cluster/buckets: {status} {body}"
    return {b["bucket"]: b["leader"] or "" for b in body["buckets"]}


# The checks, in order.


def a_wrong_token_is_refused():
    """a wrong admin token is refused with a clear message"""
    open_console(NODE)
    sign_in("not-the-admin-token")
    msg = wait(lambda: text_of("#signin-message .banner.error"), SHORT, "the sign-in error")
    assert "Wrong admin token" in msg, f"unexpected message: {msg!r}"
    assert js("return sessionStorage.length") == 0, "a refused token was kept"
    assert find("#token").is_displayed()
    shot("signin-error")


def the_admin_token_signs_in():
    """the admin token signs in; it is kept in sessionStorage only"""
    sign_in(TOKEN)
    wait(lambda: js("return location.hash") == "#/cluster" and driver.find_element(By.ID, "nodes"),
         SHORT, "the cluster page")
    assert js("return sessionStorage.getItem('shoal.admin-token')") == TOKEN
    assert js("return localStorage.length") == 0, "the token went to localStorage"
    assert js("return document.cookie") == "", "the console set a cookie"
    assert TOKEN not in driver.current_url
    # Marks this page: if the console ever reloads it, the mark is gone.
    js("window.__shoalNoReload = true")


def the_cluster_page_shows_three_live_nodes():
    """the cluster page shows every node live, the monitor and the placement"""
    def all_live():
        rows = js(
            "return Array.from(document.querySelectorAll('#nodes-body tr[data-node]'))"
            ".map(r => [r.dataset.node, r.dataset.live, r.querySelector('.leaders').textContent])"
        )
        live = {n for n, l, _ in rows if l == "true"}
        if live != set(NODE_IDS):
            return None
        leaders = [int(x) for _, _, x in rows if x.isdigit()]
        return rows if sum(leaders) == 256 else None
    wait(all_live, SHORT, f"nodes {NODE_IDS} live with 256 leaders among them")
    assert "http" in (text_of("#summary-monitor") or ""), "no active monitor shown"
    assert text_of("#summary-rf") == "3"
    links = js("return Array.from(document.querySelectorAll('#nodes-body a')).map(a => a.getAttribute('href'))")
    for url in NODE_URLS:
        assert f"{url}/ui/" in links, f"no link to {url}/ui/ in {links}"
    shot("cluster")


def rebalance_asks_first():
    """Rebalance asks in an in-page dialog; Cancel does nothing, Rebalance requests it"""
    click("#rebalance")
    find("#confirm-dialog")
    click("#confirm-cancel")
    wait(lambda: js("return document.getElementById('confirm-dialog') === null"), SHORT, "the dialog to close")
    assert not text_of("#rebalance-message"), "cancel still requested a rebalance"
    click("#rebalance")
    click("#confirm-ok")
    msg = wait(lambda: text_of("#rebalance-message .banner.ok"), SHORT, "the rebalance answer")
    assert "Rebalance requested" in msg, msg


def the_bucket_map_shows_every_leader():
    """the bucket map's 256 cells show the leaders GET /v1/cluster/buckets reports"""
    click("#nav-buckets")
    wait(lambda: js("return document.querySelectorAll('#bucket-grid .cell[data-bucket]').length") == 256,
         SHORT, "256 cells")
    last = {}

    def same():
        want = api_leaders()
        got = map_leaders()
        last["want"], last["got"] = want, got
        return len(got) == 256 and got == want and all(want.values())
    try:
        wait(same, 20, "the map to match the API")
    except AssertionError:
        diff = {b: (last["got"].get(b), l) for b, l in last.get("want", {}).items() if last["got"].get(b) != l}
        raise AssertionError(f"cells differ from the API (page, api): {dict(list(diff.items())[:10])}")
    labels = js("return Array.from(document.querySelectorAll('#bucket-grid .cell')).map(c => c.dataset.bucket)")
    assert labels == [f"{i:02x}" for i in range(256)], "cells are not 00..ff in order"
    legend = js("return Array.from(document.querySelectorAll('#legend .legend-item[data-node]')).map(e => e.dataset.node)")
    assert set(NODE_IDS) <= set(legend), f"legend {legend} misses a node"
    shot("buckets")


def a_bucket_detail_shows_its_replicas():
    """a click on a cell opens the bucket's detail: leader, term, each replica's Raft state"""
    click('#bucket-grid .cell[data-bucket="0a"]')
    wait(lambda: text_of("#detail-bucket") == "0a" and js("return location.hash") == "#/buckets/0a",
         SHORT, "bucket 0a's detail")
    wait(lambda: js("return document.querySelectorAll('#bucket-states tr[data-role]').length") == 3,
         SHORT, "three replica states")
    roles = js("return Array.from(document.querySelectorAll('#bucket-states tr[data-role]')).map(r => [r.dataset.node, r.dataset.role])")
    leaders = [n for n, r in roles if r == "leader"]
    assert len(leaders) == 1, f"want one leader among {roles}"
    wait(lambda: text_of("#detail-leader") == js("return document.querySelector('#bucket-states tr[data-role=leader]')?.dataset.node"),
         SHORT, "the leader shown to match the replicas' roles")
    assert js("return document.querySelector('.cell[data-bucket=\"0a\"]').classList.contains('selected')")
    wait(lambda: "loading" not in (text_of("#bucket-bases") or "loading"), SHORT, "the bucket's bases")


def a_base_is_created_from_the_bases_page():
    """the Bases page creates a base and finds it by name"""
    name = f"console-check-{os.getpid()}"
    state["name"] = name
    click("#nav-bases")
    find("#new-base-name")
    type_into("#new-base-name", name)
    click("#create-base")
    link = find("#created-base")
    base_id = link.get_attribute("data-base")
    state["id"] = base_id
    status, body = api("GET", f"/v1/bases/{base_id}")
    assert status == 200 and body["name"] == name, f"GET the new base: {status} {body}"
    state["bucket"] = body["bucket"]
    type_into("#base-search", name)
    search_until(lambda: js("return Array.from(document.querySelectorAll('#bases-body tr[data-base]')).map(r => r.dataset.base)") == [base_id],
                 "the search to list exactly the new base")
    shot("bases")


def the_bucket_detail_lists_the_base():
    """the bucket detail lists the bases of its bucket"""
    driver.get(f"{NODE}/ui/#/buckets/{state['bucket']}")
    href = f"#/bases/{state['id']}"
    wait(lambda: href in js("return Array.from(document.querySelectorAll('#bucket-bases a')).map(a => a.getAttribute('href'))"),
         SHORT, f"base {state['id']} in bucket {state['bucket']}'s detail")
    wait(lambda: js("return document.querySelectorAll('#bucket-states tr[data-role]').length") == 3,
         SHORT, "three replica states")
    shot("bucket-detail")
    js("window.__shoalNoReload = true")


def the_base_opens():
    """the base opens from its link: name, id, no tables yet"""
    click(f'#bucket-bases a[href="#/bases/{state["id"]}"]')
    wait(lambda: text_of("#base-title") == state["name"], SHORT, "the base's page")
    assert text_of("#base-id") == state["id"]
    wait(lambda: "no tables yet" in (text_of("#table-detail") or ""), SHORT, "an empty base")


def the_change_feed_opens():
    """the change feed view connects (token as a WebSocket subprotocol)"""
    click("#feed-toggle")
    wait(lambda: js("return document.getElementById('feed-status').dataset.state") == "live",
         SHORT, "the feed to be live")


def a_write_in_the_sql_console_applies():
    """a write in the SQL console creates a table and inserts a row"""
    click("#tab-sql")
    click("#mode-write")
    type_into(
        "#sql",
        "CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT NOT NULL, n REAL);\n"
        "INSERT INTO notes (body, n) VALUES ('hello from the console', 1.5);",
    )
    click("#run-sql")
    summary = wait(lambda: (text_of("#sql-summary") or "").startswith("Applied at log index") and text_of("#sql-summary"),
                   SHORT, "the write's result")
    rows = js("return Array.from(document.querySelectorAll('#sql-write-table tbody tr')).map(r => Array.from(r.cells).map(c => c.textContent))")
    assert len(rows) == 2, f"want two statements' results, got {rows}"
    assert rows[1][2] == "1", f"the insert affected {rows[1][2]} rows"
    state["write"] = summary


def a_read_in_the_sql_console_shows_the_row():
    """a read in the SQL console shows the row in a results table"""
    click("#mode-read")
    Select(find("#consistency")).select_by_value("linearizable")
    type_into("#sql", "SELECT id, body, n FROM notes ORDER BY id")
    click("#run-sql")
    wait(lambda: js("return document.querySelectorAll('#sql-result-table tbody tr').length") == 1,
         SHORT, "one result row")
    head = js("return Array.from(document.querySelectorAll('#sql-result-table thead th')).map(c => c.textContent)")
    row = js("return Array.from(document.querySelectorAll('#sql-result-table tbody td')).map(c => c.textContent)")
    assert head == ["id", "body", "n"], head
    assert row == ["1", "hello from the console", "1.5"], row
    shot("sql")


def the_feed_shows_the_write():
    """the change feed shows the write's events (ddl and insert, with the row)"""
    def events():
        evs = js(
            "return Array.from(document.querySelectorAll('#feed-events tr.event'))"
            ".map(r => [r.dataset.op, r.dataset.table || '', r.dataset.rowid || '', r.cells[4].textContent])"
        )
        ops = [e[0] for e in evs]
        return evs if "ddl" in ops and "insert" in ops else None
    evs = wait(events, SHORT, "a ddl and an insert event in the feed")
    insert = [e for e in evs if e[0] == "insert"][0]
    assert insert[1] == "notes" and insert[2] == "1", insert
    assert json.loads(insert[3]) == {"id": 1, "body": "hello from the console", "n": 1.5}, insert[3]


def a_bad_statement_shows_the_apis_message():
    """a bad statement shows the API's error message as it is"""
    bad = "SELEC body FROM notes"
    status, body = api("POST", f"/v1/bases/{state['id']}/query", {"sql": bad})
    assert status == 400, f"the API answered {status} {body}"
    want = body["error"]["message"]
    type_into("#sql", bad)
    click("#run-sql")
    got = wait(lambda: text_of("#sql-error-message"), SHORT, "the error message")
    assert got == want, f"page shows {got!r}, the API says {want!r}"
    assert "invalid_sql" in (text_of("#sql-error-code") or "")
    assert js("return document.querySelectorAll('#sql-result-table').length") == 0, "stale results still shown"


def the_tables_tab_pages_and_orders_rows():
    """the Tables tab shows the schema and the rows, paged and ordered by a header click"""
    rows = [{"body": f"row {i:02d}", "n": float(i)} for i in range(2, 61)]
    status, body = api("POST", f"/v1/bases/{state['id']}/tables/notes/rows", {"rows": rows})
    assert status == 201, f"insert rows: {status} {body}"
    click("#tab-tables")
    wait(lambda: js("return document.querySelectorAll('#schema-table tbody tr').length") == 3, SHORT, "the schema")
    cols = js("return Array.from(document.querySelectorAll('#schema-table tbody tr')).map(r => r.dataset.column)")
    assert cols == ["id", "body", "n"], cols

    def first_rows(n):
        return js("return Array.from(document.querySelectorAll('#rows-body tr')).slice(0, arguments[0]).map(r => r.dataset.rowid)", n)

    wait(lambda: js("return document.querySelectorAll('#rows-body tr[data-rowid]').length") == 50, SHORT, "a page of 50 rows")
    assert first_rows(2) == ["1", "2"], first_rows(2)
    click('#rows th[data-column="n"]')
    wait(lambda: first_rows(1) == ["1"] and "▲" in (text_of('#rows th[data-column="n"]') or ""), SHORT, "rows ordered by n ascending")
    click('#rows th[data-column="n"]')
    wait(lambda: first_rows(2) == ["60", "59"], SHORT, "rows ordered by n descending")
    click("#rows-next")
    wait(lambda: (text_of("#rows-status") or "") == "rows 51–60" and first_rows(1) == ["10"], SHORT, "the second page")
    click("#rows-prev")
    wait(lambda: first_rows(1) == ["60"], SHORT, "the first page again")
    shot("base")


def the_feed_shows_updates_and_deletes():
    """an update and a delete from the SQL console arrive in the change feed"""
    click("#tab-sql")
    click("#mode-write")
    type_into("#sql", "UPDATE notes SET body = 'changed by the console' WHERE id = 2;\nDELETE FROM notes WHERE id = 3;")
    click("#run-sql")
    wait(lambda: js("return Array.from(document.querySelectorAll('#sql-write-table td.stmt')).map(c => c.textContent.split(' ')[0])") == ["UPDATE", "DELETE"],
         SHORT, "the write's result")

    def seen():
        return js(
            "const u = document.querySelector('#feed-events tr.event[data-op=update][data-rowid=\"2\"]');"
            "const d = document.querySelector('#feed-events tr.event[data-op=delete][data-rowid=\"3\"]');"
            "return u && d ? u.cells[4].textContent : null;"
        )
    row = wait(seen, SHORT, "the update and the delete in the feed")
    assert json.loads(row)["body"] == "changed by the console", row
    shot("feed")


def a_killed_node_turns_dead_on_the_cluster_page():
    """a SIGKILLed node turns dead on the cluster page, without a reload"""
    js("window.__shoalNoReload = true")
    click("#nav-cluster")
    wait(lambda: js("return document.querySelectorAll('#nodes-body tr[data-live=true]').length") == len(NODE_IDS),
         SHORT, "every node live before the kill")
    os.kill(KILL_PID, signal.SIGKILL)
    state["killed_at"] = time.monotonic()
    wait(lambda: js("return document.querySelector(arguments[0])?.dataset.live", f'#nodes-body tr[data-node="{DEAD_ID}"]') == "false",
         DEAD, f"{DEAD_ID} to show dead")
    assert js("return window.__shoalNoReload === true"), "the page was reloaded"
    for n in LIVE_IDS:
        assert js("return document.querySelector(arguments[0])?.dataset.live", f'#nodes-body tr[data-node="{n}"]') == "true", f"{n} not live"


def no_bucket_names_the_dead_node_as_leader():
    """the bucket map stops naming the dead node as a leader, without a reload"""
    click("#nav-buckets")
    left = max(5.0, DEAD - (time.monotonic() - state["killed_at"]))

    def moved():
        leaders = map_leaders()
        return len(leaders) == 256 and DEAD_ID not in leaders.values() and all(leaders.values())
    wait(moved, left, f"no cell led by {DEAD_ID} and every bucket led")
    assert js("return window.__shoalNoReload === true"), "the page was reloaded"


def sign_out_forgets_the_token():
    """Sign out forgets the token and shows the sign-in form"""
    click("#sign-out")
    find("#token")
    assert js("return sessionStorage.length") == 0, "the token is still kept"
    driver.refresh()
    find("#token")


def the_console_works_through_the_proxy():
    """the console served by the proxy signs in and shows the cluster and the base"""
    open_console(PROXY_URL)
    sign_in(TOKEN)
    wait(lambda: js("return location.hash") == "#/cluster", SHORT, "the proxy's cluster page")
    wait(lambda: js(
        "return Array.from(document.querySelectorAll('#nodes-body tr[data-node]')).map(r => r.dataset.node + '=' + r.dataset.live).sort().join(',')"
    ) == ",".join(sorted(f"{n}={'false' if n == DEAD_ID else 'true'}" for n in NODE_IDS)), SHORT, "the nodes through the proxy")
    driver.get(f"{PROXY_URL}/ui/#/bases/{state['id']}/sql")
    wait(lambda: text_of("#base-title") == state["name"], SHORT, "the base through the proxy")
    type_into("#sql", "SELECT count(*) AS rows FROM notes")
    click("#run-sql")
    wait(lambda: js("return Array.from(document.querySelectorAll('#sql-result-table tbody td')).map(c => c.textContent)") == ["59"],
         SHORT, "the read through the proxy")


def a_base_is_dropped_after_confirmation():
    """a base is dropped from the Bases page after an in-page confirmation"""
    name = f"console-drop-{os.getpid()}"
    status, body = api("POST", "/v1/bases", {"name": name}, base=PROXY_URL)
    assert status == 201, f"create: {status} {body}"
    drop_id = body["id"]
    click("#nav-bases")
    type_into("#base-search", name)
    row = f'#bases-body tr[data-base="{drop_id}"]'
    search_until(lambda: js("return document.querySelector(arguments[0]) !== null", row), f"base {drop_id} in the list")
    click(f"{row} button.drop")
    wait(lambda: drop_id in (text_of("#confirm-dialog .dialog-message") or ""), SHORT, "the drop dialog")
    click("#confirm-ok")
    wait(lambda: text_of("#dropped") and js("return document.querySelector(arguments[0])", row) is None,
         SHORT, "the base to leave the list")
    status, _ = api("GET", f"/v1/bases/{drop_id}", base=PROXY_URL)
    assert status == 404, f"the dropped base answers {status}"


def no_script_error_and_no_policy_violation():
    """the pages raised no script error and broke no Content-Security-Policy rule"""
    collect_logs()
    bad = [
        e for e in state.get("logs", [])
        if e.get("source") == "javascript"
        or "Content Security Policy" in e.get("message", "")
        or "Refused to" in e.get("message", "")
    ]
    assert not bad, "\n".join(f"{e.get('level')} {e.get('message')}" for e in bad)


def main():
    global driver
    try:
        driver = start_browser()
    except BaseException:
        shutil.rmtree(PROFILE, ignore_errors=True)
        raise
    try:
        checks.run([
            a_wrong_token_is_refused,
            the_admin_token_signs_in,
            the_cluster_page_shows_three_live_nodes,
            rebalance_asks_first,
            the_bucket_map_shows_every_leader,
            a_bucket_detail_shows_its_replicas,
            a_base_is_created_from_the_bases_page,
            the_bucket_detail_lists_the_base,
            the_base_opens,
            the_change_feed_opens,
            a_write_in_the_sql_console_applies,
            a_read_in_the_sql_console_shows_the_row,
            the_feed_shows_the_write,
            a_bad_statement_shows_the_apis_message,
            the_tables_tab_pages_and_orders_rows,
            the_feed_shows_updates_and_deletes,
            a_killed_node_turns_dead_on_the_cluster_page,
            no_bucket_names_the_dead_node_as_leader,
            sign_out_forgets_the_token,
            the_console_works_through_the_proxy,
            a_base_is_dropped_after_confirmation,
            no_script_error_and_no_policy_violation,
        ])
    except SystemExit as e:
        if e.code:
            collect_logs()
            for entry in state.get("logs", []):
                print(f"browser log: {entry.get('level')} {entry.get('message')}")
        raise
    finally:
        try:
            driver.quit()
        finally:
            shutil.rmtree(PROFILE, ignore_errors=True)


if __name__ == "__main__":
    main()
