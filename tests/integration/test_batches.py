"""Batch handlers on the real broker: a backlog is applied in batches, each event
once, each message acked; a bad event in a batch is parked alone."""

import time
from decimal import Decimal

import eventlet
import pytest
from kombu import Connection
from nameko.containers import ServiceContainer
from nameko.extensions import DependencyProvider
from nameko.standalone.events import event_dispatcher
from nameko.testing.services import entrypoint_hook
from sqlalchemy import text

from reliable_events.envelope import new_envelope
from score import rules
from score.service import ScoreService

pytestmark = pytest.mark.integration

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
    return new_envelope("income_added", CPF, sequence, {"item_id": item_id, "value": value, "type": "salary"})


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


def scalar(engine, sql):
    with engine.connect() as conn:
        return conn.execute(text(sql)).scalar()


def wait_until(predicate, timeout=30):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        eventlet.sleep(0.05)


def queue_depth(config, name):
    with Connection(config["AMQP_URI"]) as conn:
        return conn.default_channel.queue_declare(name, passive=True).message_count


def test_a_backlog_is_applied_in_batches_each_event_once(fresh_config, score_engine):
    config = {**fresh_config, "EVENT_BATCH_SIZE": 40}
    events = [new_envelope("person_created", CPF, 1, {})]
    events += [income(2 + i, 1 + i, f"{100 + i}.00") for i in range(300)]
    container, sizes = with_backlog(config, events)
    try:
        wait_until(lambda: scalar(score_engine, "SELECT count(*) FROM processed_events") == len(events))
        wait_until(lambda: queue_depth(config, INCOME_QUEUE) == 0)  # every message acked
        with entrypoint_hook(container, "get_score") as get_score:
            score = get_score(CPF)
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
        wait_until(lambda: scalar(score_engine, "SELECT count(*) FROM scored_item") == 60)
        wait_until(lambda: queue_depth(config, INCOME_QUEUE) == 0)
        with entrypoint_hook(container, "list_dead_letters") as list_dead_letters:
            wait_until(lambda: len(list_dead_letters()) == 1)
            parked = list_dead_letters()
    finally:
        container.stop()

    assert [p["event_id"] for p in parked] == [bad["event_id"]]
    assert parked[0]["attempts"] == 1  # malformed: parked at once, no retries
    assert "malformed" in parked[0]["reason"]
    assert max(sizes) > 1  # the bad event did arrive in a batch...
    assert sizes.count(1) >= 1  # ...and was then run alone
    assert scalar(score_engine, "SELECT count(*) FROM processed_events") == 60
    assert scalar(score_engine, "SELECT count(*) FROM scored_item WHERE item_id = 99") == 0
