"""Validated parameters of an ``audit`` job (pydantic only, torch-free: the API validates submissions).

An audit measures how well one unlearning *method* (with fixed hyperparameters) forgets, on shadow pipelines
that repeat the whole story many times with different seeds (peers.md §3.3, §3.5):

- K base models trained on the full training split with the original model's recipe;
- for each of F forget sets per base: a retrained model (trained without the forget set) and an unlearned
  model (the method applied to the base model and the forget set);
- K LiRA shadows on random halves of the pool (train + test split) for LiRA and RMIA against the original
  and the unlearned models.

Cost in trainings: K + K·F (+ K for LiRA/RMIA, + K Kaggle calibration retrains); K·F unlearning runs, + K
for the Kaggle score's released protocol. Everything but the unlearning runs is reusable across methods; the
store keeps all of it.

Kaggle protocol (``kaggle_protocol``):

- ``released`` (default): as the NeurIPS'23 challenge's released evaluation, N unlearning runs with
  different seeds from ONE original model (the job's model, trained once) against N retrains without the
  forget set, here N = K (the challenge used N = 512). Faithful to the definition ((ε, δ)-unlearning is a
  statement about one D and one S, the randomness being the algorithms' seeds) and on a CPU no dearer than
  the pipelines: K unlearning runs of the audited method and the K retrains the U-LiRA pipelines need too.
- ``pipelines``: the unlearned sample is the K pipelines' unlearned models (one per base model), so it also
  carries the base models' training randomness; cheaper when U-LiRA runs anyway (no extra unlearning),
  averaged over the F forget sets.

``kaggle_calibration`` (default on) trains K more retrains with fresh seeds and scores retrain against
retrain at the same N: the ceiling a perfect method can reach at this N.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from workers.engine.errors import UnknownEntryError
from workers.engine.methods import METHODS
from workers.engine.methods.params import TrainRecipe

# Below 3 pipelines the leave-one-out U-LiRA fits Gaussians on a single sample.
MIN_SHADOWS = 3
MAX_SHADOWS = 256
MAX_FORGET_SETS_PER_SHADOW = 64
MAX_BOOTSTRAP = 2000
DEFAULT_SHADOWS = 16
DEFAULT_BOOTSTRAP = 200
# Methods an audit can evaluate: any unlearning method, and retrain (the calibration control).
AUDITABLE_JOB_KINDS = ("unlearn", "retrain")

AttackName = Literal["ulira", "kaggle", "lira", "rmia"]
ALL_ATTACKS: tuple[AttackName, ...] = ("ulira", "kaggle", "lira", "rmia")
# Attacks that need the LiRA shadows (random halves of the pool).
POOL_SHADOW_ATTACKS = frozenset({"lira", "rmia"})
# Attacks that compare unlearned with retrained pipelines.
RETRAIN_ATTACKS = frozenset({"ulira", "kaggle"})
# Attacks that use the pipelines' unlearned models (the K base models, each unlearned on each forget set).
PIPELINE_ATTACKS = frozenset({"ulira", "lira", "rmia"})
KaggleProtocol = Literal["released", "pipelines"]

Alpha = Annotated[float, Field(gt=0.0, lt=1.0, allow_inf_nan=False)]


class AuditParams(BaseModel):
    """What to audit and how hard. The forget set and the original model come from the job itself."""

    model_config = ConfigDict(extra="forbid")

    method: str = Field(description="The unlearning method under audit (or 'retrain', the control).")
    method_params: dict[str, Any] = Field(
        default_factory=dict, description="The method's parameters, fixed across all pipelines."
    )
    shadows: int = Field(
        default=DEFAULT_SHADOWS,
        ge=MIN_SHADOWS,
        le=MAX_SHADOWS,
        description="K: base shadow models (and LiRA shadows); 16 is the useful minimum for LiRA.",
    )
    forget_sets_per_shadow: int = Field(
        default=1,
        ge=1,
        le=MAX_FORGET_SETS_PER_SHADOW,
        description=(
            "F: forget sets per base model. The first is the job's forget set; further ones are fresh "
            "random draws of the same size (random forget sets only)."
        ),
    )
    attacks: list[AttackName] = Field(
        default_factory=lambda: list(ALL_ATTACKS), min_length=1, description="Attacks to run."
    )
    recipe: TrainRecipe | None = Field(
        default=None,
        description="Training recipe of every shadow; null reuses the original model's recipe.",
    )
    fixed_variance: bool = Field(
        default=False, description="U-LiRA with one global variance per side (better with few shadows)."
    )
    alphas: list[Alpha] = Field(
        default_factory=lambda: [0.01, 0.001], min_length=1, max_length=8, description="FPR levels."
    )
    n_bootstrap: int = Field(
        default=DEFAULT_BOOTSTRAP,
        ge=0,
        le=MAX_BOOTSTRAP,
        description=(
            "Bootstrap replicates of every interval; U-LiRA, LiRA and RMIA resample pipelines and examples "
            "(two-way cluster bootstrap), since their pooled trials are not independent."
        ),
    )
    kaggle_protocol: KaggleProtocol = Field(
        default="released",
        description=(
            "Kaggle ε score: 'released' = N = K unlearning runs (different seeds) of the job's original "
            "model vs N retrains, as the NeurIPS'23 evaluation; 'pipelines' = the K pipelines' unlearned "
            "models (K different base models) vs their retrains."
        ),
    )
    kaggle_calibration: bool = Field(
        default=True,
        description=(
            "Also score K fresh retrains against the K retrains (K more trainings): the Kaggle ceiling a "
            "perfect method reaches at this N."
        ),
    )
    chunk_size: int | None = Field(
        default=None, ge=1, le=MAX_SHADOWS, description="Models trained at once (memory bound); null: all."
    )

    @model_validator(mode="after")
    def _check_method(self) -> AuditParams:
        try:
            spec = METHODS.get(self.method)
        except UnknownEntryError:
            auditable = [m.name for m in METHODS if m.job_kind in AUDITABLE_JOB_KINDS]
            raise ValueError(f"unknown method {self.method!r}; auditable: {auditable}") from None
        if spec.job_kind not in AUDITABLE_JOB_KINDS:
            raise ValueError(f"method {self.method!r} is a {spec.job_kind} method, not an unlearning method")
        try:
            parsed = spec.params_model.model_validate(self.method_params)
        except ValidationError as error:
            details = "; ".join(
                f"{'.'.join(str(p) for p in item['loc']) or 'method_params'}: {item['msg']}"
                for item in error.errors(include_url=False)
            )
            raise ValueError(f"invalid method_params for {self.method}: {details}") from None
        self.method_params = parsed.model_dump(mode="json")
        self.attacks = sorted(set(self.attacks), key=ALL_ATTACKS.index)
        return self

    @property
    def needs_pool_shadows(self) -> bool:
        return bool(POOL_SHADOW_ATTACKS.intersection(self.attacks))

    @property
    def needs_retrains(self) -> bool:
        return bool(RETRAIN_ATTACKS.intersection(self.attacks))

    @property
    def needs_pipelines(self) -> bool:
        """Whether base models and their unlearned versions are needed (not for a released Kaggle alone)."""
        pipelines_kaggle = "kaggle" in self.attacks and self.kaggle_protocol == "pipelines"
        return pipelines_kaggle or bool(PIPELINE_ATTACKS.intersection(self.attacks))

    @property
    def needs_released_unlearning(self) -> bool:
        """Whether the original model is unlearned K times (the released Kaggle protocol)."""
        return "kaggle" in self.attacks and self.kaggle_protocol == "released"

    @property
    def needs_kaggle_calibration(self) -> bool:
        return "kaggle" in self.attacks and self.kaggle_calibration
