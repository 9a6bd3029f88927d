"""The outbox's fast path: publish the rows this process just committed.

No other process knows those rows yet, so they are published from memory the
moment they commit (under load, the rows of many writers in one batch: a
:class:`~reliable_events.batches.Batches` of one publisher), then marked sent
if still unmarked.

The marks are written together, at most ``OUTBOX_MARK_DELAY`` seconds after
the confirm, in a transaction that does not wait for its WAL flush: a mark
records what the broker already holds, so losing one (a crash) costs a second
publish that consumers dedupe, never an event. (A transaction per event just
to mark it was the fast path's largest cost.) The delay is at most half the
sweep's grace, so the sweep never takes a row the relay published.
"""

import logging

import eventlet
from sqlalchemy import func, text, update

from reliable_events.batches import Batches
from reliable_events.instruments import log_published

_log = logging.getLogger("reliable_events.outbox")

# A mark is safe to lose (see the module's docstring): its commit need not
# wait for the disk.
_NO_FLUSH_WAIT = text("SET LOCAL synchronous_commit TO OFF")


class Relay:
    """Publishes :class:`~reliable_events.outbox.Written` rows of ``outbox``
    (its table, its engine) once they commit."""

    def __init__(self, outbox, mark_delay: float):
        self.outbox = outbox
        self.mark_delay = mark_delay
        # One batch at a time: the publisher is one channel.
        self.batches = Batches(self._launch, outbox.batch_size, concurrency=1)
        self.unmarked = []  # event ids the broker confirmed, not yet marked sent
        self._marker = None  # the greenthread that marks them when due
        self._spawn = None

    def start(self, spawn_managed_thread) -> None:
        self._spawn = spawn_managed_thread
        self.batches.start(spawn_managed_thread)

    def stop(self) -> None:
        self.batches.stop()
        self.mark_sent()

    def kill(self) -> None:
        self.batches.kill()

    def publish_soon(self, written: list) -> None:
        self.batches.add(*written)

    def _launch(self, batch: list) -> None:
        self._spawn(lambda: self._publish(batch))

    def _publish(self, written: list) -> None:
        try:
            outcome = self.outbox.publisher.publish(
                [(w.envelope["event_id"], w.envelope["event_type"], w.envelope, w.headers) for w in written]
            )
            self.unmarked.extend(w.envelope["event_id"] for w in written if outcome[w.envelope["event_id"]] is None)
            for w in written:
                event_type = w.envelope["event_type"]
                error = outcome[w.envelope["event_id"]]
                log_published(
                    self.outbox.metrics,
                    self.outbox.source.key_field_of(event_type),
                    w.envelope,
                    w.headers,
                    error,
                    "commit",
                )
            if len(self.unmarked) >= self.outbox.batch_size:
                self.mark_sent()
            elif self.unmarked and self._marker is None:
                self._marker = self._spawn(self._mark_when_due)
        except Exception:  # the sweep retries; say so, do not hide it
            _log.exception("relay of %d events failed; they are left to the sweep", len(written))
        finally:
            self.batches.finished()

    def _mark_when_due(self) -> None:
        eventlet.sleep(self.mark_delay)
        self._marker = None
        self.mark_sent()

    def mark_sent(self) -> None:
        """Mark the confirmed events sent, in one transaction (those a sweep has not marked)."""
        if not self.unmarked:
            return
        t, sent = self.outbox.table, self.unmarked
        self.unmarked = []
        try:
            with self.outbox.engine.begin() as conn:
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
