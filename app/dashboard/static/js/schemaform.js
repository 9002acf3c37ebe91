// Forms generated from the JSON schemas the API serves (pydantic's model_json_schema): one control per
// property, with its type, range, default, description and enum. A control left empty is omitted from the
// value, so the server applies the documented default (shown as the placeholder and under the label); an
// empty form is the all-defaults request. Fields with per-preset values (`presets: {lethe, reference}`) show
// the chosen preset's value as their default. Shapes the controls do not cover (dicts, unions of objects,
// lists of objects) get a small JSON box, so every schema stays fully expressible.

import { h } from "./dom.js";

let counter = 0;

function resolve(root, schema) {
  let node = schema || {};
  for (let guard = 0; guard < 20 && node.$ref; guard += 1) {
    const name = node.$ref.split("/").pop();
    const target = (root.$defs || root.definitions || {})[name] || {};
    const { $ref, ...rest } = node; // a $ref's siblings (description, default) win over the target's
    node = { ...target, ...rest };
  }
  if (Array.isArray(node.allOf) && node.allOf.length === 1) {
    const { allOf, ...rest } = node;
    node = { ...resolve(root, allOf[0]), ...rest };
  }
  return node;
}

/** {schema, nullable}: a `X | None` union is X, nullable; other unions stay as they are. */
function unwrap(root, schema) {
  const node = resolve(root, schema);
  const variants = node.anyOf || node.oneOf;
  if (!Array.isArray(variants)) return { schema: node, nullable: false };
  const others = variants.filter((v) => v.type !== "null");
  if (others.length === 1) {
    const { anyOf, oneOf, ...rest } = node;
    return { schema: { ...resolve(root, others[0]), ...rest }, nullable: others.length < variants.length };
  }
  return { schema: node, nullable: others.length < variants.length };
}

function show(value) {
  return value === undefined ? "" : JSON.stringify(value);
}

/** "integer, 1 – 1000" style summary of a field's type and range. */
export function describeType(schema, nullable) {
  const parts = [];
  if (schema.enum) parts.push(`one of ${schema.enum.map(show).join(", ")}`);
  else if (schema.const !== undefined) parts.push(`always ${show(schema.const)}`);
  else if (schema.type === "array") {
    const items = schema.items || {};
    parts.push(`list of ${items.type || "values"}`);
    if (schema.minItems !== undefined || schema.maxItems !== undefined) {
      parts.push(`${schema.minItems ?? 0}–${schema.maxItems ?? "∞"} items`);
    }
  } else if (schema.type) parts.push(schema.type);
  const lo = schema.minimum ?? schema.exclusiveMinimum;
  const hi = schema.maximum ?? schema.exclusiveMaximum;
  if (lo !== undefined || hi !== undefined) {
    const left = lo === undefined ? "−∞" : `${lo}${schema.exclusiveMinimum !== undefined ? " (excl.)" : ""}`;
    const right = hi === undefined ? "∞" : `${hi}${schema.exclusiveMaximum !== undefined ? " (excl.)" : ""}`;
    parts.push(`${left} … ${right}`);
  }
  if (schema.maxLength !== undefined) parts.push(`≤ ${schema.maxLength} chars`);
  if (nullable) parts.push("or null");
  return parts.join(", ");
}

function checkNumber(schema, value) {
  if (schema.type === "integer" && !Number.isInteger(value)) return "must be a whole number";
  if (schema.minimum !== undefined && value < schema.minimum) return `must be ≥ ${schema.minimum}`;
  if (schema.maximum !== undefined && value > schema.maximum) return `must be ≤ ${schema.maximum}`;
  if (schema.exclusiveMinimum !== undefined && value <= schema.exclusiveMinimum) {
    return `must be > ${schema.exclusiveMinimum}`;
  }
  if (schema.exclusiveMaximum !== undefined && value >= schema.exclusiveMaximum) {
    return `must be < ${schema.exclusiveMaximum}`;
  }
  return null;
}

function parseScalar(schema, text) {
  if (schema.type === "integer" || schema.type === "number") {
    const value = Number(text);
    if (text.trim() === "" || !Number.isFinite(value)) throw new Error(`${JSON.stringify(text)} is not a number`);
    const problem = checkNumber(schema, value);
    if (problem) throw new Error(`${value} ${problem}`);
    return value;
  }
  if (schema.type === "boolean") return text === "true";
  return text;
}

function isScalar(schema) {
  return ["integer", "number", "string", "boolean"].includes(schema.type);
}

/**
 * One property's control. Returns {el, read(): {set, value} (throws Error with a message on bad input),
 * setError(text), setDefault(value), fill(value)}.
 */
function control(root, name, rawSchema, { idPrefix, required, presetDefault }) {
  const { schema, nullable } = unwrap(root, rawSchema);
  const id = `${idPrefix}-${name}`;
  const documented = presetDefault !== undefined ? presetDefault : schema.default;
  const defaultText = h("span", { class: "default", dataset: { defaultFor: name } });
  const error = h("span", { class: "field-error error", hidden: true });
  let input;
  let read;
  let fill;
  let placeholder = () => {};

  if (schema.type === "object" && schema.properties) {
    // A nested object: its own sub-form in a collapsible group; empty when none of its fields is set.
    const sub = schemaForm(root, schema, { idPrefix: id });
    const group = h("details", { class: "nested", dataset: { param: name } },
      h("summary", {}, h("strong", {}, name), schema.description ? h("span", { class: "muted" }, ` — ${firstLine(schema.description)}`) : null),
      sub.el);
    read = () => {
      const value = sub.value();
      return Object.keys(value).length ? { set: true, value } : { set: false };
    };
    fill = (value) => {
      sub.fill(value || {});
      if (value && Object.keys(value).length) group.open = true;
    };
    return { el: group, read, setError: () => {}, setDefault: () => {}, fill, sub };
  }

  const options = schema.enum || (schema.const !== undefined ? [schema.const] : null);
  if (options || schema.type === "boolean") {
    const values = options || [true, false];
    input = h("select", { id, name, dataset: { param: name } },
      h("option", { value: "" }, ""),
      values.map((v) => h("option", { value: JSON.stringify(v) }, String(v))),
      nullable ? h("option", { value: "null" }, "null") : null);
    placeholder = (value) => {
      input.options[0].textContent = value === undefined ? "(not set)" : `default (${value === null ? "null" : value})`;
    };
    read = () => (input.value === "" ? { set: false } : { set: true, value: JSON.parse(input.value) });
    fill = (value) => {
      input.value = value === undefined ? "" : JSON.stringify(value);
    };
  } else if (isScalar(schema)) {
    const numeric = schema.type === "integer" || schema.type === "number";
    input = h("input", {
      id, name, dataset: { param: name }, type: numeric ? "number" : "text",
      step: numeric ? (schema.type === "integer" ? "1" : "any") : null,
      min: numeric ? schema.minimum ?? schema.exclusiveMinimum : null,
      max: numeric ? schema.maximum ?? schema.exclusiveMaximum : null,
      maxlength: schema.maxLength, spellcheck: "false", autocomplete: "off",
    });
    placeholder = (value) => {
      input.placeholder = value === undefined ? "" : value === null ? "null (default)" : String(value);
    };
    read = () => {
      const text = input.value;
      if (text.trim() === "") return { set: false };
      if (nullable && text.trim() === "null") return { set: true, value: null };
      return { set: true, value: parseScalar(schema, text) };
    };
    fill = (value) => {
      input.value = value === undefined || value === null ? "" : String(value);
    };
  } else if (schema.type === "array" && schema.items && isScalar(resolve(root, schema.items))) {
    // A list of scalars as comma-separated text ("0.5, 0.75"); an empty list is "[]".
    const items = resolve(root, schema.items);
    input = h("input", { id, name, type: "text", dataset: { param: name }, spellcheck: "false", autocomplete: "off" });
    placeholder = (value) => {
      input.placeholder = Array.isArray(value) ? (value.length ? value.join(", ") : "[] (empty)") : value === null ? "null (default)" : "comma-separated";
    };
    read = () => {
      const text = input.value.trim();
      if (text === "") return { set: false };
      if (text === "[]") return { set: true, value: [] };
      if (nullable && text === "null") return { set: true, value: null };
      const value = text.replace(/^\[|\]$/g, "").split(",").map((part) => parseScalar(items, part.trim()));
      if (schema.minItems !== undefined && value.length < schema.minItems) throw new Error(`needs at least ${schema.minItems} items`);
      if (schema.maxItems !== undefined && value.length > schema.maxItems) throw new Error(`takes at most ${schema.maxItems} items`);
      return { set: true, value };
    };
    fill = (value) => {
      input.value = Array.isArray(value) ? (value.length ? value.join(", ") : "[]") : "";
    };
  } else {
    // Anything else (dicts, lists of objects, unions of objects): JSON for this one field.
    input = h("textarea", { id, name, rows: 2, dataset: { param: name }, spellcheck: "false" });
    placeholder = (value) => {
      input.placeholder = value === undefined ? "JSON" : JSON.stringify(value);
    };
    read = () => {
      const text = input.value.trim();
      if (text === "") return { set: false };
      try {
        return { set: true, value: JSON.parse(text) };
      } catch (err) {
        throw new Error(`not valid JSON (${err.message})`);
      }
    };
    fill = (value) => {
      input.value = value === undefined ? "" : JSON.stringify(value);
    };
  }

  const setDefault = (value) => {
    placeholder(value);
    defaultText.textContent = value === undefined ? (required ? "required" : "optional") : `default: ${show(value)}`;
  };
  setDefault(documented);
  const type = describeType(schema, nullable);
  const el = h("div", { class: "field schema-field", dataset: { field: name } },
    h("label", { for: id }, name, " ", h("span", { class: "type muted" }, type ? `(${type})` : ""), " ", defaultText),
    input,
    schema.description ? h("small", { class: "muted description" }, firstLine(schema.description, 400)) : null,
    error);
  const setError = (text) => {
    error.textContent = text || "";
    error.hidden = !text;
    input.classList.toggle("invalid", Boolean(text));
  };
  input.addEventListener("input", () => setError(""));
  return { el, read, setError, setDefault, fill, input };
}

function firstLine(text, max = 200) {
  const flat = String(text).replace(/\s+/g, " ").trim();
  return flat.length > max ? `${flat.slice(0, max - 1)}…` : flat;
}

/**
 * A form for ``schema`` (resolved against ``root``'s $defs). Returns {el, value(), fill(values),
 * markErrors(problemErrors, prefix) → shown count, onChange(fn)}. value() throws an Error naming the
 * first bad field (and marks every bad field).
 */
export function schemaForm(root, schema, { idPrefix = `sf${(counter += 1)}` } = {}) {
  const node = resolve(root, schema);
  const properties = node.properties || {};
  const required = new Set(node.required || []);
  const controls = new Map();
  const presetTables = Object.entries(properties).filter(([, p]) => p && p.presets);
  for (const [name, prop] of Object.entries(properties)) {
    const presetDefault = prop.presets ? prop.presets.lethe : undefined;
    controls.set(name, control(root, name, prop, { idPrefix, required: required.has(name), presetDefault }));
  }
  const listeners = [];
  const el = h("div", { class: "schema-form", dataset: { schema: node.title || "" } },
    [...controls.values()].map((c) => c.el));
  el.addEventListener("input", () => listeners.forEach((fn) => fn()));
  el.addEventListener("change", () => listeners.forEach((fn) => fn()));

  const presetControl = controls.get("preset");
  if (presetControl && presetTables.length) {
    // Defaults follow the chosen preset: the placeholders show what an empty field will be.
    const update = () => {
      let preset = "lethe";
      try {
        const read = presetControl.read();
        if (read.set) preset = read.value;
      } catch {
        // leave the default preset
      }
      for (const [name, prop] of presetTables) controls.get(name).setDefault(prop.presets[preset]);
    };
    presetControl.el.addEventListener("change", update);
  }

  const value = () => {
    const out = {};
    let first = null;
    for (const [name, c] of controls) {
      try {
        const read = c.read();
        if (read.set) out[name] = read.value;
        c.setError("");
      } catch (err) {
        c.setError(err.message);
        if (!first) first = new Error(`${name}: ${err.message}`);
      }
    }
    if (first) throw first;
    return out;
  };
  const fill = (values) => {
    for (const [name, c] of controls) c.fill(values ? values[name] : undefined);
    if (presetControl) presetControl.el.dispatchEvent(new Event("change"));
  };
  /** Show a 422's errors (loc under ``prefix``) beside their fields; returns how many were placed. */
  const markErrors = (errors, prefix = []) => {
    let placed = 0;
    for (const item of errors || []) {
      const loc = (item.loc || []).filter((part) => part !== "body");
      if (prefix.some((p, i) => loc[i] !== p)) continue;
      const rest = loc.slice(prefix.length);
      let form = { controls };
      let target = null;
      for (const part of rest) {
        const c = form.controls && form.controls.get(String(part));
        if (!c) break;
        target = c;
        form = c.sub || {};
      }
      if (target && target.setError) {
        target.setError(item.msg);
        placed += 1;
      }
    }
    return placed;
  };
  return { el, value, fill, markErrors, controls, onChange: (fn) => listeners.push(fn), get empty() {
    try {
      return Object.keys(value()).length === 0;
    } catch {
      return false;
    }
  } };
}
