# InferQ: `make run` starts the whole service, `make test` runs every test. Both install what they need.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cksum pyproject.toml | cut -d' ' -f1)

# Local runs (DEBUG off) get a secret key generated once into var/secret_key; production sets its own.
export DJANGO_SECRET_KEY ?= $(shell $(PYTHON) scripts/local_secret.py)

.PHONY: install run test test-unit test-integration test-postgres lint token bench bench-quick bench-split bench-web bench-pools clean

install: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@echo "Installing dependencies into $(VENV) (first run takes a few minutes: torch is large)…"
	@$(PY) -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	@rm -f $(VENV)/.installed-* && touch $@

run: $(STAMP)
	@$(PY) scripts/run.py

test: $(STAMP)
	$(PY) -m pytest

test-unit: $(STAMP)
	$(PY) -m pytest --ignore=tests/integration

test-integration: $(STAMP)
	$(PY) -m pytest tests/integration

# The integration tests again, each stack on a fresh database of a PostgreSQL server instead of SQLite (its user
# must be allowed to create databases), and the batch claim's test on that server.
INFERQ_TEST_POSTGRES_URL ?= postgres://postgres@127.0.0.1:5432/postgres
test-postgres: $(STAMP)
	INFERQ_INTEGRATION_POSTGRES_URL=$(INFERQ_TEST_POSTGRES_URL) INFERQ_TEST_POSTGRES_URL=$(INFERQ_TEST_POSTGRES_URL) \
		$(PY) -m pytest tests/integration tests/project/test_postgresql_claim.py --deselect tests/integration/test_bench_quick.py

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy

token: $(STAMP)
	@$(PY) manage.py migrate --verbosity 0
	@$(PY) manage.py inferq_token

bench: $(STAMP)
	$(PY) -m bench

bench-split: $(STAMP)
	$(PY) -m bench.split

bench-web: $(STAMP)
	$(PY) -m bench.web

bench-pools: $(STAMP)
	$(PY) -m bench.pools

bench-quick: $(STAMP)
	$(PY) -m bench --quick

clean:
	rm -rf $(VENV) var .pytest_cache
