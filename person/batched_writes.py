"""Many writes in one RPC request: ``person.write_many``, which the gateway
sends with the writes it has in flight at once (gateway/write_batches.py), so
a request and a reply carry many writes, not one each. A part of
``PersonService`` (person/service.py), which gives it ``self.writer`` and
``self._prepared``: each write is loaded and checked exactly as its own
method (``create_person``, ``add_<kind>``) does, then they all join person's
group commit together.

Each write keeps what it has alone: its request id (a redelivered batch
answers each write its first answer), its deadline (a write that arrives after
it is not run), its ``Idempotency-Key``, its call ids (its event's headers and
its log line name the HTTP request it came from) and its own answer or error.
"""

import logging
import time

from nameko.exceptions import serialize

from contracts.errors import DeadlinePassed, InvalidInput
from contracts.idempotency import IdempotencyKeyReused
from observability.logs import current_call_id_stack
from observability.metrics import RPC_REQUESTS
from reliable_events.group_commit import Write
from reliable_events.idempotency import KeyReused, request_hash
from reliable_events.rpc import rpc

_log = logging.getLogger(__name__)


class BatchedWrites:
    """``PersonService``'s ``write_many``."""

    # The caller's mistakes (the service's CLIENT_ERRORS): answered, not logged as failures.
    client_errors: tuple = ()
    write_methods: tuple = ()  # the service's WRITE_METHODS

    @rpc
    def write_many(self, writes):
        """Run several writes, each as its own method would (``create_person``,
        ``add_income``, ``add_asset``, ``add_debt``), in one request: one
        outcome per write, in order, ``{"answer": ...}`` or ``{"error": ...}``
        (Nameko's serialized exception, which ``nameko.exceptions.deserialize``
        turns back into the type the method raises).

        Example (``nameko shell``)::

            >>> n.rpc.person.write_many([
            ...     {"method": "add_income", "args": ["52998224725", {"type": "renting", "value": 1000}],
            ...      "request_id": "9f6c...", "deadline": time.time() + 5},
            ...     {"method": "add_debt", "args": ["00000000000", {"value": 10}]}])
            [{'answer': {'id': 1, 'type': 'renting', 'value': '1000.00', 'created_at': '...', 'sequence': 2}},
             {'error': {'exc_type': 'InvalidInput', 'exc_path': 'contracts.errors.InvalidInput', ...}}]

        A write may carry ``request_id``, ``idempotency_key`` (as its method's
        arguments), ``deadline`` (seconds since the epoch: past it the write
        is not run and its outcome is ``DeadlinePassed``) and
        ``call_id_stack`` (the call ids of the request it came from).
        """
        if not isinstance(writes, list) or not all(isinstance(spec, dict) for spec in writes):
            raise InvalidInput("write_many takes a list of writes.", {"writes": ["A list of objects."]})
        own = (current_call_id_stack() or [])[-1:]
        # Each write's call ids: the request it came from, then this one.
        stacks = [[*(spec.get("call_id_stack") or []), *own] for spec in writes]
        outcomes, submitted, where = [None] * len(writes), [], []
        for index, (spec, stack) in enumerate(zip(writes, stacks, strict=True)):
            try:
                submitted.append(self._write(spec, stack))
                where.append(index)
            except Exception as exc:  # refused before it was submitted: its input, its deadline
                outcomes[index] = exc
        for index, outcome in zip(where, self.writer.submit_all(submitted), strict=True):
            outcomes[index] = IdempotencyKeyReused(str(outcome)) if isinstance(outcome, KeyReused) else outcome
        return [self._outcome(*each) for each in zip(writes, outcomes, stacks, strict=True)]

    def _write(self, spec, stack) -> Write:
        deadline = spec.get("deadline")
        if deadline is not None and time.time() > float(deadline):
            raise DeadlinePassed(f"deadline passed {time.time() - float(deadline):.2f}s ago, so it never ran")
        payload, operation, request = self._prepared(spec.get("method"), spec.get("args") or [])
        key = spec.get("idempotency_key")
        digest = request_hash(operation, *request) if key is not None else None
        return Write(payload, stack, spec.get("request_id"), key, digest)

    def _outcome(self, spec, outcome, stack) -> dict:
        """The wire's outcome of one write, and its log line and count."""
        method = spec.get("method")
        if not isinstance(outcome, BaseException):
            result, level = "ok", logging.INFO
        elif isinstance(outcome, self.client_errors):
            result, level = "client_error", logging.INFO
        elif isinstance(outcome, DeadlinePassed):
            result, level = "dropped", logging.WARNING
        else:
            result, level = "error", logging.ERROR
        # A label per method written, not per name a caller sent: labels are bounded.
        RPC_REQUESTS.labels(method if method in self.write_methods else "unknown", result).inc()
        extra = {"rpc_method": method, "outcome": result, "request_id": spec.get("request_id"), "call_id_stack": stack}
        if result == "dropped":
            _log.log(level, "dropped a person.%s write: its caller's %s", method, outcome, extra=extra)
        else:
            _log.log(level, "write %s %s", method, result, extra=extra, exc_info=result == "error" and outcome)
        if isinstance(outcome, BaseException):
            return {"error": serialize(outcome)}
        return {"answer": outcome}
