// Deliveries per forward (with redeliver), and the daemon's health.
import {api, query} from "./api.js";
import {h, fill, cell, facts, incidentLink, status, sleep} from "./dom.js";

const SVG = "http://www.w3.org/2000/svg";

export async function deliveriesPage(main, {params, signal, navigate}) {
  const overview = await api("/api/v1/deliveries?limit=1", {signal});
  const forwards = overview.forwards;
  const forward = params.get("forward") || (forwards[0] || {}).name || "";
  const dead = forward
    ? (await api(`/api/v1/deliveries${query({forward, state: "dead", limit: 500})}`, {signal})).deliveries
    : [];
  const message = h("p", {id: "redeliver-result", role: "status"});
  const redeliver = async (body, button) => {
    button.disabled = true;
    try {
      const answer = await api("/api/v1/deliveries/redeliver", {body: {forward, ...body}, signal});
      status(`Queued ${answer.queued} again`);
      navigate("deliveries", {forward, queued: String(Date.now())});
    } catch (e) {
      message.textContent = `Redeliver failed: ${e.message}`;
      message.className = "error";
      button.disabled = false;
    }
  };
  const all = h("button", {type: "button", id: "redeliver-dead"}, `Redeliver every dead one (${dead.length >= 500 ? "500+" : dead.length})`);
  all.disabled = !dead.length;
  all.addEventListener("click", () => redeliver({dead: true}, all));
  fill(main, 
    h("h1", {tabindex: "-1"}, "Deliveries"),
    forwards.length ? null : h("p", {class: "muted"}, "No forward is configured ([[forward]] in the config file)."),
    h("div", {class: "table-wrap"}, h("table", {id: "forwards"},
      h("thead", {}, h("tr", {}, ["Forward", "Pending", "Dead"].map((t) => h("th", {scope: "col"}, t)))),
      h("tbody", {}, forwards.map((f) => h("tr", {"data-forward": f.name, class: f.name === forward ? "selected" : null},
        h("td", {}, h("a", {href: `#/deliveries?forward=${encodeURIComponent(f.name)}`}, f.name),
          f.configured ? null : h("span", {class: "muted"}, " (no longer configured)")),
        h("td", {class: "pending"}, String(f.pending)),
        h("td", {class: "dead"}, h("span", {class: f.dead ? "pill bad" : "pill"}, String(f.dead)))))))),
    forward ? h("h2", {}, `Dead deliveries of ${forward}`) : null,
    forward ? h("div", {class: "toolbar"}, all, message) : null,
    forward && dead.length ? h("div", {class: "table-wrap"}, h("table", {id: "dead"},
      h("colgroup", {}, h("col", {class: "id"}), h("col", {class: "id"}), h("col"), h("col", {class: "when"})),
      h("thead", {}, h("tr", {}, ["Incident", "Attempts", "Reason", ""].map((t) => h("th", {scope: "col"}, t)))),
      h("tbody", {}, dead.map((d) => {
        const button = h("button", {type: "button", class: "secondary", "aria-label": `Redeliver incident ${d.incident}`}, "Redeliver");
        button.addEventListener("click", () => redeliver({incidents: [d.incident]}, button));
        return h("tr", {"data-incident": d.incident}, h("td", {}, incidentLink(d.incident)),
                 h("td", {}, String(d.attempts)), cell(d.last_error, 400), h("td", {}, button));
      })))) : (forward ? h("p", {class: "muted", id: "no-dead"}, "None dead.") : null));
}

export async function healthPage(main, {signal}) {
  while (!signal.aborted) {
    const health = await api("/api/v1/health", {signal});
    const counts = health.incidents_per_minute.counts || [];
    const total = counts.reduce((a, b) => a + b, 0);
    const api_failures = health.api_auth_failures;
    fill(main, 
      h("h1", {tabindex: "-1"}, "Health"),
      h("div", {class: "grid2"},
        h("section", {id: "store"}, h("h2", {}, "Store"),
          facts([["Status", h("span", {class: health.store.status === "ok" ? "pill good" : "pill bad", id: "store-status"}, health.store.status)],
                 ["Database", health.store.database],
                 ["Console sessions", String(health.sessions)]])),
        h("section", {id: "auth"}, h("h2", {}, "Authentication failures"),
          h("p", {}, `Wrong or missing API tokens (console and API): ${api_failures}`),
          health.auth_failures.length
            ? h("table", {}, h("thead", {}, h("tr", {}, ["Instance", "Reason", "Count"].map((t) => h("th", {scope: "col"}, t)))),
                h("tbody", {}, health.auth_failures.map((f) => h("tr", {}, cell(f.instance), cell(f.reason), h("td", {}, String(f.count))))))
            : h("p", {class: "muted"}, "No sender failed to authenticate since the daemon started."))),
      h("section", {id: "rate"}, h("h2", {}, "Incidents per minute, last hour"),
        h("p", {}, `${total} in the last hour; busiest minute ${Math.max(0, ...counts)}.`),
        chart(counts, health.incidents_per_minute.since)));
    await sleep(15000, signal);
  }
}

// 60 bars in an SVG drawn through the DOM (no markup from data).
function chart(counts, since) {
  const width = 720, height = 200, left = 34, bottom = 20, top = 8;
  const peak = Math.max(1, ...counts);
  const svg = document.createElementNS(SVG, "svg");
  svg.setAttribute("viewBox", `0 0 ${width} ${height}`);
  svg.setAttribute("class", "chart");
  svg.setAttribute("role", "img");
  svg.setAttribute("aria-label", `Incidents per minute for the last ${counts.length} minutes, peak ${peak}`);
  const add = (tag, attrs, text) => {
    const el = document.createElementNS(SVG, tag);
    for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, String(v));
    if (text !== undefined) el.textContent = text;
    svg.append(el);
    return el;
  };
  const plotH = height - bottom - top;
  const step = (width - left) / Math.max(1, counts.length);
  add("line", {x1: left, y1: top + plotH, x2: width, y2: top + plotH});
  add("text", {x: 2, y: top + 8}, String(peak));
  add("text", {x: 2, y: top + plotH}, "0");
  counts.forEach((n, i) => {
    const barH = (n / peak) * plotH;
    const bar = add("rect", {class: "bar", x: left + i * step + 1, y: top + plotH - barH, width: Math.max(1, step - 2), height: barH});
    const title = document.createElementNS(SVG, "title");
    title.textContent = `${n} at minute ${i + 1} of ${counts.length}`;
    bar.append(title);
  });
  if (since) {
    add("text", {x: left, y: height - 4}, `${since.slice(11, 16)} UTC`);
    add("text", {x: width - 40, y: height - 4}, "now");
  }
  return svg;
}
