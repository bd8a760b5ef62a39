"""kernels/rational.cu run on the CPU under tests/cuda_emulator.h, against the float64 reference.

Covers what a GPU-less machine can: indexing, 16-byte vector packs and the scalar path, tails,
grid-stride loops over several blocks, the warp/shared-memory reduction, atomics and per-block
partials, the bf16 rounding, for every dtype. The real device (tests/test_rational_cuda.py) adds
timing, the PTX fp16 conversions, streams and CuPy."""

import ctypes
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
from naive import assert_coefficient_grads, coefficient_scales, naive_grads, random_coefficients

from ratsweep.rational._native import compile_defines, kernel_source

HERE = Path(__file__).resolve().parent
CXX = shutil.which("g++")
# the two inline-PTX fp16 conversions, and host equivalents with the same rounding (nearest even)
PTX_TO_HOST = {
    'asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(v.bits));': "_Float16 h; std::memcpy(&h, &v.bits, 2); f = float(h);",
    'asm("cvt.rn.f16.f32 %0, %1;" : "=h"(out.bits) : "f"(v));': "const _Float16 h = _Float16(v); std::memcpy(&out.bits, &h, 2);",
}
DTYPES = {torch.float32: 0, torch.float64: 1, torch.float16: 2, torch.bfloat16: 3}
TOL = {torch.float32: (1e-6, 1e-5), torch.float64: (1e-12, 1e-12), torch.float16: (2e-3, 1e-4), torch.bfloat16: (1.6e-2, 1e-4)}

pytestmark = pytest.mark.skipif(CXX is None, reason="needs g++ with C++20")


@pytest.fixture(scope="module", params=[((5, 4), "A"), ((3, 2), "B"), ((2, 3), "C"), ((8, 8), "C")], ids=str)
def kernels(request, tmp_path_factory):
    degrees, version = request.param
    source = kernel_source("rational.cu")
    for ptx, host in PTX_TO_HOST.items():
        assert ptx in source, "the kernel's fp16 conversions changed: update PTX_TO_HOST"
        source = source.replace(ptx, host)
    tmp = tmp_path_factory.mktemp("emulated")
    (tmp / "kernel.inc").write_text(source)
    lib = tmp / "kernels.so"
    cmd = [CXX, "-std=c++20", "-O1", "-pthread", "-shared", "-fPIC", "-w", f"-I{HERE}",
           f'-DRS_KERNEL_SOURCE="{tmp / "kernel.inc"}"', *compile_defines(degrees, version),
           str(HERE / "cuda_emulator_harness.cpp"), "-o", str(lib)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    dll = ctypes.CDLL(str(lib))
    p, i32, i64 = ctypes.c_void_p, ctypes.c_int, ctypes.c_longlong
    dll.emu_forward.argtypes = [i32, i32, i32, i32, p, p, i64, p, p]
    dll.emu_backward.argtypes = [i32, i32, i32, i32, p, p, p, i64, p, p, p, i64]
    return dll, degrees, version


def rel_err(got, want):
    return ((got.double() - want).norm() / want.norm().clamp_min(1e-30)).item()


@pytest.mark.parametrize("dtype", list(DTYPES), ids=str)
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
    code, width = DTYPES[dtype], 1 if vec == "scalar" else 0

    y = torch.full_like(x, float("nan"))  # poisoned: every element must be written
    dll.emu_forward(code, width, grid, block, x.data_ptr(), y.data_ptr(), n, a.data_ptr(), b.data_ptr())
    assert torch.isfinite(y).all()
    assert rel_err(y, want_y) < tol * scale

    count = a.numel() + b.numel()
    for partials, rows in ((0, 1), (1, grid)):
        dx = torch.full_like(x, float("nan"))
        grad = torch.full((rows, count), float("nan"), dtype=compute) if partials else torch.zeros(rows, count, dtype=compute)
        dll.emu_backward(code, width, grid, block, x.data_ptr(), dy.data_ptr(), dx.data_ptr(), n, a.data_ptr(), b.data_ptr(), grad.data_ptr(), partials)
        total = grad.sum(0)
        assert torch.isfinite(dx).all() and torch.isfinite(total).all()
        assert rel_err(dx, want_dx) < 2 * tol * scale
        assert_coefficient_grads(total[: a.numel()], want_da, scale_a, coef_tol * scale, "numerator")
        assert_coefficient_grads(total[a.numel() :], want_db, scale_b, coef_tol * scale, "denominator")


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
