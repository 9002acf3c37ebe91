"""Plots as PNG or SVG (matplotlib, Agg backend; torch-free), for dashboards and reports to embed.

Each ``*_figure`` function takes plain data and returns a matplotlib Figure; :func:`render` turns it into
bytes. SVGs are reproducible (fixed hash salt, no date); PNGs carry no timestamp either.
"""

from __future__ import annotations

import io
import math
import threading
from collections.abc import Iterator
from typing import Any, Literal

import matplotlib

matplotlib.use("Agg")  # before pyplot is imported anywhere in this process; the API has no display

from matplotlib.figure import Figure

Format = Literal["png", "svg"]
MEDIA_TYPES = {"png": "image/png", "svg": "image/svg+xml"}
DPI = 110
# matplotlib's global state (rcParams, font cache) is not thread-safe; FastAPI runs sync routes in a pool.
_LOCK = threading.Lock()


def render_lock() -> threading.Lock:
    """The lock every matplotlib rendering in this process holds (plots, report PDFs)."""
    return _LOCK


def render(figure: Figure, fmt: Format) -> bytes:
    buffer = io.BytesIO()
    with _LOCK, matplotlib.rc_context({"svg.hashsalt": "lethe", "svg.fonttype": "none"}):
        if fmt == "svg":
            figure.savefig(buffer, format="svg", metadata={"Date": None}, bbox_inches="tight")
        else:
            figure.savefig(buffer, format="png", dpi=DPI, metadata={"Software": None}, bbox_inches="tight")
    return buffer.getvalue()


def _figure(width: float = 6.0, height: float = 4.5) -> Figure:
    return Figure(figsize=(width, height), layout="constrained")


def roc_curves(result: dict[str, Any] | None) -> Iterator[tuple[str, list[float], list[float]]]:
    """Every attack report with a ROC in a job's result: audits' ``attacks.<name>`` and the population
    attacks ``attacks.population[.attacks].<score>.<attacker>``, as (label, fpr, tpr)."""
    attacks = (result or {}).get("attacks")
    if not isinstance(attacks, dict):
        return

    def walk(node: Any, path: list[str]) -> Iterator[tuple[str, list[float], list[float]]]:
        if not isinstance(node, dict):
            return
        roc = node.get("roc")
        if isinstance(roc, dict) and isinstance(roc.get("fpr"), list) and isinstance(roc.get("tpr"), list):
            labels = [p for p in path if p != "attacks"]
            yield " / ".join(labels) or "attack", roc["fpr"], roc["tpr"]
            return
        for key in sorted(node):
            if key != "config":
                yield from walk(node[key], [*path, str(key)])

    yield from walk(attacks, [])


def roc_figure(title: str, curves: list[tuple[str, list[float], list[float]]]) -> Figure:
    """Log-log ROC (Privacy Meter's convention: what matters is the TPR at low FPR) with the chance line."""
    figure = _figure()
    axes = figure.subplots()
    floor = 1.0
    for label, fpr, tpr in curves:
        points = [(f, t) for f, t in zip(fpr, tpr, strict=False) if f is not None and t is not None and f > 0]
        if not points:
            continue
        xs, ys = zip(*points, strict=True)
        floor = min(floor, min(xs))
        axes.step(xs, [max(y, 1e-6) for y in ys], where="post", label=label, linewidth=1.2)
    floor = max(floor, 1e-6)
    axes.plot([floor, 1.0], [floor, 1.0], linestyle="--", color="grey", linewidth=0.8, label="chance")
    axes.set_xscale("log")
    axes.set_yscale("log")
    axes.set_xlim(floor, 1.0)
    axes.set_ylim(floor, 1.05)
    axes.set_xlabel("False positive rate")
    axes.set_ylabel("True positive rate")
    axes.set_title(title)
    axes.grid(True, which="both", alpha=0.3)
    axes.legend(fontsize="x-small", loc="lower right")
    return figure


def tradeoff_figure(
    title: str,
    points: list[dict[str, Any]],
    *,
    x_label: str = "UA (unlearning accuracy, %)",
    y_label: str = "RA (remaining accuracy, %)",
) -> Figure:
    """UA (x) against RA (y) per comparison row (points' ``UA`` / ``RA``); the retrain oracle is the
    target."""
    figure = _figure()
    axes = figure.subplots()
    markers = {"retrain": ("*", 180), "evaluate": ("s", 60), "unlearn": ("o", 50)}
    for point in points:
        marker, size = markers.get(point["kind"], ("o", 50))
        axes.scatter([point["UA"]], [point["RA"]], marker=marker, s=size, label=point["label"])
        axes.annotate(
            point["label"],
            (point["UA"], point["RA"]),
            fontsize="x-small",
            xytext=(4, 4),
            textcoords="offset points",
        )
    axes.set_xlabel(x_label)
    axes.set_ylabel(y_label)
    axes.set_title(title)
    axes.grid(True, alpha=0.3)
    return figure


def per_class_figure(title: str, before: dict[str, Any] | None, after: dict[str, Any]) -> Figure:
    """Per-class accuracy before (the original) and after (this job), one panel per split present."""
    splits = [s for s in ("forget", "retain", "test", "train") if isinstance(after.get(s), list)][:3]
    figure = _figure(width=max(6.0, 3.2 * len(splits)), height=4.0)
    axes_list = figure.subplots(1, len(splits), squeeze=False)[0]
    for axes, split in zip(axes_list, splits, strict=True):
        values = after[split]
        classes = list(range(len(values)))
        width = 0.4 if before else 0.8
        old = (before or {}).get(split) if before else None
        if isinstance(old, list):
            axes.bar([c - width / 2 for c in classes], [_nan(v) for v in old], width, label="before")
            axes.bar([c + width / 2 for c in classes], [_nan(v) for v in values], width, label="after")
            axes.legend(fontsize="x-small")
        else:
            axes.bar(classes, [_nan(v) for v in values], width, label="after")
        axes.set_title(split)
        axes.set_xlabel("class")
        axes.set_xticks(classes)
        axes.set_ylim(0, 105 if _scale(values) > 1.5 else 1.05)
    axes_list[0].set_ylabel("accuracy")
    figure.suptitle(title)
    return figure


def _nan(value: Any) -> float:
    return float("nan") if value is None else float(value)


def _scale(values: list[Any]) -> float:
    finite = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    return max(finite) if finite else 1.0


def history_figure(title: str, history: list[dict[str, Any]]) -> Figure:
    """Every numeric series of the method's per-epoch history (loss, accuracy, lr, ...) against the epoch."""
    keys = sorted(
        {k for record in history for k, v in record.items() if isinstance(v, int | float) and k != "epoch"}
    )
    figure = _figure(width=6.0, height=max(2.6, 1.9 * len(keys)))
    axes_list = figure.subplots(len(keys), 1, squeeze=False, sharex=True)[:, 0]
    xs = [record.get("epoch", index + 1) for index, record in enumerate(history)]
    for axes, key in zip(axes_list, keys, strict=True):
        pairs = [
            (x, r.get(key)) for x, r in zip(xs, history, strict=True) if isinstance(r.get(key), int | float)
        ]
        axes.plot([p[0] for p in pairs], [p[1] for p in pairs], marker="o", markersize=2.5, linewidth=1.2)
        axes.set_ylabel(key, fontsize="small")
        axes.grid(True, alpha=0.3)
    axes_list[-1].set_xlabel("epoch")
    figure.suptitle(title)
    return figure


def scores_figure(title: str, scores: list[float], selected: int | None) -> Figure:
    """Histogram of a searched forget set's difficulty scores (the search's final continuous weights)."""
    figure = _figure()
    axes = figure.subplots()
    finite = [s for s in scores if s is not None and math.isfinite(s)]
    axes.hist(finite, bins=min(50, max(5, int(math.sqrt(len(finite) or 1)))), color="#4c72b0")
    if selected and finite and selected <= len(finite):
        threshold = sorted(finite, reverse=True)[selected - 1]
        axes.axvline(threshold, color="#c44e52", linestyle="--", label=f"top {selected} selected")
        axes.legend(fontsize="small")
    axes.set_yscale("log")
    axes.set_xlabel("difficulty score")
    axes.set_ylabel("items")
    axes.set_title(title)
    return figure


def recovery_figure(title: str, recovery: dict[str, Any]) -> Figure:
    """A recovery audit's relearning curves, one panel per source: the audited model and its retrain control
    against the optimiser steps, with the original's level and the recovery threshold."""
    sources = {name: row for name, row in (recovery.get("relearning") or {}).items() if isinstance(row, dict)}
    metric = str(recovery.get("metric", "forget metric"))
    figure = _figure(width=max(6.0, 3.4 * len(sources)), height=4.0)
    axes_list = figure.subplots(1, len(sources), squeeze=False, sharey=True)[0]
    for axes, (name, row) in zip(axes_list, sorted(sources.items()), strict=True):
        # Step 0 on a log axis: plot against steps + 1 and label the ticks with the real counts.
        xs = [step + 1 for step in row.get("steps", [])]
        axes.plot(xs, [_nan(v) for v in row.get("unlearned", [])], marker="o", markersize=3, label="audited")
        axes.plot(xs, [_nan(v) for v in row.get("retrain", [])], marker="s", markersize=3, label="retrain")
        if row.get("original_held_out") is not None:
            axes.axhline(float(row["original_held_out"]), color="grey", linestyle=":", label="original")
        if row.get("threshold") is not None:
            threshold = float(row["threshold"])
            axes.axhline(threshold, color="#c44e52", linestyle="--", linewidth=0.8, label="recovered")
        axes.set_xscale("log")
        axes.set_xticks(xs, [str(x - 1) for x in xs], fontsize="x-small")
        axes.set_xlabel("relearning steps")
        ratio = (row.get("steps_ratio") or {}).get("value")
        subtitle = f"{name}" + (f"\nsteps ratio {ratio:.2g}" if isinstance(ratio, int | float) else "")
        axes.set_title(subtitle, fontsize="small")
        axes.grid(True, alpha=0.3)
    axes_list[0].set_ylabel(f"{metric} (held-out forget set)")
    axes_list[0].legend(fontsize="x-small")
    figure.suptitle(title)
    return figure
