// The bucket map: 16x16 cells, one per bucket, coloured by leader node,
// with moves and under-replicated buckets outlined; a click opens the
// bucket's detail (#/buckets/XX). Re-polls every 2 s and updates the cells
// in place.

import { api, qs } from "../api.js";
import { clockText, fill, h, poll, showError } from "../dom.js";

const POLL_MS = 2000;
/** How many leader colours style.css defines (lead-0 .. lead-11). */
const COLOURS = 12;
const HEX = "0123456789abcdef";

export function mount(root, params) {
  const errorSlot = h("div", { class: "slot", id: "buckets-error" });
  const updated = h("span", { class: "updated", id: "buckets-updated", text: "loading…" });
  const summary = h("div", { class: "map-summary", id: "map-summary" });
  const legend = h("div", { class: "legend", id: "legend" });
  const detail = h("aside", { class: "detail card", id: "bucket-detail", hidden: true });
  const grid = h("div", { class: "bucket-grid", id: "bucket-grid", role: "grid" });

  // The grid: a header row of low digits, then 16 rows led by the high digit.
  const cells = new Map();
  grid.appendChild(h("span", { class: "axis corner" }));
  for (const lo of HEX) grid.appendChild(h("span", { class: "axis", text: `·${lo}` }));
  for (const hi of HEX) {
    grid.appendChild(h("span", { class: "axis", text: `${hi}·` }));
    for (const lo of HEX) {
      const b = hi + lo;
      const cell = h("button", {
        type: "button",
        class: "cell",
        dataset: { bucket: b, leader: "" },
        on: { click: () => select(b) },
      }, h("span", { class: "cell-id", text: b }), h("span", { class: "cell-leader", text: "" }));
      cells.set(b, cell);
      grid.appendChild(cell);
    }
  }

  fill(
    root,
    h("div", { class: "page-head" }, h("h1", { text: "Bucket map" }), updated),
    errorSlot,
    summary,
    h("div", { class: "map-layout" },
      h("div", { class: "map-left" }, grid, legend),
      detail),
  );

  let data = null; // the last /v1/cluster/buckets answer
  let nodes = []; // the last /v1/cluster nodes
  let selected = null;
  let basesFor = null; // the bucket whose bases the detail shows
  let last = null;

  function select(b) {
    location.hash = `#/buckets/${b}`;
  }

  /** Stable colour per node: its place among all node ids seen, sorted. */
  function colourIndex() {
    const ids = new Set(nodes.map((n) => n.node_id));
    if (data) for (const b of data.buckets) for (const r of b.replicas || []) ids.add(r);
    const sorted = [...ids].sort((a, b) => a.localeCompare(b, undefined, { numeric: true }));
    return new Map(sorted.map((id, i) => [id, i % COLOURS]));
  }

  async function refresh() {
    let buckets;
    let cluster = null;
    try {
      [buckets, cluster] = await Promise.all([
        api("GET", "/v1/cluster/buckets"),
        api("GET", "/v1/cluster").catch(() => null),
      ]);
    } catch (e) {
      showError(errorSlot, e, "Could not read the bucket map");
      updated.textContent = last ? `stale; last updated ${last}` : "not loaded";
      updated.classList.add("stale");
      return;
    }
    fill(errorSlot);
    data = buckets;
    if (cluster) nodes = cluster.nodes || [];
    renderCells();
    renderSummary();
    renderLegend();
    renderDetail();
    last = clockText();
    updated.textContent = `updated ${last}`;
    updated.classList.remove("stale");
  }

  function renderCells() {
    const colours = colourIndex();
    const byBucket = new Map(data.buckets.map((b) => [b.bucket, b]));
    for (const [b, cell] of cells) {
      const info = byBucket.get(b);
      const classes = ["cell"];
      const leader = info && info.leader ? info.leader : "";
      if (!info) classes.push("unknown");
      else if (leader) classes.push(`lead-${colours.get(leader) ?? 0}`);
      else classes.push("no-leader");
      if (info && info.moving) classes.push("moving");
      if (info && info.under_replicated) classes.push("under-replicated");
      if (info && info.on_dead_nodes) classes.push("on-dead-nodes");
      if (b === selected) classes.push("selected");
      const cls = classes.join(" ");
      if (cell.className !== cls) cell.className = cls;
      cell.dataset.leader = leader;
      cell.dataset.replicas = info ? (info.replicas || []).join(" ") : "";
      cell.lastChild.textContent = leader || "—";
      const flags = [];
      if (info && info.moving) flags.push("moving");
      if (info && info.under_replicated) flags.push("under-replicated");
      if (info && info.on_dead_nodes) flags.push("replica on a dead node");
      cell.title = info
        ? `bucket ${b}\nleader: ${leader || "none"}\nreplicas: ${(info.replicas || []).join(", ") || "none"}\nterm: ${info.term ?? "—"}${flags.length ? "\n" + flags.join(", ") : ""}`
        : `bucket ${b}: not in the map`;
      cell.setAttribute("aria-label", `bucket ${b}, leader ${leader || "none"}`);
    }
  }

  function renderSummary() {
    const bs = data.buckets;
    const noLeader = bs.filter((b) => !b.leader).length;
    const moving = bs.filter((b) => b.moving).length;
    const under = bs.filter((b) => b.under_replicated).length;
    const dead = bs.filter((b) => b.on_dead_nodes).length;
    const unreachable = data.unreachable || [];
    const part = (label, value, cls) => h("span", { class: `stat ${cls || ""}` }, h("span", { class: "muted", text: label }), " ", h("b", { text: String(value) }));
    fill(
      summary,
      part("epoch", data.epoch),
      part("replication factor", data.replication_factor),
      part("buckets", bs.length),
      part("without leader", noLeader, noLeader ? "warn" : ""),
      part("moving", moving, moving ? "warn" : ""),
      part("under-replicated", under, under ? "bad" : ""),
      part("on dead nodes", dead, dead ? "bad" : ""),
      unreachable.length
        ? h("span", { class: "stat bad", id: "unreachable" }, h("span", { class: "muted", text: "no answer from" }), " ", h("b", { text: unreachable.join(", ") }))
        : null,
    );
  }

  function renderLegend() {
    const colours = colourIndex();
    const live = new Map(nodes.map((n) => [n.node_id, n.live]));
    const led = new Map();
    for (const b of data.buckets) if (b.leader) led.set(b.leader, (led.get(b.leader) || 0) + 1);
    const items = [...colours.entries()].map(([id, i]) =>
      h("span", { class: "legend-item", dataset: { node: id } },
        h("span", { class: `swatch lead-${i}` }),
        h("span", { class: "mono", text: id }),
        live.has(id) && !live.get(id) ? h("span", { class: "badge dead", text: "dead" }) : null,
        h("span", { class: "muted", text: ` ${led.get(id) || 0} led` })));
    fill(
      legend,
      h("div", { class: "legend-row" },
        h("span", { class: "legend-title", text: "Leader" }),
        items,
        h("span", { class: "legend-item" }, h("span", { class: "swatch no-leader" }), "no leader")),
      h("div", { class: "legend-row" },
        h("span", { class: "legend-title", text: "Marks" }),
        h("span", { class: "legend-item" }, h("span", { class: "swatch mark moving" }), "move in progress"),
        h("span", { class: "legend-item" }, h("span", { class: "swatch mark under-replicated" }), "under-replicated"),
        h("span", { class: "legend-item" }, h("span", { class: "swatch mark on-dead-nodes" }), "replica on a dead node")),
    );
  }

  // The detail panel. Its skeleton is built when the selection changes, its
  // numbers are refreshed on every poll, its bases are read once per selection.
  const detailParts = {
    head: h("div", { class: "detail-head" }),
    facts: h("dl", { class: "summary compact", id: "bucket-facts" }),
    states: h("tbody", { id: "bucket-states" }),
    basesSlot: h("div", { class: "slot", id: "bucket-bases-error" }),
    bases: h("ul", { class: "base-list", id: "bucket-bases" }),
    more: h("div", { class: "pager" }),
  };
  fill(
    detail,
    detailParts.head,
    detailParts.facts,
    h("h3", { text: "Replicas" }),
    h("table", { class: "grid compact", id: "bucket-states-table" },
      h("thead", {}, h("tr", {}, ["Node", "Role", "Term", "Commit", "Applied", "Last index", "Lag"].map((t) => h("th", { text: t })))),
      detailParts.states),
    h("h3", { text: "Bases in this bucket" }),
    detailParts.basesSlot,
    detailParts.bases,
    detailParts.more,
  );

  function renderDetail() {
    if (!selected) {
      detail.hidden = true;
      return;
    }
    detail.hidden = false;
    detail.dataset.bucket = selected;
    const info = data ? data.buckets.find((b) => b.bucket === selected) : null;
    fill(
      detailParts.head,
      h("h2", {}, "Bucket ", h("span", { class: "mono", id: "detail-bucket", text: selected })),
      h("a", { class: "close", href: "#/buckets", title: "close", text: "×" }),
    );
    if (!info) {
      fill(detailParts.facts, h("dt", { text: "Status" }), h("dd", { text: data ? "not in the map" : "loading…" }));
      fill(detailParts.states);
      return;
    }
    const flags = [];
    if (info.moving) flags.push(h("span", { class: "badge warn", text: "moving" }));
    if (info.under_replicated) flags.push(h("span", { class: "badge bad", text: "under-replicated" }));
    if (info.on_dead_nodes) flags.push(h("span", { class: "badge bad", text: "replica on a dead node" }));
    if (!info.leader) flags.push(h("span", { class: "badge warn", text: "no leader" }));
    if (flags.length === 0) flags.push(h("span", { class: "badge live", text: "healthy" }));
    const item = (label, value, id) => [h("dt", { text: label }), h("dd", { id }, value)];
    fill(
      detailParts.facts,
      item("Leader", info.leader || "none", "detail-leader"),
      item("Term", info.term === null || info.term === undefined ? "—" : String(info.term), "detail-term"),
      item("Replicas", (info.replicas || []).join(", ") || "none", "detail-replicas"),
      item("Status", flags, "detail-flags"),
    );
    const states = new Map((info.states || []).map((s) => [s.node_id, s]));
    const order = [...(info.replicas || [])];
    for (const s of info.states || []) if (!order.includes(s.node_id)) order.push(s.node_id);
    const num = (v) => h("td", { class: "num", text: v === null || v === undefined ? "—" : String(v) });
    fill(
      detailParts.states,
      order.map((id) => {
        const s = states.get(id);
        if (!s) {
          return h("tr", { dataset: { node: id }, class: "dead-row" },
            h("td", { class: "mono", text: id }),
            h("td", { colspan: "6", class: "muted", text: "no answer" }));
        }
        return h("tr", { dataset: { node: id, role: s.role } },
          h("td", { class: "mono", text: id }),
          h("td", {}, h("span", { class: `role ${s.role}`, text: s.role })),
          num(s.term), num(s.commit), num(s.applied), num(s.last_index), num(s.lag));
      }),
    );
  }

  async function loadBases(bucket, after, append) {
    basesFor = bucket;
    if (!append) {
      fill(detailParts.bases, h("li", { class: "muted", text: "loading…" }));
      fill(detailParts.more);
    }
    fill(detailParts.basesSlot);
    let page;
    try {
      page = await api("GET", `/v1/bases${qs({ bucket, limit: 20, after })}`);
    } catch (e) {
      if (basesFor !== bucket) return;
      fill(detailParts.bases);
      showError(detailParts.basesSlot, e, e.status === 404 ? "This process serves no bases (open a node or a proxy)" : "Could not list the bases");
      return;
    }
    if (basesFor !== bucket) return;
    const items = (page.bases || []).map((b) =>
      h("li", {}, h("a", { href: `#/bases/${b.id}`, class: "mono", text: b.id }), " ", h("span", { text: b.name || "" })));
    if (!append) fill(detailParts.bases);
    if (!append && items.length === 0) detailParts.bases.appendChild(h("li", { class: "muted", text: "no bases" }));
    for (const li of items) detailParts.bases.appendChild(li);
    fill(
      detailParts.more,
      page.next_after
        ? h("button", { type: "button", class: "small", text: "More…", on: { click: () => loadBases(bucket, page.next_after, true) } })
        : null,
    );
  }

  function route(p) {
    const b = p.bucket && /^[0-9a-fA-F]{2}$/.test(p.bucket) ? p.bucket.toLowerCase() : null;
    const changed = b !== selected;
    selected = b;
    if (data) renderCells();
    renderDetail();
    if (b && changed) loadBases(b, null, false);
  }

  route(params);
  const stop = poll(refresh, POLL_MS);
  return { dispose: stop, route };
}
