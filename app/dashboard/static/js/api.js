// The /v1 API from the browser: the key from sessionStorage as a Bearer token, problem+json errors,
// conditional GETs with ETag, and server-sent events read from a fetch stream (EventSource cannot send
// an Authorization header).

const KEY = "lethe.apiKey";

export class ApiError extends Error {
  constructor(status, problem) {
    super(problem.detail || problem.title || `HTTP ${status}`);
    this.status = status;
    this.problem = problem;
  }
}

export function getKey() {
  return sessionStorage.getItem(KEY);
}

export function setKey(key) {
  sessionStorage.setItem(KEY, key);
}

export function clearKey() {
  sessionStorage.removeItem(KEY);
}

function headers(extra = {}) {
  const out = { Accept: "application/json", ...extra };
  const key = getKey();
  if (key) out.Authorization = `Bearer ${key}`;
  return out;
}

async function toError(response) {
  let problem;
  try {
    problem = await response.json();
  } catch {
    problem = { title: response.statusText || `HTTP ${response.status}` };
  }
  if (response.status === 401) window.dispatchEvent(new CustomEvent("lethe:unauthorized"));
  return new ApiError(response.status, problem);
}

/** fetch a /v1 path; JSON in and out. ``raw`` returns the Response untouched. */
export async function api(path, { method = "GET", body, headers: extra, signal, raw = false } = {}) {
  const init = { method, headers: headers(extra), signal, cache: "no-store" };
  if (body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const response = await fetch(`/v1${path}`, init);
  if (raw) return response;
  if (!response.ok) throw await toError(response);
  if (response.status === 204) return null;
  return response.json();
}

/** GET with If-None-Match: {notModified: true} on 304, else {data, etag}. */
export async function getConditional(path, etag, signal) {
  const response = await api(path, { raw: true, signal, headers: etag ? { "If-None-Match": etag } : {} });
  if (response.status === 304) return { notModified: true, etag };
  if (!response.ok) throw await toError(response);
  return { data: await response.json(), etag: response.headers.get("ETag") };
}

/** A /v1 path as a Blob (CSV downloads, images behind the API key). */
export async function getBlob(path, signal) {
  const response = await fetch(`/v1${path}`, { headers: headers({ Accept: "*/*" }), signal, cache: "no-store" });
  if (!response.ok) throw await toError(response);
  return response.blob();
}

/**
 * Follow a job's SSE stream. Calls onEvent({id, event, data}) per event; resolves with the last event id
 * when the server ends the stream (the job finished). Rejects on HTTP or network errors.
 */
export async function streamEvents(jobId, { lastEventId = 0, onEvent, signal }) {
  const extra = { Accept: "text/event-stream" };
  if (lastEventId) extra["Last-Event-ID"] = String(lastEventId);
  const response = await fetch(`/v1/jobs/${jobId}/events/stream`, {
    headers: headers(extra),
    signal,
    cache: "no-store",
  });
  if (!response.ok) throw await toError(response);
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  let lastId = lastEventId;
  let pending = { data: [], event: "message", id: null };
  const dispatch = () => {
    if (pending.data.length) {
      if (pending.id !== null) lastId = Number(pending.id) || lastId;
      let data = pending.data.join("\n");
      try {
        data = JSON.parse(data);
      } catch {
        // not JSON: hand the text over as it is
      }
      onEvent({ id: pending.id, event: pending.event, data });
    }
    pending = { data: [], event: "message", id: null };
  };
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += value;
    let index;
    while ((index = buffer.indexOf("\n")) >= 0) {
      let line = buffer.slice(0, index);
      buffer = buffer.slice(index + 1);
      if (line.endsWith("\r")) line = line.slice(0, -1);
      if (line === "") {
        dispatch();
        continue;
      }
      if (line.startsWith(":")) continue; // comment / keep-alive
      const colon = line.indexOf(":");
      const field = colon < 0 ? line : line.slice(0, colon);
      let text = colon < 0 ? "" : line.slice(colon + 1);
      if (text.startsWith(" ")) text = text.slice(1);
      if (field === "data") pending.data.push(text);
      else if (field === "event") pending.event = text;
      else if (field === "id") pending.id = text;
    }
  }
  dispatch();
  return lastId;
}

/** Every page of a cursor-paginated list, up to ``max`` rows. */
export async function listAll(path, { max = 500, signal } = {}) {
  const rows = [];
  let cursor = null;
  const sep = path.includes("?") ? "&" : "?";
  do {
    const page = await api(`${path}${sep}limit=200${cursor ? `&cursor=${encodeURIComponent(cursor)}` : ""}`, {
      signal,
    });
    rows.push(...page.data);
    cursor = page.has_more ? page.next_cursor : null;
  } while (cursor && rows.length < max);
  return rows;
}

/** POST a multipart form (uploads); JSON answer, problem+json errors as ApiError. */
export async function apiForm(path, formData, { signal } = {}) {
  const response = await fetch(`/v1${path}`, { method: "POST", headers: headers(), body: formData, signal, cache: "no-store" });
  if (!response.ok) throw await toError(response);
  return response.json();
}

/** Save a /v1 download under ``filename`` (the key travels in a header, so a plain link cannot do it). */
export async function download(path, filename) {
  const blob = await getBlob(path);
  const url = URL.createObjectURL(blob);
  const a = document.createElement("a");
  a.href = url;
  a.download = filename;
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 60_000);
}

// Files above this go through the resumable upload API (/v1/uploads) in parts of this size; a part the
// server finds too large (its single-request limit is lower) is halved and resent.
export const CHUNK = { threshold: 32 * 1024 * 1024, part: 16 * 1024 * 1024 };

function base64(buffer) {
  let text = "";
  for (const byte of new Uint8Array(buffer)) text += String.fromCharCode(byte);
  return btoa(text);
}

/**
 * Upload ``file`` as ``purpose`` (dataset | model) in parts, then complete it with ``completion`` (the
 * fields the single-request route takes). Resolves with the finished upload ({result_type, result_id}).
 * ``onProgress(fraction)`` after every part. An upload refused on completion is abandoned (DELETE).
 */
export async function chunkedUpload(file, purpose, completion, { onProgress, signal } = {}) {
  const upload = await api("/uploads", { method: "POST", body: { purpose, size_bytes: file.size }, signal });
  let offset = 0;
  let part = CHUNK.part;
  try {
    while (offset < file.size) {
      const end = Math.min(offset + part, file.size);
      const bytes = await file.slice(offset, end).arrayBuffer();
      const digest = base64(await crypto.subtle.digest("SHA-256", bytes));
      const response = await fetch(`/v1/uploads/${upload.id}`, {
        method: "PUT", body: bytes, signal, cache: "no-store",
        headers: headers({ "Content-Type": "application/octet-stream", "Content-Range": `bytes ${offset}-${end - 1}/${file.size}`,
          "Content-Digest": `sha-256=:${digest}:` }),
      });
      if (response.status === 413 && part > 64 * 1024) {
        part = Math.floor(part / 2);
        continue;
      }
      if (!response.ok) throw await toError(response);
      offset = (await response.json()).received_bytes;
      if (onProgress) onProgress(offset / file.size);
    }
    return await api(`/uploads/${upload.id}/complete`, { method: "POST", body: completion, signal });
  } catch (error) {
    // Nothing half-written stays behind: the parts go with the upload.
    await api(`/uploads/${upload.id}`, { method: "DELETE" }).catch(() => {});
    throw error;
  }
}
