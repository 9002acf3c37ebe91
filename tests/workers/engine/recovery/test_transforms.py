"""Recovery transforms are applied to copies only and are exact: quantization error bounds per scheme,
achieved sparsity, relearning step counts, the source definitions and the score arithmetic."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from workers.engine.recovery import relearn, scores, transforms
from workers.engine.recovery.params import ALL_SOURCES

ATOL = 1e-12


def _state(seed: int = 0) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return {
        "conv.weight": torch.randn(8, 3, 3, 3, generator=generator),
        "conv.bias": torch.randn(8, generator=generator),
        "fc.weight": torch.randn(10, 37, generator=generator) * 0.1,  # 370 weights: NF4 blocks end ragged
        "fc.bias": torch.randn(10, generator=generator),
        "bn.running_mean": torch.randn(8, generator=generator),
        "bn.num_batches_tracked": torch.tensor(5),
    }


def _snapshot(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in state.items()}


ALL = transforms.transforms_for([0.3, 0.5, 0.9])


@pytest.mark.parametrize("transform", ALL, ids=[t.name for t in ALL])
def test_every_transform_works_on_a_copy(transform: transforms.Transform) -> None:
    state = _state()
    before = _snapshot(state)
    out = transform.apply(state)
    for name, tensor in state.items():
        assert torch.equal(tensor, before[name]), f"{transform.name} modified {name} in place"
        assert out[name].data_ptr() != tensor.data_ptr(), f"{transform.name} shares {name}'s storage"
    # Only weight matrices and kernels change; biases and buffers come back bit for bit.
    for name in ("conv.bias", "fc.bias", "bn.running_mean", "bn.num_batches_tracked"):
        assert torch.equal(out[name], state[name])
    changed = [
        name for name in transforms.transformed_names(state) if not torch.equal(out[name], state[name])
    ]
    assert changed == ["conv.weight", "fc.weight"]


@pytest.mark.parametrize(("name", "levels"), [("int8", 127), ("int4", 7)])
def test_round_to_nearest_is_within_half_a_step_per_channel(name: str, levels: int) -> None:
    state = _state()
    out = next(t for t in ALL if t.name == name).apply(state)
    for key in ("conv.weight", "fc.weight"):
        weight, quantized = state[key].double(), out[key].double()
        step = weight.abs().reshape(weight.shape[0], -1).amax(dim=1) / levels
        error = (weight - quantized).abs().reshape(weight.shape[0], -1).amax(dim=1)
        assert torch.all(error <= step / 2 + 1e-6), name
        # Every value is an integer multiple of its channel's step, within the 2L + 1 levels.
        multiples = quantized.reshape(weight.shape[0], -1) / step[:, None]
        assert torch.allclose(multiples, multiples.round(), atol=1e-4)
        assert multiples.abs().max() <= levels + 1e-4
        distinct = max(int(torch.unique(row).numel()) for row in quantized.reshape(weight.shape[0], -1))
        assert distinct <= 2 * levels + 1
    # 4 bits lose more than 8 bits.
    if name == "int4":
        int8 = next(t for t in ALL if t.name == "int8").apply(state)
        assert (state["fc.weight"] - out["fc.weight"]).abs().mean() > (
            state["fc.weight"] - int8["fc.weight"]
        ).abs().mean()


def test_an_all_zero_channel_stays_zero() -> None:
    weight = torch.randn(4, 6)
    weight[2] = 0
    for levels in (127, 7):
        assert torch.equal(transforms.round_to_nearest(weight, levels)[2], torch.zeros(6))
    assert torch.isfinite(transforms.nf4_quantize(weight)).all()


def test_the_nf4_codebook_is_sixteen_normal_quantiles_in_minus_one_one() -> None:
    codebook = transforms.nf4_codebook()
    assert codebook.numel() == 16
    assert torch.all(torch.diff(codebook) > 0)
    assert codebook[0] == -1.0 and codebook[-1] == 1.0 and (codebook == 0).sum() == 1
    assert int((codebook > 0).sum()) == 8 and int((codebook < 0).sum()) == 7
    # Denser near 0 than at the tails, as normal quantiles are.
    gaps = torch.diff(codebook)
    assert gaps[7] < gaps[0] and gaps[8] < gaps[-1]


def test_nf4_values_are_codebook_points_times_the_block_absmax_within_half_a_gap() -> None:
    weight = _state()["fc.weight"]
    quantized = transforms.nf4_quantize(weight).double().reshape(-1)
    flat = weight.double().reshape(-1)
    codebook = transforms.nf4_codebook()
    block = transforms.NF4_BLOCK
    for start in range(0, flat.numel(), block):
        original, out = flat[start : start + block], quantized[start : start + block]
        absmax = original.abs().max()
        assert (original - out).abs().max() <= absmax * transforms.nf4_max_gap() / 2 + 1e-6
        # float32 storage: each value is a codebook point times the absmax, up to float32 rounding.
        codes = out / absmax
        assert torch.all((codes[:, None] - codebook[None, :]).abs().min(dim=1).values < 1e-6)
        # The absmax itself is exact (code +-1).
        assert torch.isclose(out.abs().max(), absmax.to(torch.float32).double(), atol=1e-7)


@pytest.mark.parametrize("sparsity", [0.1, 0.3, 0.5, 0.9])
def test_magnitude_pruning_hits_the_sparsity_exactly_and_drops_the_smallest(sparsity: float) -> None:
    state = _state()
    out = transforms.magnitude_prune(state, sparsity)
    names = transforms.transformed_names(state)
    total = sum(state[n].numel() for n in names)
    assert transforms.zero_fraction(out) == round(sparsity * total) / total
    removed = torch.cat([state[n][out[n] == 0].abs().reshape(-1) for n in names])
    kept = torch.cat([state[n][out[n] != 0].abs().reshape(-1) for n in names])
    assert removed.max() <= kept.min()
    for n in names:  # kept weights are untouched
        assert torch.equal(out[n][out[n] != 0], state[n][out[n] != 0])
    with pytest.raises(ValueError):
        transforms.magnitude_prune(state, 1.0)


class _Counting(nn.Module):
    """A linear classifier that counts its training-mode forward passes (one per optimiser step)."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(4, 3)
        self.train_forwards = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            self.train_forwards += 1
        return self.linear(x)


def test_relearning_takes_exactly_the_grid_steps_on_a_copy() -> None:
    torch.manual_seed(0)
    model = _Counting()
    before = _snapshot(model.state_dict())
    inputs, targets = torch.randn(40, 4), torch.randint(0, 3, (40,))
    seen: list[int] = []

    def probe(m: nn.Module) -> float:
        seen.append(m.train_forwards)  # type: ignore[arg-type]
        return float(m.linear.weight.detach().sum())

    state = torch.random.get_rng_state()
    curve = relearn.relearn_curve(
        model,
        inputs,
        targets,
        probe,
        [5, 0, 2, 17],
        objective=relearn.supervised(torch.nn.functional.cross_entropy),
        lr=0.01,
        batch_size=16,
        seed=3,
    )
    assert curve.steps == [0, 2, 5, 17] and curve.steps_taken == 17
    assert seen == [0, 2, 5, 17]  # the probe ran after exactly that many optimiser steps
    assert curve.values[0] == pytest.approx(float(model.linear.weight.sum()))
    assert model.train_forwards == 0 and all(torch.equal(model.state_dict()[k], v) for k, v in before.items())
    assert torch.equal(torch.random.get_rng_state(), state)
    again = relearn.relearn_curve(
        model,
        inputs,
        targets,
        probe,
        [0, 2, 5, 17],
        objective=relearn.supervised(torch.nn.functional.cross_entropy),
        lr=0.01,
        batch_size=16,
        seed=3,
    )
    assert again.values == curve.values  # the same batches for every model given the seed


def test_sources_follow_their_definitions() -> None:
    generator = torch.Generator().manual_seed(0)
    inputs = torch.randn(200, 5, generator=generator)
    forget = np.arange(0, 40, dtype=np.int64)
    retain = np.arange(40, 200, dtype=np.int64)
    sources = relearn.choose_sources(inputs, forget, retain, ALL_SOURCES, samples=30, seed=1)
    subset = sources.indices["forget_subset"]
    assert subset.size == 20 and np.isin(subset, forget).all()  # at most half of the forget set
    assert np.array_equal(np.sort(np.concatenate([subset, sources.held_out])), forget)
    distance = relearn.nearest_forget_distance(inputs, retain, forget)
    by_index = dict(zip(retain.tolist(), distance.tolist(), strict=True))
    neighbours = sources.indices["retain_neighbours"]
    assert neighbours.size == 30 and np.isin(neighbours, retain).all()
    others = [by_index[i] for i in retain if i not in set(neighbours.tolist())]
    assert max(by_index[i] for i in neighbours) <= min(others)
    unrelated = sources.indices["unrelated"]
    assert unrelated.size == 30 and all(by_index[i] > np.median(distance) for i in unrelated)
    brute = torch.cdist(inputs[retain], inputs[forget]).amin(dim=1).numpy()
    assert np.allclose(distance, brute, atol=1e-5)


def test_scores_read_recovery_beyond_the_control() -> None:
    accuracy = scores.Direction("forget_accuracy", 1.0)
    error = scores.Direction("forget_mae", -1.0)
    # The audited model regains 30 points, the control 10: 20 beyond it, out of a gap of 80.
    assert scores.excess_recovery(accuracy, (5.0, 35.0), (0.0, 10.0)) == 20.0
    assert scores.score(20.0, 80.0) == 0.75
    # A control that loses accuracy under the transform is no excuse: losses count as 0 recovery.
    assert scores.excess_recovery(accuracy, (5.0, 5.0), (10.0, 0.0)) == 0.0
    # Errors read the other way round: MAE falling from 70 to 50 is 20 of recovery.
    assert scores.recovery(error, 70.0, 50.0) == 20.0
    assert scores.gap(error, 30.0, 70.0) == 40.0
    assert scores.harmonic_mean(1.0, 0.5) == pytest.approx(2 / 3)
    assert scores.harmonic_mean(0.0, 0.0) == 0.0
    curve = scores.curve_score(accuracy, [0, 50, 100], [0, 0, 0], 100.0)
    assert curve == pytest.approx(0.25)  # penalties 0.5 and 1.0
    assert scores.steps_to_recover(accuracy, [0, 1, 5], [0.0, 40.0, 60.0], 50.0) == 5
    assert scores.steps_to_recover(error, [0, 1, 5], [70.0, 49.0, 40.0], 50.0) == 1
    assert scores.steps_ratio(10, 50, 50) == {"value": 0.2, "bound": None, "reason": None}
    assert scores.steps_ratio(10, None, 50)["bound"] == "upper"
    assert scores.steps_ratio(None, 5, 50)["value"] is None
