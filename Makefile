# resnet-repro: `make reproduce-table` and `make test` are the two entry points.
PY      := .venv/bin/python
STAMP   := .venv/.installed
DATA    ?= data
BUDGET  ?= 1.0
SPEC    ?= experiments/table6/resnet32.yaml
TUNE_SPEC ?= experiments/tuning/resnet32.yaml
TUNE_BUDGET ?= 0.05
TUNE_EXPORT ?= experiments/tuned/resnet32.yaml
TRIALS  ?= 20
JOBS    ?= 1
RAY_ADDRESS ?=
CLUSTER := $(if $(RAY_ADDRESS),--address $(RAY_ADDRESS))
ARGS    ?=
export MLFLOW_TRACKING_URI ?= sqlite:///mlruns/mlflow.db
export RAY_USAGE_STATS_ENABLED ?= 0

.PHONY: install test lint run reproduce-table report tune ui bench clean

install: $(STAMP)

# Re-installs only when pyproject.toml changes; pip takes torch 2.14.1 / torchvision 0.29.1 from local wheels here.
$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv .venv
	$(PY) -m pip install -q --disable-pip-version-check -e '.[dev]'
	touch $(STAMP)

lint: $(STAMP)
	$(PY) -m ruff check harness tests

test: $(STAMP) lint
	$(PY) -m pytest -q $(ARGS)

run: $(STAMP)
	$(PY) -m harness run $(SPEC) --data $(DATA) --budget $(BUDGET) --jobs $(JOBS) $(CLUSTER) $(ARGS)

reproduce-table: $(STAMP)
	$(PY) -m harness table --data $(DATA) --budget $(BUDGET) --jobs $(JOBS) $(CLUSTER) $(ARGS)

report: $(STAMP)
	$(PY) -m harness report $(ARGS)

tune: $(STAMP)
	$(PY) -m harness tune $(TUNE_SPEC) --trials $(TRIALS) --data $(DATA) --budget $(TUNE_BUDGET) \
	    --export $(TUNE_EXPORT) $(ARGS)

bench: $(STAMP)
	$(PY) -m harness bench $(ARGS)

ui: $(STAMP)
	mkdir -p mlruns
	$(PY) -m mlflow ui --backend-store-uri $(MLFLOW_TRACKING_URI) --port 5000

clean:
	rm -rf .pytest_cache .ruff_cache
