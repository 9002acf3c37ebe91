"""`lethe demo`: the whole product on the embedded profile, through the HTTP API, in about a minute."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from app.core.config import Profile, Settings

DEMO_ARCHITECTURE = "small_cnn"
# Digits is tiny (1,437 train images of 8x8): a short recipe trains the original and the retrain in seconds.
DEMO_RECIPE = {
    "epochs": 30,
    "batch_size": 64,
    "lr": 0.05,
    "momentum": 0.9,
    "weight_decay": 5e-4,
    "schedule": "cosine",
    "augment": False,
}
# Reference FT defaults (lr 0.01, 10 epochs) with the batch scaled to the tiny dataset.
DEMO_FT_PARAMS = {"epochs": 10, "batch_size": 64, "lr": 0.01}
DEMO_SEED = 0
RANDOM_FRACTION = 0.1
FORGOTTEN_CLASS = 3
COLUMNS = ["UA", "RA", "TA", "MIA-Efficacy", "test_accuracy"]
HEADERS = {"MIA-Efficacy": "MIA-Eff", "test_accuracy": "Test acc"}


def _fmt(value: float | None) -> str:
    return "—" if value is None else f"{value:.2f}"


def comparison_table(title: str, comparison: dict[str, Any]) -> Table:
    table = Table(title=title)
    for header in ["row", *[HEADERS.get(c, c) for c in COLUMNS], "Avg-Gap", "RTE s"]:
        table.add_column(header, justify="right" if header != "row" else "left", no_wrap=True)
    for row in comparison["rows"]:
        label = row["kind"] if row["kind"] != "unlearn" else row["method"]
        if row["kind"] == "evaluate":
            label = "original"
        metrics = row["metrics"]
        table.add_row(
            label,
            *[_fmt(metrics.get(c)) for c in COLUMNS],
            _fmt(row.get("avg_gap")),
            _fmt(row.get("rte_seconds")) if row["kind"] != "evaluate" else "—",
        )
    return table


def run_demo(port: int, home: Path, console: Console) -> int:
    from app.cli import _prepare, follow_job
    from app.client import LetheClient
    from app.services.processes import ServiceGroup

    settings = Settings(profile=Profile.embedded, home=home)
    _prepare(settings)
    assert settings.bootstrap_key_file is not None
    key = settings.bootstrap_key_file.read_text().strip()
    group = ServiceGroup(settings, port=port, log_dir=home.resolve() / "logs")
    console.print(f"Starting the embedded service in {home} (logs in {group.log_dir}) …")
    group.start()
    try:
        group.wait_ready()
        client = LetheClient(group.base_url, key)
        dataset = client.create_builtin_dataset("digits")
        console.print(
            f"dataset digits: {dataset['n_train']} train / {dataset['n_test']} test, id {dataset['id']}"
        )
        train = client.submit_job(
            {
                "kind": "train",
                "dataset_id": dataset["id"],
                "architecture": DEMO_ARCHITECTURE,
                "params": {"recipe": DEMO_RECIPE},
                "seed": DEMO_SEED,
            }
        )
        train = follow_job(client, train["id"], "train original")
        if train["status"] != "succeeded":
            console.print(f"[red]training failed:[/red] {train['error']}")
            return 1
        original = train["output_model_id"]
        console.print(f"original model {original}: test accuracy {train['metrics']['test_accuracy']:.2f}")
        forget_sets = [
            client.create_forget_set(
                dataset["id"],
                {"kind": "random", "fraction": RANDOM_FRACTION, "seed": DEMO_SEED},
                "random 10%",
            ),
            client.create_forget_set(
                dataset["id"], {"kind": "class", "class": FORGOTTEN_CLASS}, f"class {FORGOTTEN_CLASS}"
            ),
        ]
        failed = False
        for forget_set in forget_sets:
            submitted = [
                (
                    "evaluate original",
                    {
                        "kind": "evaluate",
                        "model_id": original,
                        "forget_set_id": forget_set["id"],
                        "seed": DEMO_SEED,
                    },
                ),
                (
                    "retrain",
                    {
                        "kind": "retrain",
                        "model_id": original,
                        "forget_set_id": forget_set["id"],
                        "seed": DEMO_SEED,
                    },
                ),
                (
                    "ft",
                    {
                        "kind": "unlearn",
                        "method": "ft",
                        "model_id": original,
                        "forget_set_id": forget_set["id"],
                        "params": DEMO_FT_PARAMS,
                        "seed": DEMO_SEED,
                    },
                ),
            ]
            for label, body in submitted:
                job = client.submit_job(body)
                done = follow_job(client, job["id"], f"{forget_set['name']}: {label}")
                if done["status"] != "succeeded":
                    console.print(f"[red]{label} failed:[/red] {done['error']}")
                    failed = True
            comparison = client.comparison(forget_set["id"], model_id=original)
            console.print(
                comparison_table(
                    f"Forget set '{forget_set['name']}' ({forget_set['size']} samples)", comparison
                )
            )
        return 1 if failed else 0
    finally:
        group.stop()
