# Lethe: `make demo` and `make test` do all set-up on a fresh machine (a virtualenv with pinned deps).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PG_TEST_URL ?= postgresql+psycopg://postgres@127.0.0.1:5432/lethe_test
REDIS_TEST_URL ?= redis://127.0.0.1:6379/15

.PHONY: demo test test-sqlite test-postgres lint up clean bench-shadows bench-load

$(STAMP): pyproject.toml constraints.txt client/pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# torch first, pinned with its torchvision: the two only import together at their paired versions.
	$(BIN)/pip install -q -c constraints.txt torch==2.14.1 torchvision==0.29.1
	# ./client first in the same command: the server depends on lethe-client, which is not on any index.
	$(BIN)/pip install -q -c constraints.txt -e ./client -e ".[engine,postgres,redis,s3,dev]"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/lethe demo

up: $(STAMP)
	$(BIN)/lethe up

# Engine + API + jobs on SQLite with the embedded broker, then the API and job tests again on
# Postgres + Redis with a real Celery worker.
test: test-sqlite test-postgres

test-sqlite: $(STAMP)
	$(BIN)/python -m pytest -q

test-postgres: $(STAMP)
	LETHE_TEST_DATABASE_URL=$(PG_TEST_URL) LETHE_TEST_BROKER_URL=$(REDIS_TEST_URL) \
		$(BIN)/python -m pytest -q tests/app tests/workers tests/migrations tests/client --ignore=tests/workers/engine --ignore=tests/app/intake \
		--ignore=tests/workers/test_faults.py --ignore=tests/workers/test_library_models.py \
		-m "not browser"

lint: $(STAMP)
	$(BIN)/ruff check app workers tests bench migrations client
	$(BIN)/mypy app workers client/lethe_client

# K shadow models at once vs one after another (prints ratios; `--device cuda` on a GPU).
bench-shadows: $(STAMP)
	$(BIN)/python bench/vmap_shadows.py --threads 1

# GET /v1/jobs/{id} under 64 pollers (wrk) and submit-to-running, on Postgres + Redis db 14 (throwaway
# database lethe_bench_<pid>); prints a table and writes var/load_api.json. About 2 minutes.
bench-load: $(STAMP)
	command -v wrk >/dev/null || apt-get install -y -q wrk >/dev/null || \
		{ apt-get update -q >/dev/null && apt-get install -y -q wrk >/dev/null; }
	$(BIN)/python bench/load_api.py

clean:
	rm -rf var/demo .pytest_cache .mypy_cache .ruff_cache
