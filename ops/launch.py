"""``nameko`` (run, shell, ...) without eventlet's deprecation banner (:mod:`ops.quiet`).

    .venv/bin/python -m ops.launch run --config config.yml person.service
    .venv/bin/python -m ops.launch shell --config config.yml

``make run`` starts the services this way (``Procfile``), ``make shell`` the shell.

A service refusing a setting at start (a
:class:`~reliable_events.settings.ConfigError`, raised by an extension's
``setup``) ends it with status 2 and one log line saying which setting and
why, in the service's log format, instead of three tracebacks of the same
error (eventlet prints each green thread's, then Python the main one's).
"""

import logging
import sys

import ops.quiet  # noqa: F401  (first: before nameko imports eventlet)

# isort: split
from eventlet.hubs.hub import BaseHub
from nameko.cli.main import main

from reliable_events.settings import ConfigError

_print_timer_exception = BaseHub.squelch_timer_exception


def _unless_refused(hub, timer, exc_info):
    if not isinstance(exc_info[1], ConfigError):  # said once, below
        _print_timer_exception(hub, timer, exc_info)


def launch() -> int:
    BaseHub.squelch_timer_exception = _unless_refused
    try:
        return main()
    except ConfigError as exc:
        logging.getLogger("ops.launch").critical("refused to start: %s", exc)
        return 2


if __name__ == "__main__":
    sys.exit(launch())
