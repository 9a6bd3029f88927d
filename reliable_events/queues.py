"""Nameko's queues, declared with other properties; a process's own queues,
named anew on every connection."""

import uuid

from kombu import Queue


def redeclared(queue: Queue, **properties) -> Queue:
    """``queue`` as Nameko made it (its name, exchange and binding), with other
    properties: durability, a queue type, arguments."""
    return Queue(queue.name, exchange=queue.exchange, routing_key=queue.routing_key, **properties)


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

    def new_queue(self, name_suffix: str) -> Queue:
        raise NotImplementedError

    @property
    def queue(self) -> Queue:
        # Nameko's QueueConsumer reads this once per (re)connection (get_consumers).
        return self.new_queue(uuid.uuid4().hex)
