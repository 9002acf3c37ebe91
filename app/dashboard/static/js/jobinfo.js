// What a job row needs beyond its fields: a failed job's error in words, and a short digest of its params
// with a diff against another job's, so that rows differing only in params can be told apart.

import { h } from "./dom.js";

// Absolute server paths (POSIX and Windows) in error text: the user cannot act on them and they reveal
// the deployment's layout, so only the file name is kept.
const PATH = /(?:[A-Za-z]:\\|\/)(?:[\w.@+-]+[\\/])+([\w.@+-]+)/g;

export function redactPaths(text) {
  return String(text).replace(PATH, "…/$1");
}

function asObject(value) {
  if (typeof value !== "string") return value;
  const trimmed = value.trim();
  if (!trimmed.startsWith("{") && !trimmed.startsWith("[")) return value;
  try {
    return JSON.parse(trimmed); // a detail that is itself escaped JSON is shown as its fields
  } catch {
    return value;
  }
}

function lines(value, prefix = "") {
  value = asObject(value);
  if (value === null || value === undefined) return [];
  if (Array.isArray(value)) {
    return value.flatMap((item) => {
      const v = asObject(item);
      if (v && typeof v === "object" && !Array.isArray(v) && "msg" in v) {
        return [`${prefix}${(v.loc || []).join(".")}${v.loc && v.loc.length ? ": " : ""}${v.msg}`];
      }
      return lines(v, prefix);
    });
  }
  if (typeof value === "object") {
    return Object.entries(value).filter(([key]) => key !== "trace" && key !== "type")
      .flatMap(([key, v]) => {
        const inner = asObject(v);
        if (inner && typeof inner === "object") return [`${prefix}${key}:`, ...lines(inner, `${prefix}  `)];
        return [`${prefix}${key}: ${inner}`];
      });
  }
  return [`${prefix}${value}`];
}

/** A job's ``error`` object as readable text: the code as a heading, the detail, no traceback, no paths. */
export function errorText(error) {
  if (!error) return { title: "", text: "" };
  const e = asObject(error);
  if (typeof e !== "object") return { title: "Error", text: redactPaths(e) };
  const { code, title, detail, message, trace, ...rest } = e;
  const heading = String(title || code || "error").replace(/[-_]/g, " ");
  const body = [...lines(detail ?? message), ...lines(rest)];
  return { title: heading.charAt(0).toUpperCase() + heading.slice(1), text: redactPaths(body.join("\n")) };
}

export function errorBlock(error, id = "job-error") {
  const { title, text } = errorText(error);
  return h("div", { class: "error-block", id, role: "alert" }, h("strong", {}, title), text ? h("p", { class: "error" }, text) : null);
}

function canonical(value) {
  if (Array.isArray(value)) return `[${value.map(canonical).join(",")}]`;
  if (value && typeof value === "object") {
    return `{${Object.keys(value).sort().map((k) => `${JSON.stringify(k)}:${canonical(value[k])}`).join(",")}}`;
  }
  return JSON.stringify(value);
}

/** Six hex digits of FNV-1a over the canonical JSON: a label, not a security hash. */
export function paramsDigest(params) {
  const text = canonical(params || {});
  let hash = 0x811c9dc5;
  for (let i = 0; i < text.length; i += 1) {
    hash ^= text.charCodeAt(i);
    hash = Math.imul(hash, 0x01000193) >>> 0;
  }
  return hash.toString(16).padStart(8, "0").slice(0, 6);
}

function flatten(value, prefix = "", out = {}) {
  if (value && typeof value === "object" && !Array.isArray(value)) {
    for (const [k, v] of Object.entries(value)) flatten(v, prefix ? `${prefix}.${k}` : k, out);
    if (!Object.keys(value).length && prefix) out[prefix] = {};
  } else {
    out[prefix] = value;
  }
  return out;
}

/** [{key, a, b}] for every flattened key whose value differs (undefined = absent). */
export function paramsDiff(a, b) {
  const fa = flatten(a || {});
  const fb = flatten(b || {});
  const keys = [...new Set([...Object.keys(fa), ...Object.keys(fb)])].sort();
  return keys.filter((k) => canonical(fa[k]) !== canonical(fb[k])).map((k) => ({ key: k, a: fa[k], b: fb[k] }));
}

/** "epochs=2, lr=0.1": the params in one line (for a hover title). */
export function paramsLine(params) {
  const flat = flatten(params || {});
  const parts = Object.entries(flat).map(([k, v]) => `${k}=${JSON.stringify(v)}`);
  return parts.length ? parts.join(", ") : "(defaults)";
}
