// Datasets and models: the lists, uploads (npz datasets, safetensors models with an architecture config form
// from the architecture's schema), built-in datasets with their config form; and creating forget sets
// (random / class / indices / target range from the spec schemas in the OpenAPI document, or a worst-case
// search job). The intake's problem+json errors are shown inline, beside the form that caused them.

import { api, apiForm, CHUNK, chunkedUpload, listAll } from "../api.js";
import { fmtTime, h, link, note, replace, section, shortId, table } from "../dom.js";
import { describeError, toast } from "../ui.js";
import { field, idempotencyKey, paramsEditor } from "./submit.js";

function inlineError(id) {
  return h("p", { id, class: "error", role: "alert", hidden: true });
}

function showInline(el, error) {
  el.textContent = error ? describeError(error) : "";
  el.hidden = !error;
}

async function busy(button, fn) {
  button.disabled = true;
  try {
    await fn();
  } finally {
    button.disabled = false;
  }
}

function datasetsTable(rows) {
  return rows.length ? table(["Dataset", "Source", "Task", "Train", "Test", "Input shape", "Classes", "Created"],
    rows.map((d) => [h("span", { title: d.id }, d.name), d.builtin ? `builtin ${d.builtin}` : d.source, d.task,
      String(d.n_train), String(d.n_test), JSON.stringify(d.input_shape), String(d.num_classes), fmtTime(d.created_at)]),
    { id: "datasets-table" }) : note("No datasets yet.");
}

function modelsTable(rows) {
  return rows.length ? table(["Model", "Architecture", "Source", "Params", "Dataset", "Created", ""],
    rows.map((m) => [h("span", { title: m.id }, m.name), m.architecture, m.job_id ? link(`#/jobs/${m.job_id}`, `${m.source} job`) : m.source,
      String(m.num_params), shortId(m.dataset_id), fmtTime(m.created_at),
      link(`#/submit?kind=unlearn&model_id=${m.id}`, "run a job")]), { id: "models-table" }) : note("No models yet.");
}

/**
 * One file to a single-request route, or through /v1/uploads when it is larger than CHUNK.threshold or the
 * server refuses it as too large (413 upload-too-large). Resolves with the created resource.
 */
async function sendFile({ file, fileField, route, purpose, fields, status }) {
  const single = async () => {
    const data = new FormData();
    data.append(fileField, file);
    for (const [key, value] of Object.entries(fields)) {
      if (value !== undefined && value !== null && value !== "") data.append(key, typeof value === "string" ? value : JSON.stringify(value));
    }
    return apiForm(route, data);
  };
  if (file.size <= CHUNK.threshold) {
    try {
      return await single();
    } catch (err) {
      if (!(err.status === 413 && (err.problem || {}).code === "upload-too-large")) throw err;
    }
  }
  const completion = Object.fromEntries(Object.entries(fields).filter(([, v]) => v !== undefined && v !== null && v !== ""));
  status.textContent = "uploading in parts…";
  const done = await chunkedUpload(file, purpose, completion, {
    onProgress: (fraction) => { status.textContent = `uploaded ${Math.round(fraction * 100)}%`; },
  });
  status.textContent = "";
  return api(`/${done.result_type}s/${done.result_id}`);
}

function datasetUploadForm(onDone) {
  const file = h("input", { id: "dataset-file", type: "file", accept: ".npz", required: true });
  const name = h("input", { id: "dataset-name", type: "text", placeholder: "the file name" });
  const task = h("select", { id: "dataset-task" }, ["classification", "regression"].map((t) => h("option", { value: t }, t)));
  const normalization = h("input", { id: "dataset-normalization", type: "text", placeholder: 'none; "computed" or {"mean": [...], "std": [...]}' });
  const error = inlineError("dataset-upload-error");
  const status = h("span", { id: "dataset-upload-status", class: "muted" });
  const button = h("button", { type: "submit", id: "dataset-upload-button" }, "Upload dataset");
  const form = h("form", { id: "dataset-upload-form", class: "form" },
    h("h3", {}, "Upload an .npz"),
    h("p", { class: "muted" }, "Arrays x_train, y_train, x_test, y_test (uint8 images stay uint8). Pickled arrays are refused."),
    field("File", file, "file"), field("Name", name, "name"), field("Task", task, "task"),
    field("Normalisation (images)", normalization, "normalization"), button, status, error);
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    showInline(error, null);
    if (!file.files.length) {
      showInline(error, new Error("choose an .npz file"));
      return;
    }
    busy(button, async () => {
      try {
        const created = await sendFile({ file: file.files[0], fileField: "file", route: "/datasets/upload",
          purpose: "dataset", status,
          fields: { name: name.value.trim(), task: task.value, normalization: normalization.value.trim() } });
        toast(`dataset ${created.name} stored (${created.n_train} train, ${created.n_test} test)`);
        form.reset();
        await onDone();
      } catch (err) {
        showInline(error, err);
      }
    });
  });
  return form;
}

function builtinForm(builtins, onDone) {
  const which = h("select", { id: "builtin-name" }, builtins.map((b) => h("option", { value: b.name }, b.name)));
  const description = h("p", { class: "muted" });
  const config = paramsEditor({ id: "builtin-config", title: "Config" });
  const name = h("input", { id: "builtin-dataset-name", type: "text", placeholder: "the built-in's name" });
  const error = inlineError("builtin-error");
  const button = h("button", { type: "submit", id: "builtin-button" }, "Add built-in dataset");
  const update = () => {
    const entry = builtins.find((b) => b.name === which.value);
    description.textContent = entry ? entry.description : "";
    config.setSchema(entry ? entry.params_schema : null);
  };
  which.addEventListener("change", update);
  const form = h("form", { id: "builtin-form", class: "form" }, h("h3", {}, "A built-in dataset"),
    field("Built-in", which, "builtin"), description, config.el, field("Name", name, "name"), button, error);
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    showInline(error, null);
    busy(button, async () => {
      try {
        const body = { builtin: which.value, config: config.value() };
        if (name.value.trim()) body.name = name.value.trim();
        const created = await api("/datasets", { method: "POST", body });
        toast(`dataset ${created.name} ready`);
        await onDone();
      } catch (err) {
        config.markErrors((err.problem || {}).errors, ["config"]);
        showInline(error, err);
      }
    });
  });
  update();
  return form;
}

function modelUploadForm(architectures, datasets, onDone) {
  const file = h("input", { id: "model-file", type: "file", accept: ".safetensors" });
  const architecture = h("select", { id: "model-architecture" }, architectures.map((a) => h("option", { value: a.name }, a.name)));
  const config = paramsEditor({ id: "model-config", title: "Architecture config" });
  const name = h("input", { id: "model-name", type: "text", placeholder: "optional" });
  const dataset = h("select", { id: "model-dataset" }, h("option", { value: "" }, "(none)"),
    datasets.map((d) => h("option", { value: d.id }, `${d.name} (${shortId(d.id)})`)));
  const error = inlineError("model-upload-error");
  const status = h("span", { id: "model-upload-status", class: "muted" });
  const button = h("button", { type: "submit", id: "model-upload-button" }, "Upload model");
  const update = () => {
    const entry = architectures.find((a) => a.name === architecture.value);
    config.setSchema(entry ? entry.params_schema : null);
  };
  architecture.addEventListener("change", update);
  const form = h("form", { id: "model-upload-form", class: "form" }, h("h3", {}, "Upload a model"),
    h("p", { class: "muted" }, "A safetensors state_dict (pickles are refused) and the architecture it fits."),
    field("Weights (.safetensors)", file, "file"), field("Architecture", architecture, "architecture"), config.el,
    field("Trained on (dataset)", dataset, "dataset"), field("Name", name, "name"), button, status, error);
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    showInline(error, null);
    if (!file.files.length) {
      showInline(error, new Error("choose a .safetensors file"));
      return;
    }
    busy(button, async () => {
      try {
        const created = await sendFile({ file: file.files[0], fileField: "weights", route: "/models", purpose: "model",
          status, fields: { architecture: architecture.value, config: config.value(), name: name.value.trim(),
            dataset_id: dataset.value } });
        toast(`model ${created.name} stored (${created.num_params} parameters)`);
        await onDone();
      } catch (err) {
        showInline(error, err);
      }
    });
  });
  update();
  return form;
}

export async function dataView(ctx) {
  const [datasetPage, architectures] = await Promise.all([
    api("/datasets?limit=200", { signal: ctx.signal }),
    api("/architectures", { signal: ctx.signal }),
  ]);
  const datasetsPanel = h("div", {});
  const modelsPanel = h("div", {});
  const load = async () => {
    const [datasets, models] = await Promise.all([
      listAll("/datasets", { signal: ctx.signal }), listAll("/models", { signal: ctx.signal })]);
    replace(datasetsPanel, datasetsTable(datasets));
    replace(modelsPanel, modelsTable(models));
  };
  const builtins = datasetPage.builtins || [];
  replace(ctx.root,
    section("Datasets", datasetsPanel, h("div", { class: "columns" },
      datasetUploadForm(load), builtinForm(builtins, load))),
    section("Models", modelsPanel, modelUploadForm(architectures, datasetPage.data, load)));
  await load();
}

// ----------------------------------------------------------------------------------------- forget sets

const SPEC_SCHEMAS = { random: "RandomSpec", class: "ClassSpec", indices: "IndicesSpec", target_range: "TargetRangeSpec" };

/** The forget-set creation panel: a spec form per kind (from the OpenAPI components) or a search job. */
export async function forgetSetCreatePanel(ctx, onDone) {
  const [openapi, datasets, models, methods] = await Promise.all([
    fetch("/openapi.json", { signal: ctx.signal }).then((r) => r.json()),
    listAll("/datasets", { signal: ctx.signal }),
    listAll("/models", { signal: ctx.signal }),
    api("/methods", { signal: ctx.signal }),
  ]);
  const root = { $defs: openapi.components.schemas };
  const search = methods.find((m) => m.job_kind === "search");
  const kind = h("select", { id: "fs-kind" }, [...Object.keys(SPEC_SCHEMAS), ...(search ? ["worst_case"] : [])]
    .map((k) => h("option", { value: k }, k === "worst_case" ? "worst-case search (a job)" : k)));
  const dataset = h("select", { id: "fs-dataset" }, datasets.map((d) => h("option", { value: d.id }, `${d.name} (${d.task}, ${d.n_train} train)`)));
  const model = h("select", { id: "fs-model" }, models.map((m) => h("option", { value: m.id }, `${m.name} (${shortId(m.id)})`)));
  const name = h("input", { id: "fs-name", type: "text", placeholder: "generated when empty" });
  const spec = paramsEditor({ id: "fs-spec", title: "Spec" });
  const error = inlineError("fs-error");
  const button = h("button", { type: "submit", id: "fs-button" }, "Create forget set");
  const datasetField = field("Dataset", dataset, "dataset");
  const modelField = field("Model searched against", model, "model", "The search looks for the forget set this model finds hardest to unlearn.");
  const nameField = field("Name", name, "name");
  const update = () => {
    const searching = kind.value === "worst_case";
    datasetField.hidden = searching;
    modelField.hidden = !searching;
    nameField.hidden = searching;
    if (searching) {
      spec.setSchema(search.params_schema);
      button.textContent = "Start the search job";
    } else {
      const schema = root.$defs[SPEC_SCHEMAS[kind.value]];
      // `kind` is fixed by the choice above, so it is not offered as a field.
      const { kind: _fixed, ...properties } = schema.properties;
      spec.setSchema({ ...schema, properties, required: (schema.required || []).filter((r) => r !== "kind"), $defs: root.$defs });
      button.textContent = "Create forget set";
    }
  };
  kind.addEventListener("change", update);
  const form = h("form", { id: "forget-set-form", class: "form" }, field("Kind", kind, "kind"),
    datasetField, modelField, nameField, spec.el, button, error);
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    showInline(error, null);
    busy(button, async () => {
      try {
        if (kind.value === "worst_case") {
          if (!model.value) throw new Error("choose a model first");
          const job = await api("/jobs", { method: "POST", headers: { "Idempotency-Key": idempotencyKey() },
            body: { kind: "worst_case_search", model_id: model.value, params: spec.value() } });
          toast(`search job ${shortId(job.id)} submitted: its forget set appears when it is done`);
          location.hash = `#/jobs/${job.id}`;
          return;
        }
        if (!dataset.value) throw new Error("choose a dataset first");
        const body = { dataset_id: dataset.value, spec: { kind: kind.value, ...spec.value() } };
        if (name.value.trim()) body.name = name.value.trim();
        const created = await api("/forget-sets", { method: "POST", body });
        toast(`forget set ${created.name}: ${created.size} items`);
        await onDone(created);
      } catch (err) {
        spec.markErrors((err.problem || {}).errors, kind.value === "worst_case" ? ["params"] : ["spec", kind.value]);
        showInline(error, err);
      }
    });
  });
  update();
  return section("New forget set", form);
}
