"""An erasure whose ``person_erased`` event cannot reach the broker, on the private node.

The gateway reaches person over the broker, so a DELETE during a whole outage
is answered 503: the erasure's event can only be held back after person
answered. So person talks to the broker through a proxy (harness/proxy.py)
that, while partitioned, closes the one connection of person's that names the
``person.events`` exchange: its outbox relay's (the exchange's declare and
every publish name it; RPC requests and replies never do). Person answers the
erasure, its relay and sweeps fail, the row waits in the outbox. Then the
broker itself goes down (``stop_app``), person's relay could reach it again
but it is not there, and only once it is back (``start_app``) is the event
published and applied by score.

Checked while the event is held: person forgets the person at once (404),
score still has it (the delay is real), ``/health`` reports the unpublished
row. Afterwards: score applies the erasure (its read at the erasure's
sequence is 404), no table of score's, nor of person's, holds the CPF, the
erasure's outbox row is published, and score applied it once.
"""

import time

import pytest
import requests
from sqlalchemy import text

from harness.api import assert_json_error, rows_naming
from harness.cpf import cpfs
from harness.faults import HTTP_TIMEOUT, dead_letter_depths, wait_for
from harness.proxy import RelayPartition
from harness.workers import TEST_HASHER

pytestmark = [pytest.mark.e2e, pytest.mark.faults]

MAX_OUTBOX_AGE = 1  # HEALTH_MAX_OUTBOX_AGE: /health reports a row pending longer
OUTAGE_SECONDS = 3


@pytest.fixture
def relay_partition(broker):
    with RelayPartition("127.0.0.1", broker.port) as proxy:
        yield proxy


def erasure_row(person_engine):
    with person_engine.connect() as conn:
        return conn.execute(
            text(
                "SELECT event_id::text, aggregate_key, sequence, published_at, attempts, last_error"
                " FROM outbox WHERE event_type = 'person_erased'"
            )
        ).one_or_none()


def score_of(system, cpf, **params):
    return requests.get(f"{system.url}/{cpf}/score", params=params, timeout=HTTP_TIMEOUT)


def test_erasure_event_held_through_an_outage_is_applied_once_the_broker_is_back(
    system, broker, relay_partition, person_engine, score_engine, report
):
    proxy = relay_partition
    system.env["HEALTH_MAX_OUTBOX_AGE"] = str(MAX_OUTBOX_AGE)
    system.start("person", AMQP_URI=proxy.uri(system.env["AMQP_URI"]))
    system.start("score")
    system.start("gateway")
    system.wait_gateway(timeout=60)
    cpf = cpfs(1, start=424242424)[0]
    system.create_people([cpf])
    for kind, value in (("income", "1000.00"), ("asset", "100000.00"), ("debt", "1000.00")):
        system.add_item(cpf, kind, value).accepted()
    before = score_of(system, cpf, min_sequence=4)
    assert before.status_code == 200 and before.json()["stale"] is False, before.text
    assert before.json()["score"] == 4970, before.json()
    # the scan finds the person where it is, so an empty scan later means something
    assert {"person", "income"} <= set(rows_naming(person_engine, cpf))
    assert {"known_person", "scored_item"} <= set(rows_naming(score_engine, cpf))

    # --- person's relay cut off: the erasure is answered, its event held ------------
    proxy.partitioned = True
    erased = requests.delete(f"{system.url}/person/{cpf}", timeout=HTTP_TIMEOUT)
    erased_at = time.monotonic()
    assert erased.status_code == 200, erased.text
    body = erased.json()
    sequence = body["sequence"]
    assert (body["cpf"], body["erased"], sequence) == (cpf, True, 5), body
    assert erased.headers["Event-Sequence"] == str(sequence)
    # person forgets the person at once
    assert_json_error(requests.get(f"{system.url}/person/{cpf}", timeout=HTTP_TIMEOUT), 404, "PERSON_NOT_FOUND")

    # the relay tried, then sweeps did: each publish failed, the row waits
    held = wait_for(
        lambda: (row := erasure_row(person_engine)) is not None and row.attempts >= 2 and row,
        30,
        "sweeps to try the erasure's event and fail",
        0.1,
        system.logs,
    )
    assert held.published_at is None and held.last_error, held
    assert (held.aggregate_key, held.sequence) == (TEST_HASHER.hash(cpf), sequence), held
    health = wait_for(
        lambda: (response := system.health()).status_code == 503 and response.json(),
        30,
        "/health to report the unpublished erasure",
        0.1,
        system.logs,
    )
    assert health["problems"] == [f"1 events unpublished for over {MAX_OUTBOX_AGE}s"], health
    assert health["services"]["person"]["outbox"]["pending"] == 1, health
    # score still has the person, over a second after person erased it: the event is really held
    still = score_of(system, cpf)
    assert still.status_code == 200, still.text
    assert (still.json()["score"], still.json()["applied_sequence"]) == (4970, 4), still.json()
    waited = score_of(system, cpf, min_sequence=sequence)  # waits for the erasure, in vain
    assert waited.status_code == 200 and waited.json()["stale"] is True, waited.text
    assert time.monotonic() - erased_at > MAX_OUTBOX_AGE
    assert proxy.refused >= 2, proxy.refused

    # --- the broker goes down; the relay could reach it again, but it is not there -----
    broker.stop_app()
    down_at = time.monotonic()
    proxy.partitioned = False
    attempts_at_outage = erasure_row(person_engine).attempts
    time.sleep(OUTAGE_SECONDS)
    during = erasure_row(person_engine)
    assert during.published_at is None and during.attempts > attempts_at_outage, during
    assert rows_naming(score_engine, cpf), "score lost the person before the erasure reached it"
    broker.start_app()
    back_at = time.monotonic()

    # --- score applies the erasure once the broker is back ---------------------------------
    answers = []

    def erasure_applied():
        answers[:] = [score_of(system, cpf, min_sequence=sequence)]
        return answers[0].status_code == 404

    wait_for(erasure_applied, 60, "score to apply the erasure", 0.2, lambda: f"{answers}\n{system.logs()}")
    applied_after = time.monotonic() - back_at
    assert_json_error(answers[0], 404, "SCORE_NOT_FOUND")
    published = wait_for(
        lambda: (row := erasure_row(person_engine)).published_at is not None and row,
        30,
        "the erasure's outbox row to be marked published",
        0.1,
        system.logs,
    )
    assert rows_naming(score_engine, cpf) == {}
    assert rows_naming(person_engine, cpf) == {}
    with score_engine.connect() as conn:
        tombstone = conn.execute(
            text("SELECT sequence FROM erased_person WHERE cpf_hash = :h"), {"h": TEST_HASHER.hash(cpf)}
        ).scalar_one()
    assert tombstone == sequence
    assert system.log_of("score").count(f"applied event {published.event_id}") == 1, system.log_of("score")
    assert sum(dead_letter_depths(system.env["AMQP_URI"]).values()) == 0
    system.wait_gateway(timeout=30)  # health ok again: nothing pending, nothing dead-lettered
    report(
        "erasure event held by a cut relay and a broker outage",
        held_s=round(down_at - erased_at, 2),
        outage_s=round(back_at - down_at, 2),
        relay_connections_refused=proxy.refused,
        publish_attempts_before_published=published.attempts,
        erasure_applied_after_broker_back_s=round(applied_after, 2),
    )
