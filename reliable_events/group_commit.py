"""Group commit: the writes that workers of one process make at the same time
share one transaction, and one commit.

A worker hands its write to :meth:`Committer.submit` and waits. A committer
greenthread takes every write waiting (at most ``WRITE_BATCH_SIZE``) and, in
one transaction, has the service apply them together (``apply(session,
writes)``: a multi-row statement per kind of row instead of one per write),
adds one outbox row per event they announce, and commits once; each worker
then gets its own answer. Under light load a batch is one write and nothing
waits; under load the statements and the commit are shared by the batch, which
is where a reliable write path gets cheaper than a naive one.

What stays exactly as with one transaction per write:

- A write's rows and its outbox row commit together or not at all; nothing is
  announced for a write that did not commit (the outbox relay publishes after
  the commit, from memory, as before).
- A write that fails alone (an unknown person, an existing CPF) is answered
  with its error and does not stop the others: ``apply`` returns it as that
  write's outcome. A batch that fails as a whole (a deadlock, a constraint, a
  bug) is rolled back and each of its writes run again alone, so one bad
  write never fails another.
- **A redelivered request writes nothing.** A write may carry a request id (the
  caller's, one per request): it is stored on its outbox row under a unique
  index. The broker delivers a request again when the reply to the first
  delivery was lost; the second insert of that id fails on the index, and
  the write is answered with the first's answer (``answer_again``) instead of
  writing twice. No row is spent on this protection: the outbox row is written
  anyway.
- A write with a client's ``Idempotency-Key`` runs alone, with its key claimed
  and its answer stored in its transaction (:mod:`reliable_events.idempotency`):
  the same key again gets that answer, another request with it ``KeyReused``.
  So does a write whose payload says ``alone = True`` (an erasure: rare, and
  it locks what a batch would lock in another order).

At most ``WRITE_BATCH_CONCURRENCY`` transactions run at once; the rows they
lock (a person's, to number its events) are locked in key order, so two
batches, of this process or another, never deadlock on each other.
"""

import collections
import logging
import threading
from dataclasses import dataclass

from eventlet.event import Event
from nameko.extensions import DependencyProvider
from nameko_sqlalchemy.database import DB_ENGINE_OPTIONS_KEY, DB_URIS_KEY
from psycopg2.errorcodes import UNIQUE_VIOLATION
from sqlalchemy import create_engine, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import sessionmaker

from reliable_events.idempotency import claim, store
from reliable_events.outbox import Outbox

_log = logging.getLogger(__name__)

REQUEST_KEY_INDEX = "ux_outbox_request_key"


@dataclass
class Write:
    """One write as a worker submits it: ``payload`` is the service's (what to write)."""

    payload: object
    worker_ctx: object = None
    request_id: str | None = None  # one per request: a redelivery repeats it
    # A client's Idempotency-Key and the hash of its request: the write then
    # runs alone, with the key claimed and its answer stored in its transaction.
    idempotency_key: str | None = None
    request_hash: str | None = None


@dataclass
class Done:
    """A write's outcome: its answer, and the event announcing it, ``(event_type, key, sequence, data)``."""

    answer: dict
    event: tuple | None = None


class Transactions:
    """The one way a write happens: claim the client's idempotency key (a write
    with one is alone), apply the writes, add their outbox rows, store the key's
    answer, commit. Used by :class:`Committer` for its batches, and alone (one
    write per transaction) where there is no container, as in a test."""

    def __init__(self, sessions, outbox: Outbox, apply, answer_again, idempotency):
        self.sessions = sessions
        self.outbox = outbox
        self.apply = apply
        self.answer_again = answer_again
        self.idempotency = idempotency

    def submit(self, write: Write):
        """Write alone; its answer, or raise its error."""
        return _outcome(self.alone(write))

    def alone(self, write):
        try:
            return self.transaction([write])[0]
        except Exception as exc:
            return self.redelivered(write, exc)

    def transaction(self, writes) -> list:
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
            outcomes = self.apply(session, writes)
            if key is not None:
                if isinstance(outcomes[0], BaseException):
                    raise outcomes[0]  # the key's claim goes with the rest: a retry runs again
                event = outcomes[0].event
                store(session, self.idempotency, key, outcomes[0].answer, event[1] if event else None)
            events = [
                (write.worker_ctx, write.request_id, *outcome.event)
                for write, outcome in zip(writes, outcomes, strict=True)
                if isinstance(outcome, Done) and outcome.event is not None
            ]
            if events:
                self.outbox.add_many(session, events)
            session.commit()
        except BaseException:
            session.rollback()
            raise
        finally:
            session.close()
        return [outcome.answer if isinstance(outcome, Done) else outcome for outcome in outcomes]

    def redelivered(self, write, exc):
        """The outcome of a write whose transaction failed alone: the first answer
        if it failed on its request id (a redelivery), else the error itself."""
        if not (
            write.request_id is not None
            and isinstance(exc, IntegrityError)
            and getattr(exc.orig, "pgcode", None) == UNIQUE_VIOLATION
            and REQUEST_KEY_INDEX in str(exc.orig)
        ):
            return exc
        table = self.outbox.table
        with self.sessions() as session:
            row = session.execute(select(table).where(table.c.request_key == write.request_id)).one()
            answer = self.answer_again(session, row)
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


def _outcome(outcome):
    if isinstance(outcome, BaseException):
        raise outcome
    return outcome


class Committer(DependencyProvider):
    """Gives workers a :class:`Submitter`: ``submit(payload, ...)`` returns the
    write's answer or raises its error.

    ``apply(session, writes)`` returns one outcome per write, in order: a
    :class:`Done`, or an exception instance for that write alone.
    ``answer_again(session, outbox_row)`` rebuilds the answer of a write from
    its outbox row (for a redelivered request). ``idempotency`` is the table
    of clients' keys (:mod:`reliable_events.idempotency`).
    """

    def __init__(self, declarative_base, apply, answer_again, idempotency):
        self.declarative_base = declarative_base
        self.apply = apply
        self.answer_again = answer_again
        self.idempotency = idempotency

    def setup(self):
        config = self.container.config
        self.batch_size = int(config["WRITE_BATCH_SIZE"])
        self.concurrency = int(config["WRITE_BATCH_CONCURRENCY"])
        key = f"{self.container.service_name}:{self.declarative_base.__name__}"
        options = {**(config.get(DB_ENGINE_OPTIONS_KEY) or {}), "pool_pre_ping": False}
        options["pool_size"] = max(int(options.get("pool_size", 5)), self.concurrency + 1)
        # No pre-ping: a connection PostgreSQL dropped fails its batch once;
        # the batch's writes are then run alone, on fresh connections.
        self.engine = create_engine(config[DB_URIS_KEY][key], **options)
        outbox = next(d for d in self.container.dependencies if isinstance(d, Outbox))
        sessions = sessionmaker(bind=self.engine, expire_on_commit=False)
        self.transactions = Transactions(sessions, outbox, self.apply, self.answer_again, self.idempotency)
        self._waiting = collections.deque()
        self._running = 0
        self._wake = threading.Event()
        self._stopping = False

    def start(self):
        self._thread = self.container.spawn_managed_thread(self._dispatch)

    def stop(self):
        # Workers have ended (the container waits for them first), so nothing
        # more is submitted; what was is committed before the engine goes.
        self._stopping = True
        self._wake.set()
        self._thread.wait()
        self.engine.dispose()

    def kill(self):
        self._thread.kill()

    def get_dependency(self, worker_ctx):
        return Submitter(self, worker_ctx)

    def submit(self, write: Write):
        """Wait for ``write`` to be committed in a batch; its answer, or raise its error."""
        if write.idempotency_key is not None or getattr(write.payload, "alone", False):
            return _outcome(self.transactions.alone(write))
        done = Event()
        self._waiting.append((write, done))
        self._wake.set()
        return _outcome(done.wait())

    def _dispatch(self):
        while True:
            self._wake.wait()
            self._wake.clear()
            while self._running < self.concurrency and self._waiting:
                take = min(self.batch_size, len(self._waiting))
                batch = [self._waiting.popleft() for _ in range(take)]
                self._running += 1
                self.container.spawn_managed_thread(lambda batch=batch: self._run(batch))
            if self._stopping and not (self._waiting or self._running):
                return

    def _run(self, batch):
        writes = [write for write, _ in batch]
        try:
            try:
                outcomes = self.transactions.transaction(writes)
            except Exception as exc:
                if len(batch) == 1:
                    outcomes = [self.transactions.redelivered(writes[0], exc)]
                else:
                    _log.warning("a batch of %d writes failed (%r); running each alone", len(batch), exc)
                    outcomes = [self.transactions.alone(write) for write in writes]
            for (_, done), outcome in zip(batch, outcomes, strict=True):
                done.send(outcome)
        finally:
            self._running -= 1
            self._wake.set()


class Submitter:
    """What a worker sees: submit its write, get its answer."""

    def __init__(self, committer, worker_ctx):
        self._committer = committer
        self._worker_ctx = worker_ctx

    def submit(self, payload, request_id=None, idempotency_key=None, request_hash=None):
        """The write's answer, once committed with its outbox row; or its error."""
        write = Write(payload, self._worker_ctx, request_id, idempotency_key, request_hash)
        return self._committer.submit(write)
