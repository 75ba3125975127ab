"""One module per stage (named as in pipelines.stages), each holding the stage's asset and its checks. A stage's
process imports only its own module, so ingest never loads torch or MLflow."""

from dagster import Config
from pydantic import Field

GROUP = "clip"


class StageConfig(Config):
    """Launch-time overrides of params.yaml (the defaults live in clipcore's dataclasses and params.yaml)."""

    overrides: list[str] = Field(default=[], description="`section.key=value` items, e.g. `train.epochs=1`")
