// Forget sets and the per-forget-set comparison: the table with the retrain row and Avg-Gap, the UA–RA
// trade-off scatter, log-log ROC curves from the audit jobs on this forget set, and a searched set's
// difficulty scores and objective history. Generative forget sets (a class of an image dataset forgotten by
// a diffusion model) show each row's sample grid: teacher, gold (retrained without the class), SFD and its
// distil-only control side by side.

import { api, getBlob, listAll } from "../api.js";
import { barChart, findRocCurves, lineChart, rocChart, scatterChart } from "../charts.js";
import { fmt, fmtTime, h, link, note, replace, section, shortId, table } from "../dom.js";
import { enlarge, showError } from "../ui.js";
import { forgetSetCreatePanel } from "./data.js";

const REFRESH_MS = 5000;

export async function forgetSetsView(ctx) {
  const list = h("div", {});
  const load = async () => {
    const rows = await listAll("/forget-sets", { signal: ctx.signal });
    replace(list, rows.length ? table(["Forget set", "Kind", "Size", "Dataset", "Created", ""], rows.map((f) => [
      link(`#/forget-sets/${f.id}`, f.name || shortId(f.id)), f.kind, String(f.size), shortId(f.dataset_id),
      fmtTime(f.created_at), link(`#/forget-sets/${f.id}`, "comparison"),
    ]), { id: "forget-sets-table" }) : note("No forget sets yet: create one below."));
  };
  await load();
  replace(ctx.root, section("Forget sets", list), await forgetSetCreatePanel(ctx, load));
}

function rowLabel(row, generative) {
  if (row.kind === "unlearn") return row.method || "unlearn";
  if (row.kind === "evaluate") return generative ? "teacher (evaluate)" : "original (evaluate)";
  if (row.kind === "retrain" && generative) return "gold (retrain without the class)";
  return row.kind;
}

function thumbnail(url) {
  // Grids need the API key, so they are fetched as blobs rather than loaded by URL.
  const img = h("img", { class: "sample-grid thumb", alt: "sample grid (click to enlarge)", onclick: (e) => enlarge(e.target) });
  getBlob(url.slice(3)).then((blob) => { img.src = URL.createObjectURL(blob); }).catch(showError);
  return img;
}

const COLUMN_TITLES = { avg_gap: "Avg-Gap", rte_seconds: "RTE (s)" };

function cell(row, column) {
  if (column === "avg_gap") return h("td", { class: "num avg-gap" }, fmt(row.avg_gap, 2));
  if (column === "rte_seconds") return h("td", { class: "num rte" }, fmt(row.rte_seconds, 2));
  return h("td", { class: "num" }, fmt(row.metrics[column], 2));
}

function comparisonTable(comparison) {
  // The API's columns: the headline metrics, then avg_gap and rte_seconds (row fields, not metrics).
  const columns = [...comparison.columns];
  for (const extra of ["rte_seconds", "avg_gap"]) if (!columns.includes(extra)) columns.push(extra);
  const generative = comparison.task === "generative";
  const grids = comparison.rows.some((row) => row.grid_url);
  // Samples come right after the row name: the metrics columns scroll, the grids stay in view.
  const headers = ["Row", ...(grids ? ["Samples (one class per row; click to enlarge)"] : []), "Seed",
    ...columns.map((c) => COLUMN_TITLES[c] || c), "Flags", "Job"];
  const body = comparison.rows.map((row) => h("tr", {
    class: row.kind === "retrain" ? "retrain-row" : "",
    dataset: { kind: row.kind, jobId: row.job_id },
  },
  h("th", { scope: "row" }, rowLabel(row, generative)),
  grids ? h("td", {}, row.grid_url ? thumbnail(row.grid_url) : "—") : [],
  h("td", {}, String(row.seed)),
  columns.map((c) => cell(row, c)),
  h("td", {}, row.flags.map((f) => h("span", { class: "flag" }, f))),
  h("td", {}, link(`#/jobs/${row.job_id}`, shortId(row.job_id)))));
  return h("div", { class: "table-scroll" }, table(headers, body, { id: "comparison-table" }));
}

/**
 * ROC curves on this forget set: for the chosen attack, one curve per comparison row (the attacks every
 * evaluation runs with the forget set as members), plus every curve of the audit jobs on this forget set.
 */
function rocSection(comparison, jobs, audits, state, rerender) {
  const byId = new Map(jobs.map((j) => [j.id, j]));
  const perRow = comparison.rows.map((row) => {
    const job = byId.get(row.job_id);
    return { row, curves: job && job.result ? findRocCurves(job.result.attacks) : [] };
  });
  const keys = [...new Set(perRow.flatMap((r) => r.curves.map((c) => c.key)))].sort();
  if (keys.length && !keys.includes(state.attack)) {
    state.attack = keys.find((k) => /loss\/threshold$/.test(k)) || keys[0];
  }
  const curves = [];
  for (const { row, curves: found } of perRow) {
    const curve = found.find((c) => c.key === state.attack);
    if (curve) {
      curves.push({ ...curve, name: `${rowLabel(row)} s${row.seed}${curve.auc !== null ? ` (AUC ${fmt(curve.auc, 3)})` : ""}` });
    }
  }
  for (const job of audits) {
    curves.push(...findRocCurves((job.result || {}).attacks, `audit of ${job.method || "?"} ${shortId(job.id)}`));
  }
  const select = keys.length > 1 ? h("select", { id: "roc-attack", onchange: (e) => {
    state.attack = e.target.value;
    rerender();
  } }, keys.map((k) => h("option", { value: k, selected: k === state.attack }, k))) : null;
  return section("Membership-inference ROC (log-log)",
    select ? h("div", { class: "toolbar" }, h("label", { for: "roc-attack" }, "Attack per row"), select) : null,
    curves.length ? rocChart({ curves, title: "Attack ROC curves (log-log)" })
      : note("No ROC curves yet: they come with finished evaluations (every job on a forget set) and audit jobs."),
    audits.length ? h("ul", {}, audits.map((job) => h("li", {}, link(`#/jobs/${job.id}`,
      `audit of ${job.method || "?"} (${shortId(job.id)})`)))) : null);
}

function tradeoff(comparison) {
  // Generative rows: forgetting (ua) against the retained classes' conditional accuracy, both fractions.
  const generative = comparison.task === "generative";
  const [xKey, yKey] = generative ? ["ua", "retain_accuracy"] : ["UA", "RA"];
  const points = comparison.rows
    .filter((row) => typeof row.metrics[xKey] === "number" && typeof row.metrics[yKey] === "number")
    .map((row) => ({ x: row.metrics[xKey], y: row.metrics[yKey], label: `${rowLabel(row, generative)} s${row.seed}`,
      group: rowLabel(row, generative), highlight: row.kind === "retrain" }));
  return generative
    ? scatterChart({ kind: "tradeoff", title: "Forgetting vs retained accuracy (gold: black square)", points,
      xLabel: "ua (fraction 0–1: 1 − forget-class rate)", yLabel: "retained-class accuracy (fraction 0–1)" })
    : scatterChart({ kind: "tradeoff", title: "UA–RA trade-off (retrain: black square)", points,
      xLabel: "UA (%)", yLabel: "RA (%)" });
}

function histogram(values, bins = 20) {
  const finite = values.filter(Number.isFinite);
  if (!finite.length) return { categories: [], counts: [] };
  const lo = Math.min(...finite);
  const hi = Math.max(...finite);
  const width = (hi - lo) / bins || 1;
  const counts = new Array(bins).fill(0);
  for (const v of finite) counts[Math.min(bins - 1, Math.floor((v - lo) / width))] += 1;
  return { categories: counts.map((_, i) => fmt(lo + (i + 0.5) * width, 2)), counts };
}

async function searchedPanel(forgetSet, signal) {
  try {
    const scores = await api(`/forget-sets/${forgetSet.id}/scores`, { signal });
    const parts = [];
    const history = scores.objective_history || [];
    if (history.length) {
      parts.push(lineChart({ kind: "search-objective", title: "Upper objective per iteration",
        series: [{ name: "upper objective", points: history.map((v, i) => [i + 1, v]) }],
        xLabel: "outer iteration", yLabel: "upper objective", markers: true }));
    }
    if (Array.isArray(scores.scores)) {
      const { categories, counts } = histogram(scores.scores);
      parts.push(barChart({ kind: "scores", title: "Difficulty scores (final weights)", categories,
        series: [{ name: "items", values: counts }], xLabel: "score", yLabel: "items", width: 720 }));
    }
    return section("Search", ...parts);
  } catch (error) {
    return section("Search", note(`No scores: ${error.message}`));
  }
}

export async function comparisonView(ctx, id) {
  const params = new URLSearchParams(location.hash.split("?")[1] || "");
  const modelId = params.get("model_id");
  const forgetSet = await api(`/forget-sets/${id}`, { signal: ctx.signal });
  const tablePanel = h("div", { id: "comparison" });
  const plots = h("div", { class: "plots" });
  const rocPanel = h("div", { id: "comparison-roc" });
  const searched = forgetSet.kind === "worst_case" ? await searchedPanel(forgetSet, ctx.signal) : null;
  let lastSignature = "";

  const state = { attack: null };
  let latest = null;
  const renderRoc = () => {
    if (latest) replace(rocPanel, rocSection(latest.comparison, latest.jobs, latest.audits, state, renderRoc));
  };

  const load = async () => {
    const query = modelId ? `?model_id=${encodeURIComponent(modelId)}` : "";
    const auditQuery = `kind=audit&status=succeeded&forget_set_id=${id}${modelId ? `&model_id=${modelId}` : ""}`;
    const [comparison, audits] = await Promise.all([
      api(`/forget-sets/${id}/comparison${query}`, { signal: ctx.signal }),
      listAll(`/jobs?${auditQuery}`, { signal: ctx.signal, max: 50 }),
    ]);
    const signature = JSON.stringify([comparison.rows.map((r) => [r.job_id, r.avg_gap]), audits.map((j) => j.id)]);
    if (signature === lastSignature) return;
    lastSignature = signature;
    // The rows' jobs (with their results, for the ROC curves), fetched only when the rows changed.
    const jobs = comparison.rows.length
      ? await listAll(`/jobs?status=succeeded&forget_set_id=${id}`, { signal: ctx.signal, max: 400 }) : [];
    latest = { comparison, jobs, audits };
    const models = [...new Set(comparison.rows.map((r) => r.model_id).filter(Boolean))];
    const modelSelect = h("select", { id: "comparison-model", onchange: (e) => {
      location.hash = `#/forget-sets/${id}${e.target.value ? `?model_id=${e.target.value}` : ""}`;
    } }, h("option", { value: "" }, "all original models"),
    [...new Set([...models, ...(modelId ? [modelId] : [])])].map((m) => h("option", { value: m, selected: m === modelId }, shortId(m))));
    replace(tablePanel, section("Comparison",
      h("div", { class: "toolbar" }, modelSelect,
        h("a", { class: "button", href: `#/submit?kind=unlearn&forget_set_id=${id}` }, "Run a method on this forget set")),
      comparison.rows.length ? comparisonTable(comparison) : note("No finished jobs on this forget set yet."),
      h("p", { class: "muted" }, comparison.task === "generative"
        ? "Generative rows (fractions 0–1, not %): ua = 1 − rate at which the forgotten class is generated, override_rate = share of its "
          + "samples classified as the safe class, retain_accuracy and fd_retain = retained classes' conditional "
          + "accuracy and Fréchet distance (metric classifier's features). Avg-Gap: mean |ua, retain_accuracy − gold|."
        : "UA, RA, TA and MIA-Efficacy are percentages (0–100), so is Avg-Gap: mean |UA, MIA-Efficacy, RA, TA − "
          + "retrain| against the retrain of the same original model and seed (the highlighted row).")));
    replace(plots, comparison.rows.length ? tradeoff(comparison) : note("The trade-off plot needs finished jobs."));
    renderRoc();
  };

  replace(ctx.root,
    section(`Forget set ${forgetSet.name || shortId(forgetSet.id)}`,
      h("dl", { class: "summary" },
        h("dt", {}, "Kind"), h("dd", {}, forgetSet.kind),
        h("dt", {}, "Size"), h("dd", {}, String(forgetSet.size)),
        h("dt", {}, "Class"), h("dd", {}, forgetSet.forget_class === null ? "—" : String(forgetSet.forget_class)),
        h("dt", {}, "Spec"), h("dd", {}, h("code", {}, JSON.stringify(forgetSet.spec).slice(0, 300))),
        h("dt", {}, "sha256"), h("dd", {}, h("code", {}, forgetSet.sha256)))),
    tablePanel, section("Trade-off", plots), rocPanel, searched);
  await load();
  ctx.every(load, REFRESH_MS);
}
