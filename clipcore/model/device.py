"""Which torch device a stage runs on, and what hardware that is."""

from __future__ import annotations

import os
import platform
from pathlib import Path

import torch


def resolve_device(name: str, setting: str = "device") -> torch.device:
    """`auto` picks CUDA when present, else the CPU; `cuda` without a CUDA device is an error naming `setting` (the
    params key, e.g. `train.device`)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"{setting}=cuda but no CUDA device is available")
    return torch.device(name)


def cpu_name() -> str:
    """The CPU's model name (/proc/cpuinfo on Linux, else what `platform` knows) and its logical core count."""
    name = ""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        name = next((line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines()
                     if line.startswith("model name")), "")
    return f"{name or platform.processor() or platform.machine() or 'unknown CPU'}, {os.cpu_count()} cores"


def describe_hardware(device: str) -> str:
    """What `device` (a torch device name, `cuda`/`cuda:1`/`cpu`) is: the GPU's name and count, else the CPU's."""
    if device.startswith("cuda") and torch.cuda.is_available():
        index = int(device.split(":")[1]) if ":" in device else 0
        return f"{torch.cuda.get_device_name(index)} ({torch.cuda.device_count()} visible); CPU {cpu_name()}"
    return f"CPU {cpu_name()}"
