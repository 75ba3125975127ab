"""The Dagster code location: `dagster dev -m pipelines.definitions` (or `make ui`)."""

from __future__ import annotations

from dagster import Definitions, define_asset_job

from pipelines.assets import ASSETS
from pipelines.checks import CHECKS
from pipelines.io import JsonIOManager
from pipelines.resources import MLflowResource, PipelineResource


def build_resources(params_path: str = "params.yaml", outputs_dir: str = "outputs",
                    tracking_uri: str = "", artifact_root: str = "mlruns/artifacts") -> dict:
    """The resources every asset needs; tests point them into a temporary folder."""
    return {
        "pipeline": PipelineResource(params_path=params_path, outputs_dir=outputs_dir),
        "mlflow_store": MLflowResource(tracking_uri=tracking_uri, artifact_root=artifact_root),
        "io_manager": JsonIOManager(outputs_dir=outputs_dir),
    }


clip_pipeline_job = define_asset_job("clip_pipeline", description="Ingest, filter, pretrain, evaluate, report.")

defs = Definitions(assets=ASSETS, asset_checks=CHECKS, jobs=[clip_pipeline_job], resources=build_resources())
