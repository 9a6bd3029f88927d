"""Dead letters as an operator's tool: list, inspect, replay, purge.

Each :class:`~reliable_events.handlers.ReliableEventHandler` parks what it could
not apply in ``<queue>.dead``. :class:`DeadLetters` gives a service's workers
(and so its RPC methods, ``nameko shell`` and ``ops.deadletters``) these
operations over all of that service's dead-letter queues.

Browsing a queue in AMQP means taking its messages: they are fetched unacked on
one channel and whatever is not replayed or purged is handed back when the
channel closes, so a listing never loses a message. A replay publishes the event
back to its handler's queue with publisher confirms before removing the dead
letter; the inbox makes a replayed event apply at most once.
"""

import logging

from kombu import Connection
from nameko.constants import AMQP_URI_CONFIG_KEY
from nameko.extensions import DependencyProvider

from reliable_events.handlers import ReliableEventHandler
from reliable_events.queues import ATTEMPT, DEAD_REASON, FIRST_FAILURE, LAST_ERROR, LAST_FAILURE

_log = logging.getLogger(__name__)

REPLAYED = "x-replayed"


def _body(message):
    """The decoded body, or its raw text when it cannot be decoded."""
    try:
        return message.payload
    except Exception:
        return _raw(message)


def _raw(message) -> str:
    raw = message.body
    return raw if isinstance(raw, str) else raw.decode("utf-8", "replace")


def _reason(headers):
    """Why it was parked: the handler's own reason, or the broker's (its delivery
    limit: the message kept coming back, say it crashed its consumer each time)."""
    if headers.get(DEAD_REASON):
        return headers[DEAD_REASON]
    deaths = headers.get("x-death") or []  # the broker's record, latest first
    if deaths:
        death = deaths[0]
        reason = f"dead-lettered by the broker: {death.get('reason')} on {death.get('queue')}"
        return f"{reason}; last error {headers[LAST_ERROR]}" if headers.get(LAST_ERROR) else reason
    return headers.get(LAST_ERROR)


def _summary(handler_queue, message):
    headers = message.headers or {}
    body = _body(message)  # an undecodable body is exactly what may be parked here
    event = body if isinstance(body, dict) else {}
    return {
        "queue": handler_queue,
        "event_id": event.get("event_id") or message.properties.get("message_id"),
        "event_type": event.get("event_type"),
        "reason": _reason(headers),
        "attempts": headers.get(ATTEMPT),
        "first_failure": headers.get(FIRST_FAILURE),
        "last_failure": headers.get(LAST_FAILURE),
    }


class DeadLetterOps:
    def __init__(self, amqp_uri, handlers):
        self._amqp_uri = amqp_uri
        self._handlers = handlers

    def depth(self) -> dict:
        """Messages parked per handler queue, without touching them."""
        depths = {}
        with Connection(self._amqp_uri) as conn:
            for handler in self._handlers:
                queue = handler.dead_letters(conn.channel())
                _, count, _ = queue.queue_declare(passive=False)
                depths[handler.queue.name] = count
        return depths

    def list(self, event_id=None) -> list:
        """A summary of every dead letter (or of one event's)."""
        return self._visit(event_id, lambda queue, message: _summary(queue, message))

    def inspect(self, event_id) -> list:
        """The full body and headers of one event's dead letters."""

        def detail(queue, message):
            return {
                **_summary(queue, message),
                "body": _body(message),
                "headers": message.headers,
            }

        return self._visit(event_id, detail)

    def replay(self, event_id=None) -> list:
        """Send dead letters (all, or one event's) back to their handler's queue."""

        def send_back(queue, message, producer):
            headers = {k: v for k, v in (message.headers or {}).items() if k != ATTEMPT}
            headers[REPLAYED] = True
            producer.publish(
                message.body,
                exchange="",
                routing_key=queue,
                headers=headers,
                content_type=message.content_type,
                content_encoding=message.content_encoding,
                message_id=message.properties.get("message_id"),
                delivery_mode=2,
                mandatory=True,
            )
            message.ack()
            _log.info("replayed dead letter %s to %s", message.properties.get("message_id"), queue)
            return _summary(queue, message)

        return self._visit(event_id, send_back, with_producer=True)

    def purge(self, event_id=None, match=None) -> list:
        """Delete dead letters (all, one event's, or those for which
        ``match(raw_body)`` is true) for good. The raw body is what ``match``
        sees, so a message too malformed to decode is matched too."""

        def drop(queue, message):
            message.ack()
            _log.warning("purged dead letter %s from %s", message.properties.get("message_id"), queue)
            return _summary(queue, message)

        return self._visit(event_id, drop, match)

    def _visit(self, event_id, action, match=None, with_producer=False):
        results = []
        # confirm_publish: a replayed message is acked only once the broker has it
        with Connection(self._amqp_uri, transport_options={"confirm_publish": True}) as conn:
            producer = conn.Producer() if with_producer else None
            for handler in self._handlers:
                channel = conn.channel()
                queue = handler.dead_letters(channel)
                queue.declare()
                try:
                    while (message := queue.get(no_ack=False)) is not None:
                        summary = _summary(handler.queue.name, message)
                        if event_id is not None and str(summary["event_id"]) != str(event_id):
                            continue
                        if match is not None and not match(_raw(message)):
                            continue
                        args = (handler.queue.name, message) + ((producer,) if producer else ())
                        results.append(action(*args))
                finally:
                    channel.close()  # hands back every message not acked above
        return results


class DeadLetters(DependencyProvider):
    """Gives workers :class:`DeadLetterOps` over this service's handlers."""

    def get_dependency(self, worker_ctx):
        handlers = sorted(
            (e for e in self.container.entrypoints if isinstance(e, ReliableEventHandler)),
            key=lambda e: e.queue.name,
        )
        return DeadLetterOps(self.container.config[AMQP_URI_CONFIG_KEY], handlers)
