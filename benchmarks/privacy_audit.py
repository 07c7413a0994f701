"""The canary audit at the demo's settings, with DP-SGD and without DP, side by side.

For device 0 of the demo's embedded task config: ``TRIALS`` local rounds on its data and as
many with the canary planted, from the task's initial model; the AUC and the empirical epsilon
lower bound of the audit (``fedmarket.privacy.audit``) beside the epsilon the ledger accounts
for that one round. The no-DP rows run the same round with plain SGD (``train_plain``).

Run: ``python -m benchmarks.privacy_audit [TRIALS]`` (about 3 minutes on 2 cores at 1,000).
"""

from __future__ import annotations

import sys
import time

import torch

from benchmarks.common import write_results
from fedmarket.config import TaskConfig
from fedmarket.privacy.audit import audit_task

TRIALS = 1_000
DEVICE = 0
CONFIDENCE = 0.95


def main() -> None:
    trials = int(sys.argv[1]) if len(sys.argv) > 1 else TRIALS
    torch.set_num_threads(1)  # rounds of a 10k-parameter MLP: more threads only contend
    config = TaskConfig()
    rows = []
    for private in (True, False):
        started = time.monotonic()
        result = audit_task(
            config, device=DEVICE, trials=trials, confidence=CONFIDENCE, private=private
        )
        seconds = time.monotonic() - started
        row = {"setting": "DP-SGD (demo)" if private else "no DP", **result.to_json()}
        row["seconds"] = seconds
        rows.append(row)
        accounted = result.accounted_epsilon
        print(
            f"{row['setting']:14s} trials {trials}  AUC {result.auc:.3f}  "
            f"eps_lb {result.epsilon_lower_bound:.3f}  accounted "
            f"{'-' if accounted is None else f'{accounted:.3f}'}  ({seconds:.0f} s)"
        )
    write_results(
        "privacy_audit",
        rows,
        device=DEVICE,
        trials=trials,
        confidence=CONFIDENCE,
        delta=config.privacy.delta,
    )


if __name__ == "__main__":
    main()
