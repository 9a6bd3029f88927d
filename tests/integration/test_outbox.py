"""The outbox on the real broker and database: what commits is published once,
what rolls back is never published, what fails to publish is published later."""

import time

import eventlet
import pytest
from nameko.containers import ServiceContainer
from nameko.testing.services import entrypoint_hook
from nameko.testing.utils import get_extension
from sqlalchemy import text

from harness.probe import OutboxProbe
from harness.vhosts import EventTap
from harness.waits import wait_for
from person.service import PersonService
from reliable_events.outbox import Outbox

pytestmark = pytest.mark.integration

SEED_PERSON = {"cpf": "529.982.247-25", "name": "abc", "address": "abc", "date_of_birth": "1990-01-01"}


def outbox_rows(engine):
    with engine.connect() as conn:
        return conn.execute(
            text("SELECT event_id, event_type, sequence, published_at FROM outbox ORDER BY position")
        ).all()


def test_an_insert_publishes_exactly_one_event(run_container, tap, person_engine):
    container = run_container(PersonService)
    with entrypoint_hook(container, "create_person") as create_person:
        create_person(SEED_PERSON)

    events = tap.drain()
    assert len(events) == 1
    event = events[0]
    assert event["event_type"] == "person_created"
    assert event["cpf"] == "52998224725"
    assert event["sequence"] == 1
    assert event["data"]["date_of_birth"] == "1990-01-01"
    [row] = outbox_rows(person_engine)
    assert str(row.event_id) == event["event_id"]
    assert row.published_at is not None


def test_items_carry_money_as_strings_and_a_growing_sequence(run_container, tap):
    container = run_container(PersonService)
    with entrypoint_hook(container, "create_person") as create_person:
        create_person(SEED_PERSON)
    for method, body in [
        ("add_income", {"type": "renting", "value": 1000}),
        ("add_asset", {"type": "apartment", "value": "100000.5"}),
        ("add_debt", {"value": 19.99}),
    ]:
        with entrypoint_hook(container, method) as add:
            add("52998224725", body)

    events = sorted(tap.drain(), key=lambda e: e["sequence"])
    assert [e["event_type"] for e in events] == [
        "person_created",
        "income_added",
        "asset_added",
        "debt_added",
    ]
    assert [e["sequence"] for e in events] == [1, 2, 3, 4]
    assert [e["data"].get("value") for e in events[1:]] == ["1000.00", "100000.50", "19.99"]
    assert len({e["event_id"] for e in events}) == 4


def test_a_rolled_back_transaction_publishes_nothing(run_container, tap, person_engine):
    container = run_container(OutboxProbe)
    with entrypoint_hook(container, "write") as write:
        with pytest.raises(RuntimeError):
            write("52998224725", fail=True)
        write("11144477735")
    events = tap.drain()
    # And a sweep of everything pending, whatever its age, finds nothing more.
    assert get_extension(container, Outbox).sweep.relay_pending(min_age=0) == 0

    assert [e["cpf"] for e in events + tap.drain(wait=0.2)] == ["11144477735"]
    assert len(outbox_rows(person_engine)) == 1


def test_a_publish_that_fails_after_commit_is_left_pending_then_swept(run_container, tap, person_engine):
    container = run_container(OutboxProbe)
    publisher = get_extension(container, Outbox).publisher
    real_uri = publisher.amqp_uri
    # The relay's broker connection fails for real: nothing listens on port 1.
    publisher.amqp_uri = "amqp://guest:guest@127.0.0.1:1/"
    publisher.close()
    with entrypoint_hook(container, "write") as write:
        write("52998224725")  # committed; the immediate publish fails

    def failed_attempts():  # the sweeps' (the immediate attempt records none)
        with person_engine.connect() as conn:
            return conn.execute(text("SELECT attempts, last_error FROM outbox WHERE attempts > 0")).one_or_none()

    attempts, error = wait_for(failed_attempts, 10, "a sweep to try the row and fail")
    [row] = outbox_rows(person_engine)
    assert row.published_at is None
    assert tap.drain(wait=0.2) == []
    assert attempts >= 1
    assert "publish failed" in error

    publisher.amqp_uri = real_uri  # the broker is back
    events = tap.drain(wait=1)
    assert [e["event_id"] for e in events] == [str(row.event_id)]
    assert outbox_rows(person_engine)[0].published_at is not None


def test_an_unroutable_event_stays_pending_until_a_queue_is_bound(run_container, fresh_config, person_engine):
    """Nameko publishes with mandatory=False by default, so an event with no queue
    bound is dropped; the relay publishes as mandatory and keeps such rows."""
    container = run_container(OutboxProbe)
    with entrypoint_hook(container, "write") as write:
        write("52998224725")

    def refused():
        with person_engine.connect() as conn:
            return conn.execute(text("SELECT last_error FROM outbox WHERE attempts > 0")).scalar_one_or_none()

    assert "unroutable" in wait_for(refused, 10, "a sweep to try the row and find no queue")
    [row] = outbox_rows(person_engine)
    assert row.published_at is None

    tap = EventTap(fresh_config)  # now a queue is bound: the next sweep routes it
    try:
        events = tap.drain(wait=1)
    finally:
        tap.close()
    assert [e["event_id"] for e in events] == [str(row.event_id)]


def test_two_relays_publish_each_event_once(run_container, tap, person_engine):
    """Two person instances sweeping the same backlog at once: SKIP LOCKED
    gives each row to one of them."""
    first = run_container(OutboxProbe)
    second = run_container(OutboxProbe)
    with person_engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO outbox (event_id, event_type, aggregate_key, sequence, payload)"
                " SELECT id, 'person_created', '52998224725', n,"
                "  jsonb_build_object('event_id', id, 'event_type', 'person_created',"
                "   'occurred_at', now(), 'cpf', '52998224725', 'sequence', n, 'data', '{}'::jsonb)"
                " FROM (SELECT n, gen_random_uuid() AS id FROM generate_series(1, 600) AS n) AS e"
            )
        )
    # The relays themselves, called at once (entrypoint_hook would not do: two
    # hooks on one container both get the result of whichever worker ends first).
    relays = [get_extension(c, Outbox).sweep for c in (first, second, first, second)]
    sweeps = [eventlet.spawn(relay.relay_pending, 0) for relay in relays]
    sent = sum(gt.wait() for gt in sweeps)

    events = tap.drain(wait=1)
    assert len(events) == 600
    assert len({e["event_id"] for e in events}) == 600
    # the sweeps' own counts and the timer sweeps together sent each row once
    assert sent <= 600
    with person_engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM outbox WHERE published_at IS NULL")).scalar() == 0


def test_sweep_leaves_rows_younger_than_its_grace_to_their_writer(run_container, fresh_config, tap, person_engine):
    """A row another process has just committed is that process's to publish (it
    does so at once, from memory); a sweep takes only rows pending for longer
    than ``OUTBOX_SWEEP_GRACE``, so under normal operation no event is published twice."""
    grace = 1.0
    fresh_config.update(OUTBOX_SWEEP_GRACE=grace, OUTBOX_SWEEP_INTERVAL=3600)  # only the calls below sweep
    relay = get_extension(run_container(OutboxProbe), Outbox).sweep
    with person_engine.begin() as conn:  # committed by "another process", still pending
        conn.execute(
            text(
                "INSERT INTO outbox (event_id, event_type, aggregate_key, sequence, payload)"
                " SELECT id, 'person_created', '52998224725', 1,"
                "  jsonb_build_object('event_id', id, 'event_type', 'person_created',"
                "   'occurred_at', now(), 'cpf', '52998224725', 'sequence', 1, 'data', '{}'::jsonb)"
                " FROM gen_random_uuid() AS id"
            )
        )
    assert relay.relay_pending() == 0
    assert tap.drain(wait=0.2) == []

    deadline = time.monotonic() + 10 * grace
    while (sent := relay.relay_pending()) == 0:
        assert time.monotonic() < deadline, "the sweep never took the row"
        eventlet.sleep(0.05)
    assert sent == 1
    with person_engine.connect() as conn:
        age = conn.execute(text("SELECT extract(epoch FROM published_at - created_at) FROM outbox")).scalar_one()
    assert age >= grace
    assert len(tap.drain(wait=0.5)) == 1


def test_published_events_are_marked_sent_together_soon_after_their_confirm(
    run_container, fresh_config, tap, person_engine
):
    """The fast path marks what the broker confirmed in one transaction per
    ``OUTBOX_MARK_DELAY``, not one per event; and within that delay."""
    delay = 2.0
    # No sweep marks anything here; the grace must be at least twice the delay.
    fresh_config.update(OUTBOX_MARK_DELAY=delay, OUTBOX_SWEEP_GRACE=2 * delay, OUTBOX_SWEEP_INTERVAL=3600)
    container = run_container(OutboxProbe)
    cpfs = ["52998224725", "11144477735", "39053344705", "86288366757", "71428793860"]
    with entrypoint_hook(container, "write") as write:
        for cpf in cpfs:
            write(cpf)
            # Each event published and confirmed before the next write: one
            # relay batch each, so only the delay can put their marks together.
            assert tap.simple.get(timeout=5).payload["cpf"] == cpf
    # Published, not yet marked: not pending for health and metrics.
    unmarked = mark_transactions(person_engine)[1]
    assert get_extension(container, Outbox).sweep.backlog()["pending"] == 0
    assert unmarked > 0, "every mark came before the check above: it proved nothing"
    deadline = time.monotonic() + delay + 5  # the promised delay, plus a generous margin
    while (marks := mark_transactions(person_engine))[1]:
        assert time.monotonic() < deadline, f"{marks[1]} events still unmarked"
        eventlet.sleep(0.05)
    assert marks[0] < len(cpfs), f"{marks[0]} mark transactions for {len(cpfs)} events"


def mark_transactions(engine) -> tuple:
    """(transactions that marked rows, rows unmarked): rows one transaction updated share its xmin."""
    with engine.connect() as conn:
        return conn.execute(
            text(
                "SELECT count(DISTINCT xmin::text) FILTER (WHERE published_at IS NOT NULL),"
                " count(*) FILTER (WHERE published_at IS NULL) FROM outbox"
            )
        ).one()


def test_a_stopping_relay_marks_what_it_published(run_container, fresh_config, tap, person_engine):
    """A clean stop writes the pending marks: no sweep publishes those events
    again after a restart."""
    # Long enough that the stop comes well before the mark is due.
    fresh_config.update(OUTBOX_MARK_DELAY=5, OUTBOX_SWEEP_GRACE=10, OUTBOX_SWEEP_INTERVAL=3600)
    container = run_container(OutboxProbe)
    with entrypoint_hook(container, "write") as write:
        write("52998224725")
    assert tap.simple.get(timeout=5).payload["cpf"] == "52998224725"
    stopping = time.monotonic()
    container.stop()
    assert time.monotonic() - stopping < 5, "the mark came due before the stop ended: this test proved nothing"
    [row] = outbox_rows(person_engine)
    assert row.published_at is not None


def test_a_mark_delay_past_half_the_sweep_grace_is_refused(fresh_config):
    """A published row still unmarked must never look abandoned to a sweep."""
    fresh_config.update(OUTBOX_MARK_DELAY=0.3, OUTBOX_SWEEP_GRACE=0.5)
    container = ServiceContainer(OutboxProbe, fresh_config)
    with pytest.raises(ValueError, match="OUTBOX_MARK_DELAY"):
        container.start()
    container.kill()
