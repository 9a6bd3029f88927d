"""A client's ``Idempotency-Key``: how long it may be, and the error of one
used again for another request (raised by person over RPC, answered 422
``IDEMPOTENCY_KEY_REUSED`` by the gateway)."""

from nameko.exceptions import deserialize_to_instance

IDEMPOTENCY_KEY_MAX_LENGTH = 200


@deserialize_to_instance
class IdempotencyKeyReused(Exception):
    """The key was used before for a different request."""
