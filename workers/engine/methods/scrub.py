"""``scrub``: SCRUB (Kurmanji et al., NeurIPS 2023) as shipped in Unlearn-WorstCase (optml.md §6.3).

Student = the original model, teacher = a frozen copy of it. With KL_T(s, t) = T^2 * KL(softmax(t / T) ||
softmax(s / T)) averaged over the batch (``DistillKL``):

* max pass over D_f, in each of the first ``msteps`` epochs: minimise -KL_T(student, teacher), i.e. push
  the student's forget-set predictions away from the original's;
* min pass over D_r, every epoch: minimise alpha * KL_T(student, teacher) + gamma * CE(student, y).

One SGD optimiser (momentum, weight decay) is shared by both passes as in the reference; the student trains
in train mode, the teacher is in eval mode. Defaults and deviations: see ``SCRUBParams`` (the LR default is
Lethe's choice, ``max_lr`` a Lethe addition).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from workers.engine.methods.base import MethodContext, MethodOutput
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
    model = context.model
    teacher = frozen_copy(model)
    forget_inputs, _ = context.data.forget()
    retain_inputs, retain_labels = context.data.retain()
    max_lr = params.max_lr if params.max_lr is not None else params.lr

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

    optimizer = torch.optim.SGD(
        model.parameters(), lr=params.lr, momentum=params.momentum, weight_decay=params.weight_decay
    )
    max_pass = TrainingPass(
        model,
        optimizer,
        forget_inputs,
        params.batch_size,
        augmentation_padding(forget_inputs, params.augment),
        max_loss,
        context.enforce_constraints,
    )
    min_pass = TrainingPass(
        model,
        optimizer,
        retain_inputs,
        params.batch_size,
        augmentation_padding(retain_inputs, params.augment),
        min_loss,
        context.enforce_constraints,
    )
    total = params.msteps * pass_steps(
        forget_inputs.shape[0], params.batch_size
    ) + params.epochs * pass_steps(retain_inputs.shape[0], params.batch_size)
    progress = StepProgress(context.hooks, context.phase, total)
    generator = torch.Generator().manual_seed(context.seed)
    torch.manual_seed(context.seed)  # dropout
    history: list[dict[str, float]] = []
    for epoch in range(1, params.epochs + 1):
        record: dict[str, float] = {"epoch": epoch}
        if epoch <= params.msteps:
            set_learning_rate(optimizer, max_lr)
            record["max_loss"] = max_pass.run(
                generator, progress, {"epoch": epoch, "pass": "max", "lr": max_lr}
            )
            record["max_lr"] = max_lr
        set_learning_rate(optimizer, params.lr)
        record["loss"] = min_pass.run(generator, progress, {"epoch": epoch, "pass": "min", "lr": params.lr})
        record["lr"] = params.lr
        history.append(record)
        progress.epoch_end(record)
    return MethodOutput(
        model=model,
        resolved_params={**params.model_dump(mode="json"), "max_lr": max_lr},
        history=history,
        details={"augment_applied": min_pass.padding is not None},
    )
