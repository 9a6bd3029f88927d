"""What the reliable-events machinery counts, handed in by the service that
uses it (``observability.metrics.EVENT_METRICS``), so this package depends on
no metrics library: by default, :data:`NO_METRICS`, nothing is counted.

Example::

    >>> class Printed(EventMetrics):
    ...     def applied(self, event_type, lag_seconds):
    ...         print(event_type, lag_seconds)
    >>> Printed().applied("income_added", 0.02)
    income_added 0.02
"""

import logging

from nameko.constants import CALL_ID_STACK_CONTEXT_KEY, HEADER_PREFIX

_log = logging.getLogger("reliable_events.outbox")

# The header Nameko's own publishers carry the call ids in: an event carries
# its writer's, so the line that applies it joins the request that wrote it.
CALL_ID_STACK_HEADER = f"{HEADER_PREFIX}.{CALL_ID_STACK_CONTEXT_KEY}"


class EventMetrics:
    """The counts of the outbox and the handlers; each method does nothing here."""

    def published(self, event_type: str, path: str) -> None:
        """An event the broker confirmed; ``path``: ``commit`` or ``sweep``."""

    def publish_failed(self, event_type: str) -> None:
        """A publish attempt that left its event pending."""

    def applied(self, event_type: str, lag_seconds: float) -> None:
        """An event applied, ``lag_seconds`` after it occurred."""

    def duplicate(self, event_type: str) -> None:
        """An event the inbox had applied already."""

    def retried(self, event_type: str) -> None:
        """A failed event sent to a retry queue."""

    def dead_lettered(self, queue: str) -> None:
        """A message moved to ``queue``'s dead letters."""

    def history_deleted(self, rows: int) -> None:
        """``rows`` published events the retention policy deleted (:mod:`.retention`)."""


NO_METRICS = EventMetrics()


def event_fields(event: dict, key_field: str, **more) -> dict:
    """The ``extra`` of a log line about one event: its id, type, aggregate key
    (under the producer's name for it, ``key_field``) and sequence."""
    return {
        "event_id": event.get("event_id"),
        "event_type": event.get("event_type"),
        key_field: event.get(key_field),
        "sequence": event.get("sequence"),
        **more,
    }


def log_published(
    metrics: EventMetrics, key_field: str, envelope: dict, headers: dict | None, error: str | None, path: str, **more
) -> None:
    """One log line and the counters for one publish attempt (``path``:
    ``commit`` for the relay, ``sweep`` for the sweep); ``error`` is None when
    the broker confirmed it."""
    if error is None:
        metrics.published(envelope["event_type"], path)
        if not _log.isEnabledFor(logging.INFO):
            return  # per event: build the line's fields only if it is written
    else:
        metrics.publish_failed(envelope["event_type"])
    stack = (headers or {}).get(CALL_ID_STACK_HEADER)
    fields = event_fields(envelope, key_field, path=path, **more)
    if stack:
        fields.update(call_id_stack=stack, call_id=stack[-1])
    if error is None:
        _log.info("published event %s %s", envelope["event_id"], envelope["event_type"], extra=fields)
    else:
        _log.warning(
            "event %s %s left pending: %s",
            envelope["event_id"],
            envelope["event_type"],
            error,
            extra={**fields, "error": error},
        )
