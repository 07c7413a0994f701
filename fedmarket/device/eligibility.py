"""The owner's conditions for training now: on power, CPU idle enough, memory to spare.

Checked on the device before every round, whatever the server asks; a device that declines says
which condition failed. Conditions the OS cannot report (no battery, so no power state) hold.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import psutil  # type: ignore[import-untyped]  # no stubs in the lock

from fedmarket.exceptions import InvalidInput


@dataclass(frozen=True)
class SystemState:
    """What the OS reports right now; ``on_power`` is None where it has no battery to report."""

    on_power: bool | None
    cpu_busy_percent: float
    available_mb: float


Probe = Callable[[], SystemState]


def read_system(sample_seconds: float = 0.2) -> SystemState:
    """The machine's state now (psutil): power source, CPU use over a short sample, free RAM."""
    battery = psutil.sensors_battery() if hasattr(psutil, "sensors_battery") else None
    return SystemState(
        on_power=None if battery is None else bool(battery.power_plugged),
        cpu_busy_percent=float(psutil.cpu_percent(interval=sample_seconds)),
        available_mb=psutil.virtual_memory().available / 2**20,
    )


@dataclass(frozen=True)
class EligibilityPolicy:
    """Train only when every set condition holds.

    ``require_power``: only on mains power where the OS reports a battery.
    ``max_cpu_busy``: only while the whole machine's CPU use is at most this percent (None: any).
    ``memory_budget_mb``: only while at least this much memory is available.
    """

    require_power: bool = True
    max_cpu_busy: float | None = None
    memory_budget_mb: int = 512

    def __post_init__(self) -> None:
        if self.max_cpu_busy is not None and not 0 < self.max_cpu_busy <= 100:
            raise InvalidInput(f"max CPU busy must be in (0, 100] percent, got {self.max_cpu_busy}")
        if self.memory_budget_mb < 0:
            raise InvalidInput(f"memory budget must be >= 0 MB, got {self.memory_budget_mb}")

    def decline_reason(self, probe: Probe = read_system) -> str | None:
        """Why the device must not train now, or None when it may."""
        state = probe()
        if self.require_power and state.on_power is False:
            return "on battery; the owner trains only on mains power"
        if self.max_cpu_busy is not None and state.cpu_busy_percent > self.max_cpu_busy:
            return (
                f"CPU {state.cpu_busy_percent:.0f}% busy; the owner allows training only below "
                f"{self.max_cpu_busy:g}%"
            )
        if state.available_mb < self.memory_budget_mb:
            return (
                f"{state.available_mb:.0f} MB memory available; the owner's budget for training "
                f"is {self.memory_budget_mb} MB"
            )
        return None
