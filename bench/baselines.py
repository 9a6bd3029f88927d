"""The machine's own limits, measured in the same run as the system.

- RabbitMQ: persistent, event-sized messages to a durable queue, publishing and
  waiting for each confirm; publishing a batch and then waiting for all its
  confirms (what the outbox relay does); consuming and acking each message.
  Measured on a classic durable queue and on a quorum queue (score's event
  queues are quorum queues, so that is what the relay's publishes really cost).
- PostgreSQL: commits per second of one business row plus one outbox row per
  transaction, on person's real ``income`` and ``outbox`` tables.
"""

import threading
import time
import uuid

import amqp
from psycopg2.extras import Json

from bench.data import income_event
from harness import databases
from harness.rabbit import amqp_connection


def _message(body: bytes) -> amqp.Message:
    return amqp.Message(
        body,
        content_type="application/json",
        content_encoding="utf-8",
        delivery_mode=2,
        message_id=str(uuid.uuid4()),
    )


class AmqpBaseline:
    """One durable queue of ``queue_type`` on the broker at ``amqp_uri``, and three measures on it."""

    def __init__(self, amqp_uri: str, queue_type: str, body: bytes):
        self.amqp_uri = amqp_uri
        self.queue = f"bench-baseline-{queue_type}-{uuid.uuid4().hex[:6]}"
        self.queue_type = queue_type
        self.body = body
        conn = amqp_connection(amqp_uri)
        try:
            conn.channel().queue_declare(
                self.queue, durable=True, auto_delete=False, arguments={"x-queue-type": queue_type}
            )
        finally:
            conn.close()

    def publish_confirm_each(self, count: int) -> float:
        """msgs/s publishing ``count`` messages, each waiting for its confirm before the next."""
        conn = amqp_connection(self.amqp_uri, confirm_publish=True)
        try:
            channel = conn.channel()
            channel.basic_publish(_message(self.body), exchange="", routing_key=self.queue, mandatory=True)
            started = time.perf_counter()
            for _ in range(count):
                channel.basic_publish(_message(self.body), exchange="", routing_key=self.queue, mandatory=True)
            return count / (time.perf_counter() - started)
        finally:
            conn.close()

    def publish_batched(self, count: int, batch: int) -> float:
        """msgs/s publishing ``batch`` messages then waiting for all their confirms, repeatedly."""
        conn = amqp_connection(self.amqp_uri)
        try:
            channel = conn.channel()
            channel.confirm_select()
            state = {"acked": 0, "nacked": 0, "last": 0}

            def settle(tag, multiple, key):
                done = tag - state["last"] if multiple else 1
                state["last"] = max(state["last"], tag)
                state[key] += done

            channel.events["basic_ack"].add(lambda tag, multiple: settle(tag, multiple, "acked"))
            channel.events["basic_nack"].add(lambda tag, multiple: settle(tag, multiple, "nacked"))
            sent = 0
            started = time.perf_counter()
            while sent < count:
                n = min(batch, count - sent)
                for _ in range(n):
                    channel.basic_publish(_message(self.body), exchange="", routing_key=self.queue, mandatory=True)
                sent += n
                while state["acked"] + state["nacked"] < sent:
                    conn.drain_events(timeout=30)
            elapsed = time.perf_counter() - started
            if state["nacked"]:
                raise RuntimeError(f"{state['nacked']} messages nacked by the broker")
            return count / elapsed
        finally:
            conn.close()

    def consume_ack(self, count: int, prefetch: int) -> float:
        """msgs/s consuming ``count`` messages with ``prefetch`` in flight, acking each one."""
        conn = amqp_connection(self.amqp_uri)
        try:
            channel = conn.channel()
            channel.basic_qos(0, prefetch, False)
            got = [0]

            def on_message(message):
                channel.basic_ack(message.delivery_tag)
                got[0] += 1

            channel.basic_consume(self.queue, callback=on_message)
            started = time.perf_counter()
            while got[0] < count:
                conn.drain_events(timeout=30)
            return count / (time.perf_counter() - started)
        finally:
            conn.close()

    def delete(self) -> None:
        conn = amqp_connection(self.amqp_uri)
        try:
            conn.channel().queue_delete(self.queue)
        finally:
            conn.close()


# --- PostgreSQL -------------------------------------------------------------------------

INSERT_INCOME = (
    "INSERT INTO income (cpf, type, value, event_id, sequence) VALUES (%s, 'salary', %s, %s, %s) RETURNING id"
)
INSERT_OUTBOX = (
    "INSERT INTO outbox (event_id, event_type, aggregate_key, sequence, payload) "
    "VALUES (%s, 'income_added', %s, %s, %s)"
)


def pg_item_outbox_commits(person_db_uri: str, cpfs: list, clients: int, seconds: float) -> float:
    """Commits/s of (income row + outbox row) transactions from ``clients`` connections at once.

    Each client is a thread with its own psycopg2 connection (the driver releases
    the GIL while it waits), writing for its own person, as person's workers do.
    """
    conns = [databases.connect(person_db_uri, autocommit=False) for _ in range(clients)]
    counts = [0] * clients
    start = threading.Barrier(clients + 1)
    stop = threading.Event()

    def client(index):
        conn, cpf, sequence = conns[index], cpfs[index % len(cpfs)], 1
        cur = conn.cursor()
        start.wait()
        while not stop.is_set():
            sequence += 1
            event_id = str(uuid.uuid4())
            cur.execute(INSERT_INCOME, (cpf, "1234.56", event_id, sequence))
            item_id = cur.fetchone()[0]
            event = {**income_event(cpf, sequence, item_id), "event_id": event_id}
            cur.execute(INSERT_OUTBOX, (event_id, cpf, sequence, Json(event)))
            conn.commit()
            counts[index] += 1

    threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(clients)]
    for thread in threads:
        thread.start()
    start.wait()
    started = time.perf_counter()
    time.sleep(seconds)
    stop.set()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - started
    for conn in conns:
        conn.close()
    return sum(counts) / elapsed
