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

.PHONY: install test test-fast lint run reproduce-table cpu-table cpu-why cpu-tune cpu-tuned report results tune ui dashboard bench clean

install: $(STAMP)

# Re-installs only when pyproject.toml changes; pip takes torch 2.14.1 / torchvision 0.29.1 from local wheels here.
$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv .venv
	$(PY) -m pip install -q --disable-pip-version-check -e '.[dev]'
	touch $(STAMP)

lint: $(STAMP)
	$(PY) -m ruff check harness tests

# --durations: the slowest tests, so CI's log shows where the suite's 15 minutes go.
test: $(STAMP) lint
	$(PY) -m pytest -q --durations=15 $(ARGS)

# The developer's loop: everything but the tests marked slow (`make test`, as CI runs it, keeps them).
test-fast: $(STAMP) lint
	$(PY) -m pytest -q -m "not slow" $(ARGS)

run: $(STAMP)
	$(PY) -m harness run $(SPEC) --data $(DATA) --budget $(BUDGET) --jobs $(JOBS) $(CLUSTER) $(ARGS)

# With no DATA, torchvision downloads CIFAR-10 (md5-checked) into data/; offline, one line says what to do.
reproduce-table: $(STAMP)
	$(PY) -m harness table --publish --data $(DATA) --download --budget $(BUDGET) --jobs $(JOBS) $(CLUSTER) $(ARGS)

# The CPU campaign (Table 6 at budget 1/32 on all of CIFAR-10): plan and ETA first, finished runs skipped, then its
# records into results/ and every page rebuilt from results/. DATA: the full CIFAR-10 .npz beside the checkout if
# there is one, else data/ (downloaded there); DATA=... on the command line wins.
CAMPAIGN ?= experiments/campaigns/cpu-b1_32.yaml
FULL_NPZ := ../shared/data/cifar10-full.npz
CPU_DATA := $(if $(and $(filter file,$(origin DATA)),$(wildcard $(FULL_NPZ))),$(FULL_NPZ),$(DATA))
# The path: --fastest takes what bench measured fastest on this very CPU for the campaign's main net
# (reports/bench/*.jsonl: runs at once, torch.compile, channels_last); on a CPU bench never measured, CPU_JOBS runs at
# once (two measured fastest on the first 2-core CPU, bench's _x2 rows) and the campaign file's own path fields.
CPU_JOBS ?= 2
cpu-table: $(STAMP)
	$(PY) -m harness table --publish --campaign $(CAMPAIGN) --data $(CPU_DATA) $(if $(filter %.npz,$(CPU_DATA)),,--download) \
	    --no-report --no-progress --jobs $(CPU_JOBS) --fastest $(ARGS)
	$(MAKE) report

# Why 68-75 %? The seed log's net and recipe against the paper's, a factor at a time (experiments/campaigns/cpu-why.yaml):
# as cpu-table, on that campaign.
cpu-why:
	$(MAKE) cpu-table CAMPAIGN=experiments/campaigns/cpu-why.yaml

# Every page of reports/ from results/ alone (no MLflow store, no GPU needed): the records go into a throw-away
# store first, so the pages are those of the committed records, whatever the local store holds.
REPORT_STORE := build/report-store
report: $(STAMP)
	rm -rf $(REPORT_STORE) && mkdir -p $(REPORT_STORE)
	MLFLOW_TRACKING_URI=sqlite:///$(REPORT_STORE)/mlflow.db $(PY) -m harness results import results
	MLFLOW_TRACKING_URI=sqlite:///$(REPORT_STORE)/mlflow.db $(PY) -m harness report --all $(ARGS)
	rm -rf $(REPORT_STORE)

tune: $(STAMP)
	$(PY) -m harness tune $(TUNE_SPEC) --trials $(TRIALS) --data $(DATA) --budget $(TUNE_BUDGET) \
	    --export $(TUNE_EXPORT) $(ARGS)

# The CPU study (issue 37): ResNet-20's LR schedule on the 45k/5k split at budget 1/16, two trials at once, in an
# Optuna journal that results/tuning/ commits, so `make cpu-tune` on a fresh clone goes on where it stopped (a
# trial cut off runs again); the best trial is exported as experiments/tuned/cpu-resnet20.yaml. Two trials at once, or
# whatever --fastest finds bench measured fastest for ResNet-20 on this CPU.
CPU_TUNE_STUDY ?= cpu-resnet20-b1_16
CPU_TUNE_TRIALS ?= 20
cpu-tune: $(STAMP)
	$(PY) -m harness tune experiments/tuning/cpu-resnet20.yaml --study $(CPU_TUNE_STUDY) --trials $(CPU_TUNE_TRIALS) \
	    --budget 0.0625 --data $(CPU_DATA) --storage journal:results/tuning/$(CPU_TUNE_STUDY).journal --jobs 2 \
	    --fastest --export experiments/tuned/cpu-resnet20.yaml $(ARGS)

# The tuned schedule against the paper's at the study's budget, seeds 0-2 each (experiments/campaigns/cpu-tuned.yaml):
# as cpu-table, on that campaign; tuned.md sets each tuned spec against the spec its study tuned.
cpu-tuned:
	$(MAKE) cpu-table CAMPAIGN=experiments/campaigns/cpu-tuned.yaml

# The local store's finished runs into results/ (run and table given --publish write each run's record as it finishes).
results: $(STAMP)
	$(PY) -m harness results export

bench: $(STAMP)
	$(PY) -m harness bench $(ARGS)

# MLflow's UI on loopback; one worker answers in seconds on a small machine (MLflow's default is 4).
PORT    ?= 5000
WORKERS ?= 1
ui: $(STAMP)
	mkdir -p mlruns
	@echo "MLflow: http://127.0.0.1:$(PORT)/#/experiments?workflowType=machine_learning (the model-training view)"
	$(PY) -m mlflow ui --backend-store-uri $(MLFLOW_TRACKING_URI) --host 127.0.0.1 --port $(PORT) --workers $(WORKERS)

# optuna-dashboard on the tuning studies (the study's objective is named val_error), on loopback only.
OPTUNA_STORAGE ?= sqlite:///mlruns/optuna.db
DASH_PORT ?= 8080
dashboard: $(STAMP)
	test -x .venv/bin/optuna-dashboard || $(PY) -m pip install -q optuna-dashboard
	.venv/bin/optuna-dashboard $(OPTUNA_STORAGE) --host 127.0.0.1 --port $(DASH_PORT)

clean:
	rm -rf .pytest_cache .ruff_cache
