"""Publish a batch of messages and wait once for all their publisher confirms.

Waiting for each confirm costs a broker round trip per message; publishing the
whole batch and then collecting the ``basic.ack`` of every delivery tag keeps
the same guarantee (a message counts as sent only when the broker confirmed it
was routed to a queue and stored) at a fraction of the cost.

Messages are published ``mandatory``: one that no queue takes comes back as a
``basic.return`` (always before its ack) and is reported unroutable.
"""

import json
import logging
import time

import amqp
from eventlet.semaphore import Semaphore
from kombu import Connection

_log = logging.getLogger(__name__)

UNROUTABLE = "unroutable: no queue bound for this event type"
NACKED = "nacked by the broker"


class BatchPublisher:
    """One connection, used by one batch at a time, re-opened after any error."""

    def __init__(self, amqp_uri: str, exchange, confirm_timeout: float = 10.0):
        self.amqp_uri = amqp_uri
        self.exchange = exchange  # a kombu Exchange, declared on each new channel
        self.confirm_timeout = confirm_timeout
        self._connection = None
        self._channel = None
        self._lock = Semaphore()
        self._outcome, self._pending = {}, {}

    def publish(self, messages) -> dict:
        """Publish ``(message_id, routing_key, body, headers)`` tuples (headers may be None).

        Returns ``{message_id: None}`` for each message the broker confirmed and
        ``{message_id: "<error>"}`` for each it did not (unroutable, nacked, or
        not confirmed because the connection failed: all of those stay pending
        with the caller and are sent again later).
        """
        with self._lock:
            try:
                outcome = self._publish(messages)
                if NACKED in outcome.values():
                    # A quorum queue over its length limit (reject-publish)
                    # tells the channel, which then nacks everything for that
                    # queue even after the queue has room again: the next
                    # attempt needs a new channel.
                    self._reset()
                return outcome
            except Exception as exc:
                self._reset()
                error = f"publish failed: {exc!r}"
                _log.warning("batch of %d not confirmed: %s", len(messages), exc)
                return {message_id: self._outcome.get(message_id) or error for message_id, *_ in messages}

    def _publish(self, messages) -> dict:
        channel = self._ready_channel()
        # Filled before publishing: py-amqp may read acks while we still publish.
        self._outcome, self._pending = {}, {}
        for message_id, routing_key, body, headers in messages:
            self._tag += 1
            self._pending[self._tag] = message_id
            channel.basic_publish(
                amqp.Message(
                    json.dumps(body),
                    content_type="application/json",
                    content_encoding="utf-8",
                    delivery_mode=2,
                    message_id=message_id,
                    application_headers=headers or {},
                ),
                exchange=self.exchange.name,
                routing_key=routing_key,
                mandatory=True,
            )
        deadline = time.monotonic() + self.confirm_timeout
        while self._pending:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"{len(self._pending)} confirms missing after {self.confirm_timeout}s")
            self._connection.drain_events(timeout=remaining)
        return {message_id: self._outcome.get(message_id) for message_id, *_ in messages}

    def _ready_channel(self):
        if self._channel is None:
            self._connection = Connection(self.amqp_uri, connect_timeout=5)
            # fail fast: the rows stay pending and the next sweep tries again
            self._connection.ensure_connection(max_retries=1, interval_start=0, interval_step=0.2)
            channel = self._connection.channel()
            self.exchange(channel).declare()
            channel.confirm_select()
            channel.events["basic_ack"].add(self._on_ack)
            channel.events["basic_nack"].add(self._on_nack)
            channel.events["basic_return"].add(self._on_return)
            self._channel, self._tag = channel, 0
        return self._channel

    def _settle(self, delivery_tag, multiple, error):
        tags = [t for t in self._pending if t <= delivery_tag] if multiple else [delivery_tag]
        for tag in tags:
            message_id = self._pending.pop(tag, None)
            if message_id is not None and error is not None:
                self._outcome[message_id] = error

    def _on_ack(self, delivery_tag, multiple):
        self._settle(delivery_tag, multiple, None)

    def _on_nack(self, delivery_tag, multiple):
        self._settle(delivery_tag, multiple, NACKED)

    def _on_return(self, exc, exchange, routing_key, message):
        # Comes before the message's ack: remember it, the ack settles it.
        self._outcome[message.properties.get("message_id")] = UNROUTABLE

    def _reset(self):
        connection, self._connection, self._channel = self._connection, None, None
        if connection is not None:
            try:
                connection.close()
            except Exception:  # already broken; nothing more to release
                pass

    def close(self):
        with self._lock:
            self._reset()
