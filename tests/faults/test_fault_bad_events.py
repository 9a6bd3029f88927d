"""Events that should not change anything: a duplicate of an applied event,
and malformed events (which go to the dead-letter queue at once, without
blocking the valid event behind them)."""

import time
import uuid
from datetime import UTC, datetime

import pytest
import requests

from harness.cpf import cpfs
from harness.faults import (
    HTTP_TIMEOUT,
    INCOME_QUEUE,
    lost_and_doubled,
    outbox_event,
    publish_event,
    wait_for,
)

pytestmark = [pytest.mark.e2e, pytest.mark.faults]


def _scores(system, people):
    return {cpf: requests.get(f"{system.url}/{cpf}/score", timeout=HTTP_TIMEOUT).json() for cpf in people}


def test_duplicated_event_changes_nothing(system, broker, invariant, person_engine, report):
    system.start_all(timeout=60)
    people = cpfs(2)
    system.create_people(people)
    writes = [
        system.add_item(people[0], "income", "1000.00").accepted(),
        system.add_item(people[0], "asset", "100000.00").accepted(),
        system.add_item(people[1], "debt", "1000.00").accepted(),
    ]
    invariant.wait(writes, time.monotonic())
    before = _scores(system, people)

    income = outbox_event(person_engine, "income_added")
    created = outbox_event(person_engine, "person_created")
    duplicates = [income, income, created]
    published_at = time.monotonic()
    for event in duplicates:
        publish_event(system.env["AMQP_URI"], event, event["event_type"], message_id=event["event_id"])

    # consumed (acked) by score: nothing of them waits in its queues
    broker.wait_drained(system.env["AMQP_URI"], on_timeout=system.logs)
    seen = time.monotonic() - published_at
    snap, recovered = invariant.wait(writes, published_at)
    after = _scores(system, people)
    assert after == before
    score_log = system.log("score.1")
    assert score_log.count(f"applied event {income['event_id']}") == 1, score_log
    assert score_log.count(f"applied event {created['event_id']}") == 1, score_log
    with system.rpc() as rpc:
        assert rpc.score.list_dead_letters() == []  # recognised as duplicates, not failures
    skipped = sum(score_log.count(f"skipped duplicate event {e['event_id']}") for e in (income, created))
    report(
        "4 duplicated event",
        duplicates_published=len(duplicates),
        duplicates_logged_as_skipped=skipped,
        consumed_within_s=round(seen, 2),
        recovery_s=round(recovered, 2),
        score_unchanged=after == before,
        **lost_and_doubled(snap),
    )


def test_malformed_events_dead_lettered_at_once_without_blocking(system, invariant, report):
    system.start_all(timeout=60)
    cpf = cpfs(1)[0]
    system.create_people([cpf])
    invariant.wait([], time.monotonic())

    bad_envelope_id = str(uuid.uuid4())  # the message id: the body has no event_id
    bad_envelope = {"event_type": "income_added", "cpf": "123", "sequence": 0, "occurred_at": "yesterday", "data": []}
    no_item_id = str(uuid.uuid4())
    missing_item = {
        "event_id": no_item_id,
        "event_type": "income_added",
        "occurred_at": datetime.now(UTC).isoformat(),
        "cpf": cpf,
        "sequence": 2,
        "data": {"type": "salary", "value": "100.00"},
    }
    uri = system.env["AMQP_URI"]
    published_at = time.monotonic()
    publish_event(uri, bad_envelope, "income_added", message_id=bad_envelope_id)
    publish_event(uri, missing_item, "income_added", message_id=no_item_id)
    # a valid event right behind the poison, on the same queue
    writes = [system.add_item(cpf, "income", "1000.00").accepted()]

    listed = []

    def dead_letters():
        with system.rpc() as rpc:
            listed[:] = rpc.score.list_dead_letters()
        return listed if {d["event_id"] for d in listed} >= {bad_envelope_id, no_item_id} else None

    dead = wait_for(
        dead_letters,
        30,
        "both malformed events in the dead-letter queue",
        0.2,
        lambda: f"list_dead_letters: {listed}\n{system.logs()}",
    )
    parked = time.monotonic() - published_at
    snap, recovered = invariant.wait(writes, published_at, dead_letters={bad_envelope_id, no_item_id})

    by_id = {d["event_id"]: d for d in dead}
    assert len(dead) == 2, dead
    for event_id in (bad_envelope_id, no_item_id):
        letter = by_id[event_id]
        assert letter["queue"] == INCOME_QUEUE, letter
        assert letter["attempts"] == 1, letter  # at once: no retry can fix it
        assert "malformed" in (letter["reason"] or ""), letter
        assert letter["first_failure"] and letter["last_failure"], letter
    assert "item_id" in by_id[no_item_id]["reason"], by_id[no_item_id]
    score_log = system.log("score.1")
    assert "retrying" not in score_log, score_log  # no retry was even tried

    health = requests.get(f"{system.url}/health", timeout=HTTP_TIMEOUT)
    assert health.status_code == 503, health.text  # parked events are not "healthy"
    assert any("dead-letter" in problem for problem in health.json()["problems"]), health.text
    report(
        "5 malformed events",
        malformed_published=2,
        dead_lettered=len(dead),
        attempts=[by_id[i]["attempts"] for i in (bad_envelope_id, no_item_id)],
        reasons=[by_id[i]["reason"][:120] for i in (bad_envelope_id, no_item_id)],
        dead_lettered_within_s=round(parked, 2),
        valid_event_behind_applied_within_s=round(recovered, 2),
        recovery_s=round(recovered, 2),
        **lost_and_doubled(snap),
    )


def test_undecodable_message_is_dead_lettered(system, invariant, report):
    """A body that is not even JSON (though it says it is) cannot block the queue either."""
    system.start_all(timeout=60)
    cpf = cpfs(1)[0]
    system.create_people([cpf])
    invariant.wait([], time.monotonic())
    garbage_id = str(uuid.uuid4())
    published_at = time.monotonic()
    publish_event(
        system.env["AMQP_URI"],
        b"{this is not json",
        "income_added",
        message_id=garbage_id,
        serializer=None,
        content_type="application/json",
        content_encoding="utf-8",
    )
    writes = [system.add_item(cpf, "income", "1000.00").accepted()]
    listed = []

    def dead_letters():
        with system.rpc() as rpc:
            listed[:] = rpc.score.list_dead_letters()
        return [d for d in listed if d["event_id"] == garbage_id]

    dead = wait_for(
        dead_letters, 15, "the undecodable message in the dead-letter queue", 0.2, lambda: f"{listed}\n{system.logs()}"
    )
    parked = time.monotonic() - published_at
    snap, recovered = invariant.wait(writes, published_at, dead_letters={garbage_id})
    assert dead[0]["queue"] == INCOME_QUEUE and dead[0]["reason"], dead
    system.assert_running()
    report(
        "5b undecodable message",
        dead_lettered_within_s=round(parked, 2),
        reason=(dead[0]["reason"] or "")[:120],
        recovery_s=round(recovered, 2),
        **lost_and_doubled(snap),
    )
