"""Every error the gateway can answer with, in one table: exception -> (status, code).

Importing :mod:`contracts.errors` registers the backends' error types with
Nameko, so remote errors arrive here as those types.
"""

from werkzeug import exceptions as http_errors

from contracts.errors import InvalidInput, PersonAlreadyExists, PersonNotFound, ScoreNotFound
from contracts.idempotency import IdempotencyKeyReused


class ServiceUnavailable(Exception):
    """A backend or the broker cannot be reached."""


class BrokerUnavailable(ServiceUnavailable):
    """The message broker cannot take the request."""


class Overloaded(ServiceUnavailable):
    """More requests in progress than ``MAX_IN_FLIGHT``: refused at once, to retry."""

    headers = [("Retry-After", "1")]


class GatewayTimeout(Exception):
    """A backend did not answer within ``RPC_TIMEOUT``."""


class EmptyBody(Exception):
    """A POST came without a body."""


class HeadersTooLarge(Exception):
    """The request's headers are over ``MAX_HEADER_BYTES``."""


class TooManyRequests(Exception):
    """The edge (Traefik) refused a client over its rate or in-flight limit."""

    headers = [("Retry-After", "1")]


class BadGateway(Exception):
    """The edge lost its connection to a gateway instance, or could reach none."""


class Unauthorized(Exception):
    """A scoped route without a known bearer token (when ``API_TOKENS`` is set)."""

    def __init__(self, message, invalid=False):
        super().__init__(message)
        challenge = 'Bearer realm="gateway"'
        if invalid:
            challenge += ', error="invalid_token"'
        self.headers = [("WWW-Authenticate", challenge)]


class Forbidden(Exception):
    """A known token without the scope the route needs."""


MAPPED_ERRORS = {
    InvalidInput: (422, "INVALID_INPUT"),
    PersonNotFound: (404, "PERSON_NOT_FOUND"),
    PersonAlreadyExists: (409, "PERSON_ALREADY_EXISTS"),
    ScoreNotFound: (404, "SCORE_NOT_FOUND"),
    IdempotencyKeyReused: (422, "IDEMPOTENCY_KEY_REUSED"),
    Overloaded: (503, "OVERLOADED"),
    ServiceUnavailable: (503, "SERVICE_UNAVAILABLE"),
    GatewayTimeout: (504, "GATEWAY_TIMEOUT"),
    EmptyBody: (400, "EMPTY_BODY"),
    HeadersTooLarge: (431, "HEADERS_TOO_LARGE"),
    TooManyRequests: (429, "TOO_MANY_REQUESTS"),
    BadGateway: (502, "BAD_GATEWAY"),
    Unauthorized: (401, "UNAUTHORIZED"),
    Forbidden: (403, "FORBIDDEN"),
    # Raised by werkzeug while reading the request.
    http_errors.BadRequest: (400, "MALFORMED_JSON"),
    http_errors.UnsupportedMediaType: (415, "UNSUPPORTED_MEDIA_TYPE"),
    http_errors.RequestEntityTooLarge: (413, "BODY_TOO_LARGE"),
    http_errors.NotFound: (404, "NOT_FOUND"),
    http_errors.MethodNotAllowed: (405, "METHOD_NOT_ALLOWED"),
}


CLIENT_ERRORS = tuple(exc for exc, (status, _) in MAPPED_ERRORS.items() if status < 500)


def error_for(exc: Exception):
    """``(status, code, message, fields)`` for an exception; 500 when unmapped."""
    for exc_type in type(exc).__mro__:
        if exc_type in MAPPED_ERRORS:
            status, code = MAPPED_ERRORS[exc_type]
            break
    else:
        if isinstance(exc, http_errors.HTTPException) and exc.code:
            return exc.code, f"HTTP_{exc.code}", exc.description, None
        return 500, "INTERNAL_ERROR", "The server failed to handle the request.", None
    if isinstance(exc, http_errors.HTTPException):
        message = exc.description
    elif isinstance(exc, InvalidInput):
        message = exc.message
    else:
        message = str(exc)
    return status, code, message, getattr(exc, "fields", None)
