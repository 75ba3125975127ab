"""Prompt files: zero-shot templates and class names, shipped in clipcore/prompts or given as paths."""

from __future__ import annotations

from importlib import resources
from pathlib import Path


def load_lines(name_or_path: str, suffix: str = "") -> list[str]:
    """Non-empty, non-comment lines of a shipped prompt file (`clipcore/prompts/<name><suffix>.txt`) or a path."""
    path = Path(name_or_path)
    if path.suffix:
        text = path.read_text()
    else:
        shipped = resources.files("clipcore") / "prompts" / f"{name_or_path}{suffix}.txt"
        if not shipped.is_file():
            raise FileNotFoundError(f"no prompt file {name_or_path!r}: neither a path nor shipped in clipcore/prompts")
        text = shipped.read_text()
    return [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")]


def load_templates(name_or_path: str) -> list[str]:
    """Prompt templates, each with one `{}` for the class name."""
    templates = load_lines(name_or_path)
    bad = [t for t in templates if t.count("{}") != 1]
    if bad:
        raise ValueError(f"templates must contain exactly one '{{}}': {bad}")
    return templates


def load_class_names(name_or_path: str) -> list[str]:
    """Class names, one per line, in label order."""
    return load_lines(name_or_path, suffix="_classes")
