"""Plots as PNG or SVG (matplotlib, Agg backend; torch-free), for dashboards and reports to embed.

Each ``*_figure`` function takes plain data and returns a matplotlib Figure; :func:`render` turns it into
bytes. SVGs are reproducible (fixed hash salt, no date); PNGs carry no timestamp either.
"""

from __future__ import annotations

import io
import itertools
import math
import textwrap
import threading
from collections.abc import Iterator
from typing import Any, Literal

import matplotlib

matplotlib.use("Agg")  # before pyplot is imported anywhere in this process; the API has no display

from matplotlib.backends.backend_agg import FigureCanvasAgg
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


# Every ROC curve gets its own (colour, line style) pair: colour cycles fastest, the style changes every
# ten curves, so 40 curves stay distinguishable. tab10 without its grey, which the chance line uses.
ROC_COLOURS = (
    "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd",
    "#8c564b", "#e377c2", "#bcbd22", "#17becf", "#000000",
)  # fmt: skip
ROC_LINESTYLES = ("-", "--", "-.", ":")
CHANCE_COLOUR = "grey"
AUC_BELOW_CHANCE_NOTE = (
    "* AUC below 0.5: the attack scores non-members above members, worse than a coin flip. Flipping its"
    " decision would reach 1 - AUC; on a forget set it usually means the model is less confident on the"
    " forgotten samples than on unseen ones (over-forgetting), itself a membership signal."
)


def roc_style(index: int) -> tuple[str, str]:
    """The (colour, line style) of the index-th curve; distinct for the first 40."""
    return ROC_COLOURS[index % len(ROC_COLOURS)], ROC_LINESTYLES[(index // len(ROC_COLOURS)) % 4]


def curve_auc(fpr: list[float], tpr: list[float]) -> float | None:
    """Area under the plotted curve (trapezoids on linear axes, closed at (0, 0) and (1, 1))."""
    points = sorted(
        (float(f), float(t))
        for f, t in zip(fpr, tpr, strict=False)
        if f is not None and t is not None and math.isfinite(float(f)) and math.isfinite(float(t))
    )
    if not points:
        return None
    points = [(0.0, 0.0), *points, (1.0, 1.0)]
    return sum((x1 - x0) * (y0 + y1) / 2 for (x0, y0), (x1, y1) in itertools.pairwise(points))


def roc_figure(title: str, curves: list[tuple[str, list[float], list[float]]]) -> Figure:
    """Log-log ROC (Privacy Meter's convention: what matters is the TPR at low FPR) with the chance line.

    The legend sits outside the axes (it hid the low-FPR corner, the part that matters) and names each
    curve's AUC; a caption explains an AUC below 0.5."""
    drawn = [
        (
            label,
            [(f, t) for f, t in zip(fpr, tpr, strict=False) if f is not None and t is not None and f > 0],
            auc,
        )
        for label, fpr, tpr in curves
        for auc in [curve_auc(fpr, tpr)]
    ]
    drawn = [entry for entry in drawn if entry[1]]
    below = any(auc is not None and auc < 0.5 for _, _, auc in drawn)
    figure = _figure(width=9.0, height=max(4.5, 0.2 * len(drawn) + 1.5))
    axes = figure.subplots()
    floor = 1.0
    for index, (label, points, auc) in enumerate(drawn):
        xs, ys = zip(*points, strict=True)
        floor = min(floor, min(xs))
        colour, linestyle = roc_style(index)
        mark = "*" if auc is not None and auc < 0.5 else ""
        name = f"{label} (AUC {auc:.3f}{mark})" if auc is not None else label
        axes.step(
            xs,
            [max(y, 1e-6) for y in ys],
            where="post",
            label=name,
            linewidth=1.3,
            color=colour,
            linestyle=linestyle,
        )
    floor = max(floor, 1e-6)
    axes.plot(
        [floor, 1.0], [floor, 1.0], linestyle=(0, (1, 2)), color=CHANCE_COLOUR, linewidth=1.0, label="chance"
    )
    axes.set_xscale("log")
    axes.set_yscale("log")
    axes.set_xlim(floor, 1.0)
    axes.set_ylim(floor, 1.05)
    axes.set_xlabel("False positive rate")
    axes.set_ylabel("True positive rate")
    axes.set_title(title)
    axes.grid(True, which="both", alpha=0.3)
    axes.legend(fontsize="x-small", loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0)
    if below:
        # As the figure's x label, the constrained layout makes room for it under the axes.
        figure.supxlabel(textwrap.fill(AUC_BELOW_CHANCE_NOTE, 130), fontsize="x-small", ha="left", x=0.01)
    return figure


# Each method keeps one marker and colour across seeds; the oracle and the original stand out.
TRADEOFF_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "<", ">", "h", "p", "8")
TRADEOFF_FIXED = {"retrain": ("*", "#000000", 220), "original": ("s", "#7f7f7f", 90)}
# Candidate label offsets (points) around a marker, nearest first; the first that overlaps nothing wins.
_LABEL_OFFSETS = [
    (dx * r, dy * r)
    for r in (6, 14, 24, 36, 50)
    for dx, dy in ((1, 1), (1, -1), (-1, 1), (-1, -1), (1, 0), (-1, 0), (0, 1), (0, -1))
]


def _spread_coincident(
    points: list[dict[str, Any]], span_x: float, span_y: float
) -> list[tuple[float, float]]:
    """Points within 1 % of the axis span of each other are fanned out on a small circle (deterministic),
    so that seeds with identical metrics stay visible; the true values stay in the labels."""
    groups: list[list[int]] = []
    for index, point in enumerate(points):
        for group in groups:
            first = points[group[0]]
            if (
                abs(first["UA"] - point["UA"]) <= 0.01 * span_x
                and abs(first["RA"] - point["RA"]) <= 0.01 * span_y
            ):
                group.append(index)
                break
        else:
            groups.append([index])
    positions: dict[int, tuple[float, float]] = {}
    for group in groups:
        for rank, index in enumerate(group):
            x, y = float(points[index]["UA"]), float(points[index]["RA"])
            if len(group) > 1:
                angle = 2 * math.pi * rank / len(group)
                x += 0.012 * span_x * math.cos(angle)
                y += 0.012 * span_y * math.sin(angle)
            positions[index] = (x, y)
    return [positions[i] for i in range(len(points))]


def _place_labels(
    figure: Figure, axes: Any, annotations: list[Any], markers: list[tuple[float, float]]
) -> None:
    """Greedy: move each label to the nearest candidate offset whose box overlaps no placed label, no
    marker and stays inside the axes; with no free spot, the least crowded one (with a leader line)."""
    canvas = FigureCanvasAgg(figure)  # a bare Figure has no renderer to measure text with
    canvas.draw()  # lay out first: the boxes are measured in the final display coordinates
    renderer = canvas.get_renderer()
    frame = axes.get_window_extent(renderer)
    dots = [axes.transData.transform(m) for m in markers]
    taken: list[Any] = []
    for annotation in annotations:
        best, best_score = None, None
        for offset in _LABEL_OFFSETS:
            annotation.set_position(offset)
            annotation.set_horizontalalignment("left" if offset[0] >= 0 else "right")
            annotation.set_verticalalignment(
                "bottom" if offset[1] > 0 else "top" if offset[1] < 0 else "center"
            )
            box = annotation.get_window_extent(renderer).expanded(1.05, 1.1)
            score = sum(box.overlaps(other) for other in taken)
            score += sum(box.x0 - 2 <= x <= box.x1 + 2 and box.y0 - 2 <= y <= box.y1 + 2 for x, y in dots)
            score += 0 if frame.contains(box.x0, box.y0) and frame.contains(box.x1, box.y1) else 1
            if best_score is None or score < best_score:
                best, best_score = offset, score
            if score == 0:
                break
        assert best is not None
        annotation.set_position(best)
        annotation.set_horizontalalignment("left" if best[0] >= 0 else "right")
        annotation.set_verticalalignment("bottom" if best[1] > 0 else "top" if best[1] < 0 else "center")
        if abs(best[0]) > 10 or abs(best[1]) > 10:
            annotation.arrow_patch = None
            annotation.set_arrowprops({"arrowstyle": "-", "color": "#999999", "linewidth": 0.6, "shrinkB": 3})
        taken.append(annotation.get_window_extent(renderer).expanded(1.05, 1.1))


def tradeoff_figure(
    title: str,
    points: list[dict[str, Any]],
    *,
    x_label: str = "UA (unlearning accuracy, %)",
    y_label: str = "RA (remaining accuracy, %)",
) -> Figure:
    """UA (x) against RA (y) per comparison row (points' ``UA`` / ``RA``, ``group``: the method, or
    "retrain" / "original"); the retrain oracle is the target. Labels are placed so they do not overprint
    each other or the markers; coincident markers (seeds with the same metrics) are fanned out and drawn
    translucent; a legend keys marker to method."""
    figure = _figure(width=8.0, height=5.0)
    axes = figure.subplots()
    xs = [float(p["UA"]) for p in points]
    ys = [float(p["RA"]) for p in points]
    span_x = (max(xs) - min(xs)) or max(abs(xs[0]), 1.0)
    span_y = (max(ys) - min(ys)) or max(abs(ys[0]), 1.0)
    positions = _spread_coincident(points, span_x, span_y)
    groups: dict[str, tuple[str, str, float]] = {}
    annotations = []
    for point, (x, y) in zip(points, positions, strict=True):
        group = str(point.get("group") or point["label"])
        if group not in groups:
            fixed = TRADEOFF_FIXED.get(group)
            if fixed is not None:
                groups[group] = fixed
            else:
                n = sum(1 for g in groups if g not in TRADEOFF_FIXED)
                colour, _ = roc_style(n)
                groups[group] = (TRADEOFF_MARKERS[n % len(TRADEOFF_MARKERS)], colour, 60)
        marker, colour, size = groups[group]
        axes.scatter(
            [x], [y], marker=marker, s=size, color=colour, alpha=0.7, edgecolors="white", linewidths=0.6
        )
        annotations.append(
            axes.annotate(
                point["label"], (x, y), fontsize="x-small", xytext=(6, 6), textcoords="offset points"
            )
        )
    for group, (marker, colour, _) in groups.items():
        axes.scatter([], [], marker=marker, color=colour, alpha=0.7, label=group)
    pad_x, pad_y = 0.12 * span_x, 0.12 * span_y
    axes.set_xlim(min(xs) - pad_x, max(xs) + pad_x)
    axes.set_ylim(min(ys) - pad_y, max(ys) + pad_y)
    axes.set_xlabel(x_label)
    axes.set_ylabel(y_label)
    axes.set_title(title)
    axes.grid(True, alpha=0.3)
    axes.legend(fontsize="x-small", loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0)
    for annotation in annotations:
        annotation.set_in_layout(False)  # labels must not move the axes after they are placed
    with _LOCK:
        _place_labels(figure, axes, annotations, positions)
    figure.set_layout_engine("none")  # freeze the layout the labels were placed in
    return figure


def per_class_figure(title: str, before: dict[str, Any] | None, after: dict[str, Any]) -> Figure:
    """Per-class accuracy before (the original) and after (this job), one panel per split present.

    The y-scale is taken from both series: a successful forget drives "after" to 0 on the forget split,
    and a scale read from it alone used to cut the "before" bars off."""
    splits = [s for s in ("forget", "retain", "test", "train") if isinstance(after.get(s), list)][:3]
    figure = _figure(width=max(6.0, 3.2 * len(splits)), height=4.0)
    axes_list = figure.subplots(1, len(splits), squeeze=False)[0]
    for axes, split in zip(axes_list, splits, strict=True):
        values = after[split]
        classes = list(range(len(values)))
        width = 0.4 if before else 0.8
        old = (before or {}).get(split) if before else None
        shown = list(values)
        if isinstance(old, list):
            axes.bar([c - width / 2 for c in classes], [_nan(v) for v in old], width, label="before")
            axes.bar([c + width / 2 for c in classes], [_nan(v) for v in values], width, label="after")
            shown += old
        else:
            axes.bar(classes, [_nan(v) for v in values], width, label="after")
        axes.set_title(split)
        axes.set_xlabel("class")
        axes.set_xticks(classes)
        top = _scale(shown)
        full = 100.0 if top > 1.5 else 1.0  # percentages or fractions, whichever the data are in
        axes.set_ylim(0, max(full, top) * 1.05)
    axes_list[0].set_ylabel("accuracy")
    figure.suptitle(title)
    handles, labels = axes_list[0].get_legend_handles_labels()
    if len(handles) > 1:  # one legend above the panels: inside an axes it covered the tallest bars
        figure.legend(handles, labels, loc="outside upper right", ncols=2, fontsize="x-small")
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
