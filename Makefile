# Quick start: `make run` (set up, build the data, run the whole chain) and `make test`.
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
export PATH := $(HOME)/.local/bin:$(PATH)
export DAGSTER_HOME := $(CURDIR)/.dagster
export HF_HUB_OFFLINE := 1
DVC_VERSION := 3.67.1
DVC := uv tool run --quiet --from dvc==$(DVC_VERSION) dvc
FMNIST := /usr/share/datasets/fashion-mnist

.PHONY: run test setup uv dataset data repro exp compare-filters ui mlflow-ui lint clean

run: setup data repro ## set everything up and run the whole chain on the default dataset
	@echo; echo "== metrics (outputs/metrics.json) =="; $(DVC) metrics show
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

exp: setup ## a DVC experiment on a dataset file: make exp DATASET=configs/datasets/NAME.yaml [SET="-S k=v ..."]
	@test -n "$(DATASET)" || { echo "usage: make exp DATASET=configs/datasets/NAME.yaml"; exit 2; }
	uv run --frozen clip-pipeline dataset-args $(DATASET) | xargs $(DVC) exp run -n $(basename $(notdir $(DATASET))) $(SET)
	$(DVC) exp show --no-pager --drop '.*' --keep 'Experiment|ingest.input|registry.model_name|eval_average|zero_shot_top1'

compare-filters: setup ## DVC experiments: no filtering, and CLIP-score filtering by the champion (the report compares runs)
	$(DVC) exp run -n unfiltered -S filter.enabled=false
	$(DVC) exp run -n clip-score -S filter.enabled=true -S filter.clip_score.enabled=true
	$(DVC) exp show --no-pager --drop '.*' --keep 'Experiment|zero_shot_top1|linear_probe_top1|filter.enabled|filter.clip_score.enabled'

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
