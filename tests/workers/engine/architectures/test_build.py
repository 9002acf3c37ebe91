from __future__ import annotations

import numpy as np
import pytest
import torch

from workers.engine.architectures import ARCHITECTURES
from workers.engine.architectures.build import build_model, check_weights, load_weights, state_to_numpy
from workers.engine.errors import InvalidInputError, UnknownEntryError

CONFIG = {"in_channels": 1, "image_size": 8, "channels": [4, 8], "num_classes": 3}


def _expected() -> dict[str, tuple[tuple[int, ...], str]]:
    return ARCHITECTURES.get("small_cnn").expected_state(CONFIG)


def test_state_round_trips_through_numpy() -> None:
    torch.manual_seed(1)
    source = build_model("small_cnn", CONFIG)
    source.train()
    source(torch.rand(4, 1, 8, 8))  # move BN running stats away from their defaults
    weights = state_to_numpy(source)
    assert weights["blocks.0.bn.num_batches_tracked"].dtype == np.int64
    assert weights["blocks.0.conv.weight"].dtype == np.float32
    torch.manual_seed(2)
    target = build_model("small_cnn", CONFIG)
    load_weights(target, weights, _expected())
    for key, value in target.state_dict().items():
        assert np.array_equal(value.numpy(), weights[key]), key


def test_exported_arrays_do_not_alias_the_model() -> None:
    model = build_model("small_cnn", CONFIG)
    weights = state_to_numpy(model)
    before = weights["head.bias"].copy()
    with torch.no_grad():
        model.state_dict()["head.bias"].add_(1.0)  # state_dict tensors share the model's storage
    assert np.array_equal(weights["head.bias"], before)


def test_float64_weights_are_converted() -> None:
    weights = {
        key: value.astype(np.float64) if value.dtype == np.float32 else value
        for key, value in state_to_numpy(build_model("small_cnn", CONFIG)).items()
    }
    checked = check_weights(weights, _expected())
    assert checked["head.weight"].dtype == np.float32


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda w: w.pop("head.bias"), "missing 1 keys: head.bias"),
        (lambda w: w.__setitem__("extra.weight", np.zeros(1, np.float32)), "unexpected 1 keys: extra.weight"),
        (lambda w: w.__setitem__("head.bias", np.zeros(4, np.float32)), r"shape \[4\], expected \[3\]"),
        (lambda w: w.__setitem__("head.bias", np.array([0.0, np.nan, 0.0], np.float32)), "NaN"),
        (lambda w: w.__setitem__("head.bias", np.zeros(3, np.int64)), "floating point"),
        (lambda w: w.__setitem__("blocks.0.bn.num_batches_tracked", np.array(1.5)), "integer"),
    ],
)
def test_bad_weights_are_rejected_with_a_reason(mutate, message: str) -> None:  # type: ignore[no-untyped-def]
    weights = state_to_numpy(build_model("small_cnn", CONFIG))
    mutate(weights)
    with pytest.raises(InvalidInputError, match=message):
        load_weights(build_model("small_cnn", CONFIG), weights, _expected())


def test_unknown_architecture() -> None:
    with pytest.raises(
        UnknownEntryError, match="available: mlp, mlp_regressor, resnet18, resnet18_regressor"
    ):
        build_model("vgg16", {})
