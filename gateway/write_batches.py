"""The writes a gateway has in flight at once go to person in one RPC request.

Each write alone would cost a request and a reply on the broker (with the
request's publisher confirm, its delivery and ack, and a worker in person);
under load most of a write's cost was that. Here an HTTP worker hands its
write to :class:`PersonWriteBatches` and waits; the writes waiting go as one
``person.write_many`` request (:mod:`person.batched_writes`), at most
``GATEWAY_WRITE_BATCH_SIZE`` in one, at most ``GATEWAY_WRITE_BATCHES``
requests at once (the scheduler is :class:`~reliable_events.batches.Batches`,
as in person's group commit). Under light load a batch is one write and
nothing waits; under load the writes that came while the last request was
out go together in the next.

Each write keeps what it had on its own:

- its request id: a batch delivered again answers each write its first answer;
- its deadline: the request carries the latest of its writes' (the broker
  drops it unrun past that), and person does not run a write that reaches it
  after its own (``DeadlinePassed``); the HTTP worker answers 504 at its own;
- its ``Idempotency-Key``, its call ids (its log lines and event name the
  HTTP request it came from), and its own answer or error.
"""

import copy
import time
import uuid
from dataclasses import dataclass, field

import eventlet
from eventlet.event import Event
from nameko.exceptions import deserialize

from contracts.errors import DeadlinePassed
from gateway.exceptions import GatewayTimeout
from gateway.rpc import TimedRpcProxy, TimedServiceProxy
from reliable_events.batches import Batches

# Past its deadline a waiting HTTP worker gives up on its own: by then its
# batch's call has normally ended with the exact error (504, or 503 for a
# broker that never took it).
_GRACE = 0.25  # seconds
_LAST_SEND = 0.1  # of RPC_TIMEOUT: the least time left to a write that is sent


@dataclass
class _Write:
    method: str
    args: tuple
    keys: dict  # request_id, idempotency_key
    deadline: float  # seconds since the epoch
    worker_ctx: object
    done: Event = field(default_factory=Event)

    def wire(self) -> dict:
        return {
            "method": self.method,
            "args": list(self.args),
            **self.keys,
            "deadline": self.deadline,
            "call_id_stack": list(self.worker_ctx.call_id_stack or []),
        }


class PersonWriteBatches(TimedRpcProxy):
    """A dependency: ``self.person_writes.add_income(cpf, item, request_id=...)``
    waits for that write's answer (or raises its error, as the method would),
    sent to person in a batch with the other writes in flight."""

    def __init__(self, **options):
        super().__init__("person", **options)

    def setup(self):
        super().setup()
        config = self.container.config
        self.batches = Batches(
            self._launch, int(config["GATEWAY_WRITE_BATCH_SIZE"]), int(config["GATEWAY_WRITE_BATCHES"])
        )
        self.rpc_reply_listener.on_connection_lost.append(self._refuse_waiting)

    def start(self):
        super().start()
        self.batches.start(self.container.spawn_managed_thread)

    def stop(self):
        self.batches.stop()
        super().stop()

    def kill(self):
        self.batches.kill()
        super().kill()

    def get_dependency(self, worker_ctx):
        return _Submitter(self, worker_ctx)

    def submit(self, worker_ctx, method, args, keys):
        self.rpc_reply_listener.refuse_unless_connected(self._target(method))
        write = _Write(method, args, keys, time.time() + self.timeout, worker_ctx)
        self.batches.add(write)
        try:
            with eventlet.Timeout(write.deadline - time.time() + _GRACE):
                outcome = write.done.wait()
        except eventlet.Timeout:
            if not write.done.ready():
                write.done.send(None)  # given up: a batch not yet sent leaves it out
            raise self._timed_out(method) from None
        if "answer" in outcome:
            return outcome["answer"]
        error = outcome["error"]
        if isinstance(error, dict):
            error = deserialize(error)
            if isinstance(error, DeadlinePassed):
                error = self._timed_out(method)
            raise error
        raise copy.copy(error)  # the batch's own failure, shared by its writes

    def _target(self, method) -> str:
        return f"{self.target_service}.{method}"

    def _timed_out(self, method) -> GatewayTimeout:
        return GatewayTimeout(f"{self._target(method)} did not answer within {self.timeout}s.")

    def _refuse_waiting(self) -> None:
        # The connection to the broker dropped. The requests out keep their
        # slots until their deadlines (each may still run until then), so the
        # writes waiting for a slot would wait that long for nothing: none was
        # sent, so each is answered 503 now.
        for write in self.batches.take_waiting():
            if not write.done.ready():
                write.done.send({"error": self.rpc_reply_listener.unconnected(self._target(write.method))})

    def _launch(self, batch: list) -> None:
        self.container.spawn_managed_thread(lambda: self._send(batch))

    def _send(self, batch: list) -> None:
        try:
            # A write that waited here for a free request (person slow or
            # stalled) until less than a tenth of its time was left is
            # answered 504 unsent: too late to publish, be run and be answered.
            last_send = time.time() + self.timeout * _LAST_SEND
            for write in batch:
                if write.deadline <= last_send and not write.done.ready():
                    write.done.send({"error": self._timed_out(write.method)})
            batch = [write for write in batch if not write.done.ready()]
            if not batch:
                return
            proxy = TimedServiceProxy(
                batch[0].worker_ctx, "person", self.rpc_reply_listener, self.timeout, self.consumers_seen
            )
            try:
                outcomes = proxy.call_by(
                    max(write.deadline for write in batch), "write_many", [write.wire() for write in batch]
                )
            except Exception as exc:  # the request's: no write of it was answered
                outcomes = [{"error": exc}] * len(batch)
            for write, outcome in zip(batch, outcomes, strict=True):
                if not write.done.ready():
                    write.done.send(outcome)
        finally:
            self.batches.finished()


class _Submitter:
    """What a worker sees: ``create_person`` and the ``add_<kind>`` methods."""

    def __init__(self, provider: PersonWriteBatches, worker_ctx):
        self._provider = provider
        self._worker_ctx = worker_ctx

    def __getattr__(self, method):
        def write(*args, request_id=None, idempotency_key=None):
            keys = {"request_id": request_id or str(uuid.uuid4())}
            if idempotency_key is not None:
                keys["idempotency_key"] = idempotency_key
            return self._provider.submit(self._worker_ctx, method, args, keys)

        return write
