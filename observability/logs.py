"""One JSON object per log line, carrying the Nameko call id of the worker that logged it.

``config.yml`` selects the formatter (``LOG_FORMAT=json``, the default, or
``plain``). Every line has ``timestamp``, ``level``, ``logger``, ``message``,
plus what the code passed in ``extra`` (``event_id``, the event's key, ...), plus the
call id of the current worker. Every CPF in a line is masked (``529.***.***-25``):
no log holds one whole. The lines of one write still share its call ids:

- ``call_id``: the worker's own (``person.add_income.<uuid>``);
- ``call_id_stack``: the chain of calls that led to it, starting with the
  gateway's HTTP request, so one write can be followed across the services:
  its gateway request, person's RPC worker, the event person published and the
  event score applied all carry the same first call id.

The call id comes from :class:`CallContext`, a dependency each service
declares; code outside a worker (the outbox relay, a handler's batch
bookkeeping) passes the call ids it knows in ``extra``.
"""

import datetime
import logging

from eventlet.corolocal import local
from nameko.extensions import DependencyProvider
from pythonjsonlogger.json import JsonFormatter as _JsonFormatter

from contracts.cpf import mask_cpfs

# Per greenthread: each Nameko worker runs in its own.
_current = local()


class CallContext(DependencyProvider):
    """Makes the running worker's call ids visible to every log record it emits."""

    def worker_setup(self, worker_ctx):
        _current.call_id_stack = worker_ctx.call_id_stack

    def worker_teardown(self, worker_ctx):
        _current.call_id_stack = None


def current_call_id_stack() -> list | None:
    return getattr(_current, "call_id_stack", None)


class CallIdFilter(logging.Filter):
    """Adds ``call_id`` and ``call_id_stack`` from the current worker, unless given in ``extra``."""

    def filter(self, record):
        if not hasattr(record, "call_id_stack"):
            stack = current_call_id_stack()
            if stack:
                record.call_id_stack = stack
        stack = getattr(record, "call_id_stack", None)
        if stack and not hasattr(record, "call_id"):
            record.call_id = stack[-1]
        return True


class JsonFormatter(_JsonFormatter):
    """python-json-logger's formatter with this project's field names, and
    every CPF in the line masked (``529.***.***-25``): in the message, the
    fields, a traceback, whatever logged it (Nameko's own lines included)."""

    def format(self, record):
        return mask_cpfs(super().format(record))

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("fmt", "%(asctime)s %(levelname)s %(name)s %(message)s")
        kwargs.setdefault("rename_fields", {"asctime": "timestamp", "levelname": "level", "name": "logger"})
        kwargs.setdefault("timestamp", False)
        super().__init__(*args, **kwargs)

    def formatTime(self, record, datefmt=None):  # noqa: N802  (logging's name)
        # ISO 8601 in UTC with milliseconds, like the events' occurred_at.
        return datetime.datetime.fromtimestamp(record.created, datetime.UTC).isoformat(timespec="milliseconds")


class PlainFormatter(logging.Formatter):
    """``LOG_FORMAT=plain``: a line of text, every CPF in it masked like :class:`JsonFormatter`'s."""

    def format(self, record):
        return mask_cpfs(super().format(record))
