// Calls to the memserve API: the bearer key, JSON bodies, and problem+json errors as ApiError.

const KEY_STORE = "memserve.apiKey";

// The key lives in sessionStorage: it survives a reload of the tab but not the browser session,
// and other tabs or sites never see it.
export function loadKey() {
  return sessionStorage.getItem(KEY_STORE) || "";
}

export function saveKey(key) {
  if (key) sessionStorage.setItem(KEY_STORE, key);
  else sessionStorage.removeItem(KEY_STORE);
}

/** An error reply of the API (RFC 9457 problem), or a network failure (status 0). */
export class ApiError extends Error {
  constructor(status, title, detail, body = {}, retryAfterS = null) {
    super(detail ? `${title}: ${detail}` : title);
    this.status = status;
    this.title = title;
    this.detail = detail;
    this.body = body;
    this.retryAfterS = retryAfterS;
  }
}

function headers(withBody) {
  const h = { Accept: "application/json, application/problem+json" };
  if (withBody) h["Content-Type"] = "application/json";
  const key = loadKey().trim();
  // With keys off the field is empty and no header is sent: the server acts for its local tenant.
  if (key) h.Authorization = `Bearer ${key}`;
  return h;
}

async function errorOf(res) {
  const text = await res.text();
  let body = {};
  try {
    body = JSON.parse(text);
  } catch {
    // Not problem+json (a proxy's HTML error page, say): its text, without the markup.
    body = { detail: text.replace(/<[^>]*>/g, " ").replace(/\s+/g, " ").trim().slice(0, 200) };
  }
  const retry = Number(res.headers.get("Retry-After"));
  return new ApiError(
    body.status || res.status,
    body.title || res.statusText || "Error",
    body.detail || "",
    body,
    Number.isFinite(retry) && retry > 0 ? retry : null,
  );
}

/**
 * One request; resolves to the parsed JSON (null for 204), rejects with ApiError.
 * Paths are relative ("v1/..."), so the page also works behind a proxy that mounts it under a prefix.
 */
export async function call(method, path, body = undefined) {
  let res;
  try {
    res = await fetch(path, {
      method,
      headers: headers(body !== undefined),
      body: body === undefined ? undefined : JSON.stringify(body),
    });
  } catch (err) {
    throw new ApiError(0, "Network error", `the server did not answer (${err.message})`);
  }
  if (!res.ok) throw await errorOf(res);
  if (res.status === 204) return null;
  return res.json();
}

export const get = (path) => call("GET", path);
export const post = (path, body) => call("POST", path, body);
export const del = (path) => call("DELETE", path);

/** Creates a session of `kind`; an empty model name leaves the choice to the server. */
export function createSession(kind, model) {
  const body = { kind };
  if (model) body.model = model;
  return post("v1/sessions", body);
}

export const sessionPath = (sid, rest = "") => `v1/sessions/${encodeURIComponent(sid)}${rest}`;

// The panels' session ids are kept in sessionStorage too, so a reload of the tab finds them again.
export function rememberSession(slot, sid) {
  if (sid) sessionStorage.setItem(slot, sid);
  else sessionStorage.removeItem(slot);
}

/** The session remembered in `slot` if it still exists and is of `kind`; null otherwise. */
export async function recallSession(slot, kind) {
  const sid = sessionStorage.getItem(slot);
  if (!sid) return null;
  try {
    const s = await get(sessionPath(sid));
    if (s.kind === kind) return s;
  } catch (err) {
    if (err.status !== 404) throw err; // expired or deleted: simply gone; anything else is shown
  }
  rememberSession(slot, null);
  return null;
}

/**
 * Ends a session the panel no longer uses, so it does not count against the tenant's live
 * sessions until its TTL runs out. Best effort: it expires anyway.
 */
export async function dropSession(sid) {
  if (!sid) return;
  await del(sessionPath(sid)).catch(() => {});
}
