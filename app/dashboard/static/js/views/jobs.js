// Jobs list: newest first, filters, live progress by conditional polling (ETag / 304) of active jobs.

import { api, getConditional } from "../api.js";
import { fmtTime, h, link, progressBar, replace, section, shortId, statusBadge, TERMINAL } from "../dom.js";
import { paramsDiff, paramsDigest, paramsLine, redactPaths, errorText } from "../jobinfo.js";
import { showError, toast } from "../ui.js";

const STATUSES = ["queued", "running", "succeeded", "failed", "cancelled"];
const POLL_MS = 1500;
const RELIST_MS = 8000;

export async function cancelJob(id) {
  const job = await api(`/jobs/${id}/cancel`, { method: "POST" });
  toast(`cancel requested for job ${shortId(id)}`);
  return job;
}

function cancelButton(job, onDone) {
  if (TERMINAL.has(job.status) || job.cancel_requested) return null;
  return h("button", {
    type: "button", class: "small danger", dataset: { action: "cancel", jobId: job.id },
    onclick: async (event) => {
      event.target.disabled = true;
      try {
        onDone(await cancelJob(job.id));
      } catch (error) {
        event.target.disabled = false;
        showError(error);
      }
    },
  }, "Cancel");
}

// Jobs that share kind, method and inputs differ only in params (and seed): their digests tell them apart.
function siblingKey(job) {
  return [job.kind, job.method, job.dataset_id, job.model_id, job.forget_set_id].join("|");
}

function paramsCell(job, sibling) {
  const digest = paramsDigest(job.params);
  const diff = sibling ? paramsDiff(sibling.params, job.params) : [];
  const body = sibling
    ? h("div", {}, h("p", { class: "muted" }, `against ${shortId(sibling.id)} (same kind, method and inputs):`),
      diff.length ? h("ul", { class: "params-diff" }, diff.map((d) => h("li", {}, h("code", {}, d.key), ": ",
        d.a === undefined ? "(default)" : JSON.stringify(d.a), " → ", d.b === undefined ? "(default)" : JSON.stringify(d.b))))
        : h("p", { class: "muted" }, "same params"))
    : h("p", { class: "muted" }, paramsLine(job.params));
  return h("details", { class: "params-digest", title: paramsLine(job.params), dataset: { digest } },
    h("summary", {}, h("code", {}, digest), sibling && diff.length ? h("span", { class: "muted" }, ` Δ${diff.length}`) : null),
    body);
}

function jobRow(job, onChange, sibling) {
  const label = job.method && job.method !== job.kind ? job.method : "";
  return h("tr", { dataset: { jobId: job.id, status: job.status } },
    h("td", {}, link(`#/jobs/${job.id}`, shortId(job.id))),
    h("td", {}, job.kind),
    h("td", {}, label),
    h("td", { class: "status-cell" }, statusBadge(job.status), job.cancel_requested && !TERMINAL.has(job.status)
      ? h("span", { class: "muted" }, " cancelling") : null),
    h("td", { class: "progress-cell" }, progressBar(job),
      job.status === "failed" && job.error ? h("div", { class: "error small-error", title: redactPaths(errorText(job.error).text) },
        errorText(job.error).title) : null),
    h("td", { class: "params-cell" }, paramsCell(job, sibling)),
    h("td", {}, job.seed === null || job.seed === undefined ? "—" : String(job.seed)),
    h("td", {}, job.forget_set_id ? link(`#/forget-sets/${job.forget_set_id}`, shortId(job.forget_set_id)) : "—"),
    h("td", {}, fmtTime(job.created_at)),
    h("td", {}, cancelButton(job, onChange)));
}

export async function jobsView(ctx) {
  const params = new URLSearchParams(location.hash.split("?")[1] || "");
  const kinds = (await api("/job-kinds", { signal: ctx.signal })).map((k) => k.name);
  const statusSelect = h("select", { id: "filter-status" }, h("option", { value: "" }, "any status"),
    STATUSES.map((st) => h("option", { value: st, selected: params.get("status") === st }, st)));
  const kindSelect = h("select", { id: "filter-kind" }, h("option", { value: "" }, "any kind"),
    kinds.map((k) => h("option", { value: k, selected: params.get("kind") === k }, k)));
  const tbody = h("tbody", {});
  const empty = h("p", { class: "muted", hidden: true }, "No jobs yet: submit one.");
  const jobsTable = h("table", { id: "jobs-table" },
    h("thead", {}, h("tr", {}, ["Job", "Kind", "Method", "Status", "Progress", "Params", "Seed", "Forget set", "Created", ""]
      .map((head) => h("th", { scope: "col" }, head)))), tbody);
  const state = new Map(); // id → {job, etag, row}
  let siblings = new Map(); // id → a listed job with the same kind, method and inputs but other params

  const render = (job) => {
    const entry = state.get(job.id);
    const row = jobRow(job, render, siblings.get(job.id));
    if (entry && entry.row.isConnected) entry.row.replaceWith(row);
    state.set(job.id, { job, etag: entry ? entry.etag : null, row });
    return row;
  };

  const load = async () => {
    const query = new URLSearchParams({ limit: "50" });
    if (statusSelect.value) query.set("status", statusSelect.value);
    if (kindSelect.value) query.set("kind", kindSelect.value);
    const page = await api(`/jobs?${query}`, { signal: ctx.signal });
    const groups = new Map();
    for (const job of page.data) {
      if (!groups.has(siblingKey(job))) groups.set(siblingKey(job), []);
      groups.get(siblingKey(job)).push(job);
    }
    const next = new Map();
    for (const job of page.data) {
      const digest = paramsDigest(job.params);
      const other = groups.get(siblingKey(job)).find((j) => j.id !== job.id && paramsDigest(j.params) !== digest);
      if (other) next.set(job.id, other);
    }
    const changed = (id) => (siblings.get(id) || {}).id !== (next.get(id) || {}).id;
    siblings = next;
    const rows = page.data.map((job) => {
      const old = state.get(job.id);
      if (old && old.job.version === job.version && !changed(job.id)) return old.row;
      return render(job);
    });
    replace(tbody, rows);
    empty.hidden = rows.length > 0;
  };

  const poll = async () => {
    const active = [...state.values()].filter((e) => !TERMINAL.has(e.job.status) && e.row.isConnected);
    for (const entry of active) {
      const answer = await getConditional(`/jobs/${entry.job.id}`, entry.etag, ctx.signal);
      if (answer.notModified) continue;
      render(answer.data);
      state.get(answer.data.id).etag = answer.etag;
    }
  };

  const refilter = () => {
    const query = new URLSearchParams();
    if (statusSelect.value) query.set("status", statusSelect.value);
    if (kindSelect.value) query.set("kind", kindSelect.value);
    history.replaceState(null, "", `#/jobs${query.toString() ? `?${query}` : ""}`);
    load().catch(showError);
  };
  statusSelect.addEventListener("change", refilter);
  kindSelect.addEventListener("change", refilter);

  replace(ctx.root, section("Jobs",
    h("div", { class: "toolbar" }, statusSelect, kindSelect,
      h("button", { type: "button", onclick: () => load().catch(showError) }, "Refresh"),
      h("a", { class: "button", href: "#/submit" }, "Submit a job")),
    jobsTable, empty,
    h("p", { class: "muted" }, "Active jobs update live (conditional GET with ETag every 1.5 s).")));
  await load();
  ctx.every(poll, POLL_MS);
  ctx.every(load, RELIST_MS);
}
