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


class JsonIOManager(ConfigurableIOManager):
    """Stores each asset's value as `<outputs_dir>/<asset name>/asset.json` (`{"type": ..., "value": {...}}`)."""

    outputs_dir: str = "outputs"

    def _path(self, asset_name: str) -> Path:
        return Path(self.outputs_dir) / asset_name / "asset.json"

    def handle_output(self, context: OutputContext, obj: object) -> None:
        if type(obj).__name__ not in VALUE_TYPES:
            raise TypeError(f"asset {context.asset_key.to_user_string()} returned {type(obj).__name__}, not one of "
                            f"pipelines.values' types")
        path = self._path(context.asset_key.path[-1])
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"type": type(obj).__name__, "value": dataclasses.asdict(obj)}, indent=2,
                                  sort_keys=True))
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
