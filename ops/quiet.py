"""Imported first by every process this project starts (services, shell, command
line tools), before anything imports eventlet.

Eventlet announces its own deprecation on import, a 9-line warning on every
start, that nobody running this can act on: the move away from it is the
project's (the pins in setup.cfg say which eventlet we run). Only that one
warning is silenced; every other warning still shows.
"""

import warnings

warnings.filterwarnings("ignore", message=r"\s*Eventlet is deprecated")
