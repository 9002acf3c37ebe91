"""``blindspot``: Blindspot unlearning (Tarun et al., "Deep Regression Unlearning", ICML 2023;
blindspot_sfd.md §1.3) for regression, as the reference, and adapted to classification (§1.8).

Not to be confused with ``bad_teacher``, which the bad-teaching code calls "blindspot".

1. Blindspot model b: the same architecture freshly initialised (seeded), trained for ``blindspot_epochs``
   on D_r only with cross-entropy (Adam, ``blindspot_lr``), then frozen (eval mode, no gradients). It has
   never seen D_f.
2. Unlearning from the original model f over the shuffled union D_f u D_r. For a batch B with forget part
   B_f and retain part B_r and c = |B_f| / |B|:

       L = c * L_f + (1 - c) * L_r
       L_f = mean_{B_f} d_out(f(x), b(x)) + sum_l beta * AT(A_l^f(x), A_l^b(x))
       L_r = CE(f(x), y) over B_r

   (a term is 0 when its part of the batch is empty). AT is attention transfer over every block output
   the architecture returns (``workers.engine.architectures.activations``): att(A) = L2-normalised
   channel-mean of A^2 per sample, AT = mean over batch x positions of the squared map difference.

Regression (the reference): d_out, L_r and the blindspot model's training loss are all
``regression_loss`` (L1 by default, the AgeDB code; MSE is the STS-B notebook), each a mean over the samples
of its part of the batch. The AT sum runs over every activation the regressor returns (``resnet18_regressor``:
stem + 8 BasicBlocks, as the reference's ResNet18; ``small_cnn_regressor``: its conv blocks). Deviations:
the MLP regressor's 2-D activations get no attention term - faithful to the reference, whose AT is
identically 0 on 2-D activations (§1.3 quirk), so for an MLP L_f is the output distance alone; the
reference's one-cycle fitting of b is constant-LR Adam here, and b is not checkpointed or selected on a
validation split (the reference's AgeDB run also uses the in-memory weights after epoch 2).

Deviations (classification adaptation): CE instead of L1 as retain loss and to train b; d_out defaults to
KL(softmax(b) || softmax(f)) (``output_distance`` also offers the reference's L1 and the STS-B MSE, on
logits). The attention term applies to 4-D activations only: on the MLP's 2-D activations the reference's
attention map is the constant 1, so AT is identically 0 and those layers are skipped (the result equals
the reference's; an MLP therefore gets no attention term at all). The reference's one-cycle fitting routine
is reduced to constant-LR Adam. Student in train mode, b in eval mode.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from workers.engine.architectures.activations import activation_names, collect_activations
from workers.engine.methods.base import (
    MethodContext,
    MethodOutput,
    inheritance_details,
    resolved_params,
)
from workers.engine.methods.distillation import (
    TEACHER_INIT_SEED_OFFSET,
    attention_map,
    attention_transfer,
    frozen_copy,
    reinitialised_copy,
    train_with_adam,
)
from workers.engine.methods.params_distillation import BlindspotParams
from workers.engine.task_types import TaskType

BLINDSPOT_STAGE = "blindspot_model"
REGRESSION_LOSSES = {"l1": F.l1_loss, "mse": F.mse_loss}


def output_distance(kind: str, student_logits: torch.Tensor, blindspot_logits: torch.Tensor) -> torch.Tensor:
    """Batch-mean distance between the student's and the blindspot model's outputs."""
    if kind == "kl":
        return F.kl_div(
            F.log_softmax(student_logits, dim=1), F.softmax(blindspot_logits, dim=1), reduction="batchmean"
        )
    if kind == "mse":
        return F.mse_loss(student_logits, blindspot_logits)
    return F.l1_loss(student_logits, blindspot_logits)


def run(context: MethodContext) -> MethodOutput:
    params = context.params
    assert isinstance(params, BlindspotParams)
    inherited = params.resolve(context.original_recipe)
    model = context.model
    device = context.data.x_train.device
    forget_inputs, forget_labels = context.data.forget()
    retain_inputs, retain_labels = context.data.retain()
    generator = torch.Generator().manual_seed(context.seed)
    torch.manual_seed(context.seed)  # dropout
    regression = context.task is TaskType.regression
    regression_loss = REGRESSION_LOSSES[params.regression_loss]

    def supervised_loss(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Trains b and is L_r: the regression loss, or cross-entropy for classifiers."""
        return regression_loss(outputs, targets) if regression else F.cross_entropy(outputs, targets)

    def distance_to_blindspot(student: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
        """d_out on forget samples: the regression loss, or ``output_distance`` for classifiers."""
        if regression:
            return regression_loss(student, reference)
        return output_distance(params.output_distance, student, reference)

    # ---- step 1: the blindspot model, partially trained on D_r only
    blindspot = reinitialised_copy(model, context.seed + TEACHER_INIT_SEED_OFFSET)

    def blindspot_loss(batch: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
        return supervised_loss(blindspot(batch), retain_labels[indices])

    blindspot_history = train_with_adam(
        blindspot,
        retain_inputs,
        blindspot_loss,
        epochs=params.blindspot_epochs,
        batch_size=inherited.values["blindspot_batch_size"],
        lr=params.blindspot_lr,
        augment=inherited.values["augment"],
        generator=generator,
        hooks=context.hooks,
        phase=f"{context.phase}:{BLINDSPOT_STAGE}",
        after_step=lambda: None,  # an auxiliary model: the pruning masks constrain the unlearned model only
    ).history
    blindspot = frozen_copy(blindspot)

    # ---- step 2: unlearning on D_f u D_r
    inputs = torch.cat([forget_inputs, retain_inputs])
    labels = torch.cat([forget_labels, retain_labels])
    is_forget = torch.cat(
        [
            torch.ones(forget_inputs.shape[0], dtype=torch.bool, device=device),
            torch.zeros(retain_inputs.shape[0], dtype=torch.bool, device=device),
        ]
    )

    def batch_loss(batch: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
        logits, activations = collect_activations(model, batch)
        forget = is_forget[indices]
        forget_count = int(forget.sum().item())
        fraction = forget_count / batch.shape[0]
        loss = logits.new_zeros(())
        if forget_count:
            with torch.no_grad():
                blindspot_logits, blindspot_activations = collect_activations(blindspot, batch[forget])
            forget_loss = distance_to_blindspot(logits[forget], blindspot_logits)
            for own, reference in zip(activations, blindspot_activations, strict=True):
                if attention_map(own) is not None:
                    forget_loss = forget_loss + params.beta * attention_transfer(own[forget], reference)
            loss = loss + fraction * forget_loss
        if forget_count < batch.shape[0]:
            retain = ~forget
            loss = loss + (1.0 - fraction) * supervised_loss(logits[retain], labels[indices][retain])
        return loss

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
    history, training = run.history, run.training

    with torch.no_grad():
        sample_activations = collect_activations(model.eval(), inputs[:1])[1]
    attention_layers = [
        name
        for name, activation in zip(activation_names(model), sample_activations, strict=True)
        if attention_map(activation) is not None
    ]
    return MethodOutput(
        model=model,
        resolved_params=resolved_params(params, inherited),
        history=history,
        details={
            "blindspot_history": blindspot_history,
            "attention_layers": attention_layers,
            "augment_applied": training.padding is not None,
            **inheritance_details(inherited),
        },
    )
