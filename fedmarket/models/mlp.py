"""A small multilayer perceptron: the demo model."""

from __future__ import annotations

import math

import torch
from torch import nn


class MLP(nn.Module):
    """Flatten -> Linear -> tanh -> Linear. No batch norm, so it works with DP-SGD.

    tanh rather than ReLU: bounded activations keep per-sample gradients small, so less is
    lost to clipping (Papernot et al. 2021, "Tempered Sigmoid Activations for Deep Learning
    with Differential Privacy"). On the demo it gained ~5 accuracy points at the same epsilon.
    """

    def __init__(self, input_shape: tuple[int, ...], num_classes: int, hidden: int = 128) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Flatten(),
            nn.Linear(math.prod(input_shape), hidden),
            nn.Tanh(),
            nn.Linear(hidden, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.net(x)
        return out
