"""Nameko's queues, declared with other properties."""

from kombu import Queue


def redeclared(queue: Queue, **properties) -> Queue:
    """``queue`` as Nameko made it (its name, exchange and binding), with other
    properties: durability, a queue type, arguments."""
    return Queue(queue.name, exchange=queue.exchange, routing_key=queue.routing_key, **properties)
