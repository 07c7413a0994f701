"""The market contract's custom errors as typed Python exceptions that say what to do.

:func:`decode_revert` turns revert data (4-byte selector + ABI-encoded arguments) into the
matching :class:`~fedmarket.exceptions.ContractRejected` subclass, using the selectors of every
error in the contracts' ABIs (OpenZeppelin's ERC-20 errors bubble up through the market).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, ClassVar

from eth_abi.abi import decode
from eth_abi.exceptions import DecodingError
from eth_utils.address import to_checksum_address
from eth_utils.crypto import keccak

from fedmarket.exceptions import ContractRejected


class MarketRejected(ContractRejected):
    """A custom error from the market; ``error`` is its name, ``values`` its arguments."""

    advice: ClassVar[str] = "the contract refused the call"

    def __init__(self, error: str, values: dict[str, Any]) -> None:
        self.error = error
        self.values = values
        try:
            text = self.advice.format(**values)
        except (KeyError, IndexError, ValueError):
            text = self.advice
        super().__init__(f"{error}: {text}")


class UnknownTask(MarketRejected):
    advice = "task {task} does not exist; list tasks with `fedmarket market tasks`"


class TaskIsClosed(MarketRejected):
    advice = "task {task} is closed: it takes no more rounds or funds (claims still work)"


class NotSponsor(MarketRejected):
    advice = "{caller} is not the sponsor of task {task}; only its sponsor may close it"


class NotAggregator(MarketRejected):
    advice = "{caller} is not the aggregator of task {task}; use the key the task names"


class RoundNotIncreasing(MarketRejected):
    advice = (
        "task {task} already has round {lastRound} committed, so round {round} cannot follow; "
        "commit a later round (a re-sent round is already on chain)"
    )


class CumulativeDecreased(MarketRejected):
    advice = (
        "task {task}: cumulative rewards {cumulativeTotal} are below the {committed} already "
        "committed; cumulative totals only grow — rebuild the reward tree from all rounds"
    )


class ExceedsEscrow(MarketRejected):
    advice = (
        "task {task}: cumulative rewards {cumulativeTotal} would exceed its escrow {escrow}; "
        "fund the task or pay fewer updates"
    )


class InvalidProof(MarketRejected):
    advice = (
        "the proof does not show {account} earning {cumulativeAmount} in task {task}'s latest "
        "reward tree; fetch the proof for the latest committed round"
    )


class NothingToClaim(MarketRejected):
    advice = (
        "{account} already claimed {alreadyClaimed} of task {task}; nothing new until a later "
        "round raises its cumulative reward"
    )


class NotTaskOwner(MarketRejected):
    advice = "{caller} may not list models of task {task}: only its sponsor or aggregator"


class BpsTooHigh(MarketRejected):
    advice = (
        "contributors' share {bps} basis points is not allowed: at most 10000, and 0 for "
        "listings tied to no task"
    )


class UnknownListing(MarketRejected):
    advice = "listing {listing} does not exist"


class ListingInactive(MarketRejected):
    advice = "listing {listing} was withdrawn by its seller and is not for sale"


class NotSeller(MarketRejected):
    advice = "{caller} is not the seller of listing {listing}"


class UnknownPurchase(MarketRejected):
    advice = "purchase {purchase} does not exist"


class NotPending(MarketRejected):
    advice = (
        "purchase {purchase} is already settled (state {state}: 2 delivered, 3 refunded); "
        "nothing to deliver or refund"
    )


class NotBuyer(MarketRejected):
    advice = "{caller} did not make purchase {purchase}; only its buyer may ask for a refund"


class DeliveryWindowOpen(MarketRejected):
    advice = (
        "purchase {purchase} can be refunded only after its delivery deadline {deadline} "
        "(unix time), if no key came by then"
    )


class DeliveryWindowClosed(MarketRejected):
    advice = (
        "the delivery deadline {deadline} of purchase {purchase} has passed; the buyer may "
        "take a refund, the key can no longer be delivered"
    )


class EmptySealedKey(MarketRejected):
    advice = "purchase {purchase}: the sealed key is empty; seal the asset key to the buyer"


class PriceChanged(MarketRejected):
    advice = (
        "listing {listing} now costs {price}, above the {maxPrice} you accepted; "
        "buy again with a higher maximum if you agree"
    )


class ZeroAmount(MarketRejected):
    advice = "an amount (budget, reward, price or withdrawal) is zero; give a positive amount"


class ZeroAddress(MarketRejected):
    advice = "an address is the zero address; give a real account"


class ERC20InsufficientBalance(MarketRejected):
    advice = "{sender} holds {balance} tokens but {needed} are needed; top up the account"


class ERC20InsufficientAllowance(MarketRejected):
    advice = (
        "{spender} may spend {allowance} of the owner's tokens but {needed} are needed; "
        "approve more (or sign a fresh permit)"
    )


def _subclasses() -> dict[str, type[MarketRejected]]:
    return {cls.__name__: cls for cls in MarketRejected.__subclasses__()}


class RevertDecoder:
    """Maps revert data to typed exceptions, for every error in the given ABIs."""

    def __init__(self, abis: Iterable[list[dict[str, Any]]]) -> None:
        self._errors: dict[bytes, tuple[str, list[str], list[str]]] = {}
        for abi in abis:
            for item in abi:
                if item.get("type") != "error":
                    continue
                types = [argument["type"] for argument in item["inputs"]]
                names = [argument["name"] for argument in item["inputs"]]
                selector = keccak(text=f"{item['name']}({','.join(types)})")[:4]
                self._errors[selector] = (item["name"], types, names)
        self._classes = _subclasses()

    def decode(self, data: bytes) -> MarketRejected | None:
        """The exception for ``data``, or None if no known error has its selector."""
        known = self._errors.get(bytes(data[:4]))
        if known is None:
            return None
        name, types, names = known
        try:
            values = decode(types, bytes(data[4:]))
        except DecodingError:
            return None
        shown = {
            key: _show(kind, value) for key, kind, value in zip(names, types, values, strict=True)
        }
        return self._classes.get(name, MarketRejected)(name, shown)


def _show(kind: str, value: Any) -> Any:
    if kind == "address":
        return to_checksum_address(value)
    if isinstance(value, bytes):
        return "0x" + value.hex()
    return value
