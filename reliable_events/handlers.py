"""The event handler entrypoint every consumer uses: retries, then dead letters.

``@reliable_handler(PERSON_EVENTS, "income_added")`` is Nameko's ``@event_handler``
(same exchange, same queue name ``evt-person-income_added--<service>.<method>``),
given the producer's event source (its exchange, and its envelope: an
object with ``service``, ``parse``, ``key``, ``key_field_of`` and ``malformed``, as
``contracts.envelope.EventSource``), with these guarantees added:

- **The queue is a quorum queue** (durable, replicated in a cluster) with a
  delivery limit: a message redelivered that often (say, one that crashes the
  process each time) is dead-lettered instead of looping for ever.
- **A handler that raises is retried with back-off**, by RabbitMQ itself: the
  message is re-published to ``<queue>.retry.<n>``, a queue whose message TTL is
  the n-th delay and whose dead-letter target is the handler's queue, so it comes
  back after the delay without any process holding it. The original is acked
  only once the broker confirmed the copy; if that publish fails the original is
  requeued instead. Nothing is lost either way.
- **After the last attempt, or at once for a message that is not a valid event**
  (no retry can fix it), the message goes to ``<queue>.dead`` with the reason,
  the attempt count and the first and last failure times in its headers, where
  :mod:`reliable_events.deadletters` lists, replays and purges it.
- One failing message never blocks the ones behind it: it leaves the queue.

The handler method gets a *list* of parsed events (dicts, ``event_id`` a
string), so it can apply them in one transaction: a replica catching up on a
backlog then pays one commit per batch instead of one per event. It returns
the events it applied (the others count as duplicates its inbox skipped), or
None for all of them; the entrypoint logs one line per applied event, with
the call ids of the request that wrote it, and observes its propagation lag. Retries and
replays can deliver an event again: handlers must be idempotent, which
:mod:`reliable_events.inbox` makes them.

**Batches.** No timer is involved: a batch holds whatever arrived while the previous
batches of this handler (at most ``EVENT_BATCH_CONCURRENCY`` at once) were
running, up to ``EVENT_BATCH_SIZE``. Under light load every batch holds one
event and nothing waits; under a backlog they fill up. Each message is acked
only after its batch's worker succeeded. A batch that fails is split: each of
its events is run again alone, and only an event that fails on its own is
retried or dead-lettered as above, so one bad event never holds back the
others nor takes them to the dead letters with it. The scheduling is
:class:`~reliable_events.batches.Batches`, the one the group commit and the
relay use; the retry and dead-letter queues, their names and the headers of a
moved message are in :mod:`reliable_events.queues`; the queue consumer under
every handler is :mod:`reliable_events.consumer`.
"""

import logging
from datetime import UTC, datetime
from functools import partial

from kombu import Connection
from kombu.exceptions import OperationalError
from nameko.amqp.publish import Publisher
from nameko.constants import AMQP_URI_CONFIG_KEY
from nameko.events import EventHandler
from nameko.exceptions import ContainerBeingKilled

from reliable_events.batches import Batches
from reliable_events.consumer import ReliableQueueConsumer
from reliable_events.instruments import CALL_ID_STACK_HEADER, NO_METRICS, EventMetrics, event_fields
from reliable_events.queues import (
    ATTEMPT,
    DEAD_REASON,
    FIRST_FAILURE,
    LAST_ERROR,
    LAST_FAILURE,
    dead_letter_queue,
    dead_letter_queue_name,
    redeclared,
    retry_queues,
)

_log = logging.getLogger(__name__)


def _now() -> str:
    return datetime.now(UTC).isoformat()


class ReliableEventHandler(EventHandler):
    queue_consumer = ReliableQueueConsumer()

    def __init__(self, source, event_type: str, metrics: EventMetrics = NO_METRICS, **kwargs):
        """``metrics``: what counts the handler's outcomes (reliable_events.instruments)."""
        self.source = source
        self.metrics = metrics
        super().__init__(source.service, event_type, **kwargs)

    def setup(self):
        super().setup()  # sets self.queue: nameko's name, exchange and binding
        config = self.container.config
        self.retry_delays = [float(d) for d in config["EVENT_RETRY_DELAYS"]]
        limit = int(config["EVENT_DELIVERY_LIMIT"])
        name = self.queue.name
        self.queue = redeclared(
            self.queue,
            durable=True,
            auto_delete=False,
            queue_arguments={
                "x-queue-type": "quorum",
                "x-delivery-limit": limit,
                # what the delivery limit drops lands with the other dead letters
                "x-dead-letter-exchange": "",
                "x-dead-letter-routing-key": dead_letter_queue_name(name),
            },
        )
        self.retry_queues = retry_queues(name, self.retry_delays)
        self.dead_letters = dead_letter_queue(name)
        self.amqp_uri = config[AMQP_URI_CONFIG_KEY]
        # Declared whenever the consumer (re)declares the main queue, so the
        # delivery limit's dead-letter target exists before anything can hit it,
        # and nothing here needs the broker while the service starts.
        self.queue.on_declared = self._declare_companions
        self.publisher = Publisher(
            self.amqp_uri,
            use_confirms=True,
            mandatory=True,
            declare=[*self.retry_queues, self.dead_letters],
        )
        # (event, message) items; a batch is one worker.
        self.batches = Batches(
            self._spawn_batch, int(config["EVENT_BATCH_SIZE"]), int(config["EVENT_BATCH_CONCURRENCY"])
        )

    def start(self):
        super().start()
        self.batches.start(self.container.spawn_managed_thread)

    def stop(self):
        super().stop()  # consumer cancelled: nothing more arrives
        # What already arrived is still applied (and acked) before the
        # container waits for its workers.
        self.batches.stop()

    def _declare_companions(self, *args):
        # A connection of its own, not the pool's: right after a broker restart
        # a pooled connection is the dead one from before the outage.
        try:
            with Connection(self.amqp_uri, connect_timeout=5) as conn:
                channel = conn.channel()
                for queue in (*self.retry_queues, self.dead_letters):
                    queue(channel).declare()
        except Exception as exc:
            # Recoverable for kombu: the consumer reconnects and declares again,
            # instead of the service dying.
            raise OperationalError(f"could not declare {self.queue.name}'s retry queues: {exc!r}") from exc

    def handle_message(self, body, message):
        try:
            event = self.source.parse(body)
        except self.source.malformed as exc:
            self._dead_letter(message, f"malformed event: {exc}", attempts=1)
            return
        self.batches.add((event, message))

    # --- batches ------------------------------------------------------------------------

    def _spawn_batch(self, items):
        """Start one worker for a batch; :meth:`_batch_result` ends it."""
        events = [event for event, _ in items]
        messages = [message for _, message in items]
        try:
            self.container.spawn_worker(
                self,
                (events,),
                {},
                context_data=self.unpack_message_headers(messages[0]),
                handle_result=partial(self._batch_result, messages),
            )
        except ContainerBeingKilled:
            for message in messages:
                self.queue_consumer.requeue_message(message)
            # The batch ends here. Last, and without raising: had a requeue
            # raised, Batches would have taken the batch off its count itself.
            self.batches.finished()

    def _batch_result(self, messages, worker_ctx, result=None, exc_info=None):
        try:
            if exc_info is None:
                for message in messages:
                    self.queue_consumer.ack_message(message)
                self._applied(worker_ctx, worker_ctx.args[0], messages, result)
            elif len(messages) == 1:
                self._failed(messages[0], worker_ctx.args[0][0], exc_info)
            else:
                # Rolled back as a whole: find the culprit by running each alone.
                _log.warning(
                    "batch of %d %s events failed (%s: %s); applying each alone",
                    len(messages),
                    self.event_type,
                    exc_info[0].__name__,
                    exc_info[1],
                )
                self.batches.add_alone(zip(worker_ctx.args[0], messages, strict=True))
        finally:
            self.batches.finished()
        return result, exc_info

    def _applied(self, worker_ctx, events, messages, applied):
        """One line and the counters per event of a batch that committed.

        An event delivered twice in one batch (published twice, say by the
        sweep and by its writer) was applied once: its first message counts as
        applied, the other as a duplicate."""
        to_count = {event["event_id"] for event in (events if applied is None else applied)}
        now = datetime.now(UTC)
        for event, message in zip(events, messages, strict=True):
            if event["event_id"] not in to_count:
                self.metrics.duplicate(event["event_type"])
                continue
            to_count.discard(event["event_id"])
            lag = (now - event["occurred_at"]).total_seconds()
            self.metrics.applied(event["event_type"], max(lag, 0.0))
            if not _log.isEnabledFor(logging.INFO):
                continue  # per event: build the line's fields only if it is written
            # The writer's call chain (from the message), then this worker's call id.
            origin = list((message.headers or {}).get(CALL_ID_STACK_HEADER) or [])
            _log.info(
                "applied event %s %s %s=%s sequence=%s",
                event["event_id"],
                event["event_type"],
                self.source.key_field_of(event["event_type"]),
                self.source.key(event),
                event["sequence"],
                extra=event_fields(
                    event,
                    self.source.key_field_of(event["event_type"]),
                    lag_ms=round(lag * 1000, 2),
                    call_id=worker_ctx.call_id,
                    call_id_stack=[*origin, worker_ctx.call_id],
                ),
            )

    def _failed(self, message, event, exc_info):
        """Retry ``message`` later, or dead-letter it after the last attempt."""
        attempt = int(message.headers.get(ATTEMPT, 0) or 0) + 1
        error = f"{exc_info[0].__name__}: {exc_info[1]}"[:1000]
        if issubclass(exc_info[0], self.source.malformed):
            # The handler found the event's data unusable: retrying cannot help.
            self._dead_letter(message, f"malformed event: {exc_info[1]}", attempt, error)
        elif attempt <= len(self.retry_delays):
            delay = self.retry_delays[attempt - 1]
            self.metrics.retried(event["event_type"])
            _log.warning(
                "event %s %s failed attempt %d (%s); retrying in %ss",
                event["event_id"],
                event["event_type"],
                attempt,
                error,
                delay,
            )
            self._move(message, self.retry_queues[attempt - 1].name, attempt, error)
        else:
            self._dead_letter(message, f"failed {attempt} attempts; last error {error}", attempt, error)

    def _dead_letter(self, message, reason, attempts, error=None):
        self.metrics.dead_lettered(self.queue.name)
        _log.error(
            "dead-lettered message %s from %s: %s",
            message.properties.get("message_id"),
            self.queue.name,
            reason,
            extra={"event_id": message.properties.get("message_id"), "queue": self.queue.name, "reason": reason},
        )
        self._move(message, self.dead_letters.name, attempts, error or reason, {DEAD_REASON: reason})

    def _move(self, message, queue_name, attempt, error, extra=None):
        """Publish a copy to ``queue_name`` (confirmed), then ack the original."""
        headers = dict(message.headers or {})
        headers.pop("x-death", None)  # RabbitMQ's own bookkeeping, rebuilt per hop
        now = _now()
        headers.setdefault(FIRST_FAILURE, now)
        headers.update({ATTEMPT: attempt, LAST_FAILURE: now, LAST_ERROR: error, **(extra or {})})
        try:
            self.publisher.publish(
                message.body,
                exchange="",
                routing_key=queue_name,
                headers=headers,
                content_type=message.content_type,
                content_encoding=message.content_encoding,
                message_id=message.properties.get("message_id"),
                serializer=None,
            )
        except Exception:
            _log.exception("could not move message to %s; requeueing it", queue_name)
            self.queue_consumer.requeue_message(message)
            return
        self.queue_consumer.ack_message(message)


reliable_handler = ReliableEventHandler.decorator
