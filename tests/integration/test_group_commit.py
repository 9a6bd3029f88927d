"""Person's group commit on the real database and broker: writes made at the
same time share transactions, each still gets its own answer or error, one bad
write fails nobody else, and a request delivered twice writes once."""

import eventlet
import pytest
from nameko.standalone.rpc import ClusterRpcProxy
from sqlalchemy import text

from contracts.errors import PersonNotFound
from person import writes
from person.models import PersonBase, idempotency_keys
from person.service import PersonService
from reliable_events.group_commit import Committer

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


def apply_or_boom(session, batch):
    """person's apply, except that a batch holding an income of type "boom" fails as a whole."""
    if any(getattr(w.payload, "data", {}).get("type") == "boom" for w in batch):
        raise Boom(f"a batch of {len(batch)} with a bad write")
    return writes.apply(session, batch)


class BoomingPersonService(PersonService):
    committer = Committer(PersonBase, apply_or_boom, writes.answer_again, idempotency_keys)


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
