"""A JSON-only ``@http`` entrypoint: every answer, error or not, is JSON.

Nameko's ``@http`` answers errors with plain text and unknown routes with
werkzeug's HTML pages; here both go through :func:`gateway.exceptions.error_for`,
and request bodies are capped at ``MAX_CONTENT_LENGTH`` bytes.

Overload is refused, not queued: past ``MAX_IN_FLIGHT`` requests in progress
(the whole gateway), a request is answered at once with 503 ``OVERLOADED`` and
``Retry-After: 1``, before it is parsed or given a worker. Queued, it would only
wait longer and longer for a worker (Nameko's pool is ``MAX_WORKERS``), its
client's timeout running; refused, the client backs off and the requests
already accepted keep their latency. ``/health`` and ``/metrics`` are never
refused: they are how an operator sees the overload; nor are the pages of
Traefik's own refusals (``/errors/<status>``).
"""

import functools
import json
import logging
import socket
import time
from decimal import Decimal

import eventlet.wsgi
from nameko.web.handlers import HttpRequestHandler
from nameko.web.server import WebServer, WsgiApp
from werkzeug.exceptions import HTTPException
from werkzeug.routing import Map
from werkzeug.wrappers import Request, Response

from gateway.auth import SCOPES, authorize, parse_tokens
from gateway.exceptions import CLIENT_ERRORS, HeadersTooLarge, Overloaded, error_for
from observability.metrics import HTTP_DURATION, HTTP_IN_FLIGHT, HTTP_REQUESTS

_log = logging.getLogger(__name__)

CALL_ID_STACK_KEY = "nameko.call_id_stack"  # in the WSGI environ
TOKEN_KEY = "gateway.token"  # in the WSGI environ: the request's Token (gateway/auth.py), if any
# Never refused for overload: how an operator and Traefik see it, and the
# pages of Traefik's own refusals (GET /errors/<status>).
NEVER_REFUSED = ("/health", "/health/gateway", "/metrics")
NEVER_REFUSED_PREFIX = "/errors/"

# Eventlet answers a header line over 8 KiB itself, with an empty 400. Traefik
# passes headers of up to 4 x MAX_HEADER_BYTES (gateway/edge.py) so that the
# gateway, not Traefik, refuses most oversized ones, with its JSON 431: it
# must read them whole first.
eventlet.wsgi.MAX_HEADER_LINE = eventlet.wsgi.MAX_TOTAL_HEADER_SIZE


def json_response(payload, status=200, headers=None) -> Response:
    return Response(json.dumps(payload), status=status, headers=headers, mimetype="application/json")


def error_parts(exc: Exception) -> tuple[int, dict, list | None]:
    """The status, JSON body and headers that answer ``exc``."""
    status, code, message, fields = error_for(exc)
    body = {"error": code, "message": message}
    if fields:
        body["fields"] = fields
    headers = getattr(exc, "headers", None)  # e.g. the challenge of a 401
    if isinstance(exc, HTTPException):
        # keeps e.g. the Allow header of a 405
        headers = [(k, v) for k, v in exc.get_headers() if k.lower() != "content-type"]
    return status, body, headers


def error_response(exc: Exception) -> Response:
    status, body, headers = error_parts(exc)
    if status >= 500:
        _log.error("answering %s %s: %r", status, body["error"], exc)
    return json_response(body, status, headers)


class _ExactJson:
    """``json`` for werkzeug's ``get_json``, with JSON numbers that have a
    fraction or exponent read as ``Decimal``: a float would round money
    (``1.0000000000000001`` would become ``1.0``) before it is validated."""

    dumps = staticmethod(json.dumps)

    @staticmethod
    def loads(data, **kwargs):
        return json.loads(data, parse_float=Decimal, **kwargs)


class JsonRequest(Request):
    json_module = _ExactJson


class JsonWsgiApp(WsgiApp):
    def __init__(self, server, max_content_length, max_header_bytes, max_in_flight):
        super().__init__(server)
        self.max_content_length = max_content_length
        self.max_header_bytes = max_header_bytes
        self.max_in_flight = max_in_flight
        self.in_flight = 0  # one process, green threads: no lock needed
        self._refusal = None

    def __call__(self, environ, start_response):
        started = time.perf_counter()
        path = environ.get("PATH_INFO", "")
        counted = path not in NEVER_REFUSED and not path.startswith(NEVER_REFUSED_PREFIX)
        if counted:
            if self.in_flight >= self.max_in_flight:
                return self._refuse(environ, start_response, started)
            self.in_flight += 1
            HTTP_IN_FLIGHT.set(self.in_flight)
        request = JsonRequest(environ, shallow=True)
        request.max_content_length = self.max_content_length
        try:
            response = self._handle(request, environ, started)
        finally:
            if counted:
                self.in_flight -= 1
                HTTP_IN_FLIGHT.set(self.in_flight)
        return response(environ, start_response)

    def _refuse(self, environ, start_response, started):
        # As cheap as an answer gets (a refusal must not cost what it saves):
        # no request object, one prepared answer, the counters, no log line.
        if self._refusal is None:
            refused = Overloaded(f"Over {self.max_in_flight} requests in progress; retry in a second.")
            self._refusal = error_response(refused)
        method = environ.get("REQUEST_METHOD", "")
        HTTP_REQUESTS.labels(method, "refused", "503").inc()
        HTTP_DURATION.labels(method, "refused").observe(time.perf_counter() - started)
        return self._refusal(environ, start_response)

    def _handle(self, request, environ, started):
        adapter = self.url_map.bind_to_environ(environ)
        route, values = "unmatched", {}
        try:
            header_bytes = sum(len(k) + len(v) for k, v in environ.items() if k.startswith("HTTP_"))
            if header_bytes > self.max_header_bytes:
                raise HeadersTooLarge(f"The request's headers are over {self.max_header_bytes} bytes.")
            rule, values = adapter.match(return_rule=True)
            route = rule.rule
            request.path_values = values
            response = rule.endpoint.handle_request(request)
        except (HTTPException, HeadersTooLarge) as exc:
            response = error_response(exc)
        _observe(request, route, values, response, time.perf_counter() - started)
        return response


# Traefik's check of each gateway, every second: counted, and logged only when it fails.
UNLOGGED = frozenset({"/health/gateway"})


def _observe(request, route, values, response, elapsed):
    """One log line and the request metrics per HTTP request. The route is the
    rule (``/person/<cpf>``), never the path: a label per CPF would not scale.
    A write's line has the ``sequence`` its event got: with the CPF it names
    the event in person's and score's lines."""
    status = response.status_code
    HTTP_REQUESTS.labels(request.method, route, str(status)).inc()
    HTTP_DURATION.labels(request.method, route).observe(elapsed)
    if not _log.isEnabledFor(logging.INFO) or (route in UNLOGGED and status == 200):
        return  # per request: build the line's fields only if it is written
    fields = {
        "method": request.method,
        "path": request.path,
        "route": route,
        "status": status,
        "duration_ms": round(elapsed * 1000, 2),
    }
    if "cpf" in values:
        fields["cpf"] = values["cpf"]
    elif response.headers.get("Location", "").startswith("/person/"):  # a person created
        fields["cpf"] = response.headers["Location"].rsplit("/", 1)[1]
    sequence = response.headers.get("Event-Sequence")
    if sequence is not None and request.method in ("POST", "DELETE"):
        fields["sequence"] = int(sequence)
    stack = request.environ.get(CALL_ID_STACK_KEY)
    if stack:
        fields.update(call_id=stack[-1], call_id_stack=stack)
    _log.info("%s %s %s in %.1f ms", request.method, request.path, status, elapsed * 1000, extra=fields)


class JsonWebServer(WebServer):
    def make_url_map(self):
        # Nameko's, but werkzeug would answer "//" in a path with a redirect to
        # the merged path: an empty path segment is a route that does not exist (404).
        url_map = Map(merge_slashes=False)
        for provider in self._providers:
            rule = provider.get_url_rule()
            rule.endpoint = provider
            url_map.add(rule)
        return url_map

    @functools.cached_property
    def tokens(self) -> tuple:
        """``API_TOKENS``, parsed once per gateway (its routes read it at setup)."""
        tokens = parse_tokens(self.container.config.get("API_TOKENS"))
        if not tokens:
            _log.warning("API_TOKENS is empty: every route of this gateway is open to anyone who reaches it")
        return tokens

    def get_wsgi_app(self):
        config = self.container.config
        return JsonWsgiApp(
            self, int(config["MAX_CONTENT_LENGTH"]), int(config["MAX_HEADER_BYTES"]), int(config["MAX_IN_FLIGHT"])
        )


WRITE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})


def client_gone(environ) -> bool:
    """Whether the client has closed its connection (read to its end: the
    request's body must have been read first). Traefik closes it when it stops
    waiting for an answer and answers 504 itself: a gateway that was frozen
    meanwhile reads the request only afterwards, and must not run a write its
    client was told timed out."""
    sock = getattr(environ.get("eventlet.input"), "_sock", None)
    raw = getattr(sock, "fd", sock)  # eventlet's green socket wraps the OS one
    if raw is None:
        return False
    try:
        return raw.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
    except (BlockingIOError, InterruptedError):
        return False  # open, nothing more sent: the client waits for its answer
    except OSError:
        return True  # reset


class JsonHttpEntrypoint(HttpRequestHandler):
    server = JsonWebServer()

    def __init__(self, method, url, scope=None, public=True, **kwargs):
        """``scope``: one of :data:`gateway.auth.SCOPES`, which the route's
        token must have whenever ``API_TOKENS`` is configured; None, an open route.
        ``public``: routed by Traefik (gateway/edge.py); False, answered on the
        gateway's own port only."""
        if scope is not None and scope not in SCOPES:
            raise ValueError(f"unknown scope {scope!r}")
        # 4xx answers are the client's mistakes, not the gateway's failures
        kwargs.setdefault("expected_exceptions", CLIENT_ERRORS)
        self.scope = scope
        self.public = public
        super().__init__(method, url, **kwargs)

    def setup(self):
        self.tokens = self.server.tokens
        super().setup()

    def handle_request(self, request):
        # Checked before a worker is spawned: a refused request costs no worker.
        try:
            request.environ[TOKEN_KEY] = authorize(request, self.tokens, self.scope)
            if request.method in WRITE_METHODS:
                request.shallow = False  # as Nameko's handle_request does, to read the body here
                request.get_data(cache=True)  # the whole body, so what follows it is the connection's end
                if client_gone(request.environ):
                    _log.warning("%s %s: the client left before it started; not run", request.method, request.path)
                    return json_response({"error": "CLIENT_CLOSED_REQUEST", "message": "Not run."}, 499)
        except Exception as exc:
            return self.response_from_exception(exc)
        return super().handle_request(request)

    def handle_result(self, event, worker_ctx, result, exc_info):
        # The worker's call ids, for the request's log line (JsonWsgiApp): the
        # request is the worker's first argument.
        worker_ctx.args[0].environ[CALL_ID_STACK_KEY] = worker_ctx.call_id_stack
        return super().handle_result(event, worker_ctx, result, exc_info)

    def response_from_exception(self, exc):
        return error_response(exc)


http = JsonHttpEntrypoint.decorator
