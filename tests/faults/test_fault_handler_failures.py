"""score's handler failing for real: its ``scored_item`` table is renamed away.

- Transiently: renamed back after the first failed attempt; the retry (through
  ``<queue>.retry.<n>``, delays 0.5, 1, 2 s) applies it exactly once.
- Permanently: kept away through every attempt; the event is dead-lettered,
  then replayed with the ``deadletters`` console script after the fix, and
  delivering it once more changes nothing.
"""

import json
import time

import pytest
from sqlalchemy import text

from harness.cpf import cpfs
from harness.faults import (
    INCOME_QUEUE,
    RETRY_DELAYS,
    log_records,
    lost_and_doubled,
    outbox_event,
    publish_event,
    wait_for,
)

pytestmark = [pytest.mark.e2e, pytest.mark.faults]


def _rename(engine, old, new):
    with engine.begin() as conn:
        conn.execute(text("SET LOCAL lock_timeout = '10s'"))
        conn.execute(text(f"ALTER TABLE {old} RENAME TO {new}"))


def _break_and_post(system, invariant, score_engine, person_engine):
    system.start_all(timeout=60)
    cpf = cpfs(1)[0]
    system.create_people([cpf])
    invariant.wait([], time.monotonic())
    _rename(score_engine, "scored_item", "scored_item_x")
    writes = [system.add_item(cpf, "income", "1000.00").accepted()]
    event = outbox_event(person_engine, "income_added", writes[0].item_id)
    return writes, event


def _retries(system, event_id):
    """Failed attempts score logged for ``event_id`` (its "... retrying ..." lines)."""
    return sum(1 for record in log_records(system.log("score.1")) if event_id in record and "retrying" in record)


def _dead_letters(system, event_id=None):
    with system.rpc() as rpc:
        return rpc.score.list_dead_letters(event_id)


def test_transient_handler_failure_is_retried_and_applied_once(
    system, invariant, person_engine, score_table_restored, report
):
    writes, event = _break_and_post(system, invariant, score_table_restored, person_engine)
    wait_for(lambda: _retries(system, event["event_id"]), 30, "the first attempt to fail", 0.02, system.logs)
    _rename(score_table_restored, "scored_item_x", "scored_item")
    fixed_at = time.monotonic()

    snap, recovered = invariant.wait(writes, fixed_at)
    score_log = system.log("score.1")
    failures = _retries(system, event["event_id"])
    assert 1 <= failures <= len(RETRY_DELAYS), score_log
    assert score_log.count(f"applied event {event['event_id']}") == 1, score_log
    assert _dead_letters(system) == []
    report(
        "6 handler failing transiently",
        failed_attempts=failures,
        applied=1,
        dead_letters=0,
        recovery_s=round(recovered, 2),
        **lost_and_doubled(snap),
    )


def test_permanent_handler_failure_is_dead_lettered_then_replayed(
    system, broker, invariant, person_engine, score_table_restored, report
):
    writes, event = _break_and_post(system, invariant, score_table_restored, person_engine)
    event_id = event["event_id"]
    posted_at = time.monotonic()
    dead = wait_for(lambda: _dead_letters(system, event_id), 40, "the event in the dead-letter queue", 0.3, system.logs)
    parked_after = time.monotonic() - posted_at
    attempts = len(RETRY_DELAYS) + 1
    assert len(dead) == 1, dead
    letter = dead[0]
    assert letter["queue"] == INCOME_QUEUE, letter
    assert letter["attempts"] == attempts, letter
    assert letter["reason"] and f"failed {attempts} attempts" in letter["reason"], letter
    assert letter["first_failure"] and letter["last_failure"], letter
    assert _retries(system, event_id) == len(RETRY_DELAYS), system.log("score.1")
    with system.rpc() as rpc:
        [detail] = rpc.score.inspect_dead_letter(event_id)
    assert detail["body"] == event, detail

    _rename(score_table_restored, "scored_item_x", "scored_item")
    snap = invariant.snapshot(writes, check_api=False)
    assert snap["scored_items"] == 0 and event_id in snap["processed_missing"], snap  # parked, not applied
    helped = system.deadletters("--help")
    assert helped.returncode == 0 and "replay" in helped.stdout, helped
    listed = system.deadletters("list")
    assert listed.returncode == 0, listed.stderr
    assert [d["event_id"] for d in json.loads(listed.stdout)] == [event_id], listed.stdout
    inspected = system.deadletters("inspect", event_id)
    assert inspected.returncode == 0 and json.loads(inspected.stdout)[0]["body"] == event, inspected
    unknown = system.deadletters("inspect", "00000000-0000-4000-8000-000000000000")
    assert unknown.returncode == 1 and unknown.stdout == "", unknown
    assert unknown.stderr.splitlines() == [
        "deadletters: no dead letter of event 00000000-0000-4000-8000-000000000000."
    ], unknown.stderr
    replayed = system.deadletters("replay", "--all")
    replayed_at = time.monotonic()
    assert replayed.returncode == 0, replayed.stderr
    assert [d["event_id"] for d in json.loads(replayed.stdout)] == [event_id], replayed.stdout

    snap, recovered = invariant.wait(writes, replayed_at)
    assert _dead_letters(system) == []

    # The same event once more, straight to its handler's queue as a replay
    # would send it: the inbox knows it.
    publish_event(system.env["AMQP_URI"], detail["body"], None, message_id=event_id, to_queue=INCOME_QUEUE)
    broker.wait_drained(system.env["AMQP_URI"], on_timeout=system.logs)
    again = system.deadletters("replay", "--all")
    assert again.returncode == 0 and json.loads(again.stdout) == [], again
    snap, _ = invariant.wait(writes, time.monotonic())
    assert system.log("score.1").count(f"applied event {event_id}") == 1
    report(
        "7 handler failing permanently",
        attempts=letter["attempts"],
        reason=letter["reason"][:160],
        dead_lettered_after_s=round(parked_after, 2),
        replayed=1,
        redelivered_after_replay_logged_skipped=system.log("score.1").count(f"skipped duplicate event {event_id}"),
        recovery_s=round(recovered, 2),
        **lost_and_doubled(snap),
    )
