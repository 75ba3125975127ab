"""Dagster resources: where things live (params, outputs) and where MLflow tracks."""

from __future__ import annotations

from pathlib import Path

from dagster import ConfigurableResource

from clipcore.config import PipelineConfig, load_params, restrict


class PipelineResource(ConfigurableResource):
    """The project's files: params.yaml and the outputs/ folder (stage products, DVC outs)."""

    params_path: str = "params.yaml"
    outputs_dir: str = "outputs"

    def load_config(self, stage: str, overrides: list[str] | None = None) -> PipelineConfig:
        """params.yaml with `section.key=value` overrides applied, readable only where stage `stage` declares it
        (pipelines.stages): reading any other param raises, so its DVC stage cannot miss a dependency."""
        from pipelines.stages import BY_NAME

        config = load_params(self.params_path, overrides)
        return restrict(config, BY_NAME[stage].params, f"stage {stage!r}")

    def stage_dir(self, name: str) -> Path:
        """outputs/<name>/, created if missing."""
        path = Path(self.outputs_dir) / name
        path.mkdir(parents=True, exist_ok=True)
        return path


class MLflowResource(ConfigurableResource):
    """Tracking server and registry: sqlite by default, MLFLOW_TRACKING_URI overrides (see pipelines.tracking)."""

    tracking_uri: str = ""
    artifact_root: str = "mlruns/artifacts"

    def setup(self, experiment: str) -> str:
        """Point MLflow at this store and experiment; returns the experiment id."""
        from pipelines.tracking import configure_mlflow

        return configure_mlflow(self.tracking_uri or None, self.artifact_root, experiment)
