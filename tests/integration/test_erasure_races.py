"""The advisory locks that order an erasure against the same person's other
writes, made to race deterministically on the real PostgreSQL (no broker).

Each test holds the erasure's transaction open just before its commit (a
session whose ``commit`` waits for the test's word), runs the competing write
in another greenthread, sees it wait on the person's advisory lock, lets the
erasure commit, and checks what the competing write did once it could go on:

- score: a batch of the person's older item event, applied while the erasure
  is being applied, must wait, then drop the event (its sequence is not above
  the tombstone): nothing of the person comes back; and two batches of one
  person must take turns at its watermark (score's inbox);
- person: a creation of the CPF while its erasure is in progress must wait,
  then number the new person after the erasure (erasure's sequence + 1).

Both write paths are the services' own (``worker_factory`` workers, the real
``Transactions`` and inbox), psycopg2 made cooperative by the services'
modules (``reliable_events.green``), so a greenthread blocked in PostgreSQL
lets the test go on.
"""

import logging

import pytest
from nameko.testing.services import worker_factory
from nameko_sqlalchemy.database import DatabaseWrapper, Session
from sqlalchemy import text
from sqlalchemy.orm import sessionmaker

from contracts.events import PERSON_EVENTS
from harness.races import Gate, race
from harness.workers import TEST_HASHER, person_worker
from score.service import ScoreService

pytestmark = pytest.mark.integration

CPF = "52998224725"
CPF_HASH = TEST_HASHER.hash(CPF)
OTHER_CPF = "11144477735"
PERSON = {"cpf": CPF, "name": "Ana", "address": "Rua A, 1", "date_of_birth": "1990-05-01"}


def scalar(engine, sql, **params):
    with engine.connect() as conn:
        return conn.execute(text(sql), params).scalar_one()


# --- score ---------------------------------------------------------------------------


def parsed(event_type, key, sequence, data):
    """An event as a handler receives it: built by the producer, parsed by the entrypoint."""
    return PERSON_EVENTS.parse(PERSON_EVENTS.new(event_type, key, sequence, data))


def score_worker(db):
    return worker_factory(ScoreService, db=db, hasher=TEST_HASHER, config={"READ_YOUR_WRITES_TIMEOUT": 2})


def gated_score_worker(score_engine, gate):
    """A score worker whose transactions wait at ``gate`` to commit."""
    return score_worker(DatabaseWrapper(sessionmaker(bind=score_engine, class_=gate.session_class(Session))))


def person_created():
    return parsed("person_created", CPF, 1, {"name": "Ana", "address": "x", "date_of_birth": "1990-05-01"})


def cpf_rows(engine) -> dict:
    """Rows of score's tables that name the CPF (by the CPF, or by its hash;
    ``known_person`` holds the inbox's watermark too)."""
    return {
        "known_person": scalar(
            engine, "SELECT count(*) FROM known_person WHERE cpf = :c OR cpf_hash = :h", c=CPF, h=CPF_HASH
        ),
        "scored_item": scalar(engine, "SELECT count(*) FROM scored_item WHERE cpf = :c", c=CPF),
    }


@pytest.mark.parametrize("with_other", [False, True], ids=["older-event-alone", "older-event-with-another-person's"])
def test_score_item_batch_waits_for_an_erasure_in_progress_then_drops_the_event(
    db_wrappers, score_engine, caplog, with_other
):
    live = score_worker(db_wrappers(score_engine))
    live.on_person_created([person_created()])
    live.on_income_added([parsed("income_added", CPF, 2, {"item_id": 1, "type": "salary", "value": "1000.00"})])
    assert cpf_rows(score_engine) == {"known_person": 1, "scored_item": 1}

    # Person erased the CPF after its third event; that event (an older one
    # than the erasure) is still in flight when the erasure gets to score,
    # alone in its batch or with someone else's event.
    older = parsed("income_added", CPF, 3, {"item_id": 2, "type": "bonus", "value": "500.00"})
    other = parsed("income_added", OTHER_CPF, 1, {"item_id": 3, "type": "salary", "value": "700.00"})
    batch = [older, other] if with_other else [older]
    erasure = parsed("person_erased", CPF_HASH, 4, {})
    gate = Gate()
    erasing = gated_score_worker(score_engine, gate)
    applying = score_worker(db_wrappers(score_engine))

    with caplog.at_level(logging.INFO, logger="score.replica"):
        erased, applied, waited, ended_early = race(
            gate,
            lambda: erasing.on_person_erased([erasure]),
            lambda: applying.on_income_added(batch),
            score_engine,
        )

    assert [e["event_id"] for e in erased] == [erasure["event_id"]]
    # Nothing of the person came back: the batch waited, then saw the tombstone.
    assert cpf_rows(score_engine) == {"known_person": 0, "scored_item": 0}, (
        f"the person came back after its erasure; the batch waited on {waited}, ended before the commit: {ended_early}"
    )
    assert [e["event_id"] for e in applied] == [e["event_id"] for e in batch[1:]], applied
    assert scalar(score_engine, "SELECT sequence FROM erased_person WHERE cpf_hash = :h", h=CPF_HASH) == 4
    assert f"dropped event {older['event_id']} income_added 3 of a person erased at sequence 4" in caplog.text
    others = scalar(score_engine, "SELECT count(*) FROM scored_item WHERE cpf = :c", c=OTHER_CPF)
    assert others == (1 if with_other else 0)
    # ... and what it waited on was the person's advisory lock, not a row it met by chance.
    assert not ended_early and waited == ["advisory"], waited


@pytest.mark.parametrize("second", ["the-same-event", "the-next-event"])
def test_two_batches_of_one_person_take_turns_at_its_watermark(db_wrappers, score_engine, caplog, second):
    """Score's inbox is a watermark per person: a batch reads it, then writes
    it moved. Two batches of one person at once (the live handler and a
    rebuild, or two event types) take turns on the person's advisory lock, so
    the second reads what the first wrote: the same event is then a duplicate,
    and the next one moves the watermark on from the first's, not from the
    value both would have read."""
    live = score_worker(db_wrappers(score_engine))
    live.on_person_created([person_created()])
    income = parsed("income_added", CPF, 2, {"item_id": 1, "type": "salary", "value": "1000.00"})
    asset = parsed("asset_added", CPF, 3, {"item_id": 1, "type": "car", "value": "9000.00"})
    other = income if second == "the-same-event" else asset
    gate = Gate()
    first = gated_score_worker(score_engine, gate)
    then = score_worker(db_wrappers(score_engine))

    with caplog.at_level(logging.INFO, logger="reliable_events.inbox"):
        applied_first, applied_then, waited, ended_early = race(
            gate,
            lambda: first.on_income_added([income]),
            lambda: getattr(then, f"on_{other['event_type']}")([dict(other)]),
            score_engine,
        )

    assert [e["event_id"] for e in applied_first] == [income["event_id"]]
    if second == "the-same-event":
        assert applied_then == [] and f"skipped duplicate event {income['event_id']}" in caplog.text
        assert scalar(score_engine, "SELECT count(*) FROM scored_item WHERE cpf = :c", c=CPF) == 1
    else:
        assert [e["event_id"] for e in applied_then] == [other["event_id"]]
    through = 2 if second == "the-same-event" else 3
    with score_engine.connect() as conn:
        row = conn.execute(text("SELECT applied_through, applied_above FROM known_person WHERE cpf = :c"), {"c": CPF})
        assert tuple(row.one()) == (through, [])
    assert not ended_early and waited == ["advisory"], waited


def test_a_read_that_registers_while_a_batch_of_its_person_commits_sees_that_batch(db_wrappers, score_engine):
    """A read short of its sequence registers with score (``waiting_read``),
    and score announces only the people a read waits for. The registration
    takes the person's lock, so one racing a batch of that person waits for
    it and then reads what it applied; without the lock it would read before
    the commit, and the batch, which had found no read waiting, would announce
    nothing: the read would wait out its bound."""
    live = score_worker(db_wrappers(score_engine))
    live.on_person_created([person_created()])
    income = parsed("income_added", CPF, 2, {"item_id": 1, "type": "salary", "value": "1000.00"})
    gate = Gate()
    applying = gated_score_worker(score_engine, gate)
    reading = score_worker(db_wrappers(score_engine))

    applied, read, waited, ended_early = race(
        gate,
        lambda: applying.on_income_added([income]),
        lambda: reading.get_score(CPF, min_sequence=2),
        score_engine,
    )

    assert [e["event_id"] for e in applied] == [income["event_id"]]
    assert read["applied_sequence"] == 2, (read, waited, ended_early)
    assert not ended_early and waited == ["advisory"], waited


# --- person --------------------------------------------------------------------------


def gated_person_worker(engine, db_wrappers, gate):
    """``harness.workers.person_worker`` with sessions that wait at ``gate`` to commit."""
    return person_worker(engine, db_wrappers, session_class=gate.session_class(Session))


def test_person_creation_waits_for_an_erasure_in_progress_and_numbers_after_it(db_wrappers, person_engine):
    live = person_worker(person_engine, db_wrappers)
    assert live.create_person(PERSON)["sequence"] == 1
    assert live.add_income(CPF, {"type": "salary", "value": "1000.00"})["sequence"] == 2

    gate = Gate()
    erasing = gated_person_worker(person_engine, db_wrappers, gate)
    creating = person_worker(person_engine, db_wrappers)
    erased, created, waited, ended_early = race(
        gate,
        lambda: erasing.erase_person(CPF, erased_by="test"),
        lambda: creating.create_person(PERSON),
        person_engine,
    )

    assert erased["sequence"] == 3, erased
    # The new person goes on after the erasure, so score tells its events from the erased one's.
    assert created["sequence"] == erased["sequence"] + 1, (
        f"erased at {erased['sequence']}, created again at {created['sequence']}; the creation waited on {waited},"
        f" ended before the erasure's commit: {ended_early}"
    )
    with person_engine.connect() as conn:
        assert conn.execute(text("SELECT last_sequence FROM person WHERE cpf = :c"), {"c": CPF}).scalar_one() == 4
        events = conn.execute(text("SELECT event_type, aggregate_key, sequence FROM outbox ORDER BY position")).all()
    assert [tuple(e) for e in events] == [("person_erased", CPF_HASH, 3), ("person_created", CPF, 4)], events
    # ... because it waited on the CPF's advisory lock until the erasure committed.
    assert not ended_early and waited == ["advisory"], waited
