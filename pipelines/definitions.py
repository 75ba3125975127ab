"""The Dagster code location: `dagster dev -m pipelines.definitions` (or `make ui`)."""

from __future__ import annotations

from dagster import Definitions, PipesSubprocessClient, define_asset_job, materialize
from dagster._core.storage.tags import ASSET_PARTITION_RANGE_END_TAG, ASSET_PARTITION_RANGE_START_TAG

from pipelines.assets import ASSETS
from pipelines.checks import CHECKS
from pipelines.io import JsonIOManager
from pipelines.partitions import ingest_shard_sensor, register_shards
from pipelines.resources import MLflowResource, PipelineResource


def build_resources(params_path: str = "params.yaml", outputs_dir: str = "outputs",
                    tracking_uri: str = "", artifact_root: str = "mlruns/artifacts") -> dict:
    """The resources every asset needs; tests point them into a temporary folder."""
    return {
        "pipeline": PipelineResource(params_path=params_path, outputs_dir=outputs_dir),
        "mlflow_store": MLflowResource(tracking_uri=tracking_uri, artifact_root=artifact_root),
        "io_manager": JsonIOManager(outputs_dir=outputs_dir),
        "pipes_subprocess_client": PipesSubprocessClient(),
    }


training_job = define_asset_job(
    "train_and_report", selection=["filtered_captions", "clip_model", "evaluation", "report"],
    description="Filter, pretrain, evaluate, report (after the ingest partitions).",
)

defs = Definitions(assets=ASSETS, asset_checks=CHECKS, jobs=[training_job], sensors=[ingest_shard_sensor],
                   resources=build_resources())


def materialize_stages(asset_names: list[str], resources: dict, instance, overrides: list[str],
                       log_level: str = "INFO", asset_config: dict[str, dict] | None = None) -> list:
    """Materialize assets in graph order: the partitioned ingest asset as one run over all its shard partitions
    (registering them first), then the others in one run. `asset_config` adds config fields per asset (e.g.
    `{"clip_model": {"resume": True}}`). Returns the Dagster results."""
    asset_config = asset_config or {}

    def run(names: list[str], tags: dict | None = None):
        run_config = {"ops": {n: {"config": {"overrides": overrides, **asset_config.get(n, {})}} for n in names},
                      "loggers": {"console": {"config": {"log_level": log_level}}}}
        return materialize([*ASSETS, *CHECKS], selection=names, instance=instance, resources=resources,
                           run_config=run_config, tags=tags)

    results = []
    if "caption_shards" in asset_names:
        keys = register_shards(instance, resources["pipeline"].load_config(overrides).ingest)
        results.append(run(["caption_shards"], {ASSET_PARTITION_RANGE_START_TAG: keys[0],
                                                ASSET_PARTITION_RANGE_END_TAG: keys[-1]}))
    rest = [n for n in asset_names if n != "caption_shards"]
    if rest:
        results.append(run(rest))
    return results
