"""Central evaluation of a model on a held-out data set."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from fedmarket.data.dataset import Dataset


@dataclass(frozen=True)
class Evaluation:
    loss: float
    accuracy: float


@torch.no_grad()
def evaluate(model: nn.Module, data: Dataset, *, batch_size: int = 512) -> Evaluation:
    """Mean cross-entropy and accuracy of ``model`` on ``data``."""
    model.eval()
    features, labels = torch.from_numpy(data.features), torch.from_numpy(data.labels)
    total_loss, correct = 0.0, 0
    for start in range(0, len(data), batch_size):
        logits = model(features[start : start + batch_size])
        target = labels[start : start + batch_size]
        total_loss += float(nn.functional.cross_entropy(logits, target, reduction="sum"))
        correct += int((logits.argmax(dim=1) == target).sum())
    n = max(len(data), 1)
    return Evaluation(loss=total_loss / n, accuracy=correct / n)
