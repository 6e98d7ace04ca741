// The console's shell: sign-in, the top bar and the hash routes.
//
//   #/cluster          nodes, monitor, placement status, rebalance
//   #/buckets[/XX]     the bucket map (and bucket XX's detail)
//   #/bases            search, list, create and drop bases
//   #/bases/ID[/tables[/TABLE]|/sql]
//                      one base: tables, rows, SQL console, change feed

import { api, ApiError, clearToken, getToken, setToken } from "./api.js";
import { fill, h, showError } from "./dom.js";
import * as clusterPage from "./pages/cluster.js";
import * as bucketsPage from "./pages/buckets.js";
import * as basesPage from "./pages/bases.js";
import * as basePage from "./pages/base.js";

const view = document.getElementById("view");
const nav = document.getElementById("nav");
const session = document.getElementById("session");

/** The page shown now: {name, handle} where handle has dispose() and maybe route(params). */
let current = null;
/** A message for the sign-in form (e.g. why the console signed out). */
let signInNotice = null;

function parseRoute() {
  const hash = location.hash.replace(/^#\/?/, "");
  const parts = hash.split("/").filter(Boolean).map((p) => {
    try {
      return decodeURIComponent(p);
    } catch {
      return p;
    }
  });
  switch (parts[0]) {
    case "cluster":
      return { name: "cluster", page: clusterPage, params: {} };
    case "buckets":
      return { name: "buckets", page: bucketsPage, params: { bucket: parts[1] || null } };
    case "bases":
      if (parts[1]) return { name: "base", page: basePage, params: { id: parts[1], tab: parts[2] || null, table: parts[3] || null } };
      return { name: "bases", page: basesPage, params: {} };
    default:
      return null;
  }
}

function disposeCurrent() {
  if (current && current.handle && current.handle.dispose) current.handle.dispose();
  current = null;
}

function render() {
  if (!getToken()) {
    disposeCurrent();
    renderSignIn();
    return;
  }
  const route = parseRoute();
  if (!route) {
    location.replace("#/cluster");
    return;
  }
  renderChrome(route.name);
  // Same page, new parameters (e.g. another bucket): let the page update in place.
  if (current && current.name === route.name && current.handle.route && current.handle.route(route.params) !== false) {
    return;
  }
  disposeCurrent();
  fill(view);
  const handle = route.page.mount(view, route.params) || {};
  current = { name: route.name, handle };
}

function renderChrome(active) {
  const link = (href, label, name) =>
    h("a", {
      href,
      text: label,
      class: name === active || (name === "bases" && active === "base") ? "active" : null,
      id: `nav-${name}`,
    });
  fill(nav, link("#/cluster", "Cluster", "cluster"), link("#/buckets", "Bucket map", "buckets"), link("#/bases", "Bases", "bases"));
  nav.hidden = false;
  fill(
    session,
    h("span", { class: "host", title: "the process serving this console", text: location.host }),
    h("button", { type: "button", id: "sign-out", class: "small", text: "Sign out", on: { click: signOut } }),
  );
}

function signOut() {
  clearToken();
  signInNotice = { kind: "info", text: "Signed out." };
  render();
}

function renderSignIn() {
  nav.hidden = true;
  fill(session, h("span", { class: "host", text: location.host }));
  const message = h("div", { id: "signin-message", class: "slot" });
  if (signInNotice) {
    fill(message, h("div", { class: `banner ${signInNotice.kind}`, text: signInNotice.text }));
    signInNotice = null;
  }
  const input = h("input", {
    type: "password",
    id: "token",
    name: "token",
    autocomplete: "current-password",
    placeholder: "admin token",
    required: true,
  });
  const button = h("button", { type: "submit", class: "primary", id: "sign-in", text: "Sign in" });
  const form = h(
    "form",
    { id: "signin-form", class: "signin", on: { submit: (e) => { e.preventDefault(); signIn(input, button, message); } } },
    h("h1", { text: "Sign in to Shoal" }),
    h("p", {
      class: "muted",
      text: "Enter the cluster's admin token. It is kept in this browser tab only (sessionStorage) and sent to this process with each API call.",
    }),
    h("label", { for: "token", text: "Admin token" }),
    input,
    button,
    message,
  );
  fill(view, h("div", { class: "signin-wrap" }, form));
  input.focus();
}

async function signIn(input, button, message) {
  const token = input.value.trim();
  if (!token) {
    fill(message, h("div", { class: "banner error", role: "alert", text: "Enter the admin token." }));
    return;
  }
  button.disabled = true;
  fill(message, h("div", { class: "banner info", text: "Checking the token…" }));
  try {
    await api("GET", "/v1/cluster", undefined, { token });
  } catch (e) {
    button.disabled = false;
    if (e instanceof ApiError && e.status === 401) {
      fill(message, h("div", { class: "banner error", role: "alert" },
        h("span", { class: "banner-text", text: "Wrong admin token: this cluster refused it." }),
        h("span", { class: "banner-detail", text: `(${e.message})` })));
    } else {
      showError(message, e, "Could not check the token");
    }
    input.select();
    return;
  }
  setToken(token);
  if (!parseRoute()) location.replace("#/cluster");
  render();
}

window.addEventListener("hashchange", render);
window.addEventListener("shoal:unauthorized", () => {
  if (!getToken()) return;
  clearToken();
  signInNotice = { kind: "error", text: "The admin token was refused (it may have changed). Sign in again." };
  render();
});

render();
