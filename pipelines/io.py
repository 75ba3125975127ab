"""How asset values travel between stages: small JSON descriptors inside each stage's DVC out folder.

Asset values are plain dicts (paths and summary numbers); the heavy products (shards, manifests,
checkpoints) are files beside them. Keeping the descriptor in `outputs/<asset>/asset.json` means a stage run
by `dvc repro` and one run from the Dagster UI read and write the same thing.
"""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
from dagster import ConfigurableIOManager, InputContext, OutputContext


class JsonIOManager(ConfigurableIOManager):
    """Stores each asset's value as `<outputs_dir>/<asset name>/asset.json`."""

    outputs_dir: str = "outputs"

    def _path(self, asset_name: str) -> Path:
        return Path(self.outputs_dir) / asset_name / "asset.json"

    def handle_output(self, context: OutputContext, obj: dict) -> None:
        path = self._path(context.asset_key.path[-1])
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(obj, indent=2, sort_keys=True))

    def load_input(self, context: InputContext) -> dict:
        name = context.asset_key.path[-1]
        path = self._path(name)
        if not path.exists():
            raise FileNotFoundError(f"{path} is missing: materialize the upstream asset `{name}` first")
        return json.loads(path.read_text())


def markdown_table(frame: pl.DataFrame, rows: int = 10) -> str:
    """The first `rows` rows of a frame as a Markdown table (for Dagster metadata)."""
    with pl.Config(tbl_formatting="MARKDOWN", tbl_hide_column_data_types=True, tbl_hide_dataframe_shape=True,
                   tbl_rows=rows, fmt_str_lengths=60, tbl_width_chars=400, tbl_cols=-1):
        return str(frame.head(rows))
