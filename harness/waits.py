"""Waiting for a condition, bounded: no test sleeps a fixed time in place of a wait."""

import time

import requests


def wait_for(predicate, timeout, what, interval=0.1, on_timeout=None):
    """Poll ``predicate()`` until it returns a truthy value (returned); raise
    ``AssertionError`` naming ``what`` (and ``on_timeout()``'s details) after
    ``timeout`` seconds. A request or socket error counts as "not yet"."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            value = predicate()
        except (requests.RequestException, OSError) as exc:
            value, last_error = None, exc
        else:
            last_error = None
        if value:
            return value
        if time.monotonic() > deadline:
            details = on_timeout() if on_timeout else ""
            raise AssertionError(
                f"timed out after {timeout}s waiting for {what} (last error {last_error!r})\n{details}"
            )
        time.sleep(interval)
