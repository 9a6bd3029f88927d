"""The envelope every event travels in.

``{"event_id", "event_type", "occurred_at", "cpf", "sequence", "data"}``:

- ``event_id``: UUID, unique per event; consumers dedupe on it.
- ``occurred_at``: ISO 8601 in UTC, when the producer wrote the event.
- ``cpf``: the aggregate the event belongs to (the field name is the
  producer's key; every event of this system is about one person).
- ``sequence``: per-aggregate counter, +1 with each event of that aggregate,
  so a consumer can tell order and spot gaps without relying on the broker.
- ``data``: the event's body; money inside it is a decimal string.
"""

import uuid
from datetime import UTC, datetime

from marshmallow import EXCLUDE, Schema, ValidationError, fields, validate

KEY_FIELD = "cpf"


def new_envelope(event_type: str, key: str, sequence: int, data: dict) -> dict:
    """Build a new event; the id and timestamp are fixed here, once."""
    return {
        "event_id": str(uuid.uuid4()),
        "event_type": event_type,
        "occurred_at": datetime.now(UTC).isoformat(),
        KEY_FIELD: key,
        "sequence": sequence,
        "data": data,
    }


class EnvelopeSchema(Schema):
    """What a consumer accepts; anything else is a malformed event."""

    class Meta:
        unknown = EXCLUDE

    event_id = fields.UUID(required=True)
    event_type = fields.String(required=True, validate=validate.Length(min=1))
    occurred_at = fields.AwareDateTime(required=True)
    cpf = fields.String(required=True, validate=validate.Regexp(r"\A[0-9]{11}\Z"))
    sequence = fields.Integer(required=True, strict=True, validate=validate.Range(min=1))
    data = fields.Dict(required=True)


class MalformedEvent(Exception):
    """The message is not an event this system can apply; retrying cannot help."""


_schema = EnvelopeSchema()


def parse_envelope(body: object) -> dict:
    """Validate a received event; ``event_id`` comes back as a string."""
    if not isinstance(body, dict):
        raise MalformedEvent(f"event body must be an object, got {type(body).__name__}")
    try:
        event = _schema.load(body)
    except ValidationError as exc:
        raise MalformedEvent(f"invalid envelope: {exc.messages}") from exc
    event["event_id"] = str(event["event_id"])
    return event
