// Calls to the Shoal HTTP API on this origin, with the admin token.
//
// The token lives in this tab's sessionStorage only: never in a URL, never
// in a cookie, gone when the tab closes.

const TOKEN_KEY = "shoal.admin-token";

export function getToken() {
  return sessionStorage.getItem(TOKEN_KEY);
}

export function setToken(token) {
  sessionStorage.setItem(TOKEN_KEY, token);
}

export function clearToken() {
  sessionStorage.removeItem(TOKEN_KEY);
}

/** An answer of the API that is not a success, or a network failure (status 0). */
export class ApiError extends Error {
  constructor(status, code, message, body) {
    super(message);
    this.name = "ApiError";
    this.status = status;
    this.code = code;
    this.body = body;
  }
}

/** How long a call retries a 503 (no leader yet, bucket starting) before it gives up. */
const RETRY_MS = 6000;

/**
 * Calls the API: `api("GET", "/v1/cluster")`, `api("POST", path, body)`.
 * Resolves with the parsed JSON answer (null for an empty one); rejects with
 * an ApiError carrying the API's own code and message. A 401 also fires the
 * `shoal:unauthorized` event on window (the console signs out), unless
 * `opts.token` was given (sign-in checks a token that is not kept yet).
 *
 * A 503 (the bucket's leader is not known yet, or the bucket is starting) is
 * retried for a few seconds: always for GET, and for other methods when
 * `opts.retry` says the call is safe to repeat (a read, or a write that
 * carries an Idempotency-Key). `opts.headers` adds headers.
 */
export async function api(method, path, body, opts = {}) {
  const deadline = Date.now() + RETRY_MS;
  let pause = 200;
  for (;;) {
    try {
      return await call(method, path, body, opts);
    } catch (e) {
      const retry = e instanceof ApiError && e.status === 503 && (method === "GET" || opts.retry);
      if (!retry || Date.now() + pause > deadline) throw e;
    }
    await new Promise((r) => setTimeout(r, pause));
    pause = Math.min(pause * 2, 1000);
  }
}

async function call(method, path, body, opts) {
  const token = opts.token ?? getToken();
  const headers = { Accept: "application/json", ...(opts.headers || {}) };
  if (token) headers.Authorization = `Bearer ${token}`;
  const init = { method, headers, cache: "no-store", credentials: "omit" };
  if (body !== undefined) {
    headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  if (opts.signal) init.signal = opts.signal;
  let resp;
  try {
    resp = await fetch(path, init);
  } catch (e) {
    if (e && e.name === "AbortError") throw e;
    throw new ApiError(0, "network", `cannot reach ${location.host}: ${e && e.message ? e.message : e}`);
  }
  const text = await resp.text();
  let data = null;
  if (text) {
    try {
      data = JSON.parse(text);
    } catch {
      data = null;
    }
  }
  if (!resp.ok) {
    const err = data && typeof data === "object" && data.error ? data.error : null;
    const code = err && err.code ? String(err.code) : `http_${resp.status}`;
    const message = err && err.message ? String(err.message) : `HTTP ${resp.status} ${resp.statusText}`.trim();
    const apiErr = new ApiError(resp.status, code, message, data);
    if (resp.status === 401 && opts.token === undefined) {
      window.dispatchEvent(new CustomEvent("shoal:unauthorized", { detail: apiErr }));
    }
    throw apiErr;
  }
  return data;
}

/** A random UUID (v4); works outside secure contexts too, unlike crypto.randomUUID. */
export function uuid() {
  const b = crypto.getRandomValues(new Uint8Array(16));
  b[6] = (b[6] & 0x0f) | 0x40;
  b[8] = (b[8] & 0x3f) | 0x80;
  const hex = Array.from(b, (x) => x.toString(16).padStart(2, "0")).join("");
  return `${hex.slice(0, 8)}-${hex.slice(8, 12)}-${hex.slice(12, 16)}-${hex.slice(16, 20)}-${hex.slice(20)}`;
}

/** Options for a write that may be retried: one Idempotency-Key for every try. */
export function idempotent() {
  return { retry: true, headers: { "Idempotency-Key": uuid() } };
}

/** A query string from an object, skipping empty values. */
export function qs(params) {
  const p = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) {
    if (v === null || v === undefined || v === "") continue;
    p.set(k, String(v));
  }
  const s = p.toString();
  return s ? `?${s}` : "";
}

/** `s` as URL-safe base64 without padding, of its UTF-8 bytes. */
export function base64url(s) {
  const bytes = new TextEncoder().encode(s);
  let bin = "";
  for (const b of bytes) bin += String.fromCharCode(b);
  return btoa(bin).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
}

/**
 * Opens a base's change feed. A browser cannot set Authorization on a
 * WebSocket, so the token travels as a subprotocol; the server selects
 * `shoal.v1`.
 */
export function openFeed(baseId, after) {
  const scheme = location.protocol === "https:" ? "wss:" : "ws:";
  const query = after !== null && after !== undefined ? `?after=${encodeURIComponent(after)}` : "";
  const url = `${scheme}//${location.host}/v1/bases/${encodeURIComponent(baseId)}/changes${query}`;
  return new WebSocket(url, ["shoal.v1", `shoal.bearer.${base64url(getToken() || "")}`]);
}
