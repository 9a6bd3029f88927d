"""Applying person's events to score's replica, and reading a score from it.

**Erasure.** A ``person_erased`` event (keyed by the CPF's hash, never the
CPF) deletes the person's rows here up to its sequence, its inbox rows
included (the events of a person created again that came before it, on
their own queues, stay), and leaves a
tombstone (:class:`~score.models.ErasedPerson`): the hash and the erasure's
sequence. Every batch of events passes :func:`admit` first, which drops the
events of an erased person numbered up to its tombstone: still in flight when
the erasure was applied, retried from a retry queue, or read from the history
by a rebuild. A person created again with the CPF is numbered after the
erasure by person, so its events pass.

**Waiting reads** are score/reads.py's; a batch reads its people's with its locks.

**Locks.** Every transaction that applies a person's events, an erasure
included, first takes an advisory lock on the person
(:meth:`contracts.erasure.CpfHasher.lock_key`), the people of a batch in key
order, then reads their tombstones and watermarks. It orders two batches of
one person (score's inbox is the watermark in ``known_person``: two batches
that both read it before either wrote it would both apply an event), and a
batch against an erasure (a batch that read no tombstone could commit its rows
just after the erasure deleted the person's, and bring the person back).
"""

import logging

from marshmallow import EXCLUDE, Schema, ValidationError, fields, validate
from sqlalchemy import func, text
from sqlalchemy.dialects.postgresql import insert

from contracts.cpf import cpfs_in
from contracts.envelope import MalformedEvent
from contracts.erasure import CpfHasher
from contracts.events import EVENT_TYPES, PERSON_CREATED, PERSON_ERASED, PERSON_EVENTS
from contracts.kinds import BY_EVENT_TYPE
from reliable_events.inbox import Watermark
from score.models import KnownPerson, ScoredItem

_log = logging.getLogger(__name__)

# Statements built once and given the rows as parameters: SQLAlchemy caches
# them and sends each batch as one multi-row INSERT (insertmanyvalues), where
# .values(rows) compiled a new statement per batch size (most of the CPU of a
# catch-up went there).
_known = KnownPerson.__table__
_insert_known = insert(_known)
# Under the person's lock the watermark written is computed from the latest
# one, so it replaces it.
_SAVE_MARKS = _insert_known.on_conflict_do_update(
    index_elements=[_known.c.cpf],
    set_={
        "applied_through": _insert_known.excluded.applied_through,
        "applied_above": _insert_known.excluded.applied_above,
        "last_sequence": _insert_known.excluded.last_sequence,
        "updated_at": func.now(),
    },
)
_INSERT_ITEMS = insert(ScoredItem.__table__)

# Two statements in one round trip: the advisory locks of the batch's people
# (keys in one order for every batch: no deadlock), then their tombstones,
# watermarks and waiting reads, read with a snapshot of its own (PostgreSQL
# takes one per statement), so what a transaction that held a lock committed
# is seen. ``cpfs`` holds NULL for an erasure's key, a hash (an erasure has no
# known row nor a read of its own to announce).
_LOCK_AND_READ = text(
    """
    SELECT pg_advisory_xact_lock(k) FROM unnest(CAST(:locks AS bigint[])) AS k;
    SELECT p.key, e.sequence, k.applied_through, k.applied_above, w.cpf_hash IS NOT NULL
    FROM unnest(CAST(:keys AS varchar[]), CAST(:cpfs AS varchar[]), CAST(:hashes AS varchar[]))
         AS p(key, cpf, cpf_hash)
    LEFT JOIN erased_person e ON e.cpf_hash = p.cpf_hash
    LEFT JOIN known_person k ON k.cpf = p.cpf
    LEFT JOIN waiting_read w ON w.cpf_hash = p.cpf_hash AND p.cpf IS NOT NULL AND w.until > clock_timestamp()
    """
)
# An erasure deletes what the person had up to its sequence: every row of a
# person whose highest event applied is at or below it; of a person created
# again whose events (numbered after the erasure) came first, a queue per
# event type or a retry having held the erasure back, only the items of
# before (an item's sequence; NULL on rows from before it was kept), and the
# watermark moves past the erasure (``erase``). Returns each person's CPF,
# whether its row went, and its watermark.
_ERASE = text(
    """
    WITH erased AS (
             SELECT * FROM unnest(CAST(:hashes AS varchar[]), CAST(:sequences AS int[])) AS e(cpf_hash, sequence)
         ),
         known AS (
             SELECT k.cpf, e.sequence AS erased, k.last_sequence <= e.sequence AS whole,
                    k.applied_through, k.applied_above
             FROM known_person k JOIN erased e ON e.cpf_hash = k.cpf_hash
         ),
         gone AS (DELETE FROM known_person k USING known WHERE k.cpf = known.cpf AND known.whole),
         items AS (
             DELETE FROM scored_item s USING known
             WHERE s.cpf = known.cpf AND (s.sequence IS NULL OR s.sequence <= known.erased)
         ),
         reads AS (DELETE FROM waiting_read WHERE cpf_hash = ANY(CAST(:hashes AS varchar[]))),
         tombstones AS (
             INSERT INTO erased_person (cpf_hash, sequence)
             SELECT cpf_hash, sequence FROM erased
             ON CONFLICT (cpf_hash) DO UPDATE
                 SET sequence = greatest(erased_person.sequence, excluded.sequence), erased_at = now()
         )
    SELECT cpf, erased, whole, applied_through, applied_above FROM known ORDER BY cpf
    """
)

_PAST_ERASURE = text(
    "UPDATE known_person SET applied_through = :through, applied_above = :above, updated_at = now() WHERE cpf = :cpf"
)


def admit(session, events: list, hashes: dict, erasing: bool) -> tuple[list, dict, set]:
    """Lock the people of ``events`` (see the module's docstring) and return
    the events not dropped by a tombstone, in order, each key's
    :class:`~reliable_events.inbox.Watermark`, and the keys a read waits for.

    ``hashes``: each event's key -> the person's CPF hash (an erasure's key is
    the hash already, ``erasing``). A person score holds no row of starts
    after its erasure, if any: person numbers a person created again after it.
    """
    keys = sorted(hashes)
    locks = sorted({CpfHasher.lock_key(h) for h in hashes.values()})
    found = session.execute(
        _LOCK_AND_READ,
        {
            "locks": locks,
            "keys": keys,
            "cpfs": [None if erasing else key for key in keys],
            "hashes": [hashes[key] for key in keys],
        },
    ).all()
    tombstones = {key: erased for key, erased, *_ in found if erased is not None}
    marks = {
        key: Watermark(through, tuple(above)) if through is not None else Watermark(tombstones.get(key, 0))
        for key, _, through, above, _ in found
    }
    watched = {key for key, *_, waiting in found if waiting}
    if not tombstones:
        return events, marks, watched
    admitted = []
    for event in events:
        erased = tombstones.get(PERSON_EVENTS.key(event))
        if erased is not None and event["sequence"] <= erased:
            _log.info(
                "dropped event %s %s %s of a person erased at sequence %s",
                event["event_id"],
                event["event_type"],
                event["sequence"],
                erased,
                extra={"event_id": event["event_id"], "sequence": event["sequence"]},
            )
            continue
        admitted.append(event)
    return admitted, marks, watched


def erase(session, events: list) -> list:
    """Apply ``person_erased`` events: delete each person's rows up to the
    erasure (its items, its watermark; see ``_ERASE``) and keep its
    tombstone. The CPFs whose replica changed."""
    if not events:
        return []
    highest = {}
    for event in events:
        highest[event["cpf_hash"]] = max(highest.get(event["cpf_hash"], 0), event["sequence"])
    people = sorted(highest)
    found = session.execute(_ERASE, {"hashes": people, "sequences": [highest[h] for h in people]}).all()
    # A person created again, whose events came first: all up to the erasure
    # is done with, and what it applied after stays.
    kept = [
        {"cpf": cpf, "through": mark.through, "above": list(mark.above)}
        for cpf, erased, whole, _, above in found
        if not whole
        for mark in [Watermark(erased, tuple(above)).with_applied(())]
    ]
    if kept:
        session.execute(_PAST_ERASURE, kept)
    return [cpf for cpf, *_ in found]


def save_marks(session, marks: dict, hashes: dict) -> list:
    """Write the people's moved watermarks (a person's first event makes it
    known); one round trip. The CPFs, in order."""
    if not marks:
        return []
    cpfs = sorted(marks)
    rows = [
        {
            "cpf": cpf,
            "cpf_hash": hashes[cpf],
            "applied_through": marks[cpf].through,
            "applied_above": list(marks[cpf].above),
            "last_sequence": marks[cpf].highest,
        }
        for cpf in cpfs
    ]
    session.execute(_SAVE_MARKS, rows)
    return cpfs


class ItemDataSchema(Schema):
    """The part of an item event's ``data`` that scoring needs."""

    class Meta:
        unknown = EXCLUDE

    item_id = fields.Integer(required=True, strict=True, validate=validate.Range(min=1))
    value = fields.Decimal(required=True, allow_nan=False, validate=validate.Range(min=0, min_inclusive=False))


_item_data = ItemDataSchema()


def add_items(session, events: list, kind: str) -> None:
    """Record the items of many ``<kind>_added`` events, in one round trip.

    Raises ``MalformedEvent`` (before writing anything) if any event's data is unusable.
    """
    if not events:
        return []
    rows = []
    for event in events:
        try:
            data = _item_data.load(event["data"])
        except ValidationError as exc:
            raise MalformedEvent(f"{event['event_type']} {event['event_id']} data: {exc.messages}") from exc
        rows.append(
            {
                "kind": kind,
                "item_id": data["item_id"],
                "cpf": event["cpf"],
                "value": data["value"],
                "event_id": event["event_id"],
                "sequence": event["sequence"],
                "occurred_at": event["occurred_at"],
            }
        )
    session.execute(_INSERT_ITEMS, rows)


def _effect(event_type):
    """What the fresh events of ``event_type`` write to the replica besides
    their people's watermarks (in the applying session)."""
    if event_type == PERSON_CREATED:
        return lambda session, events: None  # the watermark's row is the known person
    kind = BY_EVENT_TYPE[event_type]
    return lambda session, events: add_items(session, events, kind.name)


# An erasure's effect is all its own (erase); every other type's:
EFFECTS = {event_type: _effect(event_type) for event_type in EVENT_TYPES if event_type != PERSON_ERASED}


def names_any(hashes: set, hasher):
    """Whether a raw message names a person of ``hashes``: by a CPF-shaped
    string whose hash is one of them, or by one of them (an erasure's event)."""

    def names(raw: str) -> bool:
        return any(h in raw for h in hashes) or any(hasher.hash(cpf) in hashes for cpf in cpfs_in(raw))

    return names
