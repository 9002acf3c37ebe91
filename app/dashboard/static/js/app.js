// Entry point: login (key in sessionStorage, validated with a GET), hash routing, view lifecycle.

import { api, ApiError, clearKey, getKey, setKey } from "./api.js";
import { h, replace } from "./dom.js";
import { describeError, showError } from "./ui.js";
import { campaignDetailView, campaignsView } from "./views/campaigns.js";
import { comparisonView, forgetSetsView } from "./views/comparison.js";
import { complianceView, deletionRequestView } from "./views/compliance.js";
import { dataView } from "./views/data.js";
import { jobView } from "./views/job.js";
import { jobsView } from "./views/jobs.js";
import { submitView } from "./views/submit.js";

const root = document.getElementById("view");
const nav = document.getElementById("nav");
let current = null; // {controller, timers}

const ROUTES = [
  [/^\/jobs\/([0-9a-f-]{36})$/, jobView, "jobs"],
  [/^\/jobs$/, jobsView, "jobs"],
  [/^\/submit$/, submitView, "submit"],
  [/^\/forget-sets\/([0-9a-f-]{36})$/, comparisonView, "forget-sets"],
  [/^\/forget-sets$/, forgetSetsView, "forget-sets"],
  [/^\/campaigns\/([0-9a-f-]{36})$/, campaignDetailView, "campaigns"],
  [/^\/campaigns$/, campaignsView, "campaigns"],
  [/^\/data$/, dataView, "data"],
  [/^\/deletion-requests\/([0-9a-f-]{36})$/, deletionRequestView, "compliance"],
  [/^\/deletion-requests$/, complianceView, "compliance"],
];

/** What a view gets: its container, an abort signal, timers that stop when the view is left. */
function makeContext() {
  const controller = new AbortController();
  const timers = new Set();
  const ctx = {
    root,
    signal: controller.signal,
    every(fn, ms) {
      let busy = false;
      const id = setInterval(async () => {
        if (busy || controller.signal.aborted) return;
        busy = true;
        try {
          await fn();
        } catch (error) {
          if (!controller.signal.aborted) showError(error);
        } finally {
          busy = false;
        }
      }, ms);
      timers.add(id);
      return id;
    },
    stop(id) {
      clearInterval(id);
      timers.delete(id);
    },
    get alive() {
      return !controller.signal.aborted;
    },
  };
  current = { controller, timers };
  return ctx;
}

function leaveView() {
  if (!current) return;
  current.controller.abort();
  for (const id of current.timers) clearInterval(id);
  current = null;
}

function loginView(message) {
  nav.hidden = true;
  const input = h("input", {
    id: "api-key", type: "password", name: "api-key", autocomplete: "off", required: true,
    placeholder: "lk_…", spellcheck: "false",
  });
  const error = h("p", { id: "login-error", class: "error", hidden: !message }, message || "");
  const button = h("button", { type: "submit", id: "login-button" }, "Log in");
  const form = h("form", { id: "login-form", class: "panel login" },
    h("h1", {}, "Lethe"),
    h("p", { class: "muted" }, "Log in with an API key (lk_…). It is kept in this tab only (sessionStorage)."),
    h("label", { for: "api-key" }, "API key"), input, button, error);
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const key = input.value.trim();
    button.disabled = true;
    setKey(key);
    try {
      await api("/methods"); // any read validates the key
      if (!location.hash || location.hash === "#/login") location.hash = "#/jobs";
      else route();
    } catch (err) {
      clearKey();
      error.hidden = false;
      error.textContent = err instanceof ApiError && err.status === 401
        ? "This key was not accepted (invalid, expired or revoked)." : describeError(err);
    } finally {
      button.disabled = false;
    }
  });
  replace(root, form);
  input.focus();
}

async function route() {
  leaveView();
  if (!getKey()) {
    loginView();
    return;
  }
  nav.hidden = false;
  const path = (location.hash || "#/jobs").slice(1).split("?")[0] || "/jobs";
  for (const [pattern, view, section] of ROUTES) {
    const match = path.match(pattern);
    if (!match) continue;
    for (const a of nav.querySelectorAll("a[data-nav]")) a.classList.toggle("active", a.dataset.nav === section);
    const ctx = makeContext();
    replace(root, h("p", { class: "muted" }, "Loading…"));
    try {
      await view(ctx, ...match.slice(1));
    } catch (error) {
      if (!ctx.alive || (error && error.name === "AbortError")) return;
      if (error instanceof ApiError && error.status === 401) return; // the unauthorized handler took over
      replace(root, h("section", { class: "panel" }, h("h2", {}, "Something went wrong"),
        h("p", { class: "error" }, describeError(error))));
    }
    return;
  }
  location.hash = "#/jobs";
}

window.addEventListener("lethe:unauthorized", () => {
  if (!current) return; // the login form reports its own refusals
  leaveView();
  clearKey();
  loginView("The API key was refused; log in again.");
});
window.addEventListener("hashchange", route);
document.getElementById("logout").addEventListener("click", () => {
  clearKey();
  leaveView();
  loginView();
});
window.addEventListener("unhandledrejection", (event) => {
  if (event.reason && event.reason.name === "AbortError") event.preventDefault();
});
route();
