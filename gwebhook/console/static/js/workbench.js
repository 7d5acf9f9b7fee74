// The mapping workbench: expressions for name, type, occurred and fields,
// previewed over the instance's samples by the daemon's own mapping code
// (POST /api/v1/mapping/preview), and the TOML to paste into the config.
import {api, instances} from "./api.js";
import {h, fill, pretty, select, debounce, status} from "./dom.js";

const MAP_KEYS = ["name", "type", "occurred"];

// TOML: a bare key where TOML allows one, else a quoted one; basic strings
// with every character TOML requires escaped.
export function tomlKey(key) {
  return /^[A-Za-z0-9_-]+$/.test(key) ? key : tomlString(key);
}

export function tomlString(text) {
  let out = '"';
  for (const ch of text) {
    const code = ch.codePointAt(0);
    if (ch === '"') out += '\\"';
    else if (ch === "\\") out += "\\\\";
    else if (ch === "\n") out += "\\n";
    else if (ch === "\t") out += "\\t";
    else if (ch === "\r") out += "\\r";
    else if (code < 0x20 || code === 0x7f) out += "\\u" + code.toString(16).padStart(4, "0");
    else out += ch;
  }
  return out + '"';
}

export function toml(map, fields) {
  const lines = [];
  const mapped = MAP_KEYS.filter((k) => map[k]);
  if (mapped.length) {
    lines.push("[instance.map]");
    for (const k of mapped) lines.push(`${k} = ${tomlString(map[k])}`);
  }
  const named = Object.entries(fields).filter(([k, v]) => k && v);
  if (named.length) {
    if (lines.length) lines.push("");
    lines.push("[instance.fields]");
    for (const [k, v] of named) lines.push(`${tomlKey(k)} = ${tomlString(v)}`);
  }
  return lines.length ? lines.join("\n") + "\n" : "# no expressions yet\n";
}

export async function workbenchPage(main, {params, signal, navigate}) {
  const known = await instances(signal);
  const name = params.get("instance") || (known.find((i) => i.store_samples) || known[0] || {}).name || "";
  const instance = known.find((i) => i.name === name);
  const inputs = {};
  const compileErrors = {};
  const exprs = h("div", {class: "expr"});
  for (const key of MAP_KEYS) {
    inputs[key] = h("input", {id: `map-${key}`, type: "text", spellcheck: "false", autocomplete: "off",
                              placeholder: key === "occurred" ? "e.g. create_time" : "JMESPath, e.g. title"});
    inputs[key].value = instance?.map?.[key] || "";
    compileErrors[key] = h("div", {class: "compile-error", id: `error-${key}`, role: "alert"});
    exprs.append(h("label", {for: `map-${key}`}, key), inputs[key], compileErrors[key]);
  }
  const fieldRows = h("div", {id: "field-rows"});
  const addField = (key = "", expression = "") => {
    const n = fieldRows.children.length;
    const keyInput = h("input", {type: "text", class: "field-key", "aria-label": `Field ${n + 1} name`,
                                 placeholder: "name", spellcheck: "false"});
    const exprInput = h("input", {type: "text", class: "field-expr", "aria-label": `Field ${n + 1} expression`,
                                  placeholder: "JMESPath", spellcheck: "false"});
    keyInput.value = key;
    exprInput.value = expression;
    const remove = h("button", {type: "button", class: "secondary", "aria-label": `Remove field ${n + 1}`}, "×");
    const rowEl = h("div", {class: "fieldrow"}, keyInput, exprInput, remove);
    remove.addEventListener("click", () => { rowEl.remove(); update(); });
    keyInput.addEventListener("input", () => update());
    exprInput.addEventListener("input", () => update());
    fieldRows.append(rowEl);
    return keyInput;
  };
  for (const [k, v] of Object.entries(instance?.fields || {})) addField(k, v);
  const addButton = h("button", {type: "button", class: "secondary", id: "add-field"}, "Add a field");
  addButton.addEventListener("click", () => addField().focus());
  const tomlBlock = h("pre", {id: "toml", tabindex: "0", "aria-label": "TOML to paste into the instance"});
  const copy = h("button", {type: "button", class: "secondary", id: "copy-toml"}, "Copy TOML");
  copy.addEventListener("click", async () => {
    try {
      await navigator.clipboard.writeText(tomlBlock.textContent);
      status("TOML copied");
    } catch (e) {
      status("Select the TOML and copy it by hand");
    }
  });
  const results = h("div", {id: "results"});
  const summary = h("p", {class: "muted", id: "preview-summary", "aria-live": "polite"});

  const current = () => {
    const map = {};
    for (const key of MAP_KEYS) if (inputs[key].value.trim()) map[key] = inputs[key].value;
    const fields = {};
    for (const rowEl of fieldRows.children) {
      const [k, v] = rowEl.querySelectorAll("input");
      if (k.value && v.value.trim()) fields[k.value] = v.value;
    }
    return {map, fields};
  };

  let asked = 0;
  const preview = async () => {
    const {map, fields} = current();
    tomlBlock.textContent = toml(map, fields);
    const mine = ++asked;
    let answer;
    try {
      answer = await api("/api/v1/mapping/preview", {body: {instance: name, map, fields}, signal});
    } catch (e) {
      if (!signal.aborted) summary.textContent = `Preview failed: ${e.message}`;
      return;
    }
    if (mine !== asked) return;  // a newer preview is on its way
    showResults(answer.results, fields);
  };
  const update = debounce(preview, 200);
  for (const key of MAP_KEYS) inputs[key].addEventListener("input", update);

  const showResults = (list, fields) => {
    const first = list[0]?.errors || {};
    for (const key of MAP_KEYS) {
      // An expression that does not compile is an error of every result.
      const everywhere = list.length && list.every((r) => r.errors[key] === first[key]) ? first[key] : "";
      compileErrors[key].textContent = everywhere || "";
    }
    const failing = list.filter((r) => Object.keys(r.errors).length).length;
    summary.textContent = list.length
      ? `${list.length} sample${list.length === 1 ? "" : "s"}, ${failing} with errors.`
      : "This instance keeps no samples yet (store_samples = true, then send it something).";
    fill(results, list.length ? h("div", {class: "table-wrap"}, h("table", {id: "preview"},
      h("thead", {}, h("tr", {}, ["#", "name", "type", "occurred", "fields", "errors"].map((t) => h("th", {scope: "col"}, t)))),
      h("tbody", {}, list.map((r, i) => h("tr", {class: Object.keys(r.errors).length ? "has-errors" : null},
        h("td", {}, String(i + 1)),
        h("td", {class: "r-name"}, r.name ?? "null"),
        h("td", {class: "r-type"}, r.type ?? "null"),
        h("td", {class: "r-occurred"}, r.occurred ?? "null"),
        h("td", {class: "r-fields"}, h("pre", {}, pretty(r.fields))),
        h("td", {class: "r-errors"}, Object.keys(r.errors).length
          ? h("ul", {class: "errors"}, Object.entries(r.errors).map(([k, v]) => h("li", {}, `${k}: ${v}`)))
          : h("span", {class: "ok"}, "ok"))))))) : null);
  };

  fill(main, 
    h("h1", {tabindex: "-1"}, "Mapping workbench"),
    h("div", {class: "toolbar"},
      select("wb-instance", "Instance", known.map((i) => [i.name, i.name]), name,
             (value) => navigate("workbench", {instance: value})),
      h("span", {class: "muted"}, "JMESPath over each sample as its sender sent it; computed by the daemon's own mapping.")),
    h("div", {class: "wb"},
      h("div", {},
        h("section", {}, h("h2", {}, "[instance.map]"), exprs),
        h("section", {}, h("h2", {}, "[instance.fields]"), fieldRows, addButton),
        h("section", {}, h("h2", {}, "TOML"), h("p", {class: "muted"},
          `Paste under the [[instance]] named ${name} in the config file, then reload (SIGHUP).`),
          tomlBlock, h("p", {}, copy))),
      h("section", {}, h("h2", {}, "Preview"), summary, results)));
  if (name) await preview();
}
