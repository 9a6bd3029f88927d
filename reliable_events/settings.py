"""Settings read from ``config.yml``, refused at start when they make no sense.

An extension reads its settings in ``setup()``; one that makes no sense raises
:class:`ConfigError` there, so the service never starts with it. Its message
is one line naming the setting, the value and why: ``python -m ops.launch``
(how ``make run`` starts a service) logs that line alone and exits with
status 2.

Example::

    >>> positive_number({"OUTBOX_BATCH_SIZE": "0"}, "OUTBOX_BATCH_SIZE", integer=True)
    Traceback (most recent call last):
    ...
    reliable_events.settings.ConfigError: OUTBOX_BATCH_SIZE=0 refused: it must be a whole number above 0
"""

import math


class ConfigError(ValueError):
    """A setting the service refuses to start with; the message says which and why."""


def positive_number(config: dict, key: str, integer: bool = False) -> float | int:
    """``config[key]`` as a number above 0 (a whole number with ``integer``),
    else :class:`ConfigError`."""
    raw = config.get(key)
    wanted = "a whole number above 0" if integer else "a number above 0"
    try:
        if isinstance(raw, bool):
            raise ValueError(raw)
        value = float(raw)
    except (TypeError, ValueError):
        raise ConfigError(f"{key}={raw!r} refused: it must be {wanted}") from None
    if not math.isfinite(value) or value <= 0 or (integer and not value.is_integer()):
        raise ConfigError(f"{key}={raw} refused: it must be {wanted}")
    return int(value) if integer else value
