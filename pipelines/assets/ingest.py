"""The ingest stage's asset (one partition per shard) and its blocking check."""

import dataclasses

import polars as pl
from dagster import (
    AssetCheckResult,
    AssetCheckSeverity,
    AssetExecutionContext,
    BackfillPolicy,
    MetadataValue,
    Output,
    asset,
    asset_check,
)

from clipcore.data.layout import read_manifest, shard_name
from clipcore.ingest.sources import read_input
from clipcore.ingest.stage import ingest
from pipelines.assets import GROUP, StageConfig, ingest_shards
from pipelines.io import markdown_table
from pipelines.provenance import tag_dagster_run
from pipelines.resources import PipelineResource
from pipelines.values import CaptionShards


@asset(group_name=GROUP, kinds={"polars", "webdataset"}, partitions_def=ingest_shards,
       backfill_policy=BackfillPolicy.single_run())
def caption_shards(context: AssetExecutionContext, config: StageConfig,
                   pipeline: PipelineResource) -> Output[CaptionShards]:
    """Every input row fetched (or read) and validated; good images resized into webdataset tar shards,
    every row in its shard's parquet manifest with a status and an error reason. One partition per shard;
    a backfill of many partitions runs as one run with `ingest.processes` workers."""
    cfg = pipeline.load_config("ingest", config.overrides)
    tag_dagster_run(context, cfg.ingest.input)
    out = pipeline.stage_dir("caption_shards")
    shards = sorted(int(k) for k in context.partition_keys)
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
        "preview": MetadataValue.md(markdown_table(manifest.drop("sha256", "phash"))),
        "config": MetadataValue.json(dataclasses.asdict(cfg.ingest)),
    })


@asset_check(asset=caption_shards, blocking=True,
             description="One manifest row per input row, unique uids, and at least one image ingested; filtering "
                         "does not start otherwise.")
def ingest_accounts_for_every_row(pipeline: PipelineResource, caption_shards: CaptionShards) -> AssetCheckResult:
    cfg = pipeline.load_config("ingest", caption_shards.overrides).ingest  # the run's --set values too
    manifest = read_manifest(caption_shards.dir)
    table_rows = read_input(cfg).height
    unique = manifest["uid"].n_unique()
    success = int((manifest["status"] == "success").sum())
    metadata = {"input_rows": table_rows, "manifest_rows": manifest.height, "unique_uids": unique, "success": success}
    if success == 0 and manifest.height:  # every row failed: nothing to train on, and usually a setting is wrong
        top = manifest["error"].drop_nulls().value_counts(sort=True).head(1)
        reason = top["error"][0] if top.height else "unknown"
        hint = " (ingest.data_root: the folder the local paths lie in?)" if reason == "file_not_found" else ""
        return AssetCheckResult(passed=False, severity=AssetCheckSeverity.ERROR, metadata=metadata,
                                description=f"no row was ingested; most common reason {reason!r}{hint}")
    passed = manifest.height == table_rows == unique
    return AssetCheckResult(passed=passed, severity=AssetCheckSeverity.ERROR, metadata=metadata)


ASSETS, CHECKS = [caption_shards], [ingest_accounts_for_every_row]
