"""The HTML rendering of version-1 compliance reports (``lethe.compliance-report/1``), frozen.

``verify_html`` accepts an HTML export only when it is byte for byte the rendering of its embedded signed
document, so the renderer of a format version must never change once reports of that version have been
exported: this is the renderer those pages were made with, kept as it was. Version-2 documents (controls,
plain-language rules, references) are rendered by ``app.services.compliance.reports.render_html``.
"""

from __future__ import annotations

import html
import json
from typing import Any

DATA_ELEMENT_ID = "lethe-report"
_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2rem auto;max-width:70rem;
color:#1d2330;padding:0 1rem}
h1{font-size:1.5rem}h2{font-size:1.15rem;margin-top:2rem;border-bottom:1px solid
#d6dae3}
table{border-collapse:collapse;width:100%;margin:.5rem 0;font-size:.9rem}th,td{border:1px solid #d6dae3;
padding:.3rem .5rem;text-align:left;vertical-align:top}th{background:#f3f5f9}code{font-size:.85rem;
word-break:break-all}.pass{color:#14722f;font-weight:600}.fail{color:#b3261e;font-weight:600}
.inconclusive{color:#8a5a00;font-weight:600}.verdict{font-size:1.3rem;padding:.6rem 1rem;border-radius:.4rem;
background:#f3f5f9;display:inline-block}.num{text-align:right;font-variant-numeric:tabular-nums}
footer{margin-top:2rem;font-size:.8rem;color:#5b6475}
""".strip()


def _e(value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return html.escape(f"{value:.6g}")
    if isinstance(value, dict | list):
        return f"<code>{html.escape(json.dumps(value, sort_keys=True, separators=(', ', ': ')))}</code>"
    return html.escape(str(value))


def _rows(pairs: list[tuple[str, Any]]) -> str:
    return "".join(f"<tr><th>{html.escape(k)}</th><td>{_e(v)}</td></tr>" for k, v in pairs)


def _verdict_class(passed: Any) -> str:
    return "pass" if passed is True else "fail" if passed is False else "inconclusive"


def summary_fields(doc: dict[str, Any]) -> list[tuple[str, Any]]:
    """The report's header rows (shared by the HTML and PDF renderings)."""
    return [
        ("Deletion request", doc["deletion_request"]["id"]),
        ("Name", doc["deletion_request"].get("name")),
        ("Requested at", doc["deletion_request"]["created_at"]),
        ("Issued at", doc["issued_at"]),
        ("Policy", f"{doc['policy']['name']} v{doc['policy']['version']} ({doc['policy']['id']})"),
        ("Policy SHA-256", doc["policy"]["sha256"]),
        ("Method", doc["method"]["name"]),
        ("Method params", doc["method"]["params"]),
        ("Seed", doc["method"]["seed"]),
        ("Device", doc["method"].get("device")),
    ]


def job_fields(job: dict[str, Any]) -> list[tuple[str, Any]]:
    """One job's rows (shared by the HTML and PDF renderings); its metrics follow as a table."""
    env = job.get("environment") or {}
    return [
        ("Job", job["id"]),
        ("Kind / method", f"{job['kind']} / {job.get('method') or '—'}"),
        ("Seed", job["seed"]),
        ("Reused cached result", job["reused_cached_result"]),
        ("Params", job["params"]),
        ("Code version", job["code_version"]),
        ("Device", f"{env.get('device')} ({env.get('device_name')})"),
        ("Libraries", {k: env.get(k) for k in ("python", "torch", "cuda", "numpy", "sklearn")}),
        ("Timings (s)", job.get("timings")),
        ("Started / finished", f"{job.get('started_at')} / {job.get('finished_at')}"),
    ]


def render_html_v1(canonical: bytes) -> str:
    """A self-contained page (inline CSS, no scripts or external assets) with the signed JSON embedded."""
    doc = json.loads(canonical)
    inputs = doc["inputs"]
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>Compliance report {html.escape(doc['deletion_request']['id'])}</title>",
        f"<style>{_CSS}</style></head><body>",
        "<h1>Lethe compliance report</h1>",
        f'<p class="verdict">Verdict: <span class="{html.escape(doc["verdict"])}">'
        f"{html.escape(doc['verdict'].upper())}</span></p>",
        "<table>",
        _rows(summary_fields(doc)),
        "</table>",
        "<h2>Policy rules</h2><table><tr><th>#</th><th>Rule</th><th>Compared</th><th>Result</th></tr>",
    ]
    for verdict in doc["verdicts"]:
        compared = verdict.get("comparison") or verdict.get("reason") or ""
        label = _verdict_class(verdict["passed"])
        parts.append(
            f"<tr><td>{verdict['index']}</td><td>{_e(verdict['rule'])}</td><td>{html.escape(compared)}</td>"
            f'<td class="{label}">{label}</td></tr>'
        )
    parts.append("</table><h2>Inputs</h2><table><tr><th>Input</th><th>SHA-256</th><th>Details</th></tr>")
    for name in ("dataset", "model", "forget_set", "output_model"):
        item = inputs.get(name)
        if item is None:
            parts.append(f"<tr><td>{name}</td><td>—</td><td>—</td></tr>")
            continue
        details = {k: v for k, v in item.items() if k != "sha256"}
        parts.append(
            f"<tr><td>{name}</td><td><code>{_e(item['sha256'])}</code></td><td>{_e(details)}</td></tr>"
        )
    parts.append("</table>")
    for role, job in doc["jobs"].items():
        parts.append(f"<h2>Job: {html.escape(role)}</h2><table>")
        parts.append(_rows(job_fields(job)))
        parts.append('</table><table><tr><th>Metric</th><th class="num">Value</th>')
        parts.append('<th class="num">CI low</th><th class="num">CI high</th></tr>')
        for metric, entry in job["metrics"].items():
            parts.append(
                f'<tr><td>{html.escape(metric)}</td><td class="num">{_e(entry["value"])}</td>'
                f'<td class="num">{_e(entry["ci_low"])}</td><td class="num">{_e(entry["ci_high"])}</td></tr>'
            )
        parts.append("</table>")
    signature = doc.get("signature") or {}
    embedded = canonical.decode("utf-8").replace("<", "\\u003c")
    parts += [
        "<footer>",
        f"<p>Signed with {html.escape(str(signature.get('algorithm')))} key "
        f"<code>{html.escape(str(signature.get('key_id')))}</code>. Check with "
        "<code>lethe verify-report FILE</code>; the signed JSON is embedded below.</p>",
        "</footer>",
        f'<script type="application/json" id="{DATA_ELEMENT_ID}">{embedded}</script>',
        "</body></html>",
        "",
    ]
    return "\n".join(parts)
