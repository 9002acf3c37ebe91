// Charts drawn as inline SVG: line charts (linear or log axes), scatter plots and grouped bars. Legend
// entries toggle their series; line and scatter charts show the nearest point's values under the pointer
// and zoom into a dragged rectangle (double click or "Reset zoom" to go back).
// Every chart is an <svg data-chart="..."> with one <path class="series ..."> per line series, so that
// tests and other tools can find it.

import { fmt, h, s } from "./dom.js";

const PALETTE = ["#2563eb", "#dc2626", "#16a34a", "#9333ea", "#ea580c", "#0891b2", "#ca8a04", "#db2777",
  "#4b5563", "#65a30d"];
const MARGIN = { top: 28, right: 16, bottom: 46, left: 60 };
let clipCount = 0;

export function color(index) {
  return PALETTE[index % PALETTE.length];
}

function niceStep(span, count) {
  const raw = span / Math.max(count, 1);
  const power = 10 ** Math.floor(Math.log10(raw));
  const unit = raw / power;
  return (unit < 1.5 ? 1 : unit < 3 ? 2 : unit < 7 ? 5 : 10) * power;
}

function linearTicks(lo, hi, count = 5) {
  if (lo === hi) return [lo];
  const step = niceStep(hi - lo, count);
  const ticks = [];
  for (let v = Math.ceil(lo / step) * step; v <= hi + step * 1e-9; v += step) ticks.push(Number(v.toPrecision(12)));
  return ticks;
}

function logTicks(lo, hi) {
  const ticks = [];
  for (let e = Math.ceil(Math.log10(lo) - 1e-9); e <= Math.floor(Math.log10(hi) + 1e-9); e += 1) ticks.push(10 ** e);
  return ticks;
}

function tickLabel(value, log, step) {
  if (log) {
    const e = Math.round(Math.log10(value));
    return e >= -2 && e <= 3 ? String(value >= 1 ? Math.round(value) : Number(value.toPrecision(1))) : `1e${e}`;
  }
  const digits = step ? Math.max(0, Math.min(8, -Math.floor(Math.log10(step) + 1e-9))) : 2;
  return value.toFixed(digits);
}

function stepOf(ticks) {
  return ticks.length > 1 ? ticks[1] - ticks[0] : 0;
}

/** An axis description: {lo, hi, log} → scale(value) → pixels in [a, b]. */
function makeScale({ lo, hi, log }, a, b) {
  if (log) {
    const l0 = Math.log10(lo);
    const l1 = Math.log10(hi);
    const scale = (v) => a + ((Math.log10(Math.max(v, lo)) - l0) / (l1 - l0 || 1)) * (b - a);
    scale.invert = (px) => 10 ** (l0 + ((px - a) / (b - a || 1)) * (l1 - l0));
    return scale;
  }
  const scale = (v) => a + ((v - lo) / (hi - lo || 1)) * (b - a);
  scale.invert = (px) => lo + ((px - a) / (b - a || 1)) * (hi - lo);
  return scale;
}

function extent(values, log, pad = 0.05) {
  const finite = values.filter((v) => Number.isFinite(v) && (!log || v > 0));
  if (!finite.length) return log ? { lo: 1e-3, hi: 1, log } : { lo: 0, hi: 1, log };
  let lo = Math.min(...finite);
  let hi = Math.max(...finite);
  if (log) {
    lo = 10 ** Math.floor(Math.log10(lo));
    hi = 10 ** Math.ceil(Math.log10(hi));
    if (lo === hi) lo = hi / 10;
    return { lo, hi, log };
  }
  if (lo === hi) {
    lo -= Math.abs(lo) * 0.1 || 1;
    hi += Math.abs(hi) * 0.1 || 1;
  }
  const span = hi - lo;
  return { lo: lo - span * pad, hi: hi + span * pad, log };
}

function frame({ kind, title, width, height, xAxis, yAxis, xLabel, yLabel }) {
  const svg = s("svg", {
    class: `chart chart-${kind}`,
    "data-chart": kind,
    viewBox: `0 0 ${width} ${height}`,
    width,
    height,
    role: "img",
    "aria-label": title,
  });
  svg.append(s("title", {}, title));
  // Marks outside a zoomed-in domain are clipped to the plot area.
  clipCount += 1;
  const clip = `chart-clip-${clipCount}`;
  svg.append(s("defs", {}, s("clipPath", { id: clip }, s("rect", { x: MARGIN.left, y: MARGIN.top,
    width: width - MARGIN.left - MARGIN.right, height: height - MARGIN.top - MARGIN.bottom }))));
  const x = makeScale(xAxis, MARGIN.left, width - MARGIN.right);
  const y = makeScale(yAxis, height - MARGIN.bottom, MARGIN.top);
  const grid = s("g", { class: "grid" });
  const xTicks = xAxis.log ? logTicks(xAxis.lo, xAxis.hi) : linearTicks(xAxis.lo, xAxis.hi);
  const yTicks = yAxis.log ? logTicks(yAxis.lo, yAxis.hi) : linearTicks(yAxis.lo, yAxis.hi);
  for (const t of xTicks) {
    grid.append(s("line", { x1: x(t), x2: x(t), y1: MARGIN.top, y2: height - MARGIN.bottom }));
    grid.append(s("text", { x: x(t), y: height - MARGIN.bottom + 16, "text-anchor": "middle", class: "tick" },
      tickLabel(t, xAxis.log, stepOf(xTicks))));
  }
  for (const t of yTicks) {
    grid.append(s("line", { x1: MARGIN.left, x2: width - MARGIN.right, y1: y(t), y2: y(t) }));
    grid.append(s("text", { x: MARGIN.left - 6, y: y(t) + 4, "text-anchor": "end", class: "tick" },
      tickLabel(t, yAxis.log, stepOf(yTicks))));
  }
  svg.append(grid);
  svg.append(s("rect", {
    class: "plot-area", x: MARGIN.left, y: MARGIN.top,
    width: width - MARGIN.left - MARGIN.right, height: height - MARGIN.top - MARGIN.bottom,
  }));
  svg.append(s("text", { x: width / 2, y: 16, "text-anchor": "middle", class: "chart-title" }, title));
  svg.append(s("text", { x: (MARGIN.left + width - MARGIN.right) / 2, y: height - 8, "text-anchor": "middle",
    class: "axis-label" }, xLabel));
  svg.append(s("text", { x: 14, y: (MARGIN.top + height - MARGIN.bottom) / 2, "text-anchor": "middle",
    class: "axis-label", transform: `rotate(-90 14 ${(MARGIN.top + height - MARGIN.bottom) / 2})` }, yLabel));
  return { svg, x, y, clip: `url(#${clip})` };
}

/** The legend; with ``svg``, each entry is a button that hides or shows its series' marks. */
function legend(items, svg) {
  return h("ul", { class: "legend" }, items.map((item, i) => {
    const swatch = h("span", { class: "swatch" });
    swatch.style.background = item.color || color(i);
    if (!svg) return h("li", {}, swatch, item.name);
    const button = h("button", { type: "button", class: "legend-toggle", "aria-pressed": "true",
      title: "show / hide this series", dataset: { series: item.name } }, swatch, item.name);
    button.addEventListener("click", () => {
      const shown = button.getAttribute("aria-pressed") !== "true";
      button.setAttribute("aria-pressed", String(shown));
      for (const mark of svg.querySelectorAll("[data-series]")) {
        if (mark.dataset.series === item.name) mark.classList.toggle("series-hidden", !shown);
      }
    });
    return h("li", {}, button);
  }));
}

const PLOT = (width, height) => ({ left: MARGIN.left, right: width - MARGIN.right, top: MARGIN.top,
  bottom: height - MARGIN.bottom });

/** SVG user units of a mouse event (the chart may be scaled down to fit its container). */
function svgPoint(svg, event) {
  const box = svg.getBoundingClientRect();
  const [, , vw, vh] = svg.getAttribute("viewBox").split(" ").map(Number);
  return [((event.clientX - box.left) / box.width) * vw, ((event.clientY - box.top) / box.height) * vh];
}

/**
 * Hover values and zoom on a chart with x/y scales: the nearest visible point's values follow the pointer;
 * dragging a rectangle zooms into it (``rerender(xDomain, yDomain)`` draws the chart again); a double click
 * returns to the whole chart.
 */
function interact(figure, svg, { x, y, width, height, points, rerender, zoomed }) {
  const area = PLOT(width, height);
  const readout = h("div", { class: "chart-readout", hidden: true });
  const dot = s("circle", { class: "hover-dot", r: 5, visibility: "hidden" });
  const band = s("rect", { class: "zoom-band", visibility: "hidden" });
  svg.append(dot, band);
  figure.prepend(readout);
  let start = null;
  svg.addEventListener("mousemove", (event) => {
    const [px, py] = svgPoint(svg, event);
    if (start) {
      band.setAttribute("x", Math.min(start[0], px));
      band.setAttribute("y", Math.min(start[1], py));
      band.setAttribute("width", Math.abs(px - start[0]));
      band.setAttribute("height", Math.abs(py - start[1]));
      band.setAttribute("visibility", "visible");
      return;
    }
    let best = null;
    for (const p of points) {
      if (p.el && p.el.classList.contains("series-hidden")) continue;
      const d = (x(p.x) - px) ** 2 + (y(p.y) - py) ** 2;
      if (!best || d < best.d) best = { ...p, d };
    }
    if (!best || best.d > 40 ** 2) {
      readout.hidden = true;
      dot.setAttribute("visibility", "hidden");
      return;
    }
    dot.setAttribute("cx", x(best.x));
    dot.setAttribute("cy", y(best.y));
    dot.setAttribute("visibility", "visible");
    // Marks drawn on top of each other are all named: an overlap must not hide a row.
    const same = points.filter((p) => !(p.el && p.el.classList.contains("series-hidden"))
      && Math.abs(x(p.x) - x(best.x)) < 3 && Math.abs(y(p.y) - y(best.y)) < 3);
    const names = [...new Set(same.map((p) => p.name))];
    readout.textContent = `${names.join(" = ")}: ${fmt(best.x, 4)}, ${fmt(best.y, 4)}`;
    readout.hidden = false;
  });
  svg.addEventListener("mouseleave", () => {
    readout.hidden = true;
    dot.setAttribute("visibility", "hidden");
  });
  if (!rerender) return;
  svg.classList.add("zoomable");
  svg.addEventListener("mousedown", (event) => {
    const [px, py] = svgPoint(svg, event);
    if (px < area.left || px > area.right || py < area.top || py > area.bottom) return;
    start = [px, py];
    event.preventDefault();
  });
  svg.addEventListener("mouseup", (event) => {
    if (!start) return;
    const [px, py] = svgPoint(svg, event);
    const [x0, y0] = start;
    start = null;
    band.setAttribute("visibility", "hidden");
    if (Math.abs(px - x0) < 6 || Math.abs(py - y0) < 6) return; // a click, not a drag
    const xs = [x.invert(Math.max(area.left, Math.min(x0, px))), x.invert(Math.min(area.right, Math.max(x0, px)))];
    const ys = [y.invert(Math.min(area.bottom, Math.max(y0, py))), y.invert(Math.max(area.top, Math.min(y0, py)))];
    figure.replaceWith(rerender(xs, ys));
  });
  svg.addEventListener("dblclick", () => {
    if (zoomed) figure.replaceWith(rerender(null, null));
  });
  if (zoomed) {
    figure.append(h("button", { type: "button", class: "small zoom-reset", onclick: () => figure.replaceWith(rerender(null, null)) },
      "Reset zoom"));
  }
}

function pathData(points, x, y) {
  return points.map(([px, py], i) => `${i ? "L" : "M"}${x(px).toFixed(2)},${y(py).toFixed(2)}`).join("");
}

/**
 * Line chart. series: [{name, points: [[x, y], ...], className?}]. Options: xLog, yLog, xDomain/yDomain
 * ([lo, hi]), diagonal (y = x reference line), markers (dots at each point).
 */
export function lineChart(options) {
  const { kind = "line", title, series, xLabel, yLabel, xLog = false, yLog = false, xDomain, yDomain,
    diagonal = false, markers = false, width = 520, height = 320, zoomed = false } = options;
  const keep = (p) => Number.isFinite(p[0]) && Number.isFinite(p[1]) && (!xLog || p[0] > 0) && (!yLog || p[1] > 0);
  const clean = series.map((item) => ({ ...item, points: item.points.filter(keep) })).filter((item) => item.points.length);
  const xs = clean.flatMap((item) => item.points.map((p) => p[0]));
  const ys = clean.flatMap((item) => item.points.map((p) => p[1]));
  const xAxis = xDomain ? { lo: xDomain[0], hi: xDomain[1], log: xLog } : extent(xs, xLog, 0);
  const yAxis = yDomain ? { lo: yDomain[0], hi: yDomain[1], log: yLog } : extent(ys, yLog);
  const { svg, x, y, clip } = frame({ kind, title, width, height, xAxis, yAxis, xLabel, yLabel });
  if (diagonal) {
    const lo = Math.max(xAxis.lo, yAxis.lo);
    const hi = Math.min(xAxis.hi, yAxis.hi);
    const n = 24;
    const points = [];
    for (let i = 0; i <= n; i += 1) {
      const v = xAxis.log ? 10 ** (Math.log10(lo) + ((Math.log10(hi) - Math.log10(lo)) * i) / n) : lo + ((hi - lo) * i) / n;
      points.push([v, v]);
    }
    svg.append(s("path", { class: "chance", d: pathData(points, x, y), fill: "none" }));
  }
  clean.forEach((item, i) => {
    const stroke = item.color || color(i);
    svg.append(s("path", {
      class: `series ${item.className || ""}`.trim(),
      "data-series": item.name,
      d: pathData(item.points, x, y),
      fill: "none",
      stroke,
      "clip-path": clip,
    }, s("title", {}, item.name)));
    if (markers) {
      for (const [px, py] of item.points) {
        svg.append(s("circle", { class: "marker", "data-series": item.name, cx: x(px), cy: y(py), r: 3, fill: stroke, "clip-path": clip },
          s("title", {}, `${item.name}: (${fmt(px, 3)}, ${fmt(py, 4)})`)));
      }
    }
  });
  const figure = h("figure", { class: "chart-figure" }, svg);
  if (clean.length > 1 || (clean.length === 1 && clean[0].name)) {
    figure.append(legend(clean.map((item, i) => ({ name: item.name, color: item.color || color(i) })), svg));
  }
  if (!clean.length) figure.append(h("figcaption", { class: "muted" }, "no data points yet"));
  const paths = svg.querySelectorAll("path.series");
  const points = clean.flatMap((item, i) => item.points.map(([px, py]) => ({ name: item.name, x: px, y: py, el: paths[i] })));
  const base = options.base || { x: xDomain, y: yDomain }; // the unzoomed domains (undefined: fitted)
  interact(figure, svg, { x, y, width, height, points, zoomed,
    rerender: (xs, ys) => lineChart({ ...options, xDomain: xs || base.x, yDomain: ys || base.y, base, zoomed: Boolean(xs) }) });
  return figure;
}

/** Log-log ROC curves: curves [{name, fpr: [...], tpr: [...]}]. FPR = 0 points are left out (log axis). */
export function rocChart({ title = "ROC (log-log)", curves, width = 520, height = 360 }) {
  const positive = curves.flatMap((c) => c.fpr.filter((v) => v > 0));
  const lo = positive.length ? Math.max(10 ** Math.floor(Math.log10(Math.min(...positive))), 1e-6) : 1e-3;
  const series = curves.map((c) => ({
    name: c.name,
    className: "roc-curve",
    points: c.fpr.map((f, i) => [f, c.tpr[i]]).filter(([f, t]) => f > 0 && t > 0),
  }));
  return lineChart({
    kind: "roc", title, series, xLabel: "false positive rate", yLabel: "true positive rate",
    xLog: true, yLog: true, xDomain: [lo, 1], yDomain: [lo, 1], diagonal: true, width, height,
  });
}

/**
 * Scatter plot: points [{x, y, label, group, highlight}]; one colour per group.
 */
export function scatterChart(options) {
  const { kind = "scatter", title, points, xLabel, yLabel, width = 520, height = 340, xDomain, yDomain,
    zoomed = false } = options;
  const valid = points.filter((p) => Number.isFinite(p.x) && Number.isFinite(p.y));
  const xAxis = xDomain ? { lo: xDomain[0], hi: xDomain[1], log: false } : extent(valid.map((p) => p.x), false, 0.1);
  const yAxis = yDomain ? { lo: yDomain[0], hi: yDomain[1], log: false } : extent(valid.map((p) => p.y), false, 0.1);
  const { svg, x, y } = frame({ kind, title, width, height, xAxis, yAxis, xLabel, yLabel });
  const groups = [...new Set(valid.map((p) => p.group))];
  const drawn = [];
  // Points within 4 px of each other form a cluster: its marks are drawn as nested rings (the first the
  // largest), so that none hides another, and its labels are joined into one instead of overprinting.
  const clusters = [];
  for (const p of valid) {
    const inside = p.x >= xAxis.lo && p.x <= xAxis.hi && p.y >= yAxis.lo && p.y <= yAxis.hi;
    if (!inside) continue; // zoomed out of view
    const near = clusters.find((c) => Math.abs(x(c[0].x) - x(p.x)) < 4 && Math.abs(y(c[0].y) - y(p.y)) < 4);
    if (near) near.push(p);
    else clusters.push([p]);
  }
  for (const cluster of clusters) {
    cluster.forEach((p, i) => {
      const fill = p.highlight ? "#111827" : color(groups.indexOf(p.group));
      const size = 5 + 3 * (cluster.length - 1 - i);
      const ring = cluster.length > 1 && i < cluster.length - 1;
      const attrs = ring ? { fill: "#fff", stroke: fill, "stroke-width": 2 } : { fill };
      const mark = p.highlight
        ? s("rect", { class: "point point-highlight", x: x(p.x) - size, y: y(p.y) - size, width: 2 * size, height: 2 * size, ...attrs })
        : s("circle", { class: "point", cx: x(p.x), cy: y(p.y), r: size, ...attrs });
      mark.dataset.series = p.group;
      mark.append(s("title", {}, `${p.label}: ${xLabel} ${fmt(p.x)}, ${yLabel} ${fmt(p.y)}`));
      drawn.push({ name: p.label, x: p.x, y: p.y, el: mark });
      svg.append(mark);
    });
    const head = cluster[0];
    svg.append(s("text", { class: "point-label", x: x(head.x) + 8 + 3 * (cluster.length - 1), y: y(head.y) - 6 },
      cluster.map((p) => p.label).join(" = ")));
  }
  const figure = h("figure", { class: "chart-figure" }, svg);
  const highlighted = new Set(valid.filter((p) => p.highlight).map((p) => p.group));
  figure.append(legend(groups.map((g, i) => ({ name: g, color: highlighted.has(g) ? "#111827" : color(i) })), svg));
  if (!valid.length) figure.append(h("figcaption", { class: "muted" }, "no data points yet"));
  interact(figure, svg, { x, y, width, height, zoomed,
    points: drawn,
    rerender: (xs, ys) => scatterChart({ ...options, xDomain: xs || undefined, yDomain: ys || undefined, zoomed: Boolean(xs) }) });
  return figure;
}

/** Grouped bars: categories [...], series [{name, values: [...]}] (null values leave a gap). */
export function barChart({ kind = "bars", title, categories, series, xLabel, yLabel, yDomain, width = 620,
  height = 320 }) {
  const values = series.flatMap((item) => item.values).filter((v) => Number.isFinite(v));
  const yAxis = yDomain ? { lo: yDomain[0], hi: yDomain[1], log: false } : extent([0, ...values], false, 0.05);
  const xAxis = { lo: 0, hi: categories.length, log: false };
  const svg = s("svg", {
    class: `chart chart-${kind}`, "data-chart": kind, viewBox: `0 0 ${width} ${height}`, width, height,
    role: "img", "aria-label": title,
  });
  svg.append(s("title", {}, title));
  const x = makeScale(xAxis, MARGIN.left, width - MARGIN.right);
  const y = makeScale(yAxis, height - MARGIN.bottom, MARGIN.top);
  const grid = s("g", { class: "grid" });
  const yTicks = linearTicks(yAxis.lo, yAxis.hi);
  for (const t of yTicks) {
    grid.append(s("line", { x1: MARGIN.left, x2: width - MARGIN.right, y1: y(t), y2: y(t) }));
    grid.append(s("text", { x: MARGIN.left - 6, y: y(t) + 4, "text-anchor": "end", class: "tick" },
      tickLabel(t, false, stepOf(yTicks))));
  }
  svg.append(grid);
  const slot = (x(1) - x(0)) * 0.8;
  const barWidth = slot / Math.max(series.length, 1);
  categories.forEach((category, c) => {
    svg.append(s("text", { x: x(c + 0.5), y: height - MARGIN.bottom + 16, "text-anchor": "middle", class: "tick" },
      String(category)));
    series.forEach((item, i) => {
      const v = item.values[c];
      if (!Number.isFinite(v)) return;
      const top = y(Math.max(v, yAxis.lo));
      svg.append(s("rect", {
        class: "bar-rect", "data-series": item.name, x: x(c + 0.1) + i * barWidth, y: top,
        width: Math.max(barWidth - 1, 1), height: Math.max(y(yAxis.lo) - top, 0), fill: item.color || color(i),
      }, s("title", {}, `${item.name}, ${category}: ${fmt(v)}`)));
    });
  });
  svg.append(s("text", { x: width / 2, y: 16, "text-anchor": "middle", class: "chart-title" }, title));
  svg.append(s("text", { x: (MARGIN.left + width - MARGIN.right) / 2, y: height - 8, "text-anchor": "middle",
    class: "axis-label" }, xLabel));
  svg.append(s("text", { x: 14, y: (MARGIN.top + height - MARGIN.bottom) / 2, "text-anchor": "middle",
    class: "axis-label", transform: `rotate(-90 14 ${(MARGIN.top + height - MARGIN.bottom) / 2})` }, yLabel));
  return h("figure", { class: "chart-figure" }, svg,
    legend(series.map((item, i) => ({ name: item.name, color: item.color || color(i) })), svg));
}

/** Every {roc: {fpr, tpr}} inside an audit result's ``attacks``, named by its path (e.g. lira/unlearned). */
export function findRocCurves(attacks, prefix = "") {
  const curves = [];
  const walk = (node, path) => {
    if (!node || typeof node !== "object") return;
    if (Array.isArray(node)) {
      node.forEach((child, i) => walk(child, [...path, String(i)]));
      return;
    }
    const roc = node.roc;
    if (roc && Array.isArray(roc.fpr) && Array.isArray(roc.tpr)) {
      const auc = node.auc && typeof node.auc === "object" ? node.auc.value : node.auc;
      const key = path.join("/");
      const name = [prefix, key].filter(Boolean).join(" · ");
      curves.push({ key, auc: Number.isFinite(auc) ? auc : null,
        name: Number.isFinite(auc) ? `${name} (AUC ${fmt(auc, 3)})` : name, fpr: roc.fpr, tpr: roc.tpr });
    }
    for (const [key, child] of Object.entries(node)) if (key !== "roc") walk(child, [...path, key]);
  };
  walk(attacks, []);
  return curves;
}
