"""Transactional outbox: an event is written with its business row, then relayed.

Guarantees:

- An event row is inserted in the caller's transaction (:meth:`Outbox.add_all`),
  so it exists if and only if the business change committed.
- Publishing is at least once, with publisher confirms and ``mandatory`` set:
  a row is marked sent only after the broker confirmed it was routed to a
  queue; a failed or unroutable publish leaves it pending. Consumers dedupe
  on ``event_id`` (:mod:`.inbox`).
- Two paths publish. The relay (:mod:`.relay`) publishes the rows this
  process's own writers just committed, from memory, the moment they commit.
  The sweep (:mod:`.sweep`) publishes rows left pending for
  ``OUTBOX_SWEEP_GRACE`` seconds (broker down, publish failed, process killed
  before publishing), ``FOR UPDATE SKIP LOCKED``, so sweeps in several
  processes never share a row. Under normal operation no row is published
  twice.
- Sent rows are kept, ordered by ``position``: they are the event history,
  for ``EVENT_HISTORY_RETENTION`` seconds (:mod:`.retention` deletes older
  ones, never a pending row). An aggregate's erasure deletes its rows at
  once (``person/writes.py``); the relay may still publish one it holds in
  memory, and consumers drop it.

Order across aggregates is not guaranteed (two relays, one queue per event
type); each event carries a per-aggregate ``sequence`` for consumers that care.
"""

from dataclasses import dataclass

import sqlalchemy.event
from nameko.constants import AMQP_URI_CONFIG_KEY
from nameko.extensions import DependencyProvider, Extension
from nameko.standalone.events import get_event_exchange
from sqlalchemy import Table

from reliable_events.confirms import BatchPublisher
from reliable_events.database import SharedEngine
from reliable_events.instruments import CALL_ID_STACK_HEADER, NO_METRICS, EventMetrics
from reliable_events.relay import Relay
from reliable_events.retention import Retention, retention_settings
from reliable_events.settings import ConfigError
from reliable_events.sweep import Sweep
from reliable_events.tables import history_retention_table

_WRITTEN = "outbox_written"  # session.info: the Written rows its transaction added


@dataclass(frozen=True)
class PendingEvent:
    """An event a write announces, as the service states it; the outbox adds
    the envelope (id, time) when it writes the row.

    ``request_id`` is the writing request's id (unique in the outbox: the same
    request delivered again cannot write again, see
    :mod:`reliable_events.group_commit`); ``call_id_stack`` the writer's Nameko
    call ids, published as a header so the consumer's log lines join its
    request's."""

    event_type: str
    key: str
    sequence: int
    data: dict
    request_id: str | None = None
    call_id_stack: list | None = None
    # Fixed by the writer when it keeps them on the rows the event announces
    # (a new id, and a ``datetime``); otherwise the outbox fixes them.
    event_id: str | None = None
    occurred_at: object = None


@dataclass(frozen=True)
class Written:
    """A row this process wrote: what the relay publishes once it commits."""

    envelope: dict
    headers: dict | None


class OutboxWriter:
    """What a worker sees of an outbox: its own writes (standalone, through
    :class:`OutboxDependency`), the sweep and the backlog."""

    def __init__(self, outbox: "Outbox"):
        self._outbox = outbox

    def add(self, session, event_type: str, key: str, sequence: int, data: dict) -> dict:
        """Insert the event in ``session``'s transaction; return the envelope.
        Nothing is published here: the relay is woken when it commits."""
        return self._outbox.add_all(session, [PendingEvent(event_type, key, sequence, data)])[0]

    def relay_pending(self, min_age: float | None = None) -> int:
        """Publish every row pending for ``min_age`` seconds (default
        ``OUTBOX_SWEEP_GRACE``); the sweep timer calls this. Rows sent."""
        return self._outbox.sweep.relay_pending(min_age)

    def backlog(self) -> dict:
        """Pending rows and the age in seconds of the oldest one."""
        return self._outbox.sweep.backlog()

    def purge_history(self) -> int:
        """One round of the retention policy (the retention timer calls
        this): published rows past ``EVENT_HISTORY_RETENTION`` deleted."""
        return self._outbox.retention.purge()


class Outbox(Extension):
    """Writes outbox rows and relays them to ``<service>.events``.

    ``declarative_base`` names the database (as nameko-sqlalchemy's
    ``DB_URIS["<service>:<Base>"]``) holding ``table``; ``source`` says how
    the envelope names its aggregate and which exchange the events go to
    (the one Nameko's ``EventDispatcher`` uses). A sub-extension: of
    :class:`~reliable_events.group_commit.GroupCommit`, or of an
    :class:`OutboxDependency` for a service that writes its own
    transactions; its parent drains it (:meth:`drain`) before the database's
    pool (a :class:`~reliable_events.database.SharedEngine`) is disposed.
    ``retention_table`` records how far the retention policy deleted the
    history (:mod:`.retention`); by default the one beside ``table``.
    """

    def __init__(
        self,
        declarative_base,
        table: Table,
        source,
        metrics: EventMetrics = NO_METRICS,
        retention_table: Table | None = None,
    ):
        self.declarative_base = declarative_base
        self.table = table
        self.retention_table = history_retention_table(table.metadata) if retention_table is None else retention_table
        self.source = source
        self.metrics = metrics
        self.shared = SharedEngine(declarative_base)
        self._insert = table.insert()

    def setup(self):
        config = self.container.config
        self.batch_size = int(config["OUTBOX_BATCH_SIZE"])
        grace = float(config["OUTBOX_SWEEP_GRACE"])
        mark_delay = float(config["OUTBOX_MARK_DELAY"])
        if mark_delay * 2 > grace:
            # A row published but not yet marked must never look abandoned to a sweep.
            raise ConfigError(f"OUTBOX_MARK_DELAY ({mark_delay}) must be at most half of OUTBOX_SWEEP_GRACE ({grace})")
        retention = retention_settings(config)
        # The relay's marks and the sweep. (The retention's batch runs in its
        # timer's worker, on that worker's share of the pool.)
        self.shared.reserve(2)
        self.publisher = BatchPublisher(config[AMQP_URI_CONFIG_KEY], get_event_exchange(self.source.service, config))
        self.relay = Relay(self, mark_delay)
        self.sweep = Sweep(self, grace)
        self.retention = Retention(self, self.retention_table, retention)

    def start(self):
        self.engine = self.shared.get()
        self.relay.start(self.container.spawn_managed_thread)

    def drain(self):
        """Publish and mark what committed; the parent calls this once its
        writers are done, before the pool goes."""
        self.relay.stop()

    def stop(self):
        self.publisher.close()

    def kill(self):
        self.relay.kill()
        self.publisher.close()

    def add_all(self, session, events: list[PendingEvent]) -> list[dict]:
        """Insert ``events`` in ``session``'s transaction, in one statement; their envelopes."""
        rows, written = [], []
        for event in events:
            envelope = self.source.new(
                event.event_type, event.key, event.sequence, event.data, event.event_id, event.occurred_at
            )
            headers = {CALL_ID_STACK_HEADER: event.call_id_stack} if event.call_id_stack is not None else None
            rows.append(
                {
                    "event_id": envelope["event_id"],
                    "event_type": event.event_type,
                    "aggregate_key": event.key,
                    "sequence": event.sequence,
                    "payload": envelope,
                    "headers": headers,
                    "request_id": event.request_id,
                }
            )
            written.append(Written(envelope, headers))
        # Rows as parameters: one cached statement, sent as one multi-row INSERT.
        session.execute(self._insert, rows)
        if not sqlalchemy.event.contains(session, "after_commit", self._on_commit):
            sqlalchemy.event.listen(session, "after_commit", self._on_commit)
            sqlalchemy.event.listen(session, "after_rollback", self._on_rollback)
        session.info.setdefault(_WRITTEN, []).extend(written)
        return [w.envelope for w in written]

    def committed(self, written: list[Written]) -> None:
        """Rows whose transaction committed: the relay publishes them now.
        (The crash tests' outbox holds them instead: harness/crashing_person.py.)"""
        self.relay.publish_soon(written)

    def _on_commit(self, session) -> None:
        # Right after the commit, not after the worker: the relay's publish
        # then overlaps the RPC reply instead of waiting for it.
        written = session.info.pop(_WRITTEN, None)
        if written:
            self.committed(written)

    @staticmethod
    def _on_rollback(session) -> None:
        session.info.pop(_WRITTEN, None)  # those rows are gone: nothing to publish


class OutboxDependency(DependencyProvider):
    """An :class:`Outbox` for a service that writes its own transactions:
    workers get an :class:`OutboxWriter` and add events to their session."""

    def __init__(self, outbox: Outbox):
        self.outbox = outbox

    def stop(self):
        self.outbox.drain()

    def get_dependency(self, worker_ctx):
        return OutboxWriter(self.outbox)
