"""The envelope every event travels in, and the source that names its parts.

``{"event_id", "event_type", "occurred_at", <key>, "sequence", "data"}``:

- ``event_id``: UUID, unique per event; consumers dedupe on it.
- ``occurred_at``: ISO 8601 in UTC, when the producer wrote the event.
- ``<key>``: the aggregate the event belongs to, under the field name its
  producer chose for that type (:meth:`EventSource.key_field_of`; person's
  events say ``cpf``, its erasures ``cpf_hash``).
- ``sequence``: per-aggregate counter, +1 with each event of that aggregate,
  so a consumer can tell order and spot gaps without relying on the broker.
- ``data``: the event's body; money inside it is a decimal string.

Producer and consumers share one :class:`EventSource` (declared in the
producer's contract), so both sides build and read the same envelope. The
reliable-events machinery takes it as a parameter and imports nothing of it:
it calls ``new``, ``parse`` and ``key``, reads ``service`` and ``key_field``,
and treats ``malformed`` (raised by ``parse``, or by a handler) as an event no
retry can fix.
"""

import re
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cached_property
from typing import ClassVar

from marshmallow import EXCLUDE, Schema, ValidationError, fields, validate


class MalformedEvent(Exception):
    """The message is not an event this system can apply; retrying cannot help."""


@dataclass(frozen=True)
class EventSource:
    """A producer's events.

    ``service``: they are published on ``<service>.events`` (Nameko's event
    exchange). ``key_field``: the envelope field naming the aggregate, or for
    the event types in ``key_fields`` (``((event_type, field), ...)``) that
    type's own: a field says what it holds. The key must match ``key_pattern``
    (at most 64 characters: the outbox's and the inbox's ``aggregate_key``
    column), or for the event types in ``key_patterns`` that type's own.
    """

    service: str
    key_field: str
    key_pattern: str = r"\A[^\s]{1,64}\Z"
    key_patterns: tuple = ()
    key_fields: tuple = ()
    # What parse raises for a message that is not one of these events.
    malformed: ClassVar[type] = MalformedEvent

    def key_field_of(self, event_type: str) -> str:
        """The envelope field that names the aggregate in events of ``event_type``."""
        return self._key_fields.get(event_type, self.key_field)

    def new(self, event_type: str, key: str, sequence: int, data: dict, event_id=None, occurred_at=None) -> dict:
        """Build a new event. The id and time are fixed here, once, unless the
        producer fixed them already (person keeps them on the rows an event
        announced: its current state then reads as the same events)."""
        return {
            "event_id": event_id or str(uuid.uuid4()),
            "event_type": event_type,
            "occurred_at": (occurred_at or datetime.now(UTC)).astimezone(UTC).isoformat(),
            self.key_field_of(event_type): key,
            "sequence": sequence,
            "data": data,
        }

    def key(self, event: dict) -> str:
        return event[self.key_field_of(event["event_type"])]

    def parse(self, body: object) -> dict:
        """Validate a received event; ``event_id`` comes back as a string.
        Raises :class:`MalformedEvent`."""
        if not isinstance(body, dict):
            raise MalformedEvent(f"event body must be an object, got {type(body).__name__}")
        event_type = body.get("event_type")
        field = self.key_field_of(event_type) if isinstance(event_type, str) else self.key_field
        if field not in body and field != self.key_field and self.key_field in body:
            # Published before this type's key had a field of its own.
            body = {**body, field: body[self.key_field]}
        try:
            event = self._schema(field).load(body)
        except ValidationError as exc:
            raise MalformedEvent(f"invalid envelope: {exc.messages}") from exc
        pattern = self._key_patterns.get(event["event_type"], self._key_pattern)
        if not pattern.search(event[field]):
            raise MalformedEvent(
                f"invalid envelope: {{'{field}': ['Not a valid key of a {event['event_type']} event.']}}"
            )
        event["event_id"] = str(event["event_id"])
        return event

    @cached_property
    def _key_pattern(self) -> re.Pattern:
        return re.compile(self.key_pattern)

    @cached_property
    def _key_patterns(self) -> dict:
        return {event_type: re.compile(pattern) for event_type, pattern in self.key_patterns}

    @cached_property
    def _key_fields(self) -> dict:
        return dict(self.key_fields)

    @cached_property
    def _schemas(self) -> dict:
        # What a consumer accepts; unknown fields are dropped, anything else is malformed.
        return {
            field: Schema.from_dict(
                {
                    "event_id": fields.UUID(required=True),
                    "event_type": fields.String(required=True, validate=validate.Length(min=1)),
                    "occurred_at": fields.AwareDateTime(required=True),
                    field: fields.String(required=True, validate=validate.Length(min=1, max=64)),
                    "sequence": fields.Integer(required=True, strict=True, validate=validate.Range(min=1)),
                    "data": fields.Dict(required=True),
                },
                name=f"{self.service.title()}Envelope",
            )(unknown=EXCLUDE)
            for field in {self.key_field, *self._key_fields.values()}
        }

    def _schema(self, field: str) -> Schema:
        return self._schemas[field]
