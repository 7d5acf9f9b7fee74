// Building the page from data: every value becomes a text node or an
// attribute set through the DOM, never markup.  No innerHTML anywhere.

const SAFE_HREF = /^(#\/[A-Za-z0-9/_?=&%.\-]*|\/api\/v1\/incidents\/[0-9]+\/body)$/;

// h("tr", {class: "new"}, h("td", {}, text), ...): an element, its
// properties and its children (strings become text nodes).
export function h(tag, props = {}, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(props)) {
    if (value === undefined || value === null || value === false) continue;
    if (key === "class") el.className = value;
    else if (key.startsWith("on")) el.addEventListener(key.slice(2), value);
    else if (key === "href") {
      // Links are the console's own routes, never a value from a payload.
      if (!SAFE_HREF.test(value)) throw new Error("refusing a link outside the console");
      el.setAttribute("href", value);
    } else el.setAttribute(key, value === true ? "" : String(value));
  }
  append(el, children);
  return el;
}

export function append(el, children) {
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : String(child));
  }
  return el;
}

export function clear(el) {
  el.replaceChildren();
  return el;
}

// A value as indented JSON text (deep or huge values stay text).
export function pretty(value) {
  try {
    return JSON.stringify(value, null, 2);
  } catch (e) {
    return String(value);
  }
}

// At most n characters of a value for a table cell; the whole is in title.
export function short(value, n = 160) {
  const text = value === null || value === undefined ? "" : String(value);
  return text.length > n ? text.slice(0, n) + "…" : text;
}

export function cell(value, n = 160, cls) {
  const text = value === null || value === undefined ? "" : String(value);
  return h("td", {class: cls, title: text.length > n ? text.slice(0, 2000) : null}, short(text, n));
}

// Definition list of [label, value-or-node] pairs.
export function facts(pairs) {
  return h("dl", {class: "facts"},
    pairs.map(([label, value]) => [h("dt", {}, label), h("dd", {}, value ?? "—")]));
}

export function incidentLink(id) {
  const digits = String(id);
  if (!/^[0-9]+$/.test(digits)) return digits;
  return h("a", {href: `#/incident/${digits}`}, digits);
}

export function select(id, label, options, current, onchange) {
  const sel = h("select", {id, onchange: () => onchange(sel.value)},
    options.map(([value, text]) => {
      const o = h("option", {value}, text);
      if (value === current) o.selected = true;
      return o;
    }));
  return [h("label", {for: id}, label), sel];
}

export function debounce(fn, ms) {
  let timer = null;
  return (...args) => {
    clearTimeout(timer);
    timer = setTimeout(() => fn(...args), ms);
  };
}

// A short message in the corner, read out by screen readers.
export function status(text) {
  const el = document.getElementById("status");
  if (el) el.textContent = text;
}

export function sleep(ms, signal) {
  return new Promise((resolve) => {
    const timer = setTimeout(resolve, ms);
    signal?.addEventListener("abort", () => { clearTimeout(timer); resolve(); }, {once: true});
  });
}

// Replace an element's children (nulls and falses left out).
export function fill(el, ...children) {
  el.replaceChildren();
  return append(el, children);
}
