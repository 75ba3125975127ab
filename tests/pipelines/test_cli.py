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
    result = subprocess.run([sys.executable, "-m", "pipelines.cli", "data", "--params", str(tmp_path / "none.yaml"),
                             "--set", "data.sede=1"], capture_output=True, text=True)
    assert result.returncode != 0 and "unknown key 'sede'" in result.stderr
