"""RPC to the backends with a deadline, so an HTTP request never hangs.

Nameko's ``RpcProxy`` waits for a reply forever and retries a dead broker for
seconds. This proxy gives each call ``RPC_TIMEOUT`` seconds in all: a broker
that cannot take the request, or a service that is not consuming, is
:class:`ServiceUnavailable` (503); a reply that does not come in time is
:class:`GatewayTimeout` (504).
"""

import logging
import time
from functools import partial

import eventlet
from kombu import Connection, Queue
from nameko.amqp.publish import Publisher
from nameko.constants import AMQP_URI_CONFIG_KEY
from nameko.exceptions import UnknownService
from nameko.rpc import RPC_REPLY_QUEUE_TEMPLATE, MethodProxy, ReplyListener, RpcProxy, get_rpc_exchange

from gateway.exceptions import BrokerUnavailable, GatewayTimeout, ServiceUnavailable
from reliable_events.queues import QueuePerConnection
from reliable_events.rpc import BROKER_ERRORS, DEADLINE_HEADER, rpc_consumers

_log = logging.getLogger(__name__)

CONSUMER_CHECK_TTL = 1.0  # seconds


class _FailFastPublisher(Publisher):
    # One reconnect attempt, no multi-second back-off: the caller has a deadline.
    transport_options = {"max_retries": 1, "interval_start": 0, "interval_step": 0.2, "interval_max": 0.2}
    retry_policy = {"max_retries": 1, "interval_start": 0, "interval_step": 0.2, "interval_max": 0.2}


class _TimedMethodProxy(MethodProxy):
    publisher_cls = _FailFastPublisher
    deadline = None  # seconds since the epoch

    def get_message_headers(self, worker_ctx):
        # The callee drops a request it gets after this (reliable_events.rpc):
        # one already handed to a stalled process no longer expires in the queue.
        return {**super().get_message_headers(worker_ctx), DEADLINE_HEADER: self.deadline}


class TimedServiceProxy:
    """``proxy.method(*args)`` like Nameko's, but every call has a deadline."""

    def __init__(self, worker_ctx, service_name, reply_listener, timeout, consumers_seen):
        self._worker_ctx = worker_ctx
        self._service_name = service_name
        self._reply_listener = reply_listener
        self._timeout = timeout
        self._consumers_seen = consumers_seen

    def __getattr__(self, method_name):
        return partial(self._call, method_name)

    def ready(self) -> bool:
        """Whether calls can be made: a reply queue is declared on the current connection."""
        return self._reply_listener.connected

    def _call(self, method_name, *args, **kwargs):
        return self.call_by(time.time() + self._timeout, method_name, *args, **kwargs)

    def call_by(self, deadline_at: float, method_name, *args, **kwargs):
        """``method_name(*args, **kwargs)``, answered by ``deadline_at`` (seconds since the epoch)."""
        target = f"{self._service_name}.{method_name}"
        timeout = max(deadline_at - time.time(), 0.001)
        # A request nobody takes in time expires in the queue, so a write the
        # caller was told timed out cannot run minutes later.
        method = _TimedMethodProxy(
            self._worker_ctx,
            self._service_name,
            method_name,
            self._reply_listener,
            expiration=timeout,
        )
        method.deadline = deadline_at
        reply = None
        deadline = eventlet.Timeout(timeout)
        try:
            try:
                self._reply_listener.refuse_unless_connected(target)
                self._check_consumers(target)
                # Published from a greenthread of its own: if the deadline fires
                # mid-publish against a frozen node (paused: the connection stays
                # open and nothing answers), kombu then closes that connection
                # gracefully, waiting for the node as long as it stays frozen.
                # The caller is answered at its deadline all the same; the
                # publish ends whenever the node does (too late to run: the
                # request carries the deadline).
                publishing = eventlet.spawn(method.call_async, *args, **kwargs)
                try:
                    reply = publishing.wait()
                except eventlet.Timeout:
                    publishing.link(self._forget_when_published)
                    raise
            except UnknownService:
                raise ServiceUnavailable(f"{target}: the service is not running.") from None
            except BROKER_ERRORS as exc:
                raise BrokerUnavailable(f"{target}: the message broker is unreachable ({exc!r}).") from None
            return reply.result()
        except eventlet.Timeout as exc:
            if exc is not deadline:
                raise
            if reply is None:
                raise BrokerUnavailable(
                    f"{target}: the message broker did not take the request within {self._timeout}s."
                ) from None
            self._forget(reply)
            raise GatewayTimeout(f"{target} did not answer within {self._timeout}s.") from None
        finally:
            deadline.cancel()

    def _check_consumers(self, target):
        # Nameko's rpc-<service> queue is durable and outlives a stopped
        # service: without this a request would sit there until the deadline.
        # A consumer seen in the last CONSUMER_CHECK_TTL seconds is trusted, so
        # under load this costs a broker round trip per second, not per request.
        if time.monotonic() - self._consumers_seen.get(self._service_name, -CONSUMER_CHECK_TTL) < CONSUMER_CHECK_TTL:
            return
        amqp_uri = self._worker_ctx.container.config[AMQP_URI_CONFIG_KEY]
        # A connection of its own, not the pool's: after a broker restart a
        # pooled connection is the dead one from before the outage.
        conn = Connection(amqp_uri, connect_timeout=2)
        try:
            conn.ensure_connection(max_retries=1, interval_start=0)
            consumers = rpc_consumers(conn, self._service_name)
        except BaseException as exc:
            # Dropped without the closing handshake: a node that is frozen
            # (paused, overloaded) accepts the TCP connection and then never
            # answers, and a graceful close would wait for it past the caller's
            # deadline, which has already fired.
            conn.collect()
            if isinstance(exc, (*BROKER_ERRORS, AttributeError)):
                raise BrokerUnavailable(f"{target}: the message broker is unreachable ({exc!r}).") from None
            raise
        conn.release()
        if not consumers:
            self._consumers_seen.pop(self._service_name, None)
            raise ServiceUnavailable(f"{target}: no {self._service_name} instance is running.")
        self._consumers_seen[self._service_name] = time.monotonic()

    def _forget_when_published(self, publishing):
        try:
            self._forget(publishing.wait())
        except BaseException:  # noqa: BLE001  (it never reached the broker: nothing to forget)
            pass

    def _forget(self, reply):
        # A reply that comes after the deadline is dropped by the listener;
        # this drops the waiting slot of one that may never come.
        events = self._reply_listener._reply_events
        for correlation_id, event in list(events.items()):
            if event is reply.reply_event:
                events.pop(correlation_id, None)


class TransientReplyListener(QueuePerConnection, ReplyListener):
    """Nameko's reply listener on a queue of each connection's own
    (:class:`~reliable_events.queues.QueuePerConnection`). Nameko's is durable,
    so it lives on one node of a cluster; when that node is lost the gateway
    cannot declare it again elsewhere ("home node is down") and gets no reply
    until the node returns. Requests carry the current queue's routing key; a
    reply in flight when the connection drops is lost, and its request
    answered 504 at its deadline (not before: until then the request may
    still run)."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        # Callbacks, added by the providers that use it in their setup (which
        # may run before this one's).
        self.on_connection_lost = []

    def setup(self):
        # Nameko's setup makes one queue for the process's life; this one makes
        # a queue per connection (new_queue), so it only registers.
        self.exchange = get_rpc_exchange(self.container.config)
        self.routing_key = None  # no queue declared yet: calls are refused (503)
        self.queue_consumer.register_provider(self)

    @property
    def connected(self) -> bool:
        return self.routing_key is not None

    @staticmethod
    def unconnected(target: str) -> BrokerUnavailable:
        """The refusal (503) of a call to ``target`` made while no reply queue
        is declared: it could never be answered."""
        return BrokerUnavailable(f"{target}: not connected to the message broker.")

    def refuse_unless_connected(self, target: str) -> None:
        if not self.connected:
            raise self.unconnected(target)

    def connection_lost(self):
        # Calls are refused (503) until a queue is declared on a new connection.
        self.routing_key = None
        for callback in self.on_connection_lost:
            callback()

    def new_queue(self, name_suffix):
        def declared(*_):
            # Requests name the new queue from its declaration on; the one
            # before goes with its connection.
            self.routing_key = name_suffix

        return Queue(
            RPC_REPLY_QUEUE_TEMPLATE.format(self.container.service_name, name_suffix),
            exchange=self.exchange,
            routing_key=name_suffix,
            durable=False,
            exclusive=True,
            on_declared=declared,
        )


class TimedRpcProxy(RpcProxy):
    """``RpcProxy`` whose calls fail within ``RPC_TIMEOUT`` seconds (config)."""

    rpc_reply_listener = TransientReplyListener()

    def setup(self):
        self.timeout = float(self.container.config["RPC_TIMEOUT"])
        self.consumers_seen = {}
        super().setup()

    def get_dependency(self, worker_ctx):
        return TimedServiceProxy(
            worker_ctx, self.target_service, self.rpc_reply_listener, self.timeout, self.consumers_seen
        )
