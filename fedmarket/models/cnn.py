"""A small convolutional network for image-shaped inputs ``(channels, height, width)``."""

from __future__ import annotations

import torch
from torch import nn


class CNN(nn.Module):
    """Two 3x3 conv blocks (ReLU, 2x2 max-pool) and a two-layer head.

    GroupNorm-free and BatchNorm-free so Opacus can compute per-sample gradients.
    ``channels=(32, 64), hidden=300`` on 28x28 inputs gives ~1M parameters.
    """

    def __init__(
        self,
        input_shape: tuple[int, ...],
        num_classes: int,
        channels: tuple[int, int] = (16, 32),
        hidden: int = 64,
    ) -> None:
        super().__init__()
        if len(input_shape) != 3:
            raise ValueError(f"CNN needs (channels, height, width) inputs, got {input_shape}")
        in_channels, height, width = input_shape
        c1, c2 = channels
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, c1, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(c1, c2, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        flat = c2 * (height // 4) * (width // 4)
        self.head = nn.Sequential(
            nn.Flatten(), nn.Linear(flat, hidden), nn.ReLU(), nn.Linear(hidden, num_classes)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.head(self.features(x))
        return out
