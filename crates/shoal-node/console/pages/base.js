// One base: its tables (schema and rows, paged and ordered), a SQL console
// and a live view of its change feed.
//
// Routes: #/bases/ID, #/bases/ID/tables[/TABLE], #/bases/ID/sql.

import { api, idempotent, openFeed, qs } from "../api.js";
import { fill, h, showError, timeText, valueCell } from "../dom.js";
import { splitStatements } from "../sql.js";

const ROWS_PER_PAGE = 50;
const FEED_MAX_EVENTS = 500;

export function mount(root, params) {
  const baseId = params.id;
  const enc = encodeURIComponent(baseId);
  const headSlot = h("div", { class: "slot", id: "base-error" });
  const title = h("h1", { id: "base-title", text: "Base" });
  const meta = h("div", { class: "base-meta", id: "base-meta" });
  const tabTables = h("a", { class: "tab", id: "tab-tables", href: `#/bases/${enc}/tables`, text: "Tables" });
  const tabSql = h("a", { class: "tab", id: "tab-sql", href: `#/bases/${enc}/sql`, text: "SQL console" });
  const tablesPane = h("section", { class: "pane", id: "tables-pane" });
  const sqlPane = h("section", { class: "pane", id: "sql-pane" });
  const feedPane = h("aside", { class: "feed card", id: "feed" });

  const layout = h("div", { class: "base-layout" },
      h("div", { class: "base-main" },
        h("nav", { class: "tabs" }, tabTables, tabSql),
        tablesPane,
        sqlPane),
      feedPane);
  fill(
    root,
    h("div", { class: "page-head" },
      h("a", { href: "#/bases", class: "back", text: "← Bases" }),
      title),
    meta,
    headSlot,
    layout,
  );

  const tables = tablesView(baseId, tablesPane);
  const sql = sqlView(baseId, sqlPane, () => tables.stale());
  const feed = feedView(baseId, feedPane);
  let tab = null;

  function route(p) {
    if (p.id !== baseId) return false;
    const want = p.tab === "sql" ? "sql" : "tables";
    tabTables.classList.toggle("active", want === "tables");
    tabSql.classList.toggle("active", want === "sql");
    tablesPane.hidden = want !== "tables";
    sqlPane.hidden = want !== "sql";
    if (want === "tables") tables.show(p.table || null);
    else if (tab !== "sql") sql.focus();
    tab = want;
    return true;
  }

  loadHead();
  route(params);

  async function loadHead() {
    let base;
    try {
      base = await api("GET", `/v1/bases/${enc}`);
    } catch (e) {
      title.textContent = baseId;
      if (e.status === 404) {
        // Nothing to show below: no tables, no SQL, no feed.
        layout.hidden = true;
        feed.dispose();
        // A monitor has no /v1/bases at all; a node or proxy says the base is unknown.
        let monitor = false;
        try {
          await api("GET", "/v1/bases?limit=1");
        } catch (e2) {
          monitor = e2.status === 404;
        }
        showError(headSlot, e, monitor
          ? "This process serves no bases (it is a monitor); open the console on a node or a proxy"
          : "No such base");
      } else {
        showError(headSlot, e, "Could not read the base");
      }
      return;
    }
    title.textContent = base.name || "(no name)";
    const item = (label, ...value) => h("span", { class: "meta-item" }, h("span", { class: "muted", text: `${label} ` }), value);
    const leader = h("span", { id: "base-leader", text: "…" });
    fill(
      meta,
      item("id", h("span", { class: "mono", id: "base-id", text: base.id })),
      item("bucket", h("a", { class: "mono", href: `#/buckets/${base.bucket}`, text: base.bucket })),
      item("created", timeText(base.created_at)),
      item("leader", leader),
    );
    try {
      const loc = await api("GET", `/v1/bases/${enc}/location`);
      leader.textContent = loc.leader ? `${loc.leader.node_id} (${loc.leader.node_url})` : "none known";
    } catch {
      leader.textContent = "unknown";
    }
  }

  return {
    route,
    dispose() {
      feed.dispose();
      tables.dispose();
    },
  };
}

/** The Tables tab: a list of tables, the chosen one's schema and rows. */
function tablesView(baseId, pane) {
  const enc = encodeURIComponent(baseId);
  const errorSlot = h("div", { class: "slot", id: "tables-error" });
  const list = h("div", { class: "table-list", id: "table-list" });
  const detail = h("div", { class: "table-detail", id: "table-detail" });
  const refresh = h("button", { type: "button", class: "small", id: "tables-refresh", text: "Refresh", on: { click: () => { loaded = false; show(current); } } });
  fill(pane, h("div", { class: "toolbar" }, h("span", { class: "muted", text: "Tables:" }), list, h("div", { class: "grow" }), refresh), errorSlot, detail);

  let loaded = false;
  let schema = []; // [{name, columns}]
  let current = null; // table name
  let order = { column: null, desc: false };
  let offset = 0;
  let seq = 0;
  let rowsTable = null;

  async function show(table) {
    if (!loaded) {
      const mine = ++seq;
      fill(list, h("span", { class: "muted", text: "loading…" }));
      try {
        const r = await api("GET", `/v1/bases/${enc}/tables`);
        if (mine !== seq) return;
        schema = r.tables || [];
        loaded = true;
        fill(errorSlot);
      } catch (e) {
        if (mine !== seq) return;
        fill(list);
        showError(errorSlot, e, "Could not read the tables");
        return;
      }
    }
    if (table !== current) {
      order = { column: null, desc: false };
      offset = 0;
    }
    current = table && schema.some((t) => t.name === table) ? table : null;
    if (!current && schema.length) current = table === null ? schema[0].name : null;
    renderList();
    if (current) {
      renderSchema();
      loadRows();
    } else {
      fill(detail, h("p", { class: "muted", text: schema.length ? `no table named "${table}"` : "This base has no tables yet. Create one in the SQL console." }));
    }
  }

  function renderList() {
    fill(list, schema.length === 0
      ? h("span", { class: "muted", text: "none" })
      : schema.map((t) => h("a", {
        class: `chip table-link${t.name === current ? " active" : ""}`,
        href: `#/bases/${enc}/tables/${encodeURIComponent(t.name)}`,
        dataset: { table: t.name },
        text: t.name,
      })));
  }

  function renderSchema() {
    const t = schema.find((x) => x.name === current);
    const columns = ["_rowid", ...t.columns.map((c) => c.name)];
    const head = h("tr", {}, columns.map((c) => {
      const active = order.column === c;
      return h("th", {
        class: `sortable${active ? " sorted" : ""}`,
        dataset: { column: c },
        title: `order by ${c}`,
        "aria-sort": active ? (order.desc ? "descending" : "ascending") : "none",
        on: { click: () => sortBy(c) },
      }, c, h("span", { class: "sort-mark", text: active ? (order.desc ? " ▼" : " ▲") : "" }));
    }));
    rowsTable = {
      columns,
      body: h("tbody", { id: "rows-body" }),
      status: h("span", { class: "muted", id: "rows-status" }),
      prev: h("button", { type: "button", class: "small", id: "rows-prev", text: "← Previous", on: { click: () => page(-1) } }),
      next: h("button", { type: "button", class: "small", id: "rows-next", text: "Next →", on: { click: () => page(1) } }),
      slot: h("div", { class: "slot", id: "rows-error" }),
    };
    fill(
      detail,
      h("details", { class: "schema", id: "schema", open: true },
        h("summary", {}, "Schema of ", h("span", { class: "mono", text: t.name })),
        h("table", { class: "grid compact", id: "schema-table" },
          h("thead", {}, h("tr", {}, ["Column", "Type", "Not null", "Default", "Primary key"].map((x) => h("th", { text: x })))),
          h("tbody", {}, t.columns.map((c) => h("tr", { dataset: { column: c.name } },
            h("td", { class: "mono", text: c.name }),
            h("td", { text: c.type || "" }),
            h("td", { text: c.notnull ? "yes" : "" }),
            h("td", { class: c.default === null || c.default === undefined ? "null" : "mono", text: c.default === null || c.default === undefined ? "" : String(c.default) }),
            h("td", { text: c.pk ? String(c.pk) : "" })))))),
      h("div", { class: "rows-head" }, h("h3", { text: "Rows" }), rowsTable.status, h("div", { class: "grow" }), rowsTable.prev, rowsTable.next),
      rowsTable.slot,
      h("div", { class: "scroll-x" }, h("table", { class: "grid rows", id: "rows" }, h("thead", {}, head), rowsTable.body)),
    );
  }

  function sortBy(column) {
    if (order.column === column) order.desc = !order.desc;
    else order = { column, desc: false };
    offset = 0;
    renderSchema();
    loadRows();
  }

  function page(dir) {
    offset = Math.max(0, offset + dir * ROWS_PER_PAGE);
    loadRows();
  }

  async function loadRows() {
    const mine = ++seq;
    const rt = rowsTable;
    rt.prev.disabled = true;
    rt.next.disabled = true;
    rt.status.textContent = "loading…";
    let r;
    try {
      r = await api("GET", `/v1/bases/${enc}/tables/${encodeURIComponent(current)}/rows${qs({
        limit: ROWS_PER_PAGE,
        offset,
        order_by: order.column,
        desc: order.column && order.desc ? "true" : null,
      })}`);
    } catch (e) {
      if (mine !== seq) return;
      rt.status.textContent = "";
      showError(rt.slot, e, "Could not read the rows");
      rt.prev.disabled = offset === 0;
      return;
    }
    if (mine !== seq) return;
    fill(rt.slot);
    const rows = r.rows || [];
    fill(rt.body, rows.length === 0
      ? h("tr", {}, h("td", { colspan: String(rt.columns.length), class: "muted", text: offset ? "no more rows" : "no rows" }))
      : rows.map((row) => h("tr", { dataset: { rowid: row._rowid } }, rt.columns.map((c) => valueCell(row[c])))));
    rt.status.textContent = rows.length ? `rows ${offset + 1}–${offset + rows.length}` : "";
    rt.prev.disabled = offset === 0;
    rt.next.disabled = rows.length < ROWS_PER_PAGE;
  }

  return {
    show,
    /** A write may have changed the schema: re-read it on the next show. */
    stale() {
      loaded = false;
    },
    dispose() {
      seq++;
    },
  };
}

/** The SQL console: a textarea, Read or Write, consistency for reads, results. */
function sqlView(baseId, pane, onWrite) {
  const enc = encodeURIComponent(baseId);
  const text = h("textarea", {
    id: "sql",
    class: "mono",
    rows: "7",
    spellcheck: "false",
    placeholder: "SELECT * FROM t LIMIT 10\n\n(Ctrl+Enter runs; a write may hold several statements separated by ;)",
  });
  const modeRead = h("input", { type: "radio", name: "sql-mode", id: "mode-read", value: "read", checked: true });
  const modeWrite = h("input", { type: "radio", name: "sql-mode", id: "mode-write", value: "write" });
  const consistency = h("select", { id: "consistency", title: "how fresh the read must be" },
    h("option", { value: "linearizable", text: "linearizable (default)" }),
    h("option", { value: "leader", text: "leader" }),
    h("option", { value: "none", text: "none (any replica)" }));
  const run = h("button", { type: "submit", class: "primary", id: "run-sql", text: "Run" });
  const errorSlot = h("div", { class: "slot", id: "sql-error" });
  const result = h("div", { id: "sql-result" });

  const syncMode = () => {
    consistency.disabled = modeWrite.checked;
    run.textContent = modeWrite.checked ? "Run write" : "Run read";
  };
  modeRead.addEventListener("change", syncMode);
  modeWrite.addEventListener("change", syncMode);
  text.addEventListener("keydown", (e) => {
    if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) {
      e.preventDefault();
      exec();
    }
  });

  fill(
    pane,
    h("form", { id: "sql-form", class: "sql-form", on: { submit: (e) => { e.preventDefault(); exec(); } } },
      text,
      h("div", { class: "toolbar" },
        h("fieldset", { class: "mode" },
          h("legend", { text: "Mode" }),
          h("label", {}, modeRead, " Read"),
          h("label", {}, modeWrite, " Write")),
        h("label", { for: "consistency", text: "Consistency" }),
        consistency,
        h("div", { class: "grow" }),
        run)),
    errorSlot,
    result,
  );
  syncMode();

  async function exec() {
    const sql = text.value;
    if (!sql.trim()) {
      fill(errorSlot, h("div", { class: "banner error", role: "alert" }, h("span", { class: "banner-text", text: "Enter a SQL statement." })));
      return;
    }
    const write = modeWrite.checked;
    run.disabled = true;
    fill(errorSlot);
    fill(result, h("p", { class: "muted", text: "running…" }));
    const started = performance.now();
    try {
      if (write) {
        const statements = splitStatements(sql).map((s) => ({ sql: s }));
        const r = await api("POST", `/v1/bases/${enc}/execute`, { statements }, idempotent());
        showWrite(r, statements, performance.now() - started);
        onWrite();
      } else {
        const r = await api("POST", `/v1/bases/${enc}/query`, { sql, consistency: consistency.value }, { retry: true });
        showRead(r, performance.now() - started);
      }
    } catch (e) {
      fill(result);
      // The API's own message, as it is.
      fill(errorSlot, h("div", { class: "banner error", role: "alert" },
        h("span", { class: "banner-text", id: "sql-error-message", text: e.message }),
        e.code ? h("span", { class: "banner-detail", id: "sql-error-code", text: `(${e.code}${e.status ? `, HTTP ${e.status}` : ""})` }) : null));
    } finally {
      run.disabled = false;
    }
  }

  function showRead(r, ms) {
    const columns = r.columns || [];
    const types = r.types || [];
    const rows = r.rows || [];
    fill(
      result,
      h("p", { class: "muted", id: "sql-summary", text: `${rows.length} row${rows.length === 1 ? "" : "s"} · ${Math.round(ms)} ms` }),
      h("div", { class: "scroll-x" },
        h("table", { class: "grid rows", id: "sql-result-table" },
          h("thead", {}, h("tr", {}, columns.map((c, i) => h("th", { title: types[i] || "", text: c })))),
          h("tbody", {}, rows.map((row) => h("tr", {}, row.map((v) => valueCell(v))))))),
    );
  }

  function showWrite(r, statements, ms) {
    fill(
      result,
      h("p", { class: "ok-text", id: "sql-summary", text: `Applied at log index ${r.index} · ${Math.round(ms)} ms` }),
      h("table", { class: "grid compact", id: "sql-write-table" },
        h("thead", {}, h("tr", {}, ["#", "Statement", "Rows affected", "Last insert rowid"].map((t) => h("th", { text: t })))),
        h("tbody", {}, (r.results || []).map((x, i) => h("tr", {},
          h("td", { class: "num", text: String(i + 1) }),
          h("td", { class: "mono stmt", text: statements[i] ? statements[i].sql : "" }),
          h("td", { class: "num", text: x.error ? "" : String(x.rows_affected) }),
          h("td", { class: "num", text: x.error ? (x.error.message || JSON.stringify(x.error)) : String(x.last_insert_rowid) }))))),
    );
  }

  return { focus: () => text.focus() };
}

/** A row as JSON with a space after each colon and comma, so it wraps between values. */
function rowJson(row) {
  if (row === null || typeof row !== "object" || Array.isArray(row)) return JSON.stringify(row);
  return `{${Object.entries(row).map(([k, v]) => `${JSON.stringify(k)}: ${JSON.stringify(v)}`).join(", ")}}`;
}

/** The live change feed over a WebSocket, reconnecting after the last index seen. */
function feedView(baseId, pane) {
  const status = h("span", { class: "pill stopped", id: "feed-status", text: "stopped" });
  const lastLabel = h("span", { class: "muted", id: "feed-last", text: "" });
  const afterInput = h("input", { type: "number", min: "0", id: "feed-after", class: "narrow", placeholder: "now", title: "start after this log index (empty: from now on)" });
  const toggle = h("button", { type: "button", class: "primary small", id: "feed-toggle", text: "Start", on: { click: () => (want ? stop() : start()) } });
  const clear = h("button", { type: "button", class: "small", id: "feed-clear", text: "Clear", on: { click: () => { fill(events); count = 0; empty(); } } });
  const events = h("tbody", { id: "feed-events" });
  fill(
    pane,
    h("div", { class: "feed-head" }, h("h2", { text: "Change feed" }), status),
    h("div", { class: "toolbar" },
      h("label", { for: "feed-after", text: "after" }), afterInput, toggle, clear, h("div", { class: "grow" }), lastLabel),
    h("div", { class: "feed-scroll" },
      h("table", { class: "grid compact feed-table" },
        h("thead", {}, h("tr", {}, ["Index", "Op", "Table", "Rowid", "Row"].map((t) => h("th", { text: t })))),
        events)),
  );

  let ws = null;
  let want = false;
  let lastIndex = null;
  let retry = 0;
  let retryTimer = null;
  let count = 0;

  function empty() {
    if (count === 0) fill(events, h("tr", { class: "placeholder" }, h("td", { colspan: "5", class: "muted", text: want ? "waiting for changes…" : "Start the feed to see every committed change of this base as it happens." })));
  }
  empty();

  function setStatus(kind, label) {
    status.className = `pill ${kind}`;
    status.dataset.state = kind;
    status.textContent = label;
  }

  function start() {
    const v = afterInput.value.trim();
    if (v !== "") lastIndex = Number(v);
    want = true;
    retry = 0;
    toggle.textContent = "Stop";
    toggle.classList.remove("primary");
    empty();
    connect();
  }

  function stop() {
    want = false;
    if (retryTimer) clearTimeout(retryTimer);
    retryTimer = null;
    toggle.textContent = "Start";
    toggle.classList.add("primary");
    if (ws) {
      const s = ws;
      ws = null;
      s.close(1000);
    }
    setStatus("stopped", "stopped");
    if (lastIndex !== null) afterInput.value = String(lastIndex);
  }

  function connect() {
    retryTimer = null;
    if (!want) return;
    setStatus("connecting", lastIndex !== null ? `connecting (after ${lastIndex})…` : "connecting…");
    let sock;
    try {
      sock = openFeed(baseId, lastIndex);
    } catch (e) {
      notice("error", `cannot open the feed: ${e.message}`);
      scheduleReconnect("failed to open");
      return;
    }
    ws = sock;
    sock.onopen = () => {
      if (ws !== sock) return;
      setStatus("live", "live");
    };
    sock.onmessage = (ev) => {
      if (ws !== sock) return;
      retry = 0;
      let msg;
      try {
        msg = JSON.parse(ev.data);
      } catch {
        notice("error", `unreadable message: ${String(ev.data).slice(0, 200)}`);
        return;
      }
      onMessage(msg);
    };
    sock.onclose = (ev) => {
      if (ws !== sock) return;
      ws = null;
      if (!want) return;
      scheduleReconnect(`closed (code ${ev.code}${ev.reason ? `: ${ev.reason}` : ""})`);
    };
  }

  function scheduleReconnect(why) {
    const delay = Math.min(1000 * 2 ** retry, 10000);
    retry++;
    setStatus("reconnecting", `${why}; reconnecting in ${Math.round(delay / 1000)} s`);
    retryTimer = setTimeout(connect, delay);
  }

  function onMessage(msg) {
    if (msg && msg.error) {
      notice("error", `${msg.error.message || "feed error"}${msg.error.code ? ` (${msg.error.code})` : ""}; the feed reconnects after index ${lastIndex ?? "now"}`);
      return;
    }
    if (msg && msg.resync) {
      notice("warn", `resync: changes up to index ${msg.index} are no longer kept; re-read the base. The feed goes on after ${msg.index}.`);
      lastIndex = msg.index;
      showLast();
      return;
    }
    if (typeof msg.index === "number") {
      lastIndex = lastIndex === null ? msg.index : Math.max(lastIndex, msg.index);
      showLast();
    }
    addRow(msg);
    if (msg.op === "base_dropped") {
      want = false;
      if (ws) ws.close(1000);
      ws = null;
      toggle.textContent = "Start";
      toggle.classList.add("primary");
      setStatus("ended", "ended: the base was dropped");
    }
  }

  function showLast() {
    lastLabel.textContent = lastIndex !== null ? `last index ${lastIndex}` : "";
  }

  function addRow(msg) {
    if (count === 0) fill(events);
    const detail = msg.op === "ddl" ? msg.sql : msg.row !== undefined ? rowJson(msg.row) : "";
    const tr = h("tr", { class: `event op-${msg.op}`, dataset: { index: msg.index, op: msg.op, table: msg.table, rowid: msg.rowid } },
      h("td", { class: "num", text: String(msg.index ?? "") }),
      h("td", {}, h("span", { class: `op ${msg.op}`, text: msg.op ?? "" })),
      h("td", { class: "mono", text: msg.table ?? "" }),
      h("td", { class: "num", text: msg.rowid === undefined ? "" : String(msg.rowid) }),
      h("td", { class: "mono json", text: detail }));
    insert(tr);
  }

  function notice(kind, text) {
    if (count === 0) fill(events);
    insert(h("tr", { class: `notice ${kind}` }, h("td", { colspan: "5", text })));
  }

  // Newest first; the oldest fall off beyond FEED_MAX_EVENTS.
  function insert(tr) {
    events.insertBefore(tr, events.firstChild);
    count++;
    while (count > FEED_MAX_EVENTS && events.lastChild) {
      events.removeChild(events.lastChild);
      count--;
    }
  }

  return {
    dispose() {
      want = false;
      if (retryTimer) clearTimeout(retryTimer);
      if (ws) ws.close(1000);
      ws = null;
    },
  };
}
