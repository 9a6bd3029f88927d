"""Group commit: the writes that workers of one process make at the same time
share one transaction, and one commit.

A worker calls ``submit`` on its :class:`Writer` and waits. The writes waiting
(at most ``WRITE_BATCH_SIZE``) go in one batch
(:class:`~reliable_events.batches.Batches`); in one transaction, the service's
:class:`Writes` applies them together (a multi-row statement per kind of row
instead of one per write), the outbox adds one row per event they announce
(:meth:`~reliable_events.outbox.Outbox.add_all`), and it commits once; each
worker then gets its own answer. Under light load a batch is one write and
nothing waits; under load the statements and the commit are shared.

What stays exactly as with one transaction per write:

- A write's rows and its outbox row commit together or not at all; nothing is
  announced for a write that did not commit (the relay publishes after the
  commit).
- A write that fails alone (an unknown person, an existing CPF) is answered
  with its error and does not stop the others: ``apply`` returns it as that
  write's outcome. A batch that fails as a whole (a deadlock, a constraint, a
  bug) is rolled back and each of its writes run again alone, so one bad
  write never fails another.
- **A redelivered request writes nothing.** A write may carry a request id (the
  gateway's, one per HTTP request): it is stored on its outbox row, column
  ``request_id``, under a unique index. The broker delivers a request again
  when the reply to the first delivery was lost; the second insert of that id
  fails on the index, and the write is answered with the first's answer
  (:meth:`Writes.answer_again`) instead of writing twice. No row is spent on
  this protection: the outbox row is written anyway.
- A write with a client's ``Idempotency-Key`` runs alone, with its key claimed
  and its answer stored in its transaction (:mod:`reliable_events.idempotency`):
  the same key again gets that answer, another request with it ``KeyReused``.
  So does a write the service says runs alone (:meth:`Writes.runs_alone`: an
  erasure, rare, which locks what a batch would lock in another order).

At most ``WRITE_BATCH_CONCURRENCY`` transactions run at once; the rows they
lock (a person's, to number its events) are locked in key order, so two
batches, of this process or another, never deadlock on each other.
"""

import logging
from dataclasses import dataclass, replace
from functools import partial
from typing import Protocol

from eventlet.event import Event
from nameko.extensions import DependencyProvider
from psycopg2.errorcodes import UNIQUE_VIOLATION
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import sessionmaker

from reliable_events.batches import Batches
from reliable_events.database import SharedEngine
from reliable_events.idempotency import claim, store
from reliable_events.outbox import Outbox, OutboxWriter, PendingEvent

_log = logging.getLogger(__name__)


@dataclass
class Write:
    """One write as a worker submits it: ``payload`` is the service's (what to write)."""

    payload: object
    call_id_stack: list | None = None  # the writer's Nameko call ids, for its event's headers
    request_id: str | None = None  # one per request: a redelivery repeats it
    # A client's Idempotency-Key and the hash of its request: the write then
    # runs alone, with the key claimed and its answer stored in its transaction.
    idempotency_key: str | None = None
    request_hash: str | None = None


@dataclass
class Done:
    """A write's outcome: its answer, and the event announcing it."""

    answer: dict
    event: PendingEvent | None = None


class Writes(Protocol):
    """What a service does with its writes (person: ``person/writes.py``)."""

    def apply(self, session, writes: list[Write]) -> list:
        """Write them all in ``session``; one outcome per write, in order: a
        :class:`Done`, or an exception instance for that write alone."""

    def answer_again(self, session, outbox_row) -> dict:
        """The answer a write gave, rebuilt from its outbox row (for the same
        request delivered again)."""

    def runs_alone(self, payload) -> bool:
        """Whether this write needs a transaction of its own."""


class Transactions:
    """The one way a write happens: claim the client's idempotency key, apply
    the writes, add their events to the outbox, store the key's answer,
    commit. Used by :class:`GroupCommit` for its batches, and alone (one write
    per transaction) where there is no container, as in a test."""

    def __init__(self, sessions, outbox: Outbox, writes: Writes, idempotency):
        self.sessions = sessions
        self.outbox = outbox
        self.writes = writes
        self.idempotency = idempotency
        self._request_id_index = f"ux_{outbox.table.name}_request_id"

    def commit(self, write: Write):
        """Write alone: its outcome (an answer, or its error)."""
        try:
            return self.transaction([write])[0]
        except Exception as exc:
            return self.redelivered(write, exc)

    def commit_all(self, writes: list[Write]) -> list:
        """Each write alone, one after the other: their outcomes."""
        return [self.commit(write) for write in writes]

    def transaction(self, writes: list[Write]) -> list:
        """One transaction for ``writes``; their outcomes (an answer, or an error), in order."""
        session = self.sessions()
        key = writes[0].idempotency_key
        try:
            if key is not None:
                earlier = claim(session, self.idempotency, key, writes[0].request_hash)
                if earlier is not None:
                    _log.info("answered with the stored answer of idempotency key %s; nothing written", key)
                    session.rollback()
                    return [earlier]
            outcomes = self.writes.apply(session, writes)
            if key is not None:
                if isinstance(outcomes[0], BaseException):
                    raise outcomes[0]  # the key's claim goes with the rest: a retry runs again
                event = outcomes[0].event
                store(session, self.idempotency, key, outcomes[0].answer, event.key if event else None)
            events = [
                replace(outcome.event, request_id=write.request_id, call_id_stack=write.call_id_stack)
                for write, outcome in zip(writes, outcomes, strict=True)
                if isinstance(outcome, Done) and outcome.event is not None
            ]
            if events:
                self.outbox.add_all(session, events)
            session.commit()
        except BaseException:
            session.rollback()
            raise
        finally:
            session.close()
        return [outcome.answer if isinstance(outcome, Done) else outcome for outcome in outcomes]

    def redelivered(self, write: Write, exc: Exception):
        """The outcome of a write whose transaction failed alone: the first answer
        if it failed on its request id (a redelivery), else the error itself.
        It never raises: it runs in managed threads too (a batch's), whose
        exception would end the service."""
        if not (
            write.request_id is not None
            and isinstance(exc, IntegrityError)
            and getattr(exc.orig, "pgcode", None) == UNIQUE_VIOLATION
            and exc.orig.diag.constraint_name == self._request_id_index
        ):
            return exc
        table = self.outbox.table
        try:
            with self.sessions() as session:
                row = session.execute(select(table).where(table.c.request_id == write.request_id)).one()
                answer = self.writes.answer_again(session, row)
        except Exception as lookup_error:  # the database went away meanwhile: this write's error
            return lookup_error
        _log.info(
            "request %s was written before, as %s %s of %s (a redelivery); answered with its first answer, "
            "nothing written",
            write.request_id,
            row.event_type,
            row.sequence,
            row.aggregate_key,
            extra={"request_id": write.request_id, "event_id": str(row.event_id), "sequence": row.sequence},
        )
        return answer


class GroupCommit(DependencyProvider):
    """Gives workers a :class:`Writer`. ``writes`` is the service's
    :class:`Writes`; ``outbox`` its :class:`~reliable_events.outbox.Outbox`,
    held here as a sub-extension (Nameko sets it up, starts and stops it;
    this drains it). Both use the database's one pool
    (:class:`~reliable_events.database.SharedEngine`).
    ``idempotency`` is the table of clients' keys
    (:mod:`reliable_events.idempotency`)."""

    def __init__(self, declarative_base, writes: Writes, outbox: Outbox, idempotency):
        self.declarative_base = declarative_base
        self.writes = writes
        self.outbox = outbox
        self.idempotency = idempotency
        self.shared = SharedEngine(declarative_base)

    def setup(self):
        config = self.container.config
        concurrency = int(config["WRITE_BATCH_CONCURRENCY"])
        self.shared.reserve(concurrency)  # a connection per running batch
        self.batches = Batches(self._launch, int(config["WRITE_BATCH_SIZE"]), concurrency)

    def start(self):
        # A connection PostgreSQL dropped (a restart) fails its batch once;
        # the batch's writes are then run alone, on fresh connections.
        sessions = sessionmaker(bind=self.shared.get(), expire_on_commit=False)
        self.transactions = Transactions(sessions, self.outbox, self.writes, self.idempotency)
        self._outbox_view = OutboxWriter(self.outbox)  # one for every worker: it holds no state of theirs
        self.batches.start(self.container.spawn_managed_thread)

    def stop(self):
        # Workers have ended (the container waits for them first), so nothing
        # more is submitted; what was is committed, then published, before
        # the pool goes.
        self.batches.stop()
        self.outbox.drain()

    def kill(self):
        self.batches.kill()

    def get_dependency(self, worker_ctx):
        return Writer(self, worker_ctx.call_id_stack, self._outbox_view)

    def commit(self, write: Write):
        """Wait for ``write`` to be committed in a batch: its outcome (an answer, or its error)."""
        if self._runs_alone(write):
            return self.transactions.commit(write)
        return self._joined(write).wait()

    def commit_all(self, writes: list[Write]) -> list:
        """Wait for every one of ``writes`` to be committed: their outcomes, in
        order. They join the waiting batch together (one transaction for all
        when they fit), while those that run alone run at once, side by side."""
        waiting = [
            self.container.spawn_managed_thread(partial(self.transactions.commit, write))
            if self._runs_alone(write)
            else self._joined(write)
            for write in writes
        ]
        return [done.wait() for done in waiting]

    def _runs_alone(self, write: Write) -> bool:
        # A key's claim and stored answer are its transaction's alone.
        return write.idempotency_key is not None or self.writes.runs_alone(write.payload)

    def _joined(self, write: Write) -> Event:
        """``write`` added to the waiting batch: sent its outcome when committed."""
        done = Event()
        self.batches.add((write, done))
        return done

    def _launch(self, batch: list) -> None:
        self.container.spawn_managed_thread(lambda: self._run(batch))

    def _run(self, batch: list) -> None:
        writes = [write for write, _ in batch]
        try:
            try:
                outcomes = self.transactions.transaction(writes)
            except Exception as exc:
                if len(batch) == 1:
                    outcomes = [self.transactions.redelivered(writes[0], exc)]
                else:
                    _log.warning("a batch of %d writes failed (%r); running each alone", len(batch), exc)
                    outcomes = [self.transactions.commit(write) for write in writes]
            for (_, done), outcome in zip(batch, outcomes, strict=True):
                done.send(outcome)
        finally:
            self.batches.finished()


class Writer:
    """What a worker sees: submit its write, get its answer; and the outbox's
    sweep and backlog (``outbox``), for the service's timer and health."""

    def __init__(self, committer, call_id_stack=None, outbox: OutboxWriter | None = None):
        self._committer = committer  # a GroupCommit, or Transactions alone
        self._call_id_stack = call_id_stack
        self.outbox = outbox

    def submit(self, payload, request_id=None, idempotency_key=None, request_hash=None):
        """The write's answer, once committed with its outbox row; or raise its error."""
        write = Write(payload, self._call_id_stack, request_id, idempotency_key, request_hash)
        outcome = self._committer.commit(write)
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome

    def submit_all(self, writes: list[Write]) -> list:
        """Each write's outcome, once all are committed: its answer or its
        error, in order (a batch of requests that came in one message)."""
        return self._committer.commit_all(writes)
