"""Crashes at the worst moment: score killed with SIGKILL mid-burst; person
killed between its commit and its publish (the outbox's crash hook)."""

import re
import signal
import time

import pytest
import requests
from faults_support import (
    HTTP_TIMEOUT,
    Load,
    accept,
    accepted_of,
    lost_and_doubled,
    person_body,
    wait_for,
)
from sqlalchemy import text

from harness.cpf import cpfs

pytestmark = [pytest.mark.e2e, pytest.mark.faults]


def _counts(person_engine, score_engine):
    with person_engine.connect() as conn:
        outbox = conn.execute(text("SELECT count(*) FROM outbox")).scalar_one()
    with score_engine.connect() as conn:
        applied = conn.execute(text("SELECT count(*) FROM processed_events")).scalar_one()
    return outbox, applied


def test_score_killed_mid_burst(system, invariant, person_engine, score_engine, report):
    system.start_all(timeout=60)
    people = cpfs(5)
    system.create_people(people)

    load = Load([system.url], people, total=300, workers=6, pause=0).start()
    try:
        wait_for(lambda: load.accepted_count() >= 60, 60, "60 items accepted before the kill", on_timeout=system.logs)
        outbox_at_kill, applied_at_kill = _counts(person_engine, score_engine)
        system.stop("score.1", signal.SIGKILL)
        time.sleep(1)
        system.start("score")
        fault_end = time.monotonic()
        load.wait(120)
    finally:
        load.stop()
        load.wait(60)

    assert not load.unexpected(), [vars(o) for o in load.unexpected()][:5]
    accepted = accepted_of(load.outcomes)
    assert len(accepted) == load.total, load.statuses()  # score's death never touches writes
    snap, recovered = invariant.wait(accepted, fault_end, system)
    score_log = system.log("score.1")
    report(
        "2 score SIGKILL mid-burst",
        accepted=len(accepted),
        events_committed_at_kill=outbox_at_kill,
        events_applied_at_kill=applied_at_kill,
        redelivered_and_skipped_after_restart=score_log.count("skipped duplicate event"),
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
    crashing = {"FAULT_CRASH_BEFORE_PUBLISH": 1, "OUTBOX_SWEEP_INTERVAL": 3600}
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
    accepted = [accept(income, "income", cpf, "2500.00")]
    pending = _pending(person_engine)
    assert [row[1] for row in pending] == ["person_created", "income_added"], pending

    system.start("person", 3)  # a normal instance: its sweep publishes what the others left
    fault_end = time.monotonic()
    snap, recovered = invariant.wait(accepted, fault_end, system)
    swept = set(re.findall(r"published event ([0-9a-f-]{36})", system.log("person.3")))
    assert {row[0] for row in pending} <= swept, system.log("person.3")

    # and the system keeps working normally
    accepted.append(accept(system.add_item(cpf, "debt", "100.00"), "debt", cpf, "100.00"))
    snap, _ = invariant.wait(accepted, time.monotonic(), system)
    report(
        "3 person killed between commit and publish",
        crashes=2,
        pending_after_crashes=len(pending),
        accepted=len(accepted),
        recovery_s=round(recovered, 2),
        **lost_and_doubled(snap),
    )
