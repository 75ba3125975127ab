"""How asset values travel between stages: each asset's frozen dataclass (pipelines.values) as JSON inside its DVC out
folder, `outputs/<asset>/asset.json`, so a stage run by `dvc repro` and one run from the Dagster UI read and write the
same thing."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import polars as pl
from dagster import ConfigurableIOManager, InputContext, OutputContext

from pipelines.values import VALUE_TYPES

ASSET_FILE = "asset.json"


def value_json(obj: object) -> str:
    """An asset's value as stored: `{"type": <dataclass name>, "value": {...}}`."""
    if type(obj).__name__ not in VALUE_TYPES:
        raise TypeError(f"{type(obj).__name__} is not one of pipelines.values' types")
    return json.dumps({"type": type(obj).__name__, "value": dataclasses.asdict(obj)}, indent=2, sort_keys=True)


class JsonIOManager(ConfigurableIOManager):
    """Stores each asset's value as `<outputs_dir>/<asset name>/asset.json` (`{"type": ..., "value": {...}}`).

    Stages that publish their folder atomically (pipelines.publish) have written it already, inside the folder they
    swapped into place; this only checks that it is still theirs. Writing it here would attach this run's value to
    another run's files if that run had published in between.
    """

    outputs_dir: str = "outputs"

    def _path(self, asset_name: str) -> Path:
        return Path(self.outputs_dir) / asset_name / ASSET_FILE

    def handle_output(self, context: OutputContext, obj: object) -> None:
        text, path = value_json(obj), self._path(context.asset_key.path[-1])
        if getattr(obj, "published", False):
            if not path.exists() or path.read_text() != text:
                raise RuntimeError(f"{path.parent} was replaced by another run after this one published it; this "
                                   "run's products are gone, the folder holds the other run's (consistent) ones")
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(text)
        os.replace(tmp, path)

    def load_input(self, context: InputContext) -> object:
        name = context.asset_key.path[-1]
        path = self._path(name)
        if not path.exists():
            raise FileNotFoundError(f"{path} is missing: materialize the upstream asset `{name}` first")
        stored = json.loads(path.read_text())
        if stored.get("type") not in VALUE_TYPES:
            raise ValueError(f"{path} was written by another version of the pipeline: materialize `{name}` again")
        return VALUE_TYPES[stored["type"]](**stored["value"])


def markdown_table(frame: pl.DataFrame, rows: int = 10) -> str:
    """The first `rows` rows of a frame as a Markdown table (for Dagster metadata)."""
    with pl.Config(tbl_formatting="MARKDOWN", tbl_hide_column_data_types=True, tbl_hide_dataframe_shape=True,
                   tbl_rows=rows, fmt_str_lengths=60, tbl_width_chars=400, tbl_cols=-1):
        return str(frame.head(rows))
