"""Idempotent consumers: each event is applied at most once per consumer.

A handler claims the events of its batch inside the transaction that applies them:

    with self.db.get_session() as session:
        for event in self.inbox.claim_for(event_type).claim_all(session, events):
            ...apply it in the same session...

``claim_all`` inserts ``(consumer, event_id)`` into the inbox table; the primary
key makes a second insert a no-op, so a redelivered, replayed or duplicated
event is skipped. Because the claim and the effect commit together, a crash
before commit leaves neither, and the redelivery applies both.

The claim also records each event's aggregate key and sequence, so a reader
can ask how far the replica has got for one key: :func:`applied_through`.
"""

import inspect
import logging

from nameko.extensions import DependencyProvider
from sqlalchemy import Table, func, select
from sqlalchemy.dialects.postgresql import insert

from reliable_events.handlers import ReliableEventHandler

_log = logging.getLogger(__name__)


class InboxClaim:
    """The inbox under one consumer's name; ``key_field`` names the events' aggregate."""

    def __init__(self, table: Table, consumer: str, key_field: str):
        self._table = table
        self.consumer = consumer
        self.key_field = key_field

    def claim_all(self, session, events: list) -> list:
        """Record every event of ``events`` in one round trip; return those that
        were not applied before (each once, in the order given)."""
        if not events:
            return []  # an empty parameter list would insert one row of defaults
        first = {}
        for event in events:
            first.setdefault(event["event_id"], event)
        # Sorted, so two batches that share an event id lock it in the same order.
        rows = [
            {
                "consumer": self.consumer,
                "event_id": event_id,
                "event_type": event["event_type"],
                "aggregate_key": event[self.key_field],
                "sequence": event["sequence"],
            }
            for event_id, event in sorted(first.items())
        ]
        # Rows as parameters, not .values(rows): one cached statement for any
        # batch size (SQLAlchemy's insertmanyvalues sends it as one multi-row
        # INSERT), instead of compiling a new statement per batch.
        claimed = set(
            session.execute(
                insert(self._table).on_conflict_do_nothing().returning(self._table.c.event_id), rows
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


def consumer_names(service_cls) -> dict:
    """``{event_type: (consumer name, key field)}`` for every ``@reliable_handler``
    of ``service_cls``: the name is ``<service>.<handler method>``.

    The only place a consumer is named. Whatever applies an event type (its
    live handler, a rebuild from history) claims it under this one name, so
    the two dedupe each other; renaming the handler renames both.
    """
    names = {}
    for method_name, method in inspect.getmembers(service_cls, inspect.isfunction):
        for entrypoint in getattr(method, "nameko_entrypoints", ()):
            if isinstance(entrypoint, ReliableEventHandler):
                if entrypoint.event_type in names:
                    raise TypeError(f"{service_cls.__name__} has two handlers of {entrypoint.event_type}")
                names[entrypoint.event_type] = (
                    f"{service_cls.name}.{method_name}",
                    entrypoint.source.key_field_of(entrypoint.event_type),
                )
    return names


class Inbox:
    """What a worker sees: the claim for an event type, under its consumer's name."""

    def __init__(self, table: Table, service_cls):
        self._claims = {
            event_type: InboxClaim(table, consumer, key_field)
            for event_type, (consumer, key_field) in consumer_names(service_cls).items()
        }

    def claim_for(self, event_type: str) -> InboxClaim:
        """Raises ``KeyError`` for a type this service has no handler of."""
        return self._claims[event_type]


class InboxProvider(DependencyProvider):
    """Gives workers the service's :class:`Inbox` over ``table``."""

    def __init__(self, table: Table):
        self.table = table

    def setup(self):
        self.inbox = Inbox(self.table, self.container.service_cls)

    def get_dependency(self, worker_ctx):
        return self.inbox


def applied_through(table: Table, key: str, after=0):
    """A scalar subquery: the highest sequence ``n`` of aggregate ``key`` such
    that every event after..n was applied by some consumer of this inbox
    (``after`` if none). ``after`` (a number or an SQL expression): where the
    aggregate's history starts, 0 but for an aggregate erased and created
    again, whose earlier events are gone from the inbox.

    Events arrive out of order (a queue per event type), so "the highest
    sequence seen" can run ahead of a gap; a read-your-writes check needs the
    gapless prefix. Each consumer claims different event types, so their rows
    together cover the aggregate's history.
    """
    sequences = (
        select(table.c.sequence).where(table.c.aggregate_key == key, table.c.sequence > after).distinct().subquery()
    )
    ranked = select(
        sequences.c.sequence,
        func.row_number().over(order_by=sequences.c.sequence).label("rank"),
    ).subquery()
    # Sequences start after ``after`` with no repeats: a gap makes every later rank lag its sequence.
    return (
        select(func.coalesce(func.max(ranked.c.sequence), after))
        .where(ranked.c.sequence == ranked.c.rank + after)
        .scalar_subquery()
    )
