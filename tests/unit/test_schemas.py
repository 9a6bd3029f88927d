"""Unit tests for person.schemas: what the person service accepts and returns."""

from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

import pytest
from marshmallow import ValidationError

from person.schemas import (
    MAX_MONEY,
    CreatePersonSchema,
    PersonOutSchema,
    TypedItemOutSchema,
    TypedItemSchema,
    UntypedItemOutSchema,
    UntypedItemSchema,
)

SEED_PERSON = {
    "cpf": "529.982.247-25",
    "name": "abc",
    "address": "abc",
    "date_of_birth": "2019-06-15T19:23:55-03:00",
}


def person(**changes):
    return {**SEED_PERSON, **changes}


def load_errors(schema, payload):
    with pytest.raises(ValidationError) as excinfo:
        schema.load(payload)
    return excinfo.value.normalized_messages()


# --- CreatePersonSchema ------------------------------------------------------


def test_seed_payload_loads_to_canonical_values():
    loaded = CreatePersonSchema().load(SEED_PERSON)

    assert loaded == {
        "cpf": "52998224725",
        "name": "abc",
        "address": "abc",
        "date_of_birth": date(2019, 6, 15),
    }


def test_datetime_keeps_its_own_calendar_date_not_utc():
    # 22:30 at -03:00 is already the next day in UTC; the person was born on the 15th.
    loaded = CreatePersonSchema().load(person(date_of_birth="2019-06-15T22:30:00-03:00"))

    assert loaded["date_of_birth"] == date(2019, 6, 15)


def test_date_only_input_is_accepted():
    loaded = CreatePersonSchema().load(person(date_of_birth="1990-05-01"))

    assert loaded["date_of_birth"] == date(1990, 5, 1)


@pytest.mark.parametrize(
    "born",
    [
        (datetime.now(UTC) + timedelta(days=2)).date().isoformat(),
        (datetime.now(UTC) + timedelta(days=400)).isoformat(),
        datetime.now(UTC).date().isoformat(),  # today is not in the past
    ],
)
def test_date_of_birth_not_in_the_past_is_rejected(born):
    errors = load_errors(CreatePersonSchema(), person(date_of_birth=born))

    assert errors == {"date_of_birth": ["Must be in the past."]}


@pytest.mark.parametrize("born", ["1899-12-31", "1850-01-01T00:00:00+00:00"])
def test_date_of_birth_before_1900_is_rejected(born):
    errors = load_errors(CreatePersonSchema(), person(date_of_birth=born))

    assert errors == {"date_of_birth": ["Must be on or after 1900-01-01."]}


def test_first_of_1900_is_the_earliest_accepted():
    loaded = CreatePersonSchema().load(person(date_of_birth="1900-01-01"))

    assert loaded["date_of_birth"] == date(1900, 1, 1)


@pytest.mark.parametrize("born", ["15/06/2019", "2019-13-01", "", "yesterday", 20190615, None])
def test_date_of_birth_that_is_not_iso_8601_is_rejected(born):
    errors = load_errors(CreatePersonSchema(), person(date_of_birth=born))

    assert list(errors) == ["date_of_birth"]


def test_unknown_field_is_rejected():
    errors = load_errors(CreatePersonSchema(), person(email="a@b.c"))

    assert errors == {"email": ["Unknown field."]}


def test_missing_fields_are_each_named():
    errors = load_errors(CreatePersonSchema(), {})

    assert set(errors) == {"cpf", "name", "address", "date_of_birth"}
    assert errors["name"] == ["Missing data for required field."]


@pytest.mark.parametrize("field", ["name", "address"])
@pytest.mark.parametrize("blank", ["", "   ", "\t\n"])
def test_blank_text_is_rejected(field, blank):
    errors = load_errors(CreatePersonSchema(), person(**{field: blank}))

    assert list(errors) == [field]


@pytest.mark.parametrize("field", ["name", "address"])
@pytest.mark.parametrize("text", ["\ud800", "Ana \udfff", "\udc00x"])
def test_text_with_an_unpaired_surrogate_is_rejected(field, text):
    errors = load_errors(CreatePersonSchema(), person(**{field: text}))

    assert errors == {field: ["Must not contain unpaired surrogates."]}


@pytest.mark.parametrize(("field", "limit"), [("name", 200), ("address", 500)])
def test_text_longer_than_its_column_is_rejected(field, limit):
    assert CreatePersonSchema().load(person(**{field: "x" * limit}))[field] == "x" * limit

    errors = load_errors(CreatePersonSchema(), person(**{field: "x" * (limit + 1)}))

    assert list(errors) == [field]


def test_integer_cpf_gets_its_leading_zero_back():
    loaded = CreatePersonSchema().load(person(cpf=1234567890))

    assert loaded["cpf"] == "01234567890"


@pytest.mark.parametrize("cpf", ["529.982.247-26", "11111111111", "5299822472", 52998224725.0, True, None])
def test_invalid_cpf_is_rejected_with_a_message(cpf):
    errors = load_errors(CreatePersonSchema(), person(cpf=cpf))

    assert list(errors) == ["cpf"]
    assert errors["cpf"] and all(isinstance(message, str) for message in errors["cpf"])


# --- Money -------------------------------------------------------------------


def load_value(value):
    return TypedItemSchema().load({"type": "renting", "value": value})["value"]


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (1000, "1000.00"),
        (1000.1, "1000.10"),
        (0.1, "0.10"),
        ("1000.50", "1000.50"),
        (" 42 ", "42.00"),
        ("0.01", "0.01"),
        (str(MAX_MONEY), str(MAX_MONEY)),
        (Decimal("1000.5"), "1000.50"),  # a JSON number as the gateway parses it
    ],
)
def test_money_loads_as_an_exact_two_place_decimal(value, expected):
    loaded = load_value(value)

    assert isinstance(loaded, Decimal)
    assert str(loaded) == expected


@pytest.mark.parametrize("value", ["1000.123", 1000.123, "0.001", 0.005, Decimal("1.0000000000000001")])
def test_money_with_more_than_two_places_is_rejected(value):
    errors = load_errors(TypedItemSchema(), {"type": "renting", "value": value})

    assert errors == {"value": ["Must have at most 2 decimal places."]}


@pytest.mark.parametrize(
    "value",
    [0, "0", "0.00", -1, "-0.01", -1000.5, "1000000000000", MAX_MONEY + Decimal("0.01"), 1e20],
)
def test_money_out_of_range_is_rejected(value):
    if isinstance(value, Decimal):
        value = str(value)
    errors = load_errors(TypedItemSchema(), {"type": "renting", "value": value})

    assert errors == {"value": [f"Must be greater than 0 and at most {MAX_MONEY}."]}


@pytest.mark.parametrize(
    "value",
    [True, False, None, [1000], {"amount": 1000}, "NaN", "nan", "Infinity", "-Infinity",
     float("nan"), float("inf"), "", "abc", "1,000.00"],
)  # fmt: skip
def test_money_that_is_not_a_finite_number_is_rejected(value):
    errors = load_errors(TypedItemSchema(), {"type": "renting", "value": value})

    assert list(errors) == ["value"]
    assert errors["value"] != [f"Must be greater than 0 and at most {MAX_MONEY}."]


@pytest.mark.parametrize(
    ("stored", "dumped"),
    [(Decimal("1000.1"), "1000.10"), (Decimal("1000"), "1000.00"), (Decimal("0.5"), "0.50"), (7, "7.00")],
)
def test_money_dumps_as_a_two_place_string(stored, dumped):
    assert TypedItemOutSchema().dump({"value": stored})["value"] == dumped
    assert UntypedItemOutSchema().dump({"value": stored})["value"] == dumped


def test_person_out_dumps_dates_and_nested_money_as_strings():
    dumped = PersonOutSchema().dump(
        {
            "cpf": "52998224725",
            "date_of_birth": date(2019, 6, 15),
            "incomes": [{"id": 1, "type": "renting", "value": Decimal("1000")}],
            "debts": [{"id": 2, "value": Decimal("10.5")}],
        }
    )

    assert dumped["date_of_birth"] == "2019-06-15"
    assert dumped["incomes"] == [{"id": 1, "type": "renting", "value": "1000.00"}]
    assert dumped["debts"] == [{"id": 2, "value": "10.50"}]


# --- TypedItemSchema / UntypedItemSchema -------------------------------------------


def test_typed_item_loads_type_and_value():
    assert TypedItemSchema().load({"type": "renting", "value": 1000}) == {
        "type": "renting",
        "value": Decimal("1000.00"),
    }


def test_typed_item_without_type_is_rejected():
    errors = load_errors(TypedItemSchema(), {"value": 1000})

    assert errors == {"type": ["Missing data for required field."]}


@pytest.mark.parametrize("item_type", ["", "  ", "x" * 51])
def test_typed_item_with_blank_or_too_long_type_is_rejected(item_type):
    errors = load_errors(TypedItemSchema(), {"type": item_type, "value": 1000})

    assert list(errors) == ["type"]


def test_typed_item_without_value_is_rejected():
    errors = load_errors(TypedItemSchema(), {"type": "renting"})

    assert errors == {"value": ["Missing data for required field."]}


def test_debt_loads_value_only():
    assert UntypedItemSchema().load({"value": "250.75"}) == {"value": Decimal("250.75")}


def test_debt_rejects_a_type():
    errors = load_errors(UntypedItemSchema(), {"type": "loan", "value": 1000})

    assert errors == {"type": ["Unknown field."]}


def test_debt_without_value_is_rejected():
    errors = load_errors(UntypedItemSchema(), {})

    assert errors == {"value": ["Missing data for required field."]}


@pytest.mark.parametrize("value", ["1_000", "1e3", "１０００", "0x10", " 1 000"])
def test_money_takes_only_plain_decimal_strings(value):
    with pytest.raises(ValidationError) as exc:
        TypedItemSchema().load({"type": "x", "value": value})
    assert "value" in exc.value.messages
