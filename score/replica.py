"""Applying person's events to score's replica, and reading a score from it."""

from collections import Counter

from marshmallow import EXCLUDE, Schema, ValidationError, fields, validate
from sqlalchemy import func, select
from sqlalchemy.dialects.postgresql import insert

from contracts.scores import score_answer
from reliable_events.envelope import MalformedEvent
from reliable_events.inbox import applied_through
from score import rules
from score.models import KnownPerson, ScoredItem, processed_events

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


def note_people(session, events: list) -> None:
    """Make each event's CPF known (idempotent), keeping the highest sequence seen; one round trip."""
    if not events:
        return
    highest = {}
    for event in events:
        highest[event["cpf"]] = max(highest.get(event["cpf"], 0), event["sequence"])
    # One row per CPF (an upsert may not touch a row twice), in CPF order so that
    # concurrent batches lock the rows they share in the same order.
    rows = [{"cpf": cpf, "last_sequence": sequence} for cpf, sequence in sorted(highest.items())]
    session.execute(_UPSERT_PEOPLE, rows)


class ItemDataSchema(Schema):
    """The part of an item event's ``data`` that scoring needs."""

    class Meta:
        unknown = EXCLUDE

    item_id = fields.Integer(required=True, strict=True, validate=validate.Range(min=1))
    value = fields.Decimal(required=True, allow_nan=False, validate=validate.Range(min=0, min_inclusive=False))


_item_data = ItemDataSchema()


def add_items(session, events: list, kind: str) -> None:
    """Record the items of many ``<kind>_added`` events, in two round trips.

    Raises ``MalformedEvent`` (before writing anything) if any event's data is unusable.
    """
    if not events:
        return
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
    note_people(session, events)
    session.execute(_INSERT_ITEMS, rows)


def read_score(session, cpf: str, known: bool = False):
    """The score answer of ``cpf`` (:func:`contracts.scores.score_answer`), or
    None if the CPF is unknown here, unless ``known`` (the caller knows person
    has it): then the empty score.

    ``applied_sequence`` is the gapless prefix of the person's events applied
    (``last_sequence``, the highest seen, can run ahead of a gap): a reader
    who wrote sequence ``n`` sees that write once ``applied_sequence >= n``.

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
            applied_through(processed_events, cpf).label("applied_sequence"),
        )
        .outerjoin(ScoredItem, ScoredItem.cpf == KnownPerson.cpf)
        .where(KnownPerson.cpf == cpf)
    ).all()
    if not rows:
        return score_answer(cpf, {}, {}, 0, 0, None) if known else None
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
