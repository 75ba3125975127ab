"""Dataset files (configs/datasets/*.yaml): checked against params.yaml, printed as settings that DVC and --set
parse back to the file's values."""

import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from clipcore.config import load_params
from pipelines.cli_common import CommandError
from pipelines.dataset_file import as_dvc_settings, check_dataset, read_dataset_file
from pipelines.provenance import registered_model_name

ROOT = Path(__file__).resolve().parents[2]


def test_the_default_dataset_file_is_what_params_yaml_says():
    """configs/datasets/fashion_mnist.yaml and params.yaml name the same data, evaluation and registry name."""
    settings = read_dataset_file(ROOT / "configs/datasets/fashion_mnist.yaml")
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    config = load_params(ROOT / "params.yaml")
    for key, value in settings.items():
        section, field = key.split(".")
        if key == "registry.model_name":  # params leaves it empty: derived from the input's name
            assert value == registered_model_name(config.registry.model_name, config.ingest.input)
        else:
            assert params[section][field] == value, key


def test_settings_round_trip_through_the_shell_and_yaml(tmp_path):
    """Values with spaces, quotes, booleans, numbers and empty strings come back as they were written: split as a
    shell would (xargs) and parsed as YAML (as `dvc exp run -S` and `--set` do)."""
    (tmp_path / "my data").mkdir()
    (tmp_path / "my data" / "pairs.csv").write_text("url,caption\n")
    (tmp_path / "classes.txt").write_text("a\nb\n")
    values = {"ingest": {"input": str(tmp_path / "my data" / "pairs.csv"), "local_paths": False, "url_col": "it's"},
              "eval": {"name": "two words", "probe_size": 0, "class_names": str(tmp_path / "classes.txt"),
                       "templates": ""},
              "registry": {"model_name": "clip-mine"}}
    path = tmp_path / "mine.yaml"
    path.write_text(yaml.safe_dump(values))
    settings = read_dataset_file(path)
    words = shlex.split(as_dvc_settings(settings))
    assert words[::2] == ["-S"] * len(settings)
    parsed = {}
    for item in words[1::2]:
        key, _, raw = item.partition("=")
        parsed[key] = yaml.safe_load(raw) if raw else None
    expected = {f"{s}.{k}": v for s, items in values.items() for k, v in items.items()}
    assert parsed == expected


@pytest.mark.parametrize(("text", "message"), [
    ("ingest: {input: x.csv}\ntrain: {epochs: 2}\n", "unknown section 'train'"),
    ("ingest: {input: x.csv, processes: 4}\n", "ingest.processes is not a dataset setting"),
    ("eval: {name: x}\n", "ingest.input is required"),
    ("ingest: {input: x.csv}\neval: {tasks: ''}\n", "eval.tasks is empty.*configs/no_tasks.txt"),
])
def test_a_dataset_file_sets_only_dataset_keys(tmp_path, text, message):
    (tmp_path / "d.yaml").write_text(text)
    with pytest.raises(CommandError, match=message):
        read_dataset_file(tmp_path / "d.yaml")


def test_missing_paths_and_bad_values_fail_before_any_experiment(tmp_path):
    settings = {"ingest.input": str(tmp_path / "nope.csv"), "ingest.local_paths": False,
                "eval.labeled_set": str(tmp_path / "no_test_set")}
    with pytest.raises(CommandError, match=r"missing: ingest.input=.*nope.csv, eval.labeled_set=.*no_test_set"):
        check_dataset(settings, ROOT / "params.yaml")
    (tmp_path / "pairs.csv").write_text("url,caption\n")
    with pytest.raises(ValueError, match="probe_size"):
        check_dataset({"ingest.input": str(tmp_path / "pairs.csv"), "eval.probe_size": -1}, ROOT / "params.yaml")


def test_cli_prints_settings_or_one_line_error(tmp_path):
    """The command on a dataset whose paths exist (the default dataset's data/ exists only after `make data`)."""
    (tmp_path / "pairs.csv").write_text("url,caption\n")
    (tmp_path / "d.yaml").write_text(yaml.safe_dump({"ingest": {"input": str(tmp_path / "pairs.csv"),
                                                                "local_paths": False},
                                                     "eval": {"labeled_set": str(tmp_path), "probe_set": str(tmp_path),
                                                              "tasks": str(ROOT / "configs/no_tasks.txt")}}))
    ok = subprocess.run([sys.executable, "-m", "pipelines.cli", "dataset-args", str(tmp_path / "d.yaml"),
                         "--format", "set", "--params", str(ROOT / "params.yaml")], cwd=tmp_path,
                        capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    assert f"ingest.input={tmp_path / 'pairs.csv'}" in ok.stdout.splitlines()
    bad = subprocess.run([sys.executable, "-m", "pipelines.cli", "dataset-args", str(tmp_path / "none.yaml")],
                         cwd=ROOT, capture_output=True, text=True)
    assert bad.returncode == 1 and bad.stderr.strip().count("\n") == 0 and "does not exist" in bad.stderr
