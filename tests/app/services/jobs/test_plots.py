"""The plots' fixed cases, checked on the Figure objects after layout: the per-class axis covers every
"before" bar, every ROC curve has its own (colour, line style), the legend is outside the axes and an AUC
below 0.5 is explained, trade-off labels do not overprint and coincident markers stay visible."""

from __future__ import annotations

import itertools

import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.collections import PathCollection
from matplotlib.figure import Figure
from matplotlib.text import Annotation

from app.services.jobs import plots


def _drawn(figure: Figure) -> Figure:
    FigureCanvasAgg(figure).draw()  # the layout as it is rendered
    return figure


@pytest.mark.parametrize(
    ("before", "after"),
    [
        (
            {"forget": [97.0, 99.0, 95.0], "test": [90.0, 91.0, 88.0]},
            {"forget": [0.0, 0.0, 0.4], "test": [89.0, 90.0, 87.0]},
        ),
        ({"forget": [0.97, 0.99, 0.95]}, {"forget": [0.0, 0.0, 0.004]}),
    ],
)
def test_per_class_axis_covers_the_before_bars_when_forgetting_succeeds(before, after) -> None:
    figure = _drawn(plots.per_class_figure("t", before, after))
    for axes in figure.axes:
        top = axes.get_ylim()[1]
        heights = [patch.get_height() for patch in axes.patches]
        assert heights and max(heights) <= top, (axes.get_title(), heights, top)
        assert max(heights) >= 0.9 * top / 1.05  # and not a scale far beyond the data
    renderer = figure.canvas.get_renderer()
    (legend,) = figure.legends  # one, above the panels: inside an axes it covered the tallest bars
    assert not any(
        legend.get_window_extent(renderer).overlaps(a.get_window_extent(renderer)) for a in figure.axes
    )


def _curves(n: int, below: set[int] = frozenset()) -> list[tuple[str, list[float], list[float]]]:
    fpr = [0.001, 0.01, 0.1, 0.5, 1.0]
    curves = []
    for i in range(n):
        tpr = [0.0005, 0.004, 0.05, 0.3, 1.0] if i in below else [min(1.0, f * (1.5 + i / 10)) for f in fpr]
        curves.append((f"attack {i}", fpr, tpr))
    return curves


def test_fifteen_roc_curves_have_distinct_colour_and_linestyle_and_the_legend_is_outside() -> None:
    figure = _drawn(plots.roc_figure("roc", _curves(15)))
    axes = figure.axes[0]
    styles = [(line.get_color(), line.get_linestyle()) for line in axes.get_lines()]
    assert len(styles) == 16  # 15 curves + chance
    assert len(set(styles)) == len(styles)
    renderer = figure.canvas.get_renderer()
    legend = axes.get_legend().get_window_extent(renderer)
    frame = axes.get_window_extent(renderer)
    assert legend.x0 >= frame.x1  # entirely to the right of the data
    assert all(text.get_text() for text in axes.get_legend().get_texts())
    assert "below 0.5" not in (figure._supxlabel.get_text() if figure._supxlabel else "")


def test_an_auc_below_chance_is_marked_and_explained() -> None:
    figure = _drawn(plots.roc_figure("roc", _curves(3, below={1})))
    labels = [text.get_text() for text in figure.axes[0].get_legend().get_texts()]
    assert labels[1].startswith("attack 1 (AUC 0.") and labels[1].endswith("*)"), labels
    assert not labels[0].endswith("*)")
    assert plots.curve_auc([0.0, 1.0], [1.0, 1.0]) == pytest.approx(1.0)
    assert plots.curve_auc(*_curves(2, below={1})[1][1:]) < 0.5
    note = figure._supxlabel
    assert note is not None and "AUC below 0.5" in note.get_text()
    renderer = figure.canvas.get_renderer()
    assert note.get_window_extent(renderer).y1 <= figure.axes[0].get_window_extent(renderer).y0


def test_roc_styles_stay_distinct_for_forty_curves() -> None:
    assert len({plots.roc_style(i) for i in range(40)}) == 40


def _points() -> list[dict]:
    rows = [
        ("retrain", "retrain", 10.0, 95.0),
        ("original", "evaluate", 0.5, 99.0),
        ("ft", "unlearn", 3.0, 97.0),
        ("ft", "unlearn", 3.0, 97.0),  # seeds with identical metrics
        ("ft", "unlearn", 3.0, 97.0),
        ("l1_sparse", "unlearn", 3.1, 96.9),  # nearly the same spot
        ("salun", "unlearn", 9.5, 94.6),
        ("bad_teacher", "unlearn", 10.2, 95.1),
        ("blindspot", "unlearn", 10.1, 94.9),
        ("rl", "unlearn", 40.0, 80.0),
    ]
    return [
        {"kind": kind, "label": f"{m} s{i}", "group": m, "UA": x, "RA": y}
        for i, (m, kind, x, y) in enumerate(rows)
    ]


def test_tradeoff_labels_do_not_overlap_and_coincident_markers_stay_visible() -> None:
    figure = _drawn(plots.tradeoff_figure("t", _points()))
    axes = figure.axes[0]
    renderer = figure.canvas.get_renderer()
    labels = [child for child in axes.get_children() if isinstance(child, Annotation)]
    assert len(labels) == 10
    boxes = [label.get_window_extent(renderer) for label in labels]
    for (i, a), (j, b) in itertools.combinations(enumerate(boxes), 2):
        assert not a.overlaps(b), (labels[i].get_text(), labels[j].get_text())
    markers = [c for c in axes.collections if isinstance(c, PathCollection) and len(c.get_offsets())]
    assert all(c.get_alpha() is not None and c.get_alpha() < 1 for c in markers)
    spots = {tuple(round(v, 6) for v in c.get_offsets()[0]) for c in markers}
    assert len(spots) == 10  # the three identical seeds are fanned out
    legend = [t.get_text() for t in axes.get_legend().get_texts()]
    assert legend[:3] == ["retrain", "original", "ft"] and len(legend) == len(set(legend)) == 8
    assert plots.render(figure, "png").startswith(b"\x89PNG")
