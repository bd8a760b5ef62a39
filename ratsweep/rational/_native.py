"""What the two compiled backends (cpu, cuda) share: kernel sources, tensor layout, errors."""

from __future__ import annotations

import os
import re
from functools import cache
from pathlib import Path

import torch

VERSION_CODES = {"A": 0, "B": 1, "C": 2}
_INCLUDE = re.compile(r'^#include "([^"]+)"\s*$', re.MULTILINE)


class KernelError(RuntimeError):
    """A compiled backend could not build or launch its kernel."""


# How a user gets going while a compiled backend is broken (part of every KernelError's message).
TORCH_PATH_HINT = "or run the unfused reference path with backend='torch' (rational.backend: torch in a search space)"


def find_kernels(package: Path) -> Path:
    """kernels/ inside an installed wheel's package, else the source checkout's top-level kernels/."""
    for candidate in (package / "kernels", package.parent / "kernels"):
        if (candidate / "rational_math.h").is_file():
            return candidate
    raise KernelError(f"kernel sources not found next to {package}")


@cache
def kernels_dir() -> Path:
    return find_kernels(Path(__file__).resolve().parent.parent)


@cache
def kernel_source(name: str) -> str:
    """The source with its local #include "..." lines expanded, so the text alone identifies a build."""
    directory = kernels_dir()
    text = (directory / name).read_text()
    return _INCLUDE.sub(lambda m: (directory / m.group(1)).read_text(), text)


def cache_dir() -> Path:
    root = os.environ.get("RATSWEEP_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "ratsweep"
    )
    return Path(root)


def degrees_of(numerator: torch.Tensor, denominator: torch.Tensor, version: str) -> tuple[int, int]:
    """(m, n) from the coefficient counts; version C stores b_0 too."""
    return numerator.numel() - 1, denominator.numel() - (1 if version == "C" else 0)


def compile_defines(degrees: tuple[int, int], version: str) -> tuple[str, ...]:
    m, n = degrees
    return (f"-DRS_NUM_DEGREE={m}", f"-DRS_DEN_DEGREE={n}", f"-DRS_VERSION={VERSION_CODES[version]}")


def dense(t: torch.Tensor) -> torch.Tensor:
    """t itself when its elements fill one block of memory in a layout empty_like reproduces."""
    if t.is_contiguous():
        return t
    if t.dim() == 4 and t.is_contiguous(memory_format=torch.channels_last):
        return t
    if t.dim() == 5 and t.is_contiguous(memory_format=torch.channels_last_3d):
        return t
    return t.contiguous()


def like(t: torch.Tensor, layout_of: torch.Tensor) -> torch.Tensor:
    """t with the strides of layout_of (a dense tensor of the same shape), copying only if needed."""
    if t.stride() == layout_of.stride():
        return t
    return torch.empty_like(layout_of, dtype=t.dtype).copy_(t)
