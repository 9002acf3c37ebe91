"""Schedule values, EMA, U-Net shapes, samplers, CFG, weights round trip."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from workers.engine.diffusion.ema import EMA
from workers.engine.diffusion.params import DiffusionModelConfig, SampleParams
from workers.engine.diffusion.sampling import (
    network_evaluations,
    sample_multistep,
    strided_timesteps,
)
from workers.engine.diffusion.schedule import NoiseSchedule
from workers.engine.diffusion.unet import UNet, guided_eps
from workers.engine.diffusion.weights import load_weights, module_weights
from workers.engine.errors import InvalidInputError


def test_linear_schedule_values() -> None:
    schedule = NoiseSchedule.linear(1000, 1e-4, 0.02)
    assert schedule.timesteps == 1000
    assert schedule.betas[0].item() == pytest.approx(1e-4)
    assert schedule.betas[-1].item() == pytest.approx(0.02)
    assert schedule.betas[1].item() - schedule.betas[0].item() == pytest.approx((0.02 - 1e-4) / 999, rel=1e-4)
    expected = np.cumprod(1.0 - np.linspace(1e-4, 0.02, 1000))
    np.testing.assert_allclose(schedule.alphas_cumprod.numpy(), expected, rtol=1e-5)


@pytest.mark.parametrize(
    ("step", "a", "b", "sigma"),
    [(440, 0.3711, 0.9286, 2.502), (38, None, None, 0.137), (712, None, None, 13.1)],
)
def test_sfd_timesteps_mean_what_the_reference_notes_say(
    step: int, a: float | None, b: float | None, sigma: float
) -> None:
    got_a, got_b, got_sigma = NoiseSchedule.linear(1000, 1e-4, 0.02).coefficients(step)
    assert got_sigma == pytest.approx(sigma, abs=2e-3 if sigma < 1 else 0.05)
    assert got_a**2 + got_b**2 == pytest.approx(1.0, abs=1e-6)
    if a is not None and b is not None:
        assert (got_a, got_b) == (pytest.approx(a, abs=1e-4), pytest.approx(b, abs=1e-4))


def test_diffuse_and_denoise_invert_each_other() -> None:
    schedule = NoiseSchedule.linear(1000, 1e-4, 0.02)
    x0 = torch.randn(4, 1, 8, 8)
    eps = torch.randn(4, 1, 8, 8)
    t = torch.tensor([0, 200, 440, 999])
    x_t = schedule.diffuse(x0, t, eps)
    torch.testing.assert_close(schedule.denoise(x_t, t, eps), x0, atol=2e-3, rtol=1e-3)


def test_ema_follows_the_reference_update() -> None:
    module = torch.nn.Linear(2, 1, bias=False)
    with torch.no_grad():
        module.weight.fill_(1.0)
    ema = EMA(module, decay=0.9)
    with torch.no_grad():
        module.weight.fill_(3.0)
    ema.update(module)
    # 0.9 * 1 + 0.1 * 3
    torch.testing.assert_close(ema.shadow["weight"], torch.full((1, 2), 1.2))
    ema.update(module)
    torch.testing.assert_close(ema.shadow["weight"], torch.full((1, 2), 0.9 * 1.2 + 0.1 * 3.0))
    target = torch.nn.Linear(2, 1, bias=False)
    ema.copy_to(target)
    torch.testing.assert_close(target.weight, ema.shadow["weight"])


def test_ema_warmup_uses_the_smaller_decay_early_on() -> None:
    ema = EMA(torch.nn.Linear(1, 1), decay=0.999, warmup=True)
    decays = []
    for _ in range(3):
        ema.updates += 1
        decays.append(ema.current_decay())
    assert decays == pytest.approx([2 / 11, 3 / 12, 4 / 13])
    ema.updates = 100_000
    assert ema.current_decay() == 0.999


@pytest.mark.parametrize(
    ("size", "channels", "mults"), [(8, 1, [1, 2]), (16, 3, [1, 2, 2]), (32, 3, [1, 2, 2, 2])]
)
def test_unet_maps_images_to_noise_of_the_same_shape(size: int, channels: int, mults: list[int]) -> None:
    config = DiffusionModelConfig(
        image_size=size, image_channels=channels, channel_mults=mults, base_channels=8, norm_groups=4
    )
    model = UNet(config)
    x = torch.randn(3, channels, size, size)
    out = model(x, torch.tensor([0, 440, 999]), torch.tensor([0, 9, config.num_classes]))
    assert out.shape == x.shape
    assert torch.isfinite(out).all()


def test_cfg_is_the_reference_combination(tiny_config: DiffusionModelConfig) -> None:
    torch.manual_seed(0)
    model = UNet(tiny_config).eval()
    x = torch.randn(2, 1, 8, 8)
    t = torch.tensor([10, 500])
    c = torch.tensor([3, 4])
    with torch.no_grad():
        conditional = model(x, t, c)
        unconditional = model(x, t, torch.full_like(c, tiny_config.num_classes))
        guided = guided_eps(model, x, t, c, 2.0)
        plain = guided_eps(model, x, t, c, 0.0)
    torch.testing.assert_close(guided, 3.0 * conditional - 2.0 * unconditional, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(plain, conditional)


def test_strided_timesteps_and_network_evaluations() -> None:
    assert strided_timesteps(1000, 1000) == list(range(1000))
    steps = strided_timesteps(1000, 10)
    assert len(steps) == 10 and steps[0] == 0 and steps[-1] == 999
    assert strided_timesteps(1000, 1) == [999]
    assert network_evaluations(SampleParams(steps=50), 1000) == 50
    assert network_evaluations(SampleParams(steps=50, guidance_scale=1.5), 1000) == 100


@pytest.mark.parametrize("sampler", ["ddpm", "ddim"])
def test_samplers_return_images_in_range(tiny_config: DiffusionModelConfig, sampler: str) -> None:
    torch.manual_seed(0)
    model = UNet(tiny_config).eval()
    schedule = NoiseSchedule.from_config(tiny_config)
    params = SampleParams(sampler=sampler, steps=5, guidance_scale=1.0)  # type: ignore[arg-type]
    labels = torch.tensor([0, 1, 2])
    first = sample_multistep(model, schedule, labels, (1, 8, 8), params, torch.Generator().manual_seed(1))
    again = sample_multistep(model, schedule, labels, (1, 8, 8), params, torch.Generator().manual_seed(1))
    assert first.shape == (3, 1, 8, 8)
    assert float(first.abs().max()) <= 1.0
    torch.testing.assert_close(first, again, rtol=0, atol=0)


def test_weights_round_trip_and_mismatch_is_refused(tiny_config: DiffusionModelConfig) -> None:
    torch.manual_seed(0)
    source = UNet(tiny_config)
    weights = module_weights(source)
    assert all(value.dtype == np.float32 for value in weights.values())
    target = UNet(tiny_config)
    load_weights(target, weights, "teacher")
    for name, value in target.state_dict().items():
        np.testing.assert_array_equal(value.numpy(), weights[name])
    broken = dict(weights)
    broken.pop(next(iter(broken)))
    with pytest.raises(InvalidInputError, match="missing"):
        load_weights(target, broken, "teacher")
    poisoned = {name: value.copy() for name, value in weights.items()}
    next(iter(poisoned.values())).flat[0] = np.nan
    with pytest.raises(InvalidInputError, match="NaN"):
        load_weights(target, poisoned, "teacher")


@pytest.mark.parametrize(
    "values",
    [
        {},
        {"image_size": 16, "image_channels": 3, "channel_mults": [1, 2, 2], "blocks_per_level": 2},
        {"image_size": 32, "channel_mults": [1, 2, 2, 2], "mid_attention": False, "num_classes": 4},
    ],
)
def test_torch_free_shapes_match_the_unet(values: dict[str, object]) -> None:
    from workers.engine.diffusion.shapes import unet_param_shapes

    config = DiffusionModelConfig.model_validate({"base_channels": 8, "norm_groups": 4, **values})
    state = UNet(config).state_dict()
    shapes = unet_param_shapes(config)
    assert set(shapes) == set(state)  # same keys (the order of a state_dict is not part of the format)
    for name, value in state.items():
        assert shapes[name] == (tuple(value.shape), "F32"), name
