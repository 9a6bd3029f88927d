"""The broker refuses a publish (a queue over its length limit with
``overflow: reject-publish`` nacks it), on the private node:

- the outbox's event: its row stays pending until the broker confirms it
  (publisher confirms), and nothing is lost;
- ... and ``/health`` says so once the row is older than ``HEALTH_MAX_OUTBOX_AGE``;
- a failed event's copy to its retry queue: the original is acked only once
  the copy is confirmed, so a refused copy loses nothing.
"""

import json
import time
import uuid

import amqp
import pytest
from kombu import Connection, Queue
from kombu.exceptions import OperationalError
from nameko.standalone.events import get_event_exchange
from sqlalchemy import text

from harness.cpf import cpfs
from harness.faults import (
    INCOME_QUEUE,
    lost_and_doubled,
    outbox_event,
    publish_event,
    wait_for,
)

pytestmark = [pytest.mark.e2e, pytest.mark.faults]

# A limit of 1, not 0: a quorum queue tells a channel it refused to publish
# again only once the queue is below 80 % of its limit, which 0 never is.
REFUSE = json.dumps({"max-length": 1, "overflow": "reject-publish"})


def _outbox_row(person_engine, item_id):
    with person_engine.connect() as conn:
        return conn.execute(
            text(
                "SELECT published_at, attempts, last_error FROM outbox"
                " WHERE event_type = 'income_added' AND (payload -> 'data' ->> 'item_id')::bigint = :item"
            ),
            {"item": item_id},
        ).one()


def _refused(uri, event, to_queue) -> bool:
    """Publish a copy of an applied ``event`` to ``to_queue`` (harmless: the inbox
    skips it); True once the broker nacks it, i.e. the queue's limit is in force."""
    try:
        publish_event(uri, event, None, message_id=event["event_id"], to_queue=to_queue)
    except OperationalError as exc:  # kombu's wrapping of it, after its retries
        assert isinstance(exc.__context__, amqp.exceptions.MessageNacked), repr(exc.__context__)
        return True
    return False


def _started(system, invariant, person_engine, **score_env):
    system.start("person")
    system.start("score", **score_env)
    system.start("gateway")
    system.wait_gateway(timeout=60)
    cpf = cpfs(1)[0]
    system.create_people([cpf])
    first = system.add_item(cpf, "income").accepted()
    invariant.wait([first], time.monotonic())
    return cpf, first, outbox_event(person_engine, "income_added", first.item_id)


def test_event_the_broker_refuses_stays_pending_until_confirmed(system, broker, invariant, person_engine, report):
    cpf, first, applied = _started(system, invariant, person_engine)
    system.stop("score.1")  # its queue stays, and fills up
    pattern = f"^{INCOME_QUEUE}$"
    broker.ctl("set_policy", "-p", system.vhost, "refuse-income", pattern, REFUSE, "--apply-to", "queues")
    uri = system.env["AMQP_URI"]
    wait_for(lambda: _refused(uri, applied, INCOME_QUEUE), 30, "score's income queue to refuse messages", 0.2)

    refused = system.add_item(cpf, "income").accepted()  # person commits; the broker nacks the event
    row = wait_for(
        lambda: (r := _outbox_row(person_engine, refused.item_id)).attempts >= 2 and r,
        30,
        "the relay and a sweep to be refused",
        0.1,
        system.logs,
    )
    assert row.published_at is None and "nacked" in row.last_error, row

    broker.ctl("clear_policy", "-p", system.vhost, "refuse-income")
    system.start("score", 2)
    lifted_at = time.monotonic()
    snap, recovered = invariant.wait([first, refused], lifted_at)
    row = _outbox_row(person_engine, refused.item_id)
    report(
        "14 event refused by the broker (nack)",
        attempts_before_confirmed=row.attempts,
        last_error=row.last_error,
        recovery_s=round(recovered, 2),
        **lost_and_doubled(snap),
    )


def test_health_503_when_outbox_row_older_than_max_age(system, broker, invariant, person_engine, report):
    max_age = 1
    system.env["HEALTH_MAX_OUTBOX_AGE"] = str(max_age)
    cpf, first, _ = _started(system, invariant, person_engine)
    # A queue of someone else's, bound to the income events and full: the broker
    # nacks every income event (score still gets its copy), so the rows stay pending.
    tap = Queue(
        f"full-{uuid.uuid4().hex[:8]}",
        exchange=get_event_exchange("person", {}),
        routing_key="income_added",
        queue_arguments={"x-max-length": 0, "x-overflow": "reject-publish"},
    )
    with Connection(system.env["AMQP_URI"]) as conn:
        tap(conn.channel()).declare()
        try:
            pending = system.add_item(cpf, "income").accepted()
            body = wait_for(
                lambda: (response := system.health()).status_code == 503 and response.json(),
                30,
                "health to report the unpublished event",
                0.1,
                system.logs,
            )
            stale_after = _outbox_row(person_engine, pending.item_id)
            assert stale_after.published_at is None, stale_after
            assert body["problems"] == [f"1 events unpublished for over {max_age}s"], body
            assert body["services"]["person"]["outbox"]["oldest_pending_age_seconds"] > max_age, body
        finally:
            tap(conn.channel()).delete()
    removed_at = time.monotonic()
    system.wait_gateway(timeout=30)
    healthy_after = time.monotonic() - removed_at
    snap, _ = invariant.wait([first, pending], removed_at)
    report(
        "15 health with an outbox row past its age",
        problems=body["problems"],
        health_200_after_refusal_ended_s=round(healthy_after, 2),
        **lost_and_doubled(snap),
    )


def test_failed_event_is_acked_only_after_its_retry_copy_is_confirmed(
    system, broker, invariant, person_engine, score_table_restored, report
):
    # A delivery limit far away: the refused event cycles in its queue
    # meanwhile (requeued each time) instead of going to the dead letters.
    # Retry delays of 5 s: the probe that fills the retry queue (limit 1)
    # stays there that long, so the failing event's copy is surely refused
    # (with the suite's 0.5 s it could expire first, on a slow machine).
    cpf, first, applied = _started(
        system, invariant, person_engine, EVENT_DELIVERY_LIMIT=1_000_000, EVENT_RETRY_DELAYS="[5, 5, 5]"
    )
    retry_queue = f"{INCOME_QUEUE}.retry.1"
    broker.ctl("set_policy", "-p", system.vhost, "refuse-retry", f"^{retry_queue}$", REFUSE, "--apply-to", "queues")
    uri = system.env["AMQP_URI"]
    wait_for(lambda: _refused(uri, applied, retry_queue), 30, "the retry queue to refuse messages", 0.2)
    with score_table_restored.begin() as conn:  # score's handler fails from now on
        conn.execute(text("ALTER TABLE scored_item RENAME TO scored_item_x"))

    failing = system.add_item(cpf, "income").accepted()
    event_id = outbox_event(person_engine, "income_added", failing.item_id)["event_id"]
    requeued = f"could not move message to {retry_queue}; requeueing it"
    wait_for(lambda: requeued in system.log("score.1"), 30, "score to requeue the event", 0.05, system.logs)

    broker.ctl("clear_policy", "-p", system.vhost, "refuse-retry")
    attempted = f"{event_id} income_added failed attempt"
    # Every attempt logs a retry; all but the last were followed by a requeue.
    wait_for(
        lambda: (log := system.log("score.1")).count(attempted) > log.count(requeued),
        30,
        "the copy to be taken by the retry queue",
        0.05,
        system.logs,
    )
    with score_table_restored.begin() as conn:
        conn.execute(text("ALTER TABLE scored_item_x RENAME TO scored_item"))
    fixed_at = time.monotonic()
    snap, recovered = invariant.wait([first, failing], fixed_at)
    score_log = system.log("score.1")
    report(
        "16 retry copy refused by the broker",
        requeued_while_refused=score_log.count(requeued),
        applied=score_log.count(f"applied event {event_id}"),
        recovery_s=round(recovered, 2),
        **lost_and_doubled(snap),
    )
