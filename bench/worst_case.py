"""Does the worst-case forget-set search find sets that are harder to unlearn than random ones?

For each dataset (digits with small_cnn; a CIFAR-shaped procedural set, 3x32x32, with a narrow small_cnn) one
original model is trained, then for every seed and every forget-set variant:

* the forget set: a random one, or the one ``worst_case_search`` selects (data-wise with the 'ft' lower level,
  data-wise with the 'l1_sparse' lower level, data-wise with the 'reference' preset, class-wise);
* the retrain oracle on that set (the original's recipe from a seeded random init on the retain set);
* FT and RL on that set (their 'lethe' presets, batch size and augmentation inherited from the original);
* Avg-Gap of FT and RL to that retrain (mean |difference| over UA, MIA-Efficacy, RA, TA; optml.md §3).

The random set of seed s is the search's own random start for seed s (the indicator the search starts from),
so every searched set is compared with the set it started from, at equal size. Class-wise variants forget one
whole class (10 % of the data, like the data-wise 10 %) and are compared with a random class (the class-wise
search's start); their TA and MIA exclude the forgotten class.

Deviations from the paper's protocol (optml.md §5.3): FT and RL run with their default hyperparameters, not
with a learning rate grid-searched on the random set (WC#4); the models and data are far smaller than
CIFAR-10 / ResNet-18; the procedural set keeps its builder's 10 % training-label noise.

Prints a markdown table (mean ± std over seeds) and writes everything to ``var/worst_case.json``.

    .venv/bin/python bench/worst_case.py                      # both datasets, 3 seeds
    .venv/bin/python bench/worst_case.py --datasets digits    # ~10 min on the shared 2-core CPU
    .venv/bin/python bench/worst_case.py --merge A.json B.json  # one table from runs split across processes
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from workers.engine.datasets import ArrayDataset, build_dataset
from workers.engine.execute import EngineRequest, EngineResult, execute
from workers.engine.metrics.unlearning import avg_gap

DEFAULT_OUT = Path("var/worst_case.json")
FRACTION = 0.1
UNLEARNING_METHODS = ("ft", "rl")
HEADLINE = ("UA", "MIA-Efficacy", "RA", "TA")


@dataclass(frozen=True)
class Setup:
    """A dataset, the architecture trained on it and the original model's recipe."""

    dataset: dict[str, Any]
    arch_config: dict[str, Any]
    recipe: dict[str, Any]


SETUPS: dict[str, Setup] = {
    # The demo's digits model (app/demo.py): small_cnn on 1x8x8, 30 epochs.
    "digits": Setup(
        dataset={"name": "digits", "config": {}},
        arch_config={"in_channels": 1, "image_size": 8},
        recipe={
            "epochs": 30,
            "batch_size": 64,
            "lr": 0.05,
            "momentum": 0.9,
            "weight_decay": 5e-4,
            "schedule": "cosine",
            "augment": False,
        },
    ),
    # CIFAR-shaped (3x32x32, 10 classes, 10 % label noise as the builder's default) but small enough for a
    # 2-core CPU: 1,200 training images and a 16/32-channel small_cnn. Crop+flip as the reference's recipe.
    "procedural": Setup(
        dataset={"name": "procedural", "config": {"n_train": 1200, "n_test": 400, "image_size": 32}},
        arch_config={"in_channels": 3, "image_size": 32, "channels": [16, 32]},
        recipe={
            "epochs": 15,
            "batch_size": 64,
            "lr": 0.05,
            "momentum": 0.9,
            "weight_decay": 5e-4,
            "schedule": "cosine",
            "augment": True,
        },
    ),
}

# Forget-set variants: None = random (the search's start), else the search's params.
VARIANTS: dict[str, dict[str, Any] | None] = {
    "random": None,
    "searched (ft lower level)": {},
    "searched (l1_sparse lower level)": {"lower_level": "l1_sparse"},
    "searched ('reference' preset)": {"preset": "reference"},
    "random class": None,
    "searched class": {"granularity": "class", "size": 1},
}
CLASS_VARIANTS = ("random class", "searched class")


def _train(name: str, setup: Setup) -> tuple[ArrayDataset, EngineResult]:
    dataset = build_dataset(setup.dataset["name"], setup.dataset["config"])
    original = execute(
        EngineRequest(
            kind="train",
            method="train",
            params={"recipe": setup.recipe},
            seed=0,
            device="cpu",
            dataset=dataset,
            architecture="small_cnn",
            arch_config=setup.arch_config,
        )
    )
    print(
        f"{name}: {dataset.n_train} train, original test accuracy {original.metrics['test_accuracy']:.2f}",
        flush=True,
    )
    return dataset, original


def _random_start(items: int, m: int, seed: int) -> np.ndarray:
    """The search's random start for ``seed`` (worst_case._Search.initial_w draws it this way)."""
    return np.sort(np.random.default_rng(seed).choice(items, size=m, replace=False)).astype(np.int64)


def _request(
    kind: str,
    method: str,
    params: dict[str, Any],
    seed: int,
    dataset: ArrayDataset,
    original: EngineResult,
    setup: Setup,
    **extra: Any,
) -> EngineRequest:
    return EngineRequest(
        kind=kind,  # type: ignore[arg-type]
        method=method,
        params=params,
        seed=seed,
        device="cpu",
        dataset=dataset,
        architecture="small_cnn",
        arch_config=original.details["arch_config"],
        weights=original.weights,
        original_recipe=setup.recipe,
        **extra,
    )


def _forget_set(
    variant: str, seed: int, dataset: ArrayDataset, original: EngineResult, setup: Setup
) -> tuple[np.ndarray, int | None, dict[str, Any]]:
    """The variant's forget indices, its forgotten class (class-wise) and what the search reported."""
    params = VARIANTS[variant]
    class_wise = variant in CLASS_VARIANTS
    if params is None:
        if class_wise:
            forget_class = int(_random_start(dataset.num_classes, 1, seed)[0])
            return np.flatnonzero(dataset.y_train == forget_class).astype(np.int64), forget_class, {}
        return _random_start(dataset.n_train, round(FRACTION * dataset.n_train), seed), None, {}
    started = time.perf_counter()
    search = execute(
        _request("worst_case_search", "worst_case_search", params, seed, dataset, original, setup)
    )
    details = search.details
    report = {
        "search_s": time.perf_counter() - started,
        "overlap_with_initial": details["overlap_with_initial"],
        "objective_initial_set": details["objective_initial_set"],
        "objective_final_set": details["objective_final_set"],
        "warnings": details["warnings"],
        "params": details["params"],
        "cost_vs_retrain": details["cost"]["cost_vs_retrain"],
    }
    indices = np.asarray(search.arrays["forget_indices"], dtype=np.int64)
    if class_wise:
        (forget_class,) = details["selected_classes"]
        return indices, int(forget_class), report
    # The bench's random set is the search's start: check that, and the overlap the search reports.
    start = _random_start(dataset.n_train, indices.size, seed)
    assert np.intersect1d(indices, start).size / indices.size == details["overlap_with_initial"]
    return indices, None, report


def _cell(
    variant: str,
    seed: int,
    dataset: ArrayDataset,
    original: EngineResult,
    setup: Setup,
    done: dict[tuple[int, bytes, int | None], dict[str, Any]],
) -> dict[str, Any]:
    """One (variant, seed): the forget set, its retrain and FT/RL with their Avg-Gaps. A forget set already
    evaluated for this seed (a search that stayed at its random start) reuses that evaluation: the same
    requests on a deterministic CPU give the same numbers."""
    indices, forget_class, search = _forget_set(variant, seed, dataset, original, setup)
    key = (seed, indices.tobytes(), forget_class)
    cell: dict[str, Any] = {
        "seed": seed,
        "size": int(indices.size),
        "forget_class": forget_class,
        "search": search,
        "reused": key in done,
    }
    if key in done:
        cell.update({name: done[key][name] for name in ("retrain", *UNLEARNING_METHODS)})
        return cell
    # A forgotten class is given by its class alone: execute forgets all its samples and excludes it from TA.
    common = {"forget_class": forget_class} if forget_class is not None else {"forget_indices": indices}
    retrain = execute(_request("retrain", "retrain", {}, seed, dataset, original, setup, **common))
    cell["retrain"] = {key: retrain.metrics[key] for key in HEADLINE}
    for method in UNLEARNING_METHODS:
        result = execute(_request("unlearn", method, {}, seed, dataset, original, setup, **common))
        cell[method] = {
            **{key: result.metrics[key] for key in HEADLINE},
            "avg_gap": avg_gap(result.metrics, retrain.metrics),
        }
    done[key] = cell
    return cell


def _mean_std(values: list[float]) -> str:
    if not values:
        return "—"
    spread = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.fmean(values):.2f} ± {spread:.2f}"


def _table(results: dict[str, dict[str, list[dict[str, Any]]]]) -> str:
    lines = [
        "| dataset | forget set | size | overlap with start | objective start → final | FT Avg-Gap "
        "| RL Avg-Gap | retrain UA | retrain MIA-Eff | RL MIA-Eff |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for dataset, variants in results.items():
        for variant, cells in variants.items():
            searched = [cell["search"] for cell in cells if cell["search"]]
            overlap = _mean_std([100.0 * s["overlap_with_initial"] for s in searched]) if searched else "—"
            objective = (
                f"{_mean_std([s['objective_initial_set'] for s in searched])} → "
                f"{_mean_std([s['objective_final_set'] for s in searched])}"
                if searched
                else "—"
            )
            row = [
                dataset,
                variant,
                f"{statistics.fmean(cell['size'] for cell in cells):.0f}",
                f"{overlap} %" if searched else "—",
                objective,
                _mean_std([cell["ft"]["avg_gap"] for cell in cells]),
                _mean_std([cell["rl"]["avg_gap"] for cell in cells]),
                _mean_std([cell["retrain"]["UA"] for cell in cells]),
                _mean_std([cell["retrain"]["MIA-Efficacy"] for cell in cells]),
                _mean_std([cell["rl"]["MIA-Efficacy"] for cell in cells]),
            ]
            lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def _merge(paths: list[Path], out: Path) -> None:
    """One table and one JSON from runs that split the datasets or variants between them (e.g. run in
    parallel); a (dataset, variant) measured twice keeps the later file's cells."""
    runs = [json.loads(path.read_text()) for path in paths]
    results: dict[str, dict[str, list[dict[str, Any]]]] = {}
    for run in runs:
        for dataset, variants in run["results"].items():
            results.setdefault(dataset, {}).update(variants)
    order = list(VARIANTS)
    results = {
        dataset: dict(sorted(variants.items(), key=lambda item: order.index(item[0])))
        for dataset, variants in results.items()
    }
    table = _table(results)
    payload = {
        "merged_from": [str(path) for path in paths],
        "setups": {name: SETUPS[name].__dict__ for name in results},
        "variants": {name: VARIANTS[name] for name in order if any(name in v for v in results.values())},
        "seeds": sorted({run["seeds"] for run in runs}),
        "torch": torch.__version__,
        "threads": sorted({run["threads"] for run in runs}),
        "seconds": sum(run["seconds"] for run in runs),
        "results": results,
        "table": table,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(payload, indent=1, default=float))
    print(table)
    print(f"written to {out}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--datasets", default="digits,procedural", help="comma-separated: digits, procedural")
    parser.add_argument("--seeds", type=int, default=3, help="seeds 0..N-1 (at least 3 for mean ± std)")
    parser.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated forget-set variants")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (the box is shared)")
    parser.add_argument("--json", type=Path, default=DEFAULT_OUT)
    parser.add_argument(
        "--merge",
        type=Path,
        nargs="*",
        default=[],
        help="JSON files of earlier runs (same code): print and write their results together, run nothing",
    )
    args = parser.parse_args()
    if args.merge:
        _merge(args.merge, args.json)
        return
    torch.set_num_threads(args.threads)
    variants = [name for name in args.variants.split(",") if name]
    unknown = sorted(set(variants) - set(VARIANTS))
    if unknown:
        parser.error(f"unknown variants: {unknown}")
    results: dict[str, dict[str, list[dict[str, Any]]]] = {}
    started = time.perf_counter()

    def write() -> str:
        # After every cell, so that an interrupted run keeps what it measured.
        table = _table(results)
        args.json.parent.mkdir(parents=True, exist_ok=True)
        payload = {
            "setups": {name: SETUPS[name].__dict__ for name in results},
            "variants": {name: VARIANTS[name] for name in variants},
            "seeds": args.seeds,
            "torch": torch.__version__,
            "threads": args.threads,
            "seconds": time.perf_counter() - started,
            "results": results,
            "table": table,
        }
        args.json.write_text(json.dumps(payload, indent=1, default=float))
        return table

    for name in [name for name in args.datasets.split(",") if name]:
        setup = SETUPS[name]
        dataset, original = _train(name, setup)
        results[name] = {variant: [] for variant in variants}
        done: dict[tuple[int, bytes, int | None], dict[str, Any]] = {}
        for seed in range(args.seeds):
            for variant in variants:
                cell = _cell(variant, seed, dataset, original, setup, done)
                results[name][variant].append(cell)
                print(
                    f"  {name} seed {seed} {variant}: FT gap {cell['ft']['avg_gap']:.2f}, RL gap "
                    f"{cell['rl']['avg_gap']:.2f}, retrain UA {cell['retrain']['UA']:.2f}"
                    + (f", overlap {cell['search']['overlap_with_initial']:.2f}" if cell["search"] else "")
                    + f" ({time.perf_counter() - started:.0f} s)",
                    flush=True,
                )
                write()
    print(write())
    print(f"written to {args.json}")


if __name__ == "__main__":
    main()
