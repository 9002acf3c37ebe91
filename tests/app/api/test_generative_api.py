"""Generative models through the API (no worker runs these jobs): the catalog entries, uploads of U-Net
checkpoints validated against the torch-free shapes, and what each job kind accepts or refuses."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient

from tests.app.api.test_bad_input_corpus import MLP_CONFIG, mlp_state, safetensors_bytes
from tests.app.api.test_regression_resources import create_diabetes
from tests.app.api.test_resources import assert_problem, create_digits
from tests.workers.engine.diffusion.test_diffusion_jobs import TINY
from workers.engine.diffusion.params import DiffusionModelConfig
from workers.engine.diffusion.shapes import unet_param_shapes

FORGET_CLASS = 3


def unet_state(config: dict[str, Any], *, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    shapes = unet_param_shapes(DiffusionModelConfig.model_validate({**TINY, **config}))
    return {key: rng.normal(0, 0.02, shape).astype(np.float32) for key, (shape, _) in shapes.items()}


def upload(api: TestClient, tenant, dataset_id: str, architecture: str, config: dict, state: dict) -> Any:
    return api.post(
        "/v1/models",
        data={"architecture": architecture, "config": json.dumps(config), "dataset_id": dataset_id},
        files={"weights": ("m.safetensors", safetensors_bytes(state))},
        headers=tenant.headers("submit"),
    )


def forget_set(api: TestClient, tenant, dataset_id: str, spec: dict) -> dict:
    response = api.post(
        "/v1/forget-sets", json={"dataset_id": dataset_id, "spec": spec}, headers=tenant.headers("submit")
    )
    assert response.status_code == 201, response.text
    return response.json()


@pytest.fixture
def world(api: TestClient, tenant) -> dict[str, Any]:
    dataset = create_digits(api, tenant)
    teacher = upload(api, tenant, dataset["id"], "unet_ddpm", TINY, unet_state({}))
    assert teacher.status_code == 201, teacher.text
    generator = upload(api, tenant, dataset["id"], "unet_one_step", {**TINY, "t_init": 440}, unet_state({}))
    assert generator.status_code == 201, generator.text
    classifier = api.post(
        "/v1/models",
        data={"architecture": "mlp", "config": json.dumps(MLP_CONFIG)},
        files={"weights": ("m.safetensors", safetensors_bytes(mlp_state()))},
        headers=tenant.headers("submit"),
    )
    assert classifier.status_code == 201, classifier.text
    return {
        "dataset": dataset,
        "teacher": teacher.json(),
        "generator": generator.json(),
        "classifier": classifier.json(),
        "class_set": forget_set(api, tenant, dataset["id"], {"kind": "class", "class": FORGET_CLASS}),
        "random_set": forget_set(api, tenant, dataset["id"], {"kind": "random", "fraction": 0.1, "seed": 1}),
    }


def submit(api: TestClient, tenant, body: dict) -> Any:
    return api.post("/v1/jobs", json=body, headers=tenant.headers("submit"))


def test_catalog_lists_the_generative_architectures_and_methods(api: TestClient, tenant) -> None:
    architectures = {
        a["name"]: a for a in api.get("/v1/architectures", headers=tenant.headers("read")).json()
    }
    assert architectures["unet_ddpm"]["task_types"] == ["generative"]
    assert "t_init" in json.dumps(architectures["unet_one_step"])
    methods = {m["name"]: m for m in api.get("/v1/methods", headers=tenant.headers("read")).json()}
    for name, kind in (
        ("ddpm", "train"),
        ("ddpm_retrain", "retrain"),
        ("sfd", "unlearn"),
        ("sfd_control", "unlearn"),
    ):
        assert methods[name]["task_types"] == ["generative"], name
        assert methods[name]["job_kind"] == kind, name


def test_uploads_are_checked_against_the_unet_shapes(api: TestClient, tenant, world) -> None:
    teacher = world["teacher"]
    assert teacher["arch_config"]["image_channels"] == 1 and teacher["arch_config"]["image_size"] == 8
    assert teacher["arch_config"]["num_classes"] == 10  # derived from the dataset
    dataset_id = world["dataset"]["id"]
    wider = unet_state({"base_channels": 16, "norm_groups": 4})
    assert_problem(upload(api, tenant, dataset_id, "unet_ddpm", TINY, wider), 422)
    broken = {**unet_state({}), "head.weight": np.full((1, 8, 3, 3), np.nan, dtype=np.float32)}
    assert_problem(upload(api, tenant, dataset_id, "unet_ddpm", TINY, broken), 422)
    # A generator needs its t_init, inside the schedule.
    assert_problem(upload(api, tenant, dataset_id, "unet_one_step", TINY, unet_state({})), 422)
    late = {**TINY, "t_init": 1000}
    assert_problem(upload(api, tenant, dataset_id, "unet_one_step", late, unet_state({})), 422)


def test_train_runs_ddpm_on_an_image_dataset(api: TestClient, tenant, world) -> None:
    body = {
        "kind": "train",
        "dataset_id": world["dataset"]["id"],
        "architecture": "unet_ddpm",
        "arch_config": TINY,
    }
    response = submit(api, tenant, {**body, "params": {"steps": 10}})
    assert response.status_code == 202, response.text
    job = response.json()
    assert job["method"] == "ddpm" and job["params"]["steps"] == 10 and job["params"]["cond_drop_prob"] == 0.1
    assert_problem(submit(api, tenant, {**body, "method": "train"}), 422, "unexpected-method")
    assert_problem(submit(api, tenant, {**body, "params": {"epochs": 3}}), 422, "invalid-params")
    diabetes = create_diabetes(api, tenant)
    refused = submit(api, tenant, {**body, "dataset_id": diabetes["id"]})
    assert_problem(refused, 422, "task-mismatch")


def test_unlearning_a_generative_model_needs_a_class_forget_set(api: TestClient, tenant, world) -> None:
    teacher, class_set = world["teacher"]["id"], world["class_set"]["id"]
    body = {"kind": "unlearn", "model_id": teacher, "forget_set_id": class_set, "method": "sfd"}
    response = submit(api, tenant, {**body, "params": {"steps": 5}})
    assert response.status_code == 202, response.text
    job = response.json()
    assert (
        job["params"]["forget_class"] is None and job["params"]["evaluation"]["samples"]["forget_samples"] > 0
    )
    control = submit(api, tenant, {**body, "method": "sfd_control"})
    assert control.status_code == 202, control.text
    for change, code in (
        ({"forget_set_id": world["random_set"]["id"]}, "forget-set-kind"),
        ({"params": {"forget_class": 4}}, "invalid-params"),
        ({"params": {"override_class": FORGET_CLASS}}, "invalid-params"),
        ({"method": "ft"}, "task-mismatch"),
        ({"method": None}, "missing-method"),
        ({"model_id": world["generator"]["id"]}, "task-mismatch"),  # SFD starts from a multi-step teacher
        ({"model_id": world["classifier"]["id"]}, "task-mismatch"),  # SFD on a classifier
    ):
        assert_problem(submit(api, tenant, {**body, **change}), 422, code)


def test_gold_retrain_and_evaluation_of_generative_models(api: TestClient, tenant, world) -> None:
    base = {"model_id": world["teacher"]["id"], "forget_set_id": world["class_set"]["id"]}
    # An uploaded teacher has no recorded recipe: the gold retrain needs one.
    assert_problem(submit(api, tenant, {"kind": "retrain", **base}), 422, "missing-recipe")
    retrain = submit(api, tenant, {"kind": "retrain", **base, "params": {"recipe": {"steps": 10}}})
    assert retrain.status_code == 202, retrain.text
    assert retrain.json()["method"] == "ddpm_retrain"
    evaluate = submit(
        api, tenant, {"kind": "evaluate", **base, "params": {"samples": {"forget_samples": 10}}}
    )
    assert evaluate.status_code == 202, evaluate.text
    assert evaluate.json()["params"]["samples"]["forget_samples"] == 10
    on_classifier = {
        "kind": "evaluate",
        "model_id": world["classifier"]["id"],
        "forget_set_id": base["forget_set_id"],
    }
    assert_problem(submit(api, tenant, {**on_classifier, "params": {"seed": 1}}), 422, "invalid-params")
    assert_problem(
        submit(api, tenant, {"kind": "evaluate", **base, "forget_set_id": world["random_set"]["id"]}),
        422,
        "forget-set-kind",
    )


def test_sample_jobs_take_a_generative_model_only(api: TestClient, tenant, world) -> None:
    ok = submit(
        api, tenant, {"kind": "sample", "model_id": world["generator"]["id"], "params": {"classes": [1, 2]}}
    )
    assert ok.status_code == 202, ok.text
    assert ok.json()["params"]["n_per_class"] == 8 and ok.json()["method"] is None
    body = {"kind": "sample", "model_id": world["teacher"]["id"]}
    for change, code in (
        ({"model_id": world["classifier"]["id"]}, "missing-dataset"),
        ({"forget_set_id": world["class_set"]["id"]}, "unexpected-field"),
        ({"method": "sfd"}, "unexpected-method"),
        ({"params": {"classes": [1, 1]}}, "invalid-params"),
        ({"params": {"n_per_class": 0}}, "invalid-params"),
    ):
        assert_problem(submit(api, tenant, {**body, **change}), 422, code)


def test_classifier_only_kinds_refuse_generative_models(api: TestClient, tenant, world) -> None:
    teacher, class_set = world["teacher"]["id"], world["class_set"]["id"]
    for body in (
        {"kind": "prune", "model_id": teacher},
        {"kind": "worst_case_search", "model_id": teacher},
        {"kind": "audit", "model_id": teacher, "forget_set_id": class_set, "params": {"method": "ft"}},
    ):
        response = submit(api, tenant, body)
        assert response.status_code == 422, (body, response.text)
    campaign = api.post(
        "/v1/campaigns",
        json={
            "name": "gen",
            "model_id": teacher,
            "methods": [{"method": "sfd"}],
            "forget_sets": [{"forget_set_id": class_set}],
            "seeds": [0],
        },
        headers=tenant.headers("submit"),
    )
    assert_problem(campaign, 422, "task-mismatch")


def test_grid_routes_answer_404_without_a_grid(api: TestClient, tenant, world) -> None:
    job = submit(api, tenant, {"kind": "sample", "model_id": world["teacher"]["id"]}).json()
    headers = tenant.headers("read")
    assert_problem(api.get(f"/v1/jobs/{job['id']}/grid.png", headers=headers), 404, "grid-not-found")
    assert_problem(api.get(f"/v1/jobs/{job['id']}/samples.npz", headers=headers), 404, "samples-not-found")
    model_grid = api.get(f"/v1/models/{world['teacher']['id']}/samples.png", headers=headers)
    assert_problem(model_grid, 404, "grid-not-found")


def test_steps_ceiling_bounds_generative_jobs(migrated, tenant, world) -> None:
    from app.main import create_app
    from tests.conftest import RecordingPublisher

    ceiling = 50
    limited = migrated.model_copy(update={"max_job_steps": ceiling})
    with TestClient(create_app(limited, publisher=RecordingPublisher())) as api:
        train = {"kind": "train", "dataset_id": world["dataset"]["id"], "architecture": "unet_ddpm"}
        problem = assert_problem(
            submit(api, tenant, {**train, "params": {"steps": ceiling + 1}}), 422, "steps-over-limit"
        )
        assert (
            problem["errors"][0]["loc"] == ["params", "steps"] and "LETHE_MAX_JOB_STEPS" in problem["detail"]
        )
        # Nested: the default sampler of an evaluation takes 100 steps.
        evaluate = {
            "kind": "evaluate",
            "model_id": world["teacher"]["id"],
            "forget_set_id": world["class_set"]["id"],
        }
        problem = assert_problem(submit(api, tenant, evaluate), 422, "steps-over-limit")
        assert problem["errors"][0]["loc"] == ["params", "sampler", "steps"]
        accepted = submit(api, tenant, {**evaluate, "params": {"sampler": {"steps": ceiling}}})
        assert accepted.status_code == 202, accepted.text


def test_recovery_audits_of_generative_models_are_accepted(api: TestClient, tenant, world) -> None:
    """A generator audited against teachers of its U-Net is accepted (it was 422 task-mismatch); controls of
    another network, index forget sets and bad params are refused before anything is written."""
    teacher, generator, class_set = world["teacher"]["id"], world["generator"]["id"], world["class_set"]["id"]
    controls = {"original_model_id": teacher, "retrain_model_id": teacher}
    body = {"kind": "recovery", "model_id": generator, "forget_set_id": class_set}
    accepted = submit(api, tenant, {**body, "params": {**controls, "relearn_steps": [5]}})
    assert accepted.status_code == 202, accepted.text
    params = accepted.json()["params"]
    assert params["original_model_id"] == teacher and params["relearn_steps"] == [0, 5]
    assert params["evaluation"]["seed"] == 0 and params["relearn_lr"] == 2e-4  # the generative defaults
    # A teacher is audited too (against itself here: a no-op's audit).
    assert submit(api, tenant, {**body, "model_id": teacher, "params": controls}).status_code == 202
    other = upload(
        api,
        tenant,
        world["dataset"]["id"],
        "unet_ddpm",
        {**TINY, "base_channels": 16},
        unet_state({"base_channels": 16}),
    )
    assert other.status_code == 201, other.text
    wider = {**controls, "retrain_model_id": other.json()["id"]}
    assert_problem(submit(api, tenant, {**body, "params": wider}), 422, "control-mismatch")
    classifier = {**controls, "retrain_model_id": world["classifier"]["id"]}
    assert_problem(submit(api, tenant, {**body, "params": classifier}), 422, "control-mismatch")
    indices = {**body, "forget_set_id": world["random_set"]["id"], "params": controls}
    assert_problem(submit(api, tenant, indices), 422, "forget-set-kind")
    bad = {**body, "params": {**controls, "evaluation": {"sampler": {"steps": 0}}}}
    assert_problem(submit(api, tenant, bad), 422, "invalid-params")
    # Uploaded: no producing job to find the original in.
    assert_problem(submit(api, tenant, body), 422, "missing-original")


def test_deletion_requests_refuse_recovery_rules_on_generative_models(api: TestClient, tenant, world) -> None:
    policy = api.post(
        "/v1/policies",
        json={"name": "gen-recovery", "rules": [{"metric": "transform.int4.gap_to_control", "max": 5}]},
        headers=tenant.headers("admin"),
    )
    assert policy.status_code == 201, policy.text
    response = api.post(
        "/v1/deletion-requests",
        json={
            "model_id": world["teacher"]["id"],
            "forget_set_id": world["class_set"]["id"],
            "method": "sfd",
            "params": {"steps": 2},
            "retrain_params": {"recipe": {"steps": 2, "batch_size": 8}},
            "seed": 1,
            "policy_id": policy.json()["id"],
        },
        headers=tenant.headers("submit"),
    )
    assert "identity control" in assert_problem(response, 422, "task-mismatch")["detail"]
