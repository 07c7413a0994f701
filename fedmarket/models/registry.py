"""Build a reference model by name."""

from __future__ import annotations

from typing import Literal, get_args

import torch
from torch import nn

from fedmarket.exceptions import InvalidInput
from fedmarket.models.cnn import CNN
from fedmarket.models.mlp import MLP

ModelName = Literal["mlp", "cnn"]


def parse_model_name(name: object) -> ModelName:
    """Check that ``name`` names a known model."""
    for known in get_args(ModelName):
        if name == known:
            return known  # type: ignore[no-any-return]  # a member of the Literal
    raise InvalidInput(f"unknown model {name!r}; choose one of {', '.join(get_args(ModelName))}")


def build_model(
    name: ModelName, input_shape: tuple[int, ...], num_classes: int, *, seed: int
) -> nn.Module:
    """A freshly initialised model; the same seed gives the same initial weights."""
    if name not in get_args(ModelName):
        raise InvalidInput(
            f"unknown model {name!r}; choose one of {', '.join(get_args(ModelName))}"
        )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if name == "mlp":
            return MLP(input_shape, num_classes)
        if len(input_shape) != 3:
            raise InvalidInput(
                f"model 'cnn' needs image inputs (channels, height, width); got {input_shape}"
            )
        return CNN(input_shape, num_classes)
