"""``nameko`` (run, shell, ...) without eventlet's deprecation banner (:mod:`ops.quiet`).

    .venv/bin/python -m ops.launch run --config config.yml person.service
    .venv/bin/python -m ops.launch shell --config config.yml

``make run`` starts the services this way (``Procfile``), ``make shell`` the shell.
"""

import sys

import ops.quiet  # noqa: F401  (first: before nameko imports eventlet)

# isort: split
from nameko.cli.main import main

if __name__ == "__main__":
    sys.exit(main())
