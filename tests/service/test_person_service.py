"""The person service's RPC methods on a real PostgreSQL, through ``worker_factory``.

The database dependency is nameko-sqlalchemy's own ``DatabaseWrapper`` on this
session's private database; the writes go through the real ``Transactions``
(person's one write path, one write per transaction) and the real outbox insert
(so its rows are inserted in the worker's transaction), without the relay.
"""

import uuid
from datetime import date, datetime, timedelta

import pytest
from sqlalchemy import text

from contracts.errors import InvalidInput, PersonAlreadyExists, PersonNotFound
from contracts.events import PERSON_EVENTS
from harness.workers import RecordingOutbox, person_worker

CPF = "52998224725"
SEED_PERSON = {
    "cpf": "529.982.247-25",
    "name": "abc",
    "address": "abc",
    "date_of_birth": "2019-06-15T19:23:55-03:00",
}


class Crash(Exception):
    pass


class CrashingOutbox(RecordingOutbox):
    """Inserts the outbox rows for real, then fails inside the same transaction."""

    def add_all(self, session, events):
        super().add_all(session, events)
        raise Crash("after the outbox insert")


@pytest.fixture
def recorder():
    return RecordingOutbox()


@pytest.fixture
def service(db_wrappers, person_engine, recorder):
    return person_worker(person_engine, db_wrappers, recorder)


def rows(engine, sql):
    with engine.connect() as conn:
        return [dict(row._mapping) for row in conn.execute(text(sql))]


def outbox_rows(engine):
    return rows(
        engine,
        "SELECT position, event_id::text AS event_id, event_type, aggregate_key, sequence, payload,"
        " published_at, attempts FROM outbox ORDER BY position",
    )


def count(engine, table):
    return rows(engine, f"SELECT count(*) AS n FROM {table}")[0]["n"]


def without_sequence(result):
    return {k: v for k, v in result.items() if k != "sequence"}


# --- create_person -----------------------------------------------------------


def test_create_person_returns_the_dumped_person(service):
    result = service.create_person(SEED_PERSON)

    assert {k: v for k, v in result.items() if k != "created_at"} == {
        "cpf": CPF,
        "name": "abc",
        "address": "abc",
        "date_of_birth": "2019-06-15",
        "incomes": [],
        "assets": [],
        "debts": [],
        "sequence": 1,
    }
    assert datetime.fromisoformat(result["created_at"]).tzinfo is not None


def test_create_person_stores_the_row(service, person_engine):
    service.create_person(SEED_PERSON)

    [row] = rows(person_engine, "SELECT * FROM person")
    assert row["cpf"] == CPF
    assert row["date_of_birth"] == date(2019, 6, 15)
    assert row["last_sequence"] == 1


def test_create_person_writes_one_person_created_outbox_row(service, person_engine, recorder):
    service.create_person(SEED_PERSON)

    [row] = outbox_rows(person_engine)
    assert row["event_type"] == "person_created"
    assert row["aggregate_key"] == CPF
    assert row["sequence"] == 1
    assert row["published_at"] is None
    assert row["attempts"] == 0
    assert recorder.writes == 1

    payload = row["payload"]
    assert payload["event_id"] == row["event_id"]
    assert payload["event_type"] == "person_created"
    assert payload["cpf"] == CPF
    assert payload["sequence"] == 1
    assert payload["data"] == {"name": "abc", "address": "abc", "date_of_birth": "2019-06-15"}
    assert str(uuid.UUID(payload["event_id"])) == payload["event_id"]
    occurred = datetime.fromisoformat(payload["occurred_at"])
    assert occurred.utcoffset() == timedelta(0)
    # What the relay publishes is what a consumer accepts.
    assert PERSON_EVENTS.parse(payload)["event_id"] == row["event_id"]


def test_duplicate_person_raises_and_writes_no_second_event(service, person_engine):
    service.create_person(SEED_PERSON)

    with pytest.raises(PersonAlreadyExists, match=CPF):
        service.create_person({**SEED_PERSON, "cpf": CPF, "name": "other"})

    assert [row["event_type"] for row in outbox_rows(person_engine)] == ["person_created"]
    assert [row["name"] for row in rows(person_engine, "SELECT name FROM person")] == ["abc"]


def test_same_service_instance_works_after_a_duplicate(service, person_engine):
    service.create_person(SEED_PERSON)
    with pytest.raises(PersonAlreadyExists):
        service.create_person(SEED_PERSON)

    result = service.create_person({**SEED_PERSON, "cpf": "01234567890"})

    assert result["cpf"] == "01234567890"
    assert count(person_engine, "outbox") == 2


@pytest.mark.parametrize(
    ("payload", "bad_fields"),
    [
        ({**SEED_PERSON, "cpf": "529.982.247-26"}, {"cpf"}),
        ({**SEED_PERSON, "name": "   ", "date_of_birth": "2999-01-01"}, {"name", "date_of_birth"}),
        ({**SEED_PERSON, "nickname": "x"}, {"nickname"}),
        ({}, {"cpf", "name", "address", "date_of_birth"}),
        (["not", "an", "object"], {"_schema"}),
        (None, {"_schema"}),
    ],
)
def test_invalid_person_raises_invalid_input_and_writes_nothing(service, person_engine, payload, bad_fields):
    with pytest.raises(InvalidInput) as excinfo:
        service.create_person(payload)

    assert set(excinfo.value.fields) == bad_fields
    assert count(person_engine, "person") == 0
    assert count(person_engine, "outbox") == 0


# --- add_income / add_asset / add_debt ---------------------------------------


def test_items_bump_the_sequence_and_announce_decimal_strings(service, person_engine):
    service.create_person(SEED_PERSON)

    income = service.add_income(CPF, {"type": "renting", "value": 1000})
    asset = service.add_asset("529.982.247-25", {"type": "apartment", "value": "100000"})
    debt = service.add_debt(int(CPF), {"value": 1000.1})

    assert income["value"] == "1000.00" and income["type"] == "renting"
    assert asset["value"] == "100000.00" and asset["type"] == "apartment"
    assert debt["value"] == "1000.10" and "type" not in debt

    events = outbox_rows(person_engine)
    assert [(r["event_type"], r["sequence"]) for r in events] == [
        ("person_created", 1),
        ("income_added", 2),
        ("asset_added", 3),
        ("debt_added", 4),
    ]
    assert [r["payload"]["sequence"] for r in events] == [1, 2, 3, 4]
    assert events[1]["payload"]["data"] == {"item_id": income["id"], "value": "1000.00", "type": "renting"}
    assert events[2]["payload"]["data"] == {"item_id": asset["id"], "value": "100000.00", "type": "apartment"}
    assert events[3]["payload"]["data"] == {"item_id": debt["id"], "value": "1000.10"}
    assert {r["aggregate_key"] for r in events} == {CPF}
    assert len({r["event_id"] for r in events}) == 4
    assert rows(person_engine, "SELECT last_sequence FROM person") == [{"last_sequence": 4}]


def test_sequences_are_per_person(service, person_engine):
    other = "01234567890"
    service.create_person(SEED_PERSON)
    service.create_person({**SEED_PERSON, "cpf": other})

    service.add_income(CPF, {"type": "salary", "value": 10})
    service.add_income(other, {"type": "salary", "value": 10})
    service.add_debt(other, {"value": 10})

    sequences = [(r["aggregate_key"], r["sequence"]) for r in outbox_rows(person_engine)]
    assert sequences == [(CPF, 1), (other, 1), (CPF, 2), (other, 2), (other, 3)]


@pytest.mark.parametrize(
    ("method", "payload"),
    [
        ("add_income", {"type": "renting", "value": 1000}),
        ("add_asset", {"type": "car", "value": 1000}),
        ("add_debt", {"value": 1000}),
    ],
)
def test_item_for_unknown_person_raises_and_writes_nothing(service, person_engine, method, payload):
    with pytest.raises(PersonNotFound, match=CPF):
        getattr(service, method)(CPF, payload)

    for table in ("income", "asset", "debt", "outbox"):
        assert count(person_engine, table) == 0


@pytest.mark.parametrize(
    ("method", "cpf", "payload", "bad_fields"),
    [
        ("add_income", CPF, {"value": 1000}, {"type"}),
        ("add_asset", CPF, {"type": "car", "value": "1.001"}, {"value"}),
        ("add_debt", CPF, {"type": "loan", "value": 10}, {"type"}),
        ("add_debt", CPF, {"value": 0}, {"value"}),
        ("add_debt", "529.982.247-26", {"value": 10}, {"cpf"}),
    ],
)
def test_invalid_item_raises_invalid_input_and_writes_nothing(service, person_engine, method, cpf, payload, bad_fields):
    service.create_person(SEED_PERSON)

    with pytest.raises(InvalidInput) as excinfo:
        getattr(service, method)(cpf, payload)

    assert set(excinfo.value.fields) == bad_fields
    assert count(person_engine, "outbox") == 1
    assert rows(person_engine, "SELECT last_sequence FROM person") == [{"last_sequence": 1}]


# --- get_person --------------------------------------------------------------


def test_get_person_returns_items(service):
    service.create_person(SEED_PERSON)
    income = service.add_income(CPF, {"type": "renting", "value": 1000})
    asset = service.add_asset(CPF, {"type": "apartment", "value": 100000})
    debt = service.add_debt(CPF, {"value": "1000.5"})

    found = service.get_person("529.982.247-25")

    # a write answers with its event's sequence; the stored item has none
    assert [income["sequence"], asset["sequence"], debt["sequence"]] == [2, 3, 4]
    assert found["cpf"] == CPF
    assert found["date_of_birth"] == "2019-06-15"
    assert found["incomes"] == [without_sequence(income)]
    assert found["assets"] == [without_sequence(asset)]
    assert found["debts"] == [without_sequence(debt)]
    assert found["debts"][0]["value"] == "1000.50"


def test_get_unknown_person_raises_not_found(service):
    with pytest.raises(PersonNotFound, match=CPF):
        service.get_person(CPF)


def test_get_person_with_malformed_cpf_raises_invalid_input(service):
    with pytest.raises(InvalidInput) as excinfo:
        service.get_person("123")

    assert list(excinfo.value.fields) == ["cpf"]


# --- the transaction: business row and outbox row commit together -----------


def test_failure_after_outbox_insert_rolls_back_person_and_event(db_wrappers, person_engine):
    recorder = CrashingOutbox()
    service = person_worker(person_engine, db_wrappers, recorder)

    with pytest.raises(Crash):
        service.create_person(SEED_PERSON)

    assert recorder.writes == 1  # the outbox row was really inserted...
    assert count(person_engine, "person") == 0  # ...and rolled back with the person
    assert count(person_engine, "outbox") == 0


def test_failure_after_outbox_insert_rolls_back_item_sequence_and_event(db_wrappers, recorder, person_engine):
    good = person_worker(person_engine, db_wrappers, recorder)
    good.create_person(SEED_PERSON)
    crashing_recorder = CrashingOutbox()
    crashing = person_worker(person_engine, db_wrappers, crashing_recorder)

    with pytest.raises(Crash):
        crashing.add_income(CPF, {"type": "renting", "value": 1000})

    assert recorder.writes + crashing_recorder.writes == 2
    assert count(person_engine, "income") == 0
    assert [r["event_type"] for r in outbox_rows(person_engine)] == ["person_created"]
    assert rows(person_engine, "SELECT last_sequence FROM person") == [{"last_sequence": 1}]

    # The next write takes the sequence the rolled-back one did not use: no gap.
    good.add_income(CPF, {"type": "renting", "value": 1000})
    assert [r["sequence"] for r in outbox_rows(person_engine)] == [1, 2]
