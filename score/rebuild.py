"""Rebuilding score's replica from person's event history, while live events go on.

A new subscriber, or a replica that was lost (its database dropped and
migrated again), is filled from the history person keeps: its outbox, every
event ever written, served in ``position`` order by ``person.event_history``.
``ScoreService.rebuild_step`` does one page of it and ``ScoreService.rebuild``
all of them (``python -m ops.rebuild`` is the command line, with a progress
bar). What one page does (:func:`step`):

1. Fetch the events after the start position from person (RPC).
2. Validate each with the source's envelope (``PERSON_EVENTS.parse``), as a
   live event is validated.
3. Group them by event type (first type seen first, each group in position
   order) and apply each group through ``ScoreService._apply``: the live
   handlers' one apply path, which checks each event against the person's
   watermark (score's inbox). An event that arrives both live and from the
   history is applied by whichever commits first; the other finds it under
   the watermark and skips it. Order between groups does not matter: a score is a sum over a
   set of items, and an item before its ``person_created`` still makes the
   CPF known.
4. Save the page's last position as the checkpoint (``replica_checkpoint``,
   source ``"person"``). It is written after the page's transactions: a crash
   in between makes the next run apply that page again, which the inbox makes
   harmless.

**Exact on its own.** Positions are issued at insert time and transactions
commit in any order, but person serves each page only up to a settled head
(person/history.py): every lower position has committed or never will. So a
rebuild misses no event below the head it saw when it started, with or without
score's live handlers running, writes going on or not; what commits after
that head comes live (or from the next rebuild), and the rebuild does not
chase it.

**What is not applied, and why** (each counted in the step's result):

- ``skipped``: events already applied (live, or by an earlier rebuild) and
  events of a type score does not consume (none today; a later producer may
  add some). Both are normal.
- ``malformed``: a history event that is not a valid envelope, or whose data
  the replica cannot use (``MalformedEvent``). It is logged at ERROR with its
  position and event id, counted, its position listed in
  ``malformed_positions``, and the rebuild goes on: one bad event must not
  stop a replica from being rebuilt, and the live path would have parked it
  in a dead-letter queue, not applied it, either. The command line prints the
  count and the positions; fixing such an event is a matter for person's data.

Any other error (the database, person not answering in time) fails the step:
nothing after the last checkpoint is skipped, and running again resumes there.
"""

import logging
from collections.abc import Callable, Iterable

import eventlet
from nameko.exceptions import UnknownService
from sqlalchemy import func, select
from sqlalchemy.dialects.postgresql import insert

from contracts.envelope import MalformedEvent
from contracts.events import PERSON_EVENTS
from contracts.rebuild import DEFAULT_PAGE_SIZE, MALFORMED_LISTED, MAX_PAGE_SIZE, RebuildError
from score.models import ReplicaCheckpoint

_log = logging.getLogger(__name__)

SOURCE = PERSON_EVENTS.service  # the history's producer: the checkpoint's key
HISTORY_TIMEOUT = 30.0  # seconds person has to answer one page


def check_arguments(from_position, page_size) -> None:
    if from_position is not None and (
        isinstance(from_position, bool) or not isinstance(from_position, int) or from_position < 0
    ):
        raise RebuildError(f"from_position must be None (the checkpoint) or an integer >= 0, not {from_position!r}")
    if isinstance(page_size, bool) or not isinstance(page_size, int) or not 1 <= page_size <= MAX_PAGE_SIZE:
        raise RebuildError(f"page_size must be an integer between 1 and {MAX_PAGE_SIZE}, not {page_size!r}")


def read_checkpoint(session, source: str = SOURCE) -> int:
    """The position a rebuild of ``source`` has reached (0 if none ever ran)."""
    position = session.execute(
        select(ReplicaCheckpoint.position).where(ReplicaCheckpoint.source == source)
    ).scalar_one_or_none()
    return position or 0


def save_checkpoint(session, position: int, source: str = SOURCE) -> None:
    """Set ``source``'s checkpoint to ``position`` (backwards too: a rebuild
    from the start moves it from where it is to where that rebuild has got)."""
    stmt = insert(ReplicaCheckpoint).values(source=source, position=position)
    session.execute(
        stmt.on_conflict_do_update(
            index_elements=[ReplicaCheckpoint.source],
            set_={"position": stmt.excluded.position, "updated_at": func.now()},
        )
    )


def parse_page(events: list) -> tuple:
    """Validate a page's events as live ones are validated.

    Returns ``(parsed, positions, malformed)``: the valid events in position
    order (``position`` dropped, as parsing drops unknown fields),
    ``{event_id: position}``, and ``[(position, event_id, reason)]`` of the
    invalid ones.
    """
    parsed, positions, malformed = [], {}, []
    for raw in events:
        position = raw.get("position") if isinstance(raw, dict) else None
        try:
            event = PERSON_EVENTS.parse(raw)
        except MalformedEvent as exc:
            event_id = raw.get("event_id") if isinstance(raw, dict) else None
            malformed.append((position, event_id, str(exc)))
            continue
        parsed.append(event)
        positions[event["event_id"]] = position
    return parsed, positions, malformed


def group_by_type(events: Iterable) -> dict:
    """``{event_type: [events]}``: types in the order first seen, each list in
    the order given (position order)."""
    groups = {}
    for event in events:
        groups.setdefault(event["event_type"], []).append(event)
    return groups


def apply_group(apply: Callable, events: list) -> tuple:
    """Apply events of one type in one transaction; returns ``(applied, malformed)``.

    If the replica refuses the group's data (``MalformedEvent``, raised before
    anything is written), each event is applied alone, as the live handlers
    split a failing batch, so that only the bad ones are left out.
    """
    try:
        return len(apply(events)), []
    except MalformedEvent as exc:
        if len(events) == 1:
            return 0, [(events[0], str(exc))]
    applied, malformed = 0, []
    for event in events:
        done, bad = apply_group(apply, [event])
        applied += done
        malformed += bad
    return applied, malformed


def step(
    *,
    fetch: Callable,
    apply: Callable,
    db,
    event_types: Iterable,
    from_position=None,
    page_size: int = DEFAULT_PAGE_SIZE,
    source: str = SOURCE,
) -> dict:
    """Apply one page of ``source``'s history and move the checkpoint past it.

    ``fetch(after_position, limit)`` returns a page as ``person.event_history``
    does; ``apply(events)`` is ``ScoreService._apply``; ``db`` is the service's
    database dependency; ``event_types`` are the types score consumes.
    ``from_position`` None starts after the checkpoint (0 if none), 0 at the
    start of the history, ``n`` after position ``n``.

    Returns ``{"from_position", "position", "fetched", "applied", "skipped",
    "malformed", "malformed_positions", "head_position", "done"}``:
    ``position`` is where the next page starts, ``done`` whether it reached
    the head as person saw it, and ``fetched == applied + skipped + malformed``.
    """
    check_arguments(from_position, page_size)
    if from_position is None:
        with db.get_session() as session:
            from_position = read_checkpoint(session, source)
    page = fetch(from_position, page_size)
    raw = page["events"]
    parsed, positions, malformed = parse_page(raw)

    consumed = set(event_types)
    applied = ignored = 0
    for event_type, events in group_by_type(parsed).items():
        if event_type not in consumed:
            ignored += len(events)
            continue
        done, bad = apply_group(apply, events)
        applied += done
        malformed += [(positions[event["event_id"]], event["event_id"], reason) for event, reason in bad]

    malformed.sort(key=lambda bad: bad[0] if bad[0] is not None else -1)
    for at, event_id, reason in malformed:
        _log.error(
            "history event at position %s (%s) of %s is malformed, not applied: %s",
            at,
            event_id,
            source,
            reason,
            extra={"position": at, "event_id": event_id, "source": source, "error": reason},
        )

    position = page["last_position"]
    if raw:
        with db.get_session() as session:
            save_checkpoint(session, position, source)
    result = {
        "from_position": from_position,
        "position": position,
        "fetched": len(raw),
        "applied": applied,
        "skipped": len(raw) - applied - len(malformed),
        "malformed": len(malformed),
        "malformed_positions": sorted(p for p, _, _ in malformed if p is not None)[:MALFORMED_LISTED],
        "head_position": page["head_position"],
        "done": position >= page["head_position"],
    }
    _log.info(
        "rebuild from %s: page after %d to %d of %d, applied %d, skipped %d (%d of types not consumed), malformed %d",
        source,
        from_position,
        position,
        result["head_position"],
        applied,
        result["skipped"],
        ignored,
        result["malformed"],
        extra={key: result[key] for key in ("from_position", "position", "head_position", "applied", "skipped")},
    )
    return result


def fetch_history(proxy, timeout: float = HISTORY_TIMEOUT) -> Callable:
    """``fetch(after_position, limit)`` over RPC to the history's producer,
    with a deadline: a producer that is down fails the step, not hangs it."""

    def fetch(after_position: int, limit: int) -> dict:
        try:
            with eventlet.Timeout(timeout, False):
                return proxy.event_history(after_position=after_position, limit=limit)
        except UnknownService:
            raise RebuildError(f"{SOURCE} is not running (no queue for its RPC).") from None
        raise RebuildError(f"{SOURCE}.event_history did not answer within {timeout:g} s: is {SOURCE} running?")

    return fetch
