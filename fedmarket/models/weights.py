"""Model weights as named float32 arrays, serialised with safetensors (never pickle)."""

from __future__ import annotations

import numpy as np
import torch
from numpy.typing import NDArray
from safetensors import SafetensorError
from safetensors.numpy import load as st_load
from safetensors.numpy import save as st_save
from torch import nn

from fedmarket.exceptions import InvalidInput

Weights = dict[str, NDArray[np.float32]]
"""Parameter name -> array."""


def get_weights(model: nn.Module) -> Weights:
    return {
        name: tensor.detach().cpu().numpy().astype(np.float32, copy=True)
        for name, tensor in model.state_dict().items()
    }


def set_weights(model: nn.Module, weights: Weights) -> None:
    """Load ``weights`` into ``model``; names and shapes must match exactly."""
    expected = model.state_dict()
    if set(expected) != set(weights):
        raise InvalidInput(
            f"weights do not fit the model: expected tensors {sorted(expected)}, "
            f"got {sorted(weights)}"
        )
    for name, tensor in expected.items():
        if tuple(tensor.shape) != weights[name].shape:
            raise InvalidInput(
                f"weights do not fit the model: {name} has shape {weights[name].shape}, "
                f"model expects {tuple(tensor.shape)}"
            )
    model.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in weights.items()})


def weights_to_bytes(weights: Weights) -> bytes:
    """safetensors bytes (tensors are matched by name on load, so order does not matter)."""
    return st_save(dict(weights))


def weights_from_bytes(data: bytes) -> Weights:
    try:
        loaded = st_load(data)
    except (SafetensorError, ValueError) as exc:
        raise InvalidInput(f"not a safetensors file: {exc}") from None
    return {name: array.astype(np.float32, copy=False) for name, array in loaded.items()}
