"""The filter stage's asset and its blocking check."""

import polars as pl
from dagster import (
    AssetCheckResult,
    AssetCheckSeverity,
    AssetExecutionContext,
    AssetIn,
    MetadataValue,
    Output,
    asset,
    asset_check,
)

from clipcore.config import flatten
from clipcore.filter.partitioned import manifest_files
from clipcore.filter.stage import run_filter, sample_rows
from clipcore.report.render import plot_funnel
from pipelines.assets import GROUP, StageConfig
from pipelines.io import markdown_table
from pipelines.provenance import with_default_scorer
from pipelines.resources import MLflowResource, PipelineResource
from pipelines.values import CaptionShards, FilteredCaptions


@asset(group_name=GROUP, kinds={"polars"})
def filtered_captions(context: AssetExecutionContext, config: StageConfig, pipeline: PipelineResource,
                      mlflow_store: MLflowResource, caption_shards: CaptionShards) -> Output[FilteredCaptions]:
    """Basic rules, language, exact/near duplicates and CLIP score: kept.parquet and rejected.parquet (one reason
    per rejected row)."""
    cfg = pipeline.load_config("filter", config.overrides)
    load_embedders, filter_config = None, cfg.filter
    if cfg.filter.clip_score.enabled:
        filter_config = with_default_scorer(cfg.filter, cfg.registry.model_name, caption_shards.input)
        mlflow_store.setup(cfg.registry.experiment)
        from pipelines.tracking import mlflow_embedders  # MLflow only when a registered model scores the pairs

        load_embedders = mlflow_embedders
    with pipeline.writing("filtered_captions") as stage:
        result = run_filter(caption_shards.dir, filter_config, stage.work, load_embedders)
        value = FilteredCaptions(dir=str(stage.final), kept=str(stage.final / "kept.parquet"),
                                 rejected=str(stage.final / "rejected.parquet"), funnel=result.counts,
                                 config=flatten({"filter": cfg.filter}))
        stage.publish(value)
    counts = result.counts
    kept_rows, rejected_rows = sample_rows(pl.scan_parquet(value.kept), pl.scan_parquet(value.rejected))
    funnel_table = pl.DataFrame({"stage": ["rows in", "kept", *counts["rejected_by_reason"]],
                                 "rows": [counts["rows_in"], counts["kept"], *counts["rejected_by_reason"].values()]})
    return Output(value, metadata={
        "rows_in": counts["rows_in"], "kept": counts["kept"], "rejected": counts["rejected"],
        "rejected_by_reason": MetadataValue.json(counts["rejected_by_reason"]),
        "funnel": MetadataValue.md(f"![funnel]({plot_funnel(counts)})\n\n{markdown_table(funnel_table, 20)}"),
        "rejected_sample": MetadataValue.md(markdown_table(rejected_rows, 30)),
        "kept_sample": MetadataValue.md(markdown_table(kept_rows)),
        "config": MetadataValue.json(value.config),
    })


@asset_check(asset=filtered_captions, blocking=True, additional_ins={"caption_shards": AssetIn("caption_shards")},
             description="kept + rejected == input, no row in both, every rejected row has a reason; training does "
                         "not start otherwise.")
def filter_counts_reconcile(caption_shards: CaptionShards, filtered_captions: FilteredCaptions) -> AssetCheckResult:
    rows_in = pl.concat([pl.read_parquet(f, columns=["uid"]) for f in manifest_files(caption_shards.dir)])["uid"]
    kept = pl.read_parquet(filtered_captions.kept, columns=["uid"])["uid"]
    rejected = pl.read_parquet(filtered_captions.rejected, columns=["uid", "filter_reason"])
    overlap = kept.is_in(rejected["uid"].implode()).sum()
    covered = pl.concat([kept, rejected["uid"]]).sort().equals(rows_in.sort())
    no_reason = rejected["filter_reason"].null_count()
    passed = covered and overlap == 0 and no_reason == 0
    return AssetCheckResult(passed=passed, severity=AssetCheckSeverity.ERROR, metadata={
        "rows_in": len(rows_in), "kept": len(kept), "rejected": rejected.height, "in_both": int(overlap),
        "rejected_without_reason": no_reason})


ASSETS, CHECKS = [filtered_captions], [filter_counts_reconcile]
