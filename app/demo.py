"""`lethe demo`: what Lethe is for, on the embedded profile, through the HTTP API, in under a minute.

One small MLP on scikit-learn's digits, then, all submitted up front so the GPU workers never idle (the
embedded service's one, plus a second the demo starts so that independent jobs share a 2-core box):

1. several unlearning methods on one random forget set against the retrain oracle (Avg-Gap, guardrail flags);
2. a worst-case forget set (``worst_case_search``) beside the random one;
3. a privacy audit (U-LiRA) of the ``identity`` no-op next to its ``retrain`` control;
4. a deletion request under a policy, ending in a signed report verified offline, with its controls.

Every table is a pure function of API results produced with fixed seeds on a deterministic CPU, so two runs
print identical tables; wall times go in a footer line, never in a table.
"""

from __future__ import annotations

import io
import json
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from app.core.config import Profile, Settings

DEMO_SEED = 0
DEMO_ARCHITECTURE = "mlp"
# An MLP trains on digits' 1,437 8x8 images in a second or two on a CPU, and audits vectorise its shadows.
DEMO_ARCH_CONFIG: dict[str, Any] = {"hidden": [64]}
DEMO_RECIPE: dict[str, Any] = {
    "epochs": 10,
    "batch_size": 64,
    "lr": 0.05,
    "momentum": 0.9,
    "schedule": "cosine",
}
RANDOM_FRACTION = 0.1
FORGOTTEN_CLASS = 3
# Every method at its `lethe` preset (batch size inherited from the recipe): what a newcomer would get.
# blindspot is the Blindspot-style method (a partially trained "blindspot" teacher + attention transfer).
METHODS: tuple[str, ...] = ("ft", "l1_sparse", "salun", "blindspot", "bad_teacher")
SEARCHED_METHODS: tuple[str, ...] = ("ft",)
# The search at its lethe preset but with half its 10 upper iterations, to halve its cost; whether the set
# moved away from its random start is printed either way (overlap, objective, the search's warnings).
SEARCH_PARAMS: dict[str, Any] = {"fraction": RANDOM_FRACTION, "outer_iterations": 5}
# A small audit: K = 8 MLP pipelines, U-LiRA only. The identity audit trains the shadows, the retrain
# audit reuses them from the shadow store.
AUDIT_SHADOWS = 8
AUDIT_METHODS: tuple[str, ...] = ("identity", "retrain")
AUDIT_PARAMS: dict[str, Any] = {
    "shadows": AUDIT_SHADOWS,
    "attacks": ["ulira"],
    "kaggle_calibration": False,
    "n_bootstrap": 200,
}
# On a one-class forget set the retrain misclassifies the whole class while the original does not: the
# gap rule separates an untouched model (both controls fail it), the utility rule guards against collapse.
POLICY_NAME = "demo-forget-one-class"
POLICY_RULES: list[dict[str, Any]] = [
    {"metric": "UA", "relative_to": "retrain", "max_abs_gap": 10},
    {"metric": "TA", "max_drop_from_original": 5},
]
DELETION_METHOD = "rl"
DELETION_PARAMS: dict[str, Any] = {"epochs": 2}
# The comparison measures each method against the retrain *of the same original model*; a cached retrain
# from an earlier run in the same home belongs to that run's (bit-identical) original, so a rerun would lose
# its Avg-Gap column. Retraining the MLP costs a second or two.
FRESH: dict[str, Any] = {"reuse_cached": False}
# The embedded reaper issues reports; its default 10 s tick would dominate the demo's wall time.
REAPER_INTERVAL_S = 1.0
POLL_S = 0.25
JOB_TIMEOUT_S = 600.0

COLUMNS = ["UA", "RA", "TA", "MIA-Efficacy"]
HEADERS = {"MIA-Efficacy": "MIA-Eff"}
SECTION_TITLES = {
    "methods": "1. Methods vs the retrain oracle",
    "worst_case": "2. A worst-case forget set beside a random one",
    "audit": "3. Privacy audit: U-LiRA on the no-op and on its control",
    "report": "4. A deletion request ending in a signed report",
}


class DemoFailed(RuntimeError):
    """A step of the demo did not succeed; the message says which."""


def _fmt(value: float | None, digits: int = 2) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def row_label(row: dict[str, Any]) -> str:
    if row["kind"] == "evaluate":
        return "original"
    if row["kind"] == "retrain":
        return "retrain"
    return str(row["method"])


def comparison_table(title: str, comparison: dict[str, Any]) -> Table:
    """The comparison endpoint's rows (retrain first); RTE is left out because it is a timing."""
    table = Table(title=title, title_justify="left")
    for header in ["row", *[HEADERS.get(c, c) for c in COLUMNS], "Avg-Gap", "flags"]:
        table.add_column(header, justify="left" if header in ("row", "flags") else "right", no_wrap=True)
    for row in comparison["rows"]:
        metrics = row["metrics"]
        table.add_row(
            row_label(row),
            *[_fmt(metrics.get(c)) for c in COLUMNS],
            _fmt(row.get("avg_gap")),
            ", ".join(row["flags"]) or "—",
        )
    return table


def _row(comparison: dict[str, Any], label: str) -> dict[str, Any] | None:
    return next((r for r in comparison["rows"] if row_label(r) == label), None)


def worst_case_table(
    random_comparison: dict[str, Any],
    searched_set: dict[str, Any],
    searched_comparison: dict[str, Any],
    search: dict[str, Any],
) -> Table:
    table = Table(
        title=f"{SECTION_TITLES['worst_case']} ({searched_set['size']} samples each)",
        title_justify="left",
        caption="overlap: share of the searched set in the search's random start; objective: the search's "
        "upper objective (which it minimises) on that start → on the selected set",
        caption_justify="left",
    )
    for header in ["forget set", "overlap", "objective", "retrain UA"]:
        table.add_column(header, justify="left" if header == "forget set" else "right", no_wrap=True)
    for method in SEARCHED_METHODS:
        table.add_column(f"{method} UA", justify="right", no_wrap=True)
        table.add_column(f"{method} Avg-Gap", justify="right", no_wrap=True)
    overlap = search.get("overlap_with_initial")
    for name, comparison, searched in (
        ("random", random_comparison, False),
        ("worst-case", searched_comparison, True),
    ):
        retrain = _row(comparison, "retrain")
        cells = [
            name,
            f"{100 * overlap:.1f} %" if searched and overlap is not None else "—",
            f"{_fmt(search.get('objective_initial_set'))} → {_fmt(search.get('objective_final_set'))}"
            if searched
            else "—",
            _fmt(retrain["metrics"].get("UA")) if retrain else "—",
        ]
        for method in SEARCHED_METHODS:
            row = _row(comparison, method)
            cells += [
                _fmt(row["metrics"].get("UA")) if row else "—",
                _fmt(row.get("avg_gap")) if row else "—",
            ]
        table.add_row(*cells)
    return table


def audit_verdict(metrics: dict[str, float]) -> str:
    """Caught when the whole 95 % interval of U-LiRA's AUC lies above chance (0.5)."""
    low = metrics.get("ulira_auc_ci_low")
    if low is None:
        return "no result"
    return "caught" if low > 0.5 else "not caught"


def audit_table(audits: dict[str, dict[str, float]]) -> Table:
    table = Table(
        title=SECTION_TITLES["audit"],
        title_justify="left",
        caption=f"K = {AUDIT_SHADOWS} pipelines; caught: the whole 95 % interval lies above 0.5 (chance)",
        caption_justify="left",
    )
    for header in ["audited method", "U-LiRA AUC", "95 % interval", "reading"]:
        table.add_column(header, justify="right" if "U-LiRA" in header else "left", no_wrap=True)
    for method, metrics in audits.items():
        label = f"{method} (no-op)" if method == "identity" else f"{method} (control)"
        table.add_row(
            label,
            _fmt(metrics.get("ulira_auc"), 3),
            f"[{_fmt(metrics.get('ulira_auc_ci_low'), 3)}, {_fmt(metrics.get('ulira_auc_ci_high'), 3)}]",
            audit_verdict(metrics),
        )
    return table


def rule_text(rule: dict[str, Any]) -> str:
    """A policy rule in a few words (the report's own statement is a sentence, too long for a cell)."""
    metric = rule["metric"] + ("" if rule.get("use", "value") == "value" else f" ({rule['use']})")
    if rule.get("max_abs_gap") is not None:
        return f"{metric} within {rule['max_abs_gap']:g} of {rule['relative_to']}"
    if rule.get("max_drop_from_original") is not None:
        return f"{metric} drop vs original ≤ {rule['max_drop_from_original']:g}"
    bounds = [
        f"≥ {rule['min']:g}" if rule.get("min") is not None else "",
        f"≤ {rule['max']:g}" if rule.get("max") is not None else "",
    ]
    return f"{metric} {' and '.join(b for b in bounds if b)}"


def _outcome_cell(verdict: dict[str, Any]) -> str:
    word = {True: "pass", False: "fail", None: "n/a"}[verdict["passed"]]
    observed = verdict.get("observed")
    return word if observed is None else f"{word} ({observed:.2f})"


def report_table(document: dict[str, Any]) -> Table:
    """Each rule with the unlearned model's outcome, then each control's under the same rule."""
    controls = document.get("controls") or {}
    table = Table(
        title=f"{SECTION_TITLES['report']}: verdict {document['verdict'].upper()}",
        title_justify="left",
        caption=f"* control: {' / '.join(controls)}. {document['verdict_reason']}",
        caption_justify="left",
    )
    table.add_column("rule", justify="left", no_wrap=True)
    table.add_column(str(document["method"]["name"]), justify="left", no_wrap=True)
    for role in controls:
        table.add_column(f"{role}*", justify="left", no_wrap=True)
    for verdict in document["verdicts"]:
        cells = [rule_text(verdict["rule"]), _outcome_cell(verdict)]
        cells += [_outcome_cell(control["verdicts"][verdict["index"]]) for control in controls.values()]
        table.add_row(*cells)
    table.add_row(
        "outcome",
        document["verdict"],
        *[str(control["outcome"]) for control in controls.values()],
        end_section=True,
    )
    return table


@dataclass
class DemoResult:
    """What the demo printed, as data: the test recomputes the tables from it."""

    original: dict[str, Any] = field(default_factory=dict)
    forget_sets: dict[str, dict[str, Any]] = field(default_factory=dict)
    comparisons: dict[str, dict[str, Any]] = field(default_factory=dict)
    search: dict[str, Any] = field(default_factory=dict)
    audits: dict[str, dict[str, float]] = field(default_factory=dict)
    report: dict[str, Any] = field(default_factory=dict)
    report_path: str = ""
    verification: dict[str, Any] = field(default_factory=dict)
    tables: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(self.__dict__, indent=2, sort_keys=True, default=str)


def render_tables(result: DemoResult) -> list[Table]:
    return [
        comparison_table(
            f"{SECTION_TITLES['methods']}: random {RANDOM_FRACTION:.0%}"
            f" ({result.forget_sets['random']['size']} samples)",
            result.comparisons["random"],
        ),
        comparison_table(
            f"   and on the worst-case forget set ({result.forget_sets['searched']['size']} samples)",
            result.comparisons["searched"],
        ),
        worst_case_table(
            result.comparisons["random"],
            result.forget_sets["searched"],
            result.comparisons["searched"],
            result.search,
        ),
        audit_table(result.audits),
        report_table(result.report),
    ]


def table_text(table: Table, width: int = 160) -> str:
    """A table as plain text at a fixed width: what ``--json`` stores and the test compares across runs."""
    console = Console(width=width, record=True, color_system=None, file=io.StringIO())
    console.print(table)
    return console.export_text()


class JobWatcher:
    """Follows every submitted job with one progress bar: finished jobs over submitted ones, and the jobs
    running now."""

    def __init__(self, client: Any, progress: Progress) -> None:
        self.client = client
        self.progress = progress
        self.task = progress.add_task("jobs", total=0, current="")
        self.labels: dict[str, str] = {}
        self.done: dict[str, dict[str, Any]] = {}

    def submit(self, label: str, body: dict[str, Any]) -> str:
        job = self.client.submit_job(body)
        self.labels[job["id"]] = label
        self.progress.update(self.task, total=len(self.labels))
        return str(job["id"])

    def wait(self, job_ids: Iterable[str], first: bool = False) -> dict[str, Any]:
        """Block until the given jobs end (``first``: until one of them does; those are returned), raising on
        a failure. Polls every pending job, so the bar moves for jobs not waited on too."""
        wanted = list(dict.fromkeys(job_ids))
        deadline = time.monotonic() + JOB_TIMEOUT_S
        while True:
            running = []
            for job_id in [j for j in self.labels if j not in self.done]:
                job = self.client.get(f"/v1/jobs/{job_id}")
                if job["status"] in ("succeeded", "failed", "cancelled"):
                    if job["status"] != "succeeded":
                        raise DemoFailed(f"{self.labels[job_id]} {job['status']}: {job.get('error')}")
                    self.done[job_id] = job
                elif job["status"] == "running":
                    running.append(self.labels[job_id])
            self.progress.update(self.task, completed=len(self.done), current=", ".join(running))
            ended = {job_id: self.done[job_id] for job_id in wanted if job_id in self.done}
            if ended and (first or len(ended) == len(wanted)):
                return ended
            if time.monotonic() > deadline:
                raise DemoFailed(f"jobs did not finish within {JOB_TIMEOUT_S:.0f} s")
            time.sleep(POLL_S)

    def job_seconds(self) -> dict[str, float]:
        """Each job's own wall time (the worker's), for the JSON; never printed in a table."""
        return {
            self.labels[job_id]: round(float((job.get("timings") or {}).get("wall_s") or 0.0), 2)
            for job_id, job in self.done.items()
        }


def _rows_of(comparison: dict[str, Any], job_ids: set[str]) -> dict[str, Any]:
    """Only this run's jobs: a reused home holds earlier runs' rows for the same inputs."""
    return {**comparison, "rows": [r for r in comparison["rows"] if str(r["job_id"]) in job_ids]}


def run_demo(
    port: int,
    home: Path,
    console: Console,
    keep: bool = False,
    json_path: Path | None = None,
) -> int:
    from app.client import LetheClient
    from app.core import migrate as migration
    from app.services.ops.processes import PortInUse, ServiceGroup

    started = time.monotonic()
    settings = Settings(profile=Profile.embedded, home=home)
    migration.prepare(settings)
    assert settings.bootstrap_key_file is not None
    key = settings.bootstrap_key_file.read_text().strip()
    group = ServiceGroup(
        settings,
        port=port,
        log_dir=home.resolve() / "logs",
        extra_env={"LETHE_REAPER_INTERVAL_SECONDS": str(REAPER_INTERVAL_S)},
    )
    console.print(f"Starting the embedded service in {home} (logs in {group.log_dir}) …")
    try:
        group.start()
    except PortInUse as exc:
        console.print(f"[red]Cannot start the demo:[/red] {exc}")
        return 1
    try:
        # The embedded service's GPU worker runs one job at a time; a second one lets the demo's independent
        # jobs (the search and its follow-ups beside the methods and audits) use both cores of a small box.
        group.start_gpu_worker(name="gpu-demo")
        group.wait_ready()
        ready = time.monotonic()
        console.print(
            f"Dashboard: [bold]{group.base_url}/[/bold] (log in with the admin key in "
            f"{settings.bootstrap_key_file.resolve()})"
        )
        with LetheClient(group.base_url, key) as client:
            try:
                result = _run(client, home, console)
            except DemoFailed as exc:
                console.print(f"[red]demo failed:[/red] {exc}")
                return 1
        result.timings.update(
            service_start_s=round(ready - started, 1), total_s=round(time.monotonic() - started, 1)
        )
        for table in render_tables(result):
            console.print(table)
            result.tables.append(table_text(table))
        verification = result.verification
        console.print(
            f"Signed report: {result.report_path} (HTML beside it)\n"
            f"verified offline: {'VALID' if verification['ok'] else 'INVALID'}, {verification['reason']}\n"
            f"check it yourself: lethe verify-report {result.report_path}"
            f" --public-key {verification['public_key_path']}"
        )
        console.print(
            f"[dim]timings: service ready in {result.timings['service_start_s']:.1f} s, "
            f"demo done in {result.timings['total_s']:.1f} s[/dim]"
        )
        if json_path is not None:
            json_path.write_text(result.to_json())
        if keep:
            console.print(
                f"The service stays up: dashboard {group.base_url}/ , admin key in "
                f"{settings.bootstrap_key_file.resolve()}. Ctrl-C stops it."
            )
            group.wait()
        return 0 if verification["ok"] else 1
    finally:
        group.stop()


def _run(client: Any, home: Path, console: Console) -> DemoResult:
    from app.services.compliance import reports, signing

    result = DemoResult()
    dataset = client.create_builtin_dataset("digits")
    console.print(f"dataset digits: {dataset['n_train']} train / {dataset['n_test']} test")
    progress = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TextColumn("{task.fields[current]}"),
        TimeElapsedColumn(),
        console=console,
        transient=True,
    )
    with progress:
        watch = JobWatcher(client, progress)
        train_id = watch.submit(
            "train original",
            {
                "kind": "train",
                "dataset_id": dataset["id"],
                "architecture": DEMO_ARCHITECTURE,
                "arch_config": DEMO_ARCH_CONFIG,
                "params": {"recipe": DEMO_RECIPE},
                "seed": DEMO_SEED,
            },
        )
        random_set = client.create_forget_set(
            dataset["id"],
            {"kind": "random", "fraction": RANDOM_FRACTION, "seed": DEMO_SEED},
            f"random {RANDOM_FRACTION:.0%}",
        )
        class_set = client.create_forget_set(
            dataset["id"], {"kind": "class", "class": FORGOTTEN_CLASS}, f"class {FORGOTTEN_CLASS}"
        )
        policy = client.create_policy(
            POLICY_NAME, POLICY_RULES, description="forget one class as the retrain does, keep utility"
        )
        train = watch.wait([train_id])[train_id]
        original = str(train["output_model_id"])
        result.original = {"id": original, "test_accuracy": train["metrics"]["test_accuracy"]}
        progress.console.print(
            f"original {DEMO_ARCHITECTURE} {DEMO_ARCH_CONFIG['hidden']}: test accuracy "
            f"{train['metrics']['test_accuracy']:.2f}"
        )

        def on_set(forget_set: dict[str, Any]) -> dict[str, Any]:
            return {"model_id": original, "forget_set_id": forget_set["id"], "seed": DEMO_SEED}

        # Everything that does not depend on another job's output goes in now: the search first, so that
        # the jobs on its output can queue while the rest runs.
        search_id = watch.submit(
            "worst-case search",
            {"kind": "worst_case_search", "model_id": original, "params": SEARCH_PARAMS, "seed": DEMO_SEED},
        )
        random_jobs = [
            watch.submit("random: evaluate original", {"kind": "evaluate", **FRESH, **on_set(random_set)}),
            watch.submit("random: retrain", {"kind": "retrain", **FRESH, **on_set(random_set)}),
        ]
        for method in METHODS:
            random_jobs.append(
                watch.submit(f"random: {method}", {"kind": "unlearn", "method": method, **on_set(random_set)})
            )

        def submit_audit(method: str) -> str:
            body = {"kind": "audit", "params": {"method": method, **AUDIT_PARAMS}, **on_set(random_set)}
            return watch.submit(f"audit {method}", body)

        # The first audit trains the shadow pipelines; the control is submitted once they are stored, so
        # that it reuses them instead of training the same models at the same time on the other worker.
        audit_jobs = {AUDIT_METHODS[0]: submit_audit(AUDIT_METHODS[0])}
        request = client.submit_deletion_request(
            {
                "name": "demo: forget one class",
                "model_id": original,
                "forget_set_id": class_set["id"],
                "method": DELETION_METHOD,
                "params": DELETION_PARAMS,
                "seed": DEMO_SEED,
                "policy_id": str(policy.id),
                "requested_by": "lethe demo",
            }
        )
        for role, entry in sorted(request.jobs.items()):
            watch.labels[str(entry["job_id"])] = f"deletion request: {role}"
        progress.update(watch.task, total=len(watch.labels))

        searched_jobs: list[str] = []
        searched: dict[str, Any] = {}

        def after_search() -> None:
            searched.update(client.get(f"/v1/forget-sets/{watch.done[search_id]['result']['forget_set_id']}"))
            searched_jobs.extend(
                [
                    watch.submit(
                        "worst-case: evaluate original", {"kind": "evaluate", **FRESH, **on_set(searched)}
                    ),
                    watch.submit("worst-case: retrain", {"kind": "retrain", **FRESH, **on_set(searched)}),
                    *[
                        watch.submit(
                            f"worst-case: {method}", {"kind": "unlearn", "method": method, **on_set(searched)}
                        )
                        for method in SEARCHED_METHODS
                    ],
                ]
            )

        def after_audit() -> None:
            audit_jobs.update({method: submit_audit(method) for method in AUDIT_METHODS[1:]})

        # Jobs that need another job's output are submitted as soon as it ends, whichever ends first.
        chains = {search_id: after_search, audit_jobs[AUDIT_METHODS[0]]: after_audit}
        while chains:
            for job_id in watch.wait(chains, first=True):
                chains.pop(job_id)()
        search = watch.done[search_id]
        searched_set = searched
        watch.wait(watch.labels)
        current = request
        deadline = time.monotonic() + JOB_TIMEOUT_S
        progress.update(watch.task, current="signing the report")
        while current.status.value == "running" and time.monotonic() < deadline:
            time.sleep(POLL_S)
            current = client.deletion_request(str(request.id))
    if current.status.value != "issued" or current.report_id is None:
        raise DemoFailed(f"deletion request {current.id} ended {current.status.value}: {current.error}")

    result.forget_sets = {
        name: {"id": s["id"], "name": s["name"], "size": s["size"]}
        for name, s in (("random", random_set), ("searched", searched_set), ("class", class_set))
    }
    result.comparisons = {
        "random": _rows_of(client.comparison(random_set["id"], model_id=original), set(random_jobs)),
        "searched": _rows_of(client.comparison(searched_set["id"], model_id=original), set(searched_jobs)),
    }
    details = search["result"]
    result.search = {
        name: details.get(name)
        for name in ("overlap_with_initial", "objective_initial_set", "objective_final_set", "warnings")
    }
    result.timings = watch.job_seconds()
    result.audits = {
        method: {k: v for k, v in watch.done[job_id]["metrics"].items() if k.startswith("ulira_")}
        for method, job_id in audit_jobs.items()
    }
    report_bytes = client.report_bytes(str(current.report_id))
    reports_dir = home.resolve() / "reports"
    reports_dir.mkdir(parents=True, exist_ok=True)
    report_path = reports_dir / f"{current.id}.json"
    report_path.write_bytes(report_bytes)
    (reports_dir / f"{current.id}.html").write_bytes(client.report_bytes(str(current.report_id), "html"))
    # Offline, as `lethe verify-report` does: the published public key and the file, nothing else.
    public_key_path = reports_dir / "report-signing-public.pem"
    public_key_path.write_text(client.signing_key().pem)
    verification = reports.verify_file(
        report_path.read_bytes(), signing.load_public_key(public_key_path.read_bytes())
    )
    result.report = json.loads(report_bytes)
    result.report_path = str(report_path)
    result.verification = {
        "ok": verification.ok,
        "reason": verification.reason,
        "public_key_path": str(public_key_path),
    }
    if result.search.get("warnings"):
        console.print(f"worst-case search warnings: {'; '.join(result.search['warnings'])}")
    return result
