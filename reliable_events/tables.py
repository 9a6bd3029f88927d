"""Table definitions for the outbox and its retention, and the inbox's columns.

They are factories that attach to a service's own ``MetaData`` so that each
service keeps the tables in its own database and its Alembic migrations see them.
"""

from sqlalchemy import (
    BigInteger,
    Column,
    DateTime,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import ARRAY, JSONB, UUID


def outbox_table(metadata: MetaData, name: str = "outbox") -> Table:
    """Events waiting to be published, and the history of those that were.

    ``position`` is issued in insert order and never reused: it orders the
    history for a later replay. The relay finds work by state
    (``published_at IS NULL``), never by "highest position seen", because
    positions are issued at insert time and commit in any order.
    """
    return Table(
        name,
        metadata,
        Column("position", BigInteger, primary_key=True, autoincrement=True),
        Column("event_id", UUID(as_uuid=False), nullable=False, unique=True),
        Column("event_type", String(64), nullable=False),
        Column("aggregate_key", String(64), nullable=False),
        Column("sequence", Integer, nullable=False),
        Column("payload", JSONB, nullable=False),
        # Message headers to publish with: the writer's Nameko call ids, so the
        # consumer's worker (and its log lines) continue the same call chain.
        Column("headers", JSONB),
        Column(
            "created_at",
            DateTime(timezone=True),
            nullable=False,
            server_default=func.clock_timestamp(),
        ),
        Column("published_at", DateTime(timezone=True)),
        Column("attempts", Integer, nullable=False, server_default=text("0")),
        Column("last_error", Text),
        # The id of the request that wrote the event, if it gave one: unique, so
        # the same request delivered again cannot write again (group_commit.py).
        Column("request_id", String(200)),
        # The relay's only query: keep it an index scan however long the history.
        Index(
            f"ix_{name}_pending",
            "position",
            postgresql_where=text("published_at IS NULL"),
        ),
        Index(f"ux_{name}_request_id", "request_id", unique=True, postgresql_where=text("request_id IS NOT NULL")),
        # An aggregate's whole history, for its erasure (person/writes.py).
        Index(f"ix_{name}_aggregate", "aggregate_key"),
    )


def history_retention_table(metadata: MetaData, name: str = "history_retention") -> Table:
    """How far the retention policy (:mod:`reliable_events.retention`) has
    deleted each history: one row per outbox (``source``: its table's name).
    Published events up to position ``deleted_through`` may be gone; every
    event above it is still there.

    Called again on the same ``metadata``, it returns the table made the first
    time (so a service's models and its outbox share one)."""
    return Table(
        name,
        metadata,
        Column("source", String(64), primary_key=True),
        Column("deleted_through", BigInteger, nullable=False),
        Column("updated_at", DateTime(timezone=True), nullable=False, server_default=func.clock_timestamp()),
        keep_existing=True,
    )


def watermark_columns() -> list[Column]:
    """The columns a consumer adds to its own row per aggregate to keep its
    :class:`~reliable_events.inbox.Watermark` there: every sequence up to
    ``applied_through`` was applied, and those in ``applied_above``."""
    return [
        Column("applied_through", Integer, nullable=False),
        Column("applied_above", ARRAY(Integer), nullable=False, server_default=text("'{}'")),
    ]
