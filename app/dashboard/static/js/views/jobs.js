// Jobs list: newest first, filters, live progress by conditional polling (ETag / 304) of active jobs.

import { api, getConditional } from "../api.js";
import { fmtTime, h, link, progressBar, replace, section, shortId, statusBadge, TERMINAL } from "../dom.js";
import { showError, toast } from "../ui.js";

const KINDS = ["train", "retrain", "unlearn", "evaluate", "prune", "worst_case_search", "audit"];
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

function jobRow(job, onChange) {
  const label = job.method && job.method !== job.kind ? job.method : "";
  return h("tr", { dataset: { jobId: job.id, status: job.status } },
    h("td", {}, link(`#/jobs/${job.id}`, shortId(job.id))),
    h("td", {}, job.kind),
    h("td", {}, label),
    h("td", { class: "status-cell" }, statusBadge(job.status), job.cancel_requested && !TERMINAL.has(job.status)
      ? h("span", { class: "muted" }, " cancelling") : null),
    h("td", { class: "progress-cell" }, progressBar(job)),
    h("td", {}, job.forget_set_id ? link(`#/forget-sets/${job.forget_set_id}`, shortId(job.forget_set_id)) : "—"),
    h("td", {}, fmtTime(job.created_at)),
    h("td", {}, cancelButton(job, onChange)));
}

export async function jobsView(ctx) {
  const params = new URLSearchParams(location.hash.split("?")[1] || "");
  const statusSelect = h("select", { id: "filter-status" }, h("option", { value: "" }, "any status"),
    STATUSES.map((st) => h("option", { value: st, selected: params.get("status") === st }, st)));
  const kindSelect = h("select", { id: "filter-kind" }, h("option", { value: "" }, "any kind"),
    KINDS.map((k) => h("option", { value: k, selected: params.get("kind") === k }, k)));
  const tbody = h("tbody", {});
  const empty = h("p", { class: "muted", hidden: true }, "No jobs yet: submit one.");
  const jobsTable = h("table", { id: "jobs-table" },
    h("thead", {}, h("tr", {}, ["Job", "Kind", "Method", "Status", "Progress", "Forget set", "Created", ""]
      .map((head) => h("th", { scope: "col" }, head)))), tbody);
  const state = new Map(); // id → {job, etag, row}

  const render = (job) => {
    const entry = state.get(job.id);
    const row = jobRow(job, render);
    if (entry && entry.row.isConnected) entry.row.replaceWith(row);
    state.set(job.id, { job, etag: entry ? entry.etag : null, row });
    return row;
  };

  const load = async () => {
    const query = new URLSearchParams({ limit: "50" });
    if (statusSelect.value) query.set("status", statusSelect.value);
    if (kindSelect.value) query.set("kind", kindSelect.value);
    const page = await api(`/jobs?${query}`, { signal: ctx.signal });
    const rows = page.data.map((job) => {
      const old = state.get(job.id);
      if (old && old.job.version === job.version) return old.row;
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
