"""A page of person's event history: the body of ``PersonService.event_history``
(``person/replica_sources.py``), which a new subscriber or a lost replica rebuilds
from (``score.rebuild``). Read only, from the outbox table, in ``position`` order.

**A settled head.** Positions are issued at insert time and transactions
commit in any order: a page read while a write with a lower position is
still in flight would skip that position, and a reader of the history alone
(a rebuild with no live consumer) would never see it. So each page first
reads the head under a SHARE lock on the outbox, which waits for every
transaction that wrote to it to end and holds new ones back for that one
statement: every position up to that head has committed, or never will. The
page stops at it.
"""

from sqlalchemy import text

from contracts.errors import HistoryTrimmed, InvalidInput
from person.models import history_retention, outbox
from reliable_events.retention import deleted_through

# The largest page event_history serves (about 0.26 MB of JSON per 1000 events).
HISTORY_PAGE_MAX = 5000
# How long a page waits for the writes in flight before it fails (the caller tries again).
SETTLE_TIMEOUT = "5s"
# The head: the highest position written, or deleted by the retention (a
# history it emptied still has its head where it was, not back at 0).
_HEAD = (
    f"SELECT greatest(coalesce(max(position), 0), (SELECT coalesce(max(deleted_through), 0)"
    f" FROM {history_retention.name} WHERE source = '{outbox.name}')) FROM {outbox.name}"
)
_SETTLED_HEAD = text(f"SET LOCAL lock_timeout = '{SETTLE_TIMEOUT}'; LOCK TABLE outbox IN SHARE MODE; {_HEAD}")


def settled_head(session) -> int:
    """The highest position in the history such that every lower one has
    committed or never will (see above); 0 for none. Ends the session's
    transaction: what follows reads in a transaction of its own."""
    head = session.execute(_SETTLED_HEAD).scalar_one()
    session.commit()  # the lock goes
    return head


def head(session) -> int:
    """The highest position committed (or deleted by the retention), not
    waiting for the writes in flight: how far a reader has to go."""
    return session.execute(text(_HEAD)).scalar_one()


def refuse_trimmed(session, after_position: int) -> None:
    """``HistoryTrimmed`` if the retention policy deleted events above
    ``after_position`` (reliable_events/retention.py). Read after the page:
    the deletions and their record commit together, so a record read then
    covers every row the page could have missed (read before, a deletion
    committing in between would go unseen)."""
    through = deleted_through(session, history_retention, outbox.name)
    if after_position < through:
        raise HistoryTrimmed(
            f"Events up to position {through} were deleted by the retention policy (EVENT_HISTORY_RETENTION):"
            f" a page after position {after_position} may miss some. Rebuild from the start."
        )


def history_page(session, after_position, limit) -> dict:
    """The first ``limit`` (1..``HISTORY_PAGE_MAX``) events with ``position >
    after_position``, as ``PersonService.event_history`` answers them. Raises
    ``InvalidInput`` for a bad ``after_position`` or ``limit``, before any query;
    ``HistoryTrimmed`` for an ``after_position`` below what the retention deleted."""
    problems = {}
    if isinstance(after_position, bool) or not isinstance(after_position, int) or after_position < 0:
        problems["after_position"] = ["Must be an integer >= 0."]
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= HISTORY_PAGE_MAX:
        problems["limit"] = [f"Must be an integer between 1 and {HISTORY_PAGE_MAX}."]
    if problems:
        raise InvalidInput("Invalid history page.", problems)
    head = settled_head(session)
    position = outbox.c.position
    rows = session.execute(
        outbox.select()
        .with_only_columns(position, outbox.c.payload)
        .where(position > after_position, position <= head)
        .order_by(position)
        .limit(limit)
    ).all()
    refuse_trimmed(session, after_position)
    # A payload that is not an object (never written by person) is served
    # as it is, for the reader to report, rather than failing the page.
    events = [
        {**row.payload, "position": row.position}
        if isinstance(row.payload, dict)
        else {"payload": row.payload, "position": row.position}
        for row in rows
    ]
    return {
        "events": events,
        "last_position": rows[-1].position if rows else after_position,
        "head_position": head,
    }
