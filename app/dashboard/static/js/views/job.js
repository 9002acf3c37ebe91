// One job: live progress (SSE events + conditional polling), cancel, metrics, and its plots: training /
// unlearning curves, per-class accuracy before/after, ROC curves of an audit's attacks, the worst-case
// search's upper objective per iteration, and a generative model's sample grid when the result has one.

import { api, getBlob, getConditional, streamEvents } from "../api.js";
import { barChart, findRocCurves, lineChart, rocChart } from "../charts.js";
import { fmt, fmtDuration, fmtTime, h, link, note, progressBar, replace, section, shortId, statusBadge, table,
  TERMINAL } from "../dom.js";
import { errorBlock, errorText, paramsDigest } from "../jobinfo.js";
import { enlarge, showError } from "../ui.js";
import { cancelJob } from "./jobs.js";

const POLL_MS = 1500;
const HEADLINE = ["UA", "RA", "TA", "MIA-Efficacy", "test_accuracy", "train_accuracy", "forget_accuracy"];
const MAX_EVENTS_SHOWN = 60;
// Classification metrics are percentages; the generative ones (lower-case names) are fractions.
const UNITS = { UA: "%", RA: "%", TA: "%", "MIA-Efficacy": "%", test_accuracy: "%", train_accuracy: "%",
  forget_accuracy: "%", retain_accuracy: "fraction", ua: "fraction", override_rate: "fraction" };
const CURVE_KEY = /(loss|acc|objective)/i;

function sleep(ms, signal) {
  return new Promise((resolve) => {
    const id = setTimeout(resolve, ms);
    signal.addEventListener("abort", () => {
      clearTimeout(id);
      resolve();
    }, { once: true });
  });
}

/** Curves of a history list: one series per numeric loss/accuracy/objective key, x = epoch or iteration. */
export function historySeries(history) {
  const keys = new Set();
  for (const record of history) {
    for (const [key, value] of Object.entries(record)) if (typeof value === "number" && CURVE_KEY.test(key)) keys.add(key);
  }
  return [...keys].map((key) => ({
    name: key,
    points: history.map((r, i) => [r.epoch ?? r.iteration ?? i + 1, r[key]]).filter(([, v]) => typeof v === "number"),
  }));
}

function liveHistory(events) {
  // epoch-end progress events carry the epoch's record: {phase, info: {epoch, loss, ...}}
  const byPhase = new Map();
  for (const e of events) {
    const info = e.data && e.data.info;
    if (e.type !== "progress" || !info || !info.epoch_end || info.epoch === undefined) continue;
    const phase = e.data.phase || "train";
    if (!byPhase.has(phase)) byPhase.set(phase, []);
    byPhase.get(phase).push(info);
  }
  return [...byPhase.entries()].flatMap(([phase, records]) => historySeries(records)
    .map((item) => ({ ...item, name: byPhase.size > 1 ? `${phase}: ${item.name}` : item.name })));
}

export function searchObjective(events, result) {
  const points = new Map();
  for (const e of events) {
    const info = e.data && e.data.info;
    if (e.type === "progress" && info && typeof info.upper_objective === "number" && info.iteration !== undefined) {
      points.set(info.iteration, info.upper_objective);
    }
  }
  for (const record of (result && Array.isArray(result.history) ? result.history : [])) {
    if (typeof record.upper_objective === "number" && record.iteration !== undefined) {
      points.set(record.iteration, record.upper_objective);
    }
  }
  return [...points.entries()].sort((a, b) => a[0] - b[0]);
}

function metricsTable(metrics) {
  const names = Object.keys(metrics);
  names.sort((a, b) => {
    const ia = HEADLINE.indexOf(a);
    const ib = HEADLINE.indexOf(b);
    return (ia < 0 ? 99 : ia) - (ib < 0 ? 99 : ib) || a.localeCompare(b);
  });
  return table(["Metric", "Value", "Unit"], names.map((name) => [name, fmt(metrics[name], 3), UNITS[name] || ""]),
    { id: "job-metrics", class: "compact" });
}

async function beforePerClass(job, signal) {
  // The input model's own per-class accuracy: the result of the job that produced it, when there is one.
  if (!job.model_id) return null;
  const model = await api(`/models/${job.model_id}`, { signal });
  if (!model.job_id) return null;
  const source = await api(`/jobs/${model.job_id}`, { signal });
  return source.result && source.result.per_class_accuracy ? source.result.per_class_accuracy : null;
}

function perClassChart(after, before, split) {
  const values = after[split] || [];
  const series = [];
  if (before && Array.isArray(before[split])) series.push({ name: "before (input model)", values: before[split] });
  series.push({ name: before ? "after (this job)" : "this job", values });
  return barChart({
    kind: "per-class", title: `Per-class accuracy, ${split} split`,
    categories: values.map((_, i) => i), series, xLabel: "class", yLabel: "accuracy (%)", yDomain: [0, 100],
  });
}

function gridImage(url, signal) {
  const img = h("img", { id: "sample-grid", class: "sample-grid", alt: "sample grid (click to enlarge)", onclick: (e) => enlarge(e.target) });
  if (url.startsWith("/v1/")) {
    getBlob(url.slice(3), signal).then((blob) => {
      img.src = URL.createObjectURL(blob);
    }).catch(showError);
  } else if (url.startsWith("/") || url.startsWith("data:image/")) {
    img.src = url;
  } else {
    return note(`Sample grid at ${url} (other origins are not loaded by this page).`);
  }
  return img;
}

function summary(job) {
  const rows = [
    ["Kind", job.kind], ["Method", job.method || "—"], ["Params digest", h("code", { id: "job-params-digest" }, paramsDigest(job.params))],
    ["Seed", job.seed], ["Device", job.device_requested],
    ["Dataset", job.dataset_id || "—"], ["Architecture", job.architecture || "—"],
    ["Model", job.model_id || "—"],
    ["Forget set", job.forget_set_id ? link(`#/forget-sets/${job.forget_set_id}`, job.forget_set_id) : "—"],
    ["Output model", job.output_model_id || "—"],
    ["Campaign", job.campaign_id ? link(`#/campaigns/${job.campaign_id}`, job.campaign_id) : "—"],
    ["Attempt", `${job.attempt} / ${job.max_attempts}`], ["Created", fmtTime(job.created_at)],
    ["Started", fmtTime(job.started_at)], ["Finished", fmtTime(job.finished_at)],
  ];
  if (job.timings) {
    for (const [key, value] of Object.entries(job.timings)) if (typeof value === "number") rows.push([key, fmtDuration(value)]);
  }
  if (job.environment) {
    for (const key of ["device", "torch", "code_version"]) if (job.environment[key]) rows.push([key, job.environment[key]]);
  }
  return h("dl", { class: "summary" }, rows.flatMap(([k, v]) => [h("dt", {}, k), h("dd", {}, v)]));
}

function eventList(events) {
  const shown = events.slice(-MAX_EVENTS_SHOWN).reverse();
  return h("ol", { id: "job-events", class: "events" }, shown.map((e) => {
    const d = e.data || {};
    let text = "";
    if (e.type === "progress") {
      text = `${d.phase || ""} ${d.step ?? ""}/${d.total ?? ""}`;
      const info = d.info || {};
      const extra = ["epoch", "iteration", "loss", "upper_objective", "stage"].filter((k) => info[k] !== undefined)
        .map((k) => `${k}=${fmt(info[k], 4)}`);
      if (extra.length) text += ` (${extra.join(", ")})`;
    } else if (d.error) {
      text = errorText(d.error).text || errorText(d.error).title;
    } else if (d.code || d.detail) {
      text = errorText(d).text || errorText(d).title;
    } else if (d.reason) {
      text = d.reason;
    }
    return h("li", { dataset: { type: e.type } }, h("time", {}, fmtTime(e.ts)), " ", h("strong", {}, e.type), " ", text);
  }));
}

export async function jobView(ctx, id) {
  const first = await getConditional(`/jobs/${id}`, null, ctx.signal);
  let job = first.data;
  let etag = first.etag;
  const events = [];
  let before;
  let beforeLoading = false;
  let split = "test";
  let streamMode = "connecting";

  const head = h("div", { id: "job-head" });
  const live = h("div", { id: "job-live" });
  const results = h("div", { id: "job-results" });
  const info = h("div", {});
  replace(ctx.root, head, live, results, info);

  const renderHead = () => {
    const cancel = !TERMINAL.has(job.status) && !job.cancel_requested
      ? h("button", {
        type: "button", id: "cancel-job", class: "danger",
        onclick: async (event) => {
          event.target.disabled = true;
          try {
            job = await cancelJob(job.id);
            render();
          } catch (error) {
            event.target.disabled = false;
            showError(error);
          }
        },
      }, "Cancel job")
      : null;
    replace(head, h("section", { class: "panel" },
      h("div", { class: "title-row" },
        h("h1", {}, `${job.kind}${job.method && job.method !== job.kind ? ` · ${job.method}` : ""} `,
          h("code", {}, shortId(job.id))),
        h("span", { id: "job-status" }, statusBadge(job.status)), cancel),
      h("div", { id: "job-progress" }, progressBar(job)),
      job.cancel_requested && !TERMINAL.has(job.status) ? note("Cancellation requested: it stops at its next heartbeat.") : null,
      h("p", { class: "muted" }, `Live: ${streamMode}.`),
      job.error ? errorBlock(job.error) : null));
  };

  const renderLive = () => {
    const parts = [];
    if (job.kind === "worst_case_search") {
      const points = searchObjective(events, job.result);
      parts.push(lineChart({
        kind: "search-objective", title: "Worst-case search: upper objective per iteration",
        series: [{ name: "upper objective F(w)", points }], xLabel: "outer iteration", yLabel: "upper objective",
        markers: true,
      }));
    }
    const haveHistory = job.result && Array.isArray(job.result.history) && job.result.history.length;
    if (!haveHistory && job.kind !== "worst_case_search" && job.kind !== "audit") {
      const series = liveHistory(events);
      if (series.length) {
        parts.push(lineChart({ kind: "history", title: "Training curve (live)", series, xLabel: "epoch",
          yLabel: "value", markers: true }));
      }
    }
    replace(live, section("Progress", ...parts, h("h3", {}, "Events"), eventList(events)));
  };

  const renderResults = () => {
    const r = job.result || {};
    const parts = [];
    if (Object.keys(job.metrics || {}).length) parts.push(h("h3", {}, "Metrics"), metricsTable(job.metrics));
    if (Array.isArray(r.history) && r.history.length && job.kind !== "worst_case_search") {
      const series = historySeries(r.history);
      if (series.length) {
        parts.push(lineChart({ kind: "history", title: job.kind === "train" || job.kind === "retrain"
          ? "Training curve" : "Unlearning curve", series, xLabel: r.history[0].epoch !== undefined ? "epoch" : "step",
        yLabel: "value", markers: true }));
      }
    }
    if (r.per_class_accuracy) {
      const splits = Object.keys(r.per_class_accuracy).filter((k) => Array.isArray(r.per_class_accuracy[k]));
      if (!splits.includes(split)) split = splits[0];
      const select = h("select", { id: "per-class-split", onchange: (e) => {
        split = e.target.value;
        renderResults();
      } }, splits.map((name) => h("option", { value: name, selected: name === split }, name)));
      parts.push(h("h3", {}, "Per-class accuracy ", select), perClassChart(r.per_class_accuracy, before, split));
      if (before === undefined && !beforeLoading) {
        beforeLoading = true;
        beforePerClass(job, ctx.signal).then((value) => {
          before = value;
          if (ctx.alive) renderResults();
        }).catch((error) => {
          before = null;
          showError(error);
        });
      }
    }
    if (r.attacks) {
      const curves = findRocCurves(r.attacks);
      if (curves.length) parts.push(h("h3", {}, "Attack ROC curves"), rocChart({ curves }));
    }
    const grids = [r.grid_url, ...(Array.isArray(r.grid_urls) ? r.grid_urls : [])].filter((u) => typeof u === "string");
    if (grids.length) parts.push(h("h3", {}, "Samples"), ...grids.map((u) => gridImage(u, ctx.signal)));
    if (!parts.length) {
      parts.push(note(TERMINAL.has(job.status) ? "This job has no results." : "Results appear when the job is done."));
    }
    replace(results, section("Results", ...parts));
  };

  const renderInfo = () => {
    replace(info, section("Details", summary(job),
      h("details", {}, h("summary", {}, "Parameters"), h("pre", {}, JSON.stringify(job.params, null, 2))),
      job.result ? h("details", {}, h("summary", {}, "Result (JSON)"),
        h("pre", { id: "job-result-json" }, JSON.stringify(job.result, null, 2))) : null,
      job.environment ? h("details", {}, h("summary", {}, "Environment"),
        h("pre", {}, JSON.stringify(job.environment, null, 2))) : null));
  };

  let lastResultVersion = -1;
  const render = () => {
    renderHead();
    renderLive();
    if (job.version !== lastResultVersion) {
      lastResultVersion = job.version;
      renderResults();
      renderInfo();
    }
  };
  render();

  const refresh = async () => {
    const answer = await getConditional(`/jobs/${id}`, etag, ctx.signal);
    if (answer.notModified) return;
    job = answer.data;
    etag = answer.etag;
    render();
  };

  // Conditional polling keeps the progress bar moving between events (heartbeats update progress without
  // an event); it stops once the job is finished.
  const poller = ctx.every(async () => {
    await refresh();
    if (TERMINAL.has(job.status)) ctx.stop(poller);
  }, POLL_MS);

  // The SSE stream replays every event, then follows until the job ends; reconnects resume from the last id.
  let lastId = 0;
  let failures = 0;
  let pendingRender = null;
  const onEvent = (event) => {
    events.push({ id: Number(event.id), type: event.event, ts: event.data && event.data.ts, data: event.data && event.data.data });
    failures = 0;
    // Re-read the job (conditional GET) and redraw, at most every 300 ms however fast events come.
    if (!pendingRender) {
      pendingRender = setTimeout(() => {
        pendingRender = null;
        if (!ctx.alive) return;
        renderLive();
        refresh().catch(showError);
      }, 300);
    }
  };
  for (;;) {
    if (!ctx.alive) return;
    try {
      streamMode = "server-sent events";
      renderHead();
      lastId = await streamEvents(id, { lastEventId: lastId, onEvent, signal: ctx.signal });
      await refresh();
      if (TERMINAL.has(job.status)) {
        streamMode = "finished";
        renderHead();
        renderLive();
        return;
      }
    } catch (error) {
      if (!ctx.alive || error.name === "AbortError") return;
      failures += 1;
      if (failures >= 3) {
        streamMode = "polling (the event stream failed)";
        renderHead();
        showError(error);
        return;
      }
    }
    await sleep(1000, ctx.signal);
  }
}
