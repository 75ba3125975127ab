# Quick start: `make run` (set up, build the data, run the whole chain) and `make test`.
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
export PATH := $(HOME)/.local/bin:$(PATH)
export DAGSTER_HOME := $(CURDIR)/.dagster
export HF_HUB_OFFLINE := 1
DVC_VERSION := 3.67.1
DVC := uv tool run --quiet --from dvc==$(DVC_VERSION) dvc
FMNIST := /usr/share/datasets/fashion-mnist

.PHONY: run test setup uv dataset data repro exp compare-filters study study-heldout study-queue study-wait study-report \
	ui mlflow-ui lint clean

run: setup data repro ## set everything up and run the whole chain on the default dataset
	@echo; echo "== metrics (outputs/metrics.json; per task: dvc metrics show) =="
	@uv run --frozen python -c 'import json; m = json.load(open("outputs/metrics.json")); \
		print("\n".join(f"  {k:<40} {v:.4f}" for k, v in m.items() if "/" not in k and isinstance(v, float)))'
	@echo; uv run --frozen clip-pipeline models
	@echo; echo "Report: $(CURDIR)/outputs/report/index.html   UI: make ui   MLflow: make mlflow-ui"

test: setup ## set up and run the test suite
	uv run --frozen pytest -q

uv: ## install uv if it is missing
	@command -v uv >/dev/null || python3 -m pip install --quiet uv \
		|| python3 -m pip install --quiet --user --break-system-packages uv

setup: uv dataset ## the project environment (uv.lock) and DVC in its own tool environment
	uv sync --frozen --quiet
	@uv tool list 2>/dev/null | grep -q "^dvc v$(DVC_VERSION)" || uv tool install --quiet dvc==$(DVC_VERSION)
	@mkdir -p $(DAGSTER_HOME); test -f $(DAGSTER_HOME)/dagster.yaml || printf 'telemetry:\n  enabled: false\n' > $(DAGSTER_HOME)/dagster.yaml

dataset: ## Fashion-MNIST from Debian where possible (otherwise `clip-pipeline data` downloads it)
	@test -d $(FMNIST) || ! command -v apt-get >/dev/null || [ "$$(id -u)" != 0 ] \
		|| { apt-get install -y -qq dataset-fashion-mnist >/dev/null 2>&1 \
		|| { apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist >/dev/null; }; } \
		|| echo "note: apt could not install dataset-fashion-mnist; the data step will download it"

data: setup ## build the caption dataset under data/ (deterministic: matches data.dvc)
	@test -f data/fashion_mnist/captions.csv -a -f data/eval_tasks/faces/test/nshards.txt || uv run --frozen clip-pipeline data
	$(DVC) add --quiet data
	@git diff --quiet data.dvc || echo "warning: data/ differs from the committed data.dvc"

repro: ## run the DVC pipeline (each stage materializes its Dagster asset)
	$(DVC) repro

exp: setup ## a DVC experiment on a dataset file: make exp DATASET=configs/datasets/NAME.yaml [NAME=exp] [SET="-S k=v ..."]
	@test -n "$(DATASET)" || { echo "usage: make exp DATASET=configs/datasets/NAME.yaml"; exit 2; }
	uv run --frozen clip-pipeline dataset-args $(DATASET) | xargs $(DVC) exp run -n $(or $(NAME),$(basename $(notdir $(DATASET)))) $(SET)
	COLUMNS=200 $(DVC) exp show --no-pager --drop '.*' --keep 'Experiment|ingest.input|registry.model_name|eval_average|zero_shot_top1'

compare-filters: setup ## DVC experiments: no filtering, and CLIP-score filtering by the champion (the report compares runs)
	$(DVC) exp run -n unfiltered -S filter.enabled=false
	$(DVC) exp run -n clip-score -S filter.enabled=true -S filter.clip_score.enabled=true
	$(DVC) exp show --no-pager --drop '.*' --keep 'Experiment|zero_shot_top1|linear_probe_top1|filter.enabled|filter.clip_score.enabled'

# The CLIP+Reg study (issue 15): one DVC experiment per variant and seed, all with the same samples seen and
# registry.promote=false (never moving `champion`), run one at a time from DVC's queue; then outputs/study/index.html.
# A quick check: make study STUDY_SEEDS="0 1" STUDY_WEIGHTS=0.1 STUDY_SAMPLES=2048 STUDY_SET="-S eval.probe_size=0"
STUDY_NAME ?= study
STUDY_SEEDS ?= 0 1 2
STUDY_LOSSES ?= clip clip_reg cyclip siglip
STUDY_WEIGHTS ?= 0.05 0.1 0.2 0.5 1.0
STUDY_SAMPLES ?= 67584
STUDY_SET ?=
STUDY_PARTS ?= grid heldout
STUDY_HELDOUT_CLASSES ?= [sandal,pullover]
STUDY_HELDOUT_WEIGHTS ?= 0.1
STUDY_HELDOUT_SET ?= -S model.text_tower=minilm -S model.lock_text=true -S train.exclude_labeled=data/fashion_mnist/train
STUDY_JOBS ?= 1
STUDY_DIR := outputs/study

study: study-queue study-wait study-report ## the CLIP+Reg study: queue, run and report (knobs: STUDY_* above)

study-heldout: ## only the study's held-out-classes runs (and the report)
	$(MAKE) study STUDY_PARTS=heldout

study-queue: setup data ## queue the study's experiments that are neither done nor queued already
	@mkdir -p $(STUDY_DIR); git rev-parse HEAD > $(STUDY_DIR)/baseline
	@set -f; have=" $$($(DVC) exp list --name-only --rev HEAD | tr '\n' ' ') $$($(DVC) queue status \
		| awk '$$NF ~ /Queued|Running/ {print $$2}' | tr '\n' ' ') "; \
	queue() { name=$(STUDY_NAME)-$$1; shift; \
		if [[ "$$have" == *" $$name "* ]]; then echo "$$name: done or queued already"; \
		else $(DVC) exp run --queue -n $$name -S registry.promote=false -S train.samples_seen=$(STUDY_SAMPLES) \
			"$$@" $(STUDY_SET); fi; }; \
	for seed in $(STUDY_SEEDS); do \
		if [[ " $(STUDY_PARTS) " == *" grid "* ]]; then for loss in $(STUDY_LOSSES); do \
			if [ $$loss = clip_reg ]; then for w in $(STUDY_WEIGHTS); do \
				queue clip_reg-$$w-s$$seed -S loss.name=clip_reg -S loss.reg_weight=$$w -S train.seed=$$seed; done; \
			else queue $$loss-s$$seed -S loss.name=$$loss -S train.seed=$$seed; fi; done; fi; \
		if [[ " $(STUDY_PARTS) " == *" heldout "* ]]; then \
			held="-S train.exclude_classes=$(STUDY_HELDOUT_CLASSES) $(STUDY_HELDOUT_SET) -S train.seed=$$seed"; \
			queue heldout-clip-s$$seed -S loss.name=clip $$held; \
			for w in $(STUDY_HELDOUT_WEIGHTS); do \
				queue heldout-clip_reg-$$w-s$$seed -S loss.name=clip_reg -S loss.reg_weight=$$w $$held; done; fi; \
	done

study-wait: setup ## run the queue, one experiment at a time (STUDY_JOBS), and wait until it is empty
	$(DVC) queue start -j $(STUDY_JOBS)
	@while $(DVC) queue status | awk '$$NF ~ /Queued|Running/ {found=1} END {exit !found}'; do sleep 60; done
	@$(DVC) queue status | awk '$$NF == "Failed" {print "failed: " $$2 " (dvc queue logs " $$2 ")"}'
	@$(DVC) queue stop  # the idle worker would otherwise stay up

study-report: setup ## rebuild outputs/study/index.html from the study's finished experiments
	@mkdir -p $(STUDY_DIR)
	$(DVC) exp show --json --rev $$(cat $(STUDY_DIR)/baseline 2>/dev/null || git rev-parse HEAD) > $(STUDY_DIR)/experiments.json
	uv run --frozen clip-pipeline study-report --name $(STUDY_NAME) --experiments $(STUDY_DIR)/experiments.json \
		--output-dir $(STUDY_DIR)
	@echo "Study report: $(CURDIR)/$(STUDY_DIR)/index.html"

ui: setup ## the Dagster UI on http://127.0.0.1:3000
	uv run --frozen dagster dev -m pipelines.definitions -h 127.0.0.1 -p 3000

mlflow-ui: setup ## the MLflow UI on http://127.0.0.1:5000
	uv run --frozen mlflow ui --backend-store-uri sqlite:///mlruns/mlflow.db --default-artifact-root mlruns/artifacts \
		--host 127.0.0.1 --port 5000

lint: setup
	uv run --frozen ruff check .

clean: ## remove stage outputs, MLflow store and Dagster history (keeps data/)
	rm -rf outputs/caption_shards outputs/filtered_captions outputs/clip_model outputs/evaluation outputs/champion \
		outputs/report \
		mlruns .dagster
