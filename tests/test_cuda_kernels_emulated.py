"""kernels/rational.cu run on the CPU under tests/cuda_emulator.h, against the float64 reference.

Covers what a GPU-less machine can: indexing, 16-byte vector packs and the scalar path, tails,
grid-stride loops over several concurrently running blocks, the warp/shared-memory reduction, the
last-block reduction across blocks, the bf16 rounding, for every dtype; ThreadSanitizer checks the
cross-block and in-block synchronization (mutants prove it would see a missing atomic or barrier);
and ratsweep.rational.cuda itself runs on the emulator through tests/emulated_cupy.py. The real
device (tests/test_rational_cuda.py) adds timing, the PTX fp16 conversions, streams and CuPy."""

import os
import subprocess

import pytest
import torch
from emulated_cupy import BLOCKS_PER_SM, EmulatedCupy
from emulator import CXX, DTYPE_CODES, build, load
from naive import assert_coefficient_grads, coefficient_scales, naive_grads, random_coefficients

from ratsweep.rational import cuda
from ratsweep.rational._native import compile_defines, kernel_source

TOL = {torch.float32: (1e-6, 1e-5), torch.float64: (1e-12, 1e-12), torch.float16: (2e-3, 1e-4), torch.bfloat16: (1.6e-2, 1e-4)}

pytestmark = pytest.mark.skipif(CXX is None, reason="needs g++ with C++20")


@pytest.fixture(scope="module", params=[((5, 4), "A"), ((3, 2), "B"), ((2, 3), "C"), ((8, 8), "C")], ids=str)
def kernels(request, tmp_path_factory):
    degrees, version = request.param
    library = build(kernel_source("rational.cu"), compile_defines(degrees, version), tmp_path_factory.mktemp("emulated"))
    return load(library), degrees, version


def rel_err(got, want):
    return ((got.double() - want).norm() / want.norm().clamp_min(1e-30)).item()


@pytest.mark.parametrize("dtype", list(DTYPE_CODES), ids=str)
@pytest.mark.parametrize("vec", ["wide", "scalar"])
@pytest.mark.parametrize("n,grid,block", [(1, 1, 32), (7, 2, 64), (1000, 3, 64), (4099, 2, 256)])
def test_emulated_kernels_match_reference(kernels, dtype, vec, n, grid, block):
    dll, degrees, version = kernels
    g = torch.Generator().manual_seed(n)
    compute = torch.float64 if dtype == torch.float64 else torch.float32
    a, b = random_coefficients(degrees, version, g, dtype=compute)
    x = (torch.randn(n, generator=g) * 1.5).clamp(-3, 3).to(dtype)
    dy = torch.randn(n, generator=g).to(dtype)
    want_y, want_dx, want_da, want_db = naive_grads(x, a, b, version, dy)
    scale_a, scale_b = coefficient_scales(x, a, b, version, dy)
    tol, coef_tol = TOL[dtype]
    scale = 10 if max(degrees) > 5 else 1  # degree-8 random polynomials cancel (see test_rational_numerics)
    code, width = DTYPE_CODES[dtype], 1 if vec == "scalar" else 0

    y = torch.full_like(x, float("nan"))  # poisoned: every element must be written
    dll.emu_forward(code, width, grid, block, x.data_ptr(), y.data_ptr(), n, a.data_ptr(), b.data_ptr())
    assert torch.isfinite(y).all()
    assert rel_err(y, want_y) < tol * scale

    count = a.numel() + b.numel()
    dx = torch.full_like(x, float("nan"))
    grad_num, grad_den = torch.full_like(a, float("nan")), torch.full_like(b, float("nan"))
    partials = torch.full((grid, count), float("nan"), dtype=compute)  # workspace: its contents do not matter
    done = torch.zeros(1, dtype=torch.int32)
    dll.emu_backward(code, width, grid, block, x.data_ptr(), dy.data_ptr(), dx.data_ptr(), n, a.data_ptr(), b.data_ptr(),
                     grad_num.data_ptr(), grad_den.data_ptr(), partials.data_ptr(), done.data_ptr())
    assert done.item() == 0  # left as found, for the next launch
    assert torch.isfinite(dx).all() and torch.isfinite(grad_num).all() and torch.isfinite(grad_den).all()
    assert rel_err(dx, want_dx) < 2 * tol * scale
    assert_coefficient_grads(grad_num, want_da, scale_a, coef_tol * scale, "numerator")
    assert_coefficient_grads(grad_den, want_db, scale_b, coef_tol * scale, "denominator")


def test_bf16_store_rounds_to_nearest_even(kernels):
    """The kernel's bf16 output equals torch's rounding of the same fp32 values (identity-like fit)."""
    dll, degrees, version = kernels
    if (degrees, version) != ((5, 4), "A"):
        pytest.skip("one configuration suffices")
    a = torch.tensor([0.0, 1.0, 0, 0, 0, 0])  # F(x) = x / (1 + sum |b_k| |x|^k) with b = 0: identity
    b = torch.zeros(4)
    x32 = torch.randn(4096, generator=torch.Generator().manual_seed(0)) * 3
    x = x32.to(torch.bfloat16)
    y = torch.empty_like(x)
    dll.emu_forward(3, 0, 2, 64, x.data_ptr(), y.data_ptr(), x.numel(), a.data_ptr(), b.data_ptr())
    assert torch.equal(y, x)
    # and values that need rounding: F(x) = x / 3 is not representable, round-to-nearest-even expected
    a3 = torch.tensor([0.0, 1.0 / 3.0, 0, 0, 0, 0])
    dll.emu_forward(3, 0, 2, 64, x.data_ptr(), y.data_ptr(), x.numel(), a3.data_ptr(), b.data_ptr())
    assert torch.equal(y, (x.float() * a3[1]).to(torch.bfloat16))


# Mutants of the kernel that a GPU would run wrongly only now and then. ThreadSanitizer sees each as a
# data race between the emulated threads, deterministically, while the kernel as written is race-free.
PLAIN_INCREMENT = (
    "inline unsigned int rs_plain_increment(unsigned int* a, unsigned int limit) {"
    " const unsigned int old = *a; *a = old >= limit ? 0u : old + 1u; return old; }\n"
)
MUTANTS = {
    "as written": lambda s: s,
    "the completion count without an atomic": lambda s: PLAIN_INCREMENT + s.replace("atomicInc(done,", "rs_plain_increment(done,"),
    "no barrier before a block's warp sums are read": lambda s: s.replace("__syncthreads();", "", 1),
    "no warp sync before the count says the row is written": lambda s: s.replace("__syncwarp();", ""),
}


@pytest.mark.parametrize("mutant", list(MUTANTS))
def test_thread_sanitizer_sees_missing_synchronization(mutant, tmp_path):
    source = kernel_source("rational.cu")
    mutated = MUTANTS[mutant](source)
    assert mutated != source or mutant == "as written"
    program = build(mutated, compile_defines((5, 4), "A"), tmp_path, program=True, sanitize=True)
    env = {**os.environ, "TSAN_OPTIONS": "halt_on_error=1 exitcode=66"}
    # ASLR off: ThreadSanitizer cannot map its shadow memory under some kernels' randomized layouts
    proc = subprocess.run(["setarch", "-R", str(program)], capture_output=True, text=True, env=env, timeout=300)
    if mutant == "as written":
        assert proc.returncode == 0 and "ThreadSanitizer" not in proc.stderr, proc.stderr[-3000:]
    else:
        assert proc.returncode == 66 and "WARNING: ThreadSanitizer: data race" in proc.stderr, proc.stderr[-3000:]


SMS = 2  # streaming multiprocessors of the emulated device


@pytest.fixture
def emulated_cuda(monkeypatch):
    """ratsweep.rational.cuda with CuPy replaced by the emulator, on CPU tensors."""
    emulated = EmulatedCupy()
    monkeypatch.setattr(cuda, "_cupy", lambda: emulated)
    monkeypatch.setattr(cuda, "_raw_stream", lambda device: 7)
    monkeypatch.setattr(cuda, "_sm_count", lambda device: SMS)
    for cache in ("_kernels", "_plans", "_streams", "_workspaces"):
        monkeypatch.setattr(cuda, cache, {})
    return emulated


@pytest.mark.parametrize("dtype", list(DTYPE_CODES), ids=str)
@pytest.mark.parametrize("aligned", [True, False], ids=["aligned", "misaligned"])
@pytest.mark.parametrize("n", [7, 40_000])
def test_the_cuda_module_on_the_emulator(emulated_cuda, dtype, aligned, n):
    """cuda.forward / cuda.backward as they run on a GPU: one launch each, one wave of resident
    blocks at most, the 16-byte kernels only for aligned tensors, results equal to the reference."""
    degrees, version = (5, 4), "A"
    g = torch.Generator().manual_seed(n)
    compute = torch.float64 if dtype == torch.float64 else torch.float32
    a, b = random_coefficients(degrees, version, g, dtype=compute)
    base = (torch.randn(n + 1, generator=g) * 1.5).clamp(-3, 3).to(dtype)
    x = base[:n] if aligned else base[1:]  # one element in: off the 16-byte boundary
    dy = torch.randn(n, generator=g).to(dtype)
    want_y, want_dx, want_da, want_db = naive_grads(x, a, b, version, dy)
    scale_a, scale_b = coefficient_scales(x, a, b, version, dy)
    tol, coef_tol = TOL[dtype]

    y = cuda.forward(x, a, b, version)
    dx, grad_num, grad_den = cuda.backward(dy if aligned else dy.clone(), x, a, b, version)
    assert rel_err(y, want_y) < tol and rel_err(dx, want_dx) < 2 * tol
    assert_coefficient_grads(grad_num, want_da, scale_a, coef_tol, "numerator")
    assert_coefficient_grads(grad_den, want_db, scale_b, coef_tol, "denominator")

    vec = (16 // x.element_size()) if aligned else 1
    wave = SMS * BLOCKS_PER_SM
    assert [(kind, v, grid) for kind, v, grid, _, _ in emulated_cuda.launches] == [
        ("forward", vec, (min(-(-n // (cuda.BLOCK * vec * cuda.FORWARD_LOADS)), wave),)),
        ("backward", vec, (min(-(-n // (cuda.BLOCK * vec)), wave),)),
    ]
    assert all(block == (cuda.BLOCK,) and stream == 7 for _, _, _, block, stream in emulated_cuda.launches)


def test_a_backward_call_is_one_launch_and_nothing_else(emulated_cuda):
    """Once planned, backward allocates its outputs and launches one kernel: no zero-fill, no sums, no
    copies (each would be another launch on a GPU), no new compile or plan; the workspace's counter is
    back at zero, and the gradients are bitwise reproducible."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Ops(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.names = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.names.append(str(func))
            return func(*args, **(kwargs or {}))

    a, b = random_coefficients((5, 4), "A", torch.Generator().manual_seed(0), dtype=torch.float32)
    x, dy = torch.randn(10_000), torch.randn(10_000)
    first = cuda.backward(dy, x, a, b, "A")
    plans, launches = len(cuda._plans), len(emulated_cuda.launches)
    with Ops() as ops:
        second = cuda.backward(dy, x, a, b, "A")
    assert set(ops.names) <= {"aten.detach.default", "aten.empty_like.default"}, ops.names
    assert len(emulated_cuda.launches) == launches + 1 and len(cuda._plans) == plans
    assert len(emulated_cuda.compiles) == 1
    (workspace,) = cuda._workspaces.values()
    assert workspace[:4].view(torch.int32).item() == 0
    for u, v in zip(first, second):
        assert torch.equal(u, v)


def test_each_stream_gets_its_own_plan_and_workspace(emulated_cuda, monkeypatch):
    a, b = random_coefficients((5, 4), "A", torch.Generator().manual_seed(0), dtype=torch.float32)
    x, dy = torch.randn(5000), torch.randn(5000)
    on_first = cuda.backward(dy, x, a, b, "A")
    monkeypatch.setattr(cuda, "_raw_stream", lambda device: 9)
    on_second = cuda.backward(dy, x, a, b, "A")
    assert [launch[-1] for launch in emulated_cuda.launches] == [7, 9]
    assert sorted(stream for _, stream in cuda._workspaces) == [7, 9]
    for u, v in zip(on_first, on_second):
        assert torch.equal(u, v)


def test_the_workspace_grows_for_a_larger_grid(emulated_cuda, monkeypatch):
    a, b = random_coefficients((8, 8), "C", torch.Generator().manual_seed(0), dtype=torch.float64)
    cuda.backward(torch.randn(300, dtype=torch.float64), torch.randn(300, dtype=torch.float64), a, b, "C")
    monkeypatch.setattr(cuda, "_sm_count", lambda device: 15)  # 30 blocks, whose partials need more than 4 KiB
    x, dy = (torch.randn(15 * BLOCKS_PER_SM * cuda.BLOCK * 2, dtype=torch.float64) for _ in range(2))
    want_y, want_dx, want_da, want_db = naive_grads(x, a, b, "C", dy)
    dx, grad_num, grad_den = cuda.backward(dy, x, a, b, "C")
    grid = emulated_cuda.launches[-1][2][0]
    (workspace,) = cuda._workspaces.values()
    assert grid == 15 * BLOCKS_PER_SM and workspace.numel() >= 16 + grid * (a.numel() + b.numel()) * 8 > 4096
    assert rel_err(dx, want_dx) < 1e-10 and rel_err(grad_num, want_da) < 1e-10 and rel_err(grad_den, want_db) < 1e-10
