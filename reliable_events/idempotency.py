"""Safe client retries: a request with an ``Idempotency-Key`` takes effect once.

This protects against a client's retries; a redelivery by the broker of the
same RPC request is caught without a row of its own, by the request id on the
outbox row (:mod:`reliable_events.group_commit`). The key is claimed in the
same transaction as the write it protects, and the response is stored with
it. So:

- a retry with the same key and the same request gets the stored response and
  writes nothing;
- the same key with a different request is refused (:class:`KeyReused`);
- two requests with one key at once: the second waits on the first's row lock,
  then gets the first's response;
- a request that fails rolls its key back with everything else, so a retry
  runs again.

Keys older than ``IDEMPOTENCY_KEY_TTL`` seconds (config.yml; one day) are
deleted by :meth:`IdempotencyKeys.purge_expired`, which the owning service
calls from a timer.
"""

import hashlib
import json

from nameko.extensions import DependencyProvider
from sqlalchemy import Column, DateTime, MetaData, String, Table, func, select, text
from sqlalchemy.dialects.postgresql import JSONB, insert


class KeyReused(Exception):
    """The key was used before for a different request."""


def idempotency_table(metadata: MetaData, key_length: int, name: str = "idempotency_keys") -> Table:
    """The table of clients' keys; ``key_length``: the longest key a client may send."""
    return Table(
        name,
        metadata,
        Column("key", String(key_length), primary_key=True),
        Column("request_hash", String(64), nullable=False),
        Column("response", JSONB),
        Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now(), index=True),
        # The aggregate the write changed (its event's key), so that erasing
        # an aggregate also erases the answers stored about it.
        Column("aggregate_key", String(64), index=True),
    )


def request_hash(operation: str, *args) -> str:
    canonical = json.dumps([operation, *args], sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()


def claim(session, table: Table, key: str, digest: str):
    """Claim ``key`` for this request in ``session``'s transaction.

    Returns None when the caller should do the work (then :func:`store`), or
    the stored response of the earlier request with this key. Raises
    :class:`KeyReused` for a key used by a different request.
    """
    claimed = session.execute(
        insert(table).values(key=key, request_hash=digest).on_conflict_do_nothing().returning(table.c.key)
    ).first()
    if claimed is not None:
        return None
    stored_hash, response = session.execute(
        select(table.c.request_hash, table.c.response).where(table.c.key == key)
    ).one()
    if stored_hash != digest:
        raise KeyReused(f"Idempotency-Key {key!r} was already used for a different request.")
    return response


def store(session, table: Table, key: str, response, aggregate_key: str | None = None) -> None:
    session.execute(table.update().where(table.c.key == key).values(response=response, aggregate_key=aggregate_key))


class IdempotencyKeys(DependencyProvider):
    """Forgets keys older than ``IDEMPOTENCY_KEY_TTL``: :meth:`purge_expired`."""

    def __init__(self, table: Table):
        self.table = table

    def setup(self):
        self.ttl = int(self.container.config["IDEMPOTENCY_KEY_TTL"])

    def get_dependency(self, worker_ctx):
        return self

    def purge_expired(self, session) -> int:
        return session.execute(
            self.table.delete().where(self.table.c.created_at < func.now() - text(f"interval '{self.ttl} seconds'"))
        ).rowcount
