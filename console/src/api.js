// Calls to tollgate's HTTP/JSON API (docs/http.md) with the admin token, and
// its errors: every failure has the body {"code", "message", "field"?}.

const TOKEN_KEY = "tollgate.adminToken";

/** The admin token, kept in sessionStorage (this tab only, gone when it closes). */
export const session = {
  token: () => sessionStorage.getItem(TOKEN_KEY),
  signIn: (t) => sessionStorage.setItem(TOKEN_KEY, t),
  signOut: () => sessionStorage.removeItem(TOKEN_KEY),
};

/** A failed call: the HTTP status and the API's error body. */
export class ApiError extends Error {
  constructor(status, code, message, field) {
    super(message);
    this.status = status;
    this.code = code || "";
    this.field = field || "";
  }

  /**
   * Whether the token itself was refused (no token, a wrong one: 401). A 403
   * is a known token whose role does not allow the call: shown, not signed out.
   */
  get credentials() {
    return this.status === 401;
  }
}

/** One line for a person: "401 UNAUTHENTICATED: the admin token is not valid: ...". */
export function describe(err) {
  if (!(err instanceof ApiError)) return String(err && err.message ? err.message : err);
  const head = [err.status || "", err.code].filter(Boolean).join(" ");
  const field = err.field ? ` (field: ${err.field})` : "";
  return `${head ? head + ": " : ""}${err.message}${field}`;
}

/**
 * `method path`, with `query` parameters (empty ones left out) and a JSON
 * `body`; `token` overrides the session's. Answers the JSON body (null for
 * 204), or throws an ApiError.
 */
export async function call(method, path, { query, body, token } = {}) {
  let url = path;
  if (query) {
    const q = new URLSearchParams();
    for (const [k, v] of Object.entries(query)) if (v !== undefined && v !== null && v !== "") q.set(k, String(v));
    const s = q.toString();
    if (s) url += "?" + s;
  }
  const headers = { Accept: "application/json" };
  const t = token ?? session.token();
  if (t) headers.Authorization = `Bearer ${t}`;
  if (body !== undefined) headers["Content-Type"] = "application/json";
  let res;
  try {
    res = await fetch(url, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
      cache: "no-store",
      credentials: "omit",
    });
  } catch (e) {
    throw new ApiError(0, "UNAVAILABLE", `the server cannot be reached: ${e.message}`);
  }
  if (res.status === 204) return null;
  const text = await res.text();
  let json = null;
  try {
    json = text ? JSON.parse(text) : null;
  } catch {
    json = null;
  }
  if (!res.ok) {
    if (json && typeof json.message === "string") throw new ApiError(res.status, json.code, json.message, json.field);
    throw new ApiError(res.status, "", text.trim() || res.statusText || "the request failed");
  }
  return json;
}

/** Every item of a paged list (`page_size` 500, following `next_page_token`), up to `max`. */
export async function all(path, field, query = {}, max = 5000) {
  const out = [];
  let page_token = "";
  do {
    const r = await call("GET", path, { query: { ...query, page_size: 500, page_token } });
    out.push(...(r[field] || []));
    page_token = r.next_page_token;
  } while (page_token && out.length < max);
  return out;
}

/** The encoded path segment of an id. */
export const seg = (id) => encodeURIComponent(id);
