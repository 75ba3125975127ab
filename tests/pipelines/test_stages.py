"""The stage table (pipelines/stages.py) against what it claims: dvc.yaml is written from it, each stage's declared code
covers every project module its process can import, and DVC reports exactly the stages whose declared code changed."""

from __future__ import annotations

import ast
import json
import os
import shutil
import subprocess
from functools import cache
from pathlib import Path

import pytest
import yaml

from pipelines.dvc_yaml import render_dvc_yaml
from pipelines.stages import COMMON_CODE, STAGES, Stage, dvc_stages

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("clipcore", "pipelines")
CLI, LAUNCH = ROOT / "pipelines" / "cli.py", ROOT / "pipelines" / "launch.py"
COMMANDS = (CLI, ROOT / "pipelines" / "model_commands.py")  # subcommand modules: their functions load their code
DVC = ("uv", "tool", "run", "--quiet", "--from", "dvc==3.67.1", "dvc")  # DVC conflicts with Dagster: not in the venv

# What a stage's import closure reaches and its declared code does not cover, known and explained. An entry that is
# no longer needed fails the test, so fixing pipelines/stages.py also means deleting the entry here.
# Reached only through a function the stage never calls: declaring them would rerun the stage for nothing.
# launch.materialize_stages registers shard partitions (pipelines.partitions, which reads the input) only when the
# ingest asset is selected (it counts the input rows with the plan, clipcore.ingest.plan).
_REGISTER_SHARDS = {"pipelines/partitions.py", "clipcore/ingest/__init__.py", "clipcore/ingest/sources.py",
                    "clipcore/ingest/plan.py"}
NEVER_CALLED = {
    # pipelines/resources.py's MLflowResource.setup imports pipelines.tracking (and its champion_checkpoint the model
    # code); the ingest asset uses no MLflow.
    "ingest": {"pipelines/tracking.py", "clipcore/evaluate/__init__.py", "clipcore/evaluate/metric_names.py",
               *(f"clipcore/model/{m}.py" for m in ("__init__", "clip_model", "open_clip_format", "prompts",
                                                    "tokenizer", "towers"))},
    # pipelines.tracking.log_evaluation imports clipcore.evaluate.metric_names; only the evaluate asset calls it.
    "pretrain": {"clipcore/evaluate/__init__.py", "clipcore/evaluate/metric_names.py", *_REGISTER_SHARDS},
    **{name: _REGISTER_SHARDS for name in ("filter", "evaluate", "promote", "report")},
}
# Imported when the stage runs but not declared: gaps in pipelines/stages.py, to be declared there (none today).
UNDECLARED: dict[str, set[str]] = {}


def test_dvc_yaml_is_generated_from_the_stage_table():
    assert (ROOT / "dvc.yaml").read_text() == render_dvc_yaml(), (
        "dvc.yaml differs from pipelines/stages.py: run `clip-pipeline dvc-yaml` and commit the result")


# --- static import closure ---------------------------------------------------------------------------------------


def module_file(name: str) -> Path | None:
    """The file of a project module or package (`clipcore.data` -> clipcore/data/__init__.py); None for others."""
    if name.split(".")[0] not in PACKAGES:
        return None
    base = ROOT.joinpath(*name.split("."))
    if (base / "__init__.py").is_file():
        return base / "__init__.py"
    return base.with_suffix(".py") if base.with_suffix(".py").is_file() else None


class _ImportNames(ast.NodeVisitor):
    """Every module name an import statement may load: `import a.b` loads a and a.b; `from a.b import c` loads a,
    a.b and a.b.c when c is a submodule. With `functions=False`, imports inside function bodies are left out."""

    def __init__(self, package: tuple[str, ...], functions: bool):
        self.package, self.functions, self.names = package, functions, set()

    def visit_FunctionDef(self, node):
        if self.functions:
            self.generic_visit(node)

    visit_AsyncFunctionDef = visit_FunctionDef

    def visit_Import(self, node):
        self.names.update(alias.name for alias in node.names)

    def visit_ImportFrom(self, node):
        if node.level:  # relative: `from ..x import y` inside package a.b -> a.x
            parts = self.package[:len(self.package) - node.level + 1]
            base = ".".join((*parts, node.module) if node.module else parts)
        else:
            base = node.module
        self.names.add(base)
        self.names.update(f"{base}.{alias.name}" for alias in node.names)


@cache
def imported_files(path: Path, functions: bool = True) -> frozenset[Path]:
    """The project files that importing `path` may load directly (package __init__.py files included)."""
    visitor = _ImportNames(path.parent.relative_to(ROOT).parts, functions)
    visitor.visit(ast.parse(path.read_text(), filename=str(path)))
    files = set()
    for name in visitor.names:
        parts = name.split(".")
        files.update(f for i in range(1, len(parts) + 1) if (f := module_file(".".join(parts[:i]))))
    return frozenset(files)


def import_closure(stage: Stage) -> set[Path]:
    """Every project file a stage's process may import: cli.py and model_commands.py (their module level only: their
    functions import the other subcommands' code), launch.py and the stage's asset module, followed through every
    import, including those inside functions."""
    todo = [*COMMANDS, *(f for c in COMMANDS for f in imported_files(c, functions=False)), LAUNCH,
            module_file(stage.module)]
    seen: set[Path] = set()
    while todo:
        path = todo.pop()
        if path not in seen:
            seen.add(path)
            if path not in COMMANDS:
                todo += imported_files(path)
    return seen


def undeclared(stage: Stage, files: set[Path]) -> set[str]:
    declared = (*COMMON_CODE, *stage.code)
    rel = {f.relative_to(ROOT).as_posix() for f in files}
    return {f for f in rel if not any(f == d or f.startswith(f"{d}/") for d in declared)}


@pytest.mark.parametrize("stage", STAGES, ids=lambda s: s.name)
def test_declared_code_covers_what_each_stage_imports(stage):
    missing_paths = [p for p in (*COMMON_CODE, *stage.code) if not (ROOT / p).exists()]
    assert not missing_paths, f"stage {stage.name} declares code that does not exist: {missing_paths}"
    asset_module = ROOT / "pipelines" / "assets" / f"{stage.name}.py"
    assert module_file(stage.module) == asset_module, f"{stage.module} is not {asset_module.relative_to(ROOT)}"
    closure = import_closure(stage)
    assert asset_module in closure

    known = NEVER_CALLED.get(stage.name, set()) | UNDECLARED.get(stage.name, set())
    gaps = undeclared(stage, closure)
    assert not gaps - known, (
        f"stage {stage.name} imports {sorted(gaps - known)} but pipelines/stages.py does not declare them: add them "
        "to its code (or COMMON_CODE), then run `clip-pipeline dvc-yaml`")
    assert not known - gaps, (
        f"stage {stage.name}: {sorted(known - gaps)} are now declared or no longer imported: delete them from "
        "NEVER_CALLED / UNDECLARED in this test")


# --- a real DVC run ----------------------------------------------------------------------------------------------


def dvc(repo: Path, *args: str) -> str:
    env = {**os.environ, "DVC_SITE_CACHE_DIR": str(repo.parent / "dvc-site-cache"),
           "DVC_NO_ANALYTICS": "1"}
    result = subprocess.run([*DVC, *args], cwd=repo, env=env, capture_output=True, text=True)
    assert result.returncode == 0, f"dvc {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}"
    return result.stdout


def param(params: dict, key: str):
    for part in key.split("."):
        params = params[part]
    return params


def copy_project_with_placeholders(repo: Path) -> None:
    """The tracked files in `repo`, a git repository there, and a small placeholder for every DVC dep and out that
    only a pipeline run (or the data) would make."""
    tracked = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, text=True, check=True)
    assert "dvc.yaml" in tracked.stdout.split("\0"), f"{ROOT} is not this project's git checkout"
    repo.mkdir()
    for name in tracked.stdout.split("\0"):
        if name and (ROOT / name).is_file():
            (repo / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(ROOT / name, repo / name)
    subprocess.run(["git", "init", "-q"], cwd=repo, check=True)

    params = yaml.safe_load((repo / "params.yaml").read_text())
    stages = dvc_stages()
    deps = {param(params, d[2:-1]) if d.startswith("${") else d for s in stages.values() for d in s["deps"]}
    outs = {o for s in stages.values() for o in s.get("outs", []) if isinstance(o, str)}  # stage folders
    missing = {p for p in deps - outs if not (repo / p).exists()}
    for path in sorted(missing, key=len, reverse=True):  # deepest first: a path under another makes it a folder
        if not (repo / path).exists():
            (repo / path).parent.mkdir(parents=True, exist_ok=True)
            (repo / path).write_text(f"placeholder {path}\n")
    for out in outs:
        (repo / out).mkdir(parents=True, exist_ok=True)
        (repo / out / "placeholder.txt").write_text(f"placeholder {out}\n")
    for s in STAGES:  # the git-tracked files beside them
        for name in (s.metrics, s.plots):
            if name and not (repo / name).exists():
                (repo / name).write_text("{}\n" if name == s.metrics else "[]\n")


def test_dvc_status_reports_the_stage_whose_code_changed(tmp_path):
    if shutil.which("uv") is None:
        pytest.skip("uv is not on PATH: DVC runs as `uv tool run --from dvc==3.67.1 dvc`")
    repo = tmp_path / "repo"
    copy_project_with_placeholders(repo)
    dvc(repo, "commit", "--force")  # dvc.lock now records the placeholders and this checkout's code
    assert json.loads(dvc(repo, "status", "--json")) == {}, "dvc status is not clean right after `dvc commit -f`"

    edited = ("pipelines/assets/promote.py", "clipcore/model/margins.py")  # one stage's asset; shared model code
    for name in edited:
        with open(repo / name, "a") as f:
            f.write("# edited by test_stages\n")
    expected = {}
    for name, entry in dvc_stages().items():
        changed = {d for d in entry["deps"] if any(f == d or f.startswith(f"{d}/") for f in edited)}
        if changed:
            expected[name] = changed
    unaffected = {s.name for s in STAGES} - set(expected)
    assert expected and unaffected, "the edited files should touch some stages and not others"

    status = json.loads(dvc(repo, "status", "--json"))
    reported = {name: {dep for item in items if isinstance(item, dict) for dep in item.get("changed deps", {})}
                for name, items in status.items()}
    assert reported == expected, f"dvc status: {status}"
    assert not unaffected & set(status), f"{sorted(unaffected)} do not run {edited} but dvc reports them changed"


def test_dvc_status_reports_the_stages_reading_an_edited_data_file(tmp_path):
    """The data deps are `${key}`s of params.yaml: editing the caption file or the test images that params name makes
    exactly the stages reading them stale (their outputs are unchanged, so nothing downstream is)."""
    if shutil.which("uv") is None:
        pytest.skip("uv is not on PATH: DVC runs as `uv tool run --from dvc==3.67.1 dvc`")
    repo = tmp_path / "repo"
    copy_project_with_placeholders(repo)
    dvc(repo, "commit", "--force")
    params = yaml.safe_load((repo / "params.yaml").read_text())
    edited = {key: param(params, key) for key in ("ingest.input", "eval.labeled_set")}
    for path in edited.values():
        with open(repo / path, "a") as f:
            f.write("edited by test_stages\n")
    expected = {}
    for s in STAGES:  # the stage's data deps that are, or hold, an edited file (ingest.data_root holds the captions)
        deps = {d for d in (param(params, k) for k in s.data) if any(f == d or f.startswith(f"{d}/")
                                                                     for f in edited.values())}
        if deps:
            expected[s.name] = deps
    assert set(expected) == {"ingest", "evaluate", "promote", "report"}

    status = json.loads(dvc(repo, "status", "--json"))
    assert status.pop("data.dvc", None) == [{"changed outs": {"data": "modified"}}]  # data/ as versioned by data.dvc
    reported = {name: {dep for item in items if isinstance(item, dict) for dep in item.get("changed deps", {})}
                for name, items in status.items()}
    assert reported == expected, f"dvc status: {status}"
