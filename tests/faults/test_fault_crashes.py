"""Crashes at the worst moment: score killed with SIGKILL mid-batch; person
killed between its commit and its publish (the outbox's crash hook)."""

import re
import signal
import time

import pytest
import requests
from sqlalchemy import text

from harness.cpf import cpfs
from harness.faults import (
    HISTORY,
    HTTP_TIMEOUT,
    Load,
    inbox_view,
    lost_and_doubled,
    person_body,
    wait_for,
)
from harness.proxy import TcpProxy

pytestmark = [pytest.mark.e2e, pytest.mark.faults]


def _applied_ids(person_engine, score_engine) -> set:
    """The ids of the events score's inbox counts as applied."""
    with person_engine.connect() as conn:
        history = conn.execute(text(HISTORY)).all()
    with score_engine.connect() as conn:
        return inbox_view(history, conn)[0]


def test_score_killed_mid_batch_applies_each_event_once(system, broker, invariant, person_engine, score_engine, report):
    """Score is killed with batches committed whose acks never reached the broker,
    as a kill between a commit and its ack leaves them. (A bare kill under load
    most often lands between batches and proves nothing; here score's
    connection goes through a proxy that holds what score sends, so every batch
    committed from then on is in that state when the kill comes.) Each comes
    back after the restart, the inbox skips it, and nothing is lost or doubled."""
    with TcpProxy("127.0.0.1", broker.port) as proxy:
        system.start("person")
        system.start("score", AMQP_URI=proxy.uri(system.env["AMQP_URI"]))
        system.start("gateway")
        system.wait_gateway(timeout=60)
        people = cpfs(5)
        system.create_people(people)

        load = Load([system.url], people, total=300, workers=6, pause=0).start()
        try:
            wait_for(lambda: load.accepted_count() >= 30, 60, "30 items accepted", on_timeout=system.logs)
            assert proxy.hold() >= 1, "score has no connection through the proxy"
            acked_before = _applied_ids(person_engine, score_engine)

            def committed_since_hold():
                ids = _applied_ids(person_engine, score_engine) - acked_before
                return ids if len(ids) >= 30 else None

            committed_unacked = wait_for(
                committed_since_hold,
                60,
                "score to commit 30 events whose acks are held",
                0.05,
                system.logs,
            )
            system.stop("score.1", signal.SIGKILL)
            proxy.cut()  # what score sent is lost with it; the broker requeues
            system.start("score", 2)
            fault_end = time.monotonic()
            load.wait(120)
        finally:
            load.stop()
            load.wait(60)

    assert load.answered_as_meant(), load.statuses()  # score's death never touches writes
    snap, recovered = invariant.wait(load.writes, fault_end)
    skipped = set(re.findall(r"skipped duplicate event ([0-9a-f-]{36})", system.log("score.2")))
    # The kill interrupted work in flight: every event committed with its ack
    # held came back, and the inbox recognised it.
    assert committed_unacked <= skipped, sorted(committed_unacked - skipped)[:10]
    report(
        "2 score SIGKILL mid-batch",
        accepted=snap["accepted"],
        committed_with_ack_held_at_kill=len(committed_unacked),
        redelivered_and_skipped_after_restart=len(skipped),
        scored_items=snap["scored_items"],
        recovery_s=round(recovered, 2),
        **lost_and_doubled(snap),
    )


def _pending(person_engine):
    with person_engine.connect() as conn:
        return conn.execute(
            text("SELECT event_id::text, event_type FROM outbox WHERE published_at IS NULL ORDER BY position")
        ).all()


def _crashes_after_write(system, name, request):
    """``request()`` hits a person started with the crash hook: it must answer,
    then die by SIGKILL before publishing."""
    response = request()
    proc = system.processes[name]
    wait_for(lambda: proc.poll() is not None, 20, f"{name} to kill itself", on_timeout=lambda: system.log(name))
    assert proc.returncode == -signal.SIGKILL, f"{name} exited with {proc.returncode}:\n{system.log(name)}"
    assert "published event" not in system.log(name), system.log(name)
    system.processes.pop(name)
    return response


def test_person_killed_between_commit_and_publish(system, invariant, person_engine, report):
    # A long sweep interval: only the immediate relay (which the hook pre-empts) could publish.
    crashing = {"module": "harness.crashing_person", "OUTBOX_SWEEP_INTERVAL": 3600}
    system.start("person", 1, **crashing)
    system.start("score")
    system.start("gateway")
    system.wait_gateway(timeout=60)
    cpf = cpfs(1)[0]

    created = _crashes_after_write(
        system,
        "person.1",
        lambda: requests.post(f"{system.url}/person", json=person_body(cpf), timeout=HTTP_TIMEOUT),
    )
    assert created.status_code == 201, created.text  # the reply went out before the crash
    assert [row[1] for row in _pending(person_engine)] == ["person_created"]

    # a second crash, on an item: two committed events wait unpublished
    system.start("person", 2, **crashing)
    system.wait_gateway(timeout=60)
    income = _crashes_after_write(system, "person.2", lambda: system.add_item(cpf, "income", "2500.00"))
    writes = [income.accepted()]
    pending = _pending(person_engine)
    assert [row[1] for row in pending] == ["person_created", "income_added"], pending

    system.start("person", 3)  # a normal instance: its sweep publishes what the others left
    fault_end = time.monotonic()
    snap, recovered = invariant.wait(writes, fault_end)
    swept = set(re.findall(r"published event ([0-9a-f-]{36})", system.log("person.3")))
    assert {row[0] for row in pending} <= swept, system.log("person.3")

    # and the system keeps working normally
    writes.append(system.add_item(cpf, "debt", "100.00").accepted())
    snap, _ = invariant.wait(writes, time.monotonic())
    report(
        "3 person killed between commit and publish",
        crashes=2,
        pending_after_crashes=len(pending),
        accepted=snap["accepted"],
        recovery_s=round(recovered, 2),
        **lost_and_doubled(snap),
    )
