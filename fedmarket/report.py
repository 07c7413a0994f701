"""The demo's report: per-round accuracy and privacy, per-device budgets, written as JSON."""

from __future__ import annotations

import json
import os
import statistics
import tempfile
from pathlib import Path
from typing import Any

from fedmarket.server.results import FederationResult
from fedmarket.simulation import SimulatedFleet


def build_report(
    result: FederationResult, fleet: SimulatedFleet, *, config: dict[str, Any], seconds: float
) -> dict[str, Any]:
    """Plain-JSON report. Device epsilons come from the devices' own ledgers."""
    names = [f"device-{i}" for i in range(fleet.num_devices)]
    latest = dict.fromkeys(names, 0.0)
    trained_rounds = dict.fromkeys(names, 0)
    rounds = []
    for r in result.rounds:
        latest.update(r.epsilon)
        for device in r.trained:
            trained_rounds[device] += 1
        values = list(latest.values())
        rounds.append(
            {
                "round": r.round,
                "accuracy": r.accuracy,
                "loss": r.loss,
                "trained": len(r.trained),
                "declined": len(r.declined),
                "failed": len(r.failed),
                "epsilon_max": max(values),
                "epsilon_median": statistics.median(values),
                "epsilon_per_device": dict(latest),
                "declined_reasons": r.declined,
                "secure_aggregation": r.secure,
                "survivors": list(r.trained),
                "dropped": {str(node): why for node, why in r.dropped.items()},
                "clip_fraction": r.clip_fraction,
                "error": r.error,
                "seconds": r.seconds,
            }
        )
    devices = []
    for index, name in enumerate(names):
        profile = fleet.profile(index)
        epsilon = profile.ledger().epsilon() if fleet.private else float("inf")
        devices.append(
            {
                "device": name,
                "epsilon": epsilon,
                "epsilon_cap": fleet.epsilon_cap,
                "rounds_trained": trained_rounds[name],
                "num_examples": len(profile.data),
            }
        )
    return {
        "config": config,
        "delta": fleet.delta,
        "initial_accuracy": result.initial_accuracy,
        "final_accuracy": result.rounds[-1].accuracy if result.rounds else result.initial_accuracy,
        "rounds": rounds,
        "devices": devices,
        "seconds": seconds,
    }


def write_json(path: Path, document: dict[str, Any]) -> None:
    """Write atomically so a crash never leaves half a report."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}-", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as handle:
            json.dump(document, handle, indent=2, allow_nan=True)
            handle.write("\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
