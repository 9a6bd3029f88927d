"""Nameko's ``@rpc``, except that a reply the broker cannot take does not kill
the service, and a request whose caller has given up, or that names no
queue for its reply, is never run.

- Nameko publishes an RPC reply from the worker's result handler; if the broker
  has just gone away that publish raises, the exception ends the worker's
  managed thread, and the whole container (the process) exits. Here the failure
  is logged instead. The request was never acked, so the broker delivers it
  again when it is back: writes must therefore be idempotent against
  redelivery, which the gateway ensures by sending every write with an
  idempotency key (:mod:`reliable_events.idempotency`).
- A caller with a deadline (the gateway's :mod:`gateway.rpc`) sends it in the
  ``x-deadline`` header (seconds since the epoch). The request also expires in
  the queue at that moment, but a message the broker already handed to this
  process (prefetched while the process was stalled, or waiting for a free
  worker) no longer expires; so a request that arrives here after its deadline
  is acked and dropped without running: the caller was answered 503/504, and
  the write must not happen behind its back. (The hosts' clocks are assumed in
  step, as NTP keeps them, to well under the deadline.)
"""

import logging
import time

from amqp.exceptions import AMQPError, ChannelError
from kombu.exceptions import OperationalError
from nameko.rpc import Rpc, RpcConsumer

from reliable_events.queues import redeclared

_log = logging.getLogger(__name__)

# What a broker that cannot take a message raises: kombu's wrapped errors, a
# socket's, and py-amqp's own (a node stopping closes its connections with 541
# INTERNAL_ERROR, which reaches the caller unwrapped; a bad vhost or
# credentials likewise).
BROKER_ERRORS = (OperationalError, OSError, AMQPError)


DEADLINE_HEADER = "x-deadline"
# A quorum queue: replicated on every node of a cluster, so requests keep
# flowing when the node that declared it is lost (Nameko's classic queue
# lives on one node, and while that node is down no node can serve it).
RPC_QUEUE_ARGUMENTS = {"x-queue-type": "quorum"}


class QuorumRpcConsumer(RpcConsumer):
    """Nameko's RPC consumer, on a quorum ``rpc-<service>`` queue."""

    def setup(self):
        if self.queue is None:
            super().setup()
            self.queue = redeclared(self.queue, durable=True, queue_arguments=RPC_QUEUE_ARGUMENTS)


class ResilientRpc(Rpc):
    rpc_consumer = QuorumRpcConsumer()

    def handle_message(self, body, message):
        if not message.properties.get("reply_to"):
            # Nameko's responder would raise KeyError after the worker ran, and
            # the exception would end the process; a request no one can be
            # answered for is not run either.
            _log.warning(
                "dropped a %s.%s request (correlation_id=%s): it has no reply_to, so no caller can be answered",
                self.container.service_name,
                self.method_name,
                message.properties.get("correlation_id"),
            )
            self.rpc_consumer.queue_consumer.ack_message(message)
            return
        deadline = (message.headers or {}).get(DEADLINE_HEADER)
        if deadline is not None and time.time() > float(deadline):
            _log.warning(
                "dropped a %s.%s request (correlation_id=%s): its caller's deadline passed %.2fs ago, so it never ran",
                self.container.service_name,
                self.method_name,
                message.properties.get("correlation_id"),
                time.time() - float(deadline),
            )
            self.rpc_consumer.queue_consumer.ack_message(message)
            return
        if message.delivery_info.get("redelivered"):
            _log.info(
                "redelivered %s.%s request (correlation_id=%s): an earlier delivery was not acked",
                self.container.service_name,
                self.method_name,
                message.properties.get("correlation_id"),
            )
        super().handle_message(body, message)

    def handle_result(self, message, worker_ctx, result, exc_info):
        try:
            return super().handle_result(message, worker_ctx, result, exc_info)
        except BROKER_ERRORS as exc:
            _log.warning(
                "could not send the reply to %s.%s (correlation_id=%s): %r; the broker will redeliver the request",
                worker_ctx.service_name,
                self.method_name,
                message.properties.get("correlation_id"),
                exc,
            )
            return result, exc_info


rpc = ResilientRpc.decorator


def rpc_consumers(conn, service: str) -> int:
    """Consumers on ``rpc-<service>`` over the kombu connection ``conn`` (0 if
    the queue does not exist: the service never ran on this broker).

    Nameko's RPC queue is durable and outlives a stopped service, so a request
    sent to a service with no consumer would only wait there until its timeout;
    a caller checks this first to fail fast. A channel each: a failed passive
    declare closes its channel.
    """
    try:
        return conn.channel().queue_declare(f"rpc-{service}", passive=True)[2]
    except ChannelError:
        return 0
