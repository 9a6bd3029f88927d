"""The outbox's retention policy: published events older than
``EVENT_HISTORY_RETENTION`` seconds are deleted from the history.

Guarantees:

- Only rows that were published (``published_at IS NOT NULL``) and were
  written more than the retention ago are deleted; a pending row is never
  deleted, however old.
- A round (:meth:`Retention.purge`, run by every process's
  ``@retention_timer`` every ``EVENT_HISTORY_CLEANUP_INTERVAL`` seconds)
  deletes in batches of at most ``EVENT_HISTORY_CLEANUP_BATCH`` rows, oldest
  positions first, each batch its own short transaction: no lock is held
  from one batch to the next, and a process killed mid-batch rolls that
  batch back whole; the next round starts again from the oldest row left.
  A round ends at the first row still within the retention, or at the end
  of the history.
- One instance at a time: each batch first takes a transaction-scoped
  advisory lock (``Retention.lock_key``); a process that does not get it
  ends its round, another is cleaning. The rows a batch picks are taken
  ``FOR UPDATE SKIP LOCKED``, so the relay marking rows, or an erasure
  deleting them, never waits on a batch, nor a batch on them.
- The highest position ever deleted is recorded in the batch's own
  transaction (``history_retention``, :func:`deleted_through`): a reader of the
  history that starts at or above it misses nothing; one below it may have
  lost events, and must start again from another source (person's readers:
  ``person/history.py``).

The retention must be longer than ``RPC_TIMEOUT``: a request's id on its
outbox row is what stops the same request, delivered again, from writing
twice (:mod:`.group_commit`), and a request may be delivered again until its
deadline (:mod:`.rpc` drops it past that). :func:`retention_settings` refuses
a service start otherwise.
"""

import hashlib
import logging
import time
from dataclasses import dataclass

from nameko.timer import Timer
from sqlalchemy import Table, bindparam, delete, func, select
from sqlalchemy.dialects.postgresql import insert

from reliable_events.database import vacuum_unless_autovacuum
from reliable_events.settings import ConfigError, positive_number

_log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RetentionSettings:
    """``retention``: seconds a published event is kept; ``interval``: seconds
    between rounds; ``batch``: rows per delete transaction."""

    retention: float
    interval: float
    batch: int


def retention_settings(config: dict) -> RetentionSettings:
    """The retention's settings from ``config``; :class:`ConfigError` (one line)
    for one that is not a number above 0, or a retention not longer than
    ``RPC_TIMEOUT``."""
    settings = RetentionSettings(
        retention=positive_number(config, "EVENT_HISTORY_RETENTION"),
        interval=positive_number(config, "EVENT_HISTORY_CLEANUP_INTERVAL"),
        batch=positive_number(config, "EVENT_HISTORY_CLEANUP_BATCH", integer=True),
    )
    window = positive_number(config, "RPC_TIMEOUT")
    if settings.retention <= window:
        raise ConfigError(
            f"EVENT_HISTORY_RETENTION={config['EVENT_HISTORY_RETENTION']} refused: it must be longer than"
            f" RPC_TIMEOUT ({config['RPC_TIMEOUT']} s), while a request may be delivered again and the"
            " request_id on its outbox row is what stops it from writing twice"
        )
    return settings


class RetentionTimer(Timer):
    """A ``@timer`` whose interval is ``EVENT_HISTORY_CLEANUP_INTERVAL`` in config."""

    def __init__(self, **kwargs):
        super().__init__(interval=None, **kwargs)  # set from config in setup

    def setup(self):
        self.interval = retention_settings(self.container.config).interval
        super().setup()


retention_timer = RetentionTimer.decorator


def deleted_through(connection, retention_table: Table, source: str) -> int:
    """The highest position of ``source``'s history the retention deleted (0:
    none); every event above it is still there. One primary-key read."""
    t = retention_table
    found = connection.execute(select(t.c.deleted_through).where(t.c.source == source)).scalar_one_or_none()
    return found or 0


@dataclass(frozen=True)
class Batch:
    """One batch: the ``rows`` it deleted and the highest of their positions
    (None for none); the last position it looked at (``scanned_through``),
    and whether it reached the end of what is past the retention (``last``)."""

    rows: int
    highest: int | None
    scanned_through: int
    last: bool


class Retention:
    """Deletes ``outbox``'s (its table, its engine, its metrics) published rows
    past the retention, and records how far in ``retention_table``.

    A batch looks at the next ``batch`` rows in position order, from where the
    previous one stopped, and deletes those of them that are published and
    past the retention: each costs its rows, never a scan of the whole
    history, and a pending row among them is passed over, not read again by
    every batch. A row's position and time are both issued at its insert, in
    the same order (to within the moments two inserts overlap), so the first
    row within the retention ends the round."""

    def __init__(self, outbox, retention_table: Table, settings: RetentionSettings):
        self.outbox = outbox
        self.retention_table = retention_table
        self.settings = settings
        self.source = outbox.table.name
        # The advisory lock of this history's cleaners, in every process alike.
        digest = hashlib.sha256(f"{retention_table.name}:{self.source}".encode()).digest()
        self.lock_key = int.from_bytes(digest[:8], "big", signed=True)
        t = outbox.table
        cutoff = select(
            func.clock_timestamp() - func.make_interval(0, 0, 0, 0, 0, 0, settings.retention)
        ).scalar_subquery()
        self._window = (
            select(t.c.position, (t.c.created_at < cutoff).label("old"), t.c.published_at.is_not(None).label("sent"))
            .where(t.c.position > bindparam("after"))
            .order_by(t.c.position)
            .limit(settings.batch)
        )
        # The window's due rows, locked; those another transaction holds are
        # skipped (the next round takes them). Read unlocked, they are still
        # due: a published row stays published, and its time never changes.
        picked = (
            select(t.c.position)
            .where(t.c.position.in_(bindparam("due", expanding=True)))
            .with_for_update(skip_locked=True)
        )
        self._delete = delete(t).where(t.c.position.in_(picked.scalar_subquery())).returning(t.c.position)

    def purge(self) -> int:
        """One round, batch after batch until the first row within the
        retention, the end of the history, or another instance holding the
        lock; the rows deleted. Logs one line if it deleted any."""
        started = time.monotonic()
        total, highest, batches, after = 0, 0, 0, 0
        while True:
            batch = self.delete_batch(after)
            if batch is None:  # another instance is cleaning
                break
            batches += 1
            total += batch.rows
            highest = max(highest, batch.highest or 0)
            if batch.last:
                break
            after = batch.scanned_through
        # Where autovacuum is off the deleted rows' space is reused only so
        # (the settled head's SHARE lock waits for it, within its lock timeout).
        vacuumed = bool(total) and vacuum_unless_autovacuum(self.outbox.engine, self.source)
        if total:
            seconds = time.monotonic() - started
            _log.info(
                "event history retention deleted %d events, through position %d, in %.3f s",
                total,
                highest,
                seconds,
                extra={
                    "history": self.source,
                    "deleted": total,
                    "deleted_through": highest,
                    "batches": batches,
                    "vacuumed": vacuumed,
                    "duration_s": round(seconds, 3),
                },
            )
        return total

    def delete_batch(self, after: int = 0) -> Batch | None:
        """Look at the next batch of rows after position ``after`` and delete
        those due, in a transaction of its own that also records the highest
        position deleted; None (nothing done) if another instance holds the lock."""
        with self.outbox.engine.begin() as conn:
            if not conn.execute(select(func.pg_try_advisory_xact_lock(self.lock_key))).scalar_one():
                return None
            window = conn.execute(self._window, {"after": after}).all()
            last = len(window) < self.settings.batch or not all(row.old for row in window)
            scanned_through = window[-1].position if window else after
            due = [row.position for row in window if row.old and row.sent]
            deleted = conn.execute(self._delete, {"due": due}).scalars().all() if due else []
            if not deleted:
                return Batch(0, None, scanned_through, last)
            highest = max(deleted)
            r = self.retention_table
            record = insert(r).values(source=self.source, deleted_through=highest)
            conn.execute(
                record.on_conflict_do_update(
                    index_elements=[r.c.source],
                    set_={
                        "deleted_through": func.greatest(r.c.deleted_through, record.excluded.deleted_through),
                        "updated_at": func.clock_timestamp(),
                    },
                )
            )
        self.outbox.metrics.history_deleted(len(deleted))
        return Batch(len(deleted), highest, scanned_through, last)

    def deleted_through(self) -> int:
        """The highest position deleted so far (0: none)."""
        with self.outbox.engine.connect() as conn:
            return deleted_through(conn, self.retention_table, self.source)
