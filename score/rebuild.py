"""Rebuilding score's replica from person's current state and its history's tail.

A new subscriber, or a replica that was lost (its database dropped and
migrated again), is filled from person: first its current state, read as the
events that built it (``person.current_state``, person/state.py: every
erasure, then every person with its items, each as the event that announced
it, with that event's id and sequence), then its event history after the
state's first page (``person.event_history``, person/history.py), which
person keeps only ``EVENT_HISTORY_RETENTION`` long.
``ScoreService.rebuild_step`` does one page and ``ScoreService.rebuild``
all of them (``python -m ops.rebuild`` is the command line, with a progress
bar). What one page does (:func:`step`):

1. Fetch the next page from person (RPC): of the state while the checkpoint
   says so, then of the history after the position the state started at.
2. Validate each event with the source's envelope (``PERSON_EVENTS.parse``),
   as a live event is validated.
3. Group them by event type (first type seen first: a state page's erasures
   come before its people) and apply each group through
   ``ScoreService._apply``: the live handlers' one apply path, which checks
   each event against the person's watermark (score's inbox). An event that
   arrives both live and from person, or from the state and from the tail,
   is applied by whichever commits first; the other finds it under the
   watermark and skips it. Order between groups does not matter: a score is
   a sum over a set of items, and an item before its ``person_created``
   still makes the CPF known.
4. Save the checkpoint (``replica_checkpoint``, source ``"person"``): the
   state's next page, or the tail's last position. It is written after the
   page's transactions: a crash in between makes the next run apply that
   page again, which the inbox makes harmless.

**Exact on its own.** The state's first page reads the history's settled
head before the state (person/history.py: every lower position has
committed or never will), so every event at or below that head is in the
state the pages read, and the tail brings every event after it, each tail
page also stopping at a settled head. So with or without score's live
handlers running, writes going on or not, a rebuild misses no event below
the head it reaches, and applies none twice. Erased people stay erased: the
erasures come first, as tombstones, and their people are not in the state.
What commits after the head the loop aims at (the state's last page's)
comes live, or with the next rebuild, which resumes from the checkpoint.

**Needs no history older than the rebuild.** Only the tail since the state's
first page is read. A rebuild resumed from a tail position the retention has
passed is refused (``HistoryTrimmed`` from person, a ``RebuildError`` here):
run it from the start.

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
from contracts.errors import HistoryTrimmed
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


def read_checkpoint(session, source: str = SOURCE) -> tuple[int, str | None] | None:
    """Where a rebuild of ``source`` has got: ``(position, state_after)``
    (see :class:`~score.models.ReplicaCheckpoint`), None if none ever ran."""
    row = session.execute(
        select(ReplicaCheckpoint.position, ReplicaCheckpoint.state_after).where(ReplicaCheckpoint.source == source)
    ).one_or_none()
    return None if row is None else (row.position, row.state_after)


def save_checkpoint(session, position: int, state_after: str | None = None, source: str = SOURCE) -> None:
    """Set ``source``'s checkpoint (backwards too: a rebuild from the start
    moves it from where it is to where that rebuild has got)."""
    stmt = insert(ReplicaCheckpoint).values(source=source, position=position, state_after=state_after)
    session.execute(
        stmt.on_conflict_do_update(
            index_elements=[ReplicaCheckpoint.source],
            set_={
                "position": stmt.excluded.position,
                "state_after": stmt.excluded.state_after,
                "updated_at": func.now(),
            },
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
    fetch_state: Callable,
    apply: Callable,
    db,
    event_types: Iterable,
    from_position=None,
    page_size: int = DEFAULT_PAGE_SIZE,
    source: str = SOURCE,
) -> dict:
    """Apply one page, of ``source``'s current state or of its history's
    tail, and move the checkpoint past it.

    ``fetch(after_position, limit)`` returns a history page as
    ``person.event_history`` does, ``fetch_state(after, limit)`` a state page
    as ``person.current_state`` does; ``apply(events)`` is
    ``ScoreService._apply``; ``db`` is the service's database dependency;
    ``event_types`` are the types score consumes. ``from_position`` 0 starts
    from the start (the state's first page), ``n`` the history after
    position ``n``, None where the checkpoint says (the start if none).

    Returns ``{"phase", "from_position", "position", "fetched", "applied",
    "skipped", "malformed", "malformed_positions", "head_position", "done"}``:
    ``phase`` is ``"state"`` or ``"history"``; ``position`` is where the
    history's tail starts or goes on; ``head_position`` the history's head
    as person saw it; ``done`` whether the tail reached it (never after a
    state page: the tail comes next); ``fetched == applied + skipped + malformed``.
    """
    check_arguments(from_position, page_size)
    state_after = None
    if from_position is not None:
        reading_state = from_position == 0
    else:
        with db.get_session() as session:
            checkpoint = read_checkpoint(session, source)
        if checkpoint is None:
            reading_state = True
        else:
            from_position, state_after = checkpoint
            reading_state = state_after is not None
    if reading_state:
        page = fetch_state(state_after, page_size)
        # The first page's head (settled) is where the tail starts.
        tail_from = page["head_position"] if state_after is None else from_position
        position = tail_from
    else:
        page = fetch(from_position, page_size)
        tail_from, position = from_position, page["last_position"]
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
            "%s event at position %s (%s) of %s is malformed, not applied: %s",
            "state" if reading_state else "history",
            at,
            event_id,
            source,
            reason,
            extra={"position": at, "event_id": event_id, "source": source, "error": reason},
        )

    if reading_state or raw:
        with db.get_session() as session:
            save_checkpoint(session, position, page["next"] if reading_state else None, source)
    result = {
        "phase": "state" if reading_state else "history",
        "from_position": tail_from,
        "position": position,
        "fetched": len(raw),
        "applied": applied,
        "skipped": len(raw) - applied - len(malformed),
        "malformed": len(malformed),
        "malformed_positions": sorted(p for p, _, _ in malformed if p is not None)[:MALFORMED_LISTED],
        "head_position": page["head_position"],
        "done": not reading_state and position >= page["head_position"],
    }
    _log.info(
        "rebuild from %s: %s page, tail from %d to %d of %d, applied %d, skipped %d (%d of types not consumed), "
        "malformed %d",
        source,
        result["phase"],
        tail_from,
        position,
        result["head_position"],
        applied,
        result["skipped"],
        ignored,
        result["malformed"],
        extra={key: result[key] for key in ("phase", "from_position", "position", "head_position", "applied")},
    )
    return result


def fetch_from(proxy, timeout: float = HISTORY_TIMEOUT) -> tuple[Callable, Callable]:
    """``(fetch, fetch_state)`` for :func:`step`, over RPC to the source,
    each with a deadline: a source that is down fails the step, not hangs it."""

    def call(method: str, **arguments) -> dict:
        try:
            with eventlet.Timeout(timeout, False):
                return getattr(proxy, method)(**arguments)
        except UnknownService:
            raise RebuildError(f"{SOURCE} is not running (no queue for its RPC).") from None
        except HistoryTrimmed as exc:
            raise RebuildError(f"{exc} (from position 0, or --from-start)") from None
        raise RebuildError(f"{SOURCE}.{method} did not answer within {timeout:g} s: is {SOURCE} running?")

    def fetch(after_position: int, limit: int) -> dict:
        return call("event_history", after_position=after_position, limit=limit)

    def fetch_state(after: str | None, limit: int) -> dict:
        return call("current_state", after=after, limit=limit)

    return fetch, fetch_state
