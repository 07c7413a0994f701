"""The device's acknowledgements: what the aggregator signed for each upload it accepted.

A Flower client mod (:func:`make_ack_mod`) remembers the market terms of the round a device
trained in and, when the next stage brings the aggregator's :class:`~fedmarket.acks.Ack`,
checks it (signed by the task's aggregator for this market, for this device, task and round)
and keeps it in an :class:`AckBook` under the device's data directory. ``device claim`` uses the
book: an acknowledged amount that the committed rewards do not pay is claimed with the ack.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path

from eth_utils.address import to_checksum_address
from flwr.app import Context, Message, MessageType
from flwr.clientapp.typing import ClientAppCallable, Mod

from fedmarket.acks import Ack, verify_ack
from fedmarket.exceptions import DataError, FedmarketError
from fedmarket.files import atomic_write
from fedmarket.market.terms import RoundTerms, read_ack

log = logging.getLogger(__name__)
_TERMS = "acks.terms"


class AckBook:
    """Acknowledgements kept by one device account: one JSON file per (market, task)."""

    def __init__(self, home: Path, account: str) -> None:
        self.folder = home / "acks" / to_checksum_address(account)
        self.account = to_checksum_address(account)

    def _path(self, chain_id: int, market: str, task: int) -> Path:
        return self.folder / f"{chain_id}-{to_checksum_address(market)}-task-{task}.json"

    def add(self, ack: Ack, signature: bytes, *, chain_id: int, market: str) -> None:
        """Keep ``ack`` (the highest amount per round wins; nothing is ever dropped)."""
        entries = self.acks(chain_id=chain_id, market=market, task=ack.task)
        earlier = [a.cumulative_amount for r, (a, _) in entries.items() if r < ack.round]
        if earlier and ack.cumulative_amount <= max(earlier):
            log.warning(
                "task %d round %d: the aggregator acknowledged %d, no more than an earlier round's "
                "%d; it did not pay an earlier acknowledged upload (claim with the earlier ack)",
                ack.task,
                ack.round,
                ack.cumulative_amount,
                max(earlier),
            )
        kept = entries.get(ack.round)
        if kept is not None and kept[0].cumulative_amount >= ack.cumulative_amount:
            return
        entries[ack.round] = (ack, signature)
        document = [
            {"ack": a.to_json(), "signature": s.hex()} for _, (a, s) in sorted(entries.items())
        ]
        path = self._path(chain_id, market, ack.task)
        path.parent.mkdir(parents=True, exist_ok=True)
        text = json.dumps(document, indent=1).encode()
        atomic_write(path, lambda out: out.write(text))

    def acks(self, *, chain_id: int, market: str, task: int) -> dict[int, tuple[Ack, bytes]]:
        """The kept acknowledgements of ``task``, by round."""
        path = self._path(chain_id, market, task)
        try:
            document = json.loads(path.read_text())
            return {
                int(item["ack"]["round"]): (
                    Ack.from_json(item["ack"]),
                    bytes.fromhex(item["signature"]),
                )
                for item in document
            }
        except FileNotFoundError:
            return {}
        except (ValueError, KeyError, TypeError) as exc:
            raise DataError(f"{path} is not an acknowledgement book ({exc})") from None

    def best(
        self, *, chain_id: int, market: str, task: int, up_to_round: int
    ) -> tuple[Ack, bytes] | None:
        """The acknowledgement with the highest amount among rounds <= ``up_to_round``."""
        usable = [
            entry
            for round, entry in self.acks(chain_id=chain_id, market=market, task=task).items()
            if round <= up_to_round
        ]
        return max(usable, key=lambda e: e[0].cumulative_amount, default=None)


AckBookResolver = Callable[[Context], AckBook | None]
"""The device's book for the node a message arrived on (None: the device is not paid)."""


def make_ack_mod(resolve: AckBookResolver) -> Mod:
    """The mod that keeps every valid acknowledgement the aggregator sends this device."""

    def ack_mod(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
        if msg.metadata.message_type == MessageType.TRAIN:
            try:
                _keep(msg, context, resolve)
            except FedmarketError as exc:  # a bad ack costs the server its proof, not the round
                log.warning("acknowledgement refused: %s", exc)
        return call_next(msg, context)

    return ack_mod


def _keep(msg: Message, context: Context, resolve: AckBookResolver) -> None:
    terms = RoundTerms.from_content(msg.content)
    if terms is not None:  # the round's terms come with the training stage; the ack later
        context.state.config_records[_TERMS] = terms.to_record()
    received = read_ack(msg.content)
    if received is None:
        return
    book = resolve(context)
    stored = context.state.config_records.get(_TERMS)
    if book is None or stored is None:
        return
    remembered = RoundTerms.from_record(stored)
    ack, signature = received
    market = remembered.terms
    if (ack.task, ack.round, ack.device) != (market.task, remembered.round, book.account):
        raise DataError(
            f"ack names task {ack.task} round {ack.round} device {ack.device}, not this "
            f"device's task {market.task} round {remembered.round}"
        )
    verify_ack(
        ack, signature, aggregator=market.aggregator, chain_id=market.chain_id, market=market.market
    )
    book.add(ack, signature, chain_id=market.chain_id, market=market.market)
