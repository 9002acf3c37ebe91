"""Torch-free catalog of training and unlearning methods.

A method is a parameter model plus the import path of its torch implementation. Adding one means writing
one implementation module (``run(context) -> MethodOutput``, see ``workers.engine.methods.base``) and
registering it here. Every method's params have a ``preset`` ('lethe' by default, 'reference' for the
reference code's values; see ``workers.engine.methods.params``). The job kind decides the starting point:
``train`` and ``retrain`` start from a seeded random initialisation, ``unlearn`` methods start from the
original model's weights.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel

from workers.engine.diffusion.job_params import DDPMRetrainParams, DDPMTrainParams, SFDJobParams
from workers.engine.methods.params import (
    FinetuneParams,
    GradientAscentParams,
    IdentityParams,
    L1SparseParams,
    PruneParams,
    RandomLabelParams,
    RetrainParams,
    SalUnParams,
    TrainParams,
    TrainRecipe,
)
from workers.engine.methods.params_distillation import (
    BadTeacherParams,
    BlindspotParams,
    IUParams,
    SCRUBParams,
)
from workers.engine.methods.params_regression import GaussianFinetuneParams
from workers.engine.registry import Registry
from workers.engine.search.params import WorstCaseSearchParams
from workers.engine.task_types import TaskType

# "prune" turns a dense model into a sparse one (a model modifier, not unlearning): it starts from the input
# weights and needs no forget set. "search" finds a forget set (no model comes out): it starts from the input
# weights, needs no forget set and runs as the engine's "worst_case_search" request kind.
JobKind = Literal["train", "retrain", "unlearn", "prune", "search"]


@dataclass(frozen=True)
class MethodSpec:
    name: str
    job_kind: JobKind
    description: str
    task_types: tuple[TaskType, ...]
    params_model: type[BaseModel]
    impl: str


METHODS: Registry[MethodSpec] = Registry("method")

METHODS.register(
    MethodSpec(
        name="train",
        job_kind="train",
        description="Train the original model from a seeded random initialisation on the full training set.",
        task_types=(TaskType.classification, TaskType.regression),
        params_model=TrainParams,
        impl="workers.engine.methods.training_methods:run_train",
    )
)
METHODS.register(
    MethodSpec(
        name="retrain",
        job_kind="retrain",
        description=(
            "Exact unlearning (the gold standard): train from a seeded random initialisation on the retain "
            "set with the original model's recipe."
        ),
        task_types=(TaskType.classification, TaskType.regression),
        params_model=RetrainParams,
        impl="workers.engine.methods.training_methods:run_retrain",
    )
)
METHODS.register(
    MethodSpec(
        name="ft",
        job_kind="unlearn",
        description="Fine-tune (FT): keep training the original model on the retain set only (reference FT).",
        task_types=(TaskType.classification, TaskType.regression),
        params_model=FinetuneParams,
        impl="workers.engine.methods.finetune:run",
    )
)

# --- influence and teacher-student methods (params: workers.engine.methods.params_distillation)
METHODS.register(
    MethodSpec(
        name="iu",
        job_kind="unlearn",
        description=(
            "Influence unlearning (IU, Unlearn-Sparse wfisher): one step theta + alpha * k with "
            "k ~ F^-1 (G_f - n_f/n_r G_r) / n; the reference's rank-1 WoodFisher product or a CG/LiSSA "
            "inverse of the damped retain Fisher/Gauss-Newton. Default: alpha chosen by a line search that "
            "keeps retain accuracy within a margin (preset 'reference': the fixed step)."
        ),
        task_types=(TaskType.classification,),
        params_model=IUParams,
        impl="workers.engine.methods.influence:run",
    )
)
METHODS.register(
    MethodSpec(
        name="bad_teacher",
        job_kind="unlearn",
        description=(
            "Bad teaching (Chundawat et al.; called 'blindspot' in its reference code): distil the "
            "original (competent teacher) on retain samples and a random network (incompetent teacher) on "
            "forget samples."
        ),
        task_types=(TaskType.classification,),
        params_model=BadTeacherParams,
        impl="workers.engine.methods.bad_teacher:run",
    )
)
METHODS.register(
    MethodSpec(
        name="scrub",
        job_kind="unlearn",
        description=(
            "SCRUB (Kurmanji et al.): max passes pushing the student away from the frozen original on D_f, "
            "min passes distilling it plus cross-entropy on D_r; schedule 'worstcase' (Unlearn-WorstCase, "
            "preset 'reference') or 'original' (interleaved, the default)."
        ),
        task_types=(TaskType.classification,),
        params_model=SCRUBParams,
        impl="workers.engine.methods.scrub:run",
    )
)
METHODS.register(
    MethodSpec(
        name="blindspot",
        job_kind="unlearn",
        description=(
            "Blindspot unlearning (Tarun et al., Deep Regression Unlearning): pull forget outputs and "
            "attention maps toward a model partially trained on D_r only; the task loss (L1 for regression, "
            "cross-entropy for classifiers) on D_r."
        ),
        task_types=(TaskType.classification, TaskType.regression),
        params_model=BlindspotParams,
        impl="workers.engine.methods.blindspot:run",
    )
)
METHODS.register(
    MethodSpec(
        name="ga",
        job_kind="unlearn",
        description=(
            "Gradient ascent (GA): maximise the task loss (cross-entropy; L1 for regression) on the forget "
            "set, no retain term (reference GA: lr 1e-4 x 5 epochs; default lr 5e-4 with frozen BatchNorm "
            "statistics)."
        ),
        task_types=(TaskType.classification, TaskType.regression),
        params_model=GradientAscentParams,
        impl="workers.engine.methods.gradient_ascent:run",
    )
)
METHODS.register(
    MethodSpec(
        name="gaussian_ft",
        job_kind="unlearn",
        description=(
            "Gaussian fine-tuning (Deep Regression Unlearning's 'Gaussian amnesiac'): replace every forget "
            "target by a draw from the normal fitted to all training targets, then fine-tune on the whole "
            "relabelled training set (Adam lr 1e-3 x 1 epoch, L1)."
        ),
        task_types=(TaskType.regression,),
        params_model=GaussianFinetuneParams,
        impl="workers.engine.methods.gaussian_ft:run",
    )
)
METHODS.register(
    MethodSpec(
        name="rl",
        job_kind="unlearn",
        description=(
            "Random labelling (RL): train on the forget set with random labels and on the retain set with "
            "true labels (SalUn's RL baseline, lr 0.013 x 10 epochs)."
        ),
        task_types=(TaskType.classification,),
        params_model=RandomLabelParams,
        impl="workers.engine.methods.random_labels:run",
    )
)
METHODS.register(
    MethodSpec(
        name="l1_sparse",
        job_kind="unlearn",
        description=(
            "l1-sparse unlearning: fine-tune on the retain set plus a linearly decaying l1 penalty on all "
            "weights (Unlearn-Sparse FT_prune, lr 0.01 x 10 epochs)."
        ),
        task_types=(TaskType.classification,),
        params_model=L1SparseParams,
        impl="workers.engine.methods.l1_sparse:run",
    )
)
METHODS.register(
    MethodSpec(
        name="salun",
        job_kind="unlearn",
        description=(
            "Saliency unlearning (SalUn): random labelling that updates only the weights with the largest "
            "forget-loss gradient (top 50 %); the others stay bit-identical."
        ),
        task_types=(TaskType.classification,),
        params_model=SalUnParams,
        impl="workers.engine.methods.salun:run",
    )
)
METHODS.register(
    MethodSpec(
        name="prune",
        job_kind="prune",
        description=(
            "One-shot global magnitude pruning (OMP) of the conv weights (hidden linear weights for the MLP) "
            "to a target sparsity, then masked fine-tuning on the full training set; returns the masks."
        ),
        task_types=(TaskType.classification,),
        params_model=PruneParams,
        impl="workers.engine.methods.prune:run",
    )
)

METHODS.register(
    MethodSpec(
        name="worst_case_search",
        job_kind="search",
        description=(
            "Worst-case forget-set search (Unlearn-WorstCase, 'Challenging Forgets'): a bi-level search over "
            "a relaxed selection w of samples or classes. The lower level is sign-SGD unlearning from the "
            "input weights and the upper level a projected gradient step on w. It returns the m items "
            "hardest (or easiest) to unlearn and a score for each item."
        ),
        task_types=(TaskType.classification,),
        params_model=WorstCaseSearchParams,
        impl="workers.engine.search.worst_case:run",
    )
)

METHODS.register(
    MethodSpec(
        name="identity",
        job_kind="unlearn",
        description=(
            "A control, not an unlearning method: returns the original model unchanged. An audit must "
            "catch it (U-LiRA accuracy well above 50 %); one that does not lacks the power to judge others."
        ),
        task_types=(TaskType.classification, TaskType.regression),
        params_model=IdentityParams,
        impl="workers.engine.methods.identity:run",
    )
)

# --- generative models (params: workers.engine.diffusion.job_params; engine: workers.engine.diffusion.jobs)
METHODS.register(
    MethodSpec(
        name="ddpm",
        job_kind="train",
        description=(
            "Train a class-conditional DDPM teacher (epsilon-prediction, T = 1000, linear betas, condition "
            "dropout for classifier-free guidance, EMA weights released) on a classification image dataset."
        ),
        task_types=(TaskType.generative,),
        params_model=DDPMTrainParams,
        impl="workers.engine.diffusion.jobs:run_train",
    )
)
METHODS.register(
    MethodSpec(
        name="ddpm_retrain",
        job_kind="retrain",
        description=(
            "The gold reference for a forgotten class: a DDPM trained from scratch with the teacher's recipe "
            "on every class but the forget set's."
        ),
        task_types=(TaskType.generative,),
        params_model=DDPMRetrainParams,
        impl="workers.engine.diffusion.jobs:run_retrain",
    )
)
METHODS.register(
    MethodSpec(
        name="sfd",
        job_kind="unlearn",
        description=(
            "Score Forgetting Distillation (Chen et al.): data-free SiD distillation of the teacher into a "
            "one-step generator whose forgotten class's score is aligned with a safe class's."
        ),
        task_types=(TaskType.generative,),
        params_model=SFDJobParams,
        impl="workers.engine.diffusion.jobs:run_sfd",
    )
)
METHODS.register(
    MethodSpec(
        name="sfd_control",
        job_kind="unlearn",
        description=(
            "The distil-only control of SFD: the same run with both forget coefficients 0 (plain SiD "
            "distillation), so the effect of the forgetting term can be told from distillation's own."
        ),
        task_types=(TaskType.generative,),
        params_model=SFDJobParams,
        impl="workers.engine.diffusion.jobs:run_sfd_control",
    )
)

# The method a train or retrain job runs when it names none, by the model's task type.
DEFAULT_METHODS: dict[tuple[JobKind, TaskType], str] = {
    ("train", TaskType.classification): "train",
    ("train", TaskType.regression): "train",
    ("train", TaskType.generative): "ddpm",
    ("retrain", TaskType.classification): "retrain",
    ("retrain", TaskType.regression): "retrain",
    ("retrain", TaskType.generative): "ddpm_retrain",
}

__all__ = [
    "DEFAULT_METHODS",
    "METHODS",
    "BadTeacherParams",
    "BlindspotParams",
    "FinetuneParams",
    "GaussianFinetuneParams",
    "GradientAscentParams",
    "IUParams",
    "IdentityParams",
    "JobKind",
    "L1SparseParams",
    "MethodSpec",
    "PruneParams",
    "RandomLabelParams",
    "RetrainParams",
    "SCRUBParams",
    "SalUnParams",
    "TrainParams",
    "TrainRecipe",
    "WorstCaseSearchParams",
]
