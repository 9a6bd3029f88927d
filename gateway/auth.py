"""Optional bearer tokens on the write routes.

``API_TOKENS`` (config, from the environment) is a comma-separated list of
accepted tokens; empty, the default for local runs, turns the check off. A
write without ``Authorization: Bearer <one of them>`` gets 401 before any
backend is called. Tokens are compared in constant time.
"""

import hmac

from gateway.exceptions import Unauthorized


def parse_tokens(value) -> tuple:
    """``"a, b"`` -> ``("a", "b")``; None or blank -> no tokens (auth off)."""
    if value is None:
        return ()
    if isinstance(value, list | tuple):
        value = ",".join(str(v) for v in value)
    return tuple(token.strip() for token in str(value).split(",") if token.strip())


def check_bearer(request, tokens: tuple) -> None:
    """Raise :class:`Unauthorized` unless ``request`` carries one of ``tokens``."""
    if not tokens:
        return
    header = request.headers.get("Authorization", "")
    scheme, _, presented = header.partition(" ")
    if scheme.lower() != "bearer" or not presented.strip():
        raise Unauthorized("This route needs an 'Authorization: Bearer <token>' header.")
    presented = presented.strip().encode()
    # Every token is compared, so the time taken does not tell which one nearly matched.
    matched = False
    for token in tokens:
        matched |= hmac.compare_digest(presented, token.encode())
    if not matched:
        raise Unauthorized("The bearer token is not valid.", invalid=True)
