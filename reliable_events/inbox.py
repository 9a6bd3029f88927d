"""Idempotent consumers: each event is applied at most once per consumer.

A handler claims the events of its batch inside the transaction that applies them:

    with self.db.get_session() as session:
        for event in self.inbox.claim_all(session, events):
            ...apply it in the same session...

``claim_all`` inserts ``(consumer, event_id)`` into the inbox table; the primary
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
