"""Imported first by every process this project starts (services, shell, command
line tools), before anything imports eventlet.

Eventlet announces its own deprecation on import, a 9-line warning on every
start, that nobody running this can act on: the move away from it is the
project's (the pins in setup.cfg say which eventlet we run). Likewise
setuptools' warning that ``pkg_resources``, which Nameko's command line
imports, is deprecated (the Makefile pins setuptools below 81, which still has
it). Only those two are silenced; every other warning still shows.
"""

import warnings

warnings.filterwarnings("ignore", message=r"\s*Eventlet is deprecated")
warnings.filterwarnings("ignore", message=r"pkg_resources is deprecated", category=UserWarning)
