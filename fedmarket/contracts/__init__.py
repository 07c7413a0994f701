"""Compiled contract artifacts (ABI + bytecode), built by ``contracts/build.mjs`` and shipped
as package data so pip users need no Node toolchain."""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib import resources
from typing import Any

PRODUCT_CONTRACTS = ("DataMarket", "FedToken")


@dataclass(frozen=True)
class Artifact:
    name: str
    abi: list[dict[str, Any]]
    bytecode: str
    deployed_bytecode: str


def load_artifact(name: str) -> Artifact:
    """Load one of :data:`PRODUCT_CONTRACTS` from the package."""
    if name not in PRODUCT_CONTRACTS:
        raise ValueError(f"unknown contract {name!r}; known: {', '.join(PRODUCT_CONTRACTS)}")
    text = resources.files(__name__).joinpath(f"{name}.json").read_text()
    return artifact_from_json(json.loads(text))


def artifact_from_json(document: dict[str, Any]) -> Artifact:
    return Artifact(
        name=document["contractName"],
        abi=document["abi"],
        bytecode=document["bytecode"],
        deployed_bytecode=document["deployedBytecode"],
    )
