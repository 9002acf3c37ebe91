"""``bad_teacher``: competent / incompetent teacher distillation (Chundawat et al., "Can Bad Teaching Induce
Forgetting?", AAAI 2023; blindspot_sfd.md §1.8).

The reference code calls this routine ``blindspot_unlearner`` ("blindspot"); it is unrelated to Deep
Regression Unlearning's blindspot method, which Lethe registers as ``blindspot``.

The student starts from the original model f_o. Two frozen teachers: the competent teacher f_o itself and
an incompetent teacher, a randomly initialised untrained network of the same architecture. Each sample of
D_f (flag u = 1) and of a random ``retain_fraction`` of D_r (u = 0) gets the target

    p_T = u * softmax(z_incompetent / T) + (1 - u) * softmax(z_competent / T)

and the student minimises KL(p_T || softmax(z_student / T)) (``F.kl_div`` with the reference's 'mean'
reduction by default). No labels are used. Adam, constant LR, student in train mode, teachers in eval mode.
Batch size and augmentation come from the original model's recipe unless given (the 'lethe' preset).
Defaults and deviations: see ``BadTeacherParams`` (the incompetent teacher is seeded; the reference's is
not).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from workers.engine.methods.base import (
    MethodContext,
    MethodOutput,
    inheritance_details,
    resolved_params,
)
from workers.engine.methods.distillation import (
    SUBSET_SEED_OFFSET,
    TEACHER_INIT_SEED_OFFSET,
    frozen_copy,
    kl_to_target,
    reinitialised_copy,
    seeded_subset,
    train_with_adam,
)
from workers.engine.methods.params_distillation import BadTeacherParams


def run(context: MethodContext) -> MethodOutput:
    params = context.params
    assert isinstance(params, BadTeacherParams)
    inherited = params.resolve(context.original_recipe)
    model = context.model
    device = context.data.x_train.device
    competent = frozen_copy(model)
    incompetent = frozen_copy(reinitialised_copy(model, context.seed + TEACHER_INIT_SEED_OFFSET))

    forget_inputs, _ = context.data.forget()
    retain_inputs, _ = context.data.retain()
    subset = seeded_subset(
        retain_inputs.shape[0], params.retain_fraction, context.seed + SUBSET_SEED_OFFSET, device
    )
    inputs = torch.cat([forget_inputs, retain_inputs[subset]])
    is_forget = torch.cat(
        [
            torch.ones(forget_inputs.shape[0], dtype=torch.bool, device=device),
            torch.zeros(subset.shape[0], dtype=torch.bool, device=device),
        ]
    )

    def batch_loss(batch: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            competent_probabilities = F.softmax(competent(batch) / params.temperature, dim=1)
            incompetent_probabilities = F.softmax(incompetent(batch) / params.temperature, dim=1)
            target = torch.where(
                is_forget[indices].unsqueeze(1), incompetent_probabilities, competent_probabilities
            )
        return kl_to_target(model(batch), target, params.temperature, params.kl_reduction)

    generator = torch.Generator().manual_seed(context.seed)
    torch.manual_seed(context.seed)  # dropout
    run = train_with_adam(
        model,
        inputs,
        batch_loss,
        epochs=params.epochs,
        batch_size=inherited.values["batch_size"],
        lr=params.lr,
        augment=inherited.values["augment"],
        generator=generator,
        hooks=context.hooks,
        phase=context.phase,
        after_step=context.enforce_constraints,
    )
    training = run.training
    return MethodOutput(
        model=model,
        resolved_params=resolved_params(params, inherited),
        history=run.history,
        details={
            "n_forget_used": int(forget_inputs.shape[0]),
            "n_retain_used": int(subset.shape[0]),
            "augment_applied": training.padding is not None,
            **inheritance_details(inherited),
        },
    )
