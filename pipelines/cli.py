"""`clip-pipeline`: every stage as a subcommand (each one a Dagster materialization), plus predict, models and export.

The stage subcommands are what dvc.yaml runs, so `dvc repro` and the Dagster UI share one implementation
and one run history (DAGSTER_HOME, default ./.dagster).

An expected failure (a bad param, a missing file or model, an unknown alias) ends the command with one line,
`clip-pipeline: <message>`, and a non-zero exit; `--debug` shows the full traceback instead.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from clipcore.config import IngestConfig
from pipelines.cli_common import CommandError, expected_errors, load_config, one_line
from pipelines.model_commands import (
    EXPORT_DOC,
    EXPORT_EVAL_TASK_DOC,
    EXPORT_FORMATS,
    export,
    export_eval_task,
    list_models,
    predict,
)
from pipelines.stages import BY_NAME, STAGES

INGEST_FLAGS = {  # flag -> (IngestConfig field, type, help); img2dataset's names where it has them
    "url_list": ("input", str, "input: URL list (parquet/csv/tsv/jsonl[.gz]), image folder, tar shard(s), COCO JSON"),
    "input_format": ("input_format", str, "auto, parquet, csv, tsv, jsonl, folder, webdataset or coco"),
    "url_col": ("url_col", str, "URL column of a URL list"),
    "caption_col": ("caption_col", str, "caption column of a URL list"),
    "shard_size": ("shard_size", int, "input rows per output shard"),
    "processes": ("processes", int, "worker processes (one shard each at a time)"),
    "threads": ("threads", int, "downloads in flight per process (on one event loop)"),
    "max_side": ("max_side", int, "downscale images whose longer side exceeds this, keeping the aspect ratio"),
    "encode_format": ("encode_format", str, "jpg (the default with --url-list; a JPEG that fits is stored as it came) "
                      "or png (lossless)"),
    "timeout": ("timeout", float, "seconds per connect and per read"),
    "total_timeout": ("total_timeout", float, "seconds one image may take in all (retries, redirects, body)"),
    "retries": ("retries", int, "retries with backoff on 5xx, timeouts and reset connections (never on 4xx)"),
    "distributor": ("distributor", str, "local (a process pool, the default) or ray (the same shards as Ray tasks)"),
    "ray_address": ("ray_address", str, "the Ray cluster for --distributor ray (`ray start --head` prints it; auto)"),
}


def _dagster_home() -> None:
    home = Path(os.environ.setdefault("DAGSTER_HOME", str(Path(".dagster").resolve())))
    home.mkdir(parents=True, exist_ok=True)
    if not (home / "dagster.yaml").exists():
        (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")


class _WithoutStackTraces:
    """stderr, less the stack traces Dagster's console log appends to a failed step's message (the command ends with
    the error's one line; --debug keeps them). One log record arrives in one write."""

    MARK = "\n\nStack Trace:"

    def __init__(self, stream):
        self.stream = stream

    def write(self, text: str) -> int:
        if self.MARK in text:
            text = text.split(self.MARK, 1)[0] + "\n"
        return self.stream.write(text)

    def __getattr__(self, name: str):
        return getattr(self.stream, name)


def materialize_assets(asset_names: list[str], params: str, overrides: list[str],
                       asset_config: dict[str, dict] | None = None, debug: bool = False) -> None:
    """Materialize the named assets (and their checks) into the persistent Dagster instance."""
    _dagster_home()
    from dagster import DagsterInstance

    from pipelines.launch import build_resources, materialize_stages

    stderr = sys.stderr
    sys.stderr = stderr if debug else _WithoutStackTraces(stderr)  # Dagster's console handler takes it at run start
    try:
        results = materialize_stages(asset_names, build_resources(params_path=params), DagsterInstance.get(),
                                     overrides, asset_config=asset_config)
    finally:
        sys.stderr = stderr
    for result in results:
        for check in result.get_asset_check_evaluations():
            if not check.passed:
                print(f"check failed: {check.asset_key.to_user_string()} / {check.check_name}", file=sys.stderr)
        print(f"dagster run {result.run_id}: materialized "
              f"{', '.join(sorted({m.asset_key.to_user_string() for m in result.get_asset_materialization_events()}))}")


SUITE_DIR = "data/eval_tasks"
"""Where `clip-pipeline data` writes the default suite's tasks beside the test set (params.yaml's eval.tasks)."""


def build_data(args: argparse.Namespace) -> None:
    """Build the default caption dataset (Fashion-MNIST) and the default evaluation tasks under data/."""
    config = load_config(args)
    from clipcore.data.default_suite import build_default_suite
    from clipcore.data.fashion_mnist import build_caption_dataset

    counts = build_caption_dataset(config.data)
    print("caption dataset:", ", ".join(f"{k}={v}" for k, v in counts.items()))
    # the Fashion-MNIST test set is the suite's first task already (eval.labeled_set, task eval.name)
    written = build_default_suite(SUITE_DIR, names=("mnist", "digits", "faces"))
    print(f"evaluation tasks in {SUITE_DIR}:", ", ".join(f"{k} {v}" for k, v in written.items()))


def ingest_flag_overrides(args: argparse.Namespace) -> list[str]:
    """The ingest flags given, as `ingest.<field>=<value>` overrides to lay after --set's (a flag wins), for the
    standalone run and the asset's materialization alike: no flag is ignored, and each is checked as a param is.
    `--url-list` reads an img2dataset URL list (column `url`, http(s) URLs) and stores JPEGs unless --url-col,
    --encode-format or --set say otherwise: params.yaml's settings for its own local table (its path column, local
    files, PNG for 28-px grayscale pictures) do not carry over to another input."""
    changes = {field: getattr(args, flag) for flag, (field, _, _) in INGEST_FLAGS.items()
               if getattr(args, flag) is not None}
    if "input" in changes:
        set_keys = {item.partition("=")[0].strip() for item in args.overrides}
        if "url_col" not in changes and "ingest.url_col" not in set_keys:
            changes["url_col"] = "url"
        if "ingest.local_paths" not in set_keys:
            changes["local_paths"] = False
        if "encode_format" not in changes and "ingest.encode_format" not in set_keys:
            changes["encode_format"] = IngestConfig.encode_format
    return [f"ingest.{field}={json.dumps(value)}" for field, value in changes.items()]  # JSON is YAML: quoted str


def standalone_ingest(args: argparse.Namespace) -> None:
    """img2dataset-style run: params.yaml's ingest section, --set and flags on top, straight into --output-dir."""
    config = load_config(args).ingest
    from clipcore.ingest.stage import ingest

    stats = ingest(config, args.output_dir)
    print(json.dumps(stats, indent=2))


def standalone_filter(args: argparse.Namespace) -> None:
    """Filter an ingest folder into --output-dir with params.yaml's filter section."""
    config = load_config(args)
    from clipcore.filter.stage import run_filter

    load_embedders, filter_config = None, config.filter
    if config.filter.clip_score.enabled:  # default scorer: the champion of params' dataset (ingest.input)
        from pipelines.provenance import with_default_scorer
        from pipelines.resources import MLflowResource
        from pipelines.tracking import mlflow_embedders

        filter_config = with_default_scorer(config.filter, config.registry.model_name, config.ingest.input)
        MLflowResource().setup(config.registry.experiment)
        load_embedders = mlflow_embedders
    print(json.dumps(run_filter(args.input_dir, filter_config, args.output_dir, load_embedders).counts, indent=2))


def train(args: argparse.Namespace) -> None:
    """Pretrain on a filter stage's output, outside Dagster. One machine: `python -m pipelines.loopback_torchrun
    --nnodes=1 --rdzv-backend=loopback --nproc-per-node N $(which clip-pipeline) train ...` trains data-parallel on N
    processes (gloo on CPU, NCCL on GPUs), listening on 127.0.0.1 only (plain torchrun works too, but its stores
    listen on every interface). M machines: each runs `torchrun --nnodes=M --nproc-per-node=N --rdzv-backend=c10d
    --rdzv-endpoint=HOST:PORT --rdzv-id=JOB_ID --rdzv-conf=is_host=true|false $(which clip-pipeline) train ...`, HOST
    being the first node (is_host=true there only); the stores and sockets listen on every interface, as the nodes
    must reach each other, and --kept, --shards, --output-dir and --params must name the same files on every node
    (a shared file system)."""
    config = load_config(args)  # before torch is imported: a bad param fails at once

    from clipcore.train.distributed import rank_and_world
    from clipcore.train.stage import run_pretraining

    out = run_pretraining(args.kept, args.shards, args.output_dir, config, resume=args.resume)
    if rank_and_world()[0] == 0:
        r = out.result
        print(json.dumps({"checkpoint": str(out.checkpoint_dir), "train_rows": out.train_rows, "steps": r.steps,
                          "seconds": round(r.seconds, 1), "samples_per_second": round(r.samples_per_second, 1),
                          "final_loss": r.history[-1]["loss"], "device": r.device,
                          "processes": rank_and_world()[1]}, indent=2))


def write_dvc_yaml(args: argparse.Namespace) -> None:
    """Write dvc.yaml from the stage table (pipelines.stages)."""
    from pipelines.dvc_yaml import render_dvc_yaml

    Path(args.output).write_text(render_dvc_yaml())
    print(f"wrote {args.output}")


def study_report(args: argparse.Namespace) -> None:
    """Write the CLIP+Reg study's report from its DVC experiments (`make study` saves `dvc exp show --json`)."""
    from pipelines.study import write_study_report

    page = write_study_report(args.experiments, args.name, args.output_dir)
    print(f"wrote {page} and {page.parent / 'study.json'}")


def dataset_args(args: argparse.Namespace) -> None:
    """Print a checked dataset file as `dvc exp run` settings (or --set lines)."""
    from pipelines.dataset_file import as_dvc_settings, as_overrides, check_dataset, read_dataset_file

    settings = read_dataset_file(args.file)
    check_dataset(settings, args.params)
    print(as_dvc_settings(settings) if args.format == "dvc" else "\n".join(as_overrides(settings)))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="clip-pipeline", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--debug", action="store_true", help="on an error, show the full traceback instead of one line")
    sub = parser.add_subparsers(dest="command", required=True)

    def with_params(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
        p.add_argument("--params", default="params.yaml", help="params file (default: %(default)s)")
        p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                       help="override a param, e.g. --set train.epochs=1 (repeatable)")
        return p

    with_params(sub.add_parser("data", help="build the default Fashion-MNIST caption dataset under data/"))
    stages = {s.name: with_params(sub.add_parser(s.name, help=s.help, description=s.help)) for s in STAGES}
    ingest = stages["ingest"]
    ingest.add_argument("--output-dir", help="run standalone into this folder (img2dataset-style) instead of "
                        "materializing the Dagster asset. In both modes the flags below override params.yaml's ingest "
                        "section (as --set ingest.<key>=...); --url-list alone reads an img2dataset URL list (column "
                        "`url`, http(s) URLs): add --url-col, or --set ingest.local_paths=true for local files")
    for flag, (_, kind, text) in INGEST_FLAGS.items():
        ingest.add_argument(f"--{flag.replace('_', '-')}", dest=flag, type=kind, help=text)
    stages["pretrain"].add_argument("--resume", action="store_true", help="continue an interrupted training from "
                                    "outputs/clip_model/train_state.pt (needs train.checkpoint_every > 0) in the same "
                                    "MLflow run")
    stages["filter"].add_argument("--input-dir", help="an ingest output folder (standalone run; needs --output-dir)")
    stages["filter"].add_argument("--output-dir", help="where kept.parquet, rejected.parquet and funnel.json go")
    with_params(sub.add_parser("run", help="materialize every stage in order"))
    p = with_params(sub.add_parser("train", help="pretrain outside Dagster (works under torchrun)",
                                   description=train.__doc__))
    p.add_argument("--kept", default="outputs/filtered_captions/kept.parquet", help="kept rows (default: %(default)s)")
    p.add_argument("--shards", default="outputs/caption_shards", help="ingest folder (default: %(default)s)")
    p.add_argument("--output-dir", default="outputs/train", help="checkpoint folder (default: %(default)s)")
    p.add_argument("--resume", action="store_true",
                   help="continue from OUTPUT_DIR/train_state.pt (written every train.checkpoint_every steps)")
    p = with_params(sub.add_parser("predict", help="classify image files with a registered model"))
    p.add_argument("images", nargs="+", help="image files (PNG, JPEG, ...)")
    p.add_argument("--model", help="model URI (default: models:/<registered name>@champion, the name being "
                   "registry.model_name or, when empty, clip-<dataset of ingest.input>)")
    p.add_argument("--labels", help="comma-separated class names; without it, prints embedding shapes")
    p.add_argument("--embeddings-out", metavar="FILE", help="write the images' embeddings (rows in the order given) "
                   "to FILE.parquet (columns path, embedding) or FILE.npy ((n, d) float32)")
    p = with_params(sub.add_parser("models", help="list registered model versions, aliases and metrics"))
    p.add_argument("--name", help="registered model name (default: params' registry.model_name, or clip-<dataset of "
                   "ingest.input> when empty)")
    p = with_params(sub.add_parser("export", help="write the model as a Hugging Face or open_clip directory",
                                   description=EXPORT_DOC, formatter_class=argparse.RawDescriptionHelpFormatter))
    p.add_argument("directory", help="folder to write (created; refused if it exists and is not empty)")
    p.add_argument("--format", choices=EXPORT_FORMATS, default="hf", help="target library (default: %(default)s)")
    p.add_argument("--model", help="a checkpoint folder (config.json + model.safetensors) or an MLflow model URI "
                   "(default: models:/<registered name>@champion of params' dataset)")
    p = sub.add_parser("export-eval-task", help="write labeled images (or the default suite) as a CLIP_benchmark "
                       "evaluation task", description=EXPORT_EVAL_TASK_DOC,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("output", help="the task folder to write (with --default-suite: the folder of task folders)")
    p.add_argument("--default-suite", action="store_true", help="write the default offline suite")
    p.add_argument("--fashion-mnist", default="data/fashion_mnist", help="Fashion-MNIST folder: test/ and train/ "
                   "IDX files as `clip-pipeline data` writes them, or the four files (default: %(default)s)")
    p.add_argument("--probe-size", type=int, default=10_000, help="Fashion-MNIST training images in the default "
                   "suite's train split; 0: none (default: %(default)s)")
    p.add_argument("--images", help="IDX images (.gz) with --labels, a folder of IDX files, an ImageFolder tree or a "
                   "csv of (path, label)")
    p.add_argument("--labels", help="IDX labels (.gz), with IDX --images")
    p.add_argument("--class-names", help="class names in label order: a list in clipcore/prompts (e.g. "
                   "fashion_mnist) or a text file; needed for IDX, optional for a csv")
    p.add_argument("--templates", default="imagenet", help="prompt templates: a list in clipcore/prompts or a text "
                   "file, {} for the class name (default: %(default)s, CLIP's 80)")
    p.add_argument("--split", default="test", help="split to write; the linear probe fits on `train` "
                   "(default: %(default)s)")
    p.add_argument("--image-size", type=int, default=224, help="ImageFolder/csv images: shorter side resized and "
                   "center-cropped to this; IDX keeps its size (default: %(default)s)")
    p.add_argument("--channels", type=int, choices=(1, 3), default=3, help="ImageFolder/csv images: 1 gray, 3 RGB "
                   "(default: %(default)s)")
    p.add_argument("--limit", type=int, help="write at most this many images")
    p.add_argument("--shard-size", type=int, default=10_000, help="images per tar (default: %(default)s)")
    p.add_argument("--image-format", choices=("png", "webp"), default="png", help="lossless image encoding "
                   "(default: %(default)s)")
    p = sub.add_parser("dataset-args", help="check a dataset file and print it as `dvc exp run` settings",
                       description="Check a dataset file (configs/datasets/NAME.yaml: its input, evaluation and "
                       "registered model name) against params.yaml and print it as settings: `uv run clip-pipeline "
                       "dataset-args configs/datasets/NAME.yaml | xargs dvc exp run -n NAME` (make exp).")
    p.add_argument("file", help="the dataset file")
    p.add_argument("--params", default="params.yaml", help="params file the settings apply to (default: %(default)s)")
    p.add_argument("--format", choices=("dvc", "set"), default="dvc", help="dvc: `-S key=value ...` on one line; "
                   "set: one key=value per line (for --set or Dagster's `overrides`) (default: %(default)s)")
    p = sub.add_parser("study-report", help="the CLIP+Reg study's report from its DVC experiments (make study)",
                       description="Per variant mean ± sd over seeds, the paired difference from CLIP with its 95%% "
                       "t interval, the geometry against the regulariser's weight and the held-out-classes runs, from "
                       "the experiments named NAME-* in `dvc exp show --json` (saved by `make study`).")
    p.add_argument("--experiments", default="outputs/study/experiments.json",
                   help="`dvc exp show --json` output (default: %(default)s)")
    p.add_argument("--name", default="study", help="the study's experiment name prefix (default: %(default)s)")
    p.add_argument("--output-dir", default="outputs/study", help="where index.html and study.json go "
                   "(default: %(default)s)")
    p = sub.add_parser("dvc-yaml", help="write dvc.yaml from the stage table (pipelines/stages.py)")
    p.add_argument("--output", default="dvc.yaml", help="file to write (default: %(default)s)")
    for p in sub.choices.values():  # `clip-pipeline models --debug` works as well as `clip-pipeline --debug models`
        p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    try:
        run_command(args)
    except expected_errors() as err:
        if args.debug:
            raise
        raise SystemExit(f"clip-pipeline: {one_line(err)}") from None


def run_command(args: argparse.Namespace) -> None:
    """Dispatch a parsed command line to its subcommand."""
    if args.command == "data":
        build_data(args)
    elif args.command == "ingest" and args.output_dir:
        args.overrides = [*args.overrides, *ingest_flag_overrides(args)]
        standalone_ingest(args)
    elif args.command == "filter" and (args.input_dir or args.output_dir):
        if not (args.input_dir and args.output_dir):
            raise CommandError("filter: --input-dir and --output-dir go together")
        standalone_filter(args)
    elif args.command in BY_NAME:
        if args.command == "ingest":  # the flags apply to the asset too, as --set overrides
            args.overrides = [*args.overrides, *ingest_flag_overrides(args)]
        load_config(args)  # a bad params file or override fails here, before Dagster and the stage's libraries load
        resume = {"clip_model": {"resume": True}} if getattr(args, "resume", False) else None
        materialize_assets([BY_NAME[args.command].asset], args.params, args.overrides, resume, args.debug)
    elif args.command == "run":
        load_config(args)
        materialize_assets([s.asset for s in STAGES], args.params, args.overrides, debug=args.debug)
    elif args.command == "train":
        train(args)
    elif args.command == "predict":
        predict(args)
    elif args.command == "models":
        list_models(args)
    elif args.command == "export":
        export(args)
    elif args.command == "export-eval-task":
        export_eval_task(args)
    elif args.command == "dataset-args":
        dataset_args(args)
    elif args.command == "study-report":
        study_report(args)
    elif args.command == "dvc-yaml":
        write_dvc_yaml(args)


if __name__ == "__main__":
    main()
