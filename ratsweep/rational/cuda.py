"""The `cuda` backend: kernels/rational.cu compiled by CuPy (NVRTC) on first use.

One RawModule per (degrees, version, storage dtype, device): its kernels and their occupancy are
cached in memory here, the compiled code on disk by CuPy. Tensors go in as raw pointers (works for
bf16 too, without CuPy's experimental bf16 dtype) and kernels run on torch's current stream, so they
order with torch's own work without synchronizing.

A call is host-bound for small tensors (an RL MLP's 256 x 256 activations take a few microseconds on
the GPU), so everything but the pointers is looked up once per (kernel, size, alignment, stream) in a
`Plan`: forward is one launch and backward is one launch (the kernel reduces the coefficient
gradients itself), with no fills, sums or stream context managers around them.
"""

from __future__ import annotations

import threading
from functools import cache
from typing import NamedTuple

import torch

from ._native import KernelError, compile_defines, degrees_of, dense, kernel_source, like

BLOCK = 256  # threads per block; the kernels' shared arrays are sized for it (-DRS_BLOCK)
FORWARD_LOADS = 2  # 16-byte loads each forward thread has in flight (-DRS_LOADS)
_STORAGE = {
    torch.float32: ("float", 4),
    torch.float64: ("double", 2),
    torch.float16: ("rs::half_t", 8),
    torch.bfloat16: ("rs::bf16_t", 8),
}
_WORKSPACE_HEADER = 16  # bytes before the partial sums: the backward kernels' completion counter


class Kernel(NamedTuple):
    function: object  # cupy.cuda.Function
    blocks_per_sm: int  # resident blocks of BLOCK threads per SM, from CUDA's occupancy calculator


class Plan(NamedTuple):
    function: object
    grid: tuple[int]
    stream: object  # cupy ExternalStream wrapping torch's stream
    device: int
    workspace_bytes: int  # backward: counter + [grid, coefficients] partial sums


_lock = threading.Lock()
_kernels: dict[tuple, dict[tuple[str, int], Kernel]] = {}
_plans: dict[tuple, Plan] = {}
_streams: dict[tuple[int, int], object] = {}
_workspaces: dict[tuple[int, int], torch.Tensor] = {}


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


# What the launch path asks of the device, kept apart so tests can run this module's logic on the
# kernels compiled for the CPU emulator (tests/emulated_cupy.py).
def _raw_stream(device: int) -> int:
    return torch._C._cuda_getCurrentRawStream(device)


@cache
def _sm_count(device: int) -> int:
    return torch.cuda.get_device_properties(device).multi_processor_count


def _current_device() -> int:
    return _cupy().cuda.runtime.getDevice()


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def grid_size(items: int, items_per_block: int, sm_count: int, blocks_per_sm: int) -> int:
    """Blocks for a launch: enough for every item in one pass, at most one wave of resident blocks
    (a partial second wave would leave most SMs idle while it runs); the kernels stride over the rest."""
    return max(1, min(_ceil_div(items, items_per_block), sm_count * max(blocks_per_sm, 1)))


def elements_per_load(dtype: torch.dtype, aligned: bool) -> int:
    """16 bytes' worth where every tensor of the launch starts on a 16-byte boundary, else one."""
    return _STORAGE[dtype][1] if aligned else 1


def compile_options(degrees, version: str) -> tuple[str, ...]:
    return ("-std=c++17", f"-DRS_BLOCK={BLOCK}", f"-DRS_LOADS={FORWARD_LOADS}", *compile_defines(degrees, version))


def name_expressions(dtype: torch.dtype) -> dict[tuple[str, int], str]:
    """The kernel instances one dtype needs, by (kind, elements per load): 16-byte loads and scalar."""
    storage, widest = _STORAGE[dtype]
    return {
        (kind, width): f"rational_{kind}<{storage}, {width}>"
        for kind in ("forward", "backward")
        for width in sorted({widest, 1})
    }


def _compile(degrees, version: str, dtype: torch.dtype, device: int) -> dict[tuple[str, int], Kernel]:
    """Every kernel of one (degrees, version, dtype) from one NVRTC compile, loaded on `device`."""
    cupy = _cupy()
    names = name_expressions(dtype)
    with cupy.cuda.Device(device):
        module = cupy.RawModule(
            code=kernel_source("rational.cu"), options=compile_options(degrees, version), name_expressions=list(names.values())
        )
        kernels = {}
        for name, expression in names.items():
            function = module.get_function(expression)
            blocks = cupy.cuda.driver.occupancyMaxActiveBlocksPerMultiprocessor(function.ptr, BLOCK, 0)
            kernels[name] = Kernel(function, blocks)
        return kernels


def _stream(device: int, raw: int):
    stream = _streams.get((device, raw))
    if stream is None:
        stream = _streams[(device, raw)] = _cupy().cuda.ExternalStream(raw, device)
    return stream


def _plan(kind: str, degrees, version: str, x: torch.Tensor, aligned: bool, coefficients: int) -> Plan:
    device = x.device.index
    raw = _raw_stream(device)
    key = (kind, degrees, version, x.dtype, device, x.numel(), aligned, raw)
    plan = _plans.get(key)
    if plan is None:
        with _lock:
            plan = _plans.get(key) or _make_plan(kind, degrees, version, x, aligned, coefficients, raw)
            _plans[key] = plan
    return plan


def _make_plan(kind, degrees, version, x, aligned, coefficients, raw) -> Plan:
    device = x.device.index
    compiled_key = (degrees, version, x.dtype, device)
    if compiled_key not in _kernels:
        _kernels[compiled_key] = _compile(degrees, version, x.dtype, device)
    vec = elements_per_load(x.dtype, aligned)
    kernel = _kernels[compiled_key][(kind, vec)]
    per_block = BLOCK * vec * (FORWARD_LOADS if kind == "forward" else 1)
    grid = grid_size(x.numel(), per_block, _sm_count(device), kernel.blocks_per_sm)
    partial_bytes = grid * coefficients * (8 if x.dtype == torch.float64 else 4)
    workspace = _WORKSPACE_HEADER + partial_bytes if kind == "backward" else 0
    return Plan(kernel.function, (grid,), _stream(device, raw), device, workspace)


def _workspace(plan: Plan, device: torch.device) -> tuple[int, int]:
    """(counter, partials) pointers in this stream's backward workspace, grown when a launch needs
    more. Launches on one stream run in order, so they can share it; the counter starts at zero and
    every backward launch leaves it at zero."""
    key = (plan.device, plan.stream.ptr)
    buffer = _workspaces.get(key)
    if buffer is None or buffer.numel() < plan.workspace_bytes:
        buffer = torch.zeros(max(plan.workspace_bytes, 4096), dtype=torch.uint8, device=device)
        _workspaces[key] = buffer
    counter = buffer.data_ptr()
    return counter, counter + _WORKSPACE_HEADER


def _launch(plan: Plan, args: tuple) -> None:
    if _current_device() == plan.device:
        plan.function(plan.grid, (BLOCK,), args, stream=plan.stream)
    else:  # a kernel runs in the context of the device it was loaded on
        with _cupy().cuda.Device(plan.device):
            plan.function(plan.grid, (BLOCK,), args, stream=plan.stream)


def _aligned(*tensors: torch.Tensor) -> bool:
    return all(t.data_ptr() % 16 == 0 for t in tensors)


def _prepare(x: torch.Tensor, numerator: torch.Tensor, denominator: torch.Tensor):
    dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    a = numerator.detach().to(device=x.device, dtype=dtype).contiguous()
    b = denominator.detach().to(device=x.device, dtype=dtype).contiguous()
    return dense(x), a, b


def _failed(e: Exception) -> KernelError:
    # CuPy raises compile, driver and runtime errors of several types
    return KernelError(f"CUDA rational kernel failed ({type(e).__name__}: {e})")


def forward(x: torch.Tensor, numerator, denominator, version: str) -> torch.Tensor:
    x, a, b = _prepare(x, numerator, denominator)
    y = torch.empty_like(x)
    if not x.numel():
        return y
    try:
        plan = _plan("forward", degrees_of(a, b, version), version, x, _aligned(x, y), a.numel() + b.numel())
        _launch(plan, (x.data_ptr(), y.data_ptr(), x.numel(), a.data_ptr(), b.data_ptr()))
    except Exception as e:
        raise _failed(e) from e
    return y


def backward(grad: torch.Tensor, x: torch.Tensor, numerator, denominator, version: str):
    x, a, b = _prepare(x, numerator, denominator)
    g = like(grad.to(x.dtype), x)
    dx = torch.empty_like(x)
    if not x.numel():
        return dx, torch.zeros_like(numerator), torch.zeros_like(denominator)
    # two outputs, not views of one: outputs of a custom op may not alias each other
    grad_num, grad_den = torch.empty_like(a), torch.empty_like(b)
    try:
        plan = _plan("backward", degrees_of(a, b, version), version, x, _aligned(x, g, dx), a.numel() + b.numel())
        counter, partials = _workspace(plan, x.device)
        args = (x.data_ptr(), g.data_ptr(), dx.data_ptr(), x.numel(), a.data_ptr(), b.data_ptr(),
                grad_num.data_ptr(), grad_den.data_ptr(), partials, counter)
        _launch(plan, args)
    except Exception as e:
        raise _failed(e) from e
    return dx, grad_num.to(numerator), grad_den.to(denominator)
