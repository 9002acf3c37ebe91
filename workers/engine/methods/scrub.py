"""``scrub``: SCRUB (Kurmanji et al., NeurIPS 2023), by default as in Unlearn-WorstCase (optml.md §6.3).

Student = the original model, teacher = a frozen copy of it. With KL_T(s, t) = T^2 * KL(softmax(t / T) ||
softmax(s / T)) averaged over the batch (``DistillKL``):

* max pass over D_f: minimise -KL_T(student, teacher), i.e. push the student's forget-set predictions away
  from the original's (batches of ``forget_batch_size``);
* min pass over D_r: minimise alpha * KL_T(student, teacher) + gamma * CE(student, y) (batches of
  ``batch_size``).

Which passes an epoch runs is ``SCRUBParams.passes``: ``schedule='worstcase'`` (WC's code, the default)
runs only max passes in epochs 1..msteps and only min passes afterwards; ``'original'`` (Kurmanji et al.)
runs a max then a min pass in epochs 1..msteps and min passes afterwards. The LR of each epoch follows
``SCRUBParams.learning_rate`` (x lr_decay_rate after each of lr_decay_epochs), from ``max_lr`` for max passes
and ``lr`` for min passes. One SGD optimiser (momentum, weight decay) is shared by both passes as in the
reference; the student trains in train mode, the teacher is in eval mode. ``bn='frozen'`` restores the
student's BatchNorm running statistics after every max step. Each history record lists the passes the
epoch ran (``passes``) with their LRs. Defaults and deviations: see ``SCRUBParams``.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from workers.engine.methods.base import (
    BatchNormStatistics,
    MethodContext,
    MethodOutput,
    inheritance_details,
    resolved_params,
)
from workers.engine.methods.distillation import (
    StepProgress,
    TrainingPass,
    augmentation_padding,
    distill_kl,
    frozen_copy,
    pass_steps,
    set_learning_rate,
)
from workers.engine.methods.params_distillation import SCRUBParams


def run(context: MethodContext) -> MethodOutput:
    params = context.params
    assert isinstance(params, SCRUBParams)
    inherited = params.resolve(context.original_recipe)
    batch_size: int = inherited.values["batch_size"]
    forget_batch_size: int = inherited.values["forget_batch_size"]
    augment: bool = inherited.values["augment"]
    model = context.model
    teacher = frozen_copy(model)
    forget_inputs, _ = context.data.forget()
    retain_inputs, retain_labels = context.data.retain()
    max_lr = params.max_lr if params.max_lr is not None else params.lr
    statistics = BatchNormStatistics(model) if params.bn == "frozen" else None

    def max_loss(batch: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            teacher_logits = teacher(batch)
        return -distill_kl(model(batch), teacher_logits, params.temperature)

    def min_loss(batch: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            teacher_logits = teacher(batch)
        logits = model(batch)
        return params.alpha * distill_kl(logits, teacher_logits, params.temperature) + (
            params.gamma * F.cross_entropy(logits, retain_labels[indices])
        )

    def after_max_step() -> None:
        if statistics is not None:
            statistics.restore()
        context.enforce_constraints()

    optimizer = torch.optim.SGD(
        model.parameters(), lr=params.lr, momentum=params.momentum, weight_decay=params.weight_decay
    )
    training_passes = {
        "max": TrainingPass(
            model,
            optimizer,
            forget_inputs,
            forget_batch_size,
            augmentation_padding(forget_inputs, augment),
            max_loss,
            after_max_step,
        ),
        "min": TrainingPass(
            model,
            optimizer,
            retain_inputs,
            batch_size,
            augmentation_padding(retain_inputs, augment),
            min_loss,
            context.enforce_constraints,
        ),
    }
    base_lrs = {"max": max_lr, "min": params.lr}
    loss_keys = {"max": "max_loss", "min": "loss"}
    steps = {
        "max": pass_steps(forget_inputs.shape[0], forget_batch_size),
        "min": pass_steps(retain_inputs.shape[0], batch_size),
    }
    epochs = range(1, params.epochs + 1)
    total = sum(steps[name] for epoch in epochs for name in params.passes(epoch))
    progress = StepProgress(context.hooks, context.phase, total)
    generator = torch.Generator().manual_seed(context.seed)
    torch.manual_seed(context.seed)  # dropout
    history: list[dict[str, Any]] = []
    for epoch in epochs:
        record: dict[str, Any] = {"epoch": epoch, "passes": list(params.passes(epoch))}
        for name in params.passes(epoch):
            lr = params.learning_rate(base_lrs[name], epoch)
            set_learning_rate(optimizer, lr)
            record[loss_keys[name]] = training_passes[name].run(
                generator, progress, {"epoch": epoch, "pass": name, "lr": lr}
            )
            record[f"{name}_lr"] = lr
        record["lr"] = record.get("min_lr", record.get("max_lr"))
        history.append(record)
        progress.epoch_end(record)
    return MethodOutput(
        model=model,
        resolved_params={**resolved_params(params, inherited), "max_lr": max_lr},
        history=history,
        details={
            "augment_applied": training_passes["min"].padding is not None,
            "pass_schedule": [record["passes"] for record in history],
            **inheritance_details(inherited),
        },
    )
