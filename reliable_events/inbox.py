"""Idempotent consumers: each event is applied at most once per consumer.

A handler claims an event inside the transaction that applies it:

    with self.db.get_session() as session:
        if self.inbox.claim(session, event):
            ...apply the effect in the same session...

or, for a batch handler, every event of the batch at once:

    with self.db.get_session() as session:
        for event in self.inbox.claim_all(session, events):
            ...apply it in the same session...

``claim`` inserts ``(consumer, event_id)`` into the inbox table; the primary
key makes a second insert a no-op, so a redelivered, replayed or duplicated
event is skipped. Because the claim and the effect commit together, a crash
before commit leaves neither, and the redelivery applies both.
"""

import logging

from nameko.extensions import DependencyProvider
from sqlalchemy import Table
from sqlalchemy.dialects.postgresql import insert

_log = logging.getLogger(__name__)


class InboxClaim:
    def __init__(self, table: Table, consumer: str):
        self._table = table
        self.consumer = consumer

    def claim(self, session, event: dict) -> bool:
        """Record ``event`` as applied by this consumer; False if it already was."""
        claimed = session.execute(
            insert(self._table)
            .values(
                consumer=self.consumer,
                event_id=event["event_id"],
                event_type=event["event_type"],
            )
            .on_conflict_do_nothing()
            .returning(self._table.c.event_id)
        ).first()
        if claimed is None:
            _log.info(
                "skipped duplicate event %s %s for %s",
                event["event_id"],
                event["event_type"],
                self.consumer,
            )
            return False
        return True

    def claim_all(self, session, events: list) -> list:
        """Record every event of ``events`` in one statement; return those that
        were not applied before (each once, in the order given)."""
        first = {}
        for event in events:
            first.setdefault(event["event_id"], event)
        # Sorted, so two batches that share an event id lock it in the same order.
        rows = [
            {"consumer": self.consumer, "event_id": event_id, "event_type": event["event_type"]}
            for event_id, event in sorted(first.items())
        ]
        claimed = set(
            session.execute(
                insert(self._table).values(rows).on_conflict_do_nothing().returning(self._table.c.event_id)
            ).scalars()
        )
        fresh = []
        for event in events:
            if event["event_id"] in claimed:
                claimed.discard(event["event_id"])
                fresh.append(event)
            else:
                _log.info(
                    "skipped duplicate event %s %s for %s",
                    event["event_id"],
                    event["event_type"],
                    self.consumer,
                )
        return fresh


class Inbox(DependencyProvider):
    """Hands each worker an :class:`InboxClaim` named ``<service>.<method>``."""

    def __init__(self, table: Table):
        self.table = table

    def get_dependency(self, worker_ctx):
        consumer = f"{worker_ctx.service_name}.{worker_ctx.entrypoint.method_name}"
        return InboxClaim(self.table, consumer)
