"""CLI flags are honoured or rejected, never ignored: `ingest`'s flags apply with and without --output-dir (as
`--set ingest.<key>=...`), and an input that does not match its format or columns fails in one line before any
output exists."""

import io
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from PIL import Image

from clipcore.config import load_params
from pipelines.cli import INGEST_FLAGS, build_parser, ingest_flag_overrides, main

ROOT = Path(__file__).resolve().parents[2]

# Every flag of every subcommand, so that a new one cannot slip in unhandled: each is read by its command (the tests
# here and in test_cli.py show the ingest, filter and params ones taking effect or failing in one line).
FLAGS = {
    "data": {"--params", "--set"},
    "ingest": {"--params", "--set", "--output-dir", *(f"--{f.replace('_', '-')}" for f in INGEST_FLAGS)},
    "filter": {"--params", "--set", "--input-dir", "--output-dir"},
    "pretrain": {"--params", "--set", "--resume"},
    "evaluate": {"--params", "--set"}, "promote": {"--params", "--set"}, "report": {"--params", "--set"},
    "run": {"--params", "--set"},
    "train": {"--params", "--set", "--kept", "--shards", "--output-dir", "--resume"},
    "predict": {"--params", "--set", "--model", "--labels", "--embeddings-out"},
    "models": {"--params", "--set", "--name"},
    "export": {"--params", "--set", "--format", "--model"},
    "export-eval-task": {"--default-suite", "--fashion-mnist", "--probe-size", "--images", "--labels", "--class-names",
                         "--templates", "--split", "--image-size", "--channels", "--limit", "--shard-size",
                         "--image-format"},
    "dvc-yaml": {"--output"},
    "dataset-args": {"--params", "--format"},  # tests/pipelines/test_dataset_file.py
    "study-report": {"--experiments", "--name", "--output-dir"},  # tests/pipelines/test_study.py
}


def test_every_flag_is_known():
    sub = next(a for a in build_parser()._actions if a.__class__.__name__ == "_SubParsersAction")
    assert set(sub.choices) == set(FLAGS), f"new or gone subcommands: {sorted(set(sub.choices) ^ set(FLAGS))}"
    for command, expected in FLAGS.items():
        flags = {a.option_strings[0] for a in sub.choices[command]._actions if a.option_strings} - {"-h", "--debug"}
        assert flags == expected, f"{command}: flags {sorted(flags ^ expected)} are new or gone: make each take " \
                                  "effect or fail in one line, test it, and list it here"


@pytest.mark.parametrize(("flag", "value"), [
    ("url_list", "somewhere/urls.parquet"), ("input_format", "parquet"), ("url_col", "link"),
    ("caption_col", "text"), ("shard_size", "7"), ("processes", "3"), ("threads", "5"), ("max_side", "64"),
    ("encode_format", "jpg"),
    ("timeout", "2.5"), ("total_timeout", "9.5"), ("retries", "4"), ("distributor", "ray"),
    ("ray_address", "10.0.0.5:6379")])
def test_each_ingest_flag_becomes_its_param(flag, value):
    """The flags become `ingest.<field>=` overrides, which both modes apply (checked as params are)."""
    args = build_parser().parse_args(["ingest", f"--{flag.replace('_', '-')}", value])
    config = load_params(ROOT / "params.yaml", [*args.overrides, *ingest_flag_overrides(args)]).ingest
    field, kind, _ = INGEST_FLAGS[flag]
    assert getattr(config, field) == kind(value)
    if flag == "url_list":  # another input: an img2dataset URL list, not params.yaml's local table of 28-px PNGs
        assert config.url_col == "url" and config.local_paths is False and config.encode_format == "jpg"


def test_url_list_keeps_explicit_column_and_local_paths():
    args = build_parser().parse_args(["ingest", "--url-list", "mine.csv", "--url-col", "path",
                                      "--set", "ingest.local_paths=true"])
    config = load_params(ROOT / "params.yaml", [*args.overrides, *ingest_flag_overrides(args)]).ingest
    assert (config.input, config.url_col, config.local_paths) == ("mine.csv", "path", True)
    for extra in (["--encode-format", "png"], ["--set", "ingest.encode_format=png"]):
        args = build_parser().parse_args(["ingest", "--url-list", "mine.csv", *extra])
        config = load_params(ROOT / "params.yaml", [*args.overrides, *ingest_flag_overrides(args)]).ingest
        assert config.encode_format == "png"


def tiny_table(root: Path, rows: int = 5) -> Path:
    (root / "images").mkdir(parents=True)
    for i in range(rows):
        buf = io.BytesIO()
        Image.fromarray(np.full((20, 20), 40 * i, dtype=np.uint8)).save(buf, format="PNG")
        (root / "images" / f"{i}.png").write_bytes(buf.getvalue())
    pl.DataFrame({"path": [f"images/{i}.png" for i in range(rows)],
                  "caption": [f"a gray square number {i}" for i in range(rows)]}).write_csv(root / "mine.csv")
    return root / "mine.csv"


def cli(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "DAGSTER_HOME": str(cwd / ".dagster"), "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "pipelines.cli", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300)


def test_ingest_url_list_that_does_not_exist_fails_in_both_modes(tmp_path):
    (tmp_path / "params.yaml").write_text((ROOT / "params.yaml").read_text())
    for extra in ([], ["--output-dir", "standalone"]):
        result = cli(tmp_path, "ingest", "--url-list", "/does/not/exist.csv", *extra)
        assert result.returncode != 0, result.stdout
        assert result.stderr.strip().splitlines()[-1] == "clip-pipeline: input /does/not/exist.csv does not exist"
        assert "Traceback" not in result.stderr
    assert not (tmp_path / "outputs").exists() and not (tmp_path / "standalone").exists()


def test_ingest_flags_reach_the_asset_without_output_dir(tmp_path):
    """Without --output-dir the flags used to be dropped (params.yaml's input was ingested, exit 0)."""
    table = tiny_table(tmp_path / "mine")
    (tmp_path / "params.yaml").write_text((ROOT / "params.yaml").read_text())
    result = cli(tmp_path, "ingest", "--url-list", str(table), "--url-col", "path", "--shard-size", "2",
                 "--set", "ingest.local_paths=true", "--set", f"ingest.data_root={table.parent}")
    assert result.returncode == 0, result.stderr[-3000:]
    shards = tmp_path / "outputs" / "caption_shards"
    assert sorted(p.name for p in shards.glob("*.tar")) == ["00000.tar", "00001.tar", "00002.tar"]
    assert f'"input": "{table}"' in (shards / "asset.json").read_text()


@pytest.mark.parametrize(("overrides", "message"), [
    (["ingest.input_format=jsonl"], "mine.csv: cannot be read as jsonl (ingest.input_format): "),
    (["ingest.input_format=parquet"], "mine.csv: cannot be read as parquet (ingest.input_format): "),
    (["ingest.input_format=tsv"], "mine.csv: no url column 'path' (--url-col, ingest.url_col); columns are "
                                  "['path,caption'] (one column: is it csv? ingest.input_format)"),
    (["ingest.input_format=folder"], "mine.csv is a file, not a folder (ingest.input_format=folder); auto reads it "
                                     "as csv"),
    (["ingest.input_format=webdataset"], "mine.csv: not a tar shard (ingest.input_format=webdataset)"),
    (["ingest.input_format=coco"], "mine.csv: not COCO captions JSON (ingest.input_format=coco): "),
    (["ingest.url_col=uid"], "mine.csv: no url column 'uid' (--url-col, ingest.url_col); columns are "
                             "['path', 'caption']"),
    (["ingest.caption_col=text"], "mine.csv: no caption column 'text'"),
    (["ingest.local_paths=false"], "mine.csv: column 'path' holds no http(s) URL (first: 'images/0.png'); a table "
                                   "of local files needs ingest.local_paths=true"),
])
def test_a_stale_input_format_fails_in_one_line_before_any_output(tmp_path, overrides, message):
    table = tiny_table(tmp_path / "mine")
    (tmp_path / "params.yaml").write_text(f"ingest: {{input: {table}, url_col: path, local_paths: true, "
                                          f"data_root: {table.parent}}}\n")
    with pytest.raises(SystemExit) as exit_info:
        main(["ingest", "--params", str(tmp_path / "params.yaml"), "--output-dir", str(tmp_path / "out"),
              *[a for o in overrides for a in ("--set", o)]])
    line = str(exit_info.value)
    assert line.startswith("clip-pipeline: ") and message in line and "\n" not in line
    assert not (tmp_path / "out").exists()


def test_a_stale_input_format_in_the_asset_leaves_no_output(tmp_path):
    table = tiny_table(tmp_path / "mine")
    (tmp_path / "params.yaml").write_text(f"ingest: {{input: {table}, url_col: path, local_paths: true, "
                                          f"data_root: {table.parent}, input_format: webdataset}}\n")
    result = cli(tmp_path, "ingest")
    assert result.returncode != 0
    assert result.stderr.strip().splitlines()[-1] == f"clip-pipeline: {table}: not a tar shard " \
                                                     "(ingest.input_format=webdataset)"
    assert not (tmp_path / "outputs").exists()


def test_out_of_range_ingest_flag_is_one_line(tmp_path):
    with pytest.raises(SystemExit) as exit_info:
        main(["ingest", "--params", str(ROOT / "params.yaml"), "--shard-size", "0"])
    assert str(exit_info.value) == "clip-pipeline: params.ingest.shard_size: 0 is not >= 1"


def test_filter_input_dir_needs_output_dir(tmp_path):
    for flags in (["--input-dir", str(tmp_path)], ["--output-dir", str(tmp_path / "out")]):
        with pytest.raises(SystemExit) as exit_info:
            main(["filter", "--params", str(ROOT / "params.yaml"), *flags])
        assert str(exit_info.value) == "clip-pipeline: filter: --input-dir and --output-dir go together"
