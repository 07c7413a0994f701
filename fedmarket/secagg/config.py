"""Secure-aggregation settings: what the operator chooses and what one round derives from it."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

from fedmarket.exceptions import InvalidInput

MIN_COHORT = 3
MODULUS_BITS = 32
SESSION_BYTES = 16


@dataclass(frozen=True, kw_only=True)
class SecAggConfig:
    """The operator's settings.

    Each device clips every coordinate of its delta to ``[-clip_range, clip_range]``; every
    update weighs the same. ``neighbours`` (k) and ``threshold`` (t)
    default to k = the smallest even number >= log2(n) and t = floor((k + 1) / 2) + 1, a majority
    of the k + 1 holders of each secret: SecAgg+ with k = O(log n). Every stage waits at most its
    timeout; devices that have not answered by then are dropped.
    """

    clip_range: float = 4.0
    neighbours: int | None = None
    threshold: int | None = None
    setup_timeout: float = 60.0
    share_timeout: float = 60.0
    unmask_timeout: float = 60.0

    def __post_init__(self) -> None:
        if not (math.isfinite(self.clip_range) and self.clip_range > 0):
            raise InvalidInput(
                f"secagg clip_range must be a finite number > 0, got {self.clip_range}"
            )
        if self.neighbours is not None and self.neighbours < 2:
            raise InvalidInput(f"secagg neighbours must be >= 2, got {self.neighbours}")
        if self.threshold is not None and self.threshold < 2:
            raise InvalidInput(f"secagg threshold must be >= 2, got {self.threshold}")
        for name in ("setup_timeout", "share_timeout", "unmask_timeout"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise InvalidInput(f"secagg {name} must be > 0 seconds, got {value}")

    def for_cohort(self, cohort_size: int, *, session: bytes | None = None) -> RoundParams:
        """The parameters of one round over ``cohort_size`` devices (validated)."""
        if cohort_size < MIN_COHORT:
            raise InvalidInput(
                f"secure aggregation needs a cohort of at least {MIN_COHORT} devices, "
                f"got {cohort_size}"
            )
        auto_k = 2 * math.ceil(math.log2(cohort_size) / 2)
        k = min(cohort_size - 1, self.neighbours if self.neighbours is not None else auto_k)
        t = self.threshold if self.threshold is not None else (k + 1) // 2 + 1
        return RoundParams(
            session=session if session is not None else os.urandom(SESSION_BYTES),
            cohort_size=cohort_size,
            neighbours=k,
            threshold=t,
            clip_range=self.clip_range,
        )


@dataclass(frozen=True, kw_only=True)
class RoundParams:
    """What every device of one round is told; devices validate it themselves.

    ``bits`` is chosen so that the sum of ``cohort_size`` quantized values never wraps mod 2^32:
    each value is below 2^bits and cohort_size <= 2^(32 - bits).
    """

    session: bytes
    cohort_size: int
    neighbours: int
    threshold: int
    clip_range: float

    def __post_init__(self) -> None:
        if len(self.session) != SESSION_BYTES:
            raise InvalidInput(f"secagg session must be {SESSION_BYTES} bytes")
        if self.cohort_size < MIN_COHORT:
            raise InvalidInput(
                f"secure aggregation needs a cohort of at least {MIN_COHORT} devices, "
                f"got {self.cohort_size}"
            )
        if not 2 <= self.neighbours <= self.cohort_size - 1:
            raise InvalidInput(
                f"secagg neighbours k must be in [2, cohort size - 1 = {self.cohort_size - 1}], "
                f"got {self.neighbours}"
            )
        if self.neighbours % 2 and self.neighbours != self.cohort_size - 1:
            raise InvalidInput(
                f"secagg neighbours k must be even (k / 2 on each side of the ring) or "
                f"cohort size - 1, got {self.neighbours}"
            )
        if not 2 <= self.threshold <= self.neighbours + 1:
            raise InvalidInput(
                f"secagg threshold t must be in [2, k + 1 = {self.neighbours + 1}] "
                f"(each secret has k + 1 holders), got {self.threshold}"
            )
        if not (math.isfinite(self.clip_range) and self.clip_range > 0):
            raise InvalidInput(f"secagg clip_range must be > 0, got {self.clip_range}")
        if self.bits < 8:
            raise InvalidInput(f"a cohort of {self.cohort_size} leaves too few quantization bits")

    @property
    def bits(self) -> int:
        return MODULUS_BITS - math.ceil(math.log2(self.cohort_size))

    @property
    def levels(self) -> int:
        """Quantized values lie in [0, levels]."""
        return (1 << self.bits) - 1

    def to_record(self) -> dict[str, int | float | bytes]:
        return {
            "session": self.session,
            "cohort_size": self.cohort_size,
            "neighbours": self.neighbours,
            "threshold": self.threshold,
            "clip_range": self.clip_range,
        }

    @classmethod
    def from_record(cls, record: dict[str, object]) -> RoundParams:
        """Parse untrusted parameters; wrong types or broken rules raise InvalidInput."""
        session, clip = record.get("session"), record.get("clip_range")
        if not isinstance(session, bytes):
            raise InvalidInput("secagg parameters: session must be bytes")
        if not isinstance(clip, int | float) or isinstance(clip, bool):
            raise InvalidInput("secagg parameters: clip_range must be a number")
        return cls(
            session=session,
            cohort_size=_integer(record, "cohort_size"),
            neighbours=_integer(record, "neighbours"),
            threshold=_integer(record, "threshold"),
            clip_range=float(clip),
        )


def _integer(record: dict[str, object], key: str) -> int:
    value = record.get(key)
    if not isinstance(value, int) or isinstance(value, bool):
        raise InvalidInput(f"secagg parameters: {key} must be an integer, got {value!r}")
    return value
