// The read API, called with the session cookie; a POST carries the
// session's CSRF token.  A 401 means the session ended: back to the login.

let csrf = null;

export class ApiFailure extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

export async function startSession() {
  const answer = await fetch("/console/session", {cache: "no-store", credentials: "same-origin"});
  if (answer.status === 401) {
    window.location.assign("/console/");
    throw new ApiFailure(401, "no session");
  }
  const session = await answer.json();
  csrf = session.csrf;
  return session;
}

export async function api(path, {body, signal, method} = {}) {
  const init = {method: method || (body === undefined ? "GET" : "POST"), signal, cache: "no-store",
                credentials: "same-origin", headers: {Accept: "application/json"}};
  if (init.method !== "GET") {
    init.headers["X-CSRF-Token"] = csrf;
    if (body !== undefined) {
      init.headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(body);
    }
  }
  const answer = await fetch(path, init);
  if (answer.status === 401) {
    window.location.assign("/console/");
    throw new ApiFailure(401, "the session ended; log in again");
  }
  let data;
  try {
    data = await answer.json();
  } catch (e) {
    data = {error: `HTTP ${answer.status}`};
  }
  if (!answer.ok) throw new ApiFailure(answer.status, data.error || `HTTP ${answer.status}`);
  return data;
}

export async function logout() {
  await fetch("/console/logout", {method: "POST", credentials: "same-origin",
                                  headers: {"X-CSRF-Token": csrf || ""}});
  window.location.assign("/console/");
}

// The instances in service (names, sample keeping, mapping), asked once per page.
export async function instances(signal) {
  return (await api("/api/v1/instances", {signal})).instances;
}

export function query(params) {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) if (v !== undefined && v !== null && v !== "") q.set(k, v);
  const s = q.toString();
  return s ? `?${s}` : "";
}
