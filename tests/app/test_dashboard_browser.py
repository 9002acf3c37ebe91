"""The dashboard in headless Chromium against a live server with real workers.

A tenant logs in with its key, submits a small unlearning job (ft) through the form, watches its progress
reach done on the job page, opens the forget set's comparison and finds the table with the retrain row and
Avg-Gap, the UA-RA scatter and a log-log ROC plot (from an audit job run in set-up); then cancels a long job
with the cancel button. A generative forget set's comparison shows the teacher, gold, SFD and control rows
with their sample grids, and a sample job's page its grid. Screenshots go to ``$LETHE_SCREENSHOT_DIR``
(default ``var/screenshots/``). No console error and no uncaught page error may occur.

Needs Debian's Chromium (``apt-get install -y chromium``) at ``/usr/bin/chromium`` (or ``$LETHE_CHROMIUM``)
and the ``playwright`` Python package; Playwright's own browser download is never used. Without them the
module is skipped, or fails when ``LETHE_REQUIRE_BROWSER=1`` (for CI, where a skip would hide a gap).
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from tests.live_server import served_api
from tests.workers.test_job_flow import LONG_RECIPE, run, train_original

pytestmark = [pytest.mark.browser, pytest.mark.slow, pytest.mark.broker]

CHROMIUM = Path(os.environ.get("LETHE_CHROMIUM", "/usr/bin/chromium"))


def _unavailable(reason: str) -> None:
    # CI sets LETHE_REQUIRE_BROWSER=1 so that a missing browser fails the run instead of skipping silently.
    if os.environ.get("LETHE_REQUIRE_BROWSER") == "1":
        pytest.fail(reason, pytrace=False)
    pytest.skip(reason, allow_module_level=True)


if not CHROMIUM.exists():
    _unavailable(
        f"no Chromium at {CHROMIUM}: install Debian's (apt-get install -y chromium) to run this test"
    )
try:
    from playwright import sync_api
except ImportError:  # pragma: no cover - depends on the environment
    _unavailable("the playwright package is missing (pip install -e '.[dev]')")

# The flags this machine's Chromium needs: no sandbox as root, no GPU, and no background connections
# (the network is closed; they would fail noisily). Playwright gives every launch a fresh user-data-dir.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
REPO = Path(__file__).resolve().parents[2]
SCREENSHOTS = Path(os.environ.get("LETHE_SCREENSHOT_DIR") or REPO / "var" / "screenshots")
JOB_TIMEOUT_MS = 240_000
UI_TIMEOUT_MS = 20_000
QUICK_FT = {"epochs": 2, "batch_size": 64}
AUDIT_PARAMS = {
    "method": "ft",
    "method_params": QUICK_FT,
    "shadows": 3,
    "attacks": ["ulira"],
    "fixed_variance": True,
    "n_bootstrap": 0,
    "recipe": {"epochs": 3, "batch_size": 64, "lr": 0.05, "momentum": 0.9},
}


@pytest.fixture(scope="module")
def server_url(migrated) -> Iterator[str]:
    """The API (with the dashboard) served by uvicorn over real HTTP, publishing to the test broker."""
    with served_api(migrated, "dashboard-server") as url:
        yield url


@pytest.fixture(scope="module")
def world(live_api: TestClient, worker_group, sessions, migrated) -> dict[str, Any]:
    """An original model, a random forget set, its retrain and an audit of ft on it (the ROC curves)."""
    tenant, dataset, train = train_original(live_api, sessions, migrated)
    response = live_api.post(
        "/v1/forget-sets",
        json={"dataset_id": dataset["id"], "spec": {"kind": "random", "fraction": 0.1, "seed": 0}},
        headers=tenant.headers("submit"),
    )
    assert response.status_code == 201, response.text
    forget_set = response.json()
    common = {"model_id": train["output_model_id"], "forget_set_id": forget_set["id"], "seed": 5}
    retrain = run(live_api, tenant, {"kind": "retrain", **common})
    audit = run(live_api, tenant, {"kind": "audit", "params": AUDIT_PARAMS, **common})
    assert audit["result"]["attacks"]["ulira"]["roc"]["fpr"], audit["result"]
    return {
        "tenant": tenant,
        "dataset": dataset,
        "model": train["output_model_id"],
        "forget_set": forget_set,
        "retrain": retrain,
        "audit": audit,
    }


@pytest.fixture
def page(server_url: str) -> Iterator[Any]:
    """A fresh browser page; console errors and uncaught exceptions are collected in ``page.problems``."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        context = browser.new_context(base_url=server_url, viewport={"width": 1360, "height": 1000})
        context.set_default_timeout(UI_TIMEOUT_MS)
        page = context.new_page()
        problems: list[str] = []
        page.on(
            "console",
            lambda message: (
                problems.append(f"console.{message.type}: {message.text} @ {message.location}")
                if message.type == "error"
                else None
            ),
        )
        page.on("pageerror", lambda error: problems.append(f"page error: {error}"))
        page.problems = problems  # type: ignore[attr-defined]
        try:
            yield page
        finally:
            page.screenshot(path=str(SCREENSHOTS / "last.png"), full_page=True)
            context.close()
            browser.close()


def shot(page: Any, name: str) -> None:
    page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=True)


def login(page: Any, key: str) -> None:
    page.goto("/")
    page.wait_for_selector("#login-form")
    page.fill("#api-key", key)
    shot(page, "01-login")
    page.click("#login-button")
    page.wait_for_selector("#jobs-table")


def watch_progress(page: Any, timeout_s: float = JOB_TIMEOUT_MS / 1000) -> dict[str, list[Any]]:
    """Read the job page's status badge and progress bar until the job ends: what the user saw, in order."""
    statuses: list[str] = []
    percent: list[int] = []
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        status = page.get_attribute("#job-status [data-status]", "data-status")
        value = int(page.get_attribute("#job-progress [role=progressbar]", "aria-valuenow"))
        if not statuses or statuses[-1] != status:
            statuses.append(status)
            if status == "running":
                shot(page, "04-job-running")
        if not percent or percent[-1] != value:
            percent.append(value)
        if status in ("succeeded", "failed", "cancelled"):
            return {"statuses": statuses, "percent": percent}
        page.wait_for_timeout(100)
    raise AssertionError(f"the job did not finish within {timeout_s} s: {statuses}, {percent}")


def test_login_submit_watch_compare_and_cancel(
    page: Any, world: dict[str, Any], live_api: TestClient
) -> None:
    tenant, forget_set = world["tenant"], world["forget_set"]
    started = time.monotonic()

    # A wrong key is refused on the login form (the 401 is expected: it is not counted as a page problem).
    page.goto("/")
    page.fill("#api-key", "lk_0000000000000000_not-a-key")
    page.click("#login-button")
    page.wait_for_selector("#login-error:not([hidden])")
    page.problems.clear()  # type: ignore[attr-defined]

    login(page, tenant.submit)
    # The set-up's jobs are listed, finished.
    page.wait_for_selector(f'#jobs-table tr[data-job-id="{world["audit"]["id"]}"][data-status="succeeded"]')
    shot(page, "02-jobs")

    # Submit a small ft job through the form; the method list comes from /v1/methods.
    page.click('nav a[data-nav="submit"]')
    page.wait_for_selector("#submit-form")
    page.select_option("#submit-kind", "unlearn")
    assert "ft" in page.eval_on_selector_all("#submit-method option", "els => els.map(e => e.value)")
    page.select_option("#submit-model", world["model"])
    page.select_option("#submit-forget-set", forget_set["id"])
    page.select_option("#submit-method", "ft")
    # Long enough (a few seconds on an idle CPU) for the page to show it running, not only queued and done.
    # The params form is generated from ft's schema: fields left empty take the defaults shown.
    page.fill("#submit-params-epochs", "40")
    page.fill("#submit-params-batch_size", "16")
    assert '"epochs": 40' in page.inner_text("#submit-params-preview")
    page.fill("#submit-seed", "5")
    shot(page, "03-submit")
    # A full-page screenshot leaves Chromium to restore the scroll position at the next mouse-down, which can
    # move the (now lower, longer-form) button from under the pointer; Enter on it submits the same form.
    page.focus("#submit-button")
    page.keyboard.press("Enter")
    page.wait_for_url("**/#/jobs/*")
    job_id = page.url.rsplit("/", 1)[-1]
    page.wait_for_selector("#job-progress [role=progressbar]")

    # Its progress reaches done, live (SSE events and conditional polling), then results and curves appear.
    seen = watch_progress(page)
    assert "running" in seen["statuses"] and seen["statuses"][-1] == "succeeded", seen
    assert seen["percent"][-1] == 100, seen  # per phase (the method, then the evaluation): not monotonic
    page.wait_for_selector("#job-metrics")
    page.wait_for_selector('svg[data-chart="history"] path.series')
    page.wait_for_selector('svg[data-chart="per-class"] rect.bar-rect')
    page.wait_for_selector('#job-events li[data-type="succeeded"]')
    assert page.locator('#job-events li[data-type="progress"]').count() >= 1
    metrics = page.locator("#job-metrics").inner_text()
    assert "UA" in metrics and "MIA-Efficacy" in metrics
    shot(page, "05-job-done")
    job = live_api.get(f"/v1/jobs/{job_id}", headers=tenant.headers("read")).json()
    assert job["status"] == "succeeded" and job["method"] == "ft", job

    # The jobs list shows it done.
    page.click('nav a[data-nav="jobs"]')
    page.wait_for_selector(f'#jobs-table tr[data-job-id="{job_id}"][data-status="succeeded"]')

    # The comparison: table with the retrain row and Avg-Gap, the trade-off scatter and the ROC plot.
    page.goto(f"/#/forget-sets/{forget_set['id']}")
    page.wait_for_selector("#comparison-table tr.retrain-row")
    row = page.locator(f'#comparison-table tr[data-job-id="{job_id}"]')
    row.wait_for()
    headers = page.locator("#comparison-table thead th").all_inner_texts()
    assert "Avg-Gap" in headers and "UA" in headers and "RA" in headers
    gap = row.locator("td.avg-gap").inner_text()
    assert gap not in ("", "—"), gap
    page.wait_for_selector('svg[data-chart="tradeoff"] .point-highlight')
    roc = page.locator('svg[data-chart="roc"] path.roc-curve')
    roc.first.wait_for()
    assert roc.count() >= 1
    assert roc.first.get_attribute("d").count("L") >= 2  # a curve, not a dot
    shot(page, "06-comparison")

    # The audit job's own page draws its ROC curves too.
    page.goto(f"/#/jobs/{world['audit']['id']}")
    page.wait_for_selector('svg[data-chart="roc"] path.roc-curve')
    shot(page, "07-audit-job")

    # Cancel: a long training job, cancelled with the button on its page.
    response = live_api.post(
        "/v1/jobs",
        json={
            "kind": "train",
            "dataset_id": world["dataset"]["id"],
            "architecture": "mlp",
            "arch_config": {"hidden": [64]},
            "params": {"recipe": LONG_RECIPE},
            "seed": 11,
        },
        headers=tenant.headers("submit"),
    )
    assert response.status_code == 202, response.text
    long_id = response.json()["id"]
    page.goto(f"/#/jobs/{long_id}")
    page.click("#cancel-job")
    page.wait_for_selector('#job-status [data-status="cancelled"]', timeout=60_000)
    shot(page, "08-cancelled")

    assert not page.problems, page.problems  # type: ignore[attr-defined]
    print(f"browser flow took {time.monotonic() - started:.1f} s; screenshots in {SCREENSHOTS}")


QUICK_SEARCH = {"fraction": 0.1, "outer_iterations": 3, "lower_epochs": 1, "batch_size": 128}


def test_campaign_and_worst_case_search_views(page: Any, world: dict[str, Any], live_api: TestClient) -> None:
    """A campaign over the random and a worst-case forget set, followed live on its page; then the search
    job's upper objective per iteration and the searched set's scores."""
    tenant = world["tenant"]
    response = live_api.post(
        "/v1/campaigns",
        json={
            "name": "dashboard",
            "model_id": world["model"],
            "seeds": [5],
            "forget_sets": [
                {"forget_set_id": world["forget_set"]["id"]},
                {"worst_case": QUICK_SEARCH, "name": "worst-case 10%"},
            ],
            "methods": [{"method": "ft", "params": QUICK_FT}],
        },
        headers=tenant.headers("submit"),
    )
    assert response.status_code == 202, response.text
    campaign_id = response.json()["id"]

    login(page, tenant.read)
    page.click('nav a[data-nav="campaigns"]')
    page.click(f'#campaigns-table a[href="#/campaigns/{campaign_id}"]')
    page.wait_for_selector("#campaign-table")
    shot(page, "09-campaign-live")
    page.wait_for_selector(".status-finished", timeout=JOB_TIMEOUT_MS)
    page.wait_for_selector("#campaign-table tr.retrain-row")
    names = page.locator("#campaign-table tbody th").all_inner_texts()
    assert {"original", "retrain", "ft"} <= set(names), names
    assert page.locator("#campaign-table thead th", has_text="Avg-Gap").count() == 1
    shot(page, "10-campaign-done")

    jobs = live_api.get(
        "/v1/jobs", params={"kind": "worst_case_search"}, headers=tenant.headers("read")
    ).json()["data"]
    search = next(j for j in jobs if j["campaign_id"] == campaign_id)
    page.goto(f"/#/jobs/{search['id']}")
    objective = page.locator('svg[data-chart="search-objective"] path.series')
    objective.wait_for()
    page.wait_for_function(
        "() => document.querySelectorAll('svg[data-chart=\"search-objective\"] circle.marker').length >= 3"
    )
    shot(page, "11-search-job")

    page.goto(f"/#/forget-sets/{search['result']['forget_set_id']}")
    page.wait_for_selector("#comparison-table tr.retrain-row")
    page.wait_for_selector('svg[data-chart="scores"] rect.bar-rect')
    shot(page, "12-searched-forget-set")
    assert not page.problems, page.problems  # type: ignore[attr-defined]


def test_generative_comparison_shows_sample_grids(
    page: Any, live_api: TestClient, worker_group, sessions, migrated
) -> None:
    """Teacher, gold, SFD and its control side by side with their sample grids; a sample job's grid on its
    page."""
    from tests.conftest import make_tenant
    from tests.workers.test_generative_flow import generative_world

    world = generative_world(live_api, make_tenant(sessions, migrated))
    tenant = world["tenant"]
    sample = run(
        live_api,
        tenant,
        {"kind": "sample", "model_id": world["sfd"]["output_model_id"], "params": {"n_per_class": 4}},
    )
    login(page, tenant.read)
    page.goto(f"/#/forget-sets/{world['class_set']['id']}")
    page.wait_for_selector("#comparison-table tr.retrain-row")
    names = page.locator("#comparison-table tbody th").all_inner_texts()
    assert {"gold (retrain without the class)", "teacher (evaluate)", "sfd", "sfd_control"} == set(names), (
        names
    )
    # Every row's grid is fetched with the key and decoded by the browser.
    page.wait_for_function(
        "() => [...document.querySelectorAll('#comparison-table img.sample-grid')]"
        ".filter((img) => img.complete && img.naturalWidth > 0).length === 4"
    )
    # The comparison fits the window (the table scrolls inside its panel), and a grid enlarges on click.
    assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
    shot(page, "13-generative-comparison")
    page.locator("#comparison-table img.sample-grid").first.click()
    page.wait_for_selector("#lightbox img")
    assert page.evaluate(
        "() => document.querySelector('#lightbox img').getBoundingClientRect().width"
        " > document.querySelector('#comparison-table img.sample-grid').getBoundingClientRect().width"
    )
    shot(page, "13b-grid-enlarged")
    page.keyboard.press("Escape")
    page.wait_for_selector("#lightbox", state="detached")
    page.goto(f"/#/jobs/{sample['id']}")
    page.wait_for_function(
        "() => { const img = document.getElementById('sample-grid'); return img && img.naturalWidth > 0; }"
    )
    shot(page, "14-sample-grid")
    assert not page.problems, page.problems  # type: ignore[attr-defined]
