"""A page of person's event history: the body of ``PersonService.event_history``
(``person/service.py``), which a new subscriber or a lost replica rebuilds
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

from contracts.errors import InvalidInput
from person.models import outbox

# The largest page event_history serves (about 0.26 MB of JSON per 1000 events).
HISTORY_PAGE_MAX = 5000
# How long a page waits for the writes in flight before it fails (the caller tries again).
SETTLE_TIMEOUT = "5s"
_SETTLED_HEAD = text(
    f"SET LOCAL lock_timeout = '{SETTLE_TIMEOUT}'; LOCK TABLE outbox IN SHARE MODE;"
    " SELECT coalesce(max(position), 0) FROM outbox"
)


def history_page(session, after_position, limit) -> dict:
    """The first ``limit`` (1..``HISTORY_PAGE_MAX``) events with ``position >
    after_position``, as ``PersonService.event_history`` answers them. Raises
    ``InvalidInput`` for a bad ``after_position`` or ``limit``, before any query."""
    problems = {}
    if isinstance(after_position, bool) or not isinstance(after_position, int) or after_position < 0:
        problems["after_position"] = ["Must be an integer >= 0."]
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= HISTORY_PAGE_MAX:
        problems["limit"] = [f"Must be an integer between 1 and {HISTORY_PAGE_MAX}."]
    if problems:
        raise InvalidInput("Invalid history page.", problems)
    head = session.execute(_SETTLED_HEAD).scalar_one()
    session.commit()  # the lock goes; the page is read in a transaction of its own
    position = outbox.c.position
    rows = session.execute(
        outbox.select()
        .with_only_columns(position, outbox.c.payload)
        .where(position > after_position, position <= head)
        .order_by(position)
        .limit(limit)
    ).all()
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
