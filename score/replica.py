"""Applying person's events to score's replica, and reading a score from it."""

from marshmallow import EXCLUDE, Schema, ValidationError, fields, validate
from sqlalchemy import func, select
from sqlalchemy.dialects.postgresql import insert

from reliable_events.envelope import MalformedEvent
from score import rules
from score.models import KnownPerson, ScoredItem


def note_person(session, event: dict) -> None:
    """Make the CPF known (idempotent), keeping the highest sequence seen."""
    stmt = insert(KnownPerson).values(cpf=event["cpf"], last_sequence=event["sequence"])
    session.execute(
        stmt.on_conflict_do_update(
            index_elements=[KnownPerson.cpf],
            set_={
                "last_sequence": func.greatest(KnownPerson.last_sequence, stmt.excluded.last_sequence),
                "updated_at": func.now(),
            },
        )
    )


class ItemDataSchema(Schema):
    """The part of an item event's ``data`` that scoring needs."""

    class Meta:
        unknown = EXCLUDE

    item_id = fields.Integer(required=True, strict=True, validate=validate.Range(min=1))
    value = fields.Decimal(required=True, allow_nan=False, validate=validate.Range(min=0, min_inclusive=False))


_item_data = ItemDataSchema()


def add_item(session, event: dict, kind: str) -> None:
    """Record one item from an ``<kind>_added`` event."""
    try:
        data = _item_data.load(event["data"])
    except ValidationError as exc:
        raise MalformedEvent(f"{event['event_type']} data: {exc.messages}") from exc
    note_person(session, event)
    session.add(
        ScoredItem(
            kind=kind,
            item_id=data["item_id"],
            cpf=event["cpf"],
            value=data["value"],
            event_id=event["event_id"],
            occurred_at=event["occurred_at"],
        )
    )


def read_score(session, cpf: str):
    """The score of ``cpf`` with its breakdown, or None if the CPF is unknown."""
    person = session.get(KnownPerson, cpf)
    if person is None:
        return None
    items = session.execute(select(ScoredItem.kind, ScoredItem.value).where(ScoredItem.cpf == cpf)).all()
    scored = rules.score_items((kind, value) for kind, value in items)
    counts = dict.fromkeys(rules.KINDS, 0)
    for kind, _ in items:
        counts[kind] += 1
    return {
        "cpf": cpf,
        "score": scored["score"],
        "breakdown": scored["breakdown"],
        "items": counts,
        "last_sequence": person.last_sequence,
        "updated_at": person.updated_at.isoformat(),
    }
