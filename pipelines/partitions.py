"""Ingestion partitions: one dynamic partition per output shard (`00000`, `00001`, ...), so big sources
materialize in parallel and incrementally, and a sensor that registers new shards when the input grows.

The shard count comes from the input's row count, never from reading its rows: the cached plan's counts (kept while
the input files keep their size and mtime), parquet metadata, or a streaming count."""

from __future__ import annotations

from pathlib import Path

from dagster import (
    DagsterInstance,
    SensorEvaluationContext,
    SensorResult,
    SkipReason,
    sensor,
)

from clipcore.config import IngestConfig
from clipcore.data.layout import shard_count, shard_name
from clipcore.ingest.plan import count_input_rows, default_plan_dir
from pipelines.assets import ingest_shards
from pipelines.resources import PipelineResource


def shard_keys(config: IngestConfig, plan_dir: str | Path | None = None) -> list[str]:
    """The partition keys the input needs: one per `shard_size` input rows (counted with the plan in `plan_dir`)."""
    rows = count_input_rows(config, plan_dir)
    return [shard_name(i) for i in range(shard_count(rows, config.shard_size))]


def unregistered(instance: DagsterInstance, keys: list[str]) -> list[str]:
    """The `keys` that are not yet partitions of `ingest_shards` (one storage query), in order."""
    known = instance.get_existing_dynamic_partitions(ingest_shards.name, keys)
    return [k for k in keys if k not in known]


def register_shards(instance: DagsterInstance, config: IngestConfig, plan_dir: str | Path | None = None) -> list[str]:
    """Make `instance`'s shard partitions the input's: add the missing ones, delete those past its end (left by a
    longer earlier input: their shards are gone); returns all of the input's keys."""
    keys = shard_keys(config, plan_dir)
    missing = unregistered(instance, keys)
    if missing:
        instance.add_dynamic_partitions(ingest_shards.name, missing)
    for stale in set(instance.get_dynamic_partitions(ingest_shards.name)) - set(keys):
        instance.delete_dynamic_partition(ingest_shards.name, stale)
    return keys


@sensor(minimum_interval_seconds=60, description="Registers a partition per shard of ingest.input (params.yaml).")
def ingest_shard_sensor(context: SensorEvaluationContext, pipeline: PipelineResource):
    try:
        config = pipeline.load_config("ingest").ingest
        plan_dir = default_plan_dir(config, Path(pipeline.outputs_dir) / "caption_shards")
        keys = shard_keys(config, plan_dir if plan_dir.exists() else None)  # counts cached once ingest has planned
    except (ValueError, OSError) as err:  # an empty or missing input: nothing to register until it is fixed
        return SkipReason(f"ingest.input cannot be read: {err}")
    new = unregistered(context.instance, keys)
    stale = sorted(set(context.instance.get_dynamic_partitions(ingest_shards.name)) - set(keys))
    if not new and not stale:
        return SkipReason(f"all {len(keys)} shard partitions are registered")
    requests = [ingest_shards.build_add_request(new)] if new else []
    requests += [ingest_shards.build_delete_request(stale)] if stale else []
    return SensorResult(dynamic_partitions_requests=requests)
