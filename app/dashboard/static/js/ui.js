// Notices shared by the views: a toast line and problem+json errors in words.

import { ApiError } from "./api.js";

export function toast(message, kind = "info") {
  const el = document.getElementById("toast");
  if (!el) return;
  el.textContent = message;
  el.className = `toast toast-${kind}`;
  el.hidden = false;
  clearTimeout(toast.timer);
  toast.timer = setTimeout(() => {
    el.hidden = true;
  }, 6000);
}

export function describeError(error) {
  if (error instanceof ApiError) {
    const p = error.problem || {};
    const parts = [`${error.status} ${p.title || ""}`.trim(), p.detail, p.code ? `(${p.code})` : null];
    for (const item of p.errors || []) parts.push(`${(item.loc || []).join(".")}: ${item.msg}`);
    return parts.filter(Boolean).join(" — ");
  }
  return error && error.message ? error.message : String(error);
}

export function showError(error) {
  if (error && error.name === "AbortError") return;
  toast(describeError(error), "error");
}

/** Show an image full-window (a sample grid enlarged); a click or Escape closes it. */
export function enlarge(img) {
  if (!img.src) return;
  const big = document.createElement("img");
  big.src = img.src;
  big.alt = img.alt;
  const overlay = document.createElement("div");
  overlay.className = "lightbox";
  overlay.id = "lightbox";
  overlay.setAttribute("role", "dialog");
  overlay.append(big);
  const close = () => {
    overlay.remove();
    document.removeEventListener("keydown", onKey);
  };
  const onKey = (event) => {
    if (event.key === "Escape") close();
  };
  overlay.addEventListener("click", close);
  document.addEventListener("keydown", onKey);
  document.body.append(overlay);
}
