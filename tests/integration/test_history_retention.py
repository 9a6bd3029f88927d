"""The event history's retention on the real database and broker
(reliable_events/retention.py): published rows past EVENT_HISTORY_RETENTION
are deleted in batches of their own transaction, one instance at a time,
never a pending row; a batch cut off half-way deletes nothing; a page of
the history from below what was deleted is refused; a retention that makes
no sense stops person at start."""

import json
import subprocess
import sys

import eventlet
import pytest
from nameko.standalone.rpc import ClusterRpcProxy
from nameko.testing.services import entrypoint_hook
from nameko.testing.utils import get_extension
from prometheus_client import REGISTRY
from sqlalchemy import text
from sqlalchemy.exc import OperationalError

from contracts.errors import HistoryTrimmed
from harness.processes import NAMEKO, ROOT, System
from harness.waits import wait_for
from person.service import PersonService
from reliable_events.outbox import Outbox

pytestmark = pytest.mark.integration

RETENTION = 3600  # seconds: rows aged two hours are past it
BATCH = 3


@pytest.fixture
def person(run_container, fresh_config):
    """Person in a container whose timers stay quiet (the test runs each
    round), with a retention of an hour and batches of 3 rows."""
    fresh_config.update(
        EVENT_HISTORY_RETENTION=RETENTION,
        EVENT_HISTORY_CLEANUP_BATCH=BATCH,
        EVENT_HISTORY_CLEANUP_INTERVAL=3600,
        OUTBOX_SWEEP_INTERVAL=3600,  # no sweep publishes the pending rows written here
    )
    return run_container(PersonService)


def add_rows(engine, count, hours_old=0, published=True) -> list[int]:
    """``count`` outbox rows written ``hours_old`` hours ago, published or
    pending; their positions."""
    with engine.begin() as conn:
        return (
            conn.execute(
                text(
                    "INSERT INTO outbox"
                    " (event_id, event_type, aggregate_key, sequence, payload, published_at, created_at)"
                    " SELECT gen_random_uuid(), 'income_added', '52998224725', s,"
                    "  jsonb_build_object('event_type', 'income_added', 'sequence', s),"
                    "  CASE WHEN :published THEN clock_timestamp() END,"
                    "  clock_timestamp() - make_interval(hours => :hours)"
                    " FROM generate_series(1, :count) AS s ORDER BY s RETURNING position"
                ),
                {"count": count, "hours": hours_old, "published": published},
            )
            .scalars()
            .all()
        )


def positions(engine) -> list[int]:
    with engine.connect() as conn:
        return conn.execute(text("SELECT position FROM outbox ORDER BY position")).scalars().all()


def recorded(engine):
    with engine.connect() as conn:
        return conn.execute(text("SELECT deleted_through FROM history_retention WHERE source = 'outbox'")).scalar()


def purge(container) -> int:
    with entrypoint_hook(container, "purge_event_history") as purge_event_history:
        return purge_event_history()


def deleted_total() -> float:
    return REGISTRY.get_sample_value("event_history_deleted_total") or 0.0


def test_only_published_rows_past_the_retention_are_deleted(person, person_engine, caplog):
    old = add_rows(person_engine, 4, hours_old=2)
    old_pending = add_rows(person_engine, 2, hours_old=48, published=False)
    young = add_rows(person_engine, 3)
    counted = deleted_total()

    with caplog.at_level("INFO", logger="reliable_events.retention"):
        assert purge(person) == 4
    assert positions(person_engine) == old_pending + young
    assert recorded(person_engine) == max(old)
    assert deleted_total() - counted == 4
    [line] = [r for r in caplog.records if r.name == "reliable_events.retention"]
    # Batches of 3: the old rows and a pending one, the next and the other
    # pending, then the first young row ends the round.
    assert (line.deleted, line.deleted_through, line.batches) == (4, max(old), 3)
    assert line.duration_s >= 0

    caplog.clear()
    with caplog.at_level("INFO", logger="reliable_events.retention"):
        assert purge(person) == 0  # nothing more is old enough: no line
    assert positions(person_engine) == old_pending + young
    assert not [r for r in caplog.records if r.name == "reliable_events.retention"]


def vacuum_stats(engine) -> tuple:
    with engine.connect() as conn:
        return conn.execute(
            text("SELECT vacuum_count, n_dead_tup FROM pg_stat_user_tables WHERE relname = 'outbox'")
        ).one()


def test_a_round_that_deleted_vacuums_the_table_when_autovacuum_is_off(person, person_engine, caplog):
    """Without a vacuum a deleted row's space is never reused, and the table
    keeps growing however few rows it holds; where the server's autovacuum is
    on, it is left to it."""
    with person_engine.connect() as conn:
        autovacuum = conn.execute(text("SHOW autovacuum")).scalar()
    add_rows(person_engine, 4, hours_old=2)
    vacuums, _ = vacuum_stats(person_engine)

    with caplog.at_level("INFO", logger="reliable_events.retention"):
        assert purge(person) == 4

    [line] = [r for r in caplog.records if r.name == "reliable_events.retention"]
    assert line.vacuumed is (autovacuum == "off")
    if autovacuum == "off":  # this project's machine: so the test shows the vacuum
        # The statistics collector reports a little later.
        wait_for(lambda: vacuum_stats(person_engine)[0] > vacuums, 10, "the outbox vacuumed")


def test_person_runs_a_round_every_cleanup_interval(run_container, fresh_config, person_engine):
    fresh_config.update(EVENT_HISTORY_RETENTION=RETENTION, EVENT_HISTORY_CLEANUP_INTERVAL=0.2)
    add_rows(person_engine, 2, hours_old=2)
    young = add_rows(person_engine, 1)
    run_container(PersonService)
    wait_for(lambda: positions(person_engine) == young, 10, "the retention timer to delete the old rows")


def test_each_batch_is_a_transaction_of_its_own_oldest_first(person, person_engine):
    """Batches of 3 and 10 rows: 4 transactions, each committed before the
    next begins (another connection sees the rows go 3 at a time), oldest
    positions first."""
    old = add_rows(person_engine, 10, hours_old=2)
    retention = get_extension(person, Outbox).retention
    seen = []
    delete_batch = retention.delete_batch

    def observed(*args):
        batch = delete_batch(*args)
        seen.append((batch.rows, positions(person_engine)))  # from another connection: committed
        return batch

    retention.delete_batch = observed
    assert purge(person) == 10
    assert seen == [(3, old[3:]), (3, old[6:]), (3, old[9:]), (1, [])]
    assert recorded(person_engine) == max(old)


def test_a_second_instance_deletes_nothing_while_the_first_holds_the_lock(person, person_engine):
    old = add_rows(person_engine, 5, hours_old=2)
    lock_key = get_extension(person, Outbox).retention.lock_key
    with person_engine.begin() as first:  # the other instance's batch, in progress
        first.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": lock_key})
        assert purge(person) == 0
        assert positions(person_engine) == old
    assert purge(person) == 5  # the lock went with its transaction
    assert positions(person_engine) == []


def test_a_batch_skips_rows_another_transaction_holds_and_never_waits(person, person_engine):
    """Row locks held elsewhere (a relay's mark, an erasure) are skipped, not
    waited for; the next round takes the row. The record keeps the highest
    position ever deleted."""
    old = add_rows(person_engine, 4, hours_old=2)
    retention = get_extension(person, Outbox).retention
    with person_engine.begin() as holder:
        holder.execute(text("SELECT 1 FROM outbox WHERE position = :p FOR UPDATE"), {"p": old[0]})
        round_ = eventlet.spawn(retention.purge)
        with eventlet.Timeout(10):
            assert round_.wait() == 3
        assert positions(person_engine) == old[:1]
    assert recorded(person_engine) == max(old)
    assert purge(person) == 1
    assert positions(person_engine) == []
    assert recorded(person_engine) == max(old)  # not lowered to the position deleted last


def test_a_batch_cut_off_half_way_deletes_nothing_and_the_next_round_does(person, person_engine):
    """The batch's connection is killed after its DELETE ran, while it waits
    to record how far it deleted (the test holds that row): the whole batch
    rolls back, and the next round deletes those rows."""
    old = add_rows(person_engine, 3, hours_old=2)
    with person_engine.begin() as conn:
        conn.execute(text("INSERT INTO history_retention (source, deleted_through) VALUES ('outbox', 0)"))
    retention = get_extension(person, Outbox).retention
    with person_engine.begin() as holder:
        holder.execute(text("SELECT 1 FROM history_retention WHERE source = 'outbox' FOR UPDATE"))
        round_ = eventlet.spawn(retention.purge)

        def blocked_batch():
            with person_engine.connect() as conn:
                return conn.execute(
                    text(
                        "SELECT pid FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
                        " AND query LIKE 'INSERT INTO history_retention%'"
                    )
                ).scalar()

        pid = wait_for(blocked_batch, 10, "the batch to wait for the history_retention row")
        holder.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
        with pytest.raises(OperationalError):
            round_.wait()
    assert positions(person_engine) == old
    assert recorded(person_engine) == 0

    assert purge(person) == 3
    assert positions(person_engine) == []
    assert recorded(person_engine) == max(old)


def test_a_history_page_from_below_what_was_deleted_is_refused(person, person_engine, fresh_config):
    old = add_rows(person_engine, 4, hours_old=2)
    young = add_rows(person_engine, 3)
    assert purge(person) == 4
    through = max(old)
    with ClusterRpcProxy(fresh_config, timeout=20) as rpc:
        for after in (0, through - 1):
            with pytest.raises(HistoryTrimmed) as refused:  # the caller gets the contract's type
                rpc.person.event_history(after_position=after, limit=10)
            assert f"Events up to position {through} were deleted by the retention policy" in str(refused.value)
            assert "Rebuild from the start" in str(refused.value)
        page = rpc.person.event_history(after_position=through, limit=10)
        assert [event["position"] for event in page["events"]] == young
        page = rpc.person.event_history(after_position=young[0], limit=10)
        assert [event["position"] for event in page["events"]] == young[1:]


@pytest.mark.parametrize("launcher", ["ops.launch", "nameko run"])
def test_person_refuses_to_start_with_a_retention_within_the_rpc_timeout(launcher, amqp_uri, db_uris, tmp_path):
    """As make run starts it (``python -m ops.launch``: one log line, status
    2) and as compose does (``nameko run``: non-zero, the same message)."""
    env = {**System(amqp_uri, db_uris, tmp_path).env, "EVENT_HISTORY_RETENTION": "5", "RPC_TIMEOUT": "5"}
    command = [sys.executable, "-m", "ops.launch"] if launcher == "ops.launch" else [NAMEKO]
    started = subprocess.run(
        [*command, "run", "--config", "config.yml", "person.service"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,  # a person that started would run until killed here
    )
    output = (started.stdout + started.stderr).strip()
    assert started.returncode != 0, output
    assert "EVENT_HISTORY_RETENTION=5 refused: it must be longer than RPC_TIMEOUT (5 s)" in output
    if launcher == "ops.launch":
        assert started.returncode == 2
        [line] = output.splitlines()
        assert json.loads(line)["level"] == "CRITICAL"
