// Submit a job: kind, inputs (dataset / architecture, model, forget set), method from GET /v1/methods,
// params as JSON (with the method's schema defaults as a hint), seed and device. Idempotency-Key per submit.

import { api, listAll } from "../api.js";
import { h, replace, section, shortId } from "../dom.js";
import { describeError, showError, toast } from "../ui.js";

const KINDS = ["train", "retrain", "unlearn", "evaluate", "prune", "worst_case_search", "audit"];
// Which inputs each kind takes.
const NEEDS = {
  train: ["dataset", "architecture"],
  retrain: ["model", "forget_set"],
  unlearn: ["model", "forget_set", "method"],
  evaluate: ["model", "forget_set"],
  prune: ["model"],
  worst_case_search: ["model"],
  audit: ["model", "forget_set"],
};
// The registry's job_kind for the kinds whose params schema comes from one registry entry.
const SCHEMA_KIND = { train: "train", retrain: "retrain", prune: "prune", worst_case_search: "search" };

function schemaHint(schema) {
  if (!schema || !schema.properties) return "";
  const lines = Object.entries(schema.properties).map(([name, prop]) => {
    const def = prop.default !== undefined ? ` = ${JSON.stringify(prop.default)}` : "";
    const type = prop.type || (prop.anyOf ? prop.anyOf.map((t) => t.type || t.$ref || "?").join(" | ") : "");
    return `${name}${type ? ` (${type})` : ""}${def}${prop.description ? ` — ${prop.description}` : ""}`;
  });
  return lines.join("\n");
}

function idempotencyKey() {
  // crypto.randomUUID needs a secure context; getRandomValues works on plain http too.
  const bytes = crypto.getRandomValues(new Uint8Array(16));
  return [...bytes].map((b) => b.toString(16).padStart(2, "0")).join("");
}

function field(label, control, id) {
  return h("div", { class: "field", dataset: { field: id } }, h("label", { for: control.id }, label), control);
}

function parseJson(text, what) {
  const trimmed = text.trim();
  if (!trimmed) return {};
  let value;
  try {
    value = JSON.parse(trimmed);
  } catch (error) {
    throw new Error(`${what} is not valid JSON: ${error.message}`);
  }
  if (value === null || typeof value !== "object" || Array.isArray(value)) throw new Error(`${what} must be a JSON object`);
  return value;
}

export async function submitView(ctx) {
  const params = new URLSearchParams(location.hash.split("?")[1] || "");
  const [methods, architectures, datasetPage, models, forgetSets, auditSchema] = await Promise.all([
    api("/methods", { signal: ctx.signal }),
    api("/architectures", { signal: ctx.signal }),
    api("/datasets?limit=200", { signal: ctx.signal }),
    listAll("/models", { signal: ctx.signal }),
    listAll("/forget-sets", { signal: ctx.signal }),
    api("/audit-params", { signal: ctx.signal }).catch(() => null),
  ]);

  const kind = h("select", { id: "submit-kind", name: "kind" },
    KINDS.map((k) => h("option", { value: k, selected: params.get("kind") === k }, k)));
  const dataset = h("select", { id: "submit-dataset", name: "dataset_id" },
    datasetPage.data.map((d) => h("option", { value: d.id }, `${d.name} (${d.n_train} train, ${shortId(d.id)})`)));
  const builtin = h("select", { id: "submit-builtin" },
    (datasetPage.builtins || []).map((b) => h("option", { value: b.name }, b.name)));
  const addBuiltin = h("button", { type: "button", class: "small", onclick: async () => {
    try {
      const created = await api("/datasets", { method: "POST", body: { builtin: builtin.value, config: {} } });
      dataset.prepend(h("option", { value: created.id, selected: true }, `${created.name} (${created.n_train} train, ${shortId(created.id)})`));
      toast(`dataset ${created.name} ready`);
    } catch (error) {
      showError(error);
    }
  } }, "Add built-in dataset");
  const architecture = h("select", { id: "submit-architecture", name: "architecture" },
    architectures.map((a) => h("option", { value: a.name }, a.name)));
  const archConfig = h("textarea", { id: "submit-arch-config", rows: 2, spellcheck: "false" }, "{}");
  const model = h("select", { id: "submit-model", name: "model_id" },
    models.map((m) => h("option", { value: m.id, selected: params.get("model_id") === m.id },
      `${m.name} (${m.architecture}, ${shortId(m.id)})`)));
  const forgetSet = h("select", { id: "submit-forget-set", name: "forget_set_id" },
    forgetSets.map((f) => h("option", { value: f.id, selected: params.get("forget_set_id") === f.id },
      `${f.name} (${f.kind}, ${f.size} items, ${shortId(f.id)})`)));
  const unlearnMethods = methods.filter((m) => m.job_kind === "unlearn");
  const method = h("select", { id: "submit-method", name: "method" },
    unlearnMethods.map((m) => h("option", { value: m.name, selected: params.get("method") === m.name }, m.name)));
  const paramsBox = h("textarea", { id: "submit-params", name: "params", rows: 6, spellcheck: "false" },
    params.get("params") || "{}");
  const seed = h("input", { id: "submit-seed", type: "number", min: "0", step: "1", placeholder: "drawn when empty" });
  const device = h("select", { id: "submit-device" }, ["auto", "cpu", "cuda"].map((d) => h("option", { value: d }, d)));
  const hint = h("pre", { id: "params-hint", class: "hint" });
  const description = h("p", { class: "muted", id: "method-description" });
  const error = h("p", { id: "submit-error", class: "error", hidden: true });
  const button = h("button", { type: "submit", id: "submit-button" }, "Submit job");

  const fields = {
    dataset: field("Dataset", dataset, "dataset"),
    architecture: h("div", {}, field("Architecture", architecture, "architecture"),
      field("Architecture config (JSON)", archConfig, "arch_config")),
    model: field("Model", model, "model"),
    forget_set: field("Forget set", forgetSet, "forget_set"),
    method: field("Method", method, "method"),
  };
  fields.dataset.append(h("span", { class: "inline" }, builtin, addBuiltin));

  const update = () => {
    const needs = NEEDS[kind.value];
    for (const [name, el] of Object.entries(fields)) el.hidden = !needs.includes(name);
    let entry = null;
    if (kind.value === "unlearn") entry = unlearnMethods.find((m) => m.name === method.value);
    else if (SCHEMA_KIND[kind.value]) entry = methods.find((m) => m.job_kind === SCHEMA_KIND[kind.value]);
    const schema = kind.value === "audit" ? auditSchema : entry && entry.params_schema;
    description.textContent = entry ? entry.description : kind.value === "audit"
      ? "Privacy audit of a method on shadow pipelines (params.method names the audited method)." : "";
    hint.textContent = schemaHint(schema) || "(no parameters)";
  };
  kind.addEventListener("change", update);
  method.addEventListener("change", update);

  const form = h("form", { id: "submit-form", class: "form" },
    field("Kind", kind, "kind"), fields.dataset, fields.architecture, fields.model, fields.forget_set, fields.method,
    description, field("Params (JSON)", paramsBox, "params"),
    h("details", {}, h("summary", {}, "Parameters of this kind / method"), hint),
    h("div", { class: "row" }, field("Seed", seed, "seed"), field("Device", device, "device")),
    button, error);

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    error.hidden = true;
    const needs = NEEDS[kind.value];
    let body;
    try {
      body = { kind: kind.value, params: parseJson(paramsBox.value, "Params"), device: device.value };
      if (needs.includes("dataset")) body.dataset_id = dataset.value || null;
      if (needs.includes("architecture")) {
        body.architecture = architecture.value;
        body.arch_config = parseJson(archConfig.value, "Architecture config");
      }
      if (needs.includes("model")) body.model_id = model.value || null;
      if (needs.includes("forget_set")) body.forget_set_id = forgetSet.value || null;
      if (needs.includes("method")) body.method = method.value;
      if (seed.value !== "") body.seed = Number(seed.value);
      for (const need of needs) {
        const key = { dataset: "dataset_id", model: "model_id", forget_set: "forget_set_id" }[need];
        if (key && !body[key]) throw new Error(`choose a ${need.replace("_", " ")} first`);
      }
    } catch (err) {
      error.textContent = err.message;
      error.hidden = false;
      return;
    }
    button.disabled = true;
    try {
      const job = await api("/jobs", { method: "POST", body, headers: { "Idempotency-Key": idempotencyKey() } });
      toast(`job ${shortId(job.id)} submitted`);
      location.hash = `#/jobs/${job.id}`;
    } catch (err) {
      error.textContent = describeError(err);
      error.hidden = false;
    } finally {
      button.disabled = false;
    }
  });

  replace(ctx.root, section("Submit a job", form));
  update();
}
