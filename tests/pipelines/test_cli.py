"""The CLI: every subcommand explains itself; bad params and missing things fail with one clear line (a traceback
only with --debug)."""

import io
import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from pipelines.cli import build_parser

SUBCOMMANDS = ["data", "ingest", "filter", "pretrain", "evaluate", "report", "run", "train", "predict", "models",
               "export"]


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


HEAVY = {"torch", "dagster", "mlflow", "polars"}


def run_importtime(command: str, params: Path, *overrides: str) -> tuple[subprocess.CompletedProcess, set[str]]:
    """Run a subcommand with `-X importtime`; returns the result and the top-level modules it imported."""
    args = ["--params", str(params), *[a for o in overrides for a in ("--set", o)]]
    result = subprocess.run([sys.executable, "-X", "importtime", "-m", "pipelines.cli", command, *args],
                            capture_output=True, text=True)
    imported = {line.split("|")[-1].strip() for line in result.stderr.splitlines() if line.startswith("import time:")}
    return result, imported


def messages(stderr: str) -> list[str]:
    """stderr without -X importtime's lines."""
    return [line for line in stderr.splitlines() if not line.startswith("import time:")]


def test_unknown_loss_fails_at_once_naming_the_known_ones(tmp_path):
    """Rejected when the params are loaded: before torch, Dagster or any data is touched."""
    (tmp_path / "params.yaml").write_text("loss: {name: clip}\n")
    result, imported = run_importtime("train", tmp_path / "params.yaml", "loss.name=nope")
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert "'nope' is not one of ['clip', 'clip_reg', 'siglip', 'cyclip']" in result.stderr
    assert not imported & HEAVY  # it failed before loading any of them


@pytest.mark.parametrize(("command", "override", "message"), [
    ("train", "train.batch_size=-4", "params.train.batch_size: -4 is not >= 1"),
    ("pretrain", "train.batch_size=0", "params.train.batch_size: 0 is not >= 1"),
    ("pretrain", "train.epochs=0", "params.train.epochs: 0.0 is not > 0"),
    ("ingest", "ingest.shard_size=0", "params.ingest.shard_size: 0 is not >= 1"),
    ("ingest", "ingest.max_side=0", "params.ingest.max_side: 0 is not >= 1"),
])
def test_out_of_range_params_fail_in_one_line_before_torch(tmp_path, command, override, message):
    (tmp_path / "params.yaml").write_text("train: {epochs: 1}\n")
    result, imported = run_importtime(command, tmp_path / "params.yaml", override)
    assert result.returncode != 0
    assert messages(result.stderr) == [f"clip-pipeline: {message}"]
    assert not imported & HEAVY


def test_standalone_ingest_flags_are_range_checked(tmp_path):
    (tmp_path / "params.yaml").write_text("ingest: {shard_size: 10}\n")
    args = ["--params", str(tmp_path / "params.yaml"), "--output-dir", str(tmp_path / "out"), "--shard-size", "0"]
    result = subprocess.run([sys.executable, "-m", "pipelines.cli", "ingest", *args], capture_output=True, text=True)
    assert result.returncode != 0
    assert result.stderr.strip().splitlines() == ["clip-pipeline: params.ingest.shard_size: 0 is not >= 1"]
    assert not (tmp_path / "out").exists()


def run_cli(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    """`clip-pipeline ARGS` in `tmp_path` against an MLflow store there."""
    (tmp_path / "params.yaml").write_text("registry: {model_name: clip}\n")
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path}/mlflow.db"}
    return subprocess.run([sys.executable, "-m", "pipelines.cli", *args], capture_output=True, text=True, env=env,
                          cwd=tmp_path)


def error_lines(stderr: str) -> list[str]:
    """stderr without MLflow's store set-up log lines."""
    return [line for line in stderr.splitlines() if " INFO mlflow." not in line]


def test_unknown_model_is_one_line_and_debug_shows_the_traceback(tmp_path):
    plain = run_cli(tmp_path, "models", "--name", "nope")
    assert plain.returncode != 0
    assert error_lines(plain.stderr) == ["clip-pipeline: models: no registered model 'nope' (registered: none yet)"]
    debug = run_cli(tmp_path, "--debug", "models", "--name", "nope")
    assert debug.returncode != 0
    assert "Traceback (most recent call last)" in debug.stderr and "no registered model 'nope'" in debug.stderr


def test_unknown_alias_in_predict_is_one_line(tmp_path):
    buf = io.BytesIO()
    Image.new("L", (28, 28)).save(buf, format="PNG")
    (tmp_path / "x.png").write_bytes(buf.getvalue())
    result = run_cli(tmp_path, "predict", "--model", "models:/clip@nope", "x.png")
    assert result.returncode != 0
    [line] = error_lines(result.stderr)
    assert line.startswith("clip-pipeline: predict: cannot load models:/clip@nope: ")
    debug = run_cli(tmp_path, "predict", "--model", "models:/clip@nope", "x.png", "--debug")
    assert debug.returncode != 0 and "Traceback (most recent call last)" in debug.stderr


def test_export_writes_a_checkpoint_folder_and_refuses_a_resnet_in_one_line(tmp_path, capsys):
    from pipelines.cli import main
    from tests.clipcore.test_export import save_tiny_checkpoint

    (tmp_path / "params.yaml").write_text("registry: {model_name: clip}\n")
    params = ["--params", str(tmp_path / "params.yaml")]
    checkpoint = save_tiny_checkpoint(tmp_path / "ckpt")
    main(["export", *params, "--model", str(checkpoint), "--format", "open_clip", str(tmp_path / "oc")])
    assert f"wrote {tmp_path / 'oc'} (open_clip)" in capsys.readouterr().out
    assert (tmp_path / "oc" / "open_clip_config.json").is_file()
    resnet = save_tiny_checkpoint(tmp_path / "resnet", image_tower="resnet18")
    with pytest.raises(SystemExit) as exit_info:
        main(["export", *params, "--model", str(resnet), str(tmp_path / "hf")])
    assert str(exit_info.value) == ("clip-pipeline: cannot export a model with the image tower 'resnet18' as hf: "
                                    "Hugging Face's CLIPModel has no equivalent of it (only model.image_tower=vit "
                                    "with model.text_tower=clip exports)")
    assert not (tmp_path / "hf").exists()


def test_export_of_an_unknown_registered_model_is_one_line(tmp_path):
    result = run_cli(tmp_path, "export", "--model", "models:/clip@nope", "out")
    assert result.returncode != 0
    [line] = error_lines(result.stderr)
    assert line.startswith("clip-pipeline: export: cannot load models:/clip@nope: ")
    assert not (tmp_path / "out").exists()


def test_export_of_the_registered_champion(tmp_path):
    from tests.clipcore.test_export import save_tiny_checkpoint

    checkpoint = save_tiny_checkpoint(tmp_path / "trained")  # any folder name: found through the MLmodel file
    script = ("import sys, mlflow; from pipelines.tracking import configure_mlflow, tracked_run, log_and_register\n"
              "configure_mlflow(sys.argv[1], sys.argv[2], 'clip-pipeline')\n"
              "with tracked_run(run_name='pretrain-clip'):\n"
              "    _, version = log_and_register(sys.argv[3], 'clip', 'digest')\n"
              "mlflow.MlflowClient().set_registered_model_alias('clip', 'champion', version)\n")
    subprocess.run([sys.executable, "-c", script, f"sqlite:///{tmp_path}/mlflow.db", str(tmp_path / "artifacts"),
                    str(checkpoint)], check=True, capture_output=True, cwd=Path(__file__).parents[2])
    result = run_cli(tmp_path, "export", "exported")  # default: models:/clip@champion, --format hf
    assert result.returncode == 0, result.stderr
    assert "wrote exported (hf) from " in result.stdout
    import torch
    from safetensors.torch import load_file

    exported = load_file(str(tmp_path / "exported" / "model.safetensors"))
    original = load_file(str(checkpoint / "model.safetensors"))
    assert torch.equal(exported["text_model.embeddings.token_embedding.weight"],
                       original["clip.text_model.embeddings.token_embedding.weight"])
