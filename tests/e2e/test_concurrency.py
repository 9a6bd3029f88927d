"""Concurrent requests through the gateway, on real processes.

The tests run under eventlet's monkey patching (tests/conftest.py), so threads
would be green threads anyway; an ``eventlet.GreenPool`` says so openly. A start
gate releases every request together, and each test checks that the requests were
really in flight at the same time (every one was sent before any answer came back),
so a pool that silently ran them one by one would fail the test instead of passing
it vacuously.
"""

import json
import time
from collections import Counter
from decimal import Decimal

import eventlet
import pytest
import requests
from eventlet.event import Event
from sqlalchemy import text

from harness.api import HTTP_TIMEOUT, create_person, person_body, wait_for_score
from harness.cpf import cpfs as valid_cpfs

pytestmark = pytest.mark.e2e

N = 20
N_MIXED = 10
CPF = "52998224725"


def run_together(calls):
    """Run the zero-argument ``calls`` concurrently, released at one instant.

    Returns ``[(result, sent_at, answered_at), ...]`` in the order of ``calls``.
    """
    gate = Event()
    pool = eventlet.GreenPool(len(calls))

    def one(call):
        gate.wait()
        sent_at = time.monotonic()
        result = call()
        return result, sent_at, time.monotonic()

    threads = [pool.spawn(one, call) for call in calls]
    eventlet.sleep(0)  # let every green thread reach the gate
    gate.send(True)
    return [thread.wait() for thread in threads]


def assert_overlapped(outcomes):
    last_sent = max(sent for _, sent, _ in outcomes)
    first_answer = min(answered for _, _, answered in outcomes)
    assert last_sent < first_answer, "the requests did not run concurrently"


def post(url, body):
    return lambda: requests.post(url, json=body, timeout=HTTP_TIMEOUT)


def test_identical_creates_make_exactly_one_person(api, person_engine):
    outcomes = run_together([post(f"{api}/person", person_body(CPF)) for _ in range(N)])
    assert_overlapped(outcomes)
    responses = [response for response, _, _ in outcomes]

    statuses = Counter(r.status_code for r in responses)
    assert statuses == {201: 1, 409: N - 1}, [r.text for r in responses]
    for r in responses:
        assert r.headers["Content-Type"].startswith("application/json")
        if r.status_code == 409:
            assert r.json()["error"] == "PERSON_ALREADY_EXISTS", r.text
        else:
            assert r.json()["cpf"] == CPF

    with person_engine.connect() as conn:
        assert conn.execute(text("SELECT cpf FROM person")).scalars().all() == [CPF]
        events = conn.execute(text("SELECT event_type, aggregate_key, sequence FROM outbox")).all()
    assert [tuple(e) for e in events] == [("person_created", CPF, 1)]

    score = wait_for_score(api, CPF, 0)
    assert score.status_code == 200 and score.json()["score"] == 0, score.text


def test_creates_of_different_people_all_succeed(api, person_engine):
    cpfs = valid_cpfs(N, start=100000000)
    assert len(set(cpfs)) == N
    outcomes = run_together([post(f"{api}/person", person_body(cpf)) for cpf in cpfs])
    assert_overlapped(outcomes)
    assert [r.status_code for r, _, _ in outcomes] == [201] * N, [r.text for r, _, _ in outcomes]

    with person_engine.connect() as conn:
        assert sorted(conn.execute(text("SELECT cpf FROM person")).scalars()) == sorted(cpfs)
        rows = conn.execute(text("SELECT aggregate_key, sequence FROM outbox")).all()
    assert sorted(tuple(r) for r in rows) == sorted((cpf, 1) for cpf in cpfs)


def _outbox_sequences(engine, cpf):
    with engine.connect() as conn:
        return (
            conn.execute(text("SELECT sequence FROM outbox WHERE aggregate_key = :cpf ORDER BY sequence"), {"cpf": cpf})
            .scalars()
            .all()
        )


def test_concurrent_incomes_for_one_person_get_gapless_sequences(api, person_engine):
    create_person(api, CPF)
    # distinct values that do not divide evenly, so floor() matters
    values = [Decimal(50 * (i + 1) + i) + Decimal("0.99") for i in range(N)]
    url = f"{api}/person/{CPF}/income"
    outcomes = run_together([post(url, {"type": f"job-{i}", "value": str(v)}) for i, v in enumerate(values)])
    assert_overlapped(outcomes)
    responses = [r for r, _, _ in outcomes]
    assert [r.status_code for r in responses] == [201] * N, [r.text for r in responses]
    assert sorted(Decimal(r.json()["value"]) for r in responses) == sorted(values)
    assert len({r.json()["id"] for r in responses}) == N

    assert _outbox_sequences(person_engine, CPF) == list(range(1, N + 2))
    with person_engine.connect() as conn:
        assert conn.execute(text("SELECT last_sequence FROM person WHERE cpf = :c"), {"c": CPF}).scalar() == N + 1
        assert conn.execute(text("SELECT count(*) FROM income WHERE cpf = :c"), {"c": CPF}).scalar() == N
        types = Counter(conn.execute(text("SELECT event_type FROM outbox")).scalars())
    assert types == {"person_created": 1, "income_added": N}

    expected = sum(int(v // 50) for v in values)
    score = wait_for_score(api, CPF, expected, timeout=10)
    assert score.status_code == 200, score.text
    body = score.json()
    assert body["score"] == expected, body
    assert body["breakdown"] == {"income": expected, "asset": 0, "debt": 0}, body
    assert body["items"]["income"] == N, body
    assert body["last_sequence"] == N + 1, body


def test_concurrent_mixed_items_for_one_person_score_exactly(api, person_engine):
    # 3 x 10 at once: within the gateway's MAX_IN_FLIGHT (32), past which a request is refused
    create_person(api, CPF)
    calls, expected = [], 0
    for i in range(N_MIXED):
        value = Decimal(1000 + 37 * i)
        calls.append(post(f"{api}/person/{CPF}/income", {"type": "salary", "value": str(value)}))
        calls.append(post(f"{api}/person/{CPF}/asset", {"type": "car", "value": str(value)}))
        calls.append(post(f"{api}/person/{CPF}/debt", {"value": str(value)}))
        expected += int(value // 50) + int(value // 20) - int(value // 20)
    outcomes = run_together(calls)
    assert_overlapped(outcomes)
    assert [r.status_code for r, _, _ in outcomes] == [201] * (3 * N_MIXED), [r.text for r, _, _ in outcomes]

    assert _outbox_sequences(person_engine, CPF) == list(range(1, 3 * N_MIXED + 2))

    score = wait_for_score(api, CPF, expected, timeout=10)
    body = score.json()
    assert body["score"] == expected, body
    assert body["items"] == {"income": N_MIXED, "asset": N_MIXED, "debt": N_MIXED}, body
    assert body["breakdown"]["asset"] == -body["breakdown"]["debt"] > 0, body


def test_writes_in_flight_at_once_go_to_person_together_each_answered_its_own(system, api, person_engine):
    """The gateway sends the writes it has in flight in write_many requests
    (gateway/write_batches.py): fewer requests than writes, and still each
    write its own answer or error, its own event and its own log line."""
    create_person(api, CPF)
    person_log_before = len(system.log("person.1").splitlines())
    url = f"{api}/person/{CPF}"
    calls = [post(f"{url}/income", {"type": f"job-{i}", "value": 100 + i}) for i in range(N)]
    calls.append(post(f"{api}/person/{valid_cpfs(1)[0]}/income", {"type": "x", "value": 1}))  # nobody: 404
    calls.append(post(f"{url}/debt", {"value": -1}))  # person refuses it: 422
    calls.append(
        lambda: requests.post(
            f"{url}/asset", json={"type": "car", "value": 5}, headers={"Idempotency-Key": "k-9"}, timeout=HTTP_TIMEOUT
        )
    )
    outcomes = run_together(calls)
    assert_overlapped(outcomes)
    responses = [r for r, _, _ in outcomes]

    statuses = [r.status_code for r in responses]
    assert statuses == [201] * N + [404, 422, 201], [r.text for r in responses]
    assert [r.json()["value"] for r in responses[:N]] == [f"{100 + i}.00" for i in range(N)]
    assert responses[N].json()["error"] == "PERSON_NOT_FOUND", responses[N].text
    assert responses[N + 1].json()["error"] == "INVALID_INPUT", responses[N + 1].text
    assert sorted(r.json()["sequence"] for r in responses if r.status_code == 201) == list(range(2, N + 3))

    lines = system.log("person.1").splitlines()[person_log_before:]
    requests_ = [line for line in lines if '"message": "rpc write_many ok' in line]
    writes = [json.loads(line) for line in lines if '"logger": "person.batched_writes"' in line]
    assert 1 <= len(requests_) < len(calls), requests_
    # One line per write, each naming the HTTP request it came from.
    assert len(writes) == len(calls), writes
    assert len({w["call_id_stack"][0] for w in writes}) == len(calls), writes
    assert Counter(w["outcome"] for w in writes) == {"ok": N + 1, "client_error": 2}, writes
    with person_engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM income")).scalar() == N
