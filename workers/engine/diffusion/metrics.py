"""Generative-unlearning metrics from classifier outputs (numpy only, torch-free).

Forgetting, on images generated for the forgotten class c_f (``ua_ddpm.py``, blindspot_sfd.md §2.5):
- ``forget_generation_rate`` = P(argmax = c_f); ``ua`` = 1 - that (unlearning accuracy, higher is better);
- ``override_rate`` = P(argmax = c_o) (only with a fixed override class);
- ``forget_class_probability`` = mean softmax probability of c_f; ``forget_entropy`` = mean prediction
  entropy in nats.
Retained classes, on images generated for each retained class c:
- ``retain_accuracy`` = P(argmax = c) over all of them, ``retain_accuracy.<c>`` per class;
- ``fd_retain``: Frechet distance between the classifier features of the generated and of the real
  retained-class images (overall), ``fd.<c>`` per class (the override class included).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def _sqrt_psd(matrix: np.ndarray) -> np.ndarray:
    values, vectors = np.linalg.eigh((matrix + matrix.T) / 2.0)
    values = np.clip(values, 0.0, None)
    return np.asarray((vectors * np.sqrt(values)) @ vectors.T)


def frechet_distance_from_moments(
    mean_a: np.ndarray, cov_a: np.ndarray, mean_b: np.ndarray, cov_b: np.ndarray
) -> float:
    """||mu_a - mu_b||^2 + tr(S_a + S_b - 2 (S_a^1/2 S_b S_a^1/2)^1/2): the Frechet (2-Wasserstein) distance
    of two Gaussians. Computed with symmetric eigendecompositions in float64 (no complex sqrtm artefacts)."""
    mean_a, mean_b = np.asarray(mean_a, np.float64), np.asarray(mean_b, np.float64)
    cov_a, cov_b = np.atleast_2d(np.asarray(cov_a, np.float64)), np.atleast_2d(np.asarray(cov_b, np.float64))
    root_a = _sqrt_psd(cov_a)
    product = root_a @ cov_b @ root_a
    eigenvalues = np.linalg.eigvalsh((product + product.T) / 2.0)
    # Tiny negative eigenvalues are rounding noise of a PSD product.
    trace_sqrt = float(np.sqrt(np.clip(eigenvalues, 0.0, None)).sum())
    distance = float(np.sum((mean_a - mean_b) ** 2) + np.trace(cov_a) + np.trace(cov_b) - 2.0 * trace_sqrt)
    return max(distance, 0.0)


def frechet_distance(features_a: np.ndarray, features_b: np.ndarray) -> float:
    """Frechet distance between Gaussians fitted (mean, unbiased covariance) to two feature sets (N, D)."""
    a = np.asarray(features_a, np.float64)
    b = np.asarray(features_b, np.float64)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1] or min(a.shape[0], b.shape[0]) < 2:
        raise ValueError("frechet_distance needs two (N >= 2, D) feature arrays of the same width")
    return frechet_distance_from_moments(
        a.mean(axis=0), np.cov(a, rowvar=False), b.mean(axis=0), np.cov(b, rowvar=False)
    )


def entropy(probabilities: np.ndarray) -> np.ndarray:
    """Per-row Shannon entropy in nats, with 0 log 0 = 0."""
    p = np.asarray(probabilities, np.float64)
    logs = np.log(np.where(p > 0.0, p, 1.0))
    return np.asarray(-(p * logs).sum(axis=1))


def forgetting_metrics(
    probabilities: np.ndarray, forget_class: int, override_class: int | None
) -> dict[str, float]:
    """Metrics of the images generated for the forgotten class (rows: softmax outputs)."""
    p = np.asarray(probabilities, np.float64)
    predicted = p.argmax(axis=1)
    rate = float(np.mean(predicted == forget_class))
    metrics = {
        "forget_generation_rate": rate,
        "ua": 1.0 - rate,
        "forget_class_probability": float(p[:, forget_class].mean()),
        "forget_entropy": float(entropy(p).mean()),
    }
    if override_class is not None:
        metrics["override_rate"] = float(np.mean(predicted == override_class))
    return metrics


def retained_metrics(
    probabilities: np.ndarray,
    features: np.ndarray,
    conditioning: np.ndarray,
    real_features: np.ndarray,
    real_labels: np.ndarray,
    retained_classes: Sequence[int],
) -> dict[str, float]:
    """Conditional accuracy and Frechet distances of images generated for the retained classes.

    ``conditioning`` is the class each generated image was conditioned on; ``real_*`` describe the real
    reference images (their features and labels); only rows of ``retained_classes`` are used.
    """
    conditioning = np.asarray(conditioning)
    real_labels = np.asarray(real_labels)
    predicted = np.asarray(probabilities).argmax(axis=1)
    generated_mask = np.isin(conditioning, retained_classes)
    real_mask = np.isin(real_labels, retained_classes)
    metrics = {
        "retain_accuracy": float(np.mean(predicted[generated_mask] == conditioning[generated_mask])),
        "fd_retain": frechet_distance(features[generated_mask], real_features[real_mask]),
    }
    for cls in retained_classes:
        generated = conditioning == cls
        metrics[f"retain_accuracy.{cls}"] = float(np.mean(predicted[generated] == cls))
        metrics[f"fd.{cls}"] = frechet_distance(features[generated], real_features[real_labels == cls])
    return metrics
