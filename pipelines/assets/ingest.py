"""The ingest stage's asset (one partition per shard) and its blocking check.

A backfill of the shard partitions runs as many runs of at most `SHARDS_PER_RUN` shards each
(`BackfillPolicy.multi_run`), which a run launcher may fan out over machines, or as one run when
CLIP_INGEST_SHARDS_PER_RUN=0; within a run the shards go to `ingest.distributor`: a local process pool in the run's
process, or Ray tasks on a cluster, driven by an external process launched through Dagster Pipes
(pipelines.pipes_ingest), so that a whole backfill can be one run whose work is all done on the Ray cluster. No run
reads the whole input: the cached plan (`<output>.plan`) gives the row counts and duplicate rows, and each worker
reads its own slice."""

import dataclasses
import os

import polars as pl
from dagster import (
    AssetCheckExecutionContext,
    AssetCheckResult,
    AssetCheckSeverity,
    AssetExecutionContext,
    BackfillPolicy,
    MetadataValue,
    Output,
    PipesSubprocessClient,
    asset,
    asset_check,
)
from dagster._core.storage.tags import (
    ASSET_PARTITION_RANGE_END_TAG,
    ASSET_PARTITION_RANGE_START_TAG,
    PARTITION_NAME_TAG,
)

from clipcore.data.layout import shard_count, shard_name
from clipcore.ingest.manifests import account_rows
from clipcore.ingest.plan import count_input_rows, default_plan_dir
from clipcore.ingest.stage import ingest
from pipelines import pipes_ingest
from pipelines.assets import GROUP, StageConfig, ingest_shards
from pipelines.io import markdown_table
from pipelines.provenance import tag_dagster_run
from pipelines.resources import PipelineResource
from pipelines.values import CaptionShards

SHARDS_PER_RUN = int(os.environ.get("CLIP_INGEST_SHARDS_PER_RUN", "16"))
"""Shard partitions per run of a backfill (CLIP_INGEST_SHARDS_PER_RUN when the definitions load): each run is one
unit a run launcher can place on its own machine. 0: a backfill is one run, which with `ingest.distributor: ray`
hands every shard to the Ray cluster at once."""


@asset(group_name=GROUP, kinds={"polars", "webdataset"}, partitions_def=ingest_shards,
       backfill_policy=(BackfillPolicy.multi_run(max_partitions_per_run=SHARDS_PER_RUN) if SHARDS_PER_RUN
                        else BackfillPolicy.single_run()))
def caption_shards(context: AssetExecutionContext, config: StageConfig, pipeline: PipelineResource,
                   pipes_subprocess_client: PipesSubprocessClient) -> Output[CaptionShards]:
    """Every input row fetched (or read) and validated; good images resized into webdataset tar shards,
    every row in its shard's parquet manifest with a status and an error reason. One partition per shard;
    a backfill runs as runs of up to SHARDS_PER_RUN shards, each on `ingest.distributor` (Ray: through Pipes)."""
    cfg = pipeline.load_config("ingest", config.overrides)
    tag_dagster_run(context, cfg.ingest.input)
    out = pipeline.stage_dir("caption_shards")
    shards = sorted(int(k) for k in context.partition_keys)
    if cfg.ingest.distributor == "ray":  # the Ray driver runs outside the Dagster run's process
        command = pipes_ingest.command(pipeline.params_path, list(config.overrides), str(out), shards[0], shards[-1])
        invocation = pipes_subprocess_client.run(context=context, command=command)
        stats = next(m[pipes_ingest.STATS_KEY] for m in invocation.get_custom_messages()
                     if isinstance(m, dict) and pipes_ingest.STATS_KEY in m)
    else:
        stats = ingest(cfg.ingest, out, shard_range=(shards[0], shards[-1]))
    if shards[0] >= stats["shards"]:
        raise ValueError(f"partitions {context.partition_keys[0]}..{context.partition_keys[-1]} are past the end of "
                         f"ingest.input ({stats['shards']} shards): the input shrank; its partitions are registered "
                         "again by the next `clip-pipeline ingest` or the shard sensor")
    manifest = pl.read_parquet(out / f"{shard_name(shards[0])}.parquet")  # a preview needs one shard, not all
    value = CaptionShards(dir=str(out), rows=stats["rows"], success=stats["success"], failed=stats["failed"],
                          shards=stats["shards"], input=cfg.ingest.input, overrides=list(config.overrides))
    return Output(value, metadata={
        "rows": stats["rows"], "success": stats["success"], "failed": stats["failed"],
        "by_status": MetadataValue.json(stats["by_status"]), "by_error": MetadataValue.json(stats["by_error"]),
        "shards": stats["shards"], "shards_written": stats["shards_written"], "seconds": stats["seconds"],
        "distributor": cfg.ingest.distributor, "nodes": stats["nodes"],
        "launched": "dagster pipes" if cfg.ingest.distributor == "ray" else "in the run's process",
        "preview": MetadataValue.md(markdown_table(manifest.drop("sha256", "phash"))),
        "config": MetadataValue.json(dataclasses.asdict(cfg.ingest)),
    })


@asset_check(asset=caption_shards, blocking=True,
             description="One manifest row per input row of the run's shards, uids unique and in their shard's slice, "
                         "and at least one image ingested; filtering does not start otherwise.")
def ingest_accounts_for_every_row(context: AssetCheckExecutionContext, pipeline: PipelineResource,
                                  caption_shards: CaptionShards) -> AssetCheckResult:
    cfg = pipeline.load_config("ingest", caption_shards.overrides).ingest  # the run's --set values too
    rows = count_input_rows(cfg, default_plan_dir(cfg, caption_shards.dir))  # the plan's count: no input rows read
    first, last = run_shard_range(context, shard_count(rows, cfg.shard_size))
    counts = account_rows(caption_shards.dir, rows, cfg.shard_size, first, last)
    metadata = {"input_rows": counts["expected_rows"], "manifest_rows": counts["manifest_rows"],
                "unique_uids": counts["unique_uids"], "success": counts["success"],
                "shards": f"{shard_name(first)}..{shard_name(last)}"}
    if counts["success"] == 0 and counts["manifest_rows"]:  # every row failed: nothing to train on, a setting is wrong
        reason = next(iter(counts["by_error"]), "unknown")
        hint = " (ingest.data_root: the folder the local paths lie in?)" if reason == "file_not_found" else ""
        return AssetCheckResult(passed=False, severity=AssetCheckSeverity.ERROR, metadata=metadata,
                                description=f"no row was ingested; most common reason {reason!r}{hint}")
    passed = counts["manifest_rows"] == counts["expected_rows"] == counts["unique_uids"]
    return AssetCheckResult(passed=passed, severity=AssetCheckSeverity.ERROR, metadata=metadata)


def run_shard_range(context: AssetCheckExecutionContext, count: int) -> tuple[int, int]:
    """The shards the check's run materialized (its partition or partition range tags; all `count` shards when it
    has none), so each run of a multi-run backfill checks its own shards."""
    tags = context.run.tags
    if ASSET_PARTITION_RANGE_START_TAG in tags and ASSET_PARTITION_RANGE_END_TAG in tags:
        return int(tags[ASSET_PARTITION_RANGE_START_TAG]), min(int(tags[ASSET_PARTITION_RANGE_END_TAG]), count - 1)
    if PARTITION_NAME_TAG in tags:
        return int(tags[PARTITION_NAME_TAG]), int(tags[PARTITION_NAME_TAG])
    return 0, count - 1


ASSETS, CHECKS = [caption_shards], [ingest_accounts_for_every_row]
