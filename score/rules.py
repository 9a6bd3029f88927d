"""Score rules of the seed, as a pure module (no I/O, no framework imports).

Each financial item contributes points by its kind, then the points are summed.
A kind's rule is data in its declaration (:mod:`contracts.kinds`):
``sign * floor(value / divisor)``; the seed's are

* income: ``floor(value / 50)``
* asset:  ``floor(value / 20)``
* debt:   ``-floor(value / 20)``

``value`` is money: a positive :class:`decimal.Decimal` with at most 2 decimal
places. All arithmetic is exact Decimal arithmetic (never float), and the result
is an ``int``.
"""

from __future__ import annotations

from collections.abc import Iterable
from decimal import Decimal

from contracts.kinds import BY_NAME, NAMES

__all__ = ["item_points", "score_items"]


def _floor_div(value: Decimal, divisor: int) -> int:
    """Exact ``floor(value / divisor)`` for a Decimal, as an int.

    ``Decimal.as_integer_ratio`` gives the exact fraction, so the floor is
    computed on integers: no float, no context precision, no rounding.
    """
    if isinstance(value, bool) or not isinstance(value, (Decimal, int)):
        raise TypeError(f"value must be a Decimal, not {type(value).__name__}")
    if isinstance(value, Decimal) and not value.is_finite():
        raise ValueError("value must be a finite number")
    numerator, denominator = value.as_integer_ratio()
    return numerator // (denominator * divisor)


def item_points(kind: str, value: Decimal) -> int:
    """Return the points one item of ``kind`` with ``value`` contributes.

    A negative rule is ``-floor(value / divisor)``, *not* ``floor(-value /
    divisor)``: the floor is taken of the positive amount and then negated, so
    a debt below 20 costs nothing (19.99 gives 0, not -1) and 20 to 39.99 costs
    1, exactly as income and assets gain nothing below their divisor. This
    matches the seed's rule.

    Raises:
        ValueError: for an unknown kind or a non-finite value.
        TypeError: if ``value`` is not a Decimal (an int is accepted; float is not).
    """
    try:
        declared = BY_NAME[kind]
    except KeyError:
        raise ValueError(f"unknown item kind {kind!r}; expected one of {NAMES}") from None
    return declared.sign * _floor_div(value, declared.divisor)


def score_items(items: Iterable[tuple[str, Decimal]]) -> dict:
    """Score ``(kind, value)`` items.

    Returns ``{"score": int, "breakdown": {"income": int, "asset": int,
    "debt": int}}``: the points summed per kind (every kind present, 0 when
    there are no items of it) and the overall score as the sum of the
    breakdown. No items gives a score of 0.
    """
    breakdown = dict.fromkeys(NAMES, 0)
    for kind, value in items:
        points = item_points(kind, value)  # validates kind before indexing
        breakdown[kind] += points
    return {"score": sum(breakdown.values()), "breakdown": breakdown}
