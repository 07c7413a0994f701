"""Token amounts: decimal text for people, integer base units (18 decimals) for the chain."""

from __future__ import annotations

from decimal import Decimal, InvalidOperation, localcontext

from fedmarket.exceptions import InvalidInput

DECIMALS = 18
_UNIT = 10**DECIMALS


def to_base_units(amount: str | int | Decimal, *, what: str = "amount") -> int:
    """``"1.5"`` tokens -> 1.5e18 base units, exactly; refuse negatives and sub-unit digits."""
    try:
        value = Decimal(str(amount).strip())
    except InvalidOperation:
        raise InvalidInput(f"{what} must be a number of tokens, got {amount!r}") from None
    if not value.is_finite() or value < 0:
        raise InvalidInput(f"{what} must be a finite number of tokens >= 0, got {amount!r}")
    with localcontext(prec=100):  # the default 28 digits would round large amounts
        units = value * _UNIT
    if units != units.to_integral_value():
        raise InvalidInput(f"{what} has more than {DECIMALS} decimal places: {amount!r}")
    if units >= 2**256:
        raise InvalidInput(f"{what} is too large: {amount!r}")
    return int(units)


def to_tokens(units: int) -> str:
    """Base units as plain decimal text without trailing zeros (``1500000000000000000`` -> 1.5)."""
    with localcontext(prec=100):
        text = format(Decimal(units) / _UNIT, "f")
    return text.rstrip("0").rstrip(".") if "." in text else text
