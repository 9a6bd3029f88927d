"""Queues: Nameko's, declared with other properties; an event queue's retry
and dead-letter queues, and the headers a message moved there carries; a
process's own queues, named anew on every connection."""

import uuid
from functools import partial

from kombu import Queue
from nameko.messaging import QueueConsumer

# The headers of a message moved to a retry or dead-letter queue
# (reliable_events.handlers), read by reliable_events.deadletters.
ATTEMPT = "x-attempt"
FIRST_FAILURE = "x-first-failure"
LAST_FAILURE = "x-last-failure"
LAST_ERROR = "x-last-error"
DEAD_REASON = "x-dead-reason"

# Quorum, like the event queues: a classic queue lives on one node, and while
# that node is down no consumer can declare it, so the handler could not start
# consuming again. An expired message goes back to its event queue at least
# once (the broker keeps it until the event queue has taken it), which needs
# reject-publish overflow.
RETRY_QUEUE_ARGUMENTS = {
    "x-queue-type": "quorum",
    "x-dead-letter-strategy": "at-least-once",
    "x-overflow": "reject-publish",
}


def redeclared(queue: Queue, **properties) -> Queue:
    """``queue`` as Nameko made it (its name, exchange and binding), with other
    properties: durability, a queue type, arguments."""
    return Queue(queue.name, exchange=queue.exchange, routing_key=queue.routing_key, **properties)


def retry_queue_name(queue_name: str, attempt: int) -> str:
    return f"{queue_name}.retry.{attempt}"


def retry_queues(queue_name: str, delays) -> list:
    """The retry queues of an event queue: the n-th holds a failed event for the
    n-th delay, then hands it back to the event queue."""
    return [
        Queue(
            retry_queue_name(queue_name, attempt),
            durable=True,
            auto_delete=False,
            queue_arguments={
                **RETRY_QUEUE_ARGUMENTS,
                "x-message-ttl": int(delay * 1000),
                "x-dead-letter-exchange": "",
                "x-dead-letter-routing-key": queue_name,
            },
        )
        for attempt, delay in enumerate(delays, start=1)
    ]


def dead_letter_queue_name(queue_name: str) -> str:
    return f"{queue_name}.dead"


def dead_letter_queue(queue_name: str) -> Queue:
    return Queue(
        dead_letter_queue_name(queue_name),
        durable=True,
        auto_delete=False,
        queue_arguments={"x-queue-type": "quorum"},
    )


class ConnectionLossQueueConsumer(QueueConsumer):
    """The consumer of a process's own queues (:class:`QueuePerConnection`):
    Nameko's ``QueueConsumer``, except that

    - it tells its providers when its connection ends (``connection_lost()``),
      at once: their exclusive queues went with it, so nothing they wait for
      can come through them any more (Nameko's only notices when it connects
      again); and when a new connection consumes their new queues
      (``connection_ready()``): what was sent to them in between reached
      nobody;
    - it takes messages without acks: a message of a queue that lives and dies
      with this connection is lost with it whether acked or not, so an ack
      (a frame each way and the broker's work, per RPC reply) buys nothing.
      The providers' ``ack_message`` calls then send nothing (kombu skips a
      no-ack consumer's)."""

    def get_consumers(self, consumer_cls, channel):
        return super().get_consumers(partial(consumer_cls, no_ack=True), channel)

    def on_consume_ready(self, connection, channel, consumers, **kwargs):
        super().on_consume_ready(connection, channel, consumers, **kwargs)
        for provider in list(self._providers):
            provider.connection_ready()

    def consume(self, *args, **kwargs):
        # kombu's ConsumerMixin.run calls this once per connection; it ends
        # (raising) when the connection does.
        try:
            yield from super().consume(*args, **kwargs)
        finally:
            for provider in list(self._providers):
                provider.connection_lost()


class QueuePerConnection:
    """A provider on Nameko's ``QueueConsumer`` whose queue serves its process
    alone (RPC replies, notices): every (re)connection declares a queue of a
    new name, exclusive to that connection.

    Why not one name for the process's life: when a RabbitMQ node is lost, each
    surviving node deletes the non-replicated queues that lived on it, by name,
    some time after listing them (rabbitmq-server#6271 and #9798, open in
    3.x). A client that has meanwhile declared the same name again on a
    survivor has its new queue deleted under it: the consumer stays, the
    binding goes, and nothing reaches it again. A new name is out of reach of
    the old one's cleanup; exclusivity removes the old queue with its
    connection, so a reconnect leaves nothing behind.
    """

    queue_consumer = ConnectionLossQueueConsumer()

    def connection_lost(self) -> None:
        """The connection, and this provider's queue with it, is gone."""

    def connection_ready(self) -> None:
        """A connection consumes this provider's queue (after every (re)connection)."""

    def new_queue(self, name_suffix: str) -> Queue:
        raise NotImplementedError

    @property
    def queue(self) -> Queue:
        # Nameko's QueueConsumer reads this once per (re)connection (get_consumers).
        return self.new_queue(uuid.uuid4().hex)
