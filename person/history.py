"""A page of person's event history: the body of ``PersonService.event_history``
(``person/service.py``), which a new subscriber or a lost replica rebuilds
from (``score.rebuild``). Read only, from the outbox table, in ``position`` order.
"""

from contracts.errors import InvalidInput
from person.models import outbox

# The largest page event_history serves (about 0.26 MB of JSON per 1000 events).
HISTORY_PAGE_MAX = 5000


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
    position = outbox.c.position
    rows = session.execute(
        outbox.select()
        .with_only_columns(position, outbox.c.payload)
        .where(position > after_position)
        .order_by(position)
        .limit(limit)
    ).all()
    # Read after the page, so it is never below the page's last position.
    head = session.execute(
        outbox.select().with_only_columns(position).order_by(position.desc()).limit(1)
    ).scalar_one_or_none()
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
        "head_position": head or 0,
    }
