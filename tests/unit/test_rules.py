"""Unit tests for score.rules: the seed's per-item scoring rules."""

from __future__ import annotations

from decimal import Decimal

import pytest

from contracts.kinds import BY_NAME, NAMES
from score.rules import item_points, score_items


def test_the_seeds_kinds_are_declared_with_their_rules() -> None:
    assert NAMES[:3] == ("income", "asset", "debt")
    assert [(BY_NAME[k].divisor, BY_NAME[k].sign) for k in NAMES[:3]] == [(50, 1), (20, 1), (20, -1)]


def test_seed_example() -> None:
    items = [
        ("income", Decimal(1000)),
        ("asset", Decimal(100000)),
        ("debt", Decimal(1000)),
    ]
    assert score_items(items) == {
        "score": 4970,
        "breakdown": {"income": 20, "asset": 5000, "debt": -50},
    }


@pytest.mark.parametrize(
    ("kind", "value", "expected"),
    [
        ("income", "49.99", 0),
        ("income", "50", 1),
        ("income", "50.00", 1),
        ("income", "99.99", 1),
        ("income", "100.00", 2),
        ("income", "0.01", 0),
        ("asset", "19.99", 0),
        ("asset", "20", 1),
        ("asset", "39.99", 1),
        ("asset", "100000", 5000),
        ("debt", "19.99", 0),
        ("debt", "20", -1),
        ("debt", "39.99", -1),
        ("debt", "40.00", -2),
        ("debt", "0.01", 0),
    ],
)
def test_item_points_boundaries(kind: str, value: str, expected: int) -> None:
    points = item_points(kind, Decimal(value))
    assert points == expected
    assert type(points) is int


def test_debt_floors_the_amount_then_negates() -> None:
    # -floor(19.99 / 20) == 0, whereas floor(-19.99 / 20) would be -1.
    assert item_points("debt", Decimal("19.99")) == 0


def test_exact_decimal_arithmetic() -> None:
    # Values that are not exact in binary floating point still floor exactly.
    assert item_points("income", Decimal("0.1") * 500) == 1
    assert item_points("asset", Decimal("0.30") * 200) == 3
    # A huge value well beyond float precision.
    big = Decimal("99999999999999999999.99")
    assert item_points("income", big) == 1999999999999999999
    assert item_points("asset", Decimal("100000000000000000000.00")) == 5 * 10**18


def test_no_items_scores_zero() -> None:
    assert score_items([]) == {
        "score": 0,
        "breakdown": {"income": 0, "asset": 0, "debt": 0},
    }


def test_sums_per_kind_and_missing_kinds_are_zero() -> None:
    items = [
        ("income", Decimal("100.00")),
        ("income", Decimal("49.99")),
        ("income", Decimal("49.99")),
        ("debt", Decimal(60)),
    ]
    # Per item, then summed: 2 + 0 + 0 (not floor(199.98 / 50) == 3).
    assert score_items(items) == {
        "score": -1,
        "breakdown": {"income": 2, "asset": 0, "debt": -3},
    }


def test_score_items_accepts_a_generator() -> None:
    result = score_items((k, Decimal("100.00")) for k in ("income", "asset", "debt"))
    assert result["breakdown"] == {**dict.fromkeys(NAMES, 0), "income": 2, "asset": 5, "debt": -5}


def test_unknown_kind_raises() -> None:
    with pytest.raises(ValueError, match="unknown item kind"):
        item_points("salary", Decimal(100))
    with pytest.raises(ValueError, match="unknown item kind"):
        score_items([("income", Decimal(100)), ("loan", Decimal(100))])


def test_float_is_rejected() -> None:
    with pytest.raises(TypeError):
        item_points("income", 100.0)  # type: ignore[arg-type]


def test_non_finite_is_rejected() -> None:
    with pytest.raises(ValueError):
        item_points("income", Decimal("Infinity"))
