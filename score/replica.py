"""Applying person's events to score's replica, and reading a score from it.

**Erasure.** A ``person_erased`` event (keyed by the CPF's hash, never the
CPF) deletes the person's rows here, its inbox rows included, and leaves a
tombstone (:class:`~score.models.ErasedPerson`): the hash and the erasure's
sequence. Every batch of events passes :func:`admit` first, which drops the
events of an erased person numbered up to its tombstone: still in flight when
the erasure was applied, retried from a retry queue, or read from the history
by a rebuild. A person created again with the CPF is numbered after the
erasure by person, so its events pass.

An erasure and a batch holding the same person's events are ordered by an
advisory lock on the person (:meth:`contracts.erasure.CpfHasher.lock_key`),
exclusive for the erasure and shared for the others: without it a batch that
read no tombstone could commit its rows just after the erasure deleted the
person's, and bring the person back.
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
from reliable_events.inbox import applied_through
from score import rules
from score.models import ErasedPerson, KnownPerson, ScoredItem, processed_events

_log = logging.getLogger(__name__)

# Statements built once and given the rows as parameters: SQLAlchemy caches
# them and sends each batch as one multi-row INSERT (insertmanyvalues), where
# .values(rows) compiled a new statement per batch size (most of the CPU of a
# catch-up went there).
_known = KnownPerson.__table__
_insert_known = insert(_known)
_UPSERT_PEOPLE = _insert_known.on_conflict_do_update(
    index_elements=[_known.c.cpf],
    set_={
        "last_sequence": func.greatest(_known.c.last_sequence, _insert_known.excluded.last_sequence),
        "updated_at": func.now(),
    },
)
_INSERT_ITEMS = insert(ScoredItem.__table__)

# Two statements in one round trip: the advisory locks of the batch's people
# (keys in one order for every batch: no deadlock), then their tombstones,
# read with a snapshot of its own (PostgreSQL takes one per statement), so an
# erasure that committed while the locks waited is seen.
_FIND_TOMBSTONES = "SELECT cpf_hash, sequence FROM erased_person WHERE cpf_hash = ANY(CAST(:hashes AS varchar[]))"
# A batch of events of the people takes their locks shared; an erasure, exclusively.
_LOCK_SHARED_AND_FIND_TOMBSTONES = text(
    f"SELECT pg_advisory_xact_lock_shared(k) FROM unnest(CAST(:keys AS bigint[])) AS k; {_FIND_TOMBSTONES}"
)
_LOCK_EXCLUSIVE_AND_FIND_TOMBSTONES = text(
    f"SELECT pg_advisory_xact_lock(k) FROM unnest(CAST(:keys AS bigint[])) AS k; {_FIND_TOMBSTONES}"
)
_ERASE = text(
    """
    WITH gone AS (DELETE FROM known_person WHERE cpf_hash = ANY(CAST(:hashes AS varchar[])) RETURNING cpf),
         items AS (DELETE FROM scored_item s USING gone WHERE s.cpf = gone.cpf),
         inbox AS (DELETE FROM processed_events p USING gone WHERE p.aggregate_key = gone.cpf),
         tombstones AS (
             INSERT INTO erased_person (cpf_hash, sequence)
             SELECT * FROM unnest(CAST(:hashes AS varchar[]), CAST(:sequences AS int[]))
             ON CONFLICT (cpf_hash) DO UPDATE
                 SET sequence = greatest(erased_person.sequence, excluded.sequence), erased_at = now()
         )
    SELECT cpf FROM gone ORDER BY cpf
    """
)


def admit(session, events: list, hashes: dict, erasing: bool) -> list:
    """Lock the people of ``events`` against erasure (``erasing``: to erase
    them) and return the events not dropped by a tombstone, in order.

    ``hashes``: each event's key -> the person's CPF hash (an erasure's key is
    the hash already)."""
    people = sorted(set(hashes.values()))
    keys = sorted({CpfHasher.lock_key(h) for h in people})
    statement = _LOCK_EXCLUSIVE_AND_FIND_TOMBSTONES if erasing else _LOCK_SHARED_AND_FIND_TOMBSTONES
    tombstones = dict(session.execute(statement, {"keys": keys, "hashes": people}).all())
    if not tombstones:
        return events
    admitted = []
    for event in events:
        erased = tombstones.get(hashes[PERSON_EVENTS.key(event)])
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
    return admitted


def erase(session, events: list, hashes: dict) -> list:
    """Apply ``person_erased`` events: delete each person's rows (its items,
    its inbox rows) and keep its tombstone; the CPFs erased here."""
    if not events:
        return []
    highest = {}
    for event in events:
        highest[event["cpf_hash"]] = max(highest.get(event["cpf_hash"], 0), event["sequence"])
    people = sorted(highest)
    return session.execute(_ERASE, {"hashes": people, "sequences": [highest[h] for h in people]}).scalars().all()


def note_people(session, events: list, hashes: dict) -> list:
    """Make each event's CPF known (idempotent), keeping the highest sequence
    seen; one round trip. The CPFs, in order."""
    if not events:
        return []
    highest = {}
    for event in events:
        highest[event["cpf"]] = max(highest.get(event["cpf"], 0), event["sequence"])
    # One row per CPF (an upsert may not touch a row twice), in CPF order so that
    # concurrent batches lock the rows they share in the same order.
    cpfs = sorted(highest)
    rows = [{"cpf": cpf, "cpf_hash": hashes[cpf], "last_sequence": highest[cpf]} for cpf in cpfs]
    session.execute(_UPSERT_PEOPLE, rows)
    return cpfs


class ItemDataSchema(Schema):
    """The part of an item event's ``data`` that scoring needs."""

    class Meta:
        unknown = EXCLUDE

    item_id = fields.Integer(required=True, strict=True, validate=validate.Range(min=1))
    value = fields.Decimal(required=True, allow_nan=False, validate=validate.Range(min=0, min_inclusive=False))


_item_data = ItemDataSchema()


def add_items(session, events: list, hashes: dict, kind: str) -> list:
    """Record the items of many ``<kind>_added`` events, in two round trips;
    the CPFs, in order.

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
    cpfs = note_people(session, events, hashes)
    session.execute(_INSERT_ITEMS, rows)
    return cpfs


def _erased_through(cpf_hash: str):
    """A scalar subquery: the sequence of the person's last erasure applied here; 0 if none."""
    tombstone = select(ErasedPerson.sequence).where(ErasedPerson.cpf_hash == cpf_hash).scalar_subquery()
    return func.coalesce(tombstone, 0)


def erased_through(session, cpf_hash: str) -> int:
    """The sequence of the person's last erasure applied here; 0 if none."""
    return session.execute(select(_erased_through(cpf_hash))).scalar_one()


def read_score(session, cpf: str, cpf_hash: str, known: bool = False):
    """The score answer of ``cpf`` (:func:`contracts.scores.score_answer`), or
    None if the CPF is unknown here, unless ``known`` (the caller knows person
    has it): then the empty score.

    ``applied_sequence`` is the gapless prefix of the person's events applied
    (``last_sequence``, the highest seen, can run ahead of a gap): a reader
    who wrote sequence ``n`` sees that write once ``applied_sequence >= n``.
    For a person created again after an erasure the prefix starts after the
    erasure's sequence.

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
            applied_through(processed_events, cpf, after=_erased_through(cpf_hash)).label("applied_sequence"),
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
