"""Private vhosts on the machine's RabbitMQ, so test runs never see each other."""

import os
import subprocess
import uuid

from kombu import Connection, Queue
from nameko.standalone.events import get_event_exchange

AMQP_BASE = os.environ.get("TEST_AMQP_URI", "amqp://guest:guest@localhost:5672/")


def rabbitmqctl(*args):
    subprocess.run(["rabbitmqctl", "-q", *args], check=True, capture_output=True, timeout=60)


def create_vhost(prefix="test") -> str:
    """Create a vhost with a unique name; return its AMQP URI."""
    name = f"{prefix}-{uuid.uuid4().hex[:10]}"
    rabbitmqctl("add_vhost", name)
    rabbitmqctl("set_permissions", "-p", name, "guest", ".*", ".*", ".*")
    return AMQP_BASE.rstrip("/") + "/" + name


def delete_vhost(uri: str) -> None:
    rabbitmqctl("delete_vhost", uri.rsplit("/", 1)[1])


class EventTap:
    """A queue bound to every event of ``person.events``, to see what was published."""

    def __init__(self, config):
        self.connection = Connection(config["AMQP_URI"])
        exchange = get_event_exchange("person", config)
        self.queue = Queue(f"tap-{uuid.uuid4().hex[:8]}", exchange=exchange, routing_key="#", auto_delete=True)
        self.simple = self.connection.SimpleQueue(self.queue)

    def drain(self, wait=0.5):
        """Every message that arrives until ``wait`` seconds pass with none."""
        bodies = []
        while True:
            try:
                message = self.simple.get(timeout=wait)
            except self.simple.Empty:
                return bodies
            bodies.append(message.payload)
            message.ack()

    def close(self):
        self.simple.close()
        self.connection.release()
