"""Dagster resources: where things live (params, outputs) and where MLflow tracks."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

from dagster import ConfigurableResource, InitResourceContext

from clipcore.config import PipelineConfig, load_params, restrict


class PipelineResource(ConfigurableResource):
    """The project's files: params.yaml and the outputs/ folder (stage products, DVC outs)."""

    params_path: str = "params.yaml"
    outputs_dir: str = "outputs"

    def setup_for_execution(self, context: InitResourceContext) -> None:
        """Tag the run with the process executing it, and fail the runs whose process was killed."""
        from pipelines.processes import RUN_OWNER_TAG, current_owner, fail_dead_runs

        if context.instance is not None and context.run_id:
            context.instance.add_run_tags(context.run_id, {RUN_OWNER_TAG: current_owner()})
            fail_dead_runs(context.instance)

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

    @contextlib.contextmanager
    def writing(self, name: str, keep_partial: bool = False) -> Iterator:
        """Write stage `name` under its lock into a work folder that `.publish(value)` swaps into outputs/<name>/
        (pipelines.publish); a concurrent run of the stage is refused."""
        from pipelines.publish import stage_writer

        with stage_writer(self.outputs_dir, name, keep_partial) as stage:
            yield stage

    def reading(self, name: str) -> contextlib.AbstractContextManager:
        """Hold outputs/<name>/ in place (no run publishes over it) while the block reads it."""
        from pipelines.publish import reading

        return reading(self.outputs_dir, name)


class MLflowResource(ConfigurableResource):
    """Tracking server and registry: sqlite by default, MLFLOW_TRACKING_URI overrides (see pipelines.tracking)."""

    tracking_uri: str = ""
    artifact_root: str = "mlruns/artifacts"

    def setup(self, experiment: str) -> str:
        """Point MLflow at this store and experiment; returns the experiment id."""
        from pipelines.tracking import configure_mlflow

        return configure_mlflow(self.tracking_uri or None, self.artifact_root, experiment)
