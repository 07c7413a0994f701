"""What DP-SGD's OS randomness costs per step, beside the seeded torch RNG it replaced.

- noise for a model's coordinates: ``os_gaussian`` (CSPRNG, four Box-Muller normals per
  coordinate) beside one ``torch.normal`` (what Opacus draws outside secure mode) and
  Opacus's secure-mode construction (four ``torch.normal`` draws per coordinate, a seeded
  Mersenne Twister), measured side by side in one run;
- the Poisson sample of a step: ``OsPoissonSampler`` beside ``torch.rand(n) < q``.

Run: ``python -m benchmarks.dp_randomness``. Times are medians of repeated calls in one process.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch

from benchmarks.common import write_results
from fedmarket.privacy.randomness import OsPoissonSampler, os_gaussian

REPEATS = 30
COORDINATES = {"demo MLP (9.6k params)": 9_610, "CNN (28x28, ~1M params)": 1_035_000}
RECORDS = (1_000, 60_000)


def median_ms(call: Callable[[], object]) -> float:
    call()  # warm up
    times = []
    for _ in range(REPEATS):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000


def main() -> None:
    rows = []
    for name, size in COORDINATES.items():
        seeded = median_ms(lambda size=size: torch.normal(0.0, 1.0, (size,)))
        secure = median_ms(lambda size=size: sum(torch.normal(0.0, 1.0, (size,)) for _ in range(4)))
        ours = median_ms(lambda size=size: os_gaussian(size, 1.0))
        rows.append(
            {
                "kind": "noise",
                "what": name,
                "size": size,
                "seeded_ms": seeded,
                "secure_seeded_ms": secure,
                "os_ms": ours,
                "os_over_seeded": ours / seeded,
            }
        )
        print(f"noise {name:28s} torch {seeded:7.3f} ms  4x torch {secure:7.3f}  os {ours:7.3f}")
    for n in RECORDS:
        seeded = median_ms(lambda n=n: (torch.rand(n) < 0.01).nonzero())
        sampler = OsPoissonSampler(num_samples=n, sample_rate=0.01, steps=1)
        ours = median_ms(lambda sampler=sampler: list(sampler))
        rows.append(
            {
                "kind": "sample",
                "what": f"{n:,} records, q = 0.01",
                "size": n,
                "seeded_ms": seeded,
                "secure_seeded_ms": None,
                "os_ms": ours,
                "os_over_seeded": ours / seeded,
            }
        )
        print(f"sample n={n:<6d} torch {seeded:7.3f} ms  os {ours:7.3f}")
    write_results("dp_randomness", rows)


if __name__ == "__main__":
    main()
