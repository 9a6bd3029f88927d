"""The outbox's safety net: publish what the relay left pending.

A row still pending ``OUTBOX_SWEEP_GRACE`` seconds after it was written was
not published by its writer's relay (the broker was down, the publish failed,
the process died between its commit and its publish). A sweep, run by every
process's ``@sweep_timer`` every ``OUTBOX_SWEEP_INTERVAL`` seconds, takes such
rows with ``FOR UPDATE SKIP LOCKED`` (sweeps in several processes never share a
row), publishes them with confirms, and marks the confirmed ones sent; a
failure is recorded on the row (``attempts``, ``last_error``) and retried on
the next sweep.
"""

from nameko.timer import Timer
from sqlalchemy import func, select, update

from reliable_events.instruments import log_published


class SweepTimer(Timer):
    """A ``@timer`` whose interval comes from ``OUTBOX_SWEEP_INTERVAL`` in config."""

    def __init__(self, **kwargs):
        super().__init__(interval=None, **kwargs)  # set from config in setup

    def setup(self):
        self.interval = float(self.container.config["OUTBOX_SWEEP_INTERVAL"])
        super().setup()


sweep_timer = SweepTimer.decorator


class Sweep:
    """Publishes rows of ``outbox`` (its table, its engine) left pending."""

    def __init__(self, outbox, grace: float):
        self.outbox = outbox
        self.grace = grace

    def relay_pending(self, min_age: float | None = None) -> int:
        """Publish rows pending for at least ``min_age`` seconds (default: the
        grace), batch by batch until none is left or one fails; rows sent."""
        min_age = self.grace if min_age is None else min_age
        total = 0
        while True:
            sent, attempted = self._relay_batch(min_age)
            total += sent
            if attempted < self.outbox.batch_size or sent < attempted:
                return total

    def _relay_batch(self, min_age: float) -> tuple[int, int]:
        """Publish one batch of pending rows; (sent, attempted)."""
        t = self.outbox.table
        with self.outbox.engine.begin() as conn:
            rows = conn.execute(
                select(t.c.position, t.c.event_id, t.c.event_type, t.c.payload, t.c.headers)
                .where(
                    t.c.published_at.is_(None),
                    t.c.created_at <= func.clock_timestamp() - func.make_interval(0, 0, 0, 0, 0, 0, min_age),
                )
                .order_by(t.c.position)
                .limit(self.outbox.batch_size)
                .with_for_update(skip_locked=True)
            ).all()
            if not rows:
                return 0, 0
            outcome = self.outbox.publisher.publish(
                [(row.event_id, row.event_type, row.payload, row.headers) for row in rows]
            )
            sent = [row.position for row in rows if outcome[row.event_id] is None]
            if sent:
                conn.execute(
                    update(t)
                    .where(t.c.position.in_(sent))
                    .values(published_at=func.clock_timestamp(), attempts=t.c.attempts + 1)
                )
            for row in rows:
                if outcome[row.event_id] is not None:
                    conn.execute(
                        update(t)
                        .where(t.c.position == row.position)
                        .values(attempts=t.c.attempts + 1, last_error=outcome[row.event_id])
                    )
        for row in rows:
            key_field = self.outbox.source.key_field_of(row.event_type)
            error = outcome[row.event_id]
            log_published(
                self.outbox.metrics, key_field, row.payload, row.headers, error, "sweep", position=row.position
            )
        return len(sent), len(rows)

    def backlog(self) -> dict:
        """Rows not published yet: those unmarked, less the ones this process
        published and is about to mark (another instance's show for at most
        ``OUTBOX_MARK_DELAY``)."""
        t = self.outbox.table
        pending = t.c.published_at.is_(None)
        unmarked = self.outbox.relay.unmarked
        if unmarked:
            pending = pending & t.c.event_id.not_in(list(unmarked))
        with self.outbox.engine.connect() as conn:
            count, oldest = conn.execute(
                select(
                    func.count(),
                    func.extract("epoch", func.clock_timestamp() - func.min(t.c.created_at)),
                ).where(pending)
            ).one()
        return {"pending": count, "oldest_pending_age_seconds": float(oldest or 0)}
