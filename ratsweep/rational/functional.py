"""`rational(x, numerator, denominator)`: one differentiable op over three backends.

Autograd saves only x and the coefficients for backward. In eager mode the op is a plain
autograd.Function (the least per-call overhead, which matters for small activations such as the RL
MLPs'); under torch.compile it is the same computation registered with torch.library, with a fake
implementation, so compiled models call it without a graph break. `backend`:
  torch  plain torch ops (reference.py), any device
  cpu    fused, vectorized C++ kernels (cpu.py)
  cuda   fused CUDA kernels through CuPy (cuda.py)
  auto   cuda for CUDA tensors, cpu for CPU tensors; where that backend is absent (no CuPy, no
         C++ compiler) it warns once and uses the torch path. A backend that is there but fails
         (a compile or launch error) is an error naming the cause, never a silent fallback: a sweep
         must not time or train on a different kernel than it reports.
`backends_used()` says which backends actually ran (ratsweep tags every run with it).
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import torch

from . import cpu, cuda, reference
from ._native import VERSION_CODES, dense, like

BACKENDS = ("auto", "torch", "cpu", "cuda")
_COMPILED = {"cpu": cpu, "cuda": cuda}
_INSTALL_HINT = {
    "cuda": "install CuPy for your CUDA version: pip install 'ratsweep[cuda12]' or 'ratsweep[cuda13]'",
    "cpu": "install a C++ compiler (g++) or set CXX",
}
_absent: dict[str, str] = {}  # backend -> why it is missing here (warned about once)


_INTERNAL = (str(Path(__file__).parent.parent), str(Path(torch.__file__).parent))  # ratsweep's and torch's frames


def _user_stacklevel() -> int:
    """The stacklevel of the first frame outside ratsweep and torch (the user's model call), for
    warnings.warn called from this module's caller's caller; how deep that is depends on the path in."""
    frame, level = sys._getframe(2), 2
    while frame is not None and frame.f_code.co_filename.startswith(_INTERNAL):
        frame, level = frame.f_back, level + 1
    return level


def _warn_absent(name: str, reason: str) -> None:
    if name not in _absent:
        _absent[name] = reason
        warnings.warn(
            f"ratsweep: the {name} rational kernels are unavailable ({reason}); "
            f"falling back to the slower torch path. To fix: {_INSTALL_HINT[name]}.",
            RuntimeWarning,
            stacklevel=_user_stacklevel(),
        )


def resolve_backend(backend: str, device: torch.device) -> str:
    """The backend that runs for a tensor on `device`: `backend` itself, or for auto the compiled
    backend of the device type, unless it is absent here (then torch, with a one-time warning)."""
    if backend not in BACKENDS:
        raise ValueError(f"backend: expected one of {', '.join(BACKENDS)}, got {backend!r}")
    if backend != "auto":
        if backend in _COMPILED and device.type != backend:
            raise ValueError(f"backend={backend!r} cannot run on a {device.type} tensor")
        return backend
    name = device.type if device.type in _COMPILED else "torch"
    if name == "torch" or name in _absent:
        return "torch"
    if not _COMPILED[name].available():
        _warn_absent(name, "CuPy is not installed" if name == "cuda" else "no C++ compiler found")
        return "torch"
    return name


_used: set[str] = set()


def backends_used() -> tuple[str, ...]:
    """The backends that ran a forward or backward since the last reset_backends_used()."""
    return tuple(sorted(_used))


def reset_backends_used() -> None:
    _used.clear()


# (backend, device type) -> the backend that runs: decided at the first call, as the kernels it
# loads then are (a per-call resolution cost microseconds, as much as a small activation's kernel)
_resolved: dict[tuple[str, str], str] = {}


def _call(method: str, backend: str, device: torch.device, *args):
    key = (backend, device.type)
    name = _resolved.get(key)
    if name is None:
        name = _resolved[key] = resolve_backend(backend, device)
    result = getattr(_COMPILED.get(name, reference), method)(*args)
    _used.add(name)
    return result


# Every backend sees x (and grad) in the layout dense() gives, so outputs have the layout the fake
# implementations promise torch.compile.
def _run_forward(x, numerator, denominator, version, backend):
    return _call("forward", backend, x.device, dense(x), numerator, denominator, version)


def _run_backward(grad, x, numerator, denominator, version, backend):
    x = dense(x)
    return _call("backward", backend, x.device, like(grad, x), x, numerator, denominator, version)


@torch.library.custom_op("ratsweep::rational", mutates_args=())
def _rational(x: torch.Tensor, numerator: torch.Tensor, denominator: torch.Tensor, version: str, backend: str) -> torch.Tensor:
    return _run_forward(x, numerator, denominator, version, backend)


@_rational.register_fake
def _rational_fake(x, numerator, denominator, version, backend):
    return torch.empty_like(dense(x))


@torch.library.custom_op("ratsweep::rational_backward", mutates_args=())
def _rational_backward(
    grad: torch.Tensor, x: torch.Tensor, numerator: torch.Tensor, denominator: torch.Tensor, version: str, backend: str
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return _run_backward(grad, x, numerator, denominator, version, backend)


@_rational_backward.register_fake
def _rational_backward_fake(grad, x, numerator, denominator, version, backend):
    return torch.empty_like(dense(x)), torch.empty_like(numerator), torch.empty_like(denominator)


def _setup_context(ctx, inputs, output):
    x, numerator, denominator, version, backend = inputs
    ctx.save_for_backward(x, numerator, denominator)
    ctx.version, ctx.backend = version, backend


def _backward(ctx, grad):
    x, numerator, denominator = ctx.saved_tensors
    dx, dnum, dden = _rational_backward(grad, x, numerator, denominator, ctx.version, ctx.backend)
    return dx, dnum, dden, None, None


_rational.register_autograd(_backward, setup_context=_setup_context)


class _RationalFunction(torch.autograd.Function):
    """The eager-mode twin of the registered op: same dispatch, same saved tensors."""

    @staticmethod
    def forward(ctx, x, numerator, denominator, version, backend):
        ctx.save_for_backward(x, numerator, denominator)
        ctx.version, ctx.backend = version, backend
        return _run_forward(x, numerator, denominator, version, backend)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        x, numerator, denominator = ctx.saved_tensors
        dx, dnum, dden = _run_backward(grad, x, numerator, denominator, ctx.version, ctx.backend)
        return dx, dnum, dden, None, None


def rational(
    x: torch.Tensor, numerator: torch.Tensor, denominator: torch.Tensor, version: str = "A", backend: str = "auto"
) -> torch.Tensor:
    """F(x) = P(x)/Q(x) elementwise; numerator a_0..a_m, denominator b_1..b_n (b_0..b_n for C).

    Version D is version B with noisy coefficients, which `Rational` applies; here it is B.
    """
    version = "B" if version == "D" else version
    if version not in VERSION_CODES:
        raise ValueError(f"version: expected one of A, B, C, D, got {version!r}")
    if x.dtype not in (torch.float16, torch.bfloat16, torch.float32, torch.float64):
        raise TypeError(f"x: expected a float16, bfloat16, float32 or float64 tensor, got {x.dtype}")
    if torch.compiler.is_compiling():
        return _rational(x, numerator, denominator, version, backend)
    return _RationalFunction.apply(x, numerator, denominator, version, backend)
