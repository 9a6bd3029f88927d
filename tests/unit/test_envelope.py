"""Unit tests for reliable_events.envelope: the shape every event has on the wire."""

import uuid
from datetime import UTC, datetime, timedelta

import pytest

from contracts.envelope import MalformedEvent
from contracts.events import PERSON_EVENTS

CPF = "52998224725"
DATA = {"item_id": 7, "value": "1000.00", "type": "renting"}


@pytest.fixture
def envelope():
    return PERSON_EVENTS.new("income_added", CPF, 2, DATA)


def test_new_envelope_has_exactly_the_contract_fields(envelope):
    assert set(envelope) == {"event_id", "event_type", "occurred_at", "cpf", "sequence", "data"}
    assert envelope["event_type"] == "income_added"
    assert envelope["cpf"] == CPF
    assert envelope["sequence"] == 2
    assert envelope["data"] == DATA


def test_new_envelope_event_id_is_a_uuid_string(envelope):
    assert isinstance(envelope["event_id"], str)
    assert str(uuid.UUID(envelope["event_id"])) == envelope["event_id"]


def test_new_envelope_event_ids_are_unique():
    ids = {PERSON_EVENTS.new("person_created", CPF, 1, {})["event_id"] for _ in range(50)}

    assert len(ids) == 50


def test_new_envelope_occurred_at_is_iso_utc_with_offset(envelope):
    before = datetime.now(UTC)
    occurred = datetime.fromisoformat(envelope["occurred_at"])

    assert envelope["occurred_at"].endswith("+00:00")
    assert occurred.utcoffset() == timedelta(0)
    assert abs(before - occurred) < timedelta(minutes=5)


def test_parse_accepts_a_new_envelope(envelope):
    event = PERSON_EVENTS.parse(envelope)

    assert event["event_id"] == envelope["event_id"]
    assert isinstance(event["event_id"], str)
    assert event["event_type"] == "income_added"
    assert event["occurred_at"] == datetime.fromisoformat(envelope["occurred_at"])
    assert event["occurred_at"].tzinfo is not None
    assert event["cpf"] == CPF
    assert event["sequence"] == 2
    assert event["data"] == DATA


def test_parse_normalizes_the_event_id_to_its_canonical_string(envelope):
    event_id = envelope["event_id"]

    event = PERSON_EVENTS.parse({**envelope, "event_id": event_id.upper().replace("-", "")})

    assert event["event_id"] == event_id


def test_parse_ignores_extra_fields(envelope):
    event = PERSON_EVENTS.parse({**envelope, "producer": "person"})

    assert "producer" not in event


def test_parse_does_not_change_its_input(envelope):
    original = dict(envelope)

    PERSON_EVENTS.parse(envelope)

    assert envelope == original


@pytest.mark.parametrize("body", [None, "an event", 42, ["event_id"], b"{}"])
def test_parse_rejects_a_body_that_is_not_an_object(body):
    with pytest.raises(MalformedEvent, match="must be an object"):
        PERSON_EVENTS.parse(body)


@pytest.mark.parametrize("field", ["event_id", "event_type", "occurred_at", "cpf", "sequence", "data"])
def test_parse_rejects_a_missing_field(envelope, field):
    del envelope[field]

    with pytest.raises(MalformedEvent, match=field):
        PERSON_EVENTS.parse(envelope)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("event_id", "not-a-uuid"),
        ("event_id", ""),
        ("event_id", None),
        ("event_type", ""),
        ("sequence", 0),
        ("sequence", -1),
        ("sequence", "1"),
        ("sequence", 1.5),
        ("sequence", True),
        ("sequence", None),
        ("cpf", "5299822472"),
        ("cpf", "529982247250"),
        ("cpf", "529.982.247-25"),
        ("cpf", 52998224725),
        ("cpf", ""),
        ("occurred_at", "2024-01-01T12:00:00"),  # naive: no offset
        ("occurred_at", "yesterday"),
        ("occurred_at", None),
        ("data", "income"),
        ("data", ["item_id", 7]),
        ("data", None),
    ],
)
def test_parse_rejects_an_invalid_field(envelope, field, value):
    envelope[field] = value

    with pytest.raises(MalformedEvent, match=field):
        PERSON_EVENTS.parse(envelope)


@pytest.mark.parametrize("cpf", [CPF + "\n", "５２９９８２２４７２５"])
def test_parse_rejects_a_cpf_that_is_not_eleven_ascii_digits(envelope, cpf):
    envelope["cpf"] = cpf

    with pytest.raises(MalformedEvent, match="cpf"):
        PERSON_EVENTS.parse(envelope)


HASH = "8c961b3bf9513859ba4178a69e8113f8ae9110a7180df54b80a1928fb2b88293"


def test_an_erasure_is_keyed_by_a_cpf_hash_and_never_by_a_cpf():
    """person_erased stays in the history for good: its key must be the
    CPF's keyed hash; every other event's must be the CPF."""
    erasure = PERSON_EVENTS.new("person_erased", HASH, 5, {})
    assert "cpf" not in erasure and erasure["cpf_hash"] == HASH  # the field says what it holds
    assert PERSON_EVENTS.key(PERSON_EVENTS.parse(erasure)) == HASH
    with pytest.raises(MalformedEvent, match="cpf_hash"):
        PERSON_EVENTS.parse(PERSON_EVENTS.new("person_erased", CPF, 5, {}))
    with pytest.raises(MalformedEvent, match="cpf"):
        PERSON_EVENTS.parse(PERSON_EVENTS.new("income_added", HASH, 2, DATA))


def test_an_erasure_published_before_its_key_had_its_own_field_is_still_read():
    """Erasures in flight during the upgrade name the hash under ``cpf``."""
    legacy = {**PERSON_EVENTS.new("person_erased", HASH, 5, {})}
    legacy["cpf"] = legacy.pop("cpf_hash")
    assert PERSON_EVENTS.key(PERSON_EVENTS.parse(legacy)) == HASH
