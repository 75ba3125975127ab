"""The pretrain stage's asset (in this process, or torchrun through Dagster Pipes) and its check."""

import json
from pathlib import Path

import mlflow
from dagster import (
    AssetCheckResult,
    AssetCheckSeverity,
    AssetExecutionContext,
    MetadataValue,
    Output,
    PipesSubprocessClient,
    asset,
    asset_check,
)
from pydantic import Field

from clipcore.config import flatten
from clipcore.model.clip_model import checkpoint_digest
from clipcore.model.device import describe_hardware
from pipelines.assets import GROUP, StageConfig
from pipelines.pipes_train import STEP_LINE
from pipelines.pretrain_stage import resumable_run_id, torchrun_command, train_in_process, train_through_pipes
from pipelines.provenance import data_version, provenance_tags, registered_model_name, tag_dagster_run
from pipelines.publish import copy_into_place
from pipelines.resources import MLflowResource, PipelineResource
from pipelines.tracking import (
    TRAIN_SUMMARY,
    log_and_register,
    log_training_inputs,
    run_link,
    tracked_run,
    training_series,
    version_link,
)
from pipelines.values import CaptionShards, FilteredCaptions, TrainedModel


class PretrainConfig(StageConfig):
    """Overrides plus where training runs."""

    launcher: str = Field(default="in_process", description="`in_process`, or `torchrun`: an external torchrun "
                          "launched through Dagster Pipes, streaming logs and metrics back")
    nproc_per_node: int = Field(default=2, description="torchrun processes per node")
    nnodes: int = Field(default=1, description="torchrun nodes; one listens on 127.0.0.1 only, more meet through "
                        "torchrun's c10d rendezvous (rdzv_endpoint, rdzv_id, node_rank) and must reach each other: "
                        "this asset runs one node, every other node runs the torchrun command it logs with its own "
                        "node_rank, on the same paths (a shared file system)")
    rdzv_endpoint: str = Field(default="", description="nnodes > 1: HOST:PORT of node 0's c10d rendezvous store, "
                               "reachable from every node (it listens on every interface)")
    rdzv_id: str = Field(default="", description="nnodes > 1: the job's rendezvous id, the same on every node")
    node_rank: int = Field(default=0, description="nnodes > 1: this node's rank, 0 to nnodes-1; node 0 hosts the "
                           "rendezvous store at rdzv_endpoint")
    resume: bool = Field(default=False, description="continue an interrupted training from its state "
                         "(outputs/.partial/clip_model/train_state.pt; set train.checkpoint_every), in the MLflow run "
                         "it started")


def summary_metrics(summary: dict) -> dict[str, float]:
    """The run-level training figures logged to MLflow (as `train_summary/<name>`)."""
    figures = {"samples_per_second": summary["samples_per_second"], "rows": summary["train_rows"],
               "steps": summary["steps"], "seconds": summary["seconds"],
               "data_wait_share": summary["data_wait_seconds"] / max(summary["seconds"], 1e-9),
               "flops_per_sample": summary["flops_per_sample"], "achieved_tflops": summary["achieved_tflops"],
               "peak_memory_mb": summary["peak_memory_mb"], "skipped_samples": summary.get("skipped_samples", 0),
               **({"mfu": summary["mfu"]} if summary["mfu"] is not None else {}),
               **excluded_counts(summary)}
    return {TRAIN_SUMMARY + name: value for name, value in figures.items()}


def excluded_counts(summary: dict) -> dict[str, int]:
    """The rows train.exclude_classes dropped (clipcore.train.held_out_classes.Exclusion.summary), when it is set."""
    return {k: v for k, v in summary.items() if k.startswith("excluded_")}


@asset(group_name=GROUP, kinds={"pytorch", "mlflow"})
def clip_model(context: AssetExecutionContext, config: PretrainConfig, pipeline: PipelineResource,
               mlflow_store: MLflowResource, pipes_subprocess_client: PipesSubprocessClient,
               caption_shards: CaptionShards, filtered_captions: FilteredCaptions) -> Output[TrainedModel]:
    """A CLIP model trained on the kept rows, checkpointed as safetensors, logged and registered in MLflow."""
    cfg = pipeline.load_config("pretrain", config.overrides)
    mlflow_store.setup(cfg.registry.experiment)
    params = flatten({"model": cfg.model, "loss": cfg.loss, "train": cfg.train, "eval": cfg.eval})
    tag_dagster_run(context, caption_shards.input)
    model_name = registered_model_name(cfg.registry.model_name, caption_shards.input)  # one per dataset

    def on_log(record: dict) -> None:  # every logged step: loss, lr, temperature and the batch diagnostics
        mlflow.log_metrics(training_series(record), step=int(record["step"]))

    def on_log_in_process(record: dict) -> None:  # the loss line the Pipes launcher's processes send, in the event log
        context.log.info(STEP_LINE.format(**record))
        on_log(record)

    # an interrupted training's state stays in the stage's work folder; only a finished one is published
    with pipeline.writing("clip_model", keep_partial=config.resume) as stage:
        out = stage.work
        resumed_run_id = resumable_run_id(out / "train_state.pt") if config.resume else None
        with tracked_run(run_id=resumed_run_id, run_name=None if config.resume else f"pretrain-{cfg.loss.name}",
                         log_system_metrics=True) as run:
            if config.resume:  # same run: its params stay; the resuming Dagster run is recorded beside the first one
                mlflow.set_tag("resumed_by_dagster_run_id", context.run_id)
                context.log.info(f"resuming MLflow run {run.info.run_id} from {out / 'train_state.pt'}")
            else:
                # what it trained on too: the filter params that made the kept rows, the ingest input behind them
                mlflow.log_params({**params, **filtered_captions.config, "ingest.input": caption_shards.input})
                mlflow.set_tags({"dagster_run_id": context.run_id, "stage": "pretrain", "launcher": config.launcher,
                                 **provenance_tags(caption_shards.input)})
                log_training_inputs(filtered_captions.kept, caption_shards.input, data_version(caption_shards.input))
            if config.launcher == "torchrun":
                command = torchrun_command(pipeline.params_path, config.overrides, filtered_captions.kept,
                                           caption_shards.dir, out, config.nproc_per_node, config.nnodes,
                                           config.resume, run.info.run_id, config.rdzv_endpoint, config.rdzv_id,
                                           config.node_rank)
                summary, history = train_through_pipes(context, pipes_subprocess_client, command, out, on_log)
            elif config.launcher == "in_process":
                summary, history = train_in_process(filtered_captions.kept, caption_shards.dir, out, cfg,
                                                    on_log_in_process,
                                                    config.resume, run.info.run_id)
            else:
                raise ValueError(f"launcher must be in_process or torchrun, not {config.launcher!r}")
            mlflow.log_metrics(summary_metrics(summary))
            mlflow.set_tags({"train_device": summary["device"],  # what the report states as the hardware
                             "train_hardware": describe_hardware(str(summary["device"]))})
            digest = checkpoint_digest(out / "checkpoint")
            _, version = log_and_register(out / "checkpoint", model_name, digest)
        final = stage.final
        value = TrainedModel(dir=str(final), checkpoint=str(final / "checkpoint"),
                             holdout=str(final / "holdout.parquet"), history=str(final / "history.json"),
                             model_name=model_name, model_version=version, loss=cfg.loss.name, config=params,
                             checkpoint_sha256=digest)
        stage.publish(value)
        # DVC's plots file, in git: `dvc plots diff main` finds the baseline's curves with no DVC cache
        copy_into_place(Path(value.history), Path(pipeline.outputs_dir) / "history.json")
    return Output(value, metadata={
        "mlflow_run_id": run.info.run_id, "mlflow_run": MetadataValue.url(run_link(run.info.run_id)),
        "registered_model": f"{model_name} v{version}",
        "mlflow_model_version": MetadataValue.url(version_link(model_name, version)),
        "loss_name": cfg.loss.name, "launcher": f"{config.launcher} x{summary['processes']}",
        "train_rows": summary["train_rows"], "holdout_rows": summary["holdout_rows"], "steps": summary["steps"],
        "resumed": config.resume, "skipped_samples": summary.get("skipped_samples", 0),
        "device": summary["device"], "train_seconds": round(summary["seconds"], 1),
        "samples_per_second": round(summary["samples_per_second"], 1),
        "achieved_tflops": round(summary["achieved_tflops"], 4), "peak_memory_mb": round(summary["peak_memory_mb"]),
        "streamed_records": summary.get("streamed_records", len(history)),
        "first_loss": history[0]["loss"], "final_loss": history[-1]["loss"],
        "final_temperature": history[-1]["temperature"],
        "checkpoint_sha256": digest, "config": MetadataValue.json(params), **excluded_counts(summary),
    })


@asset_check(asset=clip_model, description="Training ran past its warm-up, lowered the loss (mean of the last "
             "tenth of the logged steps below the first tenth's) and kept the logit scale within [1, 100].")
def training_converged(clip_model: TrainedModel) -> AssetCheckResult:
    history = json.loads(Path(clip_model.history).read_text())
    steps, warmup = history[-1]["step"] + 1, int(clip_model.config.get("train.warmup_steps", 0))
    tenth = max(1, len(history) // 10)  # one logged step is noise: compare the ends' means
    first = sum(h["loss"] for h in history[:tenth]) / tenth
    last = sum(h["loss"] for h in history[-tenth:]) / tenth
    scale = history[-1]["logit_scale"]
    problems = [text for failed, text in (
        (steps <= warmup, f"stopped at step {steps}, inside the {warmup}-step warm-up (train.warmup_steps): the "
                          "learning rate never reached its peak"),
        (last >= first, f"the loss did not fall ({first:.4f} -> {last:.4f})"),
        (not 1.0 <= scale <= 100.0, f"logit scale {scale:.2f} outside [1, 100]")) if failed]
    return AssetCheckResult(passed=not problems, severity=AssetCheckSeverity.WARN,
                            description="; ".join(problems) or None,
                            metadata={"steps": steps, "warmup_steps": warmup, "first_loss": first, "final_loss": last,
                                      "final_logit_scale": scale})


ASSETS, CHECKS = [clip_model], [training_converged]
