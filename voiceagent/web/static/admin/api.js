// Talking to /api/admin (and the other guarded APIs the signed-in pages use, e.g. /api/jobs): the
// session's CSRF token (in memory only), errors as ApiError, and any 401 sends the user to the
// login page, coming back to the same view afterwards.

// sessionStorage: where to come back to, a dashboard hash ("#/calls") or another page ("/jobs")
export const RETURN_KEY = "voiceagent.admin.return";
const UNSAFE = new Set(["POST", "PUT", "PATCH", "DELETE"]);

let session = null; // {username, role, csrf_token, expires_at}
const sessionListeners = new Set();

export function currentSession() {
  return session;
}

export function onSession(fn) {
  sessionListeners.add(fn);
}

function setSession(next) {
  session = next;
  for (const fn of sessionListeners) fn(session);
}

export class ApiError extends Error {
  constructor(status, detail, retryAfter, body) {
    super(detail || `HTTP ${status}`);
    this.status = status;
    this.detail = detail || `HTTP ${status}`;
    this.retryAfter = retryAfter;
    this.body = body; // the parsed answer (e.g. a JobProblem's error and job_id)
  }
}

/** Thrown (and to be ignored) once the page is on its way to the login page. */
export class LoggedOut extends Error {}

let leaving = false;

// Set with the session, readable here, no secret: without it there is no session to ask about.
const SIGNED_IN = "va_signed_in";
const signedInHint = () => document.cookie.split(/;\s*/).includes(`${SIGNED_IN}=1`);

export function toLogin() {
  if (!leaving) {
    leaving = true;
    document.cookie = `${SIGNED_IN}=; Max-Age=0; Path=/; SameSite=Strict`; // the session is gone
    try {
      const dashboard = location.pathname.startsWith("/admin");
      const back = dashboard ? (location.hash !== "#" ? location.hash : "") : location.pathname;
      if (back) sessionStorage.setItem(RETURN_KEY, back);
    } catch {
      // storage refused (private mode): come back to the overview instead
    }
    location.assign("/admin/login");
  }
  return new LoggedOut("not logged in");
}

/** A server's {detail}: a string, or FastAPI's list of validation errors. */
export function detailText(body, status) {
  const detail = body && typeof body === "object" ? body.detail : null;
  if (typeof detail === "string" && detail) return detail;
  if (Array.isArray(detail) && detail.length) {
    return detail
      .map((d) => {
        const where = Array.isArray(d?.loc) ? d.loc.filter((p) => p !== "body").join(".") : "";
        return where ? `${where}: ${d?.msg ?? ""}` : String(d?.msg ?? d);
      })
      .join("; ");
  }
  return status ? `HTTP ${status}` : "request failed";
}

function url(path, query) {
  const params = new URLSearchParams();
  for (const [k, v] of Object.entries(query || {})) {
    if (v !== undefined && v !== null && v !== "") params.set(k, String(v));
  }
  const qs = params.toString();
  const base = path.startsWith("/api/") ? path : `/api/admin${path}`; // another API: a full path
  return `${base}${qs ? `?${qs}` : ""}`;
}

async function send(method, path, { query, body, signal } = {}) {
  const headers = { Accept: "application/json" };
  const form = body instanceof FormData; // multipart: the browser sets the type and boundary
  if (body !== undefined && !form) headers["Content-Type"] = "application/json";
  if (UNSAFE.has(method) && session?.csrf_token) headers["X-CSRF-Token"] = session.csrf_token;
  return fetch(url(path, query), {
    method,
    headers,
    body: body === undefined || form ? body : JSON.stringify(body),
    credentials: "same-origin",
    cache: "no-store",
    signal,
  });
}

async function parse(res) {
  if (res.status === 204) return null;
  const text = await res.text();
  if (!text) return null;
  try {
    return JSON.parse(text);
  } catch {
    return { detail: text.slice(0, 300) };
  }
}

/**
 * api("GET", "/calls", {query}) -> parsed JSON. A 401 leaves for the login page (and throws
 * LoggedOut); a 403 on a state-changing request is retried once with a fresh CSRF token (the
 * token rotates with the session); other failures throw ApiError(status, detail).
 */
export async function api(method, path, options = {}) {
  if (leaving) throw new LoggedOut("not logged in");
  let res = await send(method, path, options);
  if (res.status === 403 && UNSAFE.has(method)) {
    const before = session?.csrf_token;
    const fresh = await loadSession().catch(() => null);
    if (fresh && fresh.csrf_token && fresh.csrf_token !== before) res = await send(method, path, options);
  }
  if (res.status === 401) throw toLogin();
  const body = await parse(res);
  if (!res.ok) throw new ApiError(res.status, detailText(body, res.status), res.headers.get("Retry-After"), body);
  return body;
}

export const get = (path, query, signal) => api("GET", path, { query, signal });

/** GET /api/admin/session: who is logged in, and the CSRF token for this session. */
export async function loadSession() {
  if (!signedInHint()) throw toLogin(); // straight to the login, no 401 in the console
  const res = await fetch("/api/admin/session", {
    headers: { Accept: "application/json" },
    credentials: "same-origin",
    cache: "no-store",
  });
  if (res.status === 401) throw toLogin();
  const body = await parse(res);
  if (!res.ok) throw new ApiError(res.status, detailText(body, res.status));
  setSession(body);
  return body;
}

export async function logout() {
  try {
    await send("DELETE", "/session");
  } finally {
    leaving = true;
    try {
      sessionStorage.removeItem(RETURN_KEY);
    } catch {
      // nothing saved
    }
    location.assign("/admin/login");
  }
}

export function isOperator() {
  return session?.role === "operator";
}
