"""Transactional outbox: an event is written with its business row, then relayed.

Guarantees:

- An event row is inserted in the caller's transaction (:meth:`OutboxWriter.add`),
  so it exists if and only if the business change committed.
- The relay publishes a row with publisher confirms and ``mandatory`` set, and
  marks it sent only after the broker confirmed it was routed to a queue.
  A failed or unroutable publish leaves the row pending; the sweep retries it.
  Publishing is therefore at least once: a crash between the confirm and the
  mark re-sends the row, and consumers dedupe on ``event_id`` (:mod:`.inbox`).
- Relays in several processes share the work with ``FOR UPDATE SKIP LOCKED``:
  a row is locked by one relay from selection to mark, so no two relays
  publish it under normal operation.
- Sent rows are kept, ordered by ``position``: they are the event history.

Order across aggregates is not guaranteed (two relays, one queue per event
type); each event carries a per-aggregate ``sequence`` for consumers that care.
"""

import logging
import os
import signal
from weakref import WeakKeyDictionary

from kombu.exceptions import OperationalError
from nameko.amqp.publish import Publisher, UndeliverableMessage
from nameko.constants import AMQP_URI_CONFIG_KEY
from nameko.extensions import DependencyProvider
from nameko.standalone.events import get_event_exchange
from nameko.timer import Timer
from sqlalchemy import Table, create_engine, func, select, update

from reliable_events.envelope import new_envelope

_log = logging.getLogger(__name__)

UNROUTABLE = "unroutable"

# Fail fast on a dead broker: the row stays pending and the sweep comes back,
# so waiting here would only hold a worker (and, on the first attempt, a greenlet
# the caller's response is already independent of).
_PUBLISH_RETRY_POLICY = {
    "max_retries": 2,
    "interval_start": 0.1,
    "interval_step": 0.2,
    "interval_max": 0.5,
}
_TRANSPORT_OPTIONS = {
    "max_retries": 1,
    "interval_start": 0,
    "interval_step": 0.5,
    "interval_max": 1,
}


class OutboxRelay(Timer):
    """A ``@timer`` whose interval comes from ``OUTBOX_SWEEP_INTERVAL`` in config."""

    def __init__(self, default_interval: float = 1.0, **kwargs):
        super().__init__(interval=default_interval, **kwargs)

    def setup(self):
        self.interval = float(self.container.config.get("OUTBOX_SWEEP_INTERVAL", self.interval))
        super().setup()


relay_timer = OutboxRelay.decorator


class OutboxWriter:
    """What a worker sees: add an event to the transaction it is writing."""

    def __init__(self, outbox: "Outbox", worker_ctx):
        self._outbox = outbox
        self._worker_ctx = worker_ctx

    def add(self, session, event_type: str, key: str, sequence: int, data: dict) -> dict:
        """Insert the event in ``session``'s transaction; return the envelope.

        Nothing is published here. After the worker finishes, the rows it added
        are published at once if their transaction committed.
        """
        envelope = new_envelope(event_type, key, sequence, data)
        table = self._outbox.table
        position = session.execute(
            table.insert()
            .values(
                event_id=envelope["event_id"],
                event_type=event_type,
                aggregate_key=key,
                sequence=sequence,
                payload=envelope,
            )
            .returning(table.c.position)
        ).scalar_one()
        self._outbox.remember(self._worker_ctx, position)
        return envelope

    def relay_pending(self) -> int:
        """Publish every pending row; the sweep calls this. Returns rows sent."""
        return self._outbox.relay_pending()

    def backlog(self) -> dict:
        """Pending rows and the age in seconds of the oldest one."""
        return self._outbox.backlog()


class Outbox(DependencyProvider):
    """Dependency that writes outbox rows and relays them to ``<service>.events``.

    ``declarative_base`` names the database (as nameko-sqlalchemy's
    ``DB_URIS["<service>:<Base>"]``) holding ``table``; the relay keeps its own
    small connection pool so publishing never borrows a worker's session.
    It publishes with Nameko's own publisher to the exchange Nameko's
    ``EventDispatcher`` uses, declared on first publish rather than at start-up,
    so the service starts (and keeps its rows) while the broker is down.
    """

    def __init__(self, declarative_base, table: Table):
        self.declarative_base = declarative_base
        self.table = table
        self._written = WeakKeyDictionary()

    def setup(self):
        config = self.container.config
        self.exchange = get_event_exchange(self.container.service_name, config)
        self.publisher = Publisher(
            config[AMQP_URI_CONFIG_KEY],
            use_confirms=True,
            mandatory=True,
            retry_policy=_PUBLISH_RETRY_POLICY,
            declare=[self.exchange],
        )
        key = f"{self.container.service_name}:{self.declarative_base.__name__}"
        self.engine = create_engine(config["DB_URIS"][key], pool_size=2, pool_pre_ping=True)
        self.batch_size = int(config.get("OUTBOX_BATCH_SIZE", 200))
        # Fault injection for the crash-safety tests only: die between the
        # commit and the publish, as a kill -9 at the worst moment would.
        self._crash_before_publish = bool(config.get("FAULT_CRASH_BEFORE_PUBLISH", False))

    def stop(self):
        self.engine.dispose()

    def get_dependency(self, worker_ctx):
        return OutboxWriter(self, worker_ctx)

    def remember(self, worker_ctx, position: int) -> None:
        self._written.setdefault(worker_ctx, []).append(position)

    def worker_result(self, worker_ctx, result=None, exc_info=None):
        # Runs after the entrypoint replied, so the caller never waits for the
        # broker. Rows of a rolled-back transaction are simply not found.
        positions = self._written.pop(worker_ctx, None)
        if not positions:
            return
        if self._crash_before_publish:
            os.kill(os.getpid(), signal.SIGKILL)
        try:
            self._relay(self.table.c.position.in_(positions))
        except Exception:  # the sweep will publish them; say so, do not hide it
            _log.exception("immediate relay of positions %s failed; left to the sweep", positions)

    def relay_pending(self) -> int:
        sent = total = 0
        while True:
            sent, seen = self._relay()
            total += sent
            if seen < self.batch_size or sent < seen:
                return total

    def _relay(self, *criteria) -> tuple:
        """Publish one batch of pending rows; return (sent, selected)."""
        t = self.table
        with self.engine.begin() as conn:
            rows = conn.execute(
                select(t.c.position, t.c.event_id, t.c.event_type, t.c.payload)
                .where(t.c.published_at.is_(None), *criteria)
                .order_by(t.c.position)
                .limit(self.batch_size)
                .with_for_update(skip_locked=True)
            ).all()
            sent, failed = [], 0
            for row in rows:
                error = self._publish(row)
                if error is None:
                    sent.append(row.position)
                    continue
                failed += 1
                conn.execute(
                    update(t).where(t.c.position == row.position).values(attempts=t.c.attempts + 1, last_error=error)
                )
                if not error.startswith(UNROUTABLE):
                    # The broker is unreachable: the rows behind this one
                    # would fail the same way; the next sweep tries again.
                    break
            if sent:
                conn.execute(
                    update(t)
                    .where(t.c.position.in_(sent))
                    .values(published_at=func.clock_timestamp(), attempts=t.c.attempts + 1)
                )
        return len(sent), len(sent) + failed

    def _publish(self, row):
        try:
            self.publisher.publish(
                row.payload,
                exchange=self.exchange,
                routing_key=row.event_type,
                message_id=row.event_id,
                transport_options=dict(_TRANSPORT_OPTIONS),
            )
        except UndeliverableMessage:
            _log.warning(
                "event %s %s not routed to any queue; kept pending",
                row.event_id,
                row.event_type,
            )
            return f"{UNROUTABLE}: no queue bound for this event type"
        except (OperationalError, OSError) as exc:
            _log.warning("event %s publish failed, kept pending: %s", row.event_id, exc)
            return f"publish failed: {exc}"
        _log.info("published event %s %s position=%s", row.event_id, row.event_type, row.position)
        return None

    def backlog(self) -> dict:
        t = self.table
        with self.engine.connect() as conn:
            count, oldest = conn.execute(
                select(
                    func.count(),
                    func.extract("epoch", func.clock_timestamp() - func.min(t.c.created_at)),
                ).where(t.c.published_at.is_(None))
            ).one()
        return {"pending": count, "oldest_pending_age_seconds": float(oldest or 0)}
