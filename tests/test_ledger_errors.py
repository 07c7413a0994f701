"""Every custom error the contracts can raise decodes into a typed exception whose advice is
filled in from the error's own arguments (a template naming a wrong argument would show)."""

from __future__ import annotations

from typing import Any

import pytest
from eth_abi.abi import encode
from eth_utils.crypto import keccak

from fedmarket.contracts import load_artifact
from fedmarket.ledger import errors as market_errors
from fedmarket.ledger.errors import MarketRejected, RevertDecoder

ABIS = [load_artifact("DataMarket").abi, load_artifact("FedToken").abi]
SAMPLES = {"address": "0x" + "11" * 20, "bytes32": b"\x22" * 32, "bool": True, "string": "x"}


def _errors() -> list[dict[str, Any]]:
    return [item for abi in ABIS for item in abi if item["type"] == "error"]


def _revert_data(error: dict[str, Any]) -> bytes:
    types = [arg["type"] for arg in error["inputs"]]
    selector = keccak(text=f"{error['name']}({','.join(types)})")[:4]
    return selector + encode(types, [SAMPLES.get(t, 7) for t in types])


@pytest.mark.parametrize("error", _errors(), ids=lambda e: e["name"])
def test_custom_errors_decode_with_their_advice_filled_in(error: dict[str, Any]) -> None:
    decoded = RevertDecoder(ABIS).decode(_revert_data(error))

    assert isinstance(decoded, MarketRejected)
    assert decoded.error == error["name"]
    assert "{" not in str(decoded), str(decoded)


def test_every_market_error_has_its_own_typed_class() -> None:
    market_names = {e["name"] for e in ABIS[0] if e["type"] == "error"}
    typed = {cls.__name__ for cls in MarketRejected.__subclasses__()}
    # OpenZeppelin's internal errors (ECDSA, SafeCast, ...) may stay generic; ours may not.
    ours = {n for n in market_names if not n.startswith(("ECDSA", "SafeCast", "SafeERC20"))}
    ours -= {"InvalidShortString", "StringTooLong", "ReentrancyGuardReentrantCall"}
    assert ours <= typed, ours - typed
    assert market_errors.NothingToClaim in MarketRejected.__subclasses__()
