"""Relearning time rt(m), the ingredient of AIN (anamnesis index; blindspot_sfd.md §1.6 item 5).

rt(m) is the number of Adam steps of fine-tuning m on the FULL training set (lr 0.01, batch 256, at most
10 epochs in the reference) until the forget-evaluation loss is at most ``tau = (1 + alpha) * L(f_o)``,
``alpha = 0.05``, with the loss re-evaluated after every step. AIN = rt(f_u) / rt(f_g) is formed later from
two jobs' counts (``workers.engine.metrics.regression.comparison_metrics``).

Unlike the reference's ``relearn_time``, which trains the models passed to it in place (its notebook then
reuses an already-relearned gold model), this fine-tunes a deep copy and leaves the given model's weights,
buffers and train/eval mode untouched; the global torch RNG is restored afterwards. Deviations: the loss is
also evaluated before the first step (a model already under tau needs 0 steps); the batch order comes from a
fixed seed (:data:`RELEARN_SEED`), so the unlearned and the retrained model relearn on the same batches;
besides the reference's epoch cap there is a step cap (:data:`RELEARN_MAX_STEPS`) that bounds the cost on
large datasets. A capped run reports the cap and ``capped=True``: its AIN is a lower bound.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from workers.engine.training import batch_bounds

RELEARN_LR = 0.01
RELEARN_BATCH_SIZE = 256
RELEARN_MAX_EPOCHS = 10
RELEARN_MAX_STEPS = 1000
RELEARN_ALPHA = 0.05  # the reference's error_range
RELEARN_SEED = 0
EVAL_BATCH_SIZE = 1024

Loss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class RelearnResult:
    steps: int
    capped: bool
    threshold: float
    initial_loss: float
    final_loss: float
    step_cap: int


@torch.no_grad()
def mean_loss(model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor, loss: Loss = F.l1_loss) -> float:
    """Per-sample mean of ``loss`` over ``inputs`` in eval mode (batched, fp32)."""
    was_training = model.training
    model.eval()
    total = 0.0
    for start in range(0, inputs.shape[0], EVAL_BATCH_SIZE):
        outputs = model(inputs[start : start + EVAL_BATCH_SIZE]).float()
        batch_targets = targets[start : start + EVAL_BATCH_SIZE].float()
        total += float(loss(outputs, batch_targets, reduction="sum"))  # type: ignore[call-arg]
    model.train(was_training)
    return total / max(inputs.shape[0], 1)


def relearn_threshold(original_loss: float, alpha: float = RELEARN_ALPHA) -> float:
    """tau = (1 + alpha) * L_forget(f_o)."""
    return (1.0 + alpha) * original_loss


def relearn_steps(
    model: nn.Module,
    train_inputs: torch.Tensor,
    train_targets: torch.Tensor,
    eval_inputs: torch.Tensor,
    eval_targets: torch.Tensor,
    threshold: float,
    *,
    lr: float = RELEARN_LR,
    batch_size: int = RELEARN_BATCH_SIZE,
    max_epochs: int = RELEARN_MAX_EPOCHS,
    max_steps: int = RELEARN_MAX_STEPS,
    seed: int = RELEARN_SEED,
    loss: Loss = F.l1_loss,
) -> RelearnResult:
    """Adam steps on a copy of ``model`` over (train_inputs, train_targets) until the mean ``loss`` on
    (eval_inputs, eval_targets) is at most ``threshold``; ``model`` itself is not modified."""
    bounds = batch_bounds(train_inputs.shape[0], batch_size)
    step_cap = min(max_steps, max_epochs * len(bounds))
    with torch.random.fork_rng(devices=[train_inputs.device] if train_inputs.device.type == "cuda" else []):
        torch.manual_seed(seed)  # dropout in the copy
        work = copy.deepcopy(model)
        work.requires_grad_(True)
        optimizer = torch.optim.Adam(work.parameters(), lr=lr)
        generator = torch.Generator().manual_seed(seed)
        current = initial = mean_loss(work, eval_inputs, eval_targets, loss)
        steps = 0
        while current > threshold and steps < step_cap:
            order = torch.randperm(train_inputs.shape[0], generator=generator).to(train_inputs.device)
            for start, end in bounds:
                work.train()
                indices = order[start:end]
                batch_loss = loss(work(train_inputs[indices]).float(), train_targets[indices].float())
                optimizer.zero_grad(set_to_none=True)
                batch_loss.backward()
                optimizer.step()
                steps += 1
                current = mean_loss(work, eval_inputs, eval_targets, loss)
                if current <= threshold or steps >= step_cap:
                    break
    return RelearnResult(
        steps=steps,
        capped=current > threshold,
        threshold=threshold,
        initial_loss=initial,
        final_loss=current,
        step_cap=step_cap,
    )
