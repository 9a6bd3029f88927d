"""Transactional outbox: an event is written with its business row, then relayed.

Guarantees:

- An event row is inserted in the caller's transaction (:meth:`OutboxWriter.add`),
  so it exists if and only if the business change committed.
- The relay publishes a row with publisher confirms and ``mandatory`` set, and
  marks it sent only after the broker confirmed it was routed to a queue.
  A failed or unroutable publish leaves the row pending; the sweep retries it.
  Publishing is therefore at least once: a crash between the confirm and the
  mark re-sends the row, and consumers dedupe on ``event_id`` (:mod:`.inbox`).
- Two paths publish. The fast path publishes the rows a process's own workers
  just committed, from memory, the moment they commit, then marks them (only
  if still unmarked); no other process knows those rows yet. Its marks are
  written together, at most ``OUTBOX_MARK_DELAY`` seconds after the confirm,
  in a transaction that does not wait for its WAL flush: a mark records what
  the broker already holds, so losing one (a crash) costs a second publish
  that consumers dedupe, never an event. (A transaction per event just to
  mark it was the fast path's largest cost.) The sweep takes
  rows left pending for ``OUTBOX_SWEEP_GRACE`` seconds (broker down, publish
  failed, process killed before publishing) with ``FOR UPDATE SKIP LOCKED``,
  so sweeps in several processes never share a row. The grace keeps the sweep
  off the fast path's rows: under normal operation no row is published twice.
- Sent rows are kept, ordered by ``position``: they are the event history.
  Only an aggregate's erasure deletes its rows (``person/writes.py``); the
  relay may still publish one it holds in memory, and consumers drop it.

Order across aggregates is not guaranteed (two relays, one queue per event
type); each event carries a per-aggregate ``sequence`` for consumers that care.
"""

import collections
import logging
import os
import signal
import threading
import time
from weakref import WeakKeyDictionary

import sqlalchemy.event
from nameko.constants import AMQP_URI_CONFIG_KEY, CALL_ID_STACK_CONTEXT_KEY, HEADER_PREFIX
from nameko.extensions import DependencyProvider
from nameko.standalone.events import get_event_exchange
from nameko.timer import Timer
from sqlalchemy import Table, create_engine, func, select, text, update

from reliable_events.confirms import BatchPublisher
from reliable_events.instruments import NO_METRICS, EventMetrics, event_fields

_log = logging.getLogger(__name__)

# A mark is safe to lose (see the module's docstring): its commit need not
# wait for the disk.
_NO_FLUSH_WAIT = text("SET LOCAL synchronous_commit TO OFF")
_WRITTEN = "outbox_written"  # session.info: (envelope, headers) its transaction wrote
# The header Nameko's own publishers carry the call ids in.
CALL_ID_STACK_HEADER = f"{HEADER_PREFIX}.{CALL_ID_STACK_CONTEXT_KEY}"


class OutboxRelay(Timer):
    """A ``@timer`` whose interval comes from ``OUTBOX_SWEEP_INTERVAL`` in config."""

    def __init__(self, **kwargs):
        super().__init__(interval=None, **kwargs)  # set from config in setup

    def setup(self):
        self.interval = float(self.container.config["OUTBOX_SWEEP_INTERVAL"])
        super().setup()


relay_timer = OutboxRelay.decorator


class OutboxWriter:
    """What a worker sees: add an event to the transaction it is writing."""

    def __init__(self, outbox: "Outbox", worker_ctx):
        self._outbox = outbox
        self._worker_ctx = worker_ctx

    def add(self, session, event_type: str, key: str, sequence: int, data: dict) -> dict:
        """Insert the event in ``session``'s transaction; return the envelope.

        Nothing is published here. The relay is woken as soon as the transaction
        commits (a rollback leaves no row and wakes nothing).
        """
        return self._outbox.add_many(session, [(self._worker_ctx, None, event_type, key, sequence, data)])[0]

    def relay_pending(self, min_age: float | None = None) -> int:
        """Publish every row pending for ``min_age`` seconds (default
        ``OUTBOX_SWEEP_GRACE``); the sweep calls this. Returns rows sent."""
        return self._outbox.relay_pending(min_age)

    def backlog(self) -> dict:
        """Pending rows and the age in seconds of the oldest one."""
        return self._outbox.backlog()


class Outbox(DependencyProvider):
    """Dependency that writes outbox rows and relays them to ``<service>.events``.

    ``declarative_base`` names the database (as nameko-sqlalchemy's
    ``DB_URIS["<service>:<Base>"]``) holding ``table``; ``source`` says how
    the envelope names its aggregate and which exchange the events go to; the relay keeps its own
    small connection pool so publishing never borrows a worker's session.

    Two paths publish (see the module's docstring): a relay greenthread woken
    by every commit that wrote an event, which publishes what committed (under
    load the rows of many workers go in one batch), and the service's
    ``@relay_timer`` sweep for what was left pending.
    Events go to the exchange Nameko's ``EventDispatcher`` uses (declared on
    first publish, so the service starts while the broker is down).
    """

    def __init__(self, declarative_base, table: Table, source, metrics: EventMetrics = NO_METRICS):
        self.declarative_base = declarative_base
        self.table = table
        self.source = source
        self.metrics = metrics
        self._insert = table.insert()
        self._writers = WeakKeyDictionary()

    def setup(self):
        config = self.container.config
        exchange = get_event_exchange(self.source.service, config)
        self.publisher = BatchPublisher(config[AMQP_URI_CONFIG_KEY], exchange)
        key = f"{self.container.service_name}:{self.declarative_base.__name__}"
        # No pre-ping: it would cost a round trip before every publish. After a
        # database restart the first relay attempt fails (logged), the pool
        # drops its stale connections and the next attempt or sweep succeeds.
        self.engine = create_engine(config["DB_URIS"][key], pool_size=3)
        self.batch_size = int(config["OUTBOX_BATCH_SIZE"])
        self.sweep_grace = float(config["OUTBOX_SWEEP_GRACE"])
        self.mark_delay = float(config["OUTBOX_MARK_DELAY"])
        if self.mark_delay * 2 > self.sweep_grace:
            # A row published but not yet marked must never look abandoned to a sweep.
            raise ValueError(
                f"OUTBOX_MARK_DELAY ({self.mark_delay}) must be at most half of OUTBOX_SWEEP_GRACE ({self.sweep_grace})"
            )
        self._committed = collections.deque()  # (envelope, headers) committed, not yet published
        self._unmarked = []  # event ids the broker confirmed, not yet marked sent
        self._mark_due = None  # when the oldest of them is to be marked (monotonic)
        # Fault injection for the crash-safety tests only: die between the
        # commit and the publish, as a kill -9 at the worst moment would.
        self._crash_before_publish = bool(config.get("FAULT_CRASH_BEFORE_PUBLISH", False))
        self._wake = threading.Event()
        self._stopping = False

    def start(self):
        self._relay_thread = self.container.spawn_managed_thread(self._relay_on_wake)

    def stop(self):
        self._stopping = True
        self._wake.set()
        self._relay_thread.wait()
        self.publisher.close()
        self.engine.dispose()

    def kill(self):
        self._relay_thread.kill()
        self.publisher.close()

    def get_dependency(self, worker_ctx):
        return OutboxWriter(self, worker_ctx)

    def add_many(self, session, events: list) -> list:
        """Insert ``(worker_ctx, request_key, event_type, key, sequence, data)``
        events in ``session``'s transaction, in one statement; their envelopes.

        ``worker_ctx`` (None outside a container) gives the row the writer's
        call ids, published as headers; ``request_key`` (or None) is the
        writing request's id, unique (see :mod:`reliable_events.group_commit`).
        """
        rows, written = [], []
        for worker_ctx, request_key, event_type, key, sequence, data in events:
            envelope = self.source.new(event_type, key, sequence, data)
            headers = {CALL_ID_STACK_HEADER: worker_ctx.call_id_stack} if worker_ctx is not None else None
            rows.append(
                {
                    "event_id": envelope["event_id"],
                    "event_type": event_type,
                    "aggregate_key": key,
                    "sequence": sequence,
                    "payload": envelope,
                    "headers": headers,
                    "request_key": request_key,
                }
            )
            written.append((worker_ctx, envelope, headers))
        # Rows as parameters: one cached statement, sent as one multi-row INSERT.
        session.execute(self._insert, rows)
        for worker_ctx, envelope, headers in written:
            self.wrote(session, worker_ctx, envelope, headers)
        return [envelope for _, envelope, _ in written]

    def wrote(self, session, worker_ctx, envelope: dict, headers: dict) -> None:
        if self._crash_before_publish:
            self._writers[worker_ctx] = True  # worker_result kills the process
            return
        if not sqlalchemy.event.contains(session, "after_commit", self._on_commit):
            sqlalchemy.event.listen(session, "after_commit", self._on_commit)
            sqlalchemy.event.listen(session, "after_rollback", self._on_rollback)
        session.info.setdefault(_WRITTEN, []).append((envelope, headers))

    def _on_commit(self, session) -> None:
        # Right after the commit, not after the worker: the relay's publish
        # then overlaps the RPC reply instead of waiting for it. Setting the
        # event does not switch greenthreads, so the reply is not delayed.
        written = session.info.pop(_WRITTEN, None)
        if written:
            self._committed.extend(written)
            self._wake.set()

    @staticmethod
    def _on_rollback(session) -> None:
        session.info.pop(_WRITTEN, None)  # those rows are gone: nothing to publish

    def worker_result(self, worker_ctx, result=None, exc_info=None):
        # Fault injection only: after the reply went out, die before anything
        # could publish the committed row (only the sweep can, after a restart).
        if self._writers.pop(worker_ctx, False):
            os.kill(os.getpid(), signal.SIGKILL)

    def _relay_on_wake(self):
        while not self._stopping or self._committed or self._unmarked:
            if not self._committed and not self._stopping:
                self._wake.wait(None if self._mark_due is None else max(0.0, self._mark_due - time.monotonic()))
                self._wake.clear()
            take = min(self.batch_size, len(self._committed))
            written = [self._committed.popleft() for _ in range(take)]
            if written:
                try:
                    self._relay_committed(written)
                except Exception:  # the sweep retries; say so, do not hide it
                    _log.exception("relay of %d events failed; they are left to the sweep", len(written))
            if self._unmarked and (
                self._stopping or len(self._unmarked) >= self.batch_size or time.monotonic() >= self._mark_due
            ):
                self._mark_sent()

    def _relay_committed(self, written: list) -> None:
        """Publish events just committed by this process; they are marked sent soon after."""
        outcome = self.publisher.publish([(e["event_id"], e["event_type"], e, h) for e, h in written])
        sent = [e["event_id"] for e, _ in written if outcome[e["event_id"]] is None]
        if sent:
            if not self._unmarked:
                self._mark_due = time.monotonic() + self.mark_delay
            self._unmarked.extend(sent)
        for envelope, headers in written:
            _published(self.source, self.metrics, envelope, headers, outcome[envelope["event_id"]], "commit")

    def _mark_sent(self) -> None:
        """Mark the confirmed events sent, in one transaction (those a sweep has not marked)."""
        t, sent = self.table, self._unmarked
        self._unmarked, self._mark_due = [], None
        try:
            with self.engine.begin() as conn:
                conn.execute(_NO_FLUSH_WAIT)
                marked = conn.execute(
                    update(t)
                    .where(t.c.event_id.in_(sent), t.c.published_at.is_(None))
                    .values(published_at=func.clock_timestamp(), attempts=t.c.attempts + 1)
                ).rowcount
        except Exception:
            # Still pending in the table: a sweep publishes them again once they
            # are past its grace, and consumers dedupe the second copy.
            _log.exception("marking %d published events sent failed; a sweep will publish them again", len(sent))
            return
        if marked < len(sent):
            # When publishing took longer than the sweep's grace, or the rows were erased meanwhile.
            _log.warning("%d of %d events were marked by a sweep already, or erased", len(sent) - marked, len(sent))

    def relay_pending(self, min_age: float | None = None) -> int:
        """Publish rows pending for at least ``min_age`` seconds (default: the
        grace), batch by batch until none is left or one fails."""
        min_age = self.sweep_grace if min_age is None else min_age
        total = 0
        while True:
            sent, attempted = self._relay_batch(min_age)
            total += sent
            if attempted < self.batch_size or sent < attempted:
                return total

    def _relay_batch(self, min_age: float) -> tuple:
        """Publish one batch of pending rows; return (sent, attempted)."""
        t = self.table
        with self.engine.begin() as conn:
            rows = conn.execute(
                select(t.c.position, t.c.event_id, t.c.event_type, t.c.payload, t.c.headers)
                .where(
                    t.c.published_at.is_(None),
                    t.c.created_at <= func.clock_timestamp() - func.make_interval(0, 0, 0, 0, 0, 0, min_age),
                )
                .order_by(t.c.position)
                .limit(self.batch_size)
                .with_for_update(skip_locked=True)
            ).all()
            if not rows:
                return 0, 0
            outcome = self.publisher.publish([(row.event_id, row.event_type, row.payload, row.headers) for row in rows])
            sent = [row.position for row in rows if outcome[row.event_id] is None]
            failed = [(row, outcome[row.event_id]) for row in rows if outcome[row.event_id] is not None]
            if sent:
                conn.execute(
                    update(t)
                    .where(t.c.position.in_(sent))
                    .values(published_at=func.clock_timestamp(), attempts=t.c.attempts + 1)
                )
            for row, error in failed:
                conn.execute(
                    update(t).where(t.c.position == row.position).values(attempts=t.c.attempts + 1, last_error=error)
                )
        for row in rows:
            _published(
                self.source,
                self.metrics,
                row.payload,
                row.headers,
                outcome[row.event_id],
                "sweep",
                position=row.position,
            )
        return len(sent), len(rows)

    def backlog(self) -> dict:
        """Rows not published yet: those unmarked, less the ones this process
        published and is about to mark (another instance's show for at most
        ``OUTBOX_MARK_DELAY``)."""
        t = self.table
        pending = t.c.published_at.is_(None)
        if self._unmarked:
            pending = pending & t.c.event_id.not_in(list(self._unmarked))
        with self.engine.connect() as conn:
            count, oldest = conn.execute(
                select(
                    func.count(),
                    func.extract("epoch", func.clock_timestamp() - func.min(t.c.created_at)),
                ).where(pending)
            ).one()
        return {"pending": count, "oldest_pending_age_seconds": float(oldest or 0)}


def _published(
    source, metrics: EventMetrics, envelope: dict, headers: dict | None, error: str | None, path: str, **more
) -> None:
    """One log line and the counters for one publish attempt."""
    if error is None:
        metrics.published(envelope["event_type"], path)
        if not _log.isEnabledFor(logging.INFO):
            return  # per event: build the line's fields only if it is written
    else:
        metrics.publish_failed(envelope["event_type"])
    stack = (headers or {}).get(CALL_ID_STACK_HEADER)
    fields = event_fields(envelope, source.key_field_of(envelope["event_type"]), path=path, **more)
    if stack:
        # The writer's call ids: this line joins the request that wrote the event.
        fields.update(call_id_stack=stack, call_id=stack[-1])
    if error is None:
        _log.info("published event %s %s", envelope["event_id"], envelope["event_type"], extra=fields)
    else:
        _log.warning(
            "event %s %s left pending: %s",
            envelope["event_id"],
            envelope["event_type"],
            error,
            extra={**fields, "error": error},
        )
