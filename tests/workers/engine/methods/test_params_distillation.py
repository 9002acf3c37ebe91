"""Parameter models of iu / bad_teacher / scrub / blindspot: reference defaults and validation."""

from __future__ import annotations

import math

import pytest
from pydantic import BaseModel, ValidationError

from workers.engine.methods import METHODS
from workers.engine.methods.params_distillation import (
    BadTeacherParams,
    BlindspotParams,
    IUParams,
    SCRUBParams,
)


def test_registered_as_unlearn_methods() -> None:
    for name, model in [
        ("iu", IUParams),
        ("bad_teacher", BadTeacherParams),
        ("scrub", SCRUBParams),
        ("blindspot", BlindspotParams),
    ]:
        spec = METHODS.get(name)
        assert spec.job_kind == "unlearn" and spec.params_model is model


def test_reference_preset() -> None:
    iu = IUParams(preset="reference")
    assert (iu.hvp, iu.alpha, iu.woodfisher_samples, iu.batch_size) == ("reference", None, 1000, 256)
    assert iu.step == "fixed"
    bad = BadTeacherParams(preset="reference")
    assert (bad.retain_fraction, bad.temperature, bad.lr, bad.epochs, bad.batch_size, bad.kl_reduction) == (
        0.3,
        1.0,
        1e-4,
        1,
        256,
        "mean",
    )
    scrub = SCRUBParams(preset="reference")
    # WC's m_steps = 1 on a 0-based epoch counter: two max-only epochs in Lethe's 1-based numbering.
    assert (scrub.temperature, scrub.alpha, scrub.gamma, scrub.msteps, scrub.epochs) == (
        4.0,
        0.001,
        0.99,
        2,
        10,
    )
    assert (scrub.schedule, scrub.lr, scrub.lr_decay_epochs, scrub.lr_decay_rate) == (
        "worstcase",
        0.01,
        [4, 6, 10],
        0.1,
    )
    assert (scrub.momentum, scrub.weight_decay, scrub.batch_size, scrub.max_lr) == (0.9, 5e-4, 256, None)
    blind = BlindspotParams(preset="reference")
    assert (blind.batch_size, blind.blindspot_batch_size, blind.augment) == (256, 256, False)
    assert (blind.blindspot_epochs, blind.blindspot_lr, blind.epochs, blind.lr, blind.beta) == (
        2,
        0.01,
        1,
        1e-3,
        50.0,
    )
    assert blind.output_distance == "kl"


@pytest.mark.parametrize(
    ("model", "bad"),
    [
        (IUParams, {"alpha": math.nan}),
        (IUParams, {"alpha": -1.0}),
        (IUParams, {"alpha": math.inf}),
        (IUParams, {"damping": 0.0}),
        (IUParams, {"cg_tolerance": 1.0}),
        (IUParams, {"hvp": "exact"}),
        (IUParams, {"lissa_scale": -2.0}),
        (IUParams, {"woodfisher_samples": 0}),
        (BadTeacherParams, {"retain_fraction": 0.0}),
        (BadTeacherParams, {"retain_fraction": 1.5}),
        (BadTeacherParams, {"temperature": math.nan}),
        (BadTeacherParams, {"lr": -1e-4}),
        (BadTeacherParams, {"kl_reduction": "sum"}),
        (SCRUBParams, {"alpha": -0.1}),
        (SCRUBParams, {"gamma": math.inf}),
        (SCRUBParams, {"temperature": 0.0}),
        (SCRUBParams, {"msteps": 3, "epochs": 2}),
        (SCRUBParams, {"max_lr": math.nan}),
        (SCRUBParams, {"momentum": 1.0}),
        (BlindspotParams, {"beta": -1.0}),
        (BlindspotParams, {"beta": math.nan}),
        (BlindspotParams, {"blindspot_epochs": 0}),
        (BlindspotParams, {"output_distance": "cosine"}),
        (BlindspotParams, {"lr": 100.0}),
    ],
)
def test_invalid_values_are_rejected(model: type[BaseModel], bad: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        model.model_validate(bad)


@pytest.mark.parametrize("model", [IUParams, BadTeacherParams, SCRUBParams, BlindspotParams])
def test_unknown_keys_are_rejected_and_every_field_is_described(model: type[BaseModel]) -> None:
    with pytest.raises(ValidationError):
        model.model_validate({"unexpected": 1})
    for name, info in model.model_fields.items():
        assert info.description, f"{model.__name__}.{name}"
