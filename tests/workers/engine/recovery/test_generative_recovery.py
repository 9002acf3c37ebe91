"""Recovery audits of generative models through ``execute``: a tiny DDPM teacher on digits, its gold retrain
without class 3 and an SFD generator, then the audit of the generator against the two teachers.

The models are far too small to forget anything (the gap is usually below min_gap, so the scores may be null
with a reason); these tests check what the audit measures, on which copies, with which samplers, and that its
figures before any transform are the evaluate jobs' own."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import torch

from tests.workers.engine.diffusion.test_diffusion_jobs import EVALUATION, FORGET_CLASS, TINY
from workers.engine.datasets import build_dataset
from workers.engine.diffusion.params import DiffusionModelConfig
from workers.engine.diffusion.schedule import NoiseSchedule
from workers.engine.diffusion.unet import UNet
from workers.engine.errors import InvalidInputError
from workers.engine.execute import EngineRequest, EngineResult, execute
from workers.engine.hooks import MemoryCache, RecordingHooks
from workers.engine.recovery import transforms
from workers.engine.recovery.generative import denoising_objective

AUDIT = {
    "relearn_steps": [1, 3],
    "relearn_samples": 8,
    "relearn_batch_size": 4,
    "sparsities": [0.5],
    "evaluation": EVALUATION,
}


@pytest.fixture(autouse=True, scope="module")
def one_thread() -> Iterator[None]:
    previous = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny 8x8 convolutions: a second thread only costs synchronisation
    try:
        yield
    finally:
        torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def world() -> dict[str, Any]:
    digits = build_dataset("digits")
    cache = MemoryCache()
    teacher = execute(
        EngineRequest(
            kind="train", method=None, params={"steps": 12, "batch_size": 16}, seed=1, device="cpu",
            dataset=digits, architecture="unet_ddpm", arch_config=TINY,
        )
    )  # fmt: skip
    base: dict[str, Any] = {
        "method": None,
        "seed": 2,
        "device": "cpu",
        "dataset": digits,
        "architecture": "unet_ddpm",
        "arch_config": teacher.details["arch_config"],
        "weights": teacher.weights,
        "forget_indices": np.flatnonzero(digits.y_train == FORGET_CLASS).astype(np.int64),
        "forget_class": FORGET_CLASS,
        "original_recipe": teacher.details["params"]["recipe"],
        "cache": cache,
        "dataset_sha256": "digits-recovery-test",
    }
    gold = execute(EngineRequest(**{**base, "kind": "retrain", "params": {"evaluation": EVALUATION}}))
    sfd = execute(
        EngineRequest(
            **{
                **base,
                "kind": "unlearn",
                "method": "sfd",
                "params": {"steps": 3, "batch_size": 4, "evaluation": EVALUATION},
            }
        )
    )
    return {"digits": digits, "base": base, "teacher": teacher, "gold": gold, "sfd": sfd, "cache": cache}


def _audit(world: dict[str, Any], **overrides: Any) -> EngineRequest:
    sfd: EngineResult = world["sfd"]
    values = {
        **world["base"],
        "kind": "recovery",
        "params": AUDIT,
        "architecture": "unet_one_step",
        "arch_config": sfd.arch_config,
        "weights": sfd.weights,
        "controls": {"original": world["teacher"].weights, "retrain": world["gold"].weights},
    }
    values.update(overrides)
    return EngineRequest(**values)


def test_generator_audit_end_to_end(world: dict[str, Any]) -> None:
    sfd, gold = world["sfd"], world["gold"]
    snapshot = {role: {k: v.copy() for k, v in w.items()} for role, w in _weights(world).items()}
    hooks = RecordingHooks()
    result = execute(_audit(world), hooks)
    # Transforms and relearning ran on copies: no input model changed.
    for role, weights in _weights(world).items():
        assert all(np.array_equal(snapshot[role][k], v) for k, v in weights.items()), role
    recovery, metrics = result.details["recovery"], result.metrics
    # Before any transform: the evaluate jobs' figures (same sampler, classifier, seed), in %.
    assert metrics["forget_class_rate"] == pytest.approx(100 * (1 - sfd.metrics["ua"]))
    assert metrics["control.forget_class_rate"] == pytest.approx(100 * (1 - gold.metrics["ua"]))
    assert metrics["control.retain_accuracy"] == pytest.approx(100 * gold.metrics["retain_accuracy"])
    assert metrics["retain_accuracy"] == pytest.approx(100 * sfd.metrics["retain_accuracy"])
    assert result.details["metric_classifier_reused"] is True  # the cache the other jobs filled
    assert result.details["samplers"] == {"unlearned": "one_step", "retrain": "ddpm", "original": "ddpm"}
    assert recovery["metric"] == "forget_class_rate"
    assert [row["name"] for row in recovery["transforms"]] == ["int8", "int4", "nf4", "prune_50"]
    prune = recovery["transforms"][-1]
    assert prune["unlearned_zero_fraction"] == pytest.approx(0.5, abs=1e-3)
    assert prune["retrain_zero_fraction"] == pytest.approx(0.5, abs=1e-3)
    for row in recovery["transforms"]:
        for role in ("unlearned", "retrain"):
            assert 0.0 <= row[role]["forget_class_rate"] <= 100.0
        assert metrics[f"transform.{row['name']}.gap_to_control"] == pytest.approx(
            row["unlearned"]["forget_class_rate"] - row["retrain"]["forget_class_rate"]
        )
    assert set(recovery["relearning"]) == {"forget_subset", "retain_neighbours", "unrelated"}
    for source, curve in recovery["relearning"].items():
        assert curve["steps"] == [0, 1, 3]
        # Step 0 is the model before relearning, read from the same forget-class draws.
        assert curve["unlearned"][0] == pytest.approx(metrics["forget_class_rate"]), source
        assert curve["retrain"][0] == pytest.approx(metrics["control.forget_class_rate"]), source
        assert f"relearn.{source}.step_3.gap_to_control" in metrics
    gap = metrics["recovery_gap"]
    assert gap == pytest.approx(metrics["original.forget_class_rate"] - metrics["control.forget_class_rate"])
    if gap >= 1.0:
        assert 0.0 <= metrics["recovery_robustness"] <= 1.0
    else:  # nothing to recover: null scores, said so
        assert "recovery_robustness" not in metrics and "min_gap" in recovery["reason"]
    assert result.timings["relearn_s"] > 0 and result.timings["transforms_s"] > 0
    assert (
        result.details["relearn_optimizer"]["timesteps"]["unlearned"]
        == f"t_init = {sfd.arch_config['t_init']} only"
    )
    assert result.weights is None and result.environment["device"] == "cpu"
    assert hooks.progress_calls and {call[0] for call in hooks.progress_calls} >= {"recovery"}


def _weights(world: dict[str, Any]) -> dict[str, dict[str, np.ndarray]]:
    return {name: world[name].weights for name in ("sfd", "teacher", "gold")}


def test_a_teacher_is_audited_with_its_sampler_and_a_foreign_control_is_refused(
    world: dict[str, Any],
) -> None:
    # The original teacher audited against its own retrain: a no-op's audit, sampled multi-step.
    teacher = world["teacher"]
    result = execute(
        _audit(
            world,
            architecture="unet_ddpm",
            arch_config=teacher.details["arch_config"],
            weights=teacher.weights,
            params={**AUDIT, "relearn_sources": ["forget_subset"], "quantization": False},
        )
    )
    assert result.details["samplers"]["unlearned"] == "ddpm"
    assert result.metrics["forget_class_rate"] == result.metrics["original.forget_class_rate"]
    assert [row["name"] for row in result.details["recovery"]["transforms"]] == ["prune_50"]
    # Controls whose U-Net differs from the audited model's do not load.
    wider = UNet(DiffusionModelConfig.model_validate({**TINY, "base_channels": 16}))
    foreign = {k: v.detach().numpy() for k, v in wider.state_dict().items()}
    with pytest.raises(InvalidInputError, match="weights do not match"):
        execute(_audit(world, controls={"original": teacher.weights, "retrain": foreign}))
    with pytest.raises(InvalidInputError, match="retrain"):
        execute(_audit(world, controls={"original": teacher.weights}))


def test_denoising_objective_uses_t_init_only_for_a_generator_and_is_seeded() -> None:
    config = DiffusionModelConfig.model_validate(TINY)
    schedule = NoiseSchedule.from_config(config)
    seen: list[torch.Tensor] = []

    class Recorder(torch.nn.Module):
        def forward(self, x: torch.Tensor, t: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
            seen.append(t)
            return torch.zeros_like(x)

    x0 = torch.zeros(6, 1, 8, 8)
    labels = torch.zeros(6, dtype=torch.long)
    device = torch.device("cpu")
    generator_loss = denoising_objective(schedule, 440, seed=5, device=device)
    generator_loss(Recorder(), x0, labels)
    assert torch.equal(seen[-1], torch.full((6,), 440))
    teacher_a = denoising_objective(schedule, None, seed=5, device=device)(Recorder(), x0, labels)
    ts = seen[-1]
    teacher_b = denoising_objective(schedule, None, seed=5, device=device)(Recorder(), x0, labels)
    assert torch.equal(seen[-1], ts) and float(teacher_a) == float(teacher_b)  # same seed, same noise
    assert ts.min() >= 0 and ts.max() < config.timesteps and len(set(ts.tolist())) > 1
    # With a zero prediction the loss is the noise's squared norm per image: ~ C x H x W = 64.
    assert 30 < float(teacher_a) < 100


def test_transforms_act_on_copies_of_a_unet_state() -> None:
    torch.manual_seed(0)
    network = UNet(DiffusionModelConfig.model_validate(TINY))
    state = network.state_dict()
    before = {k: v.clone() for k, v in state.items()}
    names = transforms.transformed_names(state)
    assert any("class_embedding" in n for n in names) and all(state[n].dim() >= 2 for n in names)
    int4 = transforms.quantization_transforms()[1].apply(state)
    for name in names:
        steps = transforms.per_channel_scales(state[name].double(), transforms.INT4_LEVELS)
        assert bool(((int4[name].double() - state[name].double()).abs() <= steps / 2 + 1e-7).all()), name
        levels = torch.unique((int4[name].double() / torch.where(steps > 0, steps, 1.0)).round())
        assert len(levels) <= 2 * transforms.INT4_LEVELS + 1
    untouched = [n for n in state if n not in names]
    assert untouched and all(torch.equal(int4[n], state[n]) for n in untouched)  # norms and biases stay
    pruned = transforms.pruning_transform(0.5).apply(state)
    assert transforms.zero_fraction(pruned) == pytest.approx(0.5, abs=1e-3)
    assert all(torch.equal(state[k], v) for k, v in before.items())  # the model's own tensors untouched
