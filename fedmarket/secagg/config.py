"""Secure-aggregation settings: what the operator chooses and what one round derives from it.

Neighbours k and threshold t follow Bell et al.'s bounds for the stated share of colluding
devices, dropout rate and security level (:mod:`fedmarket.secagg.parameters`); devices check
the same bounds and refuse weaker rounds.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

from fedmarket.exceptions import InvalidInput
from fedmarket.secagg.parameters import DEFAULT_ASSUMPTIONS, Assumptions, check, choose

MIN_COHORT = 3
MODULUS_BITS = 32
HEADROOM_BITS = 1  # the honest sum stays below 2^31: a word shifted by 2^31 falls outside it
SESSION_BYTES = 16


@dataclass(frozen=True, kw_only=True)
class SecAggConfig:
    """The operator's settings.

    Each device clips every coordinate of its delta to ``[-clip_range, clip_range]``; every
    update weighs the same. ``assumptions`` state the share of devices that may collude with the
    server (gamma), the dropout rate (delta) and the security level (sigma); ``neighbours`` (k) and
    ``threshold`` (t) default to the smallest k and its t that meet Bell et al.'s bounds for
    them, and explicit values are refused if they do not. Every stage waits at most its
    timeout; devices that have not answered by then are dropped.
    """

    clip_range: float = 4.0
    assumptions: Assumptions = DEFAULT_ASSUMPTIONS
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
        auto_k, auto_t = choose(cohort_size, self.assumptions)
        k = min(cohort_size - 1, self.neighbours if self.neighbours is not None else auto_k)
        t = self.threshold if self.threshold is not None else auto_t
        return RoundParams(
            session=session if session is not None else os.urandom(SESSION_BYTES),
            cohort_size=cohort_size,
            neighbours=k,
            threshold=t,
            clip_range=self.clip_range,
            assumptions=self.assumptions,
        )


@dataclass(frozen=True, kw_only=True)
class RoundParams:
    """What every device of one round is told; devices validate it themselves.

    ``bits`` is chosen so that the sum of ``cohort_size`` quantized values never wraps mod 2^32:
    each value is below 2^bits and cohort_size <= 2^(32 - HEADROOM_BITS - bits), so the sum stays
    below 2^31. Construction checks (k, t) against Bell et al.'s bounds for ``assumptions``.
    """

    session: bytes
    cohort_size: int
    neighbours: int
    threshold: int
    clip_range: float
    assumptions: Assumptions

    def require(self, policy: Assumptions) -> None:
        """Refuse parameters whose stated assumptions are weaker than the device's ``policy``."""
        a = self.assumptions
        if a.corrupt_fraction < policy.corrupt_fraction:
            raise InvalidInput(
                f"the round assumes {a.corrupt_fraction:g} of devices collude, this device "
                f"requires at least {policy.corrupt_fraction:g}"
            )
        if a.security_bits < policy.security_bits or a.draws > policy.draws:
            raise InvalidInput(
                f"the round targets 2^-{a.security_bits:g} over {a.draws} draws, this device "
                f"requires 2^-{policy.security_bits:g} over at most {policy.draws}"
            )

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
        check(self.cohort_size, self.neighbours, self.threshold, self.assumptions)

    @property
    def bits(self) -> int:
        return MODULUS_BITS - HEADROOM_BITS - math.ceil(math.log2(self.cohort_size))

    @property
    def levels(self) -> int:
        """Quantized values lie in [0, levels]."""
        return (1 << self.bits) - 1

    def to_record(self) -> dict[str, int | float | bytes]:
        a = self.assumptions
        return {
            "session": self.session,
            "cohort_size": self.cohort_size,
            "neighbours": self.neighbours,
            "threshold": self.threshold,
            "clip_range": self.clip_range,
            "corrupt_fraction": a.corrupt_fraction,
            "dropout_fraction": a.dropout_fraction,
            "security_bits": a.security_bits,
            "correctness_bits": a.correctness_bits,
            "draws": a.draws,
        }

    @classmethod
    def from_record(cls, record: dict[str, object]) -> RoundParams:
        """Parse untrusted parameters; wrong types or broken rules raise InvalidInput."""
        session = record.get("session")
        if not isinstance(session, bytes):
            raise InvalidInput("secagg parameters: session must be bytes")
        clip = _number(record, "clip_range")
        return cls(
            session=session,
            cohort_size=_integer(record, "cohort_size"),
            neighbours=_integer(record, "neighbours"),
            threshold=_integer(record, "threshold"),
            clip_range=float(clip),
            assumptions=Assumptions(
                corrupt_fraction=_number(record, "corrupt_fraction"),
                dropout_fraction=_number(record, "dropout_fraction"),
                security_bits=_number(record, "security_bits"),
                correctness_bits=_number(record, "correctness_bits"),
                draws=_integer(record, "draws"),
            ),
        )


def _integer(record: dict[str, object], key: str) -> int:
    value = record.get(key)
    if not isinstance(value, int) or isinstance(value, bool):
        raise InvalidInput(f"secagg parameters: {key} must be an integer, got {value!r}")
    return value


def _number(record: dict[str, object], key: str) -> float:
    value = record.get(key)
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise InvalidInput(f"secagg parameters: {key} must be a number, got {value!r}")
    return float(value)
