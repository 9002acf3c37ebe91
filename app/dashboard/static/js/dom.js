// Small DOM helpers. Text always goes in as text nodes: nothing from the API is parsed as HTML.

const SVG_NS = "http://www.w3.org/2000/svg"; // an XML namespace name, never fetched

function append(el, children) {
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
}

function setAttrs(el, attrs) {
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (name === "style" && typeof value === "object") {
      Object.assign(el.style, value); // CSSOM, allowed by the page's CSP (style attributes are not)
    } else if (name.startsWith("on") && typeof value === "function") {
      el.addEventListener(name.slice(2), value);
    } else if (name === "dataset") {
      Object.assign(el.dataset, value);
    } else if (name in el && typeof value !== "string" && el.namespaceURI !== SVG_NS) {
      el[name] = value;
    } else {
      el.setAttribute(name, value === true ? "" : String(value));
    }
  }
}

/** h("div", {class: "x", onclick: fn}, "text", child, [more]) */
export function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  setAttrs(el, attrs);
  append(el, children);
  return el;
}

/** The same for SVG elements. */
export function s(tag, attrs, ...children) {
  const el = document.createElementNS(SVG_NS, tag);
  setAttrs(el, attrs);
  append(el, children);
  return el;
}

export function clear(el) {
  while (el.firstChild) el.firstChild.remove();
  return el;
}

export function replace(el, ...children) {
  clear(el);
  append(el, children);
  return el;
}

export function shortId(id) {
  return id ? String(id).slice(0, 8) : "—";
}

export function fmt(value, digits = 2) {
  if (value === null || value === undefined) return "—";
  if (typeof value !== "number") return String(value);
  if (!Number.isFinite(value)) return String(value);
  if (Number.isInteger(value) && Math.abs(value) < 1e6) return String(value);
  const abs = Math.abs(value);
  if (abs !== 0 && (abs < 10 ** -digits || abs >= 1e6)) return value.toExponential(digits);
  return value.toFixed(digits);
}

export function fmtTime(iso) {
  if (!iso) return "—";
  const date = new Date(iso);
  return Number.isNaN(date.getTime()) ? String(iso) : date.toLocaleString();
}

export function fmtDuration(seconds) {
  if (seconds === null || seconds === undefined) return "—";
  if (seconds < 60) return `${seconds.toFixed(seconds < 10 ? 2 : 1)} s`;
  const minutes = Math.floor(seconds / 60);
  return `${minutes} min ${Math.round(seconds - minutes * 60)} s`;
}

export const TERMINAL = new Set(["succeeded", "failed", "cancelled"]);

export function statusBadge(status) {
  return h("span", { class: `status status-${status}`, dataset: { status } }, status);
}

/** A progress bar for a job's ``progress`` object ({phase, step, total, fraction}). */
export function progressBar(job) {
  const p = job.progress || {};
  let fraction = typeof p.fraction === "number" ? p.fraction : 0;
  if (job.status === "succeeded") fraction = 1;
  const pct = Math.max(0, Math.min(1, fraction)) * 100;
  const steps = p.total ? ` ${p.step}/${p.total}` : "";
  // "queued" is the phase a job has before a worker reports one: not a place where it ran.
  const ran = p.phase && p.phase !== "queued";
  const where = ran ? `${p.phase}${steps} (${pct.toFixed(0)}%)` : "";
  // A finished job's bar says how it ended; a failed or cancelled one also where it stopped.
  let label;
  if (job.status === "succeeded") label = "done";
  else if (job.status === "failed" || job.status === "cancelled") {
    if (where) label = `${job.status} at ${where}`;
    else label = job.started_at ? job.status : `${job.status} before it started`;
  } else if (job.status === "running") label = where || "starting";
  else label = where || "queued";
  const fill = h("div", { class: "bar-fill" });
  fill.style.width = `${pct}%`;
  return h(
    "div",
    {
      class: `bar bar-${job.status}`,
      role: "progressbar",
      "aria-valuemin": "0",
      "aria-valuemax": "100",
      "aria-valuenow": pct.toFixed(0),
      dataset: { fraction: String(fraction), status: job.status },
    },
    fill,
    h("span", { class: "bar-label" }, label),
  );
}

export function section(title, ...children) {
  return h("section", { class: "panel" }, h("h2", {}, title), ...children);
}

export function note(text, kind = "muted") {
  return h("p", { class: kind }, text);
}

export function link(href, text) {
  return h("a", { href }, text);
}

/** A table from column headers and row arrays (cells may be nodes). */
export function table(headers, rows, attrs = {}) {
  return h(
    "table",
    attrs,
    h("thead", {}, h("tr", {}, headers.map((head) => h("th", { scope: "col" }, head)))),
    h(
      "tbody",
      {},
      rows.map((row) => (row instanceof Node ? row : h("tr", {}, row.map((cell) => h("td", {}, cell))))),
    ),
  );
}
