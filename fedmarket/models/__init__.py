"""Small reference models and safetensors weight (de)serialisation."""

from fedmarket.models.cnn import CNN
from fedmarket.models.mlp import MLP
from fedmarket.models.registry import ModelName, build_model
from fedmarket.models.weights import (
    Weights,
    get_weights,
    set_weights,
    weights_from_bytes,
    weights_to_bytes,
)

__all__ = [
    "CNN",
    "MLP",
    "ModelName",
    "Weights",
    "build_model",
    "get_weights",
    "set_weights",
    "weights_from_bytes",
    "weights_to_bytes",
]
