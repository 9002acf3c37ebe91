// Policies and deletion requests: publish a policy (rules from the PolicyRule schema), file a deletion
// request (method params from the method's schema), follow it, and its signed reports: download as JSON,
// HTML or PDF, and the signature checked in this browser (WebCrypto Ed25519 against GET
// /v1/report-signing-key; `lethe verify-report` does the same offline).

import { api, download, getBlob, listAll } from "../api.js";
import { fmtTime, h, link, note, replace, section, shortId, statusBadge, table } from "../dom.js";
import { errorBlock } from "../jobinfo.js";
import { schemaForm } from "../schemaform.js";
import { describeError, toast } from "../ui.js";
import { field, idempotencyKey, paramsEditor } from "./submit.js";

const REFRESH_MS = 3000;

function inlineError(id) {
  return h("p", { id, class: "error", role: "alert", hidden: true });
}

function showInline(el, error) {
  el.textContent = error ? describeError(error) : "";
  el.hidden = !error;
}

async function openapiRoot(signal) {
  const openapi = await fetch("/openapi.json", { signal }).then((r) => r.json());
  return { $defs: openapi.components.schemas };
}

function policyForm(root, onDone) {
  const name = h("input", { id: "policy-name", type: "text", placeholder: "e.g. gdpr-erasure" });
  const description = h("input", { id: "policy-description", type: "text" });
  const rules = h("div", { id: "policy-rules" });
  const forms = [];
  const addRule = () => {
    const form = schemaForm(root, root.$defs.PolicyRule, { idPrefix: `rule${forms.length}` });
    forms.push(form);
    rules.append(h("fieldset", { class: "rule" }, h("legend", {}, `Rule ${forms.length}`), form.el));
  };
  addRule();
  const error = inlineError("policy-error");
  const button = h("button", { type: "submit", id: "policy-button" }, "Publish policy");
  const form = h("form", { id: "policy-form", class: "form" },
    h("p", { class: "muted" }, root.$defs.PolicyRule.description.split("\n\n")[0]),
    field("Name", name, "name"), field("Description", description, "description"), rules,
    h("button", { type: "button", class: "small", id: "add-rule", onclick: addRule }, "Add a rule"), button, error);
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    showInline(error, null);
    button.disabled = true;
    try {
      const body = { name: name.value.trim(), rules: forms.map((f) => f.value()) };
      if (description.value.trim()) body.description = description.value.trim();
      const created = await api("/policies", { method: "POST", body });
      toast(`policy ${created.name} v${created.version} published`);
      await onDone(created);
    } catch (err) {
      forms.forEach((f, i) => f.markErrors((err.problem || {}).errors, ["rules", i]));
      showInline(error, err);
    } finally {
      button.disabled = false;
    }
  });
  return form;
}

function policiesTable(rows) {
  return rows.length ? table(["Policy", "Version", "Rules", "Warnings", "Created"], rows.map((p) => [
    p.name, String(p.version), h("ul", { class: "rules" }, p.rules.map((r) => h("li", {}, ruleText(r)))),
    p.warnings.length ? h("ul", {}, p.warnings.map((w) => h("li", { class: "warn" }, w.detail))) : "—",
    fmtTime(p.created_at)]), { id: "policies-table" }) : note("No policies yet.");
}

function ruleText(rule) {
  if (rule.max_abs_gap !== null && rule.max_abs_gap !== undefined) {
    return `|${rule.metric} − ${rule.relative_to}| ≤ ${rule.max_abs_gap}`;
  }
  if (rule.max_drop_from_original !== null && rule.max_drop_from_original !== undefined) {
    return `${rule.metric} drops ≤ ${rule.max_drop_from_original} from the original`;
  }
  const parts = [];
  if (rule.min !== null && rule.min !== undefined) parts.push(`${rule.metric} ≥ ${rule.min}`);
  if (rule.max !== null && rule.max !== undefined) parts.push(`${rule.metric} ≤ ${rule.max}`);
  return parts.join(" and ") || JSON.stringify(rule);
}

function requestForm({ models, forgetSets, methods, policies }) {
  const unlearn = methods.filter((m) => m.job_kind === "unlearn");
  const name = h("input", { id: "dr-name", type: "text", placeholder: "optional" });
  const model = h("select", { id: "dr-model" }, models.map((m) => h("option", { value: m.id }, `${m.name} (${shortId(m.id)})`)));
  const forgetSet = h("select", { id: "dr-forget-set" }, forgetSets.map((f) => h("option", { value: f.id }, `${f.name} (${f.kind}, ${f.size})`)));
  const method = h("select", { id: "dr-method" }, unlearn.map((m) => h("option", { value: m.name }, m.name)));
  const policy = h("select", { id: "dr-policy" }, policies.map((p) => h("option", { value: p.id }, `${p.name} v${p.version}`)));
  const seed = h("input", { id: "dr-seed", type: "number", min: "0", step: "1", placeholder: "drawn when empty" });
  const subject = h("input", { id: "dr-subject", type: "text", placeholder: "pseudonymous id, optional" });
  const ticket = h("input", { id: "dr-ticket", type: "text", placeholder: "optional" });
  const params = paramsEditor({ id: "dr-params", title: "Method parameters" });
  const update = () => params.setSchema((unlearn.find((m) => m.name === method.value) || {}).params_schema);
  method.addEventListener("change", update);
  const error = inlineError("dr-error");
  const button = h("button", { type: "submit", id: "dr-button" }, "File deletion request");
  const form = h("form", { id: "dr-form", class: "form" },
    field("Name", name, "name"), field("Model", model, "model"), field("Forget set", forgetSet, "forget_set"),
    field("Policy", policy, "policy"), field("Method", method, "method"), params.el,
    h("div", { class: "row" }, field("Seed", seed, "seed"), field("Subject reference", subject, "subject"),
      field("Ticket", ticket, "ticket")), button, error);
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    showInline(error, null);
    button.disabled = true;
    try {
      if (!model.value || !forgetSet.value || !policy.value) throw new Error("choose a model, a forget set and a policy");
      const body = { model_id: model.value, forget_set_id: forgetSet.value, method: method.value,
        params: params.value(), policy_id: policy.value };
      if (name.value.trim()) body.name = name.value.trim();
      if (seed.value !== "") body.seed = Number(seed.value);
      if (subject.value.trim()) body.subject_reference = subject.value.trim();
      if (ticket.value.trim()) body.ticket_reference = ticket.value.trim();
      const created = await api("/deletion-requests", { method: "POST", body, headers: { "Idempotency-Key": idempotencyKey() } });
      toast(`deletion request ${shortId(created.id)} filed`);
      location.hash = `#/deletion-requests/${created.id}`;
    } catch (err) {
      params.markErrors((err.problem || {}).errors, ["params"]);
      showInline(error, err);
    } finally {
      button.disabled = false;
    }
  });
  update();
  return form;
}

function requestProgress(request) {
  const fraction = request.progress ? request.progress.fraction : 0;
  const fill = h("div", { class: "bar-fill" });
  fill.style.width = `${Math.round(fraction * 100)}%`;
  const label = request.status === "failed" || request.status === "cancelled" ? request.status
    : `${Math.round(fraction * 100)}%`;
  return h("div", { class: `bar bar-${request.status}`, dataset: { fraction: String(fraction) } }, fill,
    h("span", { class: "bar-label" }, label));
}

export async function complianceView(ctx) {
  const [root, models, forgetSets, methods] = await Promise.all([
    openapiRoot(ctx.signal), listAll("/models", { signal: ctx.signal }), listAll("/forget-sets", { signal: ctx.signal }),
    api("/methods", { signal: ctx.signal }),
  ]);
  const policiesPanel = h("div", {});
  const requestsPanel = h("div", {});
  const formPanel = h("div", {});
  const load = async () => {
    const [policies, requests] = await Promise.all([
      listAll("/policies", { signal: ctx.signal }), listAll("/deletion-requests", { signal: ctx.signal })]);
    replace(policiesPanel, policiesTable(policies));
    replace(requestsPanel, requests.length ? table(["Request", "Status", "Progress", "Verdict", "Method", "Policy", "Created"],
      requests.map((r) => [link(`#/deletion-requests/${r.id}`, r.name || shortId(r.id)), statusBadge(r.status),
        requestProgress(r), r.verdict || "—", r.method, `${r.policy.name} v${r.policy.version}`, fmtTime(r.created_at)]),
    { id: "requests-table" }) : note("No deletion requests yet."));
    return policies;
  };
  const policies = await load();
  const renderForm = async (created) => {
    const all = created ? await load() : policies;
    replace(formPanel, all.length ? requestForm({ models, forgetSets, methods, policies: all })
      : note("Publish a policy first: a request is checked against one."));
  };
  await renderForm();
  replace(ctx.root,
    section("Deletion requests", requestsPanel),
    section("New deletion request", formPanel),
    section("Policies", policiesPanel, h("details", { open: policies.length === 0 },
      h("summary", {}, "Publish a policy"), policyForm(root, renderForm))));
}

// ------------------------------------------------------------------------------ one request, its reports

function base64Bytes(text) {
  return Uint8Array.from(atob(text), (c) => c.charCodeAt(0));
}

function hex(buffer) {
  return [...new Uint8Array(buffer)].map((b) => b.toString(16).padStart(2, "0")).join("");
}

/**
 * Check a report in the browser: its bytes hash to the recorded sha256, and its Ed25519 signature verifies
 * over the document without its signature. The report is canonical JSON (sorted keys, no spaces), so that
 * unsigned text is the signed text with the one top-level "signature" member removed.
 */
export async function verifyReport(reportId, meta, signingKey) {
  const bytes = new Uint8Array(await (await getBlob(`/reports/${reportId}`)).arrayBuffer());
  if (hex(await crypto.subtle.digest("SHA-256", bytes)) !== meta.sha256) {
    return { ok: false, text: "the bytes do not match the recorded SHA-256" };
  }
  const text = new TextDecoder().decode(bytes);
  const document = JSON.parse(text);
  const signature = document.signature || {};
  if (signature.key_id !== signingKey.key_id) {
    return { ok: false, text: `signed with key ${signature.key_id}; the server's key is ${signingKey.key_id}` };
  }
  const member = `"signature":${JSON.stringify(Object.fromEntries(Object.entries(signature).sort(([a], [b]) => (a < b ? -1 : 1))))}`;
  let unsigned = text.replace(`,${member}`, "");
  if (unsigned === text) unsigned = text.replace(`${member},`, "");
  if (unsigned === text) return { ok: false, text: "no signature member found" };
  let key;
  try {
    key = await crypto.subtle.importKey("raw", base64Bytes(signingKey.public_key), { name: "Ed25519" }, false, ["verify"]);
  } catch {
    return { ok: null, text: "this browser cannot check Ed25519 signatures: use `lethe verify-report`" };
  }
  const ok = await crypto.subtle.verify({ name: "Ed25519" }, key, base64Bytes(signature.value), new TextEncoder().encode(unsigned));
  return ok ? { ok: true, text: `signature valid (key ${signature.key_id}), sha256 ${meta.sha256.slice(0, 12)}…` }
    : { ok: false, text: "the signature does not match the document (altered?)" };
}

function reportRow(report, signingKey) {
  const status = h("span", { class: "verify muted", dataset: { reportId: report.id } }, "checking…");
  verifyReport(report.id, report, signingKey).then((result) => {
    status.textContent = result.text;
    status.className = `verify ${result.ok === true ? "ok" : result.ok === false ? "error" : "muted"}`;
    status.dataset.verified = String(result.ok);
  }).catch((err) => {
    status.textContent = describeError(err);
    status.className = "verify error";
    status.dataset.verified = "false";
  });
  const button = (format, suffix, path) => h("button", { type: "button", class: "small", dataset: { download: format },
    onclick: () => download(path, `lethe-report-${report.id}.${suffix}`).catch((err) => toast(describeError(err), "error")) }, format);
  return [shortId(report.id), fmtTime(report.issued_at), h("strong", {}, report.verdict),
    h("span", { class: "inline" }, button("JSON", "json", `/reports/${report.id}`), button("HTML", "html", `/reports/${report.id}/html`),
      button("PDF", "pdf", `/reports/${report.id}/pdf`)), status];
}

export async function deletionRequestView(ctx, id) {
  const signingKey = await api("/report-signing-key", { signal: ctx.signal });
  const head = h("div", {});
  const reports = h("div", { id: "reports" });
  let lastVersion = null;
  let reportCount = -1;
  const load = async () => {
    const request = await api(`/deletion-requests/${id}`, { signal: ctx.signal });
    if (request.version !== lastVersion) {
      lastVersion = request.version;
      const jobs = Object.entries(request.jobs || {}).map(([role, j]) => [role, j && j.job_id
        ? link(`#/jobs/${j.job_id}`, shortId(j.job_id)) : "—", (request.progress.jobs || {})[role] || "—",
      j && j.reused ? "reused" : ""]);
      replace(head, section(`Deletion request ${request.name || shortId(request.id)}`,
        h("div", { class: "title-row" }, h("span", { id: "dr-status" }, statusBadge(request.status)),
          request.verdict ? h("strong", { id: "dr-verdict" }, `verdict: ${request.verdict}`) : null),
        requestProgress(request),
        request.error ? errorBlock(request.error, "dr-error-block") : null,
        h("dl", { class: "summary" },
          h("dt", {}, "Method"), h("dd", {}, request.method),
          h("dt", {}, "Policy"), h("dd", {}, `${request.policy.name} v${request.policy.version}`),
          h("dt", {}, "Model"), h("dd", {}, request.model_id),
          h("dt", {}, "Forget set"), h("dd", {}, link(`#/forget-sets/${request.forget_set_id}`, request.forget_set_id)),
          h("dt", {}, "Seed"), h("dd", {}, String(request.seed))),
        h("h3", {}, "Jobs"), table(["Role", "Job", "Status", ""], jobs, { class: "compact" })));
    }
    const list = await api(`/deletion-requests/${id}/reports`, { signal: ctx.signal });
    if (list.length !== reportCount) {
      reportCount = list.length;
      replace(reports, section("Reports", list.length
        ? table(["Report", "Issued", "Verdict", "Download", "Verification (in this browser)"],
          list.map((r) => reportRow(r, signingKey)), { id: "reports-table" })
        : note("The signed report is issued when every job has succeeded.")));
    }
  };
  replace(ctx.root, head, reports);
  await load();
  ctx.every(load, REFRESH_MS);
}
