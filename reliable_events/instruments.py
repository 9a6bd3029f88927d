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
