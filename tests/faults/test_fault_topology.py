"""Scale-out and cold starts: two instances of every service at once; score
started for the first time after person has committed events."""

import re
import time
from collections import Counter

import pytest
from sqlalchemy import text

from harness.cpf import cpfs
from harness.faults import Load, lost_and_doubled, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.faults]

EVENT_ID = "([0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})"


def _outbox(person_engine):
    with person_engine.connect() as conn:
        return conn.execute(text("SELECT event_id::text, published_at, attempts, last_error FROM outbox")).all()


def test_two_instances_of_each_service(system, invariant, person_engine, report):
    for service in ("person", "score", "gateway"):
        system.start(service, 1)
        system.start(service, 2)
    for url in system.gateways.values():
        system.wait_gateway(url, timeout=60)
    people = cpfs(6)
    urls = list(system.gateways.values())
    for index, cpf in enumerate(people):
        system.create_people([cpf], url=urls[index % 2])

    load = Load(urls, people, total=240, workers=6, pause=0).start()
    load.wait(120)
    finished = time.monotonic()
    assert load.answered_as_meant(), load.statuses()
    writes = load.writes
    snap, recovered = invariant.wait(writes, finished)

    outbox_ids = {row[0] for row in _outbox(person_engine)}
    published = {
        name: re.findall(rf"published event {EVENT_ID}", system.log(name)) for name in ("person.1", "person.2")
    }
    applied = {name: re.findall(rf"applied event {EVENT_ID}", system.log(name)) for name in ("score.1", "score.2")}
    published_count = Counter(published["person.1"] + published["person.2"])
    applied_count = Counter(applied["score.1"] + applied["score.2"])
    assert set(published_count) == outbox_ids and set(published_count.values()) == {1}, (
        f"published more than once: {[k for k, v in published_count.items() if v > 1]}; "
        f"never: {outbox_ids - set(published_count)}"
    )
    assert set(applied_count) == outbox_ids and set(applied_count.values()) == {1}, (
        f"applied more than once: {[k for k, v in applied_count.items() if v > 1]}; "
        f"never: {outbox_ids - set(applied_count)}"
    )
    skipped = sum(system.log(name).count("skipped duplicate event") for name in ("score.1", "score.2"))
    per_gateway = Counter(o.url for o in load.accepted)
    spread = {
        "person.1_published": len(published["person.1"]),
        "person.2_published": len(published["person.2"]),
        "score.1_applied": len(applied["score.1"]),
        "score.2_applied": len(applied["score.2"]),
        **{f"gateway.{i + 1}_201s": per_gateway[url] for i, url in enumerate(urls)},
    }
    assert all(spread.values()), f"an instance did no work: {spread}"
    report(
        "8 two instances of each service",
        accepted=snap["accepted"],
        outbox_rows=len(outbox_ids),
        events_published=sum(published_count.values()),
        events_applied=sum(applied_count.values()),
        duplicate_deliveries_skipped=skipped,
        spread=spread,
        recovery_s=round(recovered, 2),
        **lost_and_doubled(snap),
    )


def test_score_started_after_person_committed_events(system, invariant, person_engine, report):
    system.start("person")
    system.start("gateway")
    system.wait_gateway(ready=lambda body: body["services"]["person"].get("database") == "ok", timeout=60)
    people = cpfs(3)
    system.create_people(people)
    load = Load([system.url], people, total=30, workers=3, pause=0).start().wait(60)
    assert load.answered_as_meant(), load.statuses()
    writes = load.writes

    # no queue is bound yet: every event is unroutable, and kept
    wait_for(
        lambda: all(row[2] >= 2 for row in _outbox(person_engine)), 30, "the sweep to retry every row", 0.2, system.logs
    )
    rows = _outbox(person_engine)
    assert rows and all(row[1] is None and row[3] for row in rows), rows

    system.start("score")
    fault_end = time.monotonic()
    snap, recovered = invariant.wait(writes, fault_end)
    assert system.log("score.1").count("applied event") == len(rows)
    report(
        "9 late subscriber (score cold start)",
        events_pending_before_score=len(rows),
        accepted=snap["accepted"],
        events_applied=system.log("score.1").count("applied event"),
        recovery_s=round(recovered, 2),
        **lost_and_doubled(snap),
    )
