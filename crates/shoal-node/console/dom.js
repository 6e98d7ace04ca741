// Small DOM helpers. Text from the server only ever goes in through
// textContent (or attributes), never through innerHTML.

/**
 * Makes an element. `attrs` keys:
 * - `class`: class names; `text`: its text;
 * - `dataset`: an object of data-* values;
 * - `on`: an object of event handlers, e.g. {click: fn};
 * - `hidden`, `disabled`, `checked`, `selected`, `value`: set as properties;
 * - anything else: set as an attribute (skipped when null, undefined or false).
 * Children may be nodes, strings (made text nodes), arrays, or null (skipped).
 */
export function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  if (attrs) {
    for (const [k, v] of Object.entries(attrs)) {
      if (v === null || v === undefined || v === false) continue;
      if (k === "class") el.className = v;
      else if (k === "text") el.textContent = String(v);
      else if (k === "dataset") {
        for (const [dk, dv] of Object.entries(v)) {
          if (dv !== null && dv !== undefined) el.dataset[dk] = String(dv);
        }
      } else if (k === "on") {
        for (const [ev, fn] of Object.entries(v)) el.addEventListener(ev, fn);
      } else if (["hidden", "disabled", "checked", "selected", "value"].includes(k)) {
        el[k] = v;
      } else {
        el.setAttribute(k, v === true ? "" : String(v));
      }
    }
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const c of children) {
    if (c === null || c === undefined || c === false) continue;
    if (Array.isArray(c)) append(el, c);
    else if (c instanceof Node) el.appendChild(c);
    else el.appendChild(document.createTextNode(String(c)));
  }
}

/** Replaces the children of `el` in one step (no visible flicker). */
export function fill(el, ...children) {
  const frag = document.createDocumentFragment();
  append(frag, children);
  el.replaceChildren(frag);
  return el;
}

/** A message banner: kind is "error", "info" or "ok". */
export function banner(kind, message, detail) {
  return h(
    "div",
    { class: `banner ${kind}`, role: kind === "error" ? "alert" : "status" },
    h("span", { class: "banner-text", text: message }),
    detail ? h("span", { class: "banner-detail", text: detail }) : null,
  );
}

/** Shows `err` (an ApiError or any Error) in the banner slot `slot`. */
export function showError(slot, err, prefix) {
  const code = err && err.code ? err.code : null;
  const msg = err && err.message ? err.message : String(err);
  fill(slot, banner("error", prefix ? `${prefix}: ${msg}` : msg, code ? `(${code})` : null));
}

/** Shows a success or info message in `slot`. */
export function showInfo(slot, message, kind = "ok") {
  fill(slot, banner(kind, message));
}

/** A JSON value as text for a table cell; null shows as NULL. */
export function valueText(v) {
  if (v === null || v === undefined) return "NULL";
  if (typeof v === "object") {
    if (typeof v.base64 === "string" && Object.keys(v).length === 1) {
      const bytes = Math.floor((v.base64.replace(/=+$/, "").length * 3) / 4);
      return `blob (${bytes} bytes)`;
    }
    return JSON.stringify(v);
  }
  return String(v);
}

/** A table cell for a JSON value (NULL greyed). */
export function valueCell(v) {
  const isNull = v === null || v === undefined;
  const isNum = typeof v === "number";
  return h("td", { class: isNull ? "null" : isNum ? "num" : null, text: valueText(v) });
}

/** An RFC 3339 time as local "YYYY-MM-DD HH:MM:SS", with how long ago. */
export function timeText(s) {
  if (!s) return "—";
  const d = new Date(s);
  if (Number.isNaN(d.getTime())) return s;
  const pad = (n) => String(n).padStart(2, "0");
  const local = `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
  return `${local} (${agoText(d)})`;
}

function agoText(d) {
  const secs = Math.round((Date.now() - d.getTime()) / 1000);
  if (secs < 0) return "just now";
  if (secs < 60) return `${secs} s ago`;
  const mins = Math.floor(secs / 60);
  if (mins < 60) return `${mins} min ago`;
  const hours = Math.floor(mins / 60);
  if (hours < 48) return `${hours} h ago`;
  return `${Math.floor(hours / 24)} days ago`;
}

/** The current local time as HH:MM:SS. */
export function clockText() {
  const d = new Date();
  const pad = (n) => String(n).padStart(2, "0");
  return `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
}

/**
 * An in-page confirmation dialog. Resolves true when the user confirms,
 * false when they cancel (button, Escape or a click outside).
 */
export function confirmDialog({ title, message, confirmLabel = "Confirm", danger = false }) {
  return new Promise((resolve) => {
    const prevFocus = document.activeElement;
    const done = (ok) => {
      document.removeEventListener("keydown", onKey, true);
      overlay.remove();
      if (prevFocus && prevFocus.focus) prevFocus.focus();
      resolve(ok);
    };
    const onKey = (e) => {
      if (e.key === "Escape") {
        e.preventDefault();
        done(false);
      }
    };
    const ok = h("button", {
      type: "button",
      class: danger ? "danger" : "primary",
      id: "confirm-ok",
      text: confirmLabel,
      on: { click: () => done(true) },
    });
    const cancel = h("button", {
      type: "button",
      id: "confirm-cancel",
      text: "Cancel",
      on: { click: () => done(false) },
    });
    const dialog = h(
      "div",
      { class: "dialog", role: "dialog", "aria-modal": "true", "aria-labelledby": "confirm-title" },
      h("h2", { id: "confirm-title", text: title }),
      h("p", { class: "dialog-message", text: message }),
      h("div", { class: "dialog-buttons" }, cancel, ok),
    );
    const overlay = h("div", {
      class: "overlay",
      id: "confirm-dialog",
      on: { click: (e) => { if (e.target === overlay) done(false); } },
    }, dialog);
    document.body.appendChild(overlay);
    document.addEventListener("keydown", onKey, true);
    cancel.focus();
  });
}

/**
 * Calls `fn` now and then every `ms` milliseconds after each call settles
 * (calls never overlap). Returns a stop function. Skips a turn while the tab
 * is hidden.
 */
export function poll(fn, ms) {
  let stopped = false;
  let timer = null;
  const turn = async () => {
    if (stopped) return;
    if (!document.hidden) {
      try {
        await fn();
      } catch (e) {
        // fn shows its own errors; a throw here must not stop the polling.
        console.error(e);
      }
    }
    if (!stopped) timer = setTimeout(turn, ms);
  };
  turn();
  return () => {
    stopped = true;
    if (timer) clearTimeout(timer);
  };
}
