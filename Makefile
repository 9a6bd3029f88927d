# make run: the whole system on this machine; make test: every test.
# Both install what they need first; RabbitMQ and PostgreSQL must be running
# (locally by default; see config.yml for the variables that point elsewhere).

VENV    ?= .venv
PY      := $(VENV)/bin/python
STAMP   := $(VENV)/.installed-stamp
PORT    := $(lastword $(subst :, ,$(or $(WEB_SERVER_ADDRESS),0.0.0.0:8000)))

.PHONY: install migrate run shell test lint format lock reset clean bench

install: $(STAMP)

# Re-installs only when a pin changes; nameko's CLI needs pkg_resources,
# which setuptools 82 removed.
$(STAMP): requirements.lock requirements-dev.lock setup.cfg pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check 'setuptools<82' wheel
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements-dev.lock
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e .
	touch $@

migrate: install
	$(PY) -m ops.migrate

# The ready line comes when /health answers 200 (ops/ready.py, in the
# background); Ctrl-C stops the three services and ends make quietly (honcho
# exits 130 on it, which is how this run is meant to end).
run: install migrate
	@$(PY) -m ops.ready --url http://localhost:$(PORT) & \
	$(VENV)/bin/honcho start -f Procfile || [ $$? -eq 130 ]

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

# Re-pin: the runtime set from setup.cfg's ranges, then the tools on top of it
# (requirements-dev.in), each at the newest version the ranges allow.
lock: install
	$(VENV)/bin/pip-compile --quiet --strip-extras --no-header --no-emit-index-url --no-emit-find-links --output-file requirements.lock setup.cfg
	$(VENV)/bin/pip-compile --quiet --strip-extras --no-header --no-emit-index-url --no-emit-find-links --output-file requirements-dev.lock requirements-dev.in

# Drops the project's databases and queues, after asking (make reset ARGS=--yes does not ask).
reset: install
	$(PY) -m ops.reset $(ARGS)

clean:
	rm -rf $(VENV) *.egg-info
