"""Params models: reference defaults, validation, and that the API-facing modules stay torch-free."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import BaseModel, ValidationError

from workers.engine.diffusion.params import (
    DDPMTrainParams,
    DiffusionModelConfig,
    SampleParams,
    SFDParams,
)

REPO_ROOT = Path(__file__).resolve().parents[4]


def test_sfd_defaults_follow_the_reference_config() -> None:
    params = SFDParams()
    assert (params.alpha, params.t_min, params.t_init, params.t_max) == (1.2, 38, 440, 712)
    assert (params.forget_class, params.override_class) == (0, 1)
    assert (params.fake_remain_coef, params.generator_remain_coef) == (1.0, 1.0)
    assert (params.beta1, params.beta2, params.adam_eps, params.grad_clip_value) == (0.0, 0.999, 1e-8, 1.0)
    assert params.forgets


# cifar10_sfd.yml (blindspot_sfd.md §2.4) and the DDPM config (§2.1); the 'lethe' values are the documented
# scaled-down defaults (params.py's constants, README's per-class SFD table).
SFD_PRESETS = {
    "reference": {
        "steps": 50_000,
        "batch_size": 128,
        "fake_lr": 1e-5,
        "generator_lr": 1e-5,
        "fake_forget_coef": 0.01,
        "generator_forget_coef": 0.01,
        "ema_decay": 0.9999,
    },
    "lethe": {
        "steps": 300,
        "batch_size": 32,
        "fake_lr": 2e-4,
        "generator_lr": 2e-4,
        "fake_forget_coef": 0.05,
        "generator_forget_coef": 0.05,
        "ema_decay": 0.99,
    },
}
DDPM_PRESETS = {
    "reference": {"steps": 800_000, "batch_size": 128, "ema_decay": 0.9999, "ema_warmup": False},
    "lethe": {"steps": 1500, "batch_size": 64, "ema_decay": 0.999, "ema_warmup": True},
}


@pytest.mark.parametrize("preset", ["lethe", "reference"])
def test_generative_presets_resolve_to_the_documented_values(preset: str) -> None:
    for model, table in ((SFDParams, SFD_PRESETS), (DDPMTrainParams, DDPM_PRESETS)):
        params = model.model_validate({} if preset == "lethe" else {"preset": preset})
        assert {key: getattr(params, key) for key in table[preset]} == table[preset], model.__name__
        assert params.model_validate(params.model_dump()) == params  # a dump validates back unchanged


def test_explicit_fields_win_over_the_generative_preset() -> None:
    params = SFDParams(preset="reference", steps=7, generator_forget_coef=0.2)
    assert (params.steps, params.generator_forget_coef, params.fake_forget_coef) == (7, 0.2, 0.01)
    with pytest.raises(ValidationError):
        SFDParams.model_validate({"preset": "paper"})


def test_every_generative_method_schema_offers_the_presets() -> None:
    from workers.engine.diffusion.job_params import SFDJobParams

    for model in (SFDJobParams, DDPMTrainParams):
        properties = model.model_json_schema()["properties"]
        assert properties["preset"]["default"] == "lethe"
        assert "reference" in properties["preset"]["description"]
        for name in SFD_PRESETS["reference"] if model is SFDJobParams else DDPM_PRESETS["reference"]:
            assert "'reference'" in properties[name]["description"], name


def test_distill_only_zeroes_both_forget_coefficients_and_nothing_else() -> None:
    params = SFDParams(steps=7, generator_lr=3e-4)
    control = params.distill_only()
    assert (control.fake_forget_coef, control.generator_forget_coef) == (0.0, 0.0)
    assert not control.forgets
    assert control.model_dump(exclude={"fake_forget_coef", "generator_forget_coef"}) == params.model_dump(
        exclude={"fake_forget_coef", "generator_forget_coef"}
    )


def test_model_config_defaults_keep_the_reference_schedule() -> None:
    config = DiffusionModelConfig()
    assert (config.timesteps, config.beta_start, config.beta_end) == (1000, 1e-4, 0.02)
    assert DDPMTrainParams().cond_drop_prob == 0.1


@pytest.mark.parametrize(
    ("model", "values"),
    [
        (SFDParams, {"forget_class": 2, "override_class": 2}),
        (SFDParams, {"t_min": 700, "t_max": 700}),
        (SFDParams, {"extra": 1}),
        (DiffusionModelConfig, {"image_size": 10, "channel_mults": [1, 2, 2]}),
        (DiffusionModelConfig, {"base_channels": 12, "norm_groups": 8}),
        (DDPMTrainParams, {"exclude_classes": [1, 1]}),
        (SampleParams, {"guidance_scale": -1.0}),
    ],
)
def test_invalid_params_are_refused(model: type[BaseModel], values: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        model.model_validate(values)


def test_params_png_metrics_and_shapes_do_not_import_torch() -> None:
    code = (
        "import sys\n"
        "import numpy as np\n"
        "import workers.engine.diffusion.params as p, workers.engine.diffusion.png as g\n"
        "import workers.engine.diffusion.metrics as m, workers.engine.diffusion.shapes as s\n"
        "for model in (p.DiffusionModelConfig, p.DDPMTrainParams, p.SampleParams, p.SFDParams,\n"
        "              p.ClassifierParams, p.GenerativeEvalParams):\n"
        "    model.model_json_schema(); model.model_validate({})\n"
        "g.grid_png(np.zeros((2, 1, 8, 8)), 2)\n"
        "m.frechet_distance(np.eye(3), np.eye(3)); s.unet_param_shapes(p.DiffusionModelConfig())\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
    )
    completed = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120, check=False
    )
    assert completed.returncode == 0, completed.stderr
