"""The queue consumer under every :class:`~reliable_events.handlers.ReliableEventHandler`
of a service: Nameko's, made to park what it cannot decode, to survive a
broker that goes away mid-ack, and to ack a batch with one frame when it can."""

import logging
from functools import partial

from amqp.exceptions import AMQPError
from kombu import Consumer
from nameko.messaging import QueueConsumer

_log = logging.getLogger(__name__)


class _DeliveryRecordingConsumer(Consumer):
    """kombu's consumer, telling ``delivered`` each delivery's tag before anything
    else sees it (its decoding included)."""

    def __init__(self, channel, *args, delivered, **kwargs):
        self._delivered = delivered
        super().__init__(channel, *args, **kwargs)

    def _receive_callback(self, message):
        self._delivered(message.delivery_tag)
        return super()._receive_callback(message)


class ReliableQueueConsumer(QueueConsumer):
    """Nameko's queue consumer, except that a body kombu cannot decode (not JSON,
    a content type it refuses) is dead-lettered instead of logged and acked,
    that the prefetch is ``EVENT_PREFETCH`` (not ``max_workers``), so that batches
    can fill, and that a batch is acked with one frame when that acks nothing
    else (:meth:`ack_messages`): on a quorum queue each ack frame is an entry
    in its log."""

    @property
    def prefetch_count(self):
        return max(self.container.max_workers, int(self.container.config["EVENT_PREFETCH"]))

    # The delivery tags of this connection's channel not yet acked or requeued:
    # a multiple ack settles every one up to its tag, so it is sent only when
    # those are exactly the batch's.
    _channel = None
    _unsettled: set = frozenset()

    def get_consumers(self, consumer_cls, channel):
        # Called on every (re)connection: tags start again on the new channel.
        self._channel, self._unsettled = channel, set()
        recording = partial(
            _DeliveryRecordingConsumer, channel, on_decode_error=self.on_decode_error, delivered=self._unsettled.add
        )
        return super().get_consumers(recording, channel)

    def ack_messages(self, messages) -> None:
        """Ack a batch's ``messages``: with one multiple ack when no other
        message of the channel delivered before the last of them is unsettled
        (a batch taken in arrival order, the batches before it done), else
        each alone."""
        tags = {message.delivery_tag for message in messages}
        last = max(tags)
        in_order = all(message.channel is self._channel for message in messages) and tags <= self._unsettled
        if len(messages) < 2 or not in_order or any(t <= last and t not in tags for t in self._unsettled):
            for message in messages:
                self.ack_message(message)
            return
        self._unsettled -= tags
        if self._channel.connection:  # closed: the broker has them back already
            self._settle(lambda: self._channel.basic_ack(last, multiple=True), "ack")

    def ack_message(self, message):
        self._settled(message)
        self._settle(lambda: super(ReliableQueueConsumer, self).ack_message(message), "ack")

    def requeue_message(self, message):
        self._settled(message)
        self._settle(lambda: super(ReliableQueueConsumer, self).requeue_message(message), "requeue")

    def _settled(self, message):
        if message.channel is self._channel:
            self._unsettled.discard(message.delivery_tag)

    def _settle(self, send, what):
        # Nameko ignores only amqp's ConnectionError; a socket reset by a node
        # that is going away (a restart, a cluster node stopped) would end the
        # worker's thread and with it the whole service. Unsettled, a message
        # comes back after the reconnect and the inbox skips it.
        try:
            send()
        except (OSError, AMQPError) as exc:
            _log.warning("could not %s a message (%r); the broker will deliver it again", what, exc)

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
        self.ack_message(message)
