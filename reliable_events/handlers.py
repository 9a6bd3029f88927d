"""The event handler entrypoint every consumer uses.

``@reliable_handler("person", "income_added")`` is Nameko's ``@event_handler``
(same exchange, same queue name ``evt-person-income_added--<service>.<method>``,
durable queue, ack after the worker returns) that also validates the envelope
and hands the method a parsed event dict whose ``event_id`` is a string.
"""

import logging

from nameko.events import EventHandler

from reliable_events.envelope import MalformedEvent, parse_envelope

_log = logging.getLogger(__name__)


class ReliableEventHandler(EventHandler):
    def handle_message(self, body, message):
        try:
            event = parse_envelope(body)
        except MalformedEvent as exc:
            _log.error(
                "rejected malformed event on %s (message_id=%s): %s",
                self.queue.name,
                message.properties.get("message_id"),
                exc,
            )
            self.queue_consumer.ack_message(message)
            return
        super().handle_message(event, message)


reliable_handler = ReliableEventHandler.decorator
