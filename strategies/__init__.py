"""Aggregation strategies that consume only the secure sum of weighted deltas."""

from __future__ import annotations

from typing import Literal, get_args

from strategies.base import AggregatedUpdate, Strategy, Weights
from strategies.fedadam import FedAdam
from strategies.fedavg import FedAvg
from strategies.fedopt import FedOpt
from strategies.fedprox import FedProx
from strategies.fedyogi import FedYogi

StrategyName = Literal["fedavg", "fedprox", "fedadam", "fedyogi"]

_BY_NAME: dict[str, type[Strategy]] = {cls.name: cls for cls in (FedAvg, FedProx, FedAdam, FedYogi)}


def make_strategy(name: str) -> Strategy:
    """A strategy with its default hyper-parameters, by name."""
    try:
        return _BY_NAME[name]()
    except KeyError:
        raise ValueError(
            f"unknown strategy {name!r}; choose one of {', '.join(get_args(StrategyName))}"
        ) from None


__all__ = [
    "AggregatedUpdate",
    "FedAdam",
    "FedAvg",
    "FedOpt",
    "FedProx",
    "FedYogi",
    "Strategy",
    "StrategyName",
    "Weights",
    "make_strategy",
]
