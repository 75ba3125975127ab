"""A dataset as one named file (`configs/datasets/<name>.yaml`): its input, its evaluation and its registered model
name, as params.yaml keys. `clip-pipeline dataset-args FILE` checks it and prints it as `dvc exp run` settings, so
the experiment records every value in params.yaml as any other experiment does."""

from __future__ import annotations

import shlex
from pathlib import Path

import yaml

from pipelines.cli_common import CommandError

DATASET_KEYS = {
    "ingest": ("input", "input_format", "url_col", "caption_col", "local_paths", "data_root", "image_root"),
    "eval": ("name", "labeled_set", "probe_set", "probe_size", "class_names", "templates", "tasks"),
    "registry": ("model_name",),
}
"""The params a dataset file may set: what names the data and how it is judged; training settings stay in
params.yaml (or in `-S` settings of their own)."""
PATH_KEYS = ("ingest.input", "eval.labeled_set", "eval.probe_set", "eval.tasks")
"""Keys naming files or folders that must exist (when set; `ingest.data_root` too when `ingest.local_paths`)."""


def read_dataset_file(path: str | Path) -> dict[str, object]:
    """The dataset file's settings as `{"section.key": value}`, in file order.

    Raises:
        CommandError: the file is missing, not a mapping of the sections above, or sets a key they do not allow.
    """
    path = Path(path)
    if not path.is_file():
        raise CommandError(f"dataset file {path} does not exist (see configs/datasets/)")
    data = yaml.safe_load(path.read_text()) or {}
    if not isinstance(data, dict):
        raise CommandError(f"{path}: expected sections {sorted(DATASET_KEYS)}, got {type(data).__name__}")
    settings = {}
    for section, values in data.items():
        allowed = DATASET_KEYS.get(section)
        if allowed is None or not isinstance(values, dict):
            raise CommandError(f"{path}: unknown section {section!r}; a dataset file sets {sorted(DATASET_KEYS)}")
        for key, value in values.items():
            if key not in allowed:
                raise CommandError(f"{path}: {section}.{key} is not a dataset setting (allowed in {section}: "
                                   f"{', '.join(allowed)}); set training options in params.yaml or with -S")
            settings[f"{section}.{key}"] = value
    if "ingest.input" not in settings:
        raise CommandError(f"{path}: ingest.input is required (the dataset's captions)")
    for key in PATH_KEYS:
        if settings.get(key) == "":  # a DVC dep `${key}` cannot be an empty path
            hint = "; configs/no_tasks.txt is a suite with no tasks" if key == "eval.tasks" else ""
            raise CommandError(f"{path}: {key} is empty; DVC tracks it as a file, so name one{hint}")
    return settings


def check_dataset(settings: dict[str, object], params: str | Path = "params.yaml") -> None:
    """Apply `settings` over `params` (every type and range checked as a `-S` would be) and check that the paths it
    names exist, relative to the project folder. Raises CommandError naming every missing path."""
    from clipcore.config import load_params

    config = load_params(params, as_overrides(settings))
    keys = [*PATH_KEYS, *(("ingest.data_root",) if config.ingest.local_paths else ())]
    missing = []
    for key in keys:
        section, field = key.split(".")
        value = getattr(getattr(config, section), field)
        if value and not Path(value).exists():
            missing.append(f"{key}={value}")
    if missing:
        raise CommandError(f"missing: {', '.join(missing)} (paths are relative to the project folder)")


def as_overrides(settings: dict[str, object]) -> list[str]:
    """`key=value` items, values in YAML flow style: what `--set`, Dagster's `overrides` and `dvc exp run -S` parse."""
    return [f"{key}={yaml.safe_dump(value, default_flow_style=True).strip().removesuffix('...').strip()}"
            for key, value in settings.items()]


def as_dvc_settings(settings: dict[str, object]) -> str:
    """`-S key=value ...` for `dvc exp run`, shell-quoted."""
    return " ".join(f"-S {shlex.quote(item)}" for item in as_overrides(settings))
