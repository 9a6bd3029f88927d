"""Bearer tokens with scopes: which routes a token may call.

``API_TOKENS`` (config, from the environment) is a comma-separated list of
``token`` or ``token:scope+scope`` entries. The scopes are :data:`SCOPES`:
``read`` (a person, a score), ``write`` (the POST routes) and ``admin``
(erasure). A bare ``token`` may read and write (:data:`BARE_TOKEN_SCOPES`),
what a token could do before scopes existed, plus reading.

Each route names the scope it needs (``@http(..., scope="read")``); routes
with none (health, the OpenAPI document, metrics) stay open. A request to a
scoped route without a known token is 401 with ``WWW-Authenticate``; with a
known token that lacks the scope, 403. Both are answered before any backend
is called. With ``API_TOKENS`` empty (the default for local runs) every route
is open, and the gateway says so in a WARNING line at start.

Example::

    >>> tokens = parse_tokens("t1, t2:read, t3:read+write+admin")
    >>> sorted(tokens[0].scopes), sorted(tokens[1].scopes)
    (['read', 'write'], ['read'])
    >>> tokens[2].name  # a hash: what logs and the erasure audit record
    'token-cece8a9cecfb'
"""

import hashlib
import hmac
from dataclasses import dataclass

from gateway.exceptions import Forbidden, Unauthorized

SCOPES = ("read", "write", "admin")
BARE_TOKEN_SCOPES = frozenset({"read", "write"})


@dataclass(frozen=True)
class Token:
    secret: bytes
    scopes: frozenset

    @property
    def name(self) -> str:
        """How a token is named where it must not be shown: a hash of it."""
        return f"token-{hashlib.sha256(self.secret).hexdigest()[:12]}"


def parse_tokens(value) -> tuple:
    """``API_TOKENS`` as :class:`Token` s; None or blank -> none (every route open).

    Raises ValueError for an unknown scope or an empty token, so a typo stops
    the gateway at start instead of locking a route or opening one."""
    if value is None:
        return ()
    if isinstance(value, list | tuple):
        value = ",".join(str(v) for v in value)
    tokens = []
    for entry in str(value).split(","):
        entry = entry.strip()
        if not entry:
            continue
        secret, separator, scopes = entry.partition(":")
        secret = secret.strip()
        wanted = frozenset(s.strip() for s in scopes.split("+")) if separator else BARE_TOKEN_SCOPES
        unknown = wanted - set(SCOPES)
        if not secret or unknown:
            raise ValueError(
                f"API_TOKENS: each entry is 'token' or 'token:scope+scope' with scopes {', '.join(SCOPES)}"
                + (f"; unknown scope(s) {', '.join(sorted(unknown))}" if unknown else "; a token is empty")
            )
        tokens.append(Token(secret.encode(), wanted))
    return tuple(tokens)


def authorize(request, tokens: tuple, scope: str | None) -> Token | None:
    """The :class:`Token` ``request`` carries, if ``scope`` needs one; raise
    :class:`Unauthorized` (none, or not a known one) or :class:`Forbidden`
    (known, without ``scope``). No tokens configured, or no scope: None."""
    if not tokens or scope is None:
        return None
    header = request.headers.get("Authorization", "")
    kind, _, presented = header.partition(" ")
    if kind.lower() != "bearer" or not presented.strip():
        raise Unauthorized("This route needs an 'Authorization: Bearer <token>' header.")
    presented = presented.strip().encode()
    # Every token is compared, so the time taken does not tell which one nearly matched.
    matched = None
    for token in tokens:
        if hmac.compare_digest(presented, token.secret):
            matched = token
    if matched is None:
        raise Unauthorized("The bearer token is not valid.", invalid=True)
    if scope not in matched.scopes:
        raise Forbidden(f"This token does not have the '{scope}' scope this route needs.")
    return matched
