"""What a request says: its JSON body, the keys a write goes to person with,
the sequence a read must see, the CPF in its path and who sent it, each read
and checked here (a bad one is the client's 4xx) for :mod:`gateway.service`'s
routes, which hand them on. Nothing here calls another service.
"""

import uuid

from werkzeug.exceptions import BadRequest

from contracts.cpf import InvalidCPF, normalize_cpf
from contracts.errors import InvalidInput
from contracts.idempotency import IDEMPOTENCY_KEY_MAX_LENGTH as MAX_KEY_LENGTH
from gateway.exceptions import EmptyBody
from gateway.http import TOKEN_KEY

# Who erased, in person's audit, when API_TOKENS is empty (no token is asked for).
OPEN_API = "anyone (API_TOKENS empty)"

MAX_SEQUENCE = 2**31 - 1  # person's sequence column is a PostgreSQL integer


def json_body(request):
    # get_json raises werkzeug's 415 (not JSON), 400 (malformed) or 413 (too big).
    if not request.get_data(cache=True):
        raise EmptyBody("The request body is empty; send a JSON object.")
    try:
        return request.get_json()
    except RecursionError:
        raise BadRequest("The JSON body is nested too deeply.") from None


def write_keys(request) -> dict:
    """The keys a write goes to person with: ``request_id``, this request's own
    (the broker may deliver an RPC request twice, after a reconnect: the second
    delivery then answers the first answer), and the client's
    ``Idempotency-Key`` header if it sent one (1 to 200 printable ASCII characters)."""
    keys = {"request_id": str(uuid.uuid4())}
    key = request.headers.get("Idempotency-Key")
    if key is None:
        return keys
    if not (1 <= len(key) <= MAX_KEY_LENGTH and key.isascii() and key.isprintable()):
        raise InvalidInput(
            "Invalid Idempotency-Key header.",
            {"Idempotency-Key": [f"Must be 1 to {MAX_KEY_LENGTH} printable ASCII characters."]},
        )
    return {**keys, "idempotency_key": key}


def min_sequence(request):
    """``?min_sequence=<n>`` or the ``Min-Event-Sequence`` header, or None."""
    field, value = "min_sequence", request.args.get("min_sequence")
    if value is None:
        field, value = "Min-Event-Sequence", request.headers.get("Min-Event-Sequence")
    if value is None:
        return None
    value = value.strip()
    if not (value.isascii() and value.isdigit() and 1 <= int(value) <= MAX_SEQUENCE):
        raise InvalidInput(
            f"Invalid {field}.",
            {field: [f"Must be a whole number from 1 to {MAX_SEQUENCE}: a write's sequence."]},
        )
    return int(value)


def path_cpf(cpf):
    """The CPF of a route's path, normalized; a malformed one is 422."""
    try:
        return normalize_cpf(cpf)
    except InvalidCPF as exc:
        raise InvalidInput("Invalid CPF in the path.", {"cpf": [exc.message]}) from exc


def requester(request) -> str:
    """Who asked, for person's audit: the bearer token's name (never the
    token), or ``OPEN_API`` when no token is asked for."""
    token = request.environ.get(TOKEN_KEY)
    return token.name if token is not None else OPEN_API
