// The console's shell: the session, the router (#/page?params) and the
// navigation.  Each page renders into <main> and stops its work (long
// polls, timers) through the AbortSignal it is given when the page changes.
import {startSession, logout} from "./api.js";
import {h, fill} from "./dom.js";
import {incidentsPage, incidentPage} from "./incidents.js";
import {samplesPage} from "./samples.js";
import {workbenchPage} from "./workbench.js";
import {deliveriesPage, healthPage} from "./ops.js";

const PAGES = {
  incidents: incidentsPage,
  incident: incidentPage,
  samples: samplesPage,
  workbench: workbenchPage,
  deliveries: deliveriesPage,
  health: healthPage,
};

let running = null;

export function navigate(page, params = {}) {
  const q = new URLSearchParams(params).toString();
  window.location.hash = `#/${page}${q ? "?" + q : ""}`;
}

function parse(hash) {
  const text = hash.replace(/^#\/?/, "");
  const [path, q] = text.split("?", 2);
  const parts = path.split("/").filter(Boolean);
  return {page: parts[0] || "incidents", arg: parts[1], params: new URLSearchParams(q || "")};
}

async function route() {
  const {page, arg, params} = parse(window.location.hash);
  if (running) running.abort();
  running = new AbortController();
  const signal = running.signal;
  const main = document.getElementById("view");
  const render = PAGES[page];
  for (const a of document.querySelectorAll("header nav a")) {
    const current = a.dataset.page === page || (page === "incident" && a.dataset.page === "incidents");
    if (current) a.setAttribute("aria-current", "page");
    else a.removeAttribute("aria-current");
  }
  if (!render) {
    fill(main, h("h1", {}, "No such page"), h("p", {}, h("a", {href: "#/incidents"}, "Incidents")));
    return;
  }
  try {
    await render(main, {arg, params, signal, navigate});
  } catch (e) {
    if (signal.aborted) return;
    main.append(h("p", {class: "error", role: "alert"}, `Could not load this page: ${e.message}`));
  }
}

async function main() {
  // The first page's reads need no CSRF token: ask for both at once.
  const session = startSession();
  document.getElementById("logout").addEventListener("click", logout);
  window.addEventListener("hashchange", () => {
    route();
    document.getElementById("view").focus({preventScroll: true});
  });
  await Promise.all([session, route()]);
}

main();
