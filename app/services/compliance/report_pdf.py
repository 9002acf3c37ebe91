"""Compliance reports as PDF, rendered from the signed canonical JSON with matplotlib's PDF backend (offline,
maintained, already a dependency for the plots).

The PDF is a rendering for people and filing systems: the same content as the HTML page (verdict and its
reason, the requester's references, each policy rule in words with the unlearned model's and each control's
rounded finding, the recovery audits' table and survival line when the policy needed them, inputs by
SHA-256, every job with its environment and metrics with intervals), A4 pages of monospaced text. It is
not what is signed: its footer names the SHA-256 of the signed JSON, which ``GET /v1/reports/{id}``
returns and ``lethe verify-report`` checks. The same report always renders to the same bytes (no creation
date).
"""

from __future__ import annotations

import hashlib
import io
import json
import textwrap
from typing import Any

import matplotlib
from matplotlib.backends.backend_pdf import PdfPages
from matplotlib.figure import Figure

from app.services.compliance.reports import (
    FORMAT_V1,
    RECOVERY_MODELS,
    ROLES,
    control_summary,
    in_role_order,
    job_fields,
    metric_text,
    plain_value,
    recovery_lines,
    recovery_table,
    result_label,
    rule_rows,
    summary_fields,
)
from app.services.jobs.plots import render_lock

A4_INCHES = (8.27, 11.69)
LINES_PER_PAGE = 64
WRAP_COLUMNS = 100
TOP, LEFT, LINE_HEIGHT = 0.955, 0.06, 0.0138
_STATISTICS = ("value", "ci_low", "ci_high")
STYLES: dict[str, dict[str, Any]] = {
    "title": {"fontsize": 13, "fontweight": "bold"},
    "heading": {"fontsize": 9.5, "fontweight": "bold"},
    "text": {"fontsize": 7.2},
}


def _value(value: Any) -> str:
    return plain_value(value)


def _pairs(pairs: list[tuple[str, Any]]) -> list[tuple[str, str]]:
    width = max(len(key) for key, _ in pairs) + 2
    return [("text", f"{key:<{width}}{_value(value)}") for key, value in pairs]


def _rule_lines(doc: dict[str, Any]) -> list[tuple[str, str]]:
    if doc.get("format") == FORMAT_V1:  # no plain-language fields nor controls in version 1
        lines = []
        for verdict in doc["verdicts"]:
            result = result_label(verdict["passed"]).upper()
            compared = verdict.get("comparison") or verdict.get("reason") or ""
            lines.append(("text", f"#{verdict['index']} {result}: {_value(verdict['rule'])} -- {compared}"))
        return lines
    lines = [("text", line) for line in control_summary(doc)]
    for row in rule_rows(doc):
        lines.append(("text", ""))
        lines.append(("text", f"{row['index'] + 1}. {row['statement']}"))
        lines.append(("text", f"   {row['meaning']}"))
        for who, finding, _ in row["findings"]:
            lines.append(("text", f"   - {who}: {finding}"))
    return lines


def report_lines(doc: dict[str, Any]) -> list[tuple[str, str]]:
    """(style, text) lines of a report document, before wrapping."""
    lines: list[tuple[str, str]] = [
        ("title", "Lethe compliance report"),
        ("heading", f"Verdict: {str(doc['verdict']).upper()}"),
    ]
    if doc.get("verdict_reason"):
        lines.append(("text", doc["verdict_reason"]))
    lines += [
        *_pairs(summary_fields(doc)),
        ("heading", "Policy rules, with the controls" if doc.get("controls") is not None else "Policy rules"),
        *_rule_lines(doc),
    ]
    if doc.get("recovery"):  # version 3 with recovery audits only
        lines.append(("heading", "Recovery audits: does the forgetting survive?"))
        lines += [("text", line) for line in recovery_lines(doc)]
        lines.append(("text", doc["recovery"]["survival_definition"]))
        for _, model in in_role_order(doc["recovery"]["models"], tuple(RECOVERY_MODELS)):
            lines.append(("text", ""))
            lines.append(("text", model["label"]))
            lines += [("text", " | ".join(cells)) for cells in recovery_table(model)]
    lines.append(("heading", "Inputs (SHA-256)"))
    for name in ("dataset", "model", "forget_set", "output_model"):
        item = doc["inputs"].get(name)
        if item is None:
            lines.append(("text", f"{name}: -"))
            continue
        details = {k: v for k, v in item.items() if k != "sha256"}
        lines.append(("text", f"{name}: {item['sha256']} {_value(details)}"))
    for role, job in in_role_order(doc["jobs"], ROLES):
        lines.append(("heading", f"Job: {role}"))
        lines += _pairs(job_fields(job))
        lines.append(("text", f"{'metric':<34}{'value':>14}{'CI low':>14}{'CI high':>14}"))
        for metric, entry in job["metrics"].items():
            cells = "".join(f"{metric_text(metric, entry[k]):>14}" for k in _STATISTICS)
            lines.append(("text", f"{metric[:33]:<34}{cells}"))
    lines.append(("text", ""))
    lines.append(("text", "Numbers are rounded; the exact values are in the signed JSON."))
    return lines


def _wrapped(lines: list[tuple[str, str]]) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    for style, text in lines:
        if style == "heading" or (out and out[-1][0] == "title"):
            out.append(("text", ""))  # the larger fonts need a line of room
        if style == "text" and len(text) > WRAP_COLUMNS:
            parts = textwrap.wrap(text, WRAP_COLUMNS, subsequent_indent="    ", break_on_hyphens=False)
            out += [(style, part) for part in parts]
        else:
            out.append((style, text))
    return out


def render_pdf(canonical: bytes) -> bytes:
    """The report's PDF: A4 pages of its content, a footer naming the signed JSON's SHA-256."""
    doc = json.loads(canonical)
    digest = hashlib.sha256(canonical).hexdigest()
    lines = _wrapped(report_lines(doc))
    pages = [lines[start : start + LINES_PER_PAGE] for start in range(0, len(lines), LINES_PER_PAGE)]
    footer = (
        f"Signed JSON (GET /v1/reports/<id>): SHA-256 {digest}. Verify with `lethe verify-report FILE`; "
        "this PDF is a rendering, not the signed record."
    )
    buffer = io.BytesIO()
    metadata = {
        "Title": f"Lethe compliance report {doc['deletion_request']['id']}",
        "Subject": f"verdict {doc['verdict']}; signed JSON sha256 {digest}",
        "Creator": "Lethe",
        "CreationDate": None,
    }
    with (
        render_lock(),
        matplotlib.rc_context({"pdf.fonttype": 42, "font.family": "monospace"}),
        PdfPages(buffer, metadata=metadata) as pdf,
    ):
        for number, page in enumerate(pages, start=1):
            figure = Figure(figsize=A4_INCHES)
            for row, (kind, text) in enumerate(page):
                figure.text(LEFT, TOP - row * LINE_HEIGHT, text, va="top", ha="left", **STYLES[kind])
            figure.text(LEFT, 0.03, footer, fontsize=5.6, va="bottom", ha="left", wrap=True)
            figure.text(1 - LEFT, 0.015, f"{number} / {len(pages)}", fontsize=6, ha="right", va="bottom")
            pdf.savefig(figure)
    return buffer.getvalue()
