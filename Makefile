# RankIQ: every install step lives here (CI runs `.ci/run` -> `make test` on a fresh clone).
# Every pip call uses constraints.txt (torch==2.13.0 takes the local CPU wheel; any other
# torch spec would pull several GB of CUDA packages).

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
PIP    := $(BIN)/pip install --constraint constraints.txt
STAMP  := $(VENV)/.installed
PORT   ?= 3000
WORKERS ?=
PYTEST_ARGS ?=

.PHONY: data-deps noref-model venv venv-serve serve test test-fast test-deps lint format docs models bench fuzz
.PHONY: typecheck mutate clean dashboard-preview

## make venv: the full environment (serving + training + test tools + Ray); make venv-serve: the
## lean serving set alone (no torch, no training stack: see docs/operations.md for the sizes)
venv: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade "pip>=24"
	$(PIP) --editable '.[train,dev,ray]'
	touch $(STAMP) $(SERVE_STAMP)

SERVE_STAMP := $(VENV)/.installed-serve
venv-serve: $(SERVE_STAMP)

$(SERVE_STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade "pip>=24"
	$(PIP) --editable .
	touch $(SERVE_STAMP)

## make serve: set up the lean serving install from nothing, then serve the shipped models on
## port $(PORT)
serve: venv-serve
	$(BIN)/rankiq serve --port $(PORT) $(if $(WORKERS),--workers $(WORKERS))

## make test: set up from nothing, then lint, build the docs (warnings are errors) and run the
## whole suite (an empty suite fails: exit 5)
test: venv test-deps
	$(BIN)/ruff check .
	$(MAKE) --no-print-directory typecheck
	$(MAKE) --no-print-directory docs
	$(BIN)/python -m pytest $(PYTEST_ARGS)

## make test-fast: the edit-test loop (under a minute): no live servers, no torch, no long
## pipelines (tests marked `slow` or `torch` are left out; conftest.py refuses a test that
## needs torch or a live server without its marker). Order is shuffled by pytest-randomly in
## both targets (replay an order with PYTEST_ARGS=--randomly-seed=N; `-p no:randomly` turns it off).
test-fast: venv
	$(BIN)/python -m pytest -q -m "not slow and not torch" $(PYTEST_ARGS)

## make typecheck: mypy over the serving and training packages (configuration in pyproject.toml;
## mypy cannot see the package-dir mapping, so the folders are linked under build/mypy/rankiq)
typecheck: venv
	rm -rf build/mypy && mkdir -p build/mypy/rankiq
	ln -s ../../../rankiq/__init__.py ../../../rankiq/py.typed build/mypy/rankiq/
	ln -s ../../../service build/mypy/rankiq/service
	ln -s ../../../training build/mypy/rankiq/training
	MYPYPATH=build/mypy $(BIN)/mypy -p rankiq.service -p rankiq.training

## make mutate: mutation testing of the core modules with cosmic-ray, in a scratch copy of the
## tree (long: MUTATE_SAMPLE seeded mutants per module, 0 = every mutant); prints the kill rate
## per module (recorded in docs/benchmarks.md)
MUTATE_SAMPLE ?= 40
mutate: venv
	$(BIN)/python tests/mutate.py --sample $(MUTATE_SAMPLE)

## make fuzz: the hostile-input corpus (fixed seed: byte-mutated DICOMs, every bomb kind,
## malformed multipart, marker strings) and schemathesis against a live 2-worker server with a
## token; fails on any 5xx, answer slower than the request timeout or leaked marker (a few
## minutes; a short version of the corpus runs in make test)
FUZZ_MUTATED ?= 3000
FUZZ_EXAMPLES ?= 200
fuzz: venv
	$(BIN)/python tests/fuzz_service.py --mutated $(FUZZ_MUTATED) --examples $(FUZZ_EXAMPLES)

## make dashboard-preview: the Grafana dashboard's queries rendered from a real Prometheus
## against a live 2-worker service under synthetic traffic (docs/img/dashboard.png, ~2 min)
dashboard-preview: venv test-deps
	$(BIN)/python deploy/grafana/preview.py --seconds 75 --out docs/img/dashboard.png

## make docs: the documentation site (docs/, mkdocs.yml) built offline into site/, strict
docs: venv
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict

## system packages the tests need: a real Prometheus server (Debian package) scrapes the service;
## a real Orthanc PACS with its DICOMweb plugin serves the PACS tests, and dciodvfy (dicom3tools)
## validates the DICOM objects RankIQ writes back; headless Chromium (chromium, chromium-driver)
## drives the reader-study page and a throw-away PostgreSQL serves its durability test
## data-deps: Debian's mricron-data (the Colin27 scan the no-reference model's training uses) and
## dicom3tools (its example ASL scan is a real image of `rankiq evaluate real`, never trained on)
data-deps:
	@test -f /usr/share/mricron/templates/ch2better.nii.gz || { \
	  echo "installing the Debian package mricron-data (Colin27: anatomy of the no-reference model)"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mricron-data >/dev/null; }
	@test -f /usr/share/doc/dicom3tools/examples/0051.dcm || { \
	  echo "installing the Debian package dicom3tools (its ASL scan is a real evaluation image)"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dicom3tools >/dev/null; }

test-deps:
	@command -v prometheus >/dev/null 2>&1 || { \
	  echo "installing the Debian package prometheus (the metrics tests scrape with it)"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq prometheus >/dev/null; }
	@{ command -v Orthanc >/dev/null 2>&1 && ls /usr/share/orthanc/plugins/libOrthancDicomWeb.so* \
	    >/dev/null 2>&1 && command -v dciodvfy >/dev/null 2>&1; } || { \
	  echo "installing the Debian packages orthanc, orthanc-dicomweb, dicom3tools (PACS tests)"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
	    orthanc orthanc-dicomweb dicom3tools >/dev/null; }
	@{ command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1 && \
	    { command -v pg_ctl || ls /usr/lib/postgresql/*/bin/pg_ctl; } >/dev/null 2>&1; } || { \
	  echo "installing the Debian packages chromium, chromium-driver, postgresql (reader-study tests)"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
	    chromium chromium-driver postgresql >/dev/null; }
	@$(MAKE) --no-print-directory data-deps

lint: venv
	$(BIN)/ruff check .

format: venv
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

## make models: rebuild the shipped models from nothing, deterministic for the seeds below.
## Reference model: simulate -> panel -> consensus -> train (5-fold CV, epoch chosen on an inner
## split of the training folds; then one final model on all pairs) -> evaluate -> export (final/)
## (measured from a fresh clone in one run: 48.6 min on 2 cores, simulation 14 min, training and
## evaluation 25 min, the no-reference model 9 min: docs/training.md; training runs on a 128x128
## grid, the paper's 396 costs ~10x more per epoch on CPU: see docs/deviations.md).
## No-reference model: `make noref-model` (realistic acquisitions with graded ladders ->
## features -> ranking fit -> thresholds; its classifier is fitted on the same consensus), then
## the real-scan evaluation is rewritten (docs/results/real-eval.md).
DATA        ?= data
RUNS        ?= runs/make-models
REPORT      ?= report
MODEL_PAIRS ?= 1000
MODEL_SIZE  ?= 396
MODEL_SEED  ?= 2025
MODEL_GRID  ?= 128
MODEL_EPOCHS ?= 10
MODEL_VERSION ?= 1.1.1
## EfficientNet-b0 rows (from scratch: no ImageNet weights offline) at a size 2 cores afford
## (about 4 min per run at 64 px, 4 epochs); the paper's 224 px is `EFFNET_SIZE=224` on a GPU
EFFNET_SIZE ?= 64
EFFNET_EPOCHS ?= 4
NOREF_ACQUISITIONS ?= 1200
NOREF_VERSION ?= 2.5.0
TRAIN = $(BIN)/rankiq train --data $(DATA)/pairs.h5 --rankings $(DATA)/consensus.csv --folds 5 \
	--grid $(MODEL_GRID) --seed $(MODEL_SEED) --threads 2 --quiet

models: venv
	rm -rf $(RUNS) $(REPORT)  # runs are rebuilt from the data (a pairs file is resumed/reused)
	mkdir -p $(DATA) $(RUNS)
	$(BIN)/rankiq simulate --source brain --pairs $(MODEL_PAIRS) --size $(MODEL_SIZE) \
	  --seed $(MODEL_SEED) --workers 2 --out $(DATA)/pairs.h5 --json > $(DATA)/simulate.json
	$(BIN)/rankiq panel --pairs $(DATA)/pairs.h5 --readers 7 --seed $(MODEL_SEED) \
	  --out $(DATA)/rankings.csv --likert $(DATA)/likert.csv --consensus $(DATA)/consensus.csv
	$(TRAIN) --model iqnet --lr 1e-3 --dropout 0 --epochs $(MODEL_EPOCHS) --final \
	  --out $(RUNS)/iqnet-ref
	$(TRAIN) --model mse --epochs 20 --out $(RUNS)/mse
	$(TRAIN) --model ssim --epochs 20 --out $(RUNS)/ssim
	$(TRAIN) --model iqnet --no-reference --lr 1e-3 --dropout 0 --epochs $(MODEL_EPOCHS) \
	  --out $(RUNS)/iqnet-noref
	$(TRAIN) --model efficientnet --input complex --effnet-size $(EFFNET_SIZE) --lr 1e-3 \
	  --dropout 0 --epochs $(EFFNET_EPOCHS) --out $(RUNS)/effnet-ref
	$(TRAIN) --model efficientnet --no-reference --input complex --effnet-size $(EFFNET_SIZE) \
	  --lr 1e-3 --dropout 0 --epochs $(EFFNET_EPOCHS) --out $(RUNS)/effnet-noref
	$(BIN)/rankiq evaluate $(RUNS)/iqnet-ref $(RUNS)/mse $(RUNS)/ssim $(RUNS)/iqnet-noref \
	  $(RUNS)/effnet-ref $(RUNS)/effnet-noref --out $(REPORT) --figure-slices 2
	$(BIN)/rankiq export $(RUNS)/iqnet-ref --out models/iqnet-ref --version $(MODEL_VERSION) \
	  --calibrate $(DATA)/pairs.h5
	$(MAKE) --no-print-directory noref-model
	cat $(REPORT)/table.md

## make noref-model: the no-reference model alone (about 18 min on 2 cores): 1000 simulated
## pairs ranked by the simulated panel (its classifier's consensus), 1200 realistic acquisitions
## with graded ladders, the ranking fit, thresholds; then the real-scan evaluation is rewritten.
## It needs models/iqnet-ref (the teacher that orders corruption types).
NOREF_PAIRS ?= 1000
NOREF_SIZE  ?= 256
noref-model: venv data-deps
	mkdir -p $(DATA) $(REPORT)
	$(BIN)/rankiq simulate --source brain --pairs $(NOREF_PAIRS) --size $(NOREF_SIZE) \
	  --seed $(MODEL_SEED) --workers 2 --out $(DATA)/noref-pairs.h5 --json > $(DATA)/noref-simulate.json
	$(BIN)/rankiq panel --pairs $(DATA)/noref-pairs.h5 --readers 7 --seed $(MODEL_SEED) \
	  --out $(DATA)/noref-rankings.csv --likert $(DATA)/noref-likert.csv \
	  --consensus $(DATA)/noref-consensus.csv
	$(BIN)/rankiq train-noref --out models/iqnet-noref --acquisitions $(NOREF_ACQUISITIONS) \
	  --seed $(MODEL_SEED) --workers 2 --version $(NOREF_VERSION) --report $(REPORT)/noref.json \
	  --cache $(DATA)/noref-dataset.npz --pairs $(DATA)/noref-pairs.h5 \
	  --consensus $(DATA)/noref-consensus.csv
	$(BIN)/rankiq evaluate real --archive --out docs/results/real-eval.md \
	  --json docs/results/real-eval.json

clean:
	rm -rf $(VENV) build site *.egg-info .pytest_cache .ruff_cache
