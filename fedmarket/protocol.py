"""What travels between the ServerApp and the ClientApps in a training round.

Server -> device: ``global`` (ArrayRecord, the model) and ``config`` (ConfigRecord: ``round``,
``train.*``, ``dp.*``). Device -> server: ``status`` (ConfigRecord: ``device``, ``outcome``
``trained`` or ``declined``, ``reason``), ``metrics`` (MetricRecord: ``epsilon``, ``delta``)
and, when trained, ``delta`` (ArrayRecord, local - global; masked under secure aggregation).

Nothing else computed from the records leaves a device: not the training loss, not the
number of records or steps (the steps and sample rate are the round config's, and epsilon is
a function of the device's round configs alone). Every update weighs ``UPDATE_WEIGHT``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, MetricRecord, RecordDict
from numpy.typing import NDArray

from fedmarket.exceptions import InvalidInput
from fedmarket.market.bundle import SignedReceipt
from fedmarket.models.weights import Weights
from fedmarket.secagg.transcript import Transcript
from strategies import AggregatedUpdate

GLOBAL, CONFIG, STATUS, METRICS, DELTA = "global", "config", "status", "metrics", "delta"
UPDATE_WEIGHT = 1  # each update counts once: an example count would reveal the device's size
Outcome = Literal["trained", "declined"]


def weights_to_record(weights: Weights) -> ArrayRecord:
    return ArrayRecord({name: Array(np.ascontiguousarray(a)) for name, a in weights.items()})


def weights_from_record(record: ArrayRecord) -> Weights:
    """Named float32 tensors; InvalidInput if an array's bytes do not decode to one."""
    return {
        name: np.asarray(read_array(array, name), dtype=np.float32)
        for name, array in record.items()
    }


def read_array(array: Array, name: str) -> NDArray[Any]:
    """One array from untrusted bytes: anything that does not decode to a plain ndarray (empty,
    truncated, a zip archive, an object array) raises InvalidInput naming it."""
    try:
        value = array.numpy()
    except Exception as exc:  # numpy raises many types for hostile bytes (EOFError, BadZipFile)
        raise InvalidInput(f"array {name!r} does not decode ({type(exc).__name__})") from None
    if not isinstance(value, np.ndarray) or value.dtype.hasobject:
        raise InvalidInput(f"array {name!r} is not a plain numeric array")
    return value


@dataclass(frozen=True)
class TrainReply:
    """A device's answer to a training round, as the server reads it."""

    device: str
    outcome: Outcome
    reason: str
    epsilon: float
    delta: float
    update: Weights | None

    def to_content(self) -> RecordDict:
        content = RecordDict(
            {
                STATUS: ConfigRecord(
                    {"device": self.device, "outcome": self.outcome, "reason": self.reason}
                ),
                METRICS: MetricRecord({"epsilon": self.epsilon, "delta": self.delta}),
            }
        )
        if self.update is not None:
            content[DELTA] = weights_to_record(self.update)
        return content

    @classmethod
    def from_content(
        cls, content: RecordDict, expected: Weights, *, masked: bool = False
    ) -> TrainReply:
        """Parse and validate a reply; ``expected`` gives the tensor names and shapes.

        Under secure aggregation (``masked``) the delta travels masked elsewhere, so a trained
        reply must not carry it in the clear.
        """
        try:
            status, metrics = content.config_records[STATUS], content.metric_records[METRICS]
            outcome = str(status["outcome"])
            if outcome not in ("trained", "declined"):
                raise InvalidInput(f"unknown outcome {outcome!r}")
            reply = cls(
                device=str(status["device"]),
                outcome="trained" if outcome == "trained" else "declined",
                reason=str(status["reason"]),
                epsilon=_scalar(metrics, "epsilon"),
                delta=_scalar(metrics, "delta"),
                update=(
                    weights_from_record(content.array_records[DELTA])
                    if DELTA in content.array_records
                    else None
                ),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise InvalidInput(f"malformed train reply: {exc}") from None
        if masked and reply.update is not None:
            raise InvalidInput(f"device {reply.device}: sent its update unmasked")
        if reply.outcome == "trained" and not masked:
            reply._check_update(expected)
        return reply

    def _check_update(self, expected: Weights) -> None:
        if self.update is None:
            raise InvalidInput(f"device {self.device}: trained but sent no update")
        if set(self.update) != set(expected):
            raise InvalidInput(f"device {self.device}: update tensors do not match the model")
        for name, tensor in self.update.items():
            if tensor.shape != expected[name].shape:
                raise InvalidInput(f"device {self.device}: {name} has shape {tensor.shape}")
            if not np.isfinite(tensor).all():
                raise InvalidInput(f"device {self.device}: {name} contains NaN or infinity")


@dataclass(frozen=True)
class RoundOutcome:
    """What one round's exchange produced, with or without secure aggregation."""

    update: AggregatedUpdate | None  # None: no new model, see ``error``
    trained: tuple[TrainReply, ...]  # devices whose updates are in ``update``
    declined: tuple[TrainReply, ...]
    dropped: dict[int, str]  # sampled node -> why it is in neither list
    clip_fraction: float | None  # secure aggregation: mean share of clipped coordinates
    error: str | None
    receipts: tuple[SignedReceipt, ...] = ()  # survivors' receipts for their masked uploads
    transcript: Transcript | None = None  # secure rounds: what was summed, as signed
    culprits: tuple[bytes, ...] = ()  # node keys that provably broke the round: refused after


def _scalar(metrics: MetricRecord, key: str) -> float:
    value = metrics[key]
    if not isinstance(value, int | float):
        raise InvalidInput(f"metric {key!r} must be a number, got {type(value).__name__}")
    return float(value)
