"""Materializing stages outside the UI (the CLI, `dvc repro`, tests): each stage's asset and checks from its own module,
upstream assets as specs whose values the IO manager loads, so a stage's process imports only its own code."""

from __future__ import annotations

import importlib

from dagster import AssetSpec, DagsterInstance, PipesSubprocessClient, materialize
from dagster._core.storage.tags import ASSET_PARTITION_RANGE_END_TAG, ASSET_PARTITION_RANGE_START_TAG

from pipelines.assets import ingest_shards
from pipelines.io import JsonIOManager
from pipelines.resources import MLflowResource, PipelineResource
from pipelines.stages import BY_ASSET, STAGES


def build_resources(params_path: str = "params.yaml", outputs_dir: str = "outputs",
                    tracking_uri: str = "", artifact_root: str = "mlruns/artifacts") -> dict:
    """The resources every asset needs; tests point them into a temporary folder."""
    return {
        "pipeline": PipelineResource(params_path=params_path, outputs_dir=outputs_dir),
        "mlflow_store": MLflowResource(tracking_uri=tracking_uri, artifact_root=artifact_root),
        "io_manager": JsonIOManager(outputs_dir=outputs_dir),
        "pipes_subprocess_client": PipesSubprocessClient(),
    }


def stage_definitions(asset_names: list[str]) -> list:
    """The assets and checks of `asset_names` (imported from their stages' modules), plus specs of the upstream assets
    they read."""
    defs, selected = [], set(asset_names)
    for name in asset_names:
        module = importlib.import_module(BY_ASSET[name].module)
        defs += [*module.ASSETS, *module.CHECKS]
    upstream = {a for n in asset_names for a in BY_ASSET[n].reads} - selected
    if upstream:
        defs += [AssetSpec(a, partitions_def=ingest_shards if a == "caption_shards" else None)
                 for a in sorted(upstream)]
    return defs


def materialize_stages(asset_names: list[str], resources: dict, instance: DagsterInstance, overrides: list[str],
                       log_level: str = "INFO", asset_config: dict[str, dict] | None = None) -> list:
    """Materialize assets (and their checks) in graph order: the partitioned ingest asset as one run over all its shard
    partitions (registering them first), then the others in one run, where a failing blocking check stops what
    depends on it. `asset_config` adds config fields per asset (e.g. `{"clip_model": {"resume": True}}`). Returns the
    Dagster results."""
    asset_config = asset_config or {}
    order = [s.asset for s in STAGES if s.asset in asset_names]

    def run(names: list[str], tags: dict | None = None):
        run_config = {"ops": {n: {"config": {"overrides": overrides, **asset_config.get(n, {})}} for n in names},
                      "loggers": {"console": {"config": {"log_level": log_level}}}}
        return materialize(stage_definitions(names), selection=names, instance=instance, resources=resources,
                           run_config=run_config, tags=tags)

    results = []
    if "caption_shards" in order:
        from pipelines.partitions import register_shards

        keys = register_shards(instance, resources["pipeline"].load_config("ingest", overrides).ingest)
        results.append(run(["caption_shards"], {ASSET_PARTITION_RANGE_START_TAG: keys[0],
                                                ASSET_PARTITION_RANGE_END_TAG: keys[-1]}))
    rest = [n for n in order if n != "caption_shards"]
    if rest:
        results.append(run(rest))
    return results
