"""The metric classifier of the generative evaluation (blindspot_sfd.md §2.5, §2.7 step 1).

A small CNN trained on the real training images of all classes (seeded, Adam, cross-entropy). Its
softmax gives the forget-class generation rate, the override rate and the entropy; its penultimate layer
(``hidden`` units after ReLU) is the feature space of the Frechet distance (a "tiny FID"; the reference
uses an ImageNet ResNet34 fine-tuned on CIFAR-10 and the Inception pool features).
Inputs are images in the data range [0, 1], as stored in the dataset.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from workers.engine.diffusion.params import ClassifierParams
from workers.engine.diffusion.runtime import Stopwatch, hooks_or_null, seeded_generator
from workers.engine.hooks import EngineHooks

PHASE = "metric_classifier"

CONV_WIDTH = 32
# Feature maps are pooled to this side before the dense layers, so any image size >= 8 works.
POOLED_SIDE = 4
EVAL_BATCH = 2048


class MetricClassifier(nn.Module):
    def __init__(self, channels: int, num_classes: int, hidden: int):
        super().__init__()
        self.conv = nn.Sequential(
            nn.Conv2d(channels, CONV_WIDTH, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(CONV_WIDTH, 2 * CONV_WIDTH, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(POOLED_SIDE),
        )
        self.hidden = nn.Linear(2 * CONV_WIDTH * POOLED_SIDE * POOLED_SIDE, hidden)
        self.head = nn.Linear(hidden, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.hidden(self.conv(x).flatten(1)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        result: torch.Tensor = self.head(self.features(x))
        return result


@dataclass
class ClassifierOutput:
    model: MetricClassifier
    history: list[dict[str, float]] = field(default_factory=list)
    seconds: float = 0.0


def train(
    images: torch.Tensor,
    labels: torch.Tensor,
    num_classes: int,
    params: ClassifierParams,
    *,
    seed: int,
    hooks: EngineHooks | None = None,
) -> ClassifierOutput:
    """Train on ``images`` (N, C, H, W) in [0, 1] and int64 ``labels`` already on the device;
    ``hooks.progress("metric_classifier", step, total, {})`` after every batch (a job's heartbeat)."""
    progress = hooks_or_null(hooks)
    batches = -(-images.shape[0] // params.batch_size)
    device = images.device
    torch.manual_seed(seed)
    model = MetricClassifier(images.shape[1], num_classes, params.hidden).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=params.lr, weight_decay=params.weight_decay)
    generator = seeded_generator(seed, device)
    count = images.shape[0]
    watch = Stopwatch(device)
    history: list[dict[str, float]] = []
    model.train()
    for epoch in range(params.epochs):
        order = torch.randperm(count, generator=generator, device=device)
        total = torch.zeros((), device=device)
        for start in range(0, count, params.batch_size):
            index = order[start : start + params.batch_size]
            loss = F.cross_entropy(model(images[index]), labels[index])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += loss.detach() * index.shape[0]
            step = epoch * batches + start // params.batch_size + 1
            progress.progress(PHASE, step, params.epochs * batches, {})
        history.append({"epoch": epoch + 1, "loss": float(total.item()) / count})
    model.eval()
    return ClassifierOutput(model=model, history=history, seconds=watch.seconds())


@torch.no_grad()
def predict(model: MetricClassifier, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(softmax probabilities, penultimate features) of ``images`` in [0, 1], in float32, batched."""
    probabilities, features = [], []
    for start in range(0, images.shape[0], EVAL_BATCH):
        batch = images[start : start + EVAL_BATCH]
        hidden = model.features(batch)
        probabilities.append(torch.softmax(model.head(hidden).float(), dim=1))
        features.append(hidden.float())
    return torch.cat(probabilities), torch.cat(features)
