"""DP-SGD step time / non-private step time, same model and batch (64), per Opacus mode.

Run: ``python -m benchmarks.dp_overhead``. Times are medians over repeated steps in one
process; the private step is split into per-sample gradients (forward + backward with Opacus's
grad-sample machinery) and clip + noise + update (``DPOptimizer.step``).
"""

from __future__ import annotations

import statistics
import time
import warnings

import torch
from opacus import PrivacyEngine
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from benchmarks.common import write_results
from fedmarket.models import CNN, MLP

BATCH = 64
REPEATS = 200
WARMUP = 20
MODES = ("hooks", "functorch", "ew", "ghost")
MODELS = {
    "demo MLP (digits, 9.6k params)": (lambda: MLP((1, 8, 8), 10), (1, 8, 8)),
    "CNN (28x28, ~1M params)": (
        lambda: CNN((1, 28, 28), 10, channels=(32, 64), hidden=300),
        (1, 28, 28),
    ),
}


def batch(shape: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.rand(BATCH, *shape), torch.randint(0, 10, (BATCH,))


def time_plain(make: object, shape: tuple[int, ...], repeats: int) -> float:
    model: nn.Module = make()  # type: ignore[operator]
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    x, y = batch(shape)
    times = []
    for i in range(repeats + WARMUP):
        start = time.perf_counter()
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
        if i >= WARMUP:
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def time_private(
    make: object, shape: tuple[int, ...], mode: str, repeats: int
) -> tuple[float, float]:
    """(median forward+backward seconds, median DPOptimizer.step seconds)."""
    model: nn.Module = make()  # type: ignore[operator]
    x, y = batch(shape)
    loader = DataLoader(TensorDataset(x, y), batch_size=BATCH)
    criterion = nn.CrossEntropyLoss()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        wrapped = PrivacyEngine().make_private(
            module=model,
            optimizer=torch.optim.SGD(model.parameters(), lr=0.01),
            data_loader=loader,
            criterion=criterion,
            noise_multiplier=1.0,
            max_grad_norm=1.0,
            poisson_sampling=False,
            grad_sample_mode=mode,
        )
    if mode == "ghost":
        model, opt, criterion, _ = wrapped
    else:
        model, opt, _ = wrapped
    grads, steps = [], []
    for i in range(repeats + WARMUP):
        start = time.perf_counter()
        opt.zero_grad()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            criterion(model(x), y).backward()
        middle = time.perf_counter()
        opt.step()
        end = time.perf_counter()
        if i >= WARMUP:
            grads.append(middle - start)
            steps.append(end - middle)
    return statistics.median(grads), statistics.median(steps)


def main() -> None:
    torch.set_num_threads(1)
    torch.manual_seed(0)
    rows = []
    for model_name, (make, shape) in MODELS.items():
        repeats = REPEATS if "MLP" in model_name else REPEATS // 4
        plain = time_plain(make, shape, repeats)
        for mode in MODES:
            grad_s, step_s = time_private(make, shape, mode, repeats)
            private = grad_s + step_s
            rows.append(
                {
                    "model": model_name,
                    "mode": mode,
                    "ratio": private / plain,
                    "nonprivate_ms": plain * 1e3,
                    "private_ms": private * 1e3,
                    "per_sample_grad_share": grad_s / private,
                    "clip_noise_step_share": step_s / private,
                }
            )
            print(
                f"{model_name:32s} {mode:9s} {private / plain:6.2f}x  "
                f"({plain * 1e3:.3f} ms -> {private * 1e3:.3f} ms; "
                f"per-sample grads {grad_s / private:.0%}, clip+noise+step {step_s / private:.0%})"
            )
    write_results("dp_overhead", rows, batch=BATCH, threads=1)


if __name__ == "__main__":
    main()
