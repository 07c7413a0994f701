"""The randomness a DP-SGD guarantee rests on, drawn from the operating system's CSPRNG.

DP-SGD is private only if nobody else can know which records a step sampled or what noise it
added. Both come from ``os.urandom`` (``getrandom(2)`` on Linux), never from a seed:

- :class:`OsPoissonSampler`: Poisson subsampling (each record joins a step independently with
  probability ``q``), as Opacus's ``UniformWithReplacementSampler`` but from 64-bit CSPRNG
  words: a record joins when its word is below ``floor(q * 2**64)``, so the rate is ``q`` less
  at most ``2**-64`` (a lower rate only lowers the privacy loss).
- :func:`os_gaussian`: Gaussian noise by Box-Muller from 53-bit CSPRNG uniforms, hardened
  against floating-point attacks (Mironov 2012; Jin et al. 2022, arXiv:2112.05307) the way
  Opacus's secure mode is: each coordinate is the sum of four such draws, halved (Holohan &
  Braghin 2021, arXiv:2107.10138, §5.1 with n = 2), which leaves a 2**159 search for an
  attacker instead of 2**53.

Cost: 32 bytes of CSPRNG output per model coordinate per step for the noise, 8 per record per
step for the sampling.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator

import numpy as np
import torch
from opacus.optimizers import DPOptimizer
from opacus.utils.uniform_sampler import UniformWithReplacementSampler

_WORD = 2**64


def os_uniform(size: int) -> np.ndarray:
    """``size`` float64 draws, uniform on (0, 1], each from 53 fresh CSPRNG bits."""
    words = np.frombuffer(os.urandom(8 * size), dtype=np.uint64)
    return ((words >> np.uint64(11)) + 1).astype(np.float64) * 2.0**-53


def os_gaussian(size: int, std: float) -> np.ndarray:
    """``size`` float64 draws of N(0, std**2): each the sum of four Box-Muller normals from the
    CSPRNG, halved (see the module's docstring). Raises ``ValueError`` for ``std < 0``."""
    if std < 0 or not math.isfinite(std):
        raise ValueError(f"the noise's standard deviation must be finite and >= 0, got {std}")
    if std == 0 or size == 0:
        return np.zeros(size)
    pairs = os_uniform(4 * size).reshape(2, 2 * size)  # 2 uniforms -> 2 normals
    radius = np.sqrt(-2.0 * np.log(pairs[0]))
    angle = 2.0 * np.pi * pairs[1]
    normals = np.concatenate([radius * np.cos(angle), radius * np.sin(angle)])  # 4 * size
    noise: np.ndarray = normals.reshape(4, size).sum(axis=0) / 2.0 * std
    return noise


class OsPoissonSampler(UniformWithReplacementSampler):  # type: ignore[misc]  # Opacus: untyped
    """Poisson batches of record indices: ``steps`` batches, each record in each with
    probability ``sample_rate``, independently, from the CSPRNG. Batches may be empty.

    A subclass of Opacus's sampler so that Opacus accepts it as a DP data loader's batch
    sampler; its ``generator`` (which Opacus may set) is never used.
    """

    def __init__(self, *, num_samples: int, sample_rate: float, steps: int) -> None:
        if not 0 < sample_rate <= 1:
            raise ValueError(f"sample_rate must be in (0, 1], got {sample_rate}")
        if steps < 1:
            raise ValueError(f"steps must be >= 1, got {steps}")
        if num_samples < 0:
            raise ValueError(f"num_samples must be >= 0, got {num_samples}")
        # Not Opacus's __init__: it refuses an empty data set, and a device without records
        # must still take its charged steps (noise only), or its refusal would tell the
        # server that it holds none.
        self.num_samples, self.sample_rate, self.steps = num_samples, sample_rate, steps
        self.generator = None
        self._threshold = np.uint64(min(_WORD - 1, math.floor(sample_rate * _WORD)))

    def __iter__(self) -> Iterator[list[int]]:
        for _ in range(self.steps):
            words = np.frombuffer(os.urandom(8 * self.num_samples), dtype=np.uint64)
            yield np.flatnonzero(words < self._threshold).tolist()


def add_os_noise(optimizer: DPOptimizer, noise_multiplier: float) -> None:
    """Make ``optimizer`` add its Gaussian noise from the CSPRNG: Opacus adds none (its noise
    multiplier must be 0) and this step hook, which runs after clipping, summing and scaling,
    adds N(0, (noise_multiplier * max_grad_norm / expected_batch_size)**2) to each gradient
    coordinate: the same mechanism, with the noise scaled as Opacus scales the sum."""
    if optimizer.noise_multiplier != 0:
        raise ValueError("Opacus must add no noise of its own (noise_multiplier=0)")

    def hook(opt: DPOptimizer) -> None:
        scale = opt.expected_batch_size * opt.accumulated_iterations
        std = noise_multiplier * opt.max_grad_norm / scale
        for p in opt.params:
            if p.grad is None:
                continue
            noise = os_gaussian(p.grad.numel(), std)
            p.grad += torch.from_numpy(noise).to(p.grad.dtype).view_as(p.grad)

    optimizer.attach_step_hook(hook)
