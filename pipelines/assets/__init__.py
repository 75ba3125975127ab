"""One module per stage (named as in pipelines.stages), each holding the stage's asset and its checks. A stage's
process imports only its own module, so ingest never loads torch or MLflow."""

from dagster import Config, DynamicPartitionsDefinition
from pydantic import Field

GROUP = "clip"
# One partition per ingest shard (`00000`, `00001`, ...; clipcore.data.layout.shard_name); pipelines.partitions
# registers them. Defined here so that stages reading caption_shards need not import the input readers.
ingest_shards = DynamicPartitionsDefinition(name="ingest_shards")


class StageConfig(Config):
    """Launch-time overrides of params.yaml (the defaults live in clipcore's dataclasses and params.yaml)."""

    overrides: list[str] = Field(default=[], description="`section.key=value` items, e.g. `train.epochs=1`")
