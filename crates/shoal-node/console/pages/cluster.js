// The cluster page: registry, active monitor, nodes, placement status and
// the rebalance button. Re-polls every 2 s and updates in place.

import { api } from "../api.js";
import { clockText, confirmDialog, fill, h, poll, showError, showInfo, timeText } from "../dom.js";

const POLL_MS = 2000;

export function mount(root) {
  const errorSlot = h("div", { class: "slot", id: "cluster-error" });
  const actionSlot = h("div", { class: "slot", id: "rebalance-message" });
  const updated = h("span", { class: "updated", id: "cluster-updated", text: "loading…" });
  const summary = h("dl", { class: "summary", id: "cluster-summary" });
  const nodesBody = h("tbody", { id: "nodes-body" });
  const health = h("div", { class: "health", id: "cluster-health" });
  const rebalance = h("button", {
    type: "button",
    id: "rebalance",
    text: "Rebalance…",
    on: { click: () => askRebalance() },
  });

  fill(
    root,
    h("div", { class: "page-head" },
      h("h1", { text: "Cluster" }),
      updated,
      h("div", { class: "grow" }),
      rebalance),
    errorSlot,
    actionSlot,
    summary,
    h("h2", { text: "Nodes" }),
    h("table", { class: "grid", id: "nodes" },
      h("thead", {}, h("tr", {},
        ["Node", "State", "Since", "Zone", "Capacity", "Replicas", "Hosted", "Leaders", "Drained", "URL"].map((t) =>
          h("th", { text: t })))),
      nodesBody),
    health,
  );

  let last = null;

  async function refresh() {
    let cluster;
    try {
      cluster = await api("GET", "/v1/cluster");
    } catch (e) {
      showError(errorSlot, e, "Could not read the cluster status");
      updated.textContent = last ? `stale; last updated ${last}` : "not loaded";
      updated.classList.add("stale");
      return;
    }
    // Leaders held per node come from the bucket map; the page still works without it.
    let leaders = null;
    try {
      const buckets = await api("GET", "/v1/cluster/buckets");
      leaders = new Map();
      for (const b of buckets.buckets || []) {
        if (b.leader) leaders.set(b.leader, (leaders.get(b.leader) || 0) + 1);
      }
    } catch {
      leaders = null;
    }
    fill(errorSlot);
    renderSummary(cluster);
    renderNodes(cluster, leaders);
    renderHealth(cluster);
    last = clockText();
    updated.textContent = `updated ${last}`;
    updated.classList.remove("stale");
  }

  function renderSummary(c) {
    const reg = parseRegistry(c.registry);
    const monitor = c.monitor
      ? [h("span", { text: c.monitor.id }),
        c.monitor.url ? [" ", h("a", { href: c.monitor.url + "/ui/", target: "_blank", rel: "noopener noreferrer", text: c.monitor.url })] : null]
      : h("span", { class: "warn", text: "none active" });
    const item = (label, value, id) => [h("dt", { text: label }), h("dd", { id }, value)];
    fill(
      summary,
      item("Registry", [
        h("span", { text: reg.backend }),
        reg.endpoints.length ? h("ul", { class: "endpoints" }, reg.endpoints.map((e) => h("li", { text: e }))) : null,
        reg.rest ? h("span", { class: "muted", text: ` ${reg.rest}` }) : null,
      ], "summary-registry"),
      item("Active monitor", monitor, "summary-monitor"),
      item("Epoch", String(c.epoch), "summary-epoch"),
      item("Topology", c.topology || "—", "summary-topology"),
      item("Replication factor", String(c.replication_factor), "summary-rf"),
      item("Rebalance pending", c.rebalance_pending ? "yes" : "no", "summary-rebalance"),
    );
  }

  function renderNodes(c, leaders) {
    const rows = (c.nodes || []).map((n) => {
      const uiUrl = n.node_url ? n.node_url.replace(/\/+$/, "") + "/ui/" : null;
      return h("tr", { dataset: { node: n.node_id, live: n.live ? "true" : "false" }, class: n.live ? null : "dead-row" },
        h("td", { class: "mono", text: n.node_id }),
        h("td", {}, h("span", { class: `badge ${n.live ? "live" : "dead"}`, text: n.live ? "live" : "dead" })),
        h("td", { text: timeText(n.since) }),
        h("td", { text: n.zone }),
        h("td", { class: "num", text: String(n.capacity) }),
        h("td", { class: "num", text: String(n.replicas) }),
        h("td", { class: "num", text: String(n.hosted) }),
        h("td", { class: "num leaders", text: leaders ? String(leaders.get(n.node_id) || 0) : "—" }),
        h("td", { text: n.drained ? "yes" : "no", class: n.drained ? "warn" : null }),
        h("td", {}, uiUrl
          ? h("a", { href: uiUrl, target: "_blank", rel: "noopener noreferrer", title: "open this node's console", text: n.node_url })
          : "—"),
      );
    });
    if (rows.length === 0) rows.push(h("tr", {}, h("td", { colspan: "10", class: "muted", text: "no nodes registered" })));
    fill(nodesBody, rows);
  }

  function renderHealth(c) {
    const bucketLinks = (list, id) =>
      list.length === 0
        ? h("span", { class: "muted", id, text: "none" })
        : h("div", { class: "chips", id }, list.map((b) => h("a", { class: "chip", href: `#/buckets/${b}`, text: b })));
    const moves = c.moves_in_progress || [];
    fill(
      health,
      h("section", { class: "card" },
        h("h2", {}, "Under-replicated buckets ", h("span", { class: "count", text: String((c.under_replicated || []).length) })),
        bucketLinks(c.under_replicated || [], "under-replicated")),
      h("section", { class: "card" },
        h("h2", {}, "Buckets with replicas on dead nodes ", h("span", { class: "count", text: String((c.on_dead_nodes || []).length) })),
        bucketLinks(c.on_dead_nodes || [], "on-dead-nodes")),
      h("section", { class: "card" },
        h("h2", {}, "Moves in progress ", h("span", { class: "count", text: String(moves.length) })),
        moves.length === 0
          ? h("span", { class: "muted", id: "moves", text: "none" })
          : h("div", { class: "chips", id: "moves" }, moves.map((m) =>
            h("a", { class: "chip", href: `#/buckets/${m.bucket}`, title: `bucket ${m.bucket} moving to ${m.node_id}`, text: `${m.bucket} → ${m.node_id}` })))),
    );
  }

  async function askRebalance() {
    const ok = await confirmDialog({
      title: "Rebalance the cluster?",
      message: "The active monitor computes a new placement map from the live nodes and moves the replicas that must move. Replicas are caught up before old ones leave.",
      confirmLabel: "Rebalance",
    });
    if (!ok) return;
    rebalance.disabled = true;
    try {
      const r = await api("POST", "/v1/cluster/rebalance", undefined, { retry: true });
      const at = r && r.epoch !== undefined ? ` (requested at epoch ${r.epoch})` : "";
      showInfo(actionSlot, `Rebalance requested${at}: the active monitor carries it out shortly.`);
    } catch (e) {
      showError(actionSlot, e, "Rebalance failed");
    } finally {
      rebalance.disabled = false;
    }
  }

  const stop = poll(refresh, POLL_MS);
  return { dispose: stop };
}

/** "etcd://a:2379,b:2379 (namespace shoal)" → backend, endpoints, the rest. */
function parseRegistry(s) {
  const text = String(s || "");
  const m = /^([a-z][a-z0-9+.-]*):\/\/([^\s]*)\s*(.*)$/i.exec(text);
  if (!m) return { backend: text || "—", endpoints: [], rest: "" };
  return { backend: m[1], endpoints: m[2].split(",").filter(Boolean), rest: m[3] };
}
