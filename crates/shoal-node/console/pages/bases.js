// The bases page: search, list (paged), create and drop bases.

import { api, idempotent, qs } from "../api.js";
import { confirmDialog, fill, h, showError, timeText } from "../dom.js";

const PAGE_SIZE = 20;

// Kept across visits of the page (not across reloads): the search and the
// page the user was on.
const state = { q: "", cursors: [null] };
// Bases dropped from this page. A list is read from the replicas without a
// leader round trip, so for a moment after a drop it may still name the
// base: leave those out.
const dropped = new Set();

export function mount(root) {
  const createSlot = h("div", { class: "slot", id: "create-message" });
  const listSlot = h("div", { class: "slot", id: "bases-error" });
  const nameInput = h("input", { type: "text", id: "new-base-name", name: "name", placeholder: "name (optional)", maxlength: "200" });
  const createButton = h("button", { type: "submit", class: "primary", id: "create-base", text: "Create base" });
  const qInput = h("input", { type: "search", id: "base-search", name: "q", placeholder: "id prefix or part of a name", value: state.q });
  const body = h("tbody", { id: "bases-body" });
  const pageLabel = h("span", { class: "muted", id: "bases-page" });
  const prev = h("button", { type: "button", id: "bases-prev", text: "← Previous", on: { click: () => go(-1) } });
  const next = h("button", { type: "button", id: "bases-next", text: "Next →", on: { click: () => go(1) } });
  const table = h("table", { class: "grid", id: "bases" },
    h("thead", {}, h("tr", {}, ["ID", "Name", "Bucket", "Created", ""].map((t) => h("th", { text: t })))),
    body);

  fill(
    root,
    h("div", { class: "page-head" }, h("h1", { text: "Bases" })),
    h("div", { class: "toolbar" },
      h("form", { class: "inline", id: "create-form", on: { submit: (e) => { e.preventDefault(); create(); } } },
        h("label", { for: "new-base-name", text: "New base" }), nameInput, createButton),
      h("div", { class: "grow" }),
      h("form", { class: "inline", id: "search-form", on: { submit: (e) => { e.preventDefault(); search(); } } },
        h("label", { for: "base-search", text: "Search" }), qInput,
        h("button", { type: "submit", id: "search", text: "Search" }))),
    createSlot,
    listSlot,
    table,
    h("div", { class: "pager" }, prev, pageLabel, next),
  );

  let nextAfter = null;
  let seq = 0;
  let searchTimer = null;

  async function load() {
    const mine = ++seq;
    const after = state.cursors[state.cursors.length - 1];
    prev.disabled = true;
    next.disabled = true;
    let page;
    try {
      page = await api("GET", `/v1/bases${qs({ limit: PAGE_SIZE, after, q: state.q })}`);
    } catch (e) {
      if (mine !== seq) return;
      fill(body);
      table.hidden = true;
      if (e.status === 404) {
        await showNoBases(e);
      } else {
        showError(listSlot, e, "Could not list the bases");
      }
      pageLabel.textContent = "";
      prev.disabled = state.cursors.length <= 1;
      return;
    }
    if (mine !== seq) return;
    fill(listSlot);
    table.hidden = false;
    nextAfter = page.next_after || null;
    const rows = (page.bases || []).filter((b) => !dropped.has(b.id)).map((b) =>
      h("tr", { dataset: { base: b.id } },
        h("td", {}, h("a", { class: "mono", href: `#/bases/${b.id}`, text: b.id })),
        h("td", { text: b.name ?? "" }),
        h("td", {}, h("a", { class: "mono", href: `#/buckets/${b.bucket}`, title: "show the bucket", text: b.bucket })),
        h("td", { text: timeText(b.created_at) }),
        h("td", { class: "actions" }, h("button", {
          type: "button",
          class: "small danger-outline drop",
          text: "Drop…",
          on: { click: () => drop(b) },
        }))));
    if (rows.length === 0) {
      rows.push(h("tr", {}, h("td", { colspan: "5", class: "muted", text: state.q ? `no bases match "${state.q}"` : "no bases yet" })));
    }
    fill(body, rows);
    pageLabel.textContent = `page ${state.cursors.length}`;
    prev.disabled = state.cursors.length <= 1;
    next.disabled = !nextAfter;
  }

  /** On a monitor there is no /v1/bases: say so and point at the nodes. */
  async function showNoBases(e) {
    let nodes = [];
    try {
      const c = await api("GET", "/v1/cluster");
      nodes = (c.nodes || []).filter((n) => n.live && n.node_url);
    } catch {
      nodes = [];
    }
    fill(
      listSlot,
      h("div", { class: "banner error", role: "alert", id: "no-bases" },
        h("span", { class: "banner-text", text: "This process serves no bases (it is a monitor); open the console on a node or a proxy." }),
        h("span", { class: "banner-detail", text: `(${e.message})` })),
      nodes.length
        ? h("p", {}, "Nodes: ", nodes.map((n, i) => [i ? ", " : "", h("a", { href: n.node_url.replace(/\/+$/, "") + "/ui/#/bases", text: `${n.node_id} (${n.node_url})` })]))
        : null,
    );
    createButton.disabled = true;
  }

  function go(dir) {
    if (dir > 0 && nextAfter) state.cursors.push(nextAfter);
    if (dir < 0 && state.cursors.length > 1) state.cursors.pop();
    load();
  }

  function search() {
    if (searchTimer) clearTimeout(searchTimer);
    state.q = qInput.value.trim();
    state.cursors = [null];
    load();
  }

  // Searching as one types, after a short pause.
  qInput.addEventListener("input", () => {
    if (searchTimer) clearTimeout(searchTimer);
    searchTimer = setTimeout(search, 300);
  });

  async function create() {
    const name = nameInput.value.trim();
    createButton.disabled = true;
    fill(createSlot);
    try {
      const b = await api("POST", "/v1/bases", name ? { name } : {}, idempotent());
      dropped.delete(b.id);
      nameInput.value = "";
      fill(createSlot, h("div", { class: "banner ok", role: "status", id: "created" },
        h("span", { class: "banner-text" }, "Created base ", h("b", { text: b.name || "(no name)" }), " ",
          h("a", { class: "mono", id: "created-base", href: `#/bases/${b.id}`, dataset: { base: b.id }, text: b.id }),
          ` in bucket ${b.bucket}.`)));
      load();
    } catch (e) {
      showError(createSlot, e, "Could not create the base");
    } finally {
      createButton.disabled = false;
    }
  }

  async function drop(b) {
    const ok = await confirmDialog({
      title: "Drop this base?",
      message: `Base ${b.name ? `"${b.name}" ` : ""}${b.id} and all its tables and rows will be deleted on every replica. This cannot be undone.`,
      confirmLabel: "Drop base",
      danger: true,
    });
    if (!ok) return;
    fill(createSlot);
    try {
      await api("DELETE", `/v1/bases/${encodeURIComponent(b.id)}`, undefined, idempotent());
      dropped.add(b.id);
      fill(createSlot, h("div", { class: "banner ok", role: "status", id: "dropped", text: `Dropped base ${b.name ? `"${b.name}" ` : ""}${b.id}.` }));
      load();
    } catch (e) {
      showError(createSlot, e, "Could not drop the base");
    }
  }

  load();
  return {
    dispose() {
      seq++;
      if (searchTimer) clearTimeout(searchTimer);
    },
  };
}
