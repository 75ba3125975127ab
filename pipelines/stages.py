"""The stages, declared once: the CLI's subcommands, the Dagster asset each materializes, and everything DVC needs to
know to rerun it (the params it reads, the code it runs, the data files it reads). dvc.yaml is written from this
table (`clip-pipeline dvc-yaml`) and a test keeps the two equal; `PipelineResource.load_config` lets an asset read
only the params its stage declares, so neither list can silently drift from the code.

No Dagster import here: `clip-pipeline --help` and the DVC checks load this module alone.
"""

from __future__ import annotations

from dataclasses import dataclass

# Code every stage process runs: the CLI, the launcher, the typed values, resources and the IO manager.
COMMON_CODE = ("clipcore/__init__.py", "clipcore/config.py", "clipcore/params.py", "pipelines/__init__.py",
               "pipelines/cli.py", "pipelines/dvc_yaml.py", "pipelines/launch.py", "pipelines/stages.py",
               "pipelines/values.py", "pipelines/io.py", "pipelines/publish.py", "pipelines/processes.py",
               "pipelines/resources.py", "pipelines/assets/__init__.py", "pipelines/provenance.py",
               "pipelines/cli_common.py", "pipelines/model_commands.py")
# What loading a model (a checkpoint, or a registered pyfunc) runs.
MODEL_CODE = ("clipcore/model", "clipcore/prompts", "clipcore/data/images.py")
EVAL_CODE = ("clipcore/evaluate", "clipcore/data", *MODEL_CODE)


@dataclass(frozen=True)
class Stage:
    """One stage of the chain."""

    name: str
    """The `clip-pipeline` subcommand and the DVC stage name."""
    asset: str
    """The Dagster asset it materializes (outputs/<asset>/ is its DVC out)."""
    help: str
    """One line for `clip-pipeline --help`."""
    params: tuple[str, ...]
    """params.yaml sections (`train`) or keys (`eval.templates`) it reads."""
    code: tuple[str, ...]
    """Files and folders it runs, besides COMMON_CODE."""
    data: tuple[str, ...] = ()
    """params keys naming files or folders it reads (DVC deps `${key}`)."""
    reads: tuple[str, ...] = ()
    """Upstream assets whose outputs/<asset>/ it reads."""
    metrics: str | None = None
    """A DVC metrics file it writes (not cached)."""
    plots: str | None = None
    """The file dvc.yaml's plots read, which it writes: an out kept in git (not cached), so `dvc plots diff <rev>`
    finds any revision's curves without that revision's outputs in the DVC cache. A plain out, not a stage `plots:`
    entry, which would add a default plot of every column."""

    versioned: bool = True
    """Whether outputs/<asset>/ is a DVC out. The report's is not: it states the run it describes (dates, MLflow run
    ids and links), so its hash would change run after run and leave dvc.lock modified after every fresh `make run`;
    it is rebuilt from the versioned outputs instead (seconds), never restored from DVC's cache."""

    @property
    def module(self) -> str:
        """The module defining its asset and checks."""
        return f"pipelines.assets.{self.name}"


STAGES: tuple[Stage, ...] = (
    Stage("ingest", "caption_shards",
          "fetch and validate every input row; write webdataset shards, manifests and _stats.json",
          params=("ingest",),
          code=("clipcore/ingest", "clipcore/data/__init__.py", "clipcore/data/layout.py", "clipcore/data/images.py",
                "pipelines/assets/ingest.py", "pipelines/pipes_ingest.py", "pipelines/partitions.py"),
          data=("ingest.input", "ingest.data_root")),
    Stage("filter", "filtered_captions",
          "apply DataComp basic rules and deduplication (and CLIP scores); write kept and rejected manifests",
          params=("filter", "registry"),
          code=("clipcore/filter", "clipcore/data", "clipcore/report/__init__.py", "clipcore/report/render.py",
                "pipelines/assets/filter.py",
                "pipelines/tracking.py",
                "pipelines/clip_pyfunc.py", *EVAL_CODE),  # the CLIP-score model is this project's pyfunc
          reads=("caption_shards",)),
    Stage("pretrain", "clip_model", "train a CLIP model on the kept rows; log and register it in MLflow",
          params=("model", "loss", "train", "eval.templates", "eval.class_names", "registry"),
          code=("clipcore/train", "clipcore/data", "pipelines/assets/pretrain.py", "pipelines/pretrain_stage.py",
                "pipelines/pipes_train.py", "pipelines/loopback_torchrun.py", "pipelines/tracking.py",
                "pipelines/clip_pyfunc.py", *MODEL_CODE),
          reads=("caption_shards", "filtered_captions"), plots="outputs/history.json"),
    Stage("evaluate", "evaluation",
          "the evaluation suite (zero-shot classification, retrieval, linear probes); write outputs/metrics.json",
          params=("eval", "train.exclude_classes", "registry"),
          code=("pipelines/assets/evaluate.py", "pipelines/tracking.py", *EVAL_CODE),
          data=("eval.labeled_set", "eval.probe_set", "eval.tasks"),
          reads=("caption_shards", "clip_model"), metrics="outputs/metrics.json"),
    Stage("promote", "champion",
          "move the registry's `champion` alias to the new model if it beats the champion on the same suite",
          params=("eval", "registry"),
          code=("pipelines/assets/promote.py", "pipelines/tracking.py", *EVAL_CODE),
          data=("eval.labeled_set", "eval.tasks"),
          reads=("clip_model", "evaluation")),
    Stage("report", "report", "write outputs/report/index.html (self-contained) and log it to MLflow",
          params=("registry",),
          code=("clipcore/report", "pipelines/assets/report.py", "pipelines/tracking.py", *EVAL_CODE),
          data=("eval.labeled_set",),  # thumbnails of confused test images
          reads=("caption_shards", "filtered_captions", "clip_model", "evaluation", "champion"), versioned=False),
)
BY_NAME = {s.name: s for s in STAGES}
BY_ASSET = {s.asset: s for s in STAGES}


def dvc_stages() -> dict:
    """dvc.yaml's `stages:` mapping, generated from STAGES."""
    out = {}
    for s in STAGES:
        code = dict.fromkeys((*COMMON_CODE, *s.code))
        code = [c for c in code if not any(c.startswith(f"{other}/") for other in code)]  # inside a listed folder
        deps = [*(f"outputs/{a}" for a in s.reads), *(f"${{{k}}}" for k in s.data), *code]
        entry = {"cmd": f"uv run --frozen clip-pipeline {s.name}", "deps": deps, "params": list(s.params),
                 "outs": [f"outputs/{s.asset}"] if s.versioned else []}
        if s.metrics:
            entry["metrics"] = [{s.metrics: {"cache": False}}]
        if s.plots:
            entry["outs"].append({s.plots: {"cache": False}})
        if not entry["outs"]:
            del entry["outs"]
        out[s.name] = entry
    return out
