"""The broker queues the operator commands act on, named once."""

from contracts.events import EVENT_TYPES, PERSON_EVENTS


def event_queue(event_type: str) -> str:
    """Score's queue of an event type, as Nameko names it: ``evt-<source>-<event>--<service>.<handler>``."""
    return f"evt-{PERSON_EVENTS.service}-{event_type}--score.on_{event_type}"


def event_queues() -> list:
    """Score's event queues, one per event type."""
    return [event_queue(event_type) for event_type in EVENT_TYPES]
