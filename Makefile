# Two commands do everything on a fresh machine: `make run` and `make test`.
# Each creates the virtual environment and installs what it needs when it is missing.
PYTHON ?= python3.11
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# The web console (console/): built with Node.js 20 and npm when missing or stale.
NPM    ?= npm
CONSOLE_STAMP := console/dist/.built
CONSOLE_SRC   := $(shell find console/src -type f 2>/dev/null) console/index.html \
                 console/vite.config.js console/package.json console/package-lock.json

.PHONY: run test test-unit test-service test-e2e storms reliability reliability-long lint format bench bench-long clean install console

install: $(STAMP)

$(STAMP): pyproject.toml
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "error: $(PYTHON) not found; install Python 3.11 or set PYTHON=" >&2; exit 1; }
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[embedded,dev]"
	@touch $(STAMP)

console: $(CONSOLE_STAMP)

$(CONSOLE_STAMP): $(CONSOLE_SRC)
	@command -v $(NPM) >/dev/null 2>&1 || { echo "error: $(NPM) not found; install Node.js 20 with npm (or set NPM=), or build console/dist on another machine and copy it here" >&2; exit 1; }
	cd console && $(NPM) ci --no-audit --no-fund && $(NPM) run build
	@touch $(CONSOLE_STAMP)

run: $(STAMP) $(CONSOLE_STAMP)
	$(BIN)/yuqing up

test: $(STAMP) $(CONSOLE_STAMP)
	$(BIN)/python -m pytest -q -m "not slow and not storm"

test-unit: $(STAMP)
	$(BIN)/python -m pytest -q tests/unit

test-service: $(STAMP)
	$(BIN)/python -m pytest -q tests/service

test-e2e: $(STAMP) $(CONSOLE_STAMP)
	$(BIN)/python -m pytest -q -m "not storm" tests/e2e

# A storm per plan pack, end to end, deadlines passed under libfaketime (Debian `faketime`);
# each prints what it injected and what it checked (.ci/run adds it after the suite).
storms: $(STAMP)
	$(BIN)/python -m pytest -q -s -m storm tests/e2e

# Faults injected into running services (a database killed and restarted, ...); each test
# prints what it injected and what it checked.
reliability: $(STAMP)
	$(BIN)/python -m pytest -q -s tests/reliability

# The fault runs too long for `make test` (.ci/run adds it after the suite).
reliability-long: $(STAMP)
	$(BIN)/python -m pytest -q -s -m slow tests/reliability

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports

format: $(STAMP)
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

bench: $(STAMP)
	$(BIN)/python bench/bench_pipeline.py

bench-long: $(STAMP)
	$(BIN)/python bench/bench_pipeline.py --long 1800

# The compose shape (docker-compose.yml): every variable from .env (see .env.example).
.PHONY: up down lock
COMPOSE ?= docker compose

up:
	@test -f .env || { echo "error: no .env; cp .env.example .env and set YUQING_SECRET" >&2; exit 1; }
	$(COMPOSE) up --build --detach --wait

down:
	$(COMPOSE) down

# The image's lock files, from pyproject.toml: runtime dependencies and the build backend.
lock: $(STAMP)
	$(BIN)/uv pip compile pyproject.toml --python-version 3.11 --generate-hashes --quiet \
		--custom-compile-command "make lock" -o requirements.lock
	printf 'hatchling>=1.27,<2\n' | $(BIN)/uv pip compile - --python-version 3.11 \
		--generate-hashes --quiet --custom-compile-command "make lock" -o deploy/build.lock

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
