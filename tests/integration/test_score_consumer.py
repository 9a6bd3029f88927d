"""Score consuming real events from the real broker: each applied once, per person;
a backlog applied in batches, a bad event in a batch parked alone."""

import random
from decimal import Decimal

import pytest
from nameko.containers import ServiceContainer
from nameko.extensions import DependencyProvider
from nameko.standalone.events import event_dispatcher
from nameko.testing.services import entrypoint_hook, entrypoint_waiter
from sqlalchemy import text

from contracts.events import PERSON_EVENTS
from contracts.kinds import NAMES
from harness.databases import APPLIED_EVENTS
from harness.rabbit import message_count
from harness.waits import wait_for
from person.service import PersonService
from score import rules
from score.service import ScoreService

pytestmark = pytest.mark.integration

HANDLERS = {
    "person_created": "on_person_created",
    "income_added": "on_income_added",
    "asset_added": "on_asset_added",
    "debt_added": "on_debt_added",
}


def scalar(engine, sql):
    with engine.connect() as conn:
        return conn.execute(text(sql)).scalar()


def applied_count(engine):
    return scalar(engine, APPLIED_EVENTS)


def get_score(container, cpf):
    with entrypoint_hook(container, "get_score") as get:
        return get(cpf)


def test_a_duplicate_event_changes_no_score(run_container, fresh_config, score_engine):
    score = run_container(ScoreService)
    dispatch = event_dispatcher(fresh_config)
    created = PERSON_EVENTS.new("person_created", "52998224725", 1, {})
    income = PERSON_EVENTS.new("income_added", "52998224725", 2, {"item_id": 1, "type": "renting", "value": "1000.00"})

    for event in (created, income, income):  # the income arrives twice
        with entrypoint_waiter(score, HANDLERS[event["event_type"]]):
            dispatch("person", event["event_type"], event)

    assert get_score(score, "52998224725")["score"] == 20
    with score_engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM scored_item")).scalar() == 1
    assert applied_count(score_engine) == 2


def test_interleaved_events_of_several_people_stay_per_person(run_container, fresh_config, score_engine):
    score = run_container(ScoreService)
    dispatch = event_dispatcher(fresh_config)
    people = ["52998224725", "11144477735", "01234567890"]
    rng = random.Random(7)
    expected, events, item_id = {}, [], 0
    for cpf in people:
        events.append(PERSON_EVENTS.new("person_created", cpf, 1, {}))
        items = []
        for sequence in range(2, 12):
            kind = rng.choice(NAMES)
            value = Decimal(rng.randint(1, 10_000_00)) / 100
            item_id += 1
            data = {"item_id": item_id, "value": str(value), "type": "t"}
            events.append(PERSON_EVENTS.new(f"{kind}_added", cpf, sequence, data))
            items.append((kind, value))
        expected[cpf] = rules.score_items(items)
    rng.shuffle(events)  # people interleaved, and each person's events out of order

    for event in events:
        dispatch("person", event["event_type"], event)
    wait_for(lambda: applied_count(score_engine) == len(events), 30, "every event applied")

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

    wait_for(lambda: applied_count(score_engine) == 4, 30, "the four events applied")
    result = get_score(score, "52998224725")
    assert result["score"] == 4970
    assert result["breakdown"] == {"income": 20, "asset": 5000, "debt": -50}


# --- batches ----------------------------------------------------------------------

CPF = "52998224725"
INCOME_QUEUE = "evt-person-income_added--score.on_income_added"


class BatchSizes(DependencyProvider):
    """Records how many events each ``on_income_added`` worker was given."""

    def __init__(self):
        self.sizes = []

    def worker_setup(self, worker_ctx):
        if worker_ctx.entrypoint.method_name == "on_income_added":
            self.sizes.append(len(worker_ctx.args[0]))


class RecordingScore(ScoreService):
    batch_sizes = BatchSizes()


def income(sequence, item_id, value):
    return PERSON_EVENTS.new("income_added", CPF, sequence, {"item_id": item_id, "value": value, "type": "salary"})


def with_backlog(config, events):
    """Declare score's queues (a first start), publish ``events`` while no score
    runs, then start score again; returns (container, its BatchSizes)."""
    first = ServiceContainer(RecordingScore, config)
    first.start()
    first.stop()
    dispatch = event_dispatcher(config)
    for event in events:
        dispatch("person", event["event_type"], event)
    container = ServiceContainer(RecordingScore, config)
    sizes = next(dep for dep in container.dependencies if isinstance(dep, BatchSizes)).sizes
    container.start()
    return container, sizes


def test_a_backlog_is_applied_in_batches_each_event_once(fresh_config, score_engine):
    config = {**fresh_config, "EVENT_BATCH_SIZE": 40}
    events = [PERSON_EVENTS.new("person_created", CPF, 1, {})]
    events += [income(2 + i, 1 + i, f"{100 + i}.00") for i in range(300)]
    container, sizes = with_backlog(config, events)
    try:
        wait_for(lambda: applied_count(score_engine) == len(events), 30, "every event applied")
        wait_for(lambda: message_count(config["AMQP_URI"], INCOME_QUEUE) == 0, 30, "every message acked")
        score = get_score(container, CPF)
    finally:
        container.stop()

    assert sum(sizes) == 300  # each event in exactly one worker: no batch failed
    assert max(sizes) > 1  # the backlog was batched...
    assert max(sizes) <= 40  # ...within EVENT_BATCH_SIZE
    expected = rules.score_items(("income", Decimal(e["data"]["value"])) for e in events[1:])
    assert score["score"] == expected["score"]
    assert score["items"]["income"] == 300
    assert score["last_sequence"] == 301
    assert scalar(score_engine, "SELECT count(*) FROM scored_item") == 300


def test_a_bad_event_in_a_batch_is_dead_lettered_alone(fresh_config, score_engine):
    config = {**fresh_config, "EVENT_BATCH_SIZE": 100}
    good = [income(2 + i, 1 + i, "1000.00") for i in range(60)]
    bad = income(99, 99, "-5.00")  # valid envelope, data no retry can fix
    container, sizes = with_backlog(config, [*good[:30], bad, *good[30:]])
    try:
        wait_for(lambda: scalar(score_engine, "SELECT count(*) FROM scored_item") == 60, 30, "60 items scored")
        wait_for(lambda: message_count(config["AMQP_URI"], INCOME_QUEUE) == 0, 30, "every message acked")
        with entrypoint_hook(container, "list_dead_letters") as list_dead_letters:
            wait_for(lambda: len(list_dead_letters()) == 1, 30, "the bad event parked")
            parked = list_dead_letters()
    finally:
        container.stop()

    assert [p["event_id"] for p in parked] == [bad["event_id"]]
    assert parked[0]["attempts"] == 1  # malformed: parked at once, no retries
    assert "malformed" in parked[0]["reason"]
    assert max(sizes) > 1  # the bad event did arrive in a batch...
    assert sizes.count(1) >= 1  # ...and was then run alone
    assert applied_count(score_engine) == 60
    assert scalar(score_engine, "SELECT count(*) FROM scored_item WHERE item_id = 99") == 0
