"""Score consuming real events from the real broker: each applied once, per person."""

import random
import time
from decimal import Decimal

import eventlet
import pytest
from nameko.standalone.events import event_dispatcher
from nameko.testing.services import entrypoint_hook, entrypoint_waiter
from sqlalchemy import text

from person.service import PersonService
from reliable_events.envelope import new_envelope
from score import rules
from score.service import ScoreService

pytestmark = pytest.mark.integration

HANDLERS = {
    "person_created": "on_person_created",
    "income_added": "on_income_added",
    "asset_added": "on_asset_added",
    "debt_added": "on_debt_added",
}


def applied_count(engine):
    with engine.connect() as conn:
        return conn.execute(text("SELECT count(*) FROM processed_events")).scalar()


def wait_until(predicate, timeout=20):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        eventlet.sleep(0.05)


def get_score(container, cpf):
    with entrypoint_hook(container, "get_score") as get:
        return get(cpf)


def test_a_duplicate_event_changes_no_score(run_container, fresh_config, score_engine):
    score = run_container(ScoreService)
    dispatch = event_dispatcher(fresh_config)
    created = new_envelope("person_created", "52998224725", 1, {})
    income = new_envelope("income_added", "52998224725", 2, {"item_id": 1, "type": "renting", "value": "1000.00"})

    for event in (created, income, income):  # the income arrives twice
        with entrypoint_waiter(score, HANDLERS[event["event_type"]]):
            dispatch("person", event["event_type"], event)

    assert get_score(score, "52998224725")["score"] == 20
    with score_engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM scored_item")).scalar() == 1
        assert conn.execute(text("SELECT count(*) FROM processed_events")).scalar() == 2


def test_interleaved_events_of_several_people_stay_per_person(run_container, fresh_config, score_engine):
    score = run_container(ScoreService)
    dispatch = event_dispatcher(fresh_config)
    people = ["52998224725", "11144477735", "01234567890"]
    rng = random.Random(7)
    expected, events, item_id = {}, [], 0
    for cpf in people:
        events.append(new_envelope("person_created", cpf, 1, {}))
        items = []
        for sequence in range(2, 12):
            kind = rng.choice(rules.KINDS)
            value = Decimal(rng.randint(1, 10_000_00)) / 100
            item_id += 1
            data = {"item_id": item_id, "value": str(value), "type": "t"}
            events.append(new_envelope(f"{kind}_added", cpf, sequence, data))
            items.append((kind, value))
        expected[cpf] = rules.score_items(items)
    rng.shuffle(events)  # people interleaved, and each person's events out of order

    for event in events:
        dispatch("person", event["event_type"], event)
    wait_until(lambda: applied_count(score_engine) == len(events))

    for cpf in people:
        result = get_score(score, cpf)
        assert result["score"] == expected[cpf]["score"]
        assert result["breakdown"] == expected[cpf]["breakdown"]
        assert result["last_sequence"] == 11


def test_person_to_score_through_the_broker(run_container, fresh_config, score_engine):
    """The real pipeline in containers: person's outbox relay -> broker -> score."""
    score = run_container(ScoreService)  # declares its queues first
    person = run_container(PersonService)
    with entrypoint_hook(person, "create_person") as create_person:
        create_person({"cpf": 52998224725, "name": "abc", "address": "abc", "date_of_birth": "2019-06-15"})
    for method, body in [
        ("add_income", {"type": "renting", "value": 1000}),
        ("add_asset", {"type": "apartment", "value": 100000}),
        ("add_debt", {"value": 1000}),
    ]:
        with entrypoint_hook(person, method) as add:
            add("52998224725", body)

    wait_until(lambda: applied_count(score_engine) == 4)
    result = get_score(score, "52998224725")
    assert result["score"] == 4970
    assert result["breakdown"] == {"income": 20, "asset": 5000, "debt": -50}
