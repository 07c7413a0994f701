"""Shared helpers for benchmarks: results files live in benchmarks/results/*.json."""

from __future__ import annotations

import json
import platform
from pathlib import Path
from typing import Any

import torch

RESULTS = Path(__file__).resolve().parent / "results"


def write_results(name: str, rows: list[dict[str, Any]], **extra: Any) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    document = {
        "benchmark": name,
        "machine": {
            "cpu_count": torch.get_num_threads(),
            "python": platform.python_version(),
            "torch": torch.__version__,
        },
        **extra,
        "rows": rows,
    }
    path.write_text(json.dumps(document, indent=2) + "\n")
    print(f"wrote {path}")
    return path
