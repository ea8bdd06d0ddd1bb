// DOM building and formatting. Data only ever reaches the page as text nodes or attribute values:
// nothing here (or anywhere in the dashboard) assigns innerHTML.

/**
 * h("a.link", {href: "#/calls", dataset: {callId: id}}, "text", child, [more])
 * Attributes: class (string), dataset (object), on<event> (a function, added as a listener),
 * boolean attributes as true/false; everything else through setAttribute.
 */
export function h(tag, attrs, ...children) {
  const [name, ...classes] = tag.split(".");
  const el = document.createElement(name || "div");
  if (classes.length) el.classList.add(...classes);
  if (attrs) {
    for (const [key, value] of Object.entries(attrs)) {
      if (value === undefined || value === null || value === false) continue;
      if (key === "class") {
        for (const c of String(value).split(/\s+/)) if (c) el.classList.add(c);
      } else if (key === "dataset") {
        for (const [k, v] of Object.entries(value)) if (v !== undefined && v !== null) el.dataset[k] = String(v);
      } else if (key.startsWith("on") && typeof value === "function") {
        el.addEventListener(key.slice(2), value);
      } else if (key === "testid") {
        el.dataset.testid = String(value);
      } else if (value === true) {
        el.setAttribute(key, "");
      } else if (key === "value" && "value" in el) {
        el.value = String(value);
      } else {
        el.setAttribute(key, String(value));
      }
    }
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const child of children) {
    if (child === undefined || child === null || child === false) continue;
    if (Array.isArray(child)) append(el, child);
    else if (child instanceof Node) el.appendChild(child);
    else el.appendChild(document.createTextNode(String(child)));
  }
}

export function clear(el) {
  while (el.firstChild) el.removeChild(el.firstChild);
  return el;
}

export function replace(el, ...children) {
  clear(el);
  append(el, children);
  return el;
}

// -- formatting ----------------------------------------------------------------------------------

const pad = (n) => String(n).padStart(2, "0");

/** A <time> element: today as HH:MM:SS, otherwise "Mar 4 14:05"; the full local time as title. */
export function time(iso) {
  if (!iso) return h("span.muted", null, "—");
  const d = new Date(iso);
  if (Number.isNaN(d.getTime())) return h("span", null, String(iso));
  return h("time", { datetime: d.toISOString(), title: d.toLocaleString() }, shortTime(d));
}

export function shortTime(d) {
  const now = new Date();
  const clock = `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
  if (d.toDateString() === now.toDateString()) return clock;
  const month = d.toLocaleString("en", { month: "short" });
  const year = d.getFullYear() === now.getFullYear() ? "" : ` ${d.getFullYear()}`;
  return `${month} ${d.getDate()}${year} ${clock.slice(0, 5)}`;
}

/** Seconds as "420 ms" or "1.25 s"; "—" when absent. */
export function seconds(s) {
  if (s === null || s === undefined || Number.isNaN(s)) return "—";
  if (s < 1) return `${Math.round(s * 1000)} ms`;
  if (s < 100) return `${s.toFixed(2)} s`;
  return `${Math.round(s)} s`;
}

export function duration(fromIso, toIso) {
  if (!fromIso) return "—";
  const ms = (toIso ? new Date(toIso) : new Date()) - new Date(fromIso);
  if (!(ms >= 0)) return "—";
  const s = Math.round(ms / 1000);
  if (s < 60) return `${s} s`;
  if (s < 3600) return `${Math.floor(s / 60)} min ${pad(s % 60)} s`;
  return `${Math.floor(s / 3600)} h ${pad(Math.floor((s % 3600) / 60))} min`;
}

export function count(n) {
  return typeof n === "number" ? n.toLocaleString("en") : "—";
}

export function percent(x) {
  return typeof x === "number" ? `${Math.round(x * 100)}%` : "—";
}

export function shortId(id, n = 8) {
  const s = String(id ?? "");
  return s.length > n + 1 ? `${s.slice(0, n)}…` : s;
}

/** Words for a machine name: "llm_first_token" -> "LLM first token". */
export function label(name) {
  const s = String(name ?? "").replace(/[_.]+/g, " ").trim();
  const words = { llm: "LLM", asr: "ASR", tts: "TTS", id: "id" };
  return s
    .split(" ")
    .map((w, i) => words[w] ?? (i === 0 ? w.charAt(0).toUpperCase() + w.slice(1) : w))
    .join(" ");
}

/** A coloured pill; the class encodes the value (only from a fixed set: see admin.css). */
export function badge(text, kind) {
  const safe = String(kind ?? text ?? "").toLowerCase().replace(/[^a-z0-9-]/g, "-");
  return h(`span.badge.badge-${safe}`, null, String(text ?? ""));
}

/**
 * A table with a header row, wrapped for horizontal scrolling on narrow screens; with `stack`, on
 * a phone each row becomes a block of "label: value" lines instead (labels from the columns, put on
 * every row however it is added later).
 */
export function table({ columns, rows, testid, caption, empty = "Nothing to show.", className, stack = false }) {
  const head = h("thead", null, h("tr", null, columns.map((c) => h("th", { scope: "col", class: c.class }, c.title))));
  const body = h("tbody");
  if (stack) {
    const labelRow = (tr) => {
      tr.setAttribute("role", "row");
      [...tr.cells].forEach((td, i) => {
        td.setAttribute("role", "cell");
        if (columns[i] && !td.dataset.label) td.dataset.label = columns[i].title;
      });
    };
    new MutationObserver((changes) => {
      for (const change of changes) for (const node of change.addedNodes) if (node.nodeName === "TR") labelRow(node);
    }).observe(body, { childList: true });
  }
  for (const row of rows) body.appendChild(row);
  const tbl = h("table", { class: ["data", stack ? "stack" : "", className].filter(Boolean).join(" "), testid, role: stack ? "table" : undefined },
    caption ? h("caption.visually-hidden", null, caption) : null, head, body);
  const wrap = h("div.table-wrap", { tabindex: "0", role: "region", "aria-label": caption || "table" }, tbl);
  const note = h("p.empty", { hidden: rows.length > 0 }, empty);
  return { wrap: h("div", null, wrap, note), table: tbl, body, note };
}

/** One <tr>: cells are nodes, strings, or {content, class, testid} objects. */
export function row(cells, attrs) {
  return h("tr", attrs, cells.map((c) => {
    if (c && typeof c === "object" && !(c instanceof Node) && !Array.isArray(c)) {
      return h("td", { class: c.class, testid: c.testid, "data-label": c.label }, c.content);
    }
    return h("td", null, c);
  }));
}

export function field(labelText, control, hint) {
  const id = control.id || `f-${Math.random().toString(36).slice(2, 9)}`;
  control.id = id;
  return h("div.field", null, h("label", { for: id }, labelText), control, hint ? h("small.muted", null, hint) : null);
}

export function select(name, options, value) {
  return h("select", { name }, options.map(([v, text]) => h("option", { value: v, selected: v === value }, text)));
}
