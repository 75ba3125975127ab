"""What every `clip-pipeline` command shares: the one-line error contract and loading params with --set."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


class CommandError(Exception):
    """An expected failure of a command, its message written for the user (shown as one line)."""


def expected_errors() -> tuple[type[BaseException], ...]:
    """Error types that mean bad input or a missing thing rather than a bug: shown as one line without --debug.

    Looked up when an error is being handled, so mlflow's and Dagster's types count only where the command loaded
    them (a bad param must fail before either is imported)."""
    types: list[type[BaseException]] = [CommandError, ValueError, OSError, KeyError, RuntimeError]
    if (mlflow_errors := sys.modules.get("mlflow.exceptions")) is not None:
        types.append(mlflow_errors.MlflowException)
    if (dagster_errors := sys.modules.get("dagster._core.errors")) is not None:
        types.append(dagster_errors.DagsterPipesExecutionError)  # torchrun failed; its own log says why
    return tuple(types)


def one_line(err: BaseException) -> str:
    """The error's message as one line (mlflow's first line; a KeyError's key without repr quotes)."""
    if isinstance(err, KeyError) and len(err.args) == 1:
        message = str(err.args[0])
    else:
        message = getattr(err, "message", None) or str(err) or type(err).__name__
    lines = [line.strip() for line in str(message).splitlines() if line.strip()]
    return lines[0] if lines else type(err).__name__


def load_config(args: argparse.Namespace):
    """The params file with the command's --set overrides (unknown keys, wrong types, values out of range and a
    missing file raise before any stage library loads)."""
    from clipcore.config import load_params

    if not Path(args.params).is_file():
        raise FileNotFoundError(f"params file {args.params} does not exist (run from the project folder, or give "
                                "--params)")
    return load_params(args.params, args.overrides)
