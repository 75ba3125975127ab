"""The five stage assets. Each is thin: resolve config, call one clipcore stage, return paths + metadata."""


import dataclasses
from pathlib import Path

import mlflow
import polars as pl
from dagster import AssetExecutionContext, BackfillPolicy, Config, MetadataValue, Output, PipesSubprocessClient, asset
from pydantic import Field

from clipcore.config import flatten
from clipcore.ingest import ingest
from clipcore.report import plot_funnel
from pipelines.evaluate_stage import run_evaluation
from pipelines.filter_stage import run_filter, sample_rows
from pipelines.io import markdown_table
from pipelines.partitions import ingest_shards
from pipelines.pipes_train import METRICS
from pipelines.pretrain_stage import resumable_run_id, torchrun_command, train_in_process, train_through_pipes
from pipelines.report_stage import build_report
from pipelines.resources import MLflowResource, PipelineResource
from pipelines.tracking import log_and_register

GROUP = "clip"


class StageConfig(Config):
    """Launch-time overrides of params.yaml (the defaults live in clipcore's dataclasses and params.yaml)."""

    overrides: list[str] = Field(default=[], description="`section.key=value` items, e.g. `train.epochs=1`")


@asset(group_name=GROUP, kinds={"polars", "webdataset"}, partitions_def=ingest_shards,
       backfill_policy=BackfillPolicy.single_run())
def caption_shards(context: AssetExecutionContext, config: StageConfig, pipeline: PipelineResource) -> Output[dict]:
    """Every input row fetched (or read) and validated; good images resized into webdataset tar shards,
    every row in its shard's parquet manifest with a status and an error reason. One partition per shard;
    a backfill of many partitions runs as one run with `ingest.processes` workers."""
    cfg = pipeline.load_config(config.overrides)
    out = pipeline.stage_dir("caption_shards")
    shards = sorted(int(k) for k in context.partition_keys)
    stats = ingest(cfg.ingest, out, shard_range=(shards[0], shards[-1]))
    manifest = pl.read_parquet(out / f"{shards[0]:05d}.parquet")  # a preview needs one shard, not all
    value = {"dir": str(out), "stats": stats, "overrides": config.overrides}
    return Output(value, metadata={
        "rows": stats["rows"], "success": stats["success"], "failed": stats["failed"],
        "by_status": MetadataValue.json(stats["by_status"]), "by_error": MetadataValue.json(stats["by_error"]),
        "shards": stats["shards"], "shards_written": stats["shards_written"], "seconds": stats["seconds"],
        "preview": MetadataValue.md(markdown_table(manifest.drop("sha256", "phash"))),
        "config": MetadataValue.json(dataclasses.asdict(cfg.ingest)),
    })


@asset(group_name=GROUP, kinds={"polars"})
def filtered_captions(context: AssetExecutionContext, config: StageConfig, pipeline: PipelineResource,
                      mlflow_store: MLflowResource, caption_shards: dict) -> Output[dict]:
    """Basic rules, language, exact/near duplicates and CLIP score: kept.parquet and rejected.parquet (one reason
    per rejected row)."""
    cfg = pipeline.load_config(config.overrides)
    out = pipeline.stage_dir("filtered_captions")
    if cfg.filter.clip_score.enabled:
        mlflow_store.setup(cfg.registry.experiment)
    counts, kept, rejected = run_filter(caption_shards["dir"], cfg.filter, out)
    kept_rows, rejected_rows = sample_rows(kept, rejected)
    funnel_table = pl.DataFrame({"stage": ["rows in", "kept", *counts["rejected_by_reason"]],
                                 "rows": [counts["rows_in"], counts["kept"], *counts["rejected_by_reason"].values()]})
    value = {"dir": str(out), "kept": str(out / "kept.parquet"), "rejected": str(out / "rejected.parquet"),
             "shard_root": caption_shards["dir"], "funnel": counts}
    return Output(value, metadata={
        "rows_in": counts["rows_in"], "kept": counts["kept"], "rejected": counts["rejected"],
        "rejected_by_reason": MetadataValue.json(counts["rejected_by_reason"]),
        "funnel": MetadataValue.md(f"![funnel]({plot_funnel(counts)})\n\n{markdown_table(funnel_table, 20)}"),
        "rejected_sample": MetadataValue.md(markdown_table(rejected_rows, 30)),
        "kept_sample": MetadataValue.md(markdown_table(kept_rows)),
        "config": MetadataValue.json(dataclasses.asdict(cfg.filter)),
    })


class PretrainConfig(StageConfig):
    """Overrides plus where training runs."""

    launcher: str = Field(default="in_process", description="`in_process`, or `torchrun`: an external torchrun "
                          "launched through Dagster Pipes, streaming logs and metrics back")
    nproc_per_node: int = Field(default=2, description="torchrun processes per node")
    nnodes: int = Field(default=1, description="torchrun nodes (more than 1 needs a rendezvous endpoint)")
    resume: bool = Field(default=False, description="continue an interrupted training from "
                         "outputs/clip_model/train_state.pt (set train.checkpoint_every), in the MLflow run it started")


@asset(group_name=GROUP, kinds={"pytorch", "mlflow"})
def clip_model(context: AssetExecutionContext, config: PretrainConfig, pipeline: PipelineResource,
               mlflow_store: MLflowResource, pipes_subprocess_client: PipesSubprocessClient,
               filtered_captions: dict) -> Output[dict]:
    """A CLIP model trained on the kept rows, checkpointed as safetensors, logged and registered in MLflow."""
    cfg = pipeline.load_config(config.overrides)
    out = pipeline.stage_dir("clip_model")
    mlflow_store.setup(cfg.registry.experiment)
    shard_root = filtered_captions["shard_root"]
    resumed_run_id = resumable_run_id(out / "train_state.pt") if config.resume else None

    def on_log(record: dict) -> None:
        mlflow.log_metrics({k: record[k] for k in METRICS}, step=int(record["step"]))

    with mlflow.start_run(run_id=resumed_run_id, run_name=None if config.resume else f"pretrain-{cfg.loss.name}",
                          log_system_metrics=True) as run:
        if config.resume:  # same run: its params stay; the resuming Dagster run is recorded beside the first one
            mlflow.set_tag("resumed_by_dagster_run_id", context.run_id)
            context.log.info(f"resuming MLflow run {run.info.run_id} from {out / 'train_state.pt'}")
        else:
            mlflow.log_params(flatten(cfg))
            mlflow.set_tags({"dagster_run_id": context.run_id, "stage": "pretrain", "launcher": config.launcher})
        if config.launcher == "torchrun":
            command = torchrun_command(pipeline.params_path, config.overrides, filtered_captions["kept"], shard_root,
                                       out, config.nproc_per_node, config.nnodes, config.resume, run.info.run_id)
            summary, history = train_through_pipes(context, pipes_subprocess_client, command, out, on_log)
        elif config.launcher == "in_process":
            summary, history = train_in_process(filtered_captions["kept"], shard_root, out, cfg, on_log,
                                                config.resume, run.info.run_id)
        else:
            raise ValueError(f"launcher must be in_process or torchrun, not {config.launcher!r}")
        mlflow.log_metrics({"train_samples_per_second": summary["samples_per_second"],
                            "train_rows": summary["train_rows"], "train_seconds": summary["seconds"],
                            "data_wait_share": summary["data_wait_seconds"] / max(summary["seconds"], 1e-9),
                            "flops_per_sample": summary["flops_per_sample"],
                            "achieved_tflops": summary["achieved_tflops"],
                            "peak_memory_mb": summary["peak_memory_mb"],
                            **({"mfu": summary["mfu"]} if summary["mfu"] is not None else {})})
        model_uri, version = log_and_register(out / "checkpoint", cfg.registry.model_name)
    value = {"dir": str(out), "checkpoint": str(out / "checkpoint"), "holdout": str(out / "holdout.parquet"),
             "history": str(out / "history.json"), "shard_root": shard_root,
             "run_id": run.info.run_id, "model_name": cfg.registry.model_name, "model_version": version,
             "model_uri": model_uri, "loss": cfg.loss.name}
    return Output(value, metadata={
        "mlflow_run_id": run.info.run_id, "registered_model": f"{cfg.registry.model_name} v{version}",
        "loss_name": cfg.loss.name, "launcher": f"{config.launcher} x{summary['processes']}",
        "train_rows": summary["train_rows"], "holdout_rows": summary["holdout_rows"], "steps": summary["steps"],
        "resumed": config.resume,
        "device": summary["device"], "train_seconds": round(summary["seconds"], 1),
        "samples_per_second": round(summary["samples_per_second"], 1),
        "achieved_tflops": round(summary["achieved_tflops"], 4), "peak_memory_mb": round(summary["peak_memory_mb"]),
        "streamed_records": summary.get("streamed_records", len(history)),
        "first_loss": history[0]["loss"], "final_loss": history[-1]["loss"],
        "final_temperature": history[-1]["temperature"],
        "config": MetadataValue.json({k: dataclasses.asdict(getattr(cfg, k)) for k in ("model", "loss", "train")}),
    })


@asset(group_name=GROUP, kinds={"pytorch", "mlflow"})
def evaluation(context: AssetExecutionContext, config: StageConfig, pipeline: PipelineResource,
               mlflow_store: MLflowResource, clip_model: dict) -> Output[dict]:
    """Zero-shot classification of the test set and retrieval on held-out pairs; writes outputs/metrics.json."""
    cfg = pipeline.load_config(config.overrides)
    mlflow_store.setup(cfg.registry.experiment)
    out = pipeline.stage_dir("evaluation")
    metrics_path = Path(pipeline.outputs_dir) / "metrics.json"
    metrics = run_evaluation(clip_model, cfg, out, metrics_path)
    value = {"dir": str(out), "metrics": metrics, "metrics_path": str(metrics_path),
             "details": str(out / "details.json"), "overrides": config.overrides}
    return Output(value, metadata={
        **{k: MetadataValue.float(v) for k, v in metrics.items()},
        "model": f"{clip_model['model_name']} v{clip_model['model_version']}",
        "config": MetadataValue.json(dataclasses.asdict(cfg.eval)),
    })


@asset(group_name=GROUP, kinds={"html", "mlflow"})
def report(context: AssetExecutionContext, config: StageConfig, pipeline: PipelineResource,
           mlflow_store: MLflowResource, filtered_captions: dict, clip_model: dict, evaluation: dict) -> Output[dict]:
    """outputs/report/index.html (self-contained), logged to MLflow; moves `champion` when the model is better."""
    cfg = pipeline.load_config(config.overrides)
    mlflow_store.setup(cfg.registry.experiment)
    out = pipeline.stage_dir("report")
    summary, decision = build_report(filtered_captions, clip_model, evaluation, cfg, out,
                                     extra_ids={"dagster_run_id": context.run_id})
    value = {"dir": str(out), "html": str(out / "index.html"), "decision": decision}
    return Output(value, metadata={
        "summary": MetadataValue.md(summary),
        "promoted": decision["promoted"], "decision": decision["reason"],
        "report": MetadataValue.path(str((out / "index.html").resolve())),
    })


ASSETS = [caption_shards, filtered_captions, clip_model, evaluation, report]
