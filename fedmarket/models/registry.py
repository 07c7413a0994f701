"""Build a reference model by name."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal, get_args

import numpy as np
import torch
from numpy.typing import NDArray
from torch import nn

from fedmarket.exceptions import InvalidInput
from fedmarket.models.cnn import CNN
from fedmarket.models.mlp import MLP

ModelName = Literal["mlp", "cnn"]
_OUTPUT_BIAS: dict[str, str] = {"mlp": "net.3.bias", "cnn": "head.3.bias"}


def parse_model_name(name: object) -> ModelName:
    """Check that ``name`` names a known model."""
    for known in get_args(ModelName):
        if name == known:
            return known  # type: ignore[no-any-return]  # a member of the Literal
    raise InvalidInput(f"unknown model {name!r}; choose one of {', '.join(get_args(ModelName))}")


def output_classes(name: ModelName, weights: Mapping[str, NDArray[np.float32]]) -> int:
    """How many classes a model ``name`` with these weights predicts: its output layer's size.

    A device takes the task's classes from the global model, never from its own records
    (which classes its records happen to hold is private).

    Raises
    ------
    InvalidInput
        if ``weights`` lack the model's output layer.
    """
    bias = weights.get(_OUTPUT_BIAS[name])
    if bias is None or bias.ndim != 1 or bias.shape[0] < 2:
        raise InvalidInput(f"the global model is no {name!r}: it has no output layer")
    return int(bias.shape[0])


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
