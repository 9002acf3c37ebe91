"""Issue 7's done-means on scikit-learn's digits, on CPU in minutes (slow).

One teacher and one metric classifier are trained per module; the distil-only control and SFD then run
from the same teacher, seed and settings, differing only in the forget coefficients (0 and the 'lethe'
preset's 0.05). SFD must lower the forgotten class's generation rate at least tenfold relative to the
control while the retained classes' conditional accuracy and Frechet distance stay close to the control's.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import pytest

from workers.engine.datasets import ArrayDataset
from workers.engine.diffusion import api
from workers.engine.diffusion.job_params import GenerativeEvaluation
from workers.engine.diffusion.params import (
    ClassifierParams,
    DDPMTrainParams,
    DiffusionModelConfig,
    GenerativeEvalParams,
    SFDParams,
)

pytestmark = pytest.mark.slow

SEED = 0
# The teacher is scaled down from the package default (1,200 instead of 1,500 steps, ~53 epochs) so that the
# module fits in a few minutes on 2 CPU cores; SFD runs with the package's 'lethe' defaults on digit 3, the
# class the earlier defaults failed to forget (0.92 -> 0.64); bench/diffusion_sfd.py covers every class.
TEACHER = DDPMTrainParams(steps=1200, batch_size=64)
SFD = SFDParams(forget_class=3, override_class=4)
EVALUATION = GenerativeEvalParams(samples_per_class=100, forget_samples=500)
MIN_CLASSIFIER_ACCURACY = 0.95  # blindspot_sfd.md §2.7
MIN_FORGET_REDUCTION = 10.0
# "Close to the control": retained accuracy within 5 points, Frechet distance within 25 % (+1 for noise
# of the ~100-samples-per-class estimate when both are small).
MAX_ACCURACY_DROP = 0.05
MAX_FD_RATIO = 1.25
FD_SLACK = 1.0


@dataclass
class Run:
    metrics: dict[str, float]
    seconds: float


@dataclass
class Pipeline:
    config: DiffusionModelConfig
    classifier: api.ClassifierResult
    teacher_seconds: float
    control: Run
    sfd: Run


@pytest.fixture(scope="module")
def pipeline(digits: ArrayDataset) -> Pipeline:
    config = api.default_model_config(digits)
    teacher = api.train_ddpm(digits, TEACHER, config=config, seed=SEED)
    classifier = api.train_metric_classifier(digits, ClassifierParams(), seed=SEED)
    runs = {}
    for name, params in (("control", SFD.distill_only()), ("sfd", SFD)):
        started = time.perf_counter()
        result = api.run_sfd(teacher.weights, config, params, digits.y_train, seed=SEED)
        samples = api.sample_for_evaluation(
            result.weights,
            config,
            EVALUATION,
            forget_class=SFD.forget_class,
            t_init=result.t_init,
            seed=GenerativeEvaluation().seed,
        )
        metrics = api.evaluate_generative(
            samples,
            classifier,
            digits.x_train,
            digits.y_train,
            forget_class=SFD.forget_class,
            override_class=SFD.override_class,
        )
        runs[name] = Run(metrics, time.perf_counter() - started)
    summary = {
        name: {
            key: round(run.metrics[key], 4)
            for key in ("forget_generation_rate", "override_rate", "retain_accuracy", "fd_retain")
        }
        | {"seconds": round(run.seconds, 1)}
        for name, run in runs.items()
    }
    print(
        f"\nteacher {teacher.seconds:.1f} s; classifier accuracy {classifier.test_accuracy:.3f} "
        f"({classifier.seconds:.1f} s); {summary}"
    )
    return Pipeline(config, classifier, teacher.seconds, runs["control"], runs["sfd"])


def test_metric_classifier_is_accurate(pipeline: Pipeline) -> None:
    assert pipeline.classifier.test_accuracy >= MIN_CLASSIFIER_ACCURACY


def test_control_still_generates_the_class_sfd_forgets(pipeline: Pipeline) -> None:
    control = pipeline.control.metrics
    assert control["forget_generation_rate"] >= 0.8  # distillation alone does not forget
    assert control["retain_accuracy"] >= 0.8  # the one-step generator makes recognisable digits


def test_sfd_lowers_the_forget_generation_rate_tenfold(pipeline: Pipeline) -> None:
    control, unlearned = pipeline.control.metrics, pipeline.sfd.metrics
    assert unlearned["forget_generation_rate"] * MIN_FORGET_REDUCTION <= control["forget_generation_rate"]
    assert unlearned["ua"] >= 0.9
    # The forgotten class is replaced by the override class, not by noise.
    assert unlearned["override_rate"] > control["override_rate"]


def test_sfd_keeps_the_retained_classes_close_to_the_control(pipeline: Pipeline) -> None:
    control, unlearned = pipeline.control.metrics, pipeline.sfd.metrics
    assert unlearned["retain_accuracy"] >= control["retain_accuracy"] - MAX_ACCURACY_DROP
    assert unlearned["fd_retain"] <= MAX_FD_RATIO * control["fd_retain"] + FD_SLACK


def test_one_step_generators_cost_one_network_evaluation(pipeline: Pipeline) -> None:
    for run in (pipeline.control, pipeline.sfd):
        assert run.metrics["nfe_per_sample"] == 1.0
        assert run.metrics["seconds_per_sample"] > 0.0
