// Incidents, newest first, live; and one incident whole.
import {api, instances, query} from "./api.js";
import {h, fill, cell, facts, pretty, incidentLink, select, status, sleep} from "./dom.js";

const PAGE = 50;
const WAIT_SECONDS = 25;
// Shown as text at most this much of a body; the whole is the download.
const BODY_SHOWN = 200000;

function row(incident, fresh) {
  return h("tr", {class: fresh ? "new" : null, "data-id": incident.id},
    h("td", {}, incidentLink(incident.id)),
    cell(incident.name, 200),
    cell(incident.type, 80, "cut"),
    cell(incident.occurred, 40),
    cell(incident.instance, 64, "cut"));
}

export async function incidentsPage(main, {params, signal, navigate}) {
  const instance = params.get("instance") || "";
  const [known, first] = await Promise.all([
    instances(signal),
    api(`/api/v1/recent${query({instance, limit: PAGE})}`, {signal}),
  ]);
  const body = h("tbody", {id: "incident-rows"}, first.incidents.map((i) => row(i, false)));
  const more = h("button", {type: "button", class: "secondary", id: "older"}, "Older incidents");
  let older = first.older;
  more.disabled = !older;
  more.addEventListener("click", async () => {
    more.disabled = true;
    const page = await api(`/api/v1/recent${query({instance, limit: PAGE, before: older})}`, {signal});
    body.append(...page.incidents.map((i) => row(i, false)));
    older = page.older;
    more.disabled = !older;
  });
  const live = h("span", {class: "pill", id: "live"}, "live");
  fill(main, 
    h("h1", {tabindex: "-1"}, "Incidents"),
    h("div", {class: "toolbar"},
      select("instance-filter", "Instance", [["", "All instances"], ...known.map((i) => [i.name, i.name])],
             instance, (value) => navigate("incidents", value ? {instance: value} : {})),
      live,
      h("span", {class: "muted"}, "Newest first; new incidents appear as they are stored.")),
    h("div", {class: "table-wrap"},
      h("table", {class: "incidents"},
        h("caption", {class: "skip"}, "Incidents, newest first"),
        h("colgroup", {}, h("col", {class: "id"}), h("col"), h("col", {class: "type"}),
          h("col", {class: "when"}), h("col", {class: "inst"})),
        h("thead", {}, h("tr", {}, ["ID", "Name", "Type", "Occurred", "Instance"].map((t) => h("th", {scope: "col"}, t)))),
        body)),
    h("p", {}, more),
    first.incidents.length ? null : h("p", {class: "muted", id: "empty"}, "No incidents yet."));
  follow(first.next, instance, body, live, signal);
}

// The long poll: every incident committed after `next`, put on top.
async function follow(next, instance, body, live, signal) {
  while (!signal.aborted) {
    try {
      const asking = setTimeout(() => { live.textContent = "live"; live.className = "pill good"; }, 100);
      signal.addEventListener("abort", () => clearTimeout(asking), {once: true});
      const page = await api(`/api/v1/incidents${query({after: next, wait: WAIT_SECONDS, limit: 100, instance})}`, {signal});
      next = page.next;
      if (page.incidents.length) {
        document.getElementById("empty")?.remove();
        for (const incident of page.incidents) body.prepend(row(incident, true));
        status(`${page.incidents.length} new incident${page.incidents.length === 1 ? "" : "s"}`);
      }
      live.textContent = "live";
      live.className = "pill good";
    } catch (e) {
      if (signal.aborted) return;
      live.textContent = "reconnecting";
      live.className = "pill bad";
      await sleep(2000, signal);
    }
  }
}

export async function incidentPage(main, {arg, signal}) {
  if (!/^[0-9]+$/.test(arg || "")) throw new Error("not an incident id");
  const incident = await api(`/api/v1/incidents/${arg}`, {signal});
  const {headers = {}, ...details} = incident.rawJson;
  const request = incident.request;
  const cert = request.client_cert;
  const bodySection = h("section", {id: "body"}, h("h2", {}, "Body as received"), h("p", {class: "muted"}, "Loading…"));
  fill(main, 
    h("p", {}, h("a", {href: "#/incidents"}, "← Incidents")),
    h("h1", {tabindex: "-1", id: "incident-name"}, incident.name),
    h("section", {},
      facts([["ID", incident.id], ["Type", incident.type], ["Occurred", incident.occurred],
             ["Created", incident.created], ["Instance", incident.instance]])),
    h("div", {class: "grid2"},
      h("section", {id: "fields"}, h("h2", {}, "Fields"), h("pre", {}, pretty(incident.fields))),
      h("section", {id: "request"}, h("h2", {}, "Request"),
        facts([["Client", request.client], ["Received", request.received], ["Method", request.method],
               ["Path", request.path], ["Request id", request.id],
               ["Client certificate", cert ? `${cert.subject} (SHA-256 ${cert.sha256})` : "none"]]))),
    h("section", {id: "details"}, h("h2", {}, "Details"), h("pre", {}, pretty(details))),
    h("section", {id: "headers"}, h("h2", {}, "Headers"),
      h("div", {class: "table-wrap"}, h("table", {},
        h("thead", {}, h("tr", {}, h("th", {scope: "col"}, "Name"), h("th", {scope: "col"}, "Value"))),
        h("tbody", {}, Object.entries(headers).map(([k, v]) => h("tr", {}, cell(k, 200), cell(v, 4000))))))),
    bodySection);
  const answer = await fetch(`/api/v1/incidents/${arg}/body`, {signal, credentials: "same-origin"});
  const bytes = new Uint8Array(await answer.arrayBuffer());
  const encoding = answer.headers.get("X-Gwebhook-Content-Encoding");
  const text = new TextDecoder("utf-8", {fatal: false}).decode(bytes.subarray(0, BODY_SHOWN));
  fill(bodySection, 
    h("h2", {}, "Body as received"),
    h("p", {}, h("a", {href: `/api/v1/incidents/${arg}/body`, download: `incident-${arg}-body.bin`, id: "download"},
                 `Download the body (${bytes.length} bytes${encoding ? ", " + encoding : ""})`)),
    encoding ? h("p", {class: "muted"}, `Sent with Content-Encoding ${encoding}: the download is as received.`)
             : h("pre", {id: "body-text"}, text + (bytes.length > BODY_SHOWN ? "\n…" : "")));
}
