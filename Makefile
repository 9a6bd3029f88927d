# make run: the whole system on this machine; make test: every test.
# Both install what they need first; RabbitMQ and PostgreSQL must be running
# (locally by default; see config.yml for the variables that point elsewhere).
# Another interpreter: make run PYTHON=python3.13 (a venv of its own).

PYTHON  ?= python3
VENV    ?= $(if $(filter python3,$(PYTHON)),.venv,.venv-$(notdir $(PYTHON)))
PY      := $(VENV)/bin/python
STAMP   := $(VENV)/.installed-stamp

# pyenv's shims refuse a version that is installed but not the selected one
# (python3.13 where 3.11 is global): then take that version's own interpreter.
PYTHON_BIN = $(shell $(PYTHON) -c 'import sys; print(sys.executable)' 2>/dev/null \
	|| ls -d $${PYENV_ROOT:-$$HOME/.pyenv}/versions/$(patsubst python%,%,$(notdir $(PYTHON))).*/bin/$(notdir $(PYTHON)) 2>/dev/null | tail -1)

.PHONY: install migrate run restart status shell test lint format lock reset clean bench soak

install: $(STAMP)

# Re-installs only when a pin changes; nameko's CLI needs pkg_resources,
# which setuptools 81 deprecates and 82 removed.
$(STAMP): requirements.lock requirements-dev.lock setup.cfg pyproject.toml
	test -x $(PY) || $(PYTHON_BIN) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check 'setuptools<81' wheel
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements-dev.lock
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e .
	touch $@

migrate: install
	$(PY) -m ops.migrate

# Traefik on :8000 in front of two gateways, person and score, under
# supervisord (ops/run.py): the ready line comes once /health through Traefik
# is 200; Ctrl-C stops everything. One line, so make runs it without a shell
# and a SIGTERM to make reaches it.
run: install migrate
	$(PY) -m ops.run

# make restart SERVICE=score (person, score, gateway, gateway-1, edge); make status
restart: install
	$(PY) -m ops.run restart $(SERVICE)

status: install
	$(PY) -m ops.run status

# nameko shell on the running system: n.rpc.person..., n.rpc.score...
shell: install
	$(PY) -m ops.launch shell --config config.yml

test: install
	$(PY) -m pytest $(PYTEST_ARGS)

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: install
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

# make bench [ARGS=--quick] [ARGS="--profile"]: the benchmark of issue 4 on a private
# RabbitMQ node and private databases; it needs wrk (installed here if missing).
bench: install
	command -v wrk >/dev/null || { apt-get update -qq && apt-get install -y -qq wrk; }
	$(PY) -m bench $(ARGS)

# Storage over time: writes at a steady rate (default 100/s for 10 minutes),
# each table's size sampled; make soak ARGS="--minutes 20 --rate 50"
soak: install
	command -v wrk >/dev/null || { apt-get update -qq && apt-get install -y -qq wrk; }
	$(PY) -m bench --only soak $(ARGS)

# Re-pin: the runtime set from setup.cfg's ranges, then the tools on top of it
# (requirements-dev.in), each at the newest version the ranges allow.
lock: install
	$(VENV)/bin/pip-compile --quiet --strip-extras --no-header --no-emit-index-url --no-emit-find-links --output-file requirements.lock setup.cfg
	$(VENV)/bin/pip-compile --quiet --strip-extras --no-header --no-emit-index-url --no-emit-find-links --output-file requirements-dev.lock requirements-dev.in

# Drops the project's databases and queues, after asking (make reset ARGS=--yes does not ask).
reset: install
	$(PY) -m ops.reset $(ARGS)

clean:
	rm -rf $(VENV) .run *.egg-info
