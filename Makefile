# make run: the whole system on this machine; make test: every test.
# Both install what they need first; RabbitMQ and PostgreSQL must be running
# (locally by default; see config.yml for the variables that point elsewhere).

VENV    ?= .venv
PY      := $(VENV)/bin/python
STAMP   := $(VENV)/.installed-stamp
PORT    := $(lastword $(subst :, ,$(or $(WEB_SERVER_ADDRESS),0.0.0.0:8000)))

.PHONY: install migrate run test lint format lock clean bench

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

run: install migrate
	@echo "API on http://localhost:$(PORT)  (Ctrl-C stops all three services)"
	@echo "try:  curl -i -H 'Content-Type: application/json' http://localhost:$(PORT)/person --data @payloads/new_person.json"
	$(VENV)/bin/honcho start -f Procfile

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

clean:
	rm -rf $(VENV) *.egg-info
