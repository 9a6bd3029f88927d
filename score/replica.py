"""Applying person's events to score's replica, and reading a score from it.

**Erasure.** A ``person_erased`` event (keyed by the CPF's hash, never the
CPF) deletes the person's rows here, its inbox rows included, and leaves a
tombstone (:class:`~score.models.ErasedPerson`): the hash and the erasure's
sequence. Every batch of events passes :func:`admit` first, which drops the
events of an erased person numbered up to its tombstone: still in flight when
the erasure was applied, retried from a retry queue, or read from the history
by a rebuild. A person created again with the CPF is numbered after the
erasure by person, so its events pass.

**Waiting reads.** A read that wants a write the replica has not applied
yet registers in ``waiting_read`` (:func:`wait_for`), and score announces a
person's advance (``replica_advanced``, score/notices.py) only while a read
waits for it: no broker message per event otherwise. The registration takes
the person's lock too, so a batch either committed before it (the read after
it sees the batch) or reads it (and announces).

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
from collections import Counter

from marshmallow import EXCLUDE, Schema, ValidationError, fields, validate
from sqlalchemy import func, select, text
from sqlalchemy.dialects.postgresql import insert

from contracts.envelope import MalformedEvent
from contracts.erasure import CpfHasher
from contracts.events import PERSON_EVENTS
from contracts.scores import score_answer
from reliable_events.inbox import Watermark
from score import rules
from score.models import ErasedPerson, KnownPerson, ScoredItem

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
# A read's registration: the person's lock (as a batch takes it), then the
# row, kept until the later of the two bounds. Expired rows go meanwhile,
# those no other registration holds (one that waited for another's could
# deadlock with it).
_WAIT_FOR = text(
    """
    SELECT pg_advisory_xact_lock(:lock);
    DELETE FROM waiting_read WHERE cpf_hash IN (
        SELECT cpf_hash FROM waiting_read WHERE until < clock_timestamp() FOR UPDATE SKIP LOCKED
    );
    INSERT INTO waiting_read (cpf_hash, until)
    VALUES (:cpf_hash, clock_timestamp() + make_interval(secs => :seconds))
    ON CONFLICT (cpf_hash) DO UPDATE SET until = greatest(waiting_read.until, excluded.until)
    """
)
_ERASE = text(
    """
    WITH gone AS (DELETE FROM known_person WHERE cpf_hash = ANY(CAST(:hashes AS varchar[])) RETURNING cpf),
         items AS (DELETE FROM scored_item s USING gone WHERE s.cpf = gone.cpf),
         reads AS (DELETE FROM waiting_read WHERE cpf_hash = ANY(CAST(:hashes AS varchar[]))),
         tombstones AS (
             INSERT INTO erased_person (cpf_hash, sequence)
             SELECT * FROM unnest(CAST(:hashes AS varchar[]), CAST(:sequences AS int[]))
             ON CONFLICT (cpf_hash) DO UPDATE
                 SET sequence = greatest(erased_person.sequence, excluded.sequence), erased_at = now()
         )
    SELECT cpf FROM gone ORDER BY cpf
    """
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


def wait_for(session, cpf_hash: str, seconds: float) -> None:
    """Register a read waiting for the person's next events for ``seconds``:
    the batches that apply them announce it. Commit before reading again."""
    session.execute(_WAIT_FOR, {"lock": CpfHasher.lock_key(cpf_hash), "cpf_hash": cpf_hash, "seconds": seconds})


def erase(session, events: list) -> list:
    """Apply ``person_erased`` events: delete each person's rows (its items,
    its watermark) and keep its tombstone; the CPFs erased here."""
    if not events:
        return []
    highest = {}
    for event in events:
        highest[event["cpf_hash"]] = max(highest.get(event["cpf_hash"], 0), event["sequence"])
    people = sorted(highest)
    return session.execute(_ERASE, {"hashes": people, "sequences": [highest[h] for h in people]}).scalars().all()


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
                "occurred_at": event["occurred_at"],
            }
        )
    session.execute(_INSERT_ITEMS, rows)


def erased_through(session, cpf_hash: str) -> int:
    """The sequence of the person's last erasure applied here; 0 if none."""
    tombstone = select(ErasedPerson.sequence).where(ErasedPerson.cpf_hash == cpf_hash).scalar_subquery()
    return session.execute(select(func.coalesce(tombstone, 0))).scalar_one()


def read_score(session, cpf: str, cpf_hash: str, known: bool = False):
    """The score answer of ``cpf`` (:func:`contracts.scores.score_answer`), or
    None if the CPF is unknown here, unless ``known`` (the caller knows person
    has it): then the empty score.

    ``applied_sequence`` is the gapless prefix of the person's events applied
    (its watermark's ``through``; ``last_sequence``, the highest applied, can
    run ahead of a gap): a reader who wrote sequence ``n`` sees that write
    once ``applied_sequence >= n``. For a person created again after an
    erasure the prefix starts after the erasure's sequence.

    One statement, so one snapshot: the sequences and the items are from the
    same moment even while batches commit in between (two reads could pair a
    fresh item list with an older sequence).
    """
    rows = session.execute(
        select(
            KnownPerson.last_sequence,
            KnownPerson.updated_at,
            ScoredItem.kind,
            ScoredItem.value,
            KnownPerson.applied_through.label("applied_sequence"),
        )
        .outerjoin(ScoredItem, ScoredItem.cpf == KnownPerson.cpf)
        .where(KnownPerson.cpf == cpf)
    ).all()
    if not rows:
        return score_answer(cpf, {}, {}, 0, erased_through(session, cpf_hash), None) if known else None
    items = [(row.kind, row.value) for row in rows if row.kind is not None]
    counts = Counter(kind for kind, _ in items)
    return score_answer(
        cpf,
        rules.score_items(items)["breakdown"],
        counts,
        rows[0].last_sequence,
        rows[0].applied_sequence,
        rows[0].updated_at,
    )
