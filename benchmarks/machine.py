"""The machine and software a benchmark ran on, for the header of its results file."""

from __future__ import annotations

import os
import platform

import torch


def device_name(device: torch.device | None = None) -> str:
    """The GPU's name, or the CPU's kind and core count."""
    if device is None:
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU: {platform.processor() or platform.machine()}, {os.cpu_count()} cores"


def versions() -> str:
    """torch (and its CUDA), CuPy if installed, Python."""
    try:
        import cupy  # noqa: PLC0415

        cupy_version = cupy.__version__
    except ImportError:
        cupy_version = "none"
    return f"torch {torch.__version__} (CUDA {torch.version.cuda or 'none'}), cupy {cupy_version}, python {platform.python_version()}"
