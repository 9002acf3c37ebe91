// Submit a job. Everything comes from the registries the API serves: the kinds and the inputs each needs or
// refuses (GET /v1/job-kinds), the methods of the kind's method_kind (GET /v1/methods), the params form from
// the chosen method's or the kind's params schema, the architecture config form from the architecture's
// schema. Empty fields take the defaults shown; the request about to be sent is previewed before submit. A
// raw JSON box stays under "Advanced" (it is merged over the form). One Idempotency-Key per submit.

import { api, listAll } from "../api.js";
import { h, replace, section, shortId } from "../dom.js";
import { schemaForm } from "../schemaform.js";
import { describeError, toast } from "../ui.js";

// The submission fields a kind's `required` may name, with how the form offers them.
const INPUTS = ["dataset_id", "architecture", "model_id", "forget_set_id"];

export function idempotencyKey() {
  // crypto.randomUUID needs a secure context; getRandomValues works on plain http too.
  const bytes = crypto.getRandomValues(new Uint8Array(16));
  return [...bytes].map((b) => b.toString(16).padStart(2, "0")).join("");
}

export function field(label, control, id, hint) {
  return h("div", { class: "field", dataset: { field: id } }, h("label", { for: control.id }, label), control,
    hint ? h("small", { class: "muted" }, hint) : null);
}

export function parseJsonObject(text, what) {
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

/** A params form with an "advanced" raw-JSON box merged over it and a live preview of what is sent. */
export function paramsEditor({ id, title = "Parameters" }) {
  const holder = h("div", { id: `${id}-form` });
  const raw = h("textarea", { id: `${id}-raw`, rows: 4, spellcheck: "false", placeholder: "{}" });
  const preview = h("pre", { id: `${id}-preview`, class: "preview" });
  const previewNote = h("p", { class: "muted" });
  let form = null;
  const value = () => ({ ...(form ? form.value() : {}), ...parseJsonObject(raw.value, "Advanced JSON") });
  const refresh = () => {
    try {
      const v = value();
      preview.textContent = JSON.stringify(v, null, 2);
      previewNote.textContent = Object.keys(v).length
        ? "Sent as params (every field not listed takes the default shown beside it):"
        : "Empty: every field takes the default shown beside it. Sent as params:";
      preview.classList.remove("error");
    } catch (err) {
      preview.textContent = err.message;
      preview.classList.add("error");
    }
  };
  raw.addEventListener("input", refresh);
  const el = h("div", { class: "params-editor", id },
    h("h3", {}, title), holder,
    h("details", { class: "advanced" }, h("summary", {}, "Advanced: raw JSON (merged over the form)"), raw),
    previewNote, preview);
  return {
    el,
    value,
    setSchema(schema, values) {
      if (!schema || !schema.properties || !Object.keys(schema.properties).length) {
        form = null;
        replace(holder, h("p", { class: "muted" }, "This choice takes no parameters."));
      } else {
        form = schemaForm(schema, schema, { idPrefix: id });
        if (values) form.fill(values);
        form.onChange(refresh);
        replace(holder, schema.description ? h("p", { class: "muted schema-description" }, schema.description.split("\n\n")[0]) : null, form.el);
      }
      refresh();
    },
    markErrors(errors, prefix) {
      return form ? form.markErrors(errors, prefix) : 0;
    },
    get form() {
      return form;
    },
  };
}

function option(value, text, selected) {
  return h("option", { value, selected: Boolean(selected) }, text);
}

export async function submitView(ctx) {
  const query = new URLSearchParams(location.hash.split("?")[1] || "");
  const [kinds, methods, architectures, datasets, models, forgetSets] = await Promise.all([
    api("/job-kinds", { signal: ctx.signal }),
    api("/methods", { signal: ctx.signal }),
    api("/architectures", { signal: ctx.signal }),
    listAll("/datasets", { signal: ctx.signal }),
    listAll("/models", { signal: ctx.signal }),
    listAll("/forget-sets", { signal: ctx.signal }),
  ]);
  const datasetById = new Map(datasets.map((d) => [d.id, d]));

  const kind = h("select", { id: "submit-kind", name: "kind" },
    kinds.map((k) => option(k.name, k.name, query.get("kind") === k.name)));
  const kindDescription = h("p", { class: "muted", id: "kind-description" });
  const dataset = h("select", { id: "submit-dataset", name: "dataset_id" },
    datasets.map((d) => option(d.id, `${d.name} (${d.task}, ${d.n_train} train, ${shortId(d.id)})`, query.get("dataset_id") === d.id)));
  const architecture = h("select", { id: "submit-architecture", name: "architecture" },
    architectures.map((a) => option(a.name, a.name)));
  const model = h("select", { id: "submit-model", name: "model_id" },
    models.map((m) => option(m.id, `${m.name} (${m.architecture}, ${shortId(m.id)})`, query.get("model_id") === m.id)));
  const forgetSet = h("select", { id: "submit-forget-set", name: "forget_set_id" },
    forgetSets.map((f) => option(f.id, `${f.name} (${f.kind}, ${f.size} items, ${shortId(f.id)})`, query.get("forget_set_id") === f.id)));
  const method = h("select", { id: "submit-method", name: "method" });
  const methodDescription = h("p", { class: "muted", id: "method-description" });
  const archConfig = paramsEditor({ id: "submit-arch-config", title: "Architecture config" });
  const params = paramsEditor({ id: "submit-params" });
  const seed = h("input", { id: "submit-seed", type: "number", min: "0", step: "1", placeholder: "drawn when empty" });
  const device = h("select", { id: "submit-device" }, ["auto", "cpu", "cuda"].map((d) => option(d, d)));
  const error = h("p", { id: "submit-error", class: "error", hidden: true });
  const button = h("button", { type: "submit", id: "submit-button" }, "Submit job");

  const inputs = {
    dataset_id: field("Dataset", dataset, "dataset", datasets.length ? null : "No datasets yet: add one under Data."),
    architecture: h("div", {}, field("Architecture", architecture, "architecture"), archConfig.el),
    model_id: field("Model", model, "model", models.length ? null : "No models yet: train or upload one."),
    forget_set_id: field("Forget set", forgetSet, "forget_set"),
  };
  const methodField = h("div", {}, field("Method", method, "method"), methodDescription);

  const spec = () => kinds.find((k) => k.name === kind.value);
  const taskOf = () => {
    const s = spec();
    if (s.required.includes("dataset_id")) return (datasetById.get(dataset.value) || {}).task;
    const m = models.find((x) => x.id === model.value);
    return m && m.dataset_id ? (datasetById.get(m.dataset_id) || {}).task : undefined;
  };
  const kindMethods = () => {
    const s = spec();
    const task = taskOf();
    return methods.filter((m) => m.job_kind === s.method_kind && (!task || m.task_types.includes(task)));
  };

  let lastMethodKey = "";
  const updateMethods = () => {
    const s = spec();
    const task = taskOf();
    const options = s.method_use === "named" ? kindMethods() : [];
    const key = `${s.name}|${task}|${options.map((m) => m.name).join()}`;
    if (key === lastMethodKey) return;
    lastMethodKey = key;
    const wanted = query.get("method") || (task && s.default_methods[task]) || Object.values(s.default_methods)[0];
    replace(method, options.map((m) => option(m.name, m.name, m.name === wanted)));
  };
  const updateParams = () => {
    const s = spec();
    let schema = null;
    let about = "";
    if (s.method_use === "named") {
      const entry = methods.find((m) => m.name === method.value && m.job_kind === s.method_kind);
      schema = entry ? entry.params_schema : null;
      about = entry ? entry.description : "";
    } else {
      const task = taskOf();
      schema = s.params_schemas[task] || Object.values(s.params_schemas)[0] || null;
    }
    methodDescription.textContent = about;
    params.setSchema(schema, query.get("params") ? parseJsonObject(query.get("params"), "params") : null);
  };
  const updateArch = () => {
    const entry = architectures.find((a) => a.name === architecture.value);
    archConfig.setSchema(entry ? entry.params_schema : null);
  };
  const update = () => {
    const s = spec();
    kindDescription.textContent = s.description;
    for (const [name, el] of Object.entries(inputs)) el.hidden = !s.required.includes(name);
    methodField.hidden = s.method_use !== "named";
    updateMethods();
    updateParams();
  };
  kind.addEventListener("change", () => {
    lastMethodKey = "";
    update();
  });
  method.addEventListener("change", updateParams);
  for (const select of [dataset, model]) {
    select.addEventListener("change", () => {
      updateMethods();
      updateParams();
    });
  }
  architecture.addEventListener("change", updateArch);

  const form = h("form", { id: "submit-form", class: "form", novalidate: true },
    field("Kind", kind, "kind"), kindDescription,
    ...INPUTS.map((name) => inputs[name]), methodField, params.el,
    h("div", { class: "row" }, field("Seed", seed, "seed"), field("Device", device, "device")),
    button, error);

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    error.hidden = true;
    const s = spec();
    let body;
    try {
      body = { kind: s.name, params: params.value(), device: device.value };
      const values = { dataset_id: dataset.value, architecture: architecture.value, model_id: model.value,
        forget_set_id: forgetSet.value };
      for (const name of s.required) {
        if (!INPUTS.includes(name)) continue;
        if (!values[name]) throw new Error(`choose a ${name.replace(/_id$/, "").replace("_", " ")} first`);
        body[name] = values[name];
      }
      if (s.required.includes("architecture")) body.arch_config = archConfig.value();
      if (s.method_use === "named" && method.value) body.method = method.value;
      if (seed.value !== "") body.seed = Number(seed.value);
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
      const problem = err.problem || {};
      params.markErrors(problem.errors, ["params"]);
      archConfig.markErrors(problem.errors, ["arch_config"]);
      error.textContent = describeError(err);
      error.hidden = false;
    } finally {
      button.disabled = false;
    }
  });

  replace(ctx.root, section("Submit a job", form));
  updateArch();
  update();
}
