"""Read-your-writes through the gateway: a read that names a write's sequence sees it."""

import json
import re
import time
from datetime import datetime

import eventlet
import pytest
import requests
from kombu import Connection, Exchange, Queue
from sqlalchemy import text

from contracts.cpf import mask_cpfs
from harness.api import HTTP_TIMEOUT, assert_json_error, create_person
from harness.cpf import cpfs
from harness.waits import wait_for
from harness.workers import TEST_HASHER

pytestmark = pytest.mark.e2e

ITEMS = [("income", {"type": "salary", "value": "1000.00"}, 20), ("asset", {"type": "car", "value": 100000}, 5000)]
ITEMS.append(("debt", {"value": "1000"}, -50))


def read(api, cpf, sequence=None, header=False):
    if sequence is None:
        return requests.get(f"{api}/{cpf}/score", timeout=HTTP_TIMEOUT)
    if header:
        return requests.get(f"{api}/{cpf}/score", headers={"Min-Event-Sequence": str(sequence)}, timeout=HTTP_TIMEOUT)
    return requests.get(f"{api}/{cpf}/score", params={"min_sequence": sequence}, timeout=HTTP_TIMEOUT)


def test_every_write_read_back_at_once_is_seen(api):
    """No sleeps, no retries: each read right after its write must include it."""
    for n, cpf in enumerate(cpfs(15, start=510000000)):
        created = requests.post(
            f"{api}/person",
            json={"cpf": cpf, "name": "Ana", "address": "Rua A", "date_of_birth": "1990-05-01"},
            timeout=HTTP_TIMEOUT,
        )
        assert created.status_code == 201, created.text
        assert created.json()["sequence"] == 1
        assert created.headers["Event-Sequence"] == "1"

        first = read(api, cpf, 1, header=n % 2 == 1)
        assert first.status_code == 200, first.text
        assert first.json()["score"] == 0
        assert first.json()["stale"] is False

        expected = 0
        for sequence, (kind, body, points) in enumerate(ITEMS, start=2):
            written = requests.post(f"{api}/person/{cpf}/{kind}", json=body, timeout=HTTP_TIMEOUT)
            assert written.status_code == 201, written.text
            assert written.json()["sequence"] == sequence
            assert written.headers["Event-Sequence"] == str(sequence)
            expected += points

            seen = read(api, cpf, written.headers["Event-Sequence"], header=n % 2 == 1)
            assert seen.status_code == 200, seen.text
            body_seen = seen.json()
            assert body_seen["stale"] is False, body_seen
            assert seen.headers["Replica-Stale"] == "false"
            assert body_seen["applied_sequence"] >= sequence
            assert seen.headers["Event-Sequence"] == str(body_seen["applied_sequence"])
            assert body_seen["score"] == expected
            assert body_seen["items"][kind] == 1
            assert "replica-wait;dur=" in seen.headers["Server-Timing"]


def test_a_read_without_a_sequence_returns_at_once_and_is_never_stale(api):
    cpf = create_person(api)["cpf"]
    read(api, cpf, 1)  # settled
    response = read(api, cpf)
    assert response.status_code == 200
    assert response.json()["stale"] is False
    assert "Server-Timing" not in response.headers


def test_a_sequence_not_reached_in_time_answers_the_current_value_marked_stale(api):
    cpf = create_person(api)["cpf"]
    assert read(api, cpf, 1).json()["stale"] is False

    started = time.monotonic()
    response = read(api, cpf, 99)  # nothing will ever write sequence 99
    waited = time.monotonic() - started

    assert response.status_code == 200, response.text
    body = response.json()
    assert body["stale"] is True
    assert response.headers["Replica-Stale"] == "true"
    assert body["applied_sequence"] == 1 and body["score"] == 0
    # bounded by READ_YOUR_WRITES_TIMEOUT (2 s here): not an error, not a hang
    assert 1.5 < waited < 10, waited


def test_a_cpf_nobody_knows_is_still_404_after_the_wait(api):
    response = read(api, "11144477735", 1)
    assert_json_error(response, 404, "SCORE_NOT_FOUND")


@pytest.mark.parametrize("bad", ["0", "-1", "abc", "1.5", "2147483648", "", "١"])
def test_a_malformed_sequence_is_422(api, bad):
    cpf = create_person(api)["cpf"]
    response = requests.get(f"{api}/{cpf}/score", params={"min_sequence": bad}, timeout=HTTP_TIMEOUT)
    assert_json_error(response, 422, "INVALID_INPUT")
    assert "min_sequence" in response.json()["fields"]

    response = read(api, cpf, bad, header=True) if bad.isascii() else None
    if response is not None:
        assert_json_error(response, 422, "INVALID_INPUT")
        assert "Min-Event-Sequence" in response.json()["fields"]


def registered(score_engine, cpf) -> bool:
    """Whether score has a read waiting for ``cpf`` (score/replica.py: by its hash)."""
    with score_engine.connect() as conn:
        sql = text("SELECT count(*) FROM waiting_read WHERE cpf_hash = :h")
        return conn.execute(sql, {"h": TEST_HASHER.hash(cpf)}).scalar() == 1


def test_score_announces_a_person_s_advance_while_a_read_waits_and_only_then(api, amqp_uri, score_engine):
    """The wake-up itself: without it every waiting read would only end at its
    bound. And its cost: with no read waiting, a write sends no notice."""

    def drain(conn, until):
        deadline = time.monotonic() + 10
        while not until() and time.monotonic() < deadline:
            try:
                conn.drain_events(timeout=0.2)
            except TimeoutError:
                pass

    with Connection(amqp_uri) as conn:
        queue = Queue(
            "test-replica-advanced",
            exchange=Exchange("score.events", type="topic", durable=True),
            routing_key="replica_advanced",
            exclusive=True,
            auto_delete=True,
        )
        notices = []
        with conn.Consumer(queue, callbacks=[lambda body, message: (notices.append(body), message.ack())]):
            cpf = create_person(api)["cpf"]
            # Applied, then a moment for a notice that would follow the commit.
            drain(conn, lambda: read(api, cpf).status_code == 200)
            settled = time.monotonic() + 0.5
            drain(conn, lambda: time.monotonic() > settled)
            unasked = [notice for notice in notices if cpf in notice["cpfs"]]

            waiting = eventlet.spawn(read, api, cpf, 2)
            wait_for(lambda: registered(score_engine, cpf), 10, "the read to register with score")
            income = requests.post(f"{api}/person/{cpf}/income", json={"type": "salary", "value": "10"}, timeout=10)
            assert income.json()["sequence"] == 2
            drain(conn, lambda: any(cpf in notice["cpfs"] for notice in notices))
            answer = waiting.wait()
    assert unasked == [], unasked
    assert any(notice == {"cpfs": [cpf]} for notice in notices), notices
    assert answer.json()["applied_sequence"] == 2 and answer.json()["stale"] is False


def test_a_waiting_read_is_woken_within_200_ms_of_the_write_being_applied(system, api):
    """The wake-up is score's notice, not a poll: the read that waits for a
    write answers right after score applied it, not at the bound (2 s)."""
    cpf = cpfs(1, start=530000000)[0]
    create_person(api, cpf)
    assert read(api, cpf, 1).json()["stale"] is False

    def in_flight():
        metrics = requests.get(f"{system.gateways['gateway.1']}/metrics", timeout=HTTP_TIMEOUT).text
        return float(re.search(r"^http_requests_in_flight (\S+)$", metrics, re.M).group(1))

    waiting = eventlet.spawn(lambda: (read(api, cpf, 2), time.time()))
    wait_for(lambda: in_flight() == 1, 5, "the read to be waiting", 0.01)  # it has read once, and waits
    written = requests.post(f"{api}/person/{cpf}/debt", json={"value": "1000"}, timeout=HTTP_TIMEOUT)
    assert written.json()["sequence"] == 2
    answer, answered_at = waiting.wait()
    assert answer.status_code == 200 and answer.json()["stale"] is False, answer.text

    def applied_at():
        for line in system.log("score.1").splitlines():
            record = json.loads(line) if line.startswith("{") else {}
            if record.get("message", "").startswith("applied event") and (
                record.get("cpf"),
                record.get("sequence"),
            ) == (mask_cpfs(cpf), 2):
                return datetime.fromisoformat(record["timestamp"]).timestamp()
        return None

    applied = wait_for(applied_at, 5, "score's line for the write")
    assert answered_at - applied < 0.2, f"answered {answered_at - applied:.3f} s after score applied the write"
