"""The Dagster code location: `dagster dev -m pipelines.definitions` (or `make ui`)."""

from __future__ import annotations

import importlib

from dagster import Definitions, define_asset_job

from pipelines.launch import build_resources
from pipelines.partitions import ingest_shard_sensor
from pipelines.stages import STAGES

_modules = [importlib.import_module(s.module) for s in STAGES]
ASSETS = [a for m in _modules for a in m.ASSETS]
CHECKS = [c for m in _modules for c in m.CHECKS]

training_job = define_asset_job(
    "train_and_report", selection=[s.asset for s in STAGES if s.name != "ingest"],
    description="Filter, pretrain, evaluate, promote, report (after the ingest partitions).",
)

defs = Definitions(assets=ASSETS, asset_checks=CHECKS, jobs=[training_job], sensors=[ingest_shard_sensor],
                   resources=build_resources())
