# RankIQ: every install step lives here (CI runs `.ci/run` -> `make test` on a fresh clone).
# Every pip call uses constraints.txt (torch==2.13.0 takes the local CPU wheel; any other
# torch spec would pull several GB of CUDA packages).

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
PIP    := $(BIN)/pip install --constraint constraints.txt
STAMP  := $(VENV)/.installed
PORT   ?= 3000
WORKERS ?= 1
PYTEST_ARGS ?=

.PHONY: venv serve test test-deps lint format models bench clean

venv: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade "pip>=24"
	$(PIP) --editable '.[train,dev]'
	touch $(STAMP)

## make serve: set up from nothing, then serve the shipped models on port $(PORT)
serve: venv
	$(BIN)/rankiq serve --port $(PORT) --workers $(WORKERS)

## make test: set up from nothing, then lint and run the whole suite (an empty suite fails: exit 5)
test: venv test-deps
	$(BIN)/ruff check .
	$(BIN)/python -m pytest $(PYTEST_ARGS)

## system packages the tests need: a real Prometheus server (Debian package) scrapes the service
test-deps:
	@command -v prometheus >/dev/null 2>&1 || { \
	  echo "installing the Debian package prometheus (the metrics tests scrape with it)"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq prometheus >/dev/null; }

lint: venv
	$(BIN)/ruff check .

format: venv
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache
