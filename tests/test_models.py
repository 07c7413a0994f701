import re
from pathlib import Path

import numpy as np
import pytest
import torch

from fedmarket.exceptions import InvalidInput
from fedmarket.models import (
    CNN,
    build_model,
    get_weights,
    set_weights,
    weights_from_bytes,
    weights_to_bytes,
)

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("name", ["mlp", "cnn"])
def test_safetensors_round_trip_restores_the_same_function(name: str) -> None:
    model = build_model(name, (1, 8, 8), 10, seed=3)
    other = build_model(name, (1, 8, 8), 10, seed=4)
    set_weights(other, weights_from_bytes(weights_to_bytes(get_weights(model))))
    x = torch.rand(5, 1, 8, 8)
    assert torch.equal(model(x), other(x))


def test_same_seed_same_initial_weights() -> None:
    a, b = (
        get_weights(build_model("mlp", (64,), 3, seed=1)),
        get_weights(build_model("mlp", (64,), 3, seed=1)),
    )
    assert all(np.array_equal(a[k], b[k]) for k in a)


def test_mismatched_weights_and_garbage_bytes_are_refused() -> None:
    model = build_model("mlp", (1, 8, 8), 10, seed=0)
    wrong = get_weights(build_model("mlp", (1, 8, 8), 3, seed=0))
    with pytest.raises(InvalidInput, match="shape"):
        set_weights(model, wrong)
    with pytest.raises(InvalidInput, match="not a safetensors"):
        weights_from_bytes(b"\x00" * 3)


def test_cnn_benchmark_size_is_about_one_million_parameters() -> None:
    cnn = CNN((1, 28, 28), 10, channels=(32, 64), hidden=300)
    assert 0.9e6 < sum(p.numel() for p in cnn.parameters()) < 1.1e6


def test_no_pickle_in_our_code() -> None:
    pattern = re.compile(r"\bimport pickle\b|\bpickle\.|torch\.save|torch\.load|allow_pickle=True")
    for path in [*ROOT.glob("fedmarket/**/*.py"), *ROOT.glob("strategies/**/*.py")]:
        assert not pattern.search(path.read_text()), path
