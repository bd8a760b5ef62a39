"""The `cuda` backend: kernels/rational.cu compiled by CuPy (NVRTC) on first use.

One RawModule per (degrees, version, storage dtype, device): its kernels and their occupancy are
cached in memory here, the compiled code on disk by CuPy. Tensors go in as raw pointers (Python ints,
which CuPy passes as 64-bit values; works for bf16 too, without CuPy's experimental bf16 dtype) and
kernels run on torch's current stream, so they order with torch's own work without synchronizing.

A call is host-bound for small tensors (an RL MLP's 256 x 256 activations take a few microseconds on
the GPU), so everything but the pointers and the grid is looked up once per (kernel, alignment,
stream) in a `Plan`: forward is one launch and backward is one launch (the kernel reduces the
coefficient gradients itself), with no fills, sums or stream context managers around them.

Backward's workspace is a completion counter and a [grid, coefficients] table of per-block sums (see
rational.cu). The table comes from torch's caching allocator at each call, so it lives exactly as
long as torch's stream-ordered and CUDA-graph memory rules say (under capture: as long as the graph).
The counter must read 0 before a launch, and the kernel leaves it at 0: eager launches use one counter
per stream (launches on a stream run one at a time), while a launch captured into a CUDA graph gets a
counter of its own, zeroed inside the graph, so two graphs, or a graph and eager work, never share one.
"""

from __future__ import annotations

import threading
from functools import cache
from typing import NamedTuple

import torch

from ._native import TORCH_PATH_HINT, KernelError, compile_defines, degrees_of, dense, kernel_source, like

BLOCK = 256  # threads per block; the kernels' shared arrays are sized for it (-DRS_BLOCK)
FORWARD_LOADS = 2  # 16-byte loads each forward thread has in flight (-DRS_LOADS)
_STORAGE = {
    torch.float32: ("float", 4),
    torch.float64: ("double", 2),
    torch.float16: ("rs::half_t", 8),
    torch.bfloat16: ("rs::bf16_t", 8),
}
COUNTER_BYTES = 16  # a backward launch's completion counter (4 bytes, padded so the sums stay aligned)


class Kernel(NamedTuple):
    function: object  # cupy.cuda.Function (a RawKernel's .kernel: launched directly, one Python call less)
    blocks_per_sm: int  # resident blocks of BLOCK threads per SM, from CUDA's occupancy calculator


class Plan(NamedTuple):
    function: object
    items_per_block: int  # elements one block covers in one pass
    wave: int  # blocks resident at once on the whole device: the largest grid worth launching
    stream: object  # a cupy Stream wrapping torch's current stream
    device: int
    sum_bytes: int  # backward: bytes of one block's row of coefficient-gradient sums

    def grid(self, n: int) -> int:
        """Enough blocks for every element in one pass, at most one wave (a partial second wave would
        leave most SMs idle while it runs); the kernels stride over the rest."""
        return max(1, min(-(-n // self.items_per_block), self.wave))


_lock = threading.Lock()
_kernels: dict[tuple, dict[tuple[str, int], Kernel]] = {}
_plans: dict[tuple, Plan] = {}
_streams: dict[tuple[int, int], object] = {}
_counters: dict[tuple[int, int], torch.Tensor] = {}


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


def version() -> str:
    return _cupy().__version__


# What the launch path asks of torch about the device, kept apart so tests can run this module's
# logic on CPU tensors, with the kernels compiled for the CPU emulator (tests/emulated_cupy.py).
def _device_index(x: torch.Tensor) -> int:
    return x.device.index


def _raw_stream(device: int) -> int:
    return torch._C._cuda_getCurrentRawStream(device)


@cache
def _sm_count(device: int) -> int:
    return torch.cuda.get_device_properties(device).multi_processor_count


def _current_device() -> int:
    return _cupy().cuda.runtime.getDevice()


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


def _function(raw_kernel):
    """The cupy.cuda.Function behind a RawKernel (compiled and loaded on the current device)."""
    return raw_kernel.kernel


def _compile(degrees, version: str, dtype: torch.dtype, device: int) -> dict[tuple[str, int], Kernel]:
    """Every kernel of one (degrees, version, dtype) from one NVRTC compile, loaded on `device`."""
    cupy = _cupy()
    names = name_expressions(dtype)
    with cupy.cuda.Device(device):
        module = cupy.RawModule(
            code=kernel_source("rational.cu"), options=compile_options(degrees, version), name_expressions=tuple(names.values())
        )
        kernels = {}
        for name, expression in names.items():
            function = _function(module.get_function(expression))
            blocks = cupy.cuda.driver.occupancyMaxActiveBlocksPerMultiprocessor(function.ptr, BLOCK, 0)
            kernels[name] = Kernel(function, blocks)
        return kernels


class _TorchStream:
    """A torch stream's handle, as the CUDA stream protocol presents it to CuPy."""

    __slots__ = ("ptr",)

    def __init__(self, ptr: int):
        self.ptr = ptr

    def __cuda_stream__(self) -> tuple[int, int]:
        return 0, self.ptr


def _stream(device: int, raw: int):
    stream = _streams.get((device, raw))
    if stream is None:
        stream = _streams[(device, raw)] = _cupy().cuda.Stream.from_external(_TorchStream(raw))
    return stream


def _plan(kind: str, degrees, version: str, x: torch.Tensor, aligned: bool, coefficients: int) -> Plan:
    device = _device_index(x)
    raw = _raw_stream(device)
    key = (kind, degrees, version, x.dtype, device, aligned, raw)
    plan = _plans.get(key)
    if plan is None:
        with _lock:
            plan = _plans.get(key) or _make_plan(kind, degrees, version, x.dtype, device, aligned, coefficients, raw)
            _plans[key] = plan
    return plan


def _make_plan(kind, degrees, version, dtype, device, aligned, coefficients, raw) -> Plan:
    compiled_key = (degrees, version, dtype, device)
    if compiled_key not in _kernels:
        _kernels[compiled_key] = _compile(degrees, version, dtype, device)
    vec = elements_per_load(dtype, aligned)
    kernel = _kernels[compiled_key][(kind, vec)]
    per_block = BLOCK * vec * (FORWARD_LOADS if kind == "forward" else 1)
    wave = _sm_count(device) * max(kernel.blocks_per_sm, 1)
    sum_bytes = coefficients * (8 if dtype == torch.float64 else 4)
    return Plan(kernel.function, per_block, wave, _stream(device, raw), device, sum_bytes)


def _workspace(plan: Plan, grid: int, device: torch.device) -> tuple[torch.Tensor, int, int]:
    """Backward's workspace for one launch: (the tensor to keep alive until the launch is queued,
    the counter's address, the sums' address)."""
    if _cupy().cuda.runtime.streamIsCapturing(plan.stream.ptr):  # the launch's own stream, on its device
        # allocated in the graph's private pool (alive while the graph is) and zeroed at every replay
        workspace = torch.zeros(COUNTER_BYTES + grid * plan.sum_bytes, dtype=torch.uint8, device=device)
        return workspace, workspace.data_ptr(), workspace.data_ptr() + COUNTER_BYTES
    key = (plan.device, plan.stream.ptr)
    counter = _counters.get(key)
    if counter is None:
        counter = _counters[key] = torch.zeros(COUNTER_BYTES, dtype=torch.uint8, device=device)
    sums = torch.empty(grid * plan.sum_bytes, dtype=torch.uint8, device=device)
    return sums, counter.data_ptr(), sums.data_ptr()


def _launch(plan: Plan, grid: int, args: tuple) -> None:
    if _current_device() == plan.device:
        plan.function((grid,), (BLOCK,), args, stream=plan.stream)
    else:  # a kernel runs in the context of the device it was loaded on
        with _cupy().cuda.Device(plan.device):
            plan.function((grid,), (BLOCK,), args, stream=plan.stream)


def _aligned(*tensors: torch.Tensor) -> bool:
    return all(t.data_ptr() % 16 == 0 for t in tensors)


def _prepare(x: torch.Tensor, numerator: torch.Tensor, denominator: torch.Tensor):
    dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    a = numerator.detach().to(device=x.device, dtype=dtype).contiguous()
    b = denominator.detach().to(device=x.device, dtype=dtype).contiguous()
    return dense(x), a, b


def _cuda_failed(e: Exception) -> bool:
    """CUDA itself failed (compiling, loading, launching) or CuPy is missing, as opposed to a bug here,
    which propagates as it is."""
    if isinstance(e, ImportError):
        return True
    cuda = _cupy().cuda
    return isinstance(e, (cuda.runtime.CUDARuntimeError, cuda.driver.CUDADriverError, cuda.compiler.CompileException,
                          cuda.nvrtc.NVRTCError))


def _failed(e: Exception) -> KernelError:
    first = str(e).strip().splitlines()[0] if str(e).strip() else ""
    return KernelError(f"the CUDA rational kernel failed ({type(e).__name__}: {first}); fix the CUDA/CuPy install "
                       f"(pip install 'ratsweep[cuda12]' or 'ratsweep[cuda13]') {TORCH_PATH_HINT}")


def forward(x: torch.Tensor, numerator, denominator, version: str) -> torch.Tensor:
    x, a, b = _prepare(x, numerator, denominator)
    y = torch.empty_like(x)
    n = x.numel()
    if not n:
        return y
    try:
        plan = _plan("forward", degrees_of(a, b, version), version, x, _aligned(x, y), a.numel() + b.numel())
        _launch(plan, plan.grid(n), (x.data_ptr(), y.data_ptr(), n, a.data_ptr(), b.data_ptr()))
    except Exception as e:
        if not _cuda_failed(e):
            raise
        raise _failed(e) from e
    return y


def backward(grad: torch.Tensor, x: torch.Tensor, numerator, denominator, version: str):
    x, a, b = _prepare(x, numerator, denominator)
    g = like(grad.to(x.dtype), x)
    dx = torch.empty_like(x)
    n = x.numel()
    if not n:
        return dx, torch.zeros_like(numerator), torch.zeros_like(denominator)
    # two outputs, not views of one: outputs of a custom op may not alias each other
    grad_num, grad_den = torch.empty_like(a), torch.empty_like(b)
    try:
        plan = _plan("backward", degrees_of(a, b, version), version, x, _aligned(x, g, dx), a.numel() + b.numel())
        grid = plan.grid(n)
        keep_alive, counter, sums = _workspace(plan, grid, x.device)  # freed once queued: reused in stream order
        args = (x.data_ptr(), g.data_ptr(), dx.data_ptr(), n, a.data_ptr(), b.data_ptr(),
                grad_num.data_ptr(), grad_den.data_ptr(), sums, counter)
        _launch(plan, grid, args)
    except Exception as e:
        if not _cuda_failed(e):
            raise
        raise _failed(e) from e
    return dx, grad_num.to(numerator), grad_den.to(denominator)
