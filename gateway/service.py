"""The HTTP API (JSON in and out), routed here by Traefik for person.localhost
and score.localhost. It validates the shape of a request (what a request
says is read in :mod:`gateway.requests`) and hands it to person or score over
RPC; it owns no data.
"""

import logging
import uuid
from functools import partial

from nameko.dependency_providers import Config
from werkzeug.exceptions import NotFound, RequestEntityTooLarge

from contracts.errors import PersonNotFound, ScoreNotFound
from contracts.kinds import BY_NAME, NAMES
from contracts.scores import APPLIED_SEQUENCE
from gateway.exceptions import (
    BadGateway,
    BrokerUnavailable,
    GatewayTimeout,
    ServiceUnavailable,
    TooManyRequests,
)
from gateway.freshness import ReplicaWatch
from gateway.http import error_parts, http, json_response
from gateway.requests import json_body, min_sequence, path_cpf, requester, write_keys
from gateway.rpc import TimedRpcProxy
from gateway.write_batches import PersonWriteBatches
from observability.logs import CallContext
from observability.metrics import READ_WAIT, metrics_response

_log = logging.getLogger(__name__)

# POST /person/<cpf>/<kind> for each declared kind (contracts.kinds).
ITEM_ROUTE = f"/person/<cpf>/<any({', '.join(NAMES)}):kind>"


def _written(body, status=201, headers=None):
    """A write's answer: its event's position in the body and in ``Event-Sequence``."""
    return json_response(body, status, [*(headers or {}).items(), ("Event-Sequence", str(body["sequence"]))])


class GatewayService:
    name = "gateway"

    person = TimedRpcProxy("person")
    person_writes = PersonWriteBatches()  # the writes in flight go to person together
    score = TimedRpcProxy("score")
    replica = ReplicaWatch()
    config = Config()
    call_context = CallContext()

    @http("POST", "/person", scope="write")
    def create_person(self, request):
        """Create a person. 201 with the person and ``Location: /person/<cpf>``.

        Example::

            curl -i -H 'Content-Type: application/json' localhost:8000/person \\
                 --data '{"cpf": "529.982.247-25", "name": "Ana", "address": "Rua A, 1",
                          "date_of_birth": "1990-05-01"}'

        With an ``Idempotency-Key`` header, a retry with the same key and body
        gets the first answer and creates nothing; the same key with another
        body is 422 ``IDEMPOTENCY_KEY_REUSED``. Likewise for the item routes.

        Errors: 400 malformed JSON or empty body, 415 not JSON, 422 invalid
        fields, 409 CPF exists.
        """
        person = self.person_writes.create_person(json_body(request), **write_keys(request))
        return _written(person, 201, {"Location": f"/person/{person['cpf']}"})

    @http("GET", "/person/<cpf>", scope="read")
    def get_person(self, request, cpf):
        """A person with incomes, assets and debts. 404 unknown, 422 malformed CPF.

        Example: ``curl localhost:8000/person/52998224725``
        """
        return json_response(self.person.get_person(path_cpf(cpf)))

    @http("DELETE", "/person/<cpf>", scope="admin")
    def erase_person(self, request, cpf):
        """Erase a person (LGPD); needs the ``admin`` scope. 200 with the
        erasure's ``sequence`` (also in ``Event-Sequence``); 404 unknown (or
        erased already), 422 malformed CPF.

        Example::

            curl -i -X DELETE -H 'Authorization: Bearer <admin token>' localhost:8000/person/52998224725
            -> {"cpf": "52998224725", "erased": true, "sequence": 5, "erased_at": "2026-..."}

        Person deletes the person's rows, its event history and its stored
        answers at once, and records who asked (the token's name, never the
        token); score deletes its replica when it applies the erasure: then
        ``GET /52998224725/score?min_sequence=5`` is 404. The CPF may be
        created again afterwards.
        """
        cpf = path_cpf(cpf)
        erased = self.person.erase_person(cpf, erased_by=requester(request), request_id=str(uuid.uuid4()))
        return _written({"cpf": cpf, **erased}, 200)

    @http("POST", ITEM_ROUTE, scope="write")
    def add_item(self, request, cpf, kind):
        """Add an income, asset or debt. 201 with the item; 404 unknown person.

        Example::

            curl -i -H 'Content-Type: application/json' \\
                 localhost:8000/person/52998224725/income --data '{"type": "renting", "value": 1000}'
            curl -i -H 'Content-Type: application/json' \\
                 localhost:8000/person/52998224725/debt --data '{"value": 1000}'
        """
        cpf = path_cpf(cpf)
        add = getattr(self.person_writes, BY_NAME[kind].rpc_method)
        item = add(cpf, json_body(request), **write_keys(request))
        return _written(item)

    @http("GET", "/<cpf>/score", scope="read")
    def get_score(self, request, cpf):
        """The credit score of a CPF from score's replica; 0 is a valid score.

        Example: ``curl localhost:8000/52998224725/score`` ->
        ``{"cpf": "52998224725", "score": 4970,
        "breakdown": {"income": 20, "asset": 5000, "debt": -50}, ...,
        "applied_sequence": 4, "stale": false}``. 404 for a CPF score has never seen, or has erased.

        Read-your-writes: with ``?min_sequence=<n>`` (or the header
        ``Min-Event-Sequence: n``), ``n`` being the ``sequence`` a write
        answered with, the answer waits until the replica has applied every
        event of the person up to ``n``, at most ``READ_YOUR_WRITES_TIMEOUT``
        seconds; then it is the current value with ``"stale": true`` (and
        ``Replica-Stale: true``), never an error::

            curl 'localhost:8000/52998224725/score?min_sequence=4'

        Without it the read returns at once. ``Event-Sequence`` carries
        ``applied_sequence``.
        """
        cpf = path_cpf(cpf)
        wanted = min_sequence(request)
        if wanted is None:
            return self._score_response(self.score.get_score(cpf), stale=False)
        result, stale, waited = self.replica.read_at_least(cpf, wanted, partial(self._score_or_none, cpf, wanted))
        READ_WAIT.labels("stale" if stale else "fresh").observe(waited)
        if isinstance(result, ScoreNotFound):
            if not stale:
                raise result  # the erasure asked for (or a later one) is applied: 404
            result = None  # an older erasure: the person was created again since
        if result is None:
            result = self._unseen_score(cpf)
        timing = [("Server-Timing", f"replica-wait;dur={waited * 1000:.1f}")]
        return self._score_response(result, stale, timing)

    def _score_or_none(self, cpf, wanted):
        """The score, or None for a CPF score has none of; or, when score has
        applied the person's erasure, its :class:`ScoreNotFound` (carrying the
        erasure's ``applied_sequence``, which a wait for it reaches). Score is
        told that this read waits for ``wanted``: it announces the person's
        advance only while a read waits."""
        try:
            return self.score.get_score(cpf, min_sequence=wanted)
        except ScoreNotFound as exc:
            return exc if exc.applied_sequence else None

    def _unseen_score(self, cpf):
        """The answer for a CPF score has not heard of when the wait ran out:
        404 if person does not know it either, else score's empty score, stale."""
        try:
            self.person.get_person(cpf)
        except PersonNotFound:
            raise ScoreNotFound(f"No score for CPF {cpf}.") from None
        return self.score.get_score(cpf, person_known=True)

    @staticmethod
    def _score_response(result, stale, headers=()):
        body = {**result, "stale": stale}
        return json_response(
            body,
            200,
            [
                ("Event-Sequence", str(body[APPLIED_SEQUENCE])),
                ("Replica-Stale", "true" if stale else "false"),
                *headers,
            ],
        )

    @http("GET", "/metrics", public=False)
    def metrics(self, request):
        """Prometheus metrics of this gateway instance (requests by route and
        status, latencies, read-your-writes waits). Not public: Traefik does
        not route it; Prometheus scrapes each gateway's own port.

        Example: ``curl localhost:8001/metrics`` ->
        ``http_requests_total{method="POST",route="/person",status="201"} 1.0`` ...
        """
        return metrics_response()

    @http("GET", "/health")
    def health(self, request):
        """200 when the broker, person and score answer and nothing is stuck; 503 otherwise.

        "Stuck" is a dead letter waiting in score, or an outbox row pending in
        person for longer than ``HEALTH_MAX_OUTBOX_AGE`` seconds (config).

        Example: ``curl localhost:8000/health`` ->
        ``{"status": "ok", "broker": "ok", "problems": [],
        "services": {"person": {"outbox": {"pending": 0, ...}}, "score": {"dead_letters": {...}}}}``
        """
        services, problems, broker_ok = {}, [], True
        for name in ("person", "score"):
            try:
                services[name] = getattr(self, name).health()
            except (ServiceUnavailable, GatewayTimeout) as exc:
                services[name] = {"status": "unreachable", "error": str(exc)}
                problems.append(f"{name} unreachable")
                broker_ok = broker_ok and not isinstance(exc, BrokerUnavailable)
            except Exception as exc:  # the service answered with a failure
                services[name] = {"status": "failing", "error": str(exc)}
                problems.append(f"{name} failing")
        outbox = services["person"].get("outbox")
        max_age = float(self.config["HEALTH_MAX_OUTBOX_AGE"])
        if outbox and outbox["oldest_pending_age_seconds"] > max_age:
            problems.append(f"{outbox['pending']} events unpublished for over {max_age:g}s")
        dead = sum((services["score"].get("dead_letters") or {}).values())
        if dead:
            problems.append(f"{dead} dead-lettered events in score")
        body = {
            "status": "unavailable" if problems else "ok",
            "broker": "ok" if broker_ok else "unreachable",
            "problems": problems,
            "services": services,
        }
        return json_response(body, 503 if problems else 200)

    @http("GET", "/health/gateway", public=False)
    def gateway_health(self, request):
        """200 once this gateway instance can take requests: Traefik's check,
        which keeps an instance out of rotation while it fails (not started
        yet, dead, frozen). It asks no other service, so a problem of the
        whole system (``/health``) takes no gateway out: each still answers
        it, in JSON. 503 while the instance has not yet connected to the broker.

        Example: ``curl localhost:8001/health/gateway`` -> ``{"status": "ok"}``
        """
        if not self.person.ready():
            return json_response({"status": "starting", "problems": ["not yet connected to the broker"]}, 503)
        return json_response({"status": "ok"})

    @http("GET", "/errors/<int:status>", public=False)
    def edge_error(self, request, status):
        """The JSON body and headers of an answer Traefik makes itself
        (gateway/edge.py): its ``errors`` middleware asks a gateway for them,
        and sends them with its own status. Answered 200: a 5xx here would
        count against this gateway in Traefik's passive check. Not public.

        Example: ``curl localhost:8001/errors/429`` -> 200, ``Retry-After: 1``,
        ``{"error": "TOO_MANY_REQUESTS", "message": "Over 100 requests a second ..."}``
        """
        edge = self.config["EDGE"]
        errors = {
            404: NotFound(),
            413: RequestEntityTooLarge(f"The request body is over {self.config['MAX_CONTENT_LENGTH']} bytes."),
            429: TooManyRequests(
                f"Over {edge['RATE_LIMIT']} requests a second (bursts of {edge['RATE_BURST']}), or over"
                f" {edge['CLIENT_IN_FLIGHT']} at once, from this client; retry after Retry-After seconds."
            ),
            502: BadGateway(
                "The edge lost its connection to the gateway. A write may or may not have been"
                " applied: retry it with the same Idempotency-Key."
            ),
            503: ServiceUnavailable("No gateway is available; retry shortly."),
            504: GatewayTimeout(
                f"The gateway did not answer within {edge['RESPONSE_TIMEOUT']}s. A write may or may"
                " not have been applied: retry it with the same Idempotency-Key."
            ),
        }
        _, body, headers = error_parts(errors.get(status, NotFound()))
        return json_response(body, 200, headers)

    @http("GET", "/openapi.json")
    def openapi(self, request):
        """The OpenAPI 3 document of this API. Example: ``curl localhost:8000/openapi.json``"""
        from gateway.openapi import openapi_document  # here: this method is this file's only addition

        return json_response(openapi_document())
