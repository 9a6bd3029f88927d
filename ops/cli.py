"""What the operator commands share: a one-line failure when what they need is
not running, instead of a timeout and a traceback."""

import sys

from kombu import Connection

from reliable_events.rpc import BROKER_ERRORS, rpc_consumers


class Unreachable(Exception):
    """The broker or a service the command needs cannot be reached; nothing was done."""


def safe_uri(uri: str) -> str:
    """The URI without its password, for a message."""
    scheme, sep, rest = uri.partition("://")
    if "@" in rest:
        credentials, _, host = rest.rpartition("@")
        rest = f"{credentials.split(':', 1)[0]}:***@{host}"
    return f"{scheme}{sep}{rest}"


def check_consumers(amqp_uri: str, services) -> None:
    """Raise :class:`Unreachable`, saying which, when the broker is down or a
    service has no running instance (its durable ``rpc-<service>`` queue
    outlives it, so a request would only wait there until the timeout)."""
    try:
        with Connection(amqp_uri, connect_timeout=5) as conn:
            conn.ensure_connection(max_retries=1, interval_start=0)
            for service in services:
                if not rpc_consumers(conn, service):
                    raise Unreachable(f"{service} is not running (no consumer on rpc-{service}).")
    except BROKER_ERRORS as exc:  # down, refused, bad vhost or credentials
        raise Unreachable(f"the message broker at {safe_uri(amqp_uri)} is unreachable ({exc}).") from None


def fail(prog: str, message: str) -> int:
    """Say what went wrong in one line on stderr; the exit status 1."""
    print(f"{prog}: {message}", file=sys.stderr)
    return 1
