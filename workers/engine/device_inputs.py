"""A dataset's stored inputs as the model's float32 inputs, converted on the device.

uint8 pixels cross to the device as uint8 (a quarter of float32's transfer) and are scaled by 1/255 there;
the dataset's per-channel normalisation, part of its config, is applied there too. Every path that moves a
dataset to the device for a model goes through :func:`device_inputs`, so the model sees the same inputs
in training, evaluation and audits.
"""

from __future__ import annotations

import numpy as np
import torch

from workers.engine.datasets.arrays import UINT8_MAX, ArrayDataset, Normalization


def to_device_inputs(
    array: np.ndarray, device: torch.device, normalization: Normalization | None = None
) -> torch.Tensor:
    """``array`` (float32, or uint8 pixels) as float32 on ``device``: scaled, then normalised per channel."""
    tensor = torch.from_numpy(np.ascontiguousarray(array)).to(device)
    # On the CPU ``.to(device)`` shares the numpy array's memory: only a tensor this function made may be
    # changed in place.
    owned = False
    if tensor.dtype == torch.uint8:
        # In place after the one conversion: the device holds the float copy once, not a second temporary.
        tensor = tensor.to(torch.float32).mul_(1.0 / UINT8_MAX)
        owned = True
    if normalization is not None:
        # Broadcast over N and the spatial axes: input_shape is C x H x W (checked by ArrayDataset.validate).
        view = (1, len(normalization.mean)) + (1,) * (tensor.dim() - 2)
        mean = torch.tensor(normalization.mean, dtype=torch.float32, device=device).view(view)
        std = torch.tensor(normalization.std, dtype=torch.float32, device=device).view(view)
        tensor = tensor.sub_(mean).div_(std) if owned else (tensor - mean) / std
    return tensor


def device_inputs(dataset: ArrayDataset, array: np.ndarray, device: torch.device) -> torch.Tensor:
    """``array`` (one of ``dataset``'s input arrays, or rows of them) with ``dataset``'s input transform."""
    return to_device_inputs(array, device, dataset.normalization)


__all__ = ["device_inputs", "to_device_inputs"]
