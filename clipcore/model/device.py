"""Which torch device a stage runs on."""

from __future__ import annotations

import torch


def resolve_device(name: str, setting: str = "device") -> torch.device:
    """`auto` picks CUDA when present, else the CPU; `cuda` without a CUDA device is an error naming `setting` (the
    params key, e.g. `train.device`)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"{setting}=cuda but no CUDA device is available")
    return torch.device(name)
