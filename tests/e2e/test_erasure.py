"""Erasure (issue 13, LGPD): ``DELETE /person/<cpf>`` leaves no trace of the person.

The three services run as processes. Each test erases a person, then looks
for its CPF (bare and formatted) wherever personal data could be left: every
table of person's and score's databases, listed from the catalog (so a table
added later is searched too), and score's dead-letter and retry queues, read
without taking their messages. What an erasure must leave behind is checked
too: person's audit row, the ``person_erased`` event keyed by the CPF's hash
(``harness.workers.TEST_HASHER``, the services' key), score's tombstone.
"""

import re
import time
import uuid

import eventlet
import pytest
import requests
from nameko.standalone.rpc import ClusterRpcProxy
from sqlalchemy import text

from contracts.cpf import format_cpf
from contracts.errors import PersonNotFound
from contracts.events import PERSON_EVENTS
from harness.api import HTTP_TIMEOUT, assert_json_error, create_person, rows_naming
from harness.cpf import cpfs
from harness.faults import DEAD_LETTER_QUEUES, publish_event
from harness.processes import started
from harness.rabbit import amqp_connection, message_count
from harness.waits import wait_for
from harness.workers import TEST_HASHER
from ops.config import load_config
from ops.queues import event_queue, event_queues
from reliable_events.queues import dead_letter_queue_name, retry_queue_name

pytestmark = pytest.mark.e2e

CPF = "52998224725"
OTHER = cpfs(1, start=731000000)[0]
SWEEP_INTERVAL, SWEEP_GRACE = 0.2, 0.5
# Who erased when API_TOKENS is empty (the gateway's words, written out here
# so that a change of them shows).
OPEN_API = "anyone (API_TOKENS empty)"
READ_WAIT_BOUND = 2.0  # READ_YOUR_WRITES_TIMEOUT of config.yml
EVENT_QUEUES = event_queues()
RETRY_QUEUES = [
    retry_queue_name(queue, attempt)
    for queue in EVENT_QUEUES
    for attempt in range(1, len(load_config()["EVENT_RETRY_DELAYS"]) + 1)
]
PERSON_TABLES = {"person", "income", "asset", "debt", "outbox", "idempotency_keys", "erasure"}
SCORE_TABLES = {"known_person", "scored_item", "erased_person", "replica_checkpoint"}


@pytest.fixture(scope="module")
def system(amqp_uri, db_uris, tmp_path_factory):
    """The services, with the relay's sweep as quick as the in-process tests'
    (what a settle waits for). The retry delays stay config.yml's: the vhost's
    retry queues were declared with them, and a queue cannot be declared again
    with other arguments. Score's queues are emptied once it has stopped:
    nothing this module sent reaches another module's services."""
    logs = tmp_path_factory.mktemp("logs")
    with started(
        amqp_uri, db_uris, logs, OUTBOX_SWEEP_INTERVAL=SWEEP_INTERVAL, OUTBOX_SWEEP_GRACE=SWEEP_GRACE
    ) as running:
        yield running
    purge(amqp_uri, EVENT_QUEUES + RETRY_QUEUES + DEAD_LETTER_QUEUES)


@pytest.fixture(autouse=True)
def no_parked_messages_left(amqp_uri):
    """Dead letters and retries are not in the databases the fixtures empty:
    those a test leaves go with it, so the next test (and /health) never sees
    them."""
    yield
    purge(amqp_uri, RETRY_QUEUES + DEAD_LETTER_QUEUES)


def purge(amqp_uri, queues):
    conn = amqp_connection(amqp_uri)
    try:
        channel = conn.channel()
        for queue in queues:
            channel.queue_purge(queue)
    finally:
        conn.close()


@pytest.fixture
def engines(person_engine, score_engine):
    return {"person": person_engine, "score": score_engine}


# --- helpers ----------------------------------------------------------------------------


def query(engine, sql, **params):
    with engine.connect() as conn:
        return conn.execute(text(sql), params).all()


def tables_of(conn) -> list:
    return (
        conn.execute(
            text(
                "SELECT table_name FROM information_schema.tables"
                " WHERE table_schema = 'public' AND table_type = 'BASE TABLE' ORDER BY table_name"
            )
        )
        .scalars()
        .all()
    )


def tables_of_all(engines) -> dict:
    result = {}
    for database, engine in engines.items():
        with engine.connect() as conn:
            result[database] = tables_of(conn)
    return result


def holding(engines, cpf) -> dict:
    """``{"<database>.<table>": rows}`` of every table with rows naming ``cpf``."""
    return {
        f"{database}.{table}": rows
        for database, engine in engines.items()
        for table, rows in rows_naming(engine, cpf).items()
    }


def parked(amqp_uri, queues=DEAD_LETTER_QUEUES + RETRY_QUEUES) -> list:
    """``(queue, body)`` of every message in ``queues``: fetched unacked and
    handed back when the connection closes, so none is taken."""
    found = []
    conn = amqp_connection(amqp_uri)
    try:
        channel = conn.channel()
        for queue in queues:
            while (message := channel.basic_get(queue, no_ack=False)) is not None:
                body = message.body
                found.append((queue, body.decode("utf-8", "replace") if isinstance(body, bytes) else body))
    finally:
        conn.close()
    return found


def naming(messages, cpf) -> list:
    return [(queue, body) for queue, body in messages if cpf in body or format_cpf(cpf) in body]


def publish(amqp_uri, routing_key, event, to_queue=None):
    """Publish ``event`` as person's relay does (JSON, persistent, confirmed), with its id."""
    publish_event(amqp_uri, event, routing_key, message_id=event["event_id"], to_queue=to_queue, delivery_mode=2)


def post_item(api, cpf, kind, value, **headers):
    body = {"value": str(value)} if kind == "debt" else {"type": f"{kind}-type", "value": str(value)}
    return requests.post(f"{api}/person/{cpf}/{kind}", json=body, headers=headers, timeout=HTTP_TIMEOUT)


def added(api, cpf, kind, value, **headers) -> int:
    response = post_item(api, cpf, kind, value, **headers)
    assert response.status_code == 201, response.text
    return response.json()["sequence"]


def read_score(api, cpf, min_sequence=None):
    params = {} if min_sequence is None else {"min_sequence": min_sequence}
    return requests.get(f"{api}/{cpf}/score", params=params, timeout=HTTP_TIMEOUT)


def fresh_score(api, cpf, sequence) -> dict:
    response = read_score(api, cpf, sequence)
    assert response.status_code == 200, response.text
    assert response.json()["stale"] is False, response.text
    return response.json()


def erase(api, cpf) -> int:
    response = requests.delete(f"{api}/person/{cpf}", timeout=HTTP_TIMEOUT)
    assert response.status_code == 200, response.text
    assert response.headers["Event-Sequence"] == str(response.json()["sequence"])
    return response.json()["sequence"]


def assert_erased_in_score(api, cpf, sequence):
    """Score has applied the erasure: the read that names it is 404 as soon as
    it is applied, not after the wait's bound ran out (as for a CPF never seen)."""
    started_at = time.monotonic()
    response = read_score(api, cpf, sequence)
    waited = time.monotonic() - started_at
    assert_json_error(response, 404, "SCORE_NOT_FOUND")
    assert waited < READ_WAIT_BOUND * 0.75, f"the 404 came after {waited:.2f} s: the wait ran out"


def outbox_pending(api) -> int:
    return requests.get(f"{api}/health", timeout=HTTP_TIMEOUT).json()["services"]["person"]["outbox"]["pending"]


def rpc(system, timeout=30):
    return ClusterRpcProxy({"AMQP_URI": system.env["AMQP_URI"]}, timeout=timeout)


# --- tests ------------------------------------------------------------------------------


def test_an_erasure_leaves_no_trace_but_its_own_records(api, system, engines):
    """Proves: DELETE erases the person's rows, items, event history and stored
    answers in person, its replica rows, inbox rows and dead letters in score
    (and no other person's), numbers the erasure after the person's last
    event, and keeps exactly the audit row, the ``person_erased`` event and
    the tombstone, each naming the person by the CPF's keyed hash only."""
    uri = system.env["AMQP_URI"]
    cpf_hash = TEST_HASHER.hash(CPF)
    assert create_person(api, CPF)["sequence"] == 1
    assert added(api, CPF, "income", 1000, **{"Idempotency-Key": f"income-{uuid.uuid4()}"}) == 2
    assert added(api, CPF, "asset", 100000) == 3
    assert added(api, CPF, "debt", 1000) == 4
    assert fresh_score(api, CPF, 4)["score"] == 20 + 5000 - 50

    # Dead letters: one naming the person by its CPF, one by the formatted CPF
    # (an envelope score refuses), and another person's, which must stay.
    unusable = PERSON_EVENTS.new("income_added", CPF, 90, {"value": "10.00"})
    misspelt = {**PERSON_EVENTS.new("debt_added", CPF, 91, {"item_id": 1, "value": "1.00"}), "cpf": format_cpf(CPF)}
    others = PERSON_EVENTS.new("asset_added", OTHER, 90, {"value": "10.00"})
    for event in (unusable, misspelt, others):
        publish(uri, event["event_type"], event)
    for event in (unusable, misspelt, others):
        queue = dead_letter_queue_name(event_queue(event["event_type"]))
        wait_for(lambda queue=queue: message_count(uri, queue) == 1, 10, f"a dead letter in {queue}")
    assert len(naming(parked(uri), CPF)) == 2

    # The scan finds the CPF where it is, so an empty scan later means something.
    tables = tables_of_all(engines)
    assert set(tables["person"]) >= PERSON_TABLES and set(tables["score"]) >= SCORE_TABLES
    before = holding(engines, CPF)
    expected_before = {"person.person", "person.income", "person.asset", "person.debt", "person.outbox"}
    expected_before |= {"person.idempotency_keys", "score.known_person", "score.scored_item"}
    assert set(before) >= expected_before, before

    response = requests.delete(f"{api}/person/{format_cpf(CPF)}", timeout=HTTP_TIMEOUT)

    assert response.status_code == 200, response.text
    body = response.json()
    assert {key: body[key] for key in ("cpf", "erased", "sequence")} == {"cpf": CPF, "erased": True, "sequence": 5}
    assert body["erased_at"]
    assert response.headers["Event-Sequence"] == "5"

    assert_json_error(requests.get(f"{api}/person/{CPF}", timeout=HTTP_TIMEOUT), 404, "PERSON_NOT_FOUND")
    assert_erased_in_score(api, CPF, 5)
    assert_json_error(read_score(api, CPF), 404, "SCORE_NOT_FOUND")
    assert_json_error(requests.delete(f"{api}/person/{CPF}", timeout=HTTP_TIMEOUT), 404, "PERSON_NOT_FOUND")
    # The stored answer of the idempotent write went too: its retry is not answered 201 from it.
    retried = post_item(api, CPF, "income", 1000, **{"Idempotency-Key": "income-retried-after-erasure"})
    assert_json_error(retried, 404, "PERSON_NOT_FOUND")

    assert holding(engines, CPF) == {}
    letters = parked(uri)
    assert naming(letters, CPF) == []
    assert [body for _, body in naming(letters, OTHER)], "another person's dead letter was purged too"

    person, score = engines["person"], engines["score"]
    assert query(person, "SELECT cpf_hash, sequence, erased_by FROM erasure") == [(cpf_hash, 5, OPEN_API)]
    [(event_type, key, sequence, payload)] = query(
        person, "SELECT event_type, aggregate_key, sequence, payload FROM outbox"
    )
    assert (event_type, key, sequence) == ("person_erased", cpf_hash, 5)
    assert (payload["cpf_hash"], payload["sequence"], payload["data"]) == (cpf_hash, 5, {})
    assert "cpf" not in payload  # the field says what it holds
    assert query(score, "SELECT cpf_hash, sequence FROM erased_person") == [(cpf_hash, 5)]
    assert query(score, "SELECT count(*) FROM known_person") == [(0,)]


def test_writes_racing_an_erasure_leave_nothing_behind(api, system, engines):
    """Proves: item writes of the person sent while it is erased are each
    either written before the erasure (201, numbered before it) or refused
    (404), never failed (5xx) nor written after it; and once everything has
    drained no write, in person nor in score (events in flight, batches
    applied concurrently with the erasure), has brought the person back."""
    uri = system.env["AMQP_URI"]
    log_start = len(system.log("score.1"))
    create_person(api, CPF)
    fresh_score(api, CPF, 1)
    threads, per_thread = 8, 8
    writes = []  # (status, error code or sequence, sent at)

    def writer(n):
        for i in range(per_thread):
            kind = ("income", "asset", "debt")[(n + i) % 3]
            sent = time.monotonic()
            response = post_item(api, CPF, kind, 100 + n * per_thread + i)
            body = response.json()
            writes.append((response.status_code, body.get("sequence", body.get("error")), sent))

    pool = eventlet.GreenPool(threads)
    running = [pool.spawn(writer, n) for n in range(threads)]
    wait_for(lambda: len(writes) >= threads * 2, 20, "the first writes", interval=0.005)
    erasure = erase(api, CPF)
    erase_answered = time.monotonic()
    for thread in running:
        thread.wait()  # a writer's own error, if any, is raised here
    assert len(writes) == threads * per_thread

    outcomes = sorted({(status, status == 201 or what) for status, what, _ in writes})
    assert outcomes == [(201, True), (404, "PERSON_NOT_FOUND")], f"not all 201 or 404, or not both: {outcomes}"
    accepted = sorted(sequence for status, sequence, _ in writes if status == 201)
    assert accepted == list(range(2, erasure)), "the erasure is numbered right after the last write before it"
    late = [(status, what) for status, what, sent in writes if sent > erase_answered and status != 404]
    assert late == [], "a write sent after the erasure was answered was not refused"

    wait_for(lambda: outbox_pending(api) == 0, 10, "person's outbox to be published")
    assert_erased_in_score(api, CPF, erasure)
    wait_for(lambda: all(message_count(uri, q) == 0 for q in EVENT_QUEUES), 10, "score's event queues to drain")
    assert holding(engines, CPF) == {}

    # A relay's publish of a row the erasure deleted, or a batch that was
    # still running, would land only after that: look again once the sweep
    # has had its turn.
    time.sleep(SWEEP_INTERVAL + SWEEP_GRACE)
    assert outbox_pending(api) == 0
    assert_json_error(read_score(api, CPF), 404, "SCORE_NOT_FOUND")
    assert holding(engines, CPF) == {}
    assert naming(parked(uri), CPF) == []
    # An event dropped by the tombstone is done with, not failed into a retry (which holds the CPF).
    assert "failed attempt" not in system.log("score.1")[log_start:]
    assert query(engines["score"], "SELECT sequence FROM erased_person") == [(erasure,)]


def test_a_rebuild_after_an_erasure_does_not_bring_the_person_back(api, system, engines):
    """Proves: person's history keeps only the ``person_erased`` event of an
    erased person, so a rebuild from the start over a lost (emptied) replica
    restores everyone else but not the erased person; and a rebuild over the
    replica as it is (its tombstone in place) replays the erasure harmlessly."""
    create_person(api, CPF)
    added(api, CPF, "income", 1000)
    added(api, CPF, "asset", 100000)
    create_person(api, OTHER)
    other_sequence = added(api, OTHER, "income", 5000)
    other_score = fresh_score(api, OTHER, other_sequence)["score"]
    erasure = erase(api, CPF)
    assert_erased_in_score(api, CPF, erasure)
    score_db = {"score": engines["score"]}

    # The replica lost: every table of score's emptied, as in a database created and migrated again.
    with engines["score"].begin() as conn:
        conn.execute(text(f"TRUNCATE {', '.join(t for t in tables_of(conn) if t != 'alembic_version')}"))
    assert_json_error(read_score(api, OTHER), 404, "SCORE_NOT_FOUND")

    with rpc(system) as proxy:
        result = proxy.score.rebuild(0)
    # OTHER's two events and the erasure: nothing else of the erased person is left to replay.
    assert (result["fetched"], result["applied"]) == (3, 3), result
    assert fresh_score(api, OTHER, other_sequence)["score"] == other_score
    assert_erased_in_score(api, CPF, erasure)
    assert holding(score_db, CPF) == {}
    cpf_hash = TEST_HASHER.hash(CPF)
    assert query(engines["score"], "SELECT cpf_hash, sequence FROM erased_person") == [(cpf_hash, erasure)]

    # Again over the replica as it is now, its tombstone in place: everything is applied already.
    with rpc(system) as proxy:
        result = proxy.score.rebuild(0)
    assert (result["fetched"], result["applied"]) == (3, 0), result
    assert_json_error(read_score(api, CPF), 404, "SCORE_NOT_FOUND")
    assert holding(score_db, CPF) == {}
    assert fresh_score(api, OTHER, other_sequence)["score"] == other_score


def test_events_in_flight_or_retried_after_an_erasure_are_dropped(api, system, engines):
    """Proves: score drops an erased person's events that reach it after the
    erasure, however they come: a new event numbered before the erasure, the
    person's own events published again (their inbox rows went with the
    erasure, so only the tombstone stops them), one back from a retry queue,
    and the erasure itself published again. Dropped means taken and done
    with: not applied, and not failed into the retry and dead-letter queues
    (where the CPF would stay)."""
    uri = system.env["AMQP_URI"]
    create_person(api, CPF)
    added(api, CPF, "income", 1000)
    added(api, CPF, "debt", 1000)
    fresh_score(api, CPF, 3)
    # Read before the erasure, which deletes them.
    history = {
        event_type: payload
        for event_type, payload in query(
            engines["person"], "SELECT event_type, payload FROM outbox WHERE aggregate_key = :cpf", cpf=CPF
        )
    }
    erasure = erase(api, CPF)
    assert_erased_in_score(api, CPF, erasure)
    [erased_event] = query(engines["person"], "SELECT payload FROM outbox WHERE event_type = 'person_erased'")[0]

    log_start = len(system.log("score.1"))
    late = PERSON_EVENTS.new("income_added", CPF, erasure - 1, {"item_id": 999, "type": "late", "value": "5000.00"})
    publish(uri, "income_added", late)
    publish(uri, "person_created", history["person_created"])
    publish(uri, "income_added", history["income_added"])
    publish(uri, "person_erased", erased_event)  # the relay publishes at least once
    # Back from a failed attempt: through the first retry queue (its TTL, then the handler's queue).
    retried = PERSON_EVENTS.new("debt_added", CPF, erasure - 1, {"item_id": 998, "value": "50.00"})
    publish(uri, "debt_added", retried, to_queue=retry_queue_name(event_queue("debt_added"), 1))
    sent = [e["event_id"] for e in (late, history["person_created"], history["income_added"], erased_event, retried)]

    def outcomes():
        """What score's log says it did with each event sent: dropped (by the
        tombstone), skipped (by the inbox), applied, or failed (to be retried)."""
        log = system.log("score.1")[log_start:]
        said = {
            "dropped": r"dropped event {id}",
            "skipped": r"skipped duplicate event {id}",
            "applied": r"applied event {id}",
            "failed": r"event {id} \S+ failed attempt",
        }
        return {
            event_id: [verb for verb, line in said.items() if re.search(line.format(id=event_id), log)]
            for event_id in sent
        }

    wait_for(lambda: all(outcomes().values()), 15, "score to take the events sent", on_timeout=outcomes)
    assert_json_error(read_score(api, CPF), 404, "SCORE_NOT_FOUND")
    assert holding({"score": engines["score"]}, CPF) == {}
    assert outcomes() == {event_id: ["dropped"] for event_id in sent}
    assert naming(parked(uri), CPF) == []


def test_a_cpf_created_again_starts_after_its_erasure(api, engines):
    """Proves: a person created again with an erased CPF is numbered after the
    erasure (so score tells its events from the erased person's), and its
    score counts only what was written since, fresh at once."""
    create_person(api, CPF)
    added(api, CPF, "income", 1000)
    erasure = erase(api, CPF)
    assert_erased_in_score(api, CPF, erasure)

    again = requests.post(
        f"{api}/person",
        json={"cpf": CPF, "name": "Bia", "address": "Rua B, 2", "date_of_birth": "1985-01-01"},
        timeout=HTTP_TIMEOUT,
    )
    assert again.status_code == 201, again.text
    assert again.json()["sequence"] == int(again.headers["Event-Sequence"]) == erasure + 1
    assert added(api, CPF, "debt", 100) == erasure + 2

    score = fresh_score(api, CPF, erasure + 2)
    assert score["score"] == -5
    assert score["breakdown"] == {"income": 0, "asset": 0, "debt": -5}
    assert score["items"] == {"income": 0, "asset": 0, "debt": 1}
    assert score["applied_sequence"] == erasure + 2
    # A read naming the erasure is answered by the new person now, not 404.
    assert fresh_score(api, CPF, erasure)["score"] == -5
    person = requests.get(f"{api}/person/{CPF}", timeout=HTTP_TIMEOUT).json()
    assert (person["name"], person["incomes"], len(person["debts"])) == ("Bia", [], 1)
    # The erasure's record stays: it is what the new numbering goes on from.
    assert query(engines["person"], "SELECT sequence FROM erasure") == [(erasure,)]


def test_erase_person_over_rpc_records_who_asked(api, system, engines):
    """Proves: ``person.erase_person`` over RPC (what ``nameko shell`` calls)
    erases as DELETE does, records ``erased_by`` as given ("rpc" when not
    given), and raises PersonNotFound for a person erased already."""
    create_person(api, CPF)
    create_person(api, OTHER)
    added(api, CPF, "asset", 1000)
    fresh_score(api, CPF, 2)

    with rpc(system) as proxy:
        erased = proxy.person.erase_person(format_cpf(CPF), erased_by="ana@dpo")
        by_default = proxy.person.erase_person(OTHER)
        with pytest.raises(PersonNotFound):
            proxy.person.erase_person(CPF, erased_by="ana@dpo")

    assert (erased["erased"], erased["sequence"]) == (True, 3) and erased["erased_at"]
    assert "cpf" not in erased
    assert (by_default["erased"], by_default["sequence"]) == (True, 2)
    audit = query(engines["person"], "SELECT cpf_hash, sequence, erased_by FROM erasure ORDER BY id")
    assert audit == [(TEST_HASHER.hash(CPF), 3, "ana@dpo"), (TEST_HASHER.hash(OTHER), 2, "rpc")]
    assert_json_error(requests.get(f"{api}/person/{CPF}", timeout=HTTP_TIMEOUT), 404, "PERSON_NOT_FOUND")
    assert_erased_in_score(api, CPF, 3)
    assert_erased_in_score(api, OTHER, 2)
    assert holding(engines, CPF) == {} and holding(engines, OTHER) == {}
