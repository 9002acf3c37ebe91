"""The reference notes' unit checks for SFD (blindspot_sfd.md §2.7) and the data-free label source."""

from __future__ import annotations

import inspect

import numpy as np
import pytest
import torch

from workers.engine.datasets import ArrayDataset
from workers.engine.diffusion import api, sfd
from workers.engine.diffusion.params import DiffusionModelConfig, SFDParams
from workers.engine.diffusion.sampling import generate_one_step
from workers.engine.diffusion.schedule import NoiseSchedule
from workers.engine.diffusion.unet import UNet
from workers.engine.errors import InvalidInputError

T_INIT = 440


def _teacher(config: DiffusionModelConfig, seed: int = 0) -> UNet:
    torch.manual_seed(seed)
    return UNet(config).eval()


def test_sid_loss_with_alpha_one_reduces_as_stated() -> None:
    generator = torch.Generator().manual_seed(0)
    f_teacher, f_fake, x_g = (torch.randn(5, 1, 8, 8, generator=generator) for _ in range(3))
    omega = (f_teacher - x_g).abs().mean(dim=(1, 2, 3), keepdim=True)
    reduced = ((f_teacher - f_fake) * (f_fake - x_g) / omega).sum(dim=(1, 2, 3))
    torch.testing.assert_close(sfd.sid_loss_per_sample(f_teacher, f_fake, x_g, 1.0), reduced)
    # General alpha: the reference's expression, written out.
    general = ((f_teacher - f_fake) * ((f_teacher - x_g) - 1.2 * (f_teacher - f_fake)) / omega).sum(
        dim=(1, 2, 3)
    )
    torch.testing.assert_close(sfd.sid_loss_per_sample(f_teacher, f_fake, x_g, 1.2), general)


def test_omega_is_clamped_and_carries_no_gradient() -> None:
    x_g = torch.zeros(1, 1, 2, 2, requires_grad=True)
    f_teacher = torch.zeros(1, 1, 2, 2)  # |f_teacher - x_g| = 0 -> omega clamps to 1e-5
    f_fake = torch.full((1, 1, 2, 2), -1.0)
    loss = sfd.sid_loss_per_sample(f_teacher, f_fake, x_g, 1.0).sum()
    # (0 - (-1)) * ((-1) - 0) / 1e-5 per pixel, 4 pixels
    assert loss.item() == pytest.approx(-4.0 / 1e-5)
    loss.backward()
    # d/dx_g of sum (f_t - f_f)(f_f - x_g)/omega with omega constant: -(f_t - f_f)/omega = -1e5.
    torch.testing.assert_close(x_g.grad, torch.full((1, 1, 2, 2), -1e5))


def test_generator_at_initialisation_is_the_teachers_one_step_estimate(
    tiny_config: DiffusionModelConfig,
) -> None:
    teacher = _teacher(tiny_config)
    nets = sfd.init_networks(teacher)
    schedule = NoiseSchedule.from_config(tiny_config)
    z = torch.randn(6, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    labels = torch.arange(6)
    with torch.no_grad():
        generated = generate_one_step(nets.generator, schedule, z, labels, T_INIT)
        t = torch.full((6,), T_INIT)
        x_init = schedule.noise(t) * z
        one_step = schedule.denoise(x_init, t, teacher(x_init, t, labels))
        _, b, sigma = schedule.coefficients(T_INIT)
        closed_form = sigma * (z - teacher(b * z, t, labels))
    torch.testing.assert_close(generated, one_step, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(generated, closed_form, atol=1e-5, rtol=1e-5)
    assert sigma == pytest.approx(2.502, abs=1e-3)
    # All three networks start from the teacher's weights.
    for network in (nets.fake, nets.generator):
        for (name, value), reference in zip(
            network.state_dict().items(), teacher.state_dict().values(), strict=True
        ):
            assert torch.equal(value, reference), name


def test_remain_gradient_is_zero_when_fake_equals_teacher(tiny_config: DiffusionModelConfig) -> None:
    nets = sfd.init_networks(_teacher(tiny_config))
    schedule = NoiseSchedule.from_config(tiny_config)
    rng = torch.Generator().manual_seed(2)
    z = torch.randn(8, 1, 8, 8, generator=rng)
    c = torch.randint(1, 10, (8,), generator=rng)
    t = torch.randint(38, 712, (8,), generator=rng)
    eps = torch.randn(8, 1, 8, 8, generator=rng)

    def generator_gradients(teacher_labels: torch.Tensor, fake_labels: torch.Tensor) -> list[torch.Tensor]:
        nets.generator.zero_grad(set_to_none=True)
        nets.generator.requires_grad_(True)
        x_g = generate_one_step(nets.generator, schedule, z, fake_labels, T_INIT)
        loss = sfd.sid_generator_loss(
            nets.teacher, nets.fake, schedule, x_g, t, teacher_labels, fake_labels, eps, alpha=1.2
        )
        loss.backward()
        return [p.grad.clone() for p in nets.generator.parameters() if p.grad is not None]

    remain = generator_gradients(c, c)
    assert remain, "the generator received no gradient at all"
    # The cross-class forget term (teacher at c_o = 1, fake at c_f = 0) is not zero at initialisation and
    # sets the scale: the remain term's gradient is zero up to float32 rounding of two equal backward passes.
    forget = generator_gradients(torch.ones(8, dtype=torch.long), torch.zeros(8, dtype=torch.long))
    forget_scale = max(float(g.abs().max()) for g in forget)
    assert forget_scale > 1e-2
    assert max(float(g.abs().max()) for g in remain) <= 1e-6 * forget_scale
    # Neither frozen network accumulates gradients in the generator step.
    assert all(p.grad is None for p in nets.teacher.parameters())
    assert all(p.grad is None for p in nets.fake.parameters())


def test_sfd_is_data_free_labels_only(tiny_config: DiffusionModelConfig, digits: ArrayDataset) -> None:
    # No parameter of the entry point or the loop can carry images.
    for function in (api.run_sfd, sfd.distill):
        names = set(inspect.signature(function).parameters)
        assert not names & {"dataset", "images", "x", "x_train", "inputs", "data"}, function
    # Images handed over where labels belong are refused before any step runs.
    for images in (
        digits.x_train,
        digits.x_train.reshape(len(digits.x_train), -1),
        digits.x_train[:, 0, 0, 0],
    ):
        with pytest.raises(InvalidInputError, match="data-free"):
            sfd.remain_label_counts(images, 10, 0)
    counts = sfd.remain_label_counts(digits.y_train, 10, forget_class=0)
    assert counts[0] == 0 and counts[1:].sum() == np.sum(digits.y_train != 0)
    # A full SFD run from labels alone (no dataset object anywhere).
    teacher = api.module_weights(_teacher(tiny_config))
    labels = np.repeat(np.arange(10), 5)
    result = api.run_sfd(teacher, tiny_config, SFDParams(steps=2, batch_size=4), labels, seed=0)
    assert result.history[-1]["step"] == 2
    # Only the retained classes' label frequencies matter: any order of the same labels (so no pairing with
    # an image could matter either) gives bit-identical weights.
    shuffled = np.random.default_rng(0).permutation(labels)
    same = api.run_sfd(teacher, tiny_config, SFDParams(steps=2, batch_size=4), shuffled, seed=0)
    assert all(np.array_equal(result.weights[key], same.weights[key]) for key in result.weights)


def test_remain_labels_follow_the_retained_distribution_and_override_labels() -> None:
    counts = sfd.remain_label_counts(np.array([0, 0, 1, 2, 2, 2]), 3, forget_class=0)
    draws = sfd.RemainLabels(counts, torch.device("cpu")).draw(40_000, torch.Generator().manual_seed(0))
    assert not (draws == 0).any()
    assert float((draws == 2).float().mean()) == pytest.approx(0.75, abs=0.01)
    fixed = sfd.override_labels(SFDParams(forget_class=0, override_class=1), 10, 5, torch.Generator())
    assert fixed.tolist() == [1] * 5
    random = sfd.override_labels(
        SFDParams(forget_class=3, override_class=None), 10, 20_000, torch.Generator().manual_seed(0)
    )
    assert not (random == 3).any()
    assert set(random.tolist()) == set(range(10)) - {3}


def test_sfd_refuses_classes_outside_the_model(tiny_config: DiffusionModelConfig) -> None:
    teacher = api.module_weights(_teacher(tiny_config))
    with pytest.raises(InvalidInputError, match="not a class"):
        api.run_sfd(teacher, tiny_config, SFDParams(forget_class=12, steps=1), np.arange(10), seed=0)
