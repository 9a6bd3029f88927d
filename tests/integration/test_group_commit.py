"""Person's group commit on the real database and broker: writes made at the
same time share transactions, each still gets its own answer or error, one bad
write fails nobody else, and a request delivered twice writes once."""

import logging
import random
import time
import uuid

import eventlet
import pytest
from nameko.exceptions import deserialize
from nameko.standalone.rpc import ClusterRpcProxy
from nameko.testing.utils import get_extension
from prometheus_client import REGISTRY
from sqlalchemy import text
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

import reliable_events.green  # noqa: F401  (psycopg2 cooperative: the batch and the probe run at once)
from contracts.errors import PersonNotFound
from contracts.events import PERSON_EVENTS
from contracts.kinds import BY_NAME
from harness.cpf import cpfs
from person import writes
from person.models import PersonBase, idempotency_keys, outbox
from person.service import PersonService
from reliable_events.database import Database, SharedEngine
from reliable_events.group_commit import Done, GroupCommit, Write
from reliable_events.outbox import Outbox
from score.service import ScoreService

pytestmark = pytest.mark.integration

CPF = "52998224725"
UNKNOWN = "11144477735"
PERSON = {"cpf": CPF, "name": "Ana", "address": "Rua A, 1", "date_of_birth": "1990-05-01"}


def scalar(engine, sql):
    with engine.connect() as conn:
        return conn.execute(text(sql)).scalar()


def at_once(config, calls):
    """Run ``calls`` (``rpc -> result``) concurrently, each on a proxy of its own
    (one proxy's reply connection serves one waiting caller at a time); their
    results or errors, in order."""
    proxies = [ClusterRpcProxy(config, timeout=20) for _ in calls]
    started = [proxy.start() for proxy in proxies]  # connected first, so the calls go out together

    def run(pair):
        rpc, call = pair
        try:
            return call(rpc)
        except Exception as exc:  # the caller looks at each outcome
            return exc

    try:
        return list(eventlet.GreenPool(len(calls)).imap(run, zip(started, calls, strict=True)))
    finally:
        for proxy in proxies:
            proxy.stop()


def income(n, cpf=CPF, kind="salary"):
    return lambda rpc: rpc.person.add_income(cpf, {"type": kind, "value": f"{100 + n}.00"})


def test_writes_at_the_same_time_share_transactions(run_container, fresh_config, person_engine):
    run_container(PersonService)
    at_once(fresh_config, [lambda rpc: rpc.person.create_person(PERSON)])

    answers = at_once(fresh_config, [income(n) for n in range(30)])

    assert sorted(a["sequence"] for a in answers) == list(range(2, 32))  # gapless, each its own
    assert scalar(person_engine, "SELECT count(*) FROM income") == 30
    # The outbox rows of the 30 writes were written by fewer transactions than writes.
    transactions = scalar(person_engine, "SELECT count(DISTINCT xmin::text) FROM outbox WHERE sequence > 1")
    assert transactions < 30, transactions


def test_a_write_that_fails_alone_does_not_stop_its_batch(run_container, fresh_config, person_engine):
    run_container(PersonService)
    at_once(fresh_config, [lambda rpc: rpc.person.create_person(PERSON)])

    outcomes = at_once(fresh_config, [income(n, UNKNOWN if n % 3 == 0 else CPF) for n in range(30)])

    failed = [o for o in outcomes if isinstance(o, Exception)]
    assert len(failed) == 10 and all(isinstance(o, PersonNotFound) for o in failed), failed
    assert scalar(person_engine, "SELECT count(*) FROM income") == 20
    assert scalar(person_engine, "SELECT count(*) FROM outbox") == 21  # the person and its 20 incomes
    assert scalar(person_engine, "SELECT count(DISTINCT xmin::text) FROM outbox WHERE sequence > 1") < 20


class Boom(Exception):
    pass


class BoomingWrites(writes.PersonWrites):
    """Person's writes, except that a batch holding an income of type "boom" fails as a whole."""

    def apply(self, session, batch):
        if any(getattr(w.payload, "data", {}).get("type") == "boom" for w in batch):
            raise Boom(f"a batch of {len(batch)} with a bad write")
        return super().apply(session, batch)


class BoomingPersonService(PersonService):
    writer = GroupCommit(PersonBase, BoomingWrites(), Outbox(PersonBase, outbox, PERSON_EVENTS), idempotency_keys)


def test_a_batch_that_fails_is_run_again_write_by_write(run_container, fresh_config, person_engine):
    run_container(BoomingPersonService)
    at_once(fresh_config, [lambda rpc: rpc.person.create_person(PERSON)])

    outcomes = at_once(fresh_config, [income(n, kind="boom" if n == 7 else "salary") for n in range(30)])

    assert isinstance(outcomes[7], Exception) and "Boom" in repr(outcomes[7]), outcomes[7]
    assert all(isinstance(o, dict) for n, o in enumerate(outcomes) if n != 7), outcomes
    assert scalar(person_engine, "SELECT count(*) FROM income") == 29
    # numbered without a gap: the bad write's batch was rolled back, numbers and all
    assert sorted(o["sequence"] for o in outcomes if isinstance(o, dict)) == list(range(2, 31))


def test_a_request_delivered_twice_writes_once(run_container, fresh_config, person_engine):
    run_container(PersonService)
    at_once(fresh_config, [lambda rpc: rpc.person.create_person(PERSON)])
    body = {"type": "salary", "value": "1000.00"}

    first = at_once(fresh_config, [lambda rpc: rpc.person.add_income(CPF, body, request_id="r-1")])[0]
    again = at_once(fresh_config, [lambda rpc: rpc.person.add_income(CPF, body, request_id="r-1")])[0]

    assert again == first
    assert scalar(person_engine, "SELECT count(*) FROM income") == 1
    assert scalar(person_engine, "SELECT count(*) FROM idempotency_keys") == 0  # no row spent on it


def _write(method, *args, **keys):
    """One write of a ``person.write_many`` request, as the gateway sends it."""
    return {"method": method, "args": list(args), "request_id": str(uuid.uuid4()), **keys}


def test_write_many_answers_each_write_its_own_outcome_from_one_transaction(
    run_container, fresh_config, person_engine, caplog
):
    caplog.set_level(logging.INFO, logger="reliable_events.outbox")
    run_container(PersonService)
    at_once(fresh_config, [lambda rpc: rpc.person.create_person(PERSON)])
    incomes = [_write("add_income", CPF, {"type": "salary", "value": f"{100 + n}.00"}) for n in range(5)]
    batch = [
        *incomes,
        _write("add_income", UNKNOWN, {"type": "salary", "value": "1.00"}),
        _write("add_debt", CPF, {"value": "-5"}),
        _write("add_debt", CPF, {"value": "7.00"}, deadline=time.time() - 1),  # its caller gave up
        _write("add_asset", CPF, {"type": "car", "value": "9.00"}, idempotency_key="k-1"),
        _write("remove_person", CPF),
        _write("add_income", CPF),  # its item missing
    ]
    for n, write in enumerate(batch):
        write["call_id_stack"] = [f"gateway.add_item.{n}"]

    unknown_before = _rpc_count("unknown", "client_error") or 0
    outcomes = at_once(fresh_config, [lambda rpc: rpc.person.write_many(batch)])[0]

    answers = [outcome.get("answer") for outcome in outcomes]
    errors = [deserialize(outcome["error"]) if "error" in outcome else None for outcome in outcomes]
    assert [a["value"] for a in answers[:5]] == [f"{100 + n}.00" for n in range(5)], outcomes
    assert [type(e).__name__ for e in errors[5:8]] == ["PersonNotFound", "InvalidInput", "DeadlinePassed"], errors
    assert answers[8]["value"] == "9.00" and errors[8] is None, outcomes
    assert type(errors[9]).__name__ == "InvalidInput" and "remove_person" in str(errors[9]), errors
    assert type(errors[10]).__name__ == "InvalidInput" and "[cpf, item]" in str(errors[10]), errors
    # A method name a caller made up is counted, but not as a label of its own.
    assert _rpc_count("unknown", "client_error") == unknown_before + 1
    assert _rpc_count("remove_person", "client_error") is None
    assert sorted(a["sequence"] for a in answers if a) == list(range(2, 8))  # gapless, each its own
    # The debt past its deadline was never written.
    assert scalar(person_engine, "SELECT count(*) FROM debt") == 0
    assert scalar(person_engine, "SELECT count(*) FROM idempotency_keys") == 1
    # The five incomes shared one transaction (the keyed asset ran alone).
    assert scalar(person_engine, "SELECT count(DISTINCT xmin::text) FROM income") == 1
    # Each write's event is its own: its request id, and the call ids of the
    # request it came from, which its publish (here refused: no queue is bound
    # in this vhost) carries as headers and logs.
    with person_engine.connect() as conn:
        rows = conn.execute(text("SELECT request_id, event_id::text FROM outbox WHERE sequence > 1")).all()
    event_of = dict(rows)
    written = {n: event_of[write["request_id"]] for n, write in enumerate(batch) if answers[n] is not None}
    assert len(written) == 6

    def published():
        records = caplog.records
        return {
            r.event_id: r.call_id_stack
            for r in records
            if r.name == "reliable_events.outbox" and hasattr(r, "event_id")
        }

    deadline = time.monotonic() + 10
    while not set(written.values()) <= set(published()) and time.monotonic() < deadline:
        eventlet.sleep(0.05)
    stacks = published()
    for n, event_id in written.items():
        assert stacks[event_id][0] == f"gateway.add_item.{n}", stacks
        assert stacks[event_id][-1].startswith("person.write_many."), stacks


def _rpc_count(method, outcome):
    return REGISTRY.get_sample_value("rpc_requests_total", {"method": method, "outcome": outcome})


@pytest.mark.parametrize("writes", ["add_income", [["add_income", CPF]], None], ids=["a string", "a list", "null"])
def test_write_many_of_something_else_than_writes_is_invalid_input(run_container, fresh_config, writes):
    run_container(PersonService)
    (error,) = at_once(fresh_config, [lambda rpc: rpc.person.write_many(writes)])
    assert type(error).__name__ == "InvalidInput" and "a list of writes" in str(error), error


def test_write_many_delivered_twice_answers_each_write_its_first_answer(run_container, fresh_config, person_engine):
    run_container(PersonService)
    at_once(fresh_config, [lambda rpc: rpc.person.create_person(PERSON)])
    batch = [_write("add_income", CPF, {"type": "salary", "value": f"{100 + n}.00"}) for n in range(4)]

    first = at_once(fresh_config, [lambda rpc: rpc.person.write_many(batch)])[0]
    again = at_once(fresh_config, [lambda rpc: rpc.person.write_many(batch)])[0]

    assert again == first and all("answer" in outcome for outcome in first), (first, again)
    assert scalar(person_engine, "SELECT count(*) FROM income") == 4


def test_concurrent_batches_over_the_same_people_never_deadlock(run_container, fresh_config, person_engine, caplog):
    """Two batches at once (WRITE_BATCH_CONCURRENCY) holding the same people,
    in every order: each locks the people's rows in CPF order, so neither
    waits on the other in a cycle. A deadlock would not show as a failed
    write: PostgreSQL would end one batch, and the committer would run its
    writes again one by one. So the proof is that it never had to."""
    caplog.set_level(logging.WARNING, logger="reliable_events.group_commit")
    run_container(PersonService)
    people = cpfs(6, start=420_000_000)
    at_once(fresh_config, [lambda rpc, cpf=cpf: rpc.person.create_person({**PERSON, "cpf": cpf}) for cpf in people])
    # Enough other people that PostgreSQL finds each person by its index, in
    # the order it is given them, rather than scanning the table in one order.
    with person_engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO person (cpf, name, address, date_of_birth, event_id, sequence, last_sequence) "
                "SELECT lpad(n::text, 11, '0'), 'x', 'y', '1990-01-01', gen_random_uuid(), 1, 0"
                " FROM generate_series(1, 20000) AS n"
            )
        )
        conn.execute(text("ANALYZE person"))
    rng = random.Random(11)
    for _ in range(6):
        chosen = [rng.choice(people) for _ in range(40)]
        outcomes = at_once(fresh_config, [income(n, cpf) for n, cpf in enumerate(chosen)])
        assert all(isinstance(o, dict) for o in outcomes), [o for o in outcomes if not isinstance(o, dict)][:3]
    with person_engine.connect() as conn:
        sequences = conn.execute(
            text("SELECT aggregate_key, array_agg(sequence ORDER BY sequence) FROM outbox GROUP BY aggregate_key")
        )
        for cpf, numbers in sequences:
            assert numbers == list(range(1, len(numbers) + 1)), cpf  # gapless per person
    assert "running each alone" not in caplog.text, caplog.text


def test_a_batch_locks_its_people_in_cpf_order_whatever_order_its_writes_came(person_engine):
    """What keeps concurrent batches from deadlocking, shown directly: a batch
    whose writes name the higher CPF first still locks the lower one first.
    Here the higher one is held by another transaction: the batch must be
    holding the lower one while it waits."""
    low, high = sorted(cpfs(2, start=430_000_000))
    with person_engine.begin() as conn:
        for cpf in (high, low):  # stored, and so scanned, higher first
            conn.execute(
                text(
                    "INSERT INTO person (cpf, name, address, date_of_birth, event_id, sequence)"
                    " VALUES (:c, 'x', 'y', '1990-01-01', gen_random_uuid(), 1)"
                ),
                {"c": cpf},
            )
    item = {"type": "salary", "value": "1.00"}
    holder = person_engine.connect()
    holding = holder.begin()
    holder.execute(text("SELECT 1 FROM person WHERE cpf = :c FOR UPDATE"), {"c": high})

    def batch():
        with Session(person_engine) as session:
            outcomes = writes.PersonWrites().apply(
                session,
                [Write(writes.NewItem(BY_NAME["income"], cpf, item)) for cpf in (high, low)],
            )
            session.rollback()
            return outcomes

    running = eventlet.spawn(batch)
    try:
        waiting = (
            "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND datname = current_database()"
        )
        for _ in range(100):
            if scalar(person_engine, waiting):
                break
            eventlet.sleep(0.05)
        else:
            raise AssertionError("the batch never waited for the held row")
        with person_engine.connect() as probe:
            with pytest.raises(OperationalError, match="could not obtain lock"):
                probe.execute(text("SELECT 1 FROM person WHERE cpf = :c FOR UPDATE NOWAIT"), {"c": low})
    finally:
        holding.rollback()
        holder.close()
    assert all(isinstance(outcome, Done) for outcome in running.wait())


def test_one_connection_pool_per_database_per_process(run_container):
    """The reads, the group commit and its outbox share the database's one
    pool (reliable_events/database.py), sized for all of them."""
    container = run_container(PersonService)
    shared = [ext for ext in container.extensions if isinstance(ext, SharedEngine)]
    assert len(shared) == 1, shared
    engine = shared[0].get()
    assert get_extension(container, Database).Session.kw["bind"] is engine
    assert get_extension(container, GroupCommit).transactions.sessions.kw["bind"] is engine
    assert get_extension(container, Outbox).engine is engine
    config = container.config
    expected = (
        config["DB_ENGINE_OPTIONS"]["pool_size"] + int(config["WRITE_BATCH_CONCURRENCY"]) + 2  # the outbox's two
    )
    assert engine.pool.size() == expected


def test_score_opts_its_pool_out_of_pre_ping_and_person_keeps_it(run_container):
    """One pool each; score's Database says no pre-ping (a round trip per
    batch applied), person's reads keep DB_ENGINE_OPTIONS' pre-ping."""
    score = run_container(ScoreService)
    person = run_container(PersonService)
    engines = {
        name: [ext for ext in container.extensions if isinstance(ext, SharedEngine)]
        for name, container in (("score", score), ("person", person))
    }
    assert [len(found) for found in engines.values()] == [1, 1], engines
    assert engines["score"][0].get().pool._pre_ping is False
    assert engines["person"][0].get().pool._pre_ping is True
