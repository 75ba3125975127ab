"""params.yaml against clipcore.config and DVC: it lists every field of PipelineConfig (so `dvc exp run -S key=value`
works for any key, with no `+`/`++`), every key loads, the data paths DVC tracks are never empty, and in a real DVC
repository `-S` sets each key to a value the strict loader reads back unchanged, experiment after experiment, with the
templated data deps (`${ingest.input}`) following the new value."""

import dataclasses
import json
import os
import shutil
import subprocess
import sys
import typing
from pathlib import Path

import pytest
import yaml

from clipcore.config import PipelineConfig, flatten, load_params
from pipelines.stages import STAGES

ROOT = Path(__file__).resolve().parents[2]
DVC = ("uv", "tool", "run", "--quiet", "--from", "dvc==3.67.1", "dvc")  # DVC conflicts with Dagster: not in the venv


def field_keys(cls: type = PipelineConfig, prefix: str = "") -> list[str]:
    """`section.key` (`filter.clip_score.enabled`) for every leaf field under `cls`."""
    keys = []
    for f in dataclasses.fields(cls):
        hint = typing.get_type_hints(cls)[f.name]
        keys += field_keys(hint, f"{prefix}{f.name}.") if dataclasses.is_dataclass(hint) else [f"{prefix}{f.name}"]
    return keys


def yaml_keys(values: dict, prefix: str = "") -> list[str]:
    keys = []
    for name, value in values.items():
        keys += yaml_keys(value, f"{prefix}{name}.") if isinstance(value, dict) else [f"{prefix}{name}"]
    return keys


def params() -> dict:
    return yaml.safe_load((ROOT / "params.yaml").read_text())


def test_params_yaml_lists_every_config_field():
    missing = sorted(set(field_keys()) - set(yaml_keys(params())))
    assert not missing, (f"params.yaml lacks {missing}: add each with its default (see clipcore/config.py), so that "
                         "`dvc exp run -S key=value` works without `+`")
    load_params(ROOT / "params.yaml")  # and every key it lists loads (unknown keys, types and ranges checked)


def test_shipped_configs_load():
    for path in [ROOT / "params.yaml", *sorted((ROOT / "configs").glob("*.yaml"))]:
        load_params(path)


def test_data_paths_dvc_tracks_are_set():
    """dvc.yaml's deps `${key}` come from these keys: an empty value makes every DVC command fail."""
    values = params()
    for stage in STAGES:
        for key in stage.data:
            value = values
            for part in key.split("."):
                value = value[part]
            assert isinstance(value, str) and value.strip(), f"params.yaml: {key} (a DVC dep of {stage.name}) is empty"


# --- a real DVC repository -----------------------------------------------------------------------------------------

CHECK = """\
import json, sys
from clipcore.config import flatten, load_params
config = load_params("params.yaml")
json.dump({k: list(v) if isinstance(v, tuple) else v for k, v in flatten(config).items()}, open("loaded.json", "w"))
open("ingested.txt", "w").write(open(config.ingest.input).read())
"""


def hydra_value(value) -> str:
    """A value as a `dvc exp run -S` (Hydra override grammar) literal: strings quoted, lists bracketed."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list | tuple):
        return "[" + ",".join(hydra_value(v) for v in value) + "]"
    if isinstance(value, str):
        return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"
    return repr(value)


def run(repo: Path, *args: str) -> str:
    env = {**os.environ, "DVC_NO_ANALYTICS": "1", "DVC_SITE_CACHE_DIR": str(repo.parent / "dvc-site-cache"),
           "PYTHONPATH": str(ROOT), "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.invalid",
           "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@example.invalid"}
    result = subprocess.run(args, cwd=repo, env=env, capture_output=True, text=True)
    assert result.returncode == 0, f"{' '.join(args)} failed:\n{result.stdout}\n{result.stderr}"
    return result.stdout


@pytest.fixture
def repo(tmp_path) -> Path:
    """A git + DVC repository with the project's params.yaml and one stage that loads it strictly and reads the file
    `${ingest.input}` names (a templated dep, as in dvc.yaml)."""
    if shutil.which("uv") is None:
        pytest.skip("uv is not on PATH: DVC runs as `uv tool run --from dvc==3.67.1 dvc`")
    repo = tmp_path / "repo"
    repo.mkdir()
    shutil.copyfile(ROOT / "params.yaml", repo / "params.yaml")
    (repo / "check.py").write_text(CHECK)
    data = Path(params()["ingest"]["input"])
    (repo / data).parent.mkdir(parents=True)
    (repo / data).write_text("the default captions\n")
    (repo / data.with_name("mine.csv")).write_text("the user's captions\n")
    stage = {"cmd": f"{sys.executable} check.py", "deps": ["check.py", "${ingest.input}"],
             "params": [f.name for f in dataclasses.fields(PipelineConfig)], "outs": ["ingested.txt"],
             "metrics": [{"loaded.json": {"cache": False}}]}
    (repo / "dvc.yaml").write_text(yaml.safe_dump({"stages": {"check": stage}}, sort_keys=False))
    run(repo, "git", "init", "-q")
    run(repo, *DVC, "init", "-q")
    (repo / ".gitignore").write_text("/ingested.txt\n")
    run(repo, *DVC, "repro", "-q")
    run(repo, "git", "add", "-A")
    run(repo, "git", "commit", "-qm", "baseline")
    return repo


def test_dvc_exp_run_sets_every_key(repo):
    baseline = flatten(load_params(repo / "params.yaml"))
    # every key at once, none with `+`: three that params.yaml once lacked (issue 13: "use +eval.labeled_set") to new
    # values, the others each to its own value, which must come back the same; the templated dep follows the input
    mine = str(Path(baseline["ingest.input"]).with_name("mine.csv"))
    changes = {"eval.labeled_set": "data/digits/test", "train.samples_seen": 5000, "ingest.input": mine}
    run(repo, *DVC, "exp", "run", "-q", "-n", "every-key", *[a for k, v in (baseline | changes).items()
                                                               for a in ("-S", f"{k}={hydra_value(v)}")])
    assert flatten(load_params(repo / "params.yaml")) == baseline | changes
    assert json.loads((repo / "loaded.json").read_text()) == json.loads(json.dumps(baseline | changes))
    assert (repo / "ingested.txt").read_text() == "the user's captions\n"
    lock = yaml.safe_load((repo / "dvc.lock").read_text())["stages"]["check"]
    assert mine in {d["path"] for d in lock["deps"]}

    # and again after an experiment ("+ fails after one experiment, only ++ works")
    run(repo, *DVC, "exp", "run", "-q", "-n", "second", "-S", "eval.labeled_set=data/other/test",
        "-S", "filter.near_duplicate_bits=4", "-S", "filter.languages=[en,de]")
    loaded = json.loads((repo / "loaded.json").read_text())
    assert loaded["eval.labeled_set"] == "data/other/test" and loaded["filter.near_duplicate_bits"] == 4
    assert loaded["filter.languages"] == ["en", "de"]
    assert json.loads(run(repo, *DVC, "status", "--json")) == {}

    # editing the file ingest.input names makes the stage stale
    (repo / mine).write_text("the user's captions, edited\n")
    status = json.loads(run(repo, *DVC, "status", "--json"))
    assert status == {"check": [{"changed deps": {mine: "modified"}}]}
