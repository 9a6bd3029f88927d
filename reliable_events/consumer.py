"""The queue consumer under every :class:`~reliable_events.handlers.ReliableEventHandler`
of a service: Nameko's, made to park what it cannot decode and to survive a
broker that goes away mid-ack."""

import logging

from amqp.exceptions import AMQPError
from nameko.messaging import QueueConsumer

_log = logging.getLogger(__name__)


class ReliableQueueConsumer(QueueConsumer):
    """Nameko's queue consumer, except that a body kombu cannot decode (not JSON,
    a content type it refuses) is dead-lettered instead of logged and acked, and
    that the prefetch is ``EVENT_PREFETCH`` (not ``max_workers``), so that batches
    can fill."""

    @property
    def prefetch_count(self):
        return max(self.container.max_workers, int(self.container.config["EVENT_PREFETCH"]))

    def ack_message(self, message):
        # Nameko ignores only amqp's ConnectionError; a socket reset by a node
        # that is going away (a restart, a cluster node stopped) would end the
        # worker's thread and with it the whole service. Unacked, the message
        # comes back after the reconnect and the inbox skips it.
        try:
            super().ack_message(message)
        except (OSError, AMQPError) as exc:
            _log.warning("could not ack a message (%r); the broker will deliver it again", exc)

    def requeue_message(self, message):
        try:
            super().requeue_message(message)
        except (OSError, AMQPError) as exc:
            _log.warning("could not requeue a message (%r); the broker will deliver it again", exc)

    def on_decode_error(self, message, exc):
        info = message.delivery_info
        for provider in self._providers:
            queue = provider.queue
            # Routed from the event exchange, or back from a retry queue by name.
            if (info.get("exchange") == queue.exchange.name and info.get("routing_key") == queue.routing_key) or (
                info.get("exchange") == "" and info.get("routing_key") == queue.name
            ):
                provider._dead_letter(message, f"undecodable body: {exc!r}", attempts=1)
                return
        _log.error("undecodable message on %s with no handler to park it: %r", info, exc)
        message.ack()
