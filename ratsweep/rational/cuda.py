"""The `cuda` backend: kernels/rational.cu compiled by CuPy (NVRTC) on first use.

One RawModule per (degrees, version, storage dtype, device): its kernels are cached in memory here,
the compiled code on disk by CuPy. Tensors go in as raw pointers (works for bf16 too, without CuPy's
experimental bf16 dtype) and kernels run on torch's current stream, so they order with torch's own
work without synchronizing.
"""

from __future__ import annotations

import threading
from functools import cache

import torch

from ._native import KernelError, compile_defines, degrees_of, dense, kernel_source, like

BLOCK = 256
# Enough resident blocks to cover every SM a few times; the kernels loop over the rest, so each block
# reduces many elements before its single atomic per coefficient.
BLOCKS_PER_SM = 4
_STORAGE = {
    torch.float32: ("float", 4),
    torch.float64: ("double", 2),
    torch.float16: ("rs::half_t", 8),
    torch.bfloat16: ("rs::bf16_t", 8),
}
_lock = threading.Lock()
_kernels: dict[tuple, object] = {}
_streams: dict[tuple[int, int], object] = {}


@cache
def _cupy():
    import cupy  # noqa: PLC0415  (optional dependency: ratsweep[cuda12] / ratsweep[cuda13])

    return cupy


def available() -> bool:
    """CuPy is importable. Whether its kernels launch is only known at the first launch."""
    try:
        _cupy()
    except ImportError:
        return False
    return True


def _names(storage: str, vec: int) -> dict[tuple[str, int], str]:
    return {
        (kind, width): f"rational_{kind}<{storage}, {width}>"
        for kind in ("forward", "backward")
        for width in sorted({vec, 1})
    }


def _kernel(kind: str, degrees, version: str, dtype: torch.dtype, vec: int, device: torch.device):
    key = (degrees, version, dtype, device.index)
    kernels = _kernels.get(key)
    if kernels is None:
        with _lock:
            kernels = _kernels.get(key) or _compile(degrees, version, dtype, device)
            _kernels[key] = kernels
    return kernels[(kind, vec)]


def _compile(degrees, version: str, dtype: torch.dtype, device: torch.device) -> dict:
    """Every kernel of one (degrees, version, dtype) from one NVRTC compile, loaded on `device`."""
    cupy = _cupy()
    storage, widest = _STORAGE[dtype]
    names = _names(storage, widest)
    with cupy.cuda.Device(device.index):
        module = cupy.RawModule(
            code=kernel_source("rational.cu"),
            options=("-std=c++17", *compile_defines(degrees, version)),
            name_expressions=list(names.values()),
        )
        return {name: module.get_function(expression) for name, expression in names.items()}


def _stream(device: torch.device):
    torch_stream = torch.cuda.current_stream(device)
    key = (device.index, torch_stream.cuda_stream)
    stream = _streams.get(key)
    if stream is None:
        cupy = _cupy()
        from_external = getattr(cupy.cuda.Stream, "from_external", None)
        if from_external is not None and hasattr(torch_stream, "__cuda_stream__"):
            stream = from_external(torch_stream)
        else:
            stream = cupy.cuda.ExternalStream(torch_stream.cuda_stream, device.index)
        _streams[key] = stream
    return stream


@cache
def _sm_count(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def _geometry(tensors: list[torch.Tensor]) -> tuple[int, int]:
    """(elements per vector load, blocks) for a launch over these equally shaped tensors."""
    x = tensors[0]
    vec = _STORAGE[x.dtype][1] if all(t.data_ptr() % 16 == 0 for t in tensors) else 1
    blocks = min(_ceil_div(_ceil_div(x.numel(), vec), BLOCK), _sm_count(x.device.index) * BLOCKS_PER_SM)
    return vec, max(blocks, 1)


def _launch(kind: str, tensors: list[torch.Tensor], coefs, version: str, geometry, extra=()) -> None:
    x = tensors[0]
    a, b = coefs
    vec, blocks = geometry
    try:
        kernel = _kernel(kind, degrees_of(a, b, version), version, x.dtype, vec, x.device)
        args = (*(t.data_ptr() for t in tensors), x.numel(), a.data_ptr(), b.data_ptr(), *extra)
        with _cupy().cuda.Device(x.device.index), _stream(x.device):
            kernel((blocks,), (BLOCK,), args)
    except Exception as e:  # CuPy raises compile, driver and runtime errors of several types
        raise KernelError(f"CUDA rational kernel failed ({type(e).__name__}: {e})") from e


def _prepare(x: torch.Tensor, numerator: torch.Tensor, denominator: torch.Tensor):
    dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    a = numerator.detach().to(device=x.device, dtype=dtype).contiguous()
    b = denominator.detach().to(device=x.device, dtype=dtype).contiguous()
    return dense(x), (a, b)


def forward(x: torch.Tensor, numerator, denominator, version: str) -> torch.Tensor:
    x, coefs = _prepare(x, numerator, denominator)
    y = torch.empty_like(x)
    if x.numel():
        _launch("forward", [x, y], coefs, version, _geometry([x, y]))
    return y


def backward(grad: torch.Tensor, x: torch.Tensor, numerator, denominator, version: str):
    x, (a, b) = _prepare(x, numerator, denominator)
    g = like(grad.to(x.dtype), x)
    dx = torch.empty_like(x)
    count = a.numel() + b.numel()
    if not x.numel():
        return dx, torch.zeros_like(numerator), torch.zeros_like(denominator)
    geometry = _geometry([x, g, dx])
    # Deterministic: per-block partials that torch sums in a fixed order. Else one atomic per
    # coefficient per block into a single zeroed row.
    deterministic = torch.are_deterministic_algorithms_enabled()
    rows = geometry[1] if deterministic else 1
    partial = torch.zeros(rows, count, dtype=a.dtype, device=x.device)
    _launch("backward", [x, g, dx], (a, b), version, geometry, extra=(partial.data_ptr(), int(deterministic)))
    # two separate sums: outputs of a custom op may not alias each other
    grad_num = partial[:, : a.numel()].sum(0).to(numerator)
    grad_den = partial[:, a.numel() :].sum(0).to(denominator)
    return dx, grad_num, grad_den
