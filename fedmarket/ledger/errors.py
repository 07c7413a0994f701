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
from fedmarket.market.amounts import to_tokens

# Arguments that are token amounts (base units on chain): the advice shows them in tokens.
_TOKEN_AMOUNTS = frozenset(
    {
        "escrow",
        "wouldPay",
        "cumulativeTotal",
        "committed",
        "alreadyClaimed",
        "amount",
        "challenged",
        "shown",
        "counted",
        "cumulativeAmount",
        "price",
        "maxPrice",
    }
)


class MarketRejected(ContractRejected):
    """A custom error from the market; ``error`` is its name, ``values`` its arguments (as the
    contract sent them; the advice shows token amounts in tokens)."""

    advice: ClassVar[str] = "the contract refused the call"

    def __init__(self, error: str, values: dict[str, Any]) -> None:
        self.error = error
        self.values = values
        shown = {
            name: f"{to_tokens(value)} tokens"
            if name in _TOKEN_AMOUNTS and isinstance(value, int)
            else value
            for name, value in values.items()
        }
        try:
            text = self.advice.format(**shown)
        except (KeyError, IndexError, ValueError):
            text = self.advice
        super().__init__(f"{error}: {text}")


class UnknownTask(MarketRejected):
    advice = "task {task} does not exist; list tasks with `fedmarket market tasks`"


class TaskIsClosed(MarketRejected):
    advice = (
        "task {task} is closing or closed (at unix time {closesAt}): it takes no more rounds, "
        "funds or closes; claims still work"
    )


class TaskNotClosed(MarketRejected):
    advice = (
        "task {task}'s unspent escrow is refunded from unix time {opensAt} (0: the task is not "
        "closing; close it first): a close grace after its commits stop, and after any voided "
        "root, so that acknowledgements are paid first"
    )


class GraceTooShort(MarketRejected):
    advice = (
        "a close grace of {closeGrace} s is shorter than the challenge and response windows "
        "together ({minimum} s): deploy with a longer grace"
    )


class NothingToRefund(MarketRejected):
    advice = "task {task}: everything it holds is committed to devices or already refunded"


class ZeroCommitment(MarketRejected):
    advice = "task {task} round {round}: the model commitment is zero; commit the model's hash"


class UnknownRound(MarketRejected):
    advice = "task {task} has no committed round {round}; list or claim a committed round"


class TaskUnderfunded(MarketRejected):
    advice = (
        "task {task} holds {escrow} for these payouts (its escrow, the part of it no root "
        "reserves for an acknowledgement, or for a sale share the round's sales revenue) but this "
        "claim would bring them to {wouldPay}; no other task's or round's funds can pay it"
    )


class NotAcknowledgedByAggregator(MarketRejected):
    advice = (
        "the acknowledgement was signed by {signer}, not by task {task}'s aggregator; it "
        "proves nothing"
    )


class AcksNotPayable(MarketRejected):
    advice = (
        "task {task} still commits rounds (it closes at unix time {closesAt}, 0: not closing), "
        "so acknowledgements are not paid directly: claim from a final root, or challenge a "
        "root that pays less (`fedmarket device watch`); acks pay once the close grace is over "
        "or a root was voided"
    )


class NothingToCredit(MarketRejected):
    advice = (
        "{account}'s acknowledgements in task {task} count {counted} beyond its leaf in the "
        "committed root already: nothing to credit"
    )


class RoundNotFinal(MarketRejected):
    advice = (
        "task {task} round {round} is not final: its challenge window ends at unix time "
        "{finalAt}, or a challenge of it is open; try again after that (or an earlier final round)"
    )


class RoundIsVoided(MarketRejected):
    advice = (
        "task {task} round {round} was voided (a challenge of it went unanswered); it pays "
        "nothing: use an earlier final round, or the acknowledgement once the task is frozen"
    )


class TaskFrozen(MarketRejected):
    advice = (
        "task {task} is frozen: one of its roots was voided, so it commits no more rounds; its "
        "devices claim their acknowledgements (`fedmarket device claim`); start a new task"
    )


class ChallengeWindowClosed(MarketRejected):
    advice = (
        "task {task} round {round} could be challenged only until unix time {closedAt}; "
        "run `fedmarket device watch` at least once per challenge window"
    )


class EvidenceNotEarlier(MarketRejected):
    advice = (
        "task {task} round {round}: the evidence is from round {evidenceRound}; a root is "
        "challenged with a leaf of an earlier root or an acknowledgement of that round or before"
    )


class NotChallenged(MarketRejected):
    advice = "task {task} round {round} has no open challenge by {account}"


class ResponseWindowOpen(MarketRejected):
    advice = (
        "{account}'s challenge of task {task} round {round} may still be answered until unix "
        "time {deadline}; void it after that"
    )


class ResponseWindowClosed(MarketRejected):
    advice = (
        "{account}'s challenge of task {task} round {round} had to be answered by unix time "
        "{deadline}; the round can now be voided"
    )


class AlreadyAnswered(MarketRejected):
    advice = (
        "task {task} round {round} was already shown to pay {account} {shown}; challenge only "
        "for more than that"
    )


class SumOverflow(MarketRejected):
    advice = (
        "the amount is past 2**128 - 1, more than any reward tree's total can hold; "
        "take the amount and proof from the round's receipts bundle"
    )


class MalformedProof(MarketRejected):
    advice = (
        "a proof of {length} bytes is not a whole number of 48-byte nodes; encode it with "
        "fedmarket.market.rewards.encode_proof"
    )


class AnswerTooLow(MarketRejected):
    advice = (
        "task {task} round {round} pays {account} {amount}, less than the {challenged} "
        "challenged; the challenge cannot be answered with this leaf"
    )


class ShareBelowTask(MarketRejected):
    advice = (
        "task {task} promises its devices at least {minimum} basis points of every sale; a "
        "listing with {bps} is refused"
    )


class ZeroRound(MarketRejected):
    advice = "task {task}: round 0 is not a round; acknowledgements name rounds from 1"


class NoContributors(MarketRejected):
    advice = (
        "task {task} round {round} paid nobody, so a contributors' share has nobody to go to; "
        "list it with a share of 0"
    )


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
        "the proof does not show {account} earning {cumulativeAmount} in the given round's "
        "reward tree of task {task}; rebuild the proof for that committed round"
    )


class NothingToClaim(MarketRejected):
    advice = (
        "{account} already claimed {alreadyClaimed} of task {task} (for a sale share: of that "
        "round's revenue); nothing new until a later round raises its cumulative reward, or "
        "more sales of the round settle"
    )


class NotTaskOwner(MarketRejected):
    advice = "{caller} may not list models of task {task}: only its sponsor or aggregator"


class BpsTooHigh(MarketRejected):
    advice = "contributors' share {bps} basis points is not allowed: at most 10000"


class UnknownListing(MarketRejected):
    advice = "listing {listing} does not exist"


class ListingInactive(MarketRejected):
    advice = "listing {listing} was withdrawn by its seller and is not for sale"


class NotSeller(MarketRejected):
    advice = "{caller} is not the seller of listing {listing}"


class UnknownPurchase(MarketRejected):
    advice = "purchase {purchase} does not exist"


class WrongPurchaseState(MarketRejected):
    advice = (
        "purchase {purchase} is in state {state} (1 pending, 2 delivered, 3 settled, "
        "4 refunded), where this is not possible"
    )


class NotBuyer(MarketRejected):
    advice = "{caller} did not make purchase {purchase}; only its buyer may refund or dispute"


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


class DisputeWindowOpen(MarketRejected):
    advice = (
        "purchase {purchase} can be settled only after its dispute deadline {deadline} (unix time)"
    )


class DisputeWindowClosed(MarketRejected):
    advice = (
        "the dispute deadline {deadline} of purchase {purchase} has passed; the key can no "
        "longer be disputed"
    )


class InvalidCurvePoint(MarketRejected):
    advice = (
        "({x}, {y}) is not a point of alt_bn128's G1 (or is the point at infinity); make the "
        "key with `fedmarket` again"
    )


class InvalidSecret(MarketRejected):
    advice = (
        "purchase {purchase}: the revealed secret is not the one-time key the purchase was "
        "made with; use the key file saved when buying"
    )


class DeliveryMismatch(MarketRejected):
    advice = "purchase {purchase}: that is not the delivery posted on chain; read it again"


class KeyMatchesCommitment(MarketRejected):
    advice = (
        "purchase {purchase}: the delivered key does hash to the listing's commitment, so "
        "there is nothing to dispute"
    )


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
