// Campaigns: the list with progress over the grid, and one campaign's table (mean ± std over seeds per
// forget set, with the original and retrain rows and Avg-Gap), CSV download and cancel.

import { api, getBlob, listAll } from "../api.js";
import { scatterChart } from "../charts.js";
import { fmt, fmtTime, h, link, note, replace, section, shortId, table } from "../dom.js";
import { describeError, showError, toast } from "../ui.js";
import { field, paramsEditor } from "./submit.js";

const REFRESH_MS = 3000;

function campaignProgress(campaign) {
  const p = campaign.progress || { fraction: 0, total: 0, by_status: {} };
  const fill = h("div", { class: "bar-fill" });
  fill.style.width = `${Math.round((p.fraction || 0) * 100)}%`;
  const counts = Object.entries(p.by_status || {}).map(([k, v]) => `${v} ${k}`).join(", ");
  return h("div", { class: `bar bar-${campaign.status}`, dataset: { fraction: String(p.fraction || 0) } }, fill,
    h("span", { class: "bar-label" }, `${Math.round((p.fraction || 0) * 100)}% of ${p.total}${counts ? ` (${counts})` : ""}`));
}

/** A campaign: methods (each with its params form) × existing forget sets × seeds, on one model. */
function campaignForm({ models, forgetSets, methods }) {
  const unlearn = methods.filter((m) => m.job_kind === "unlearn");
  const name = h("input", { id: "campaign-name", type: "text", placeholder: "e.g. ft-vs-salun" });
  const model = h("select", { id: "campaign-model" }, models.map((m) => h("option", { value: m.id }, `${m.name} (${shortId(m.id)})`)));
  const sets = h("select", { id: "campaign-forget-sets", multiple: true, size: Math.min(6, Math.max(2, forgetSets.length)) },
    forgetSets.map((f) => h("option", { value: f.id }, `${f.name} (${f.kind}, ${f.size})`)));
  const seeds = h("input", { id: "campaign-seeds", type: "text", value: "0", placeholder: "0, 1, 2" });
  const device = h("select", { id: "campaign-device" }, ["auto", "cpu", "cuda"].map((d) => h("option", { value: d }, d)));
  const chosen = new Map(); // method name → its params editor
  const methodBoxes = h("div", { id: "campaign-methods", class: "method-choices" }, unlearn.map((m) => {
    const editor = paramsEditor({ id: `campaign-${m.name}`, title: `${m.name} parameters` });
    const holder = h("div", { class: "method-params", hidden: true }, editor.el);
    const box = h("input", { type: "checkbox", id: `campaign-method-${m.name}`, value: m.name, onchange: () => {
      holder.hidden = !box.checked;
      if (box.checked) {
        editor.setSchema(m.params_schema);
        chosen.set(m.name, editor);
      } else chosen.delete(m.name);
    } });
    return h("div", { class: "method-choice" }, h("label", { for: box.id, title: m.description }, box, ` ${m.name}`), holder);
  }));
  const error = h("p", { id: "campaign-error", class: "error", role: "alert", hidden: true });
  const button = h("button", { type: "submit", id: "campaign-button" }, "Start campaign");
  const form = h("form", { id: "campaign-form", class: "form" },
    field("Name", name, "name"), field("Original model", model, "model"),
    field("Forget sets (ctrl/cmd-click for several)", sets, "forget_sets"),
    h("div", { class: "field" }, h("label", {}, "Methods"), methodBoxes),
    h("div", { class: "row" }, field("Seeds (comma-separated)", seeds, "seeds"), field("Device", device, "device")),
    button, error);
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    error.hidden = true;
    button.disabled = true;
    try {
      const chosenSets = [...sets.selectedOptions].map((o) => ({ forget_set_id: o.value }));
      if (!chosenSets.length) throw new Error("choose at least one forget set");
      if (!chosen.size) throw new Error("choose at least one method");
      const seedList = seeds.value.split(",").map((v) => v.trim()).filter(Boolean).map(Number);
      if (!seedList.length || seedList.some((v) => !Number.isInteger(v) || v < 0)) throw new Error("seeds: whole numbers ≥ 0");
      const body = { name: name.value.trim(), model_id: model.value, forget_sets: chosenSets, seeds: seedList,
        device: device.value, methods: [...chosen].map(([method, editor]) => ({ method, params: editor.value() })) };
      const created = await api("/campaigns", { method: "POST", body });
      toast(`campaign ${created.name} started`);
      location.hash = `#/campaigns/${created.id}`;
    } catch (err) {
      const problem = err.problem || {};
      [...chosen.values()].forEach((editor, i) => editor.markErrors(problem.errors, ["methods", i, "params"]));
      error.textContent = describeError(err);
      error.hidden = false;
    } finally {
      button.disabled = false;
    }
  });
  return form;
}

export async function campaignsView(ctx) {
  const body = h("div", {});
  const [models, forgetSets, methods] = await Promise.all([
    listAll("/models", { signal: ctx.signal }), listAll("/forget-sets", { signal: ctx.signal }),
    api("/methods", { signal: ctx.signal })]);
  const load = async () => {
    const rows = await listAll("/campaigns", { signal: ctx.signal, max: 200 });
    replace(body, rows.length ? table(["Campaign", "Status", "Stage", "Progress", "Created"], rows.map((c) => [
      link(`#/campaigns/${c.id}`, c.name), c.status, c.stage, campaignProgress(c), fmtTime(c.created_at),
    ]), { id: "campaigns-table" }) : note("No campaigns yet: start one below."));
  };
  replace(ctx.root, section("Campaigns", body), section("New campaign", models.length && forgetSets.length
    ? campaignForm({ models, forgetSets, methods }) : note("A campaign needs a model and a forget set first.")));
  await load();
  ctx.every(load, REFRESH_MS * 2);
}

function stat(value, digits = 2) {
  if (!value || value.mean === null || value.mean === undefined) return "—";
  return value.std !== null && value.std !== undefined && value.n > 1
    ? `${fmt(value.mean, digits)} ± ${fmt(value.std, digits)}` : fmt(value.mean, digits);
}

function campaignTable(result) {
  const groups = new Map();
  for (const row of result.rows) {
    if (!groups.has(row.forget_set_id)) groups.set(row.forget_set_id, { name: row.forget_set_name, rows: [] });
    groups.get(row.forget_set_id).rows.push(row);
  }
  // The API's columns: the metrics, then avg_gap and rte_seconds (row fields, not metrics).
  const columns = [...result.columns];
  for (const extra of ["rte_seconds", "avg_gap"]) if (!columns.includes(extra)) columns.push(extra);
  const titles = { avg_gap: "Avg-Gap", rte_seconds: "RTE (s)" };
  const value = (row, c) => {
    if (c === "avg_gap") return h("td", { class: "num avg-gap" }, stat(row.avg_gap));
    if (c === "rte_seconds") return h("td", { class: "num rte" }, stat(row.rte_seconds));
    return h("td", { class: "num" }, stat(row.metrics[c]));
  };
  const headers = ["Forget set", "Row", ...columns.map((c) => titles[c] || c), "Flags", "Jobs"];
  const body = [];
  for (const [forgetSetId, group] of groups) {
    group.rows.forEach((row, i) => {
      body.push(h("tr", { class: row.row === "retrain" ? "retrain-row" : row.row === "original" ? "original-row" : "" },
        h("td", {}, i === 0 ? link(`#/forget-sets/${forgetSetId}`, group.name) : ""),
        h("th", { scope: "row" }, row.row),
        columns.map((c) => value(row, c)),
        h("td", {}, row.flags.map((f) => h("span", { class: "flag" }, f))),
        h("td", {}, row.jobs.map((j, k) => [k ? " " : "", link(`#/jobs/${j.job_id || j.id}`,
          `${shortId(j.job_id || j.id)} ${j.status || ""}`)]))));
    });
  }
  return table(headers, body, { id: "campaign-table" });
}

export async function campaignDetailView(ctx, id) {
  const head = h("div", {});
  const body = h("div", {});
  let lastVersion = null;
  const load = async () => {
    const campaign = await api(`/campaigns/${id}`, { signal: ctx.signal });
    if (campaign.version === lastVersion && campaign.status !== "running") return;
    lastVersion = campaign.version;
    const result = await api(`/campaigns/${id}/table`, { signal: ctx.signal });
    const cancel = campaign.status === "running" ? h("button", { type: "button", id: "cancel-campaign", class: "danger",
      onclick: async (event) => {
        event.target.disabled = true;
        try {
          await api(`/campaigns/${id}/cancel`, { method: "POST" });
          toast("campaign cancel requested");
          await load();
        } catch (error) {
          event.target.disabled = false;
          showError(error);
        }
      } }, "Cancel campaign") : null;
    const csv = h("button", { type: "button", class: "small", onclick: async () => {
      try {
        const blob = await getBlob(`/campaigns/${id}/table?format=csv`);
        const a = h("a", { href: URL.createObjectURL(blob), download: `campaign-${id}.csv` });
        document.body.append(a);
        a.click();
        a.remove();
      } catch (error) {
        showError(error);
      }
    } }, "Download CSV");
    replace(head, section(`Campaign ${campaign.name}`,
      h("div", { class: "title-row" }, h("span", { class: `status status-${campaign.status}` }, campaign.status),
        h("span", { class: "muted" }, `stage: ${campaign.stage}`), cancel, csv),
      campaignProgress(campaign),
      Object.keys(campaign.chosen_params || {}).length ? h("details", { open: true }, h("summary", {}, "Chosen sweep params"),
        h("pre", {}, JSON.stringify(campaign.chosen_params, null, 2))) : null));
    const points = result.rows.filter((r) => r.metrics.UA && r.metrics.RA && r.metrics.UA.mean !== null && r.metrics.RA.mean !== null)
      .map((r) => ({ x: r.metrics.UA.mean, y: r.metrics.RA.mean, label: `${r.row} · ${r.forget_set_name}`, group: r.row,
        highlight: r.row === "retrain" }));
    replace(body, section("Table (mean ± std over seeds)", result.rows.length ? campaignTable(result) : note("No rows yet.")),
      points.length ? section("UA–RA trade-off", scatterChart({ kind: "tradeoff", title: "UA–RA per row (means)",
        points, xLabel: "UA (%)", yLabel: "RA (%)" })) : null);
  };
  replace(ctx.root, head, body);
  await load();
  ctx.every(load, REFRESH_MS);
}
