"""The CLI: every subcommand explains itself, and bad overrides fail with a clear message."""

import subprocess
import sys

import pytest

from pipelines.cli import build_parser

SUBCOMMANDS = ["data", "ingest", "filter", "pretrain", "evaluate", "report", "run", "train", "predict", "models"]


@pytest.mark.parametrize("command", SUBCOMMANDS)
def test_help_for_every_subcommand(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        build_parser().parse_args([command, "--help"])
    assert exit_info.value.code == 0
    assert "usage: clip-pipeline " + command in capsys.readouterr().out


def test_unknown_override_is_a_clear_error(tmp_path):
    (tmp_path / "params.yaml").write_text("data: {seed: 1}\n")
    result = subprocess.run([sys.executable, "-m", "pipelines.cli", "data", "--params", str(tmp_path / "params.yaml"),
                             "--set", "data.sede=1"], capture_output=True, text=True)
    assert result.returncode != 0 and "unknown key 'sede'" in result.stderr
    assert "Traceback" not in result.stderr  # one line, not a traceback


def test_missing_params_file_is_an_error(tmp_path):
    result = subprocess.run([sys.executable, "-m", "pipelines.cli", "pretrain", "--params", str(tmp_path / "no.yaml")],
                            capture_output=True, text=True)
    assert result.returncode != 0 and "does not exist" in result.stderr


def test_unknown_loss_fails_at_once_naming_the_known_ones(tmp_path):
    """Rejected when the params are loaded: before torch, Dagster or any data is touched."""
    (tmp_path / "params.yaml").write_text("loss: {name: clip}\n")
    result = subprocess.run([sys.executable, "-X", "importtime", "-m", "pipelines.cli", "train", "--params",
                             str(tmp_path / "params.yaml"), "--set", "loss.name=nope"], capture_output=True, text=True)
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert "'nope' is not one of ['clip', 'clip_reg', 'siglip', 'cyclip']" in result.stderr
    imported = {line.split("|")[-1].strip() for line in result.stderr.splitlines() if line.startswith("import time:")}
    assert not imported & {"torch", "dagster", "mlflow", "polars"}  # it failed before loading any of them
