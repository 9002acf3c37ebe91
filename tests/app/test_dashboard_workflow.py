"""The whole workflow from the dashboard, in headless Chromium, for a tenant that starts with nothing.

Upload a dataset (a bad file first: the intake's problem shows inline), train a model through the form
generated from the train method's params schema (empty fields = the defaults shown), create a random forget
set from the spec form, start a campaign, publish a policy, file a deletion request and download its signed
report (JSON, HTML, PDF) once the page has checked its signature. Also: a cancelled job's progress says
cancelled, a failed job's error reads as text without server paths, and two jobs differing only in params
show different digests with a diff. Tiny data (3 Gaussian blobs, 16 features) keeps every job to seconds on
the embedded worker. Screenshots go to ``$LETHE_SCREENSHOT_DIR`` (default ``var/screenshots/``).
"""

from __future__ import annotations

import io
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient

from tests.app.test_dashboard_browser import JOB_TIMEOUT_MS, SCREENSHOTS, page, server_url  # noqa: F401
from tests.workers.test_job_flow import LONG_RECIPE

pytestmark = [pytest.mark.browser, pytest.mark.slow, pytest.mark.broker]


def blobs_npz() -> bytes:
    """Three separable Gaussian blobs: a model learns them in one epoch, so every job takes seconds."""
    rng = np.random.default_rng(0)
    centres = rng.normal(0, 3, size=(3, 16)).astype(np.float32)

    def split(n: int) -> tuple[np.ndarray, np.ndarray]:
        y = np.arange(n) % 3
        return (centres[y] + rng.normal(0, 1, size=(n, 16))).astype(np.float32), y.astype(np.int64)

    x_train, y_train = split(240)
    x_test, y_test = split(90)
    buffer = io.BytesIO()
    np.savez(buffer, x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)
    return buffer.getvalue()


def shot(tab: Any, name: str) -> None:
    tab.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=True)


def wait_job(tab: Any, timeout_ms: int = JOB_TIMEOUT_MS) -> str:
    tab.wait_for_selector(
        '#job-status [data-status="succeeded"], #job-status [data-status="failed"]', timeout=timeout_ms
    )
    return str(tab.get_attribute("#job-status [data-status]", "data-status"))


def test_workflow_from_an_empty_service(
    page: Any,  # noqa: F811
    live_api: TestClient,
    worker_group,
    sessions,
    migrated,
    tmp_path: Path,
) -> None:
    from tests.conftest import make_tenant

    tenant = make_tenant(sessions, migrated)
    started = time.monotonic()
    page.goto("/")
    page.fill("#api-key", tenant.admin)
    page.click("#login-button")
    page.wait_for_selector("#jobs-table")

    # Upload: a pickle is refused by the intake and the problem shows inline; then the real .npz.
    page.click('nav a[data-nav="data"]')
    page.wait_for_selector("#dataset-upload-form")
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"\x80\x04\x95 not an npz")
    page.set_input_files("#dataset-file", str(bad))
    page.click("#dataset-upload-button")
    page.wait_for_selector("#dataset-upload-error:not([hidden])")
    assert "4" in page.inner_text("#dataset-upload-error")[:1]  # a 4xx problem, in words
    shot(page, "w01-upload-refused")
    page.problems.clear()  # type: ignore[attr-defined]  # the refused upload's 4xx is expected
    assert "pickle" in page.inner_text("#dataset-upload-error")
    # The good file goes through the resumable upload API in parts (the threshold lowered for a tiny file).
    requests: list[str] = []
    page.on("request", lambda request: requests.append(f"{request.method} {request.url}"))
    page.evaluate(
        """async () => { const { CHUNK } = await import("/dashboard/js/api.js");
        CHUNK.threshold = 4096; CHUNK.part = 8192; }"""
    )
    good = tmp_path / "blobs.npz"
    good.write_bytes(blobs_npz())
    page.set_input_files("#dataset-file", str(good))
    page.fill("#dataset-name", "blobs")
    page.click("#dataset-upload-button")
    page.locator("#datasets-table td", has_text="blobs").first.wait_for()
    assert page.is_hidden("#dataset-upload-error")
    parts = [r for r in requests if r.startswith("PUT ") and "/v1/uploads/" in r]
    assert len(parts) == -(-good.stat().st_size // 8192), requests
    assert any(r.endswith("/complete") for r in requests), requests

    # A model upload (single request): safetensors + the architecture's config form.
    from tests.app.api.test_resources import model_weights

    weights = tmp_path / "mlp.safetensors"
    weights.write_bytes(model_weights("mlp", {"input_shape": [16], "hidden": [8], "num_classes": 3}))
    page.set_input_files("#model-file", str(weights))
    page.select_option("#model-architecture", "mlp")
    page.fill("#model-config-input_shape", "16")
    page.fill("#model-config-hidden", "8")
    page.fill("#model-config-num_classes", "3")
    page.fill("#model-name", "uploaded-mlp")
    page.click("#model-upload-button")
    page.locator("#models-table td", has_text="uploaded-mlp").first.wait_for()
    shot(page, "w02-dataset")

    # Train through the generated form: kinds from /v1/job-kinds, the train method's schema as fields.
    page.click('nav a[data-nav="submit"]')
    page.select_option("#submit-kind", "train")
    page.select_option("#submit-architecture", "mlp")
    page.wait_for_selector("#submit-params-form [data-param=preset]")
    # An empty form previews as {} and every field shows its documented default.
    assert page.inner_text("#submit-params-preview").strip() == "{}"
    page.click("#submit-params-form details.nested summary")
    assert page.get_attribute("#submit-params-recipe-epochs", "placeholder") not in (None, "")
    page.fill("#submit-params-recipe-epochs", "2")
    page.fill("#submit-params-recipe-batch_size", "32")
    page.fill("#submit-arch-config-hidden", "16")
    page.fill("#submit-seed", "1")
    preview = page.inner_text("#submit-params-preview")
    assert '"epochs": 2' in preview and '"batch_size": 32' in preview, preview
    # A value outside the schema's range is marked on its field before anything is sent.
    page.fill("#submit-params-recipe-lr", "-1")
    page.click("#submit-button")
    page.wait_for_selector("#submit-error:not([hidden])")
    assert "lr" in page.inner_text("#submit-error")
    shot(page, "w03-generated-form")
    page.fill("#submit-params-recipe-lr", "")
    page.wait_for_selector("#submit-params-recipe-lr:not(.invalid)")
    page.click("#submit-button")
    page.wait_for_url("**/#/jobs/*")
    train_id = page.url.rsplit("/", 1)[-1]
    assert wait_job(page) == "succeeded"
    train = live_api.get(f"/v1/jobs/{train_id}", headers=tenant.headers("read")).json()
    assert train["params"]["recipe"]["epochs"] == 2 and train["arch_config"]["hidden"] == [16], train
    model_id = train["output_model_id"]

    # A random forget set from the spec form.
    page.click('nav a[data-nav="forget-sets"]')
    page.wait_for_selector("#forget-set-form")
    page.select_option("#fs-kind", "random")
    page.fill("#fs-spec-fraction", "0.1")
    page.fill("#fs-name", "random-10")
    page.click("#fs-button")
    page.wait_for_selector('#forget-sets-table a:text-is("random-10")')
    shot(page, "w04-forget-set")
    forget_set = live_api.get("/v1/forget-sets", headers=tenant.headers("read")).json()["data"][0]
    assert forget_set["size"] == 24, forget_set

    # A campaign: ft with one epoch on that forget set, one seed; followed to the end on its page.
    page.click('nav a[data-nav="campaigns"]')
    page.wait_for_selector("#campaign-form")
    page.fill("#campaign-name", "blobs-ft")
    page.select_option("#campaign-model", model_id)
    page.select_option("#campaign-forget-sets", [forget_set["id"]])
    page.check("#campaign-method-ft")
    page.fill("#campaign-ft-form [data-param=epochs]", "1")
    shot(page, "w05-campaign-form")
    page.click("#campaign-button")
    page.wait_for_selector("#campaign-table")
    page.wait_for_selector(".status-finished", timeout=JOB_TIMEOUT_MS)
    page.wait_for_selector("#campaign-table tr.retrain-row")
    shot(page, "w06-campaign-done")

    # The trade-off chart: hover values, a legend entry hides its series, a dragged rectangle zooms in.
    chart = 'svg[data-chart="tradeoff"]'
    point = page.locator(f"{chart} .point-highlight").first.bounding_box()
    page.mouse.move(point["x"] + point["width"] / 2, point["y"] + point["height"] / 2)
    page.wait_for_selector(".chart-readout:not([hidden])")
    assert "retrain" in page.inner_text(".chart-readout")
    toggle = page.locator("button.legend-toggle", has_text="retrain").first
    toggle.click()
    assert page.locator(f"{chart} .point-highlight.series-hidden").count() >= 1
    toggle.click()
    assert page.locator(f"{chart} .point-highlight.series-hidden").count() == 0
    box = page.locator(chart).bounding_box()
    page.mouse.move(box["x"] + box["width"] * 0.3, box["y"] + box["height"] * 0.3)
    page.mouse.down()
    page.mouse.move(box["x"] + box["width"] * 0.8, box["y"] + box["height"] * 0.8, steps=4)
    page.mouse.up()
    page.wait_for_selector(".zoom-reset")
    page.click(".zoom-reset")
    page.wait_for_selector(".zoom-reset", state="detached")

    # A policy, then a deletion request under it; its report is verified in the page and downloaded.
    page.click('nav a[data-nav="compliance"]')
    page.wait_for_selector("#policy-form")
    page.fill("#policy-name", "ua-near-retrain")
    page.fill("#rule0-metric", "UA")
    page.select_option("#rule0-relative_to", '"retrain"')
    page.fill("#rule0-max_abs_gap", "50")
    page.click("#policy-button")
    page.wait_for_selector('#policies-table td:text-is("ua-near-retrain")')
    page.wait_for_selector("#dr-form")
    page.fill("#dr-name", "subject-1")
    page.select_option("#dr-model", model_id)
    page.select_option("#dr-forget-set", forget_set["id"])
    page.select_option("#dr-method", "ft")
    # Defaults follow the preset: ft's batch_size is null (inherited) under 'lethe', 256 under 'reference'.
    assert page.get_attribute("#dr-params-batch_size", "placeholder") == "null (default)"
    page.select_option("#dr-params-preset", '"reference"')
    assert page.get_attribute("#dr-params-batch_size", "placeholder") == "256"
    page.select_option("#dr-params-preset", "")
    page.fill("#dr-params-form [data-param=epochs]", "1")
    page.fill("#dr-seed", "2")
    shot(page, "w07-deletion-request-form")
    page.click("#dr-button")
    page.wait_for_url("**/#/deletion-requests/*")
    page.wait_for_selector("#reports-table", timeout=JOB_TIMEOUT_MS)
    page.wait_for_selector("#reports-table [data-verified]")
    assert page.get_attribute("#reports-table [data-verified]", "data-verified") == "true", page.inner_text(
        "#reports-table"
    )
    shot(page, "w08-report")
    for fmt, magic in (("JSON", b"{"), ("HTML", b"<!doctype html"), ("PDF", b"%PDF")):
        with page.expect_download() as info:
            page.click(f'#reports-table button[data-download="{fmt}"]')
        saved = tmp_path / info.value.suggested_filename
        info.value.save_as(saved)
        assert saved.read_bytes()[: len(magic)].lower() == magic.lower(), (fmt, saved.read_bytes()[:20])

    # Two jobs that differ only in params: different digests, and the diff names the changed field.
    common = {"kind": "unlearn", "method": "ft", "model_id": model_id, "seed": 9}
    common["forget_set_id"] = forget_set["id"]
    ids = []
    for epochs in (1, 2):
        response = live_api.post(
            "/v1/jobs", json={**common, "params": {"epochs": epochs}}, headers=tenant.headers("submit")
        )
        assert response.status_code == 202, response.text
        ids.append(response.json()["id"])
    # A cancelled job's progress says so (a long train, cancelled at once).
    response = live_api.post(
        "/v1/jobs",
        json={
            "kind": "train",
            "dataset_id": train["dataset_id"],
            "architecture": "mlp",
            "params": {"recipe": LONG_RECIPE},
            "seed": 4,
        },
        headers=tenant.headers("submit"),
    )
    long_id = response.json()["id"]
    assert live_api.post(f"/v1/jobs/{long_id}/cancel", headers=tenant.headers("submit")).status_code == 202
    page.click('nav a[data-nav="jobs"]')
    for job_id in ids:
        page.wait_for_selector(f'#jobs-table tr[data-job-id="{job_id}"]')
    digests = [
        page.get_attribute(f'tr[data-job-id="{job_id}"] .params-digest', "data-digest") for job_id in ids
    ]
    assert digests[0] != digests[1], digests
    page.click(f'#jobs-table tr[data-job-id="{ids[1]}"] .params-digest summary')
    diff = page.inner_text(f'#jobs-table tr[data-job-id="{ids[1]}"] .params-diff')
    assert "epochs" in diff, diff
    page.wait_for_selector(f'tr[data-job-id="{long_id}"][data-status="cancelled"]', timeout=60_000)
    label = page.inner_text(f'#jobs-table tr[data-job-id="{long_id}"] .bar-label')
    assert label.startswith("cancelled"), label
    shot(page, "w09-jobs-digests")

    # A failed job's error: the code as a heading, the detail as text, no traceback, no server path.
    shown = page.evaluate(
        """async () => {
            const { errorText } = await import("/dashboard/js/jobinfo.js");
            return errorText({code: "internal-error",
              detail: "FileNotFoundError: [Errno 2] No such file: '/srv/lethe/var/artifacts/t/ab/cd.npz'",
              trace: "Traceback (most recent call last):\\n  File \\"/srv/lethe/workers/jobrunner.py\\""});
        }"""
    )
    assert shown["title"] == "Internal error", shown
    assert "/srv" not in shown["text"] and "Traceback" not in shown["text"], shown
    assert "cd.npz" in shown["text"], shown
    assert not page.problems, page.problems  # type: ignore[attr-defined]
    print(f"dashboard workflow took {time.monotonic() - started:.1f} s; screenshots in {SCREENSHOTS}")


def registry_models() -> list[tuple[str, Any]]:
    """Every params / config model whose JSON schema the API serves for forms (architectures aside)."""
    from workers.engine.datasets import DATASETS
    from workers.engine.job_kinds import JOB_KINDS
    from workers.engine.methods import METHODS
    from workers.engine.task_types import TaskType

    models = [(f"method {m.name}", m.params_model) for m in METHODS]
    models += [(f"builtin {d.name}", d.config_model) for d in DATASETS]
    for spec in JOB_KINDS:
        for task in TaskType:
            if (model := spec.params_model(task)) is not None:
                models.append((f"kind {spec.name}/{task.value}", model))
    return models


FORM_ROUND_TRIP = """async (schemas) => {
  const { schemaForm } = await import("/dashboard/js/schemaform.js");
  const out = {};
  for (const [name, schema] of Object.entries(schemas)) {
    const form = schemaForm(schema, schema);
    document.body.append(form.el);
    const empty = form.value();
    const defaults = {};
    for (const [key, prop] of Object.entries(schema.properties || {})) {
      const value = prop.presets ? prop.presets.lethe : prop.default;
      if (value !== undefined) defaults[key] = value;
    }
    form.fill(defaults);
    out[name] = { empty, filled: form.value(), fields: form.controls.size,
      properties: Object.keys(schema.properties || {}).length };
    form.el.remove();
  }
  return out;
}"""


def test_generated_forms_cover_every_registry_schema(page: Any) -> None:  # noqa: F811
    """Every schema the registries serve renders one control per property; the empty form sends nothing
    (the server's defaults apply), and a form filled with the documented defaults validates to the same
    params as the empty one."""
    models = dict(registry_models())
    page.goto("/")
    page.wait_for_selector("#login-form")
    result = page.evaluate(
        FORM_ROUND_TRIP, {name: model.model_json_schema() for name, model in models.items()}
    )
    assert len(result) == len(models) > 20, sorted(result)
    checked = 0
    for name, model in models.items():
        shown = result[name]
        assert shown["fields"] == shown["properties"], (name, shown)
        assert shown["empty"] == {}, (name, shown)
        required = model.model_json_schema().get("required", [])
        if required:  # e.g. an audit's method: nothing to compare against without it
            continue
        assert model.model_validate(shown["filled"]) == model.model_validate({}), (name, shown["filled"])
        checked += 1
    assert checked > 20, checked
    assert not page.problems, page.problems  # type: ignore[attr-defined]
