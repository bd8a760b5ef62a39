"""kernels/rational.cu run on the CPU under tests/cuda_emulator.h, against the float64 reference.

Covers what a GPU-less machine can: indexing, 16-byte vector packs and the scalar path, tails,
grid-stride loops over several concurrently running blocks, the warp/shared-memory reduction, the
last-block reduction across blocks, the bf16 rounding, for every dtype; ThreadSanitizer checks the
cross-block and in-block synchronization (mutants prove it would see a missing atomic or barrier);
and ratsweep.rational.cuda itself runs on the emulator through tests/emulated_cupy.py. The real
device (tests/test_rational_cuda.py) adds timing, the PTX fp16 conversions, streams and CuPy."""

import os
import re
import subprocess

import cupy
import pytest
import torch
import torch.utils._pytree as pytree
from emulated_cupy import BLOCKS_PER_SM, DEVICE, EmulatedCupy
from emulator import CXX, DTYPE_CODES, build, load
from naive import (
    LARGE,
    LARGE_TOL,
    assert_close_or_overflows,
    assert_coefficient_grads,
    coefficient_scales,
    exact_terms,
    mixed_inputs,
    naive_grads,
    random_coefficients,
)
from torch.utils._python_dispatch import TorchDispatchMode

from ratsweep.rational import cuda
from ratsweep.rational._native import KernelError, compile_defines, kernel_source

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
COUNT = "last = atomicInc(done, gridDim.x - 1) == gridDim.x - 1;"
MUTANTS = {
    "as written": lambda s: s,
    "the completion count without an atomic": lambda s: PLAIN_INCREMENT + s.replace("atomicInc(done,", "rs_plain_increment(done,"),
    "no barrier before a block's warp sums are read": lambda s: s.replace("__syncthreads();", "", 1),
    "no warp sync before the count says the row is written": lambda s: s.replace("__syncwarp();", ""),
    "no release fence before the count": lambda s: re.sub(r"__threadfence\(\);(\s*)" + re.escape(COUNT), r"\1" + COUNT, s),
    "no acquire fence after the count": lambda s: re.sub(re.escape(COUNT) + r"([^\n]*\n\s*)__threadfence\(\);", COUNT + r"\1", s),
}


@pytest.mark.parametrize("mutant", list(MUTANTS))
def test_thread_sanitizer_sees_missing_synchronization(mutant, tmp_path):
    source = kernel_source("rational.cu")
    mutated = MUTANTS[mutant](source)
    assert mutated != source or mutant == "as written"
    assert mutated.count("__threadfence();") == source.count("__threadfence();") - ("fence" in mutant)
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
    monkeypatch.setattr(cuda, "_cupy", lambda: emulated.module)
    monkeypatch.setattr(cuda, "_device_index", lambda x: DEVICE)
    monkeypatch.setattr(cuda, "_raw_stream", lambda device: 7)
    monkeypatch.setattr(cuda, "_sm_count", lambda device: SMS)
    for cache in ("_kernels", "_plans", "_streams", "_counters"):
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
    """Once planned, backward allocates its outputs and the block sums' table and launches one kernel:
    no zero-fill, no sums, no copies (each would be another launch on a GPU), no new compile or plan;
    the stream's counter is back at zero, and the gradients are bitwise reproducible."""

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
    assert set(ops.names) <= {"aten.detach.default", "aten.empty_like.default", "aten.empty.memory_format"}, ops.names
    assert len(emulated_cuda.launches) == launches + 1 and len(cuda._plans) == plans
    assert len(emulated_cuda.compiles) == 1
    (counter,) = cuda._counters.values()
    assert counter[:4].view(torch.int32).item() == 0
    for u, v in zip(first, second):
        assert torch.equal(u, v)


def test_each_stream_gets_its_own_plan_and_counter(emulated_cuda, monkeypatch):
    a, b = random_coefficients((5, 4), "A", torch.Generator().manual_seed(0), dtype=torch.float32)
    x, dy = torch.randn(5000), torch.randn(5000)
    on_first = cuda.backward(dy, x, a, b, "A")
    monkeypatch.setattr(cuda, "_raw_stream", lambda device: 9)
    on_second = cuda.backward(dy, x, a, b, "A")
    assert [launch[-1] for launch in emulated_cuda.launches] == [7, 9]
    assert sorted(stream for _, stream in cuda._counters) == [7, 9]
    for u, v in zip(on_first, on_second):
        assert torch.equal(u, v)


def test_the_sums_table_fits_any_grid(emulated_cuda, monkeypatch):
    """The per-block sums' table is sized to each launch's grid: an 8-block fp64 (8, 8) C launch after a
    one-block one."""
    a, b = random_coefficients((8, 8), "C", torch.Generator().manual_seed(0), dtype=torch.float64)
    cuda.backward(torch.randn(300, dtype=torch.float64), torch.randn(300, dtype=torch.float64), a, b, "C")
    monkeypatch.setattr(cuda, "_sm_count", lambda device: 4)  # 8 blocks
    monkeypatch.setattr(cuda, "_plans", {})
    x, dy = (torch.randn(4 * BLOCKS_PER_SM * cuda.BLOCK * 2, dtype=torch.float64) for _ in range(2))
    want_y, want_dx, want_da, want_db = naive_grads(x, a, b, "C", dy)
    dx, grad_num, grad_den = cuda.backward(dy, x, a, b, "C")
    assert [launch[2] for launch in emulated_cuda.launches] == [(1,), (4 * BLOCKS_PER_SM,)]
    assert rel_err(dx, want_dx) < 1e-10 and rel_err(grad_num, want_da) < 1e-10 and rel_err(grad_den, want_db) < 1e-10


class CapturedGraph(TorchDispatchMode):
    """What torch.cuda.graph makes of the work issued while it captures, on the CPU: memory allocated
    meanwhile belongs to the graph (kept alive here, as the graph's private pool keeps it), and every
    kernel (torch's ops and the emulated rational kernels, in order) is recorded to run again on the
    same addresses at replay."""

    def __init__(self, emulated: EmulatedCupy):
        super().__init__()
        self.emulated, self.owned, self.work, self.launches = emulated, [], [], []

    def __enter__(self):
        self.emulated.on_launch = self._launched
        return super().__enter__()

    def __exit__(self, *exc):
        self.emulated.on_launch = None
        return super().__exit__(*exc)

    def _launched(self, replay, args):
        self.work.append(replay)
        self.launches.append((self.emulated.launches[-1][0], args))

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        outputs = [t for t in pytree.tree_leaves(out) if isinstance(t, torch.Tensor)]
        inputs = {t.untyped_storage().data_ptr() for t in pytree.tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)}
        if func._schema.is_mutable:  # writes into tensors it was given: a kernel to replay as is
            self.work.append(lambda: func(*args, **kwargs))
        elif outputs and all(t.untyped_storage().data_ptr() not in inputs for t in outputs):  # new memory
            self.owned += outputs
            self.work.append(lambda: [o.copy_(v) for o, v in zip(outputs, pytree.tree_leaves(func(*args, **kwargs)))])
        return out

    def owns(self, address: int, *users: torch.Tensor) -> bool:
        """address lies in memory the graph allocated, or in one of the user's tensors."""
        return any(t.data_ptr() <= address < t.data_ptr() + max(t.nbytes, 1) for t in (*self.owned, *users))

    def replay(self):
        for work in self.work:
            work()


def test_captured_launches_own_their_memory_and_replay_after_larger_eager_work(emulated_cuda):
    """Forward and backward captured twice on one stream (as torch.cuda.graph does, after eager warm-up):
    every address a captured launch uses is the user's or its own graph's (none is eager memory that
    may be freed or resized, none is shared by the two graphs, which may replay at once), and replaying
    both after larger eager work on the same stream gives the results for the graphs' new inputs."""
    a, b = random_coefficients((5, 4), "A", torch.Generator().manual_seed(0), dtype=torch.float32)
    g = torch.Generator().manual_seed(1)
    x, dy = torch.randn(5000, generator=g), torch.randn(5000, generator=g)
    cuda.backward(dy, x, a, b, "A")  # warm-up: plans, and the stream's eager counter
    graphs = []
    for _ in range(2):
        emulated_cuda.capturing = True
        with CapturedGraph(emulated_cuda) as graph:
            outputs = (cuda.forward(x, a, b, "A"), *cuda.backward(dy, x, a, b, "A"))
        emulated_cuda.capturing = False
        graphs.append((graph, outputs))
        assert [kind for kind, _ in graph.launches] == ["forward", "backward"]
        for kind, args in graph.launches:
            pointers = [arg for i, arg in enumerate(args) if i != (2 if kind == "forward" else 3)]  # all but n
            assert all(graph.owns(p, x, dy, a, b) for p in pointers), kind
    (_, first), (_, second) = (graph.launches[1] for graph, _ in graphs)
    assert not set(first[-2:]) & set(second[-2:])  # the backward workspaces: sums table and counter

    big = torch.randn(SMS * BLOCKS_PER_SM * cuda.BLOCK * 8, generator=g)
    cuda.backward(torch.randn(big.shape, generator=g), big, a, b, "A")  # a larger grid, eagerly
    x.copy_(torch.randn(x.shape, generator=g))
    dy.copy_(torch.randn(dy.shape, generator=g))
    want_y, want_dx, want_da, want_db = naive_grads(x, a, b, "A", dy)
    scale_a, scale_b = coefficient_scales(x, a, b, "A", dy)
    for graph, (y, dx, grad_num, grad_den) in graphs:
        graph.replay()
        assert rel_err(y, want_y) < 1e-6 and rel_err(dx, want_dx) < 2e-6
        assert_coefficient_grads(grad_num, want_da, scale_a, 1e-5, "numerator")
        assert_coefficient_grads(grad_den, want_db, scale_b, 1e-5, "denominator")


@pytest.mark.parametrize("dtype", list(LARGE), ids=str)
@pytest.mark.parametrize("version,degrees", [("A", (5, 4)), ("C", (3, 5)), ("B", (8, 2))])
def test_large_inputs_on_the_emulated_kernels(emulated_cuda, dtype, version, degrees):
    """The CUDA kernels' far form (|x| > 256, +-inf, NaN) against exact values, in both the 16-byte
    packs and the scalar tail (11 elements)."""
    a, b = random_coefficients(degrees, version, torch.Generator().manual_seed(7), dtype=torch.float32)
    tol = LARGE_TOL[dtype]
    values = [s * v for v in LARGE[dtype] for s in (1, -1)]
    x = torch.tensor([*values, float("inf"), float("-inf"), float("nan")]).to(dtype)
    y = cuda.forward(x, a, b, version)
    for xi, yi, (want, *_) in zip(x.tolist(), y.float().tolist(), exact_terms(x, a, b, version)):
        assert_close_or_overflows(yi, want, abs(want), tol, dtype, f"F({xi:.3e})")
    for i, (_, want_dx, dx_scale, want_da, want_db) in enumerate(exact_terms(x[: len(values)], a, b, version)):
        dx, grad_num, grad_den = cuda.backward(torch.ones(1, dtype=dtype), x[i : i + 1], a, b, version)
        assert_close_or_overflows(dx.float().item(), want_dx, dx_scale, 2 * tol, dtype, f"dF/dx({values[i]:.3e})")
        for got, want in zip([*grad_num.tolist(), *grad_den.tolist()], [*want_da, *want_db]):
            assert_close_or_overflows(got, want, abs(want), tol, torch.float32, f"coefficient gradient at {values[i]:.3e}")
    for mixed in mixed_inputs(dtype):  # far, infinite and NaN elements leave the others' results alone
        y = cuda.forward(mixed, a, b, version)
        dx, _, _ = cuda.backward(torch.ones_like(mixed), mixed, a, b, version)
        for i, (want, want_dx, dx_scale, _, _) in enumerate(exact_terms(mixed, a, b, version)):
            if mixed[i].isfinite():
                what = f"at {mixed[i].item():.3e} among {mixed.tolist()}"
                assert_close_or_overflows(y[i].float().item(), want, abs(want), tol, dtype, f"F {what}")
                assert_close_or_overflows(dx[i].float().item(), want_dx, dx_scale, 2 * tol, dtype, f"dF/dx {what}")


def test_the_doubles_refuse_what_the_real_cupy_refuses(emulated_cuda):
    """The boundary is CuPy's own: a RawKernel has no .ptr (its .kernel, a Function, has); a launch
    takes tuples, arguments CuPy can pass (ints, not tensors), a stream object; the occupancy query an
    integer handle; RawModule its options as a tuple. Each wrong call fails here as on a GPU, and the
    right one runs on the emulator."""
    cp = emulated_cuda.module
    name = "rational_forward<float, 4>"
    module = cp.RawModule(code=kernel_source("rational.cu"), options=cuda.compile_options((5, 4), "A"), name_expressions=(name,))
    raw = module.get_function(name)
    with pytest.raises(AttributeError, match="ptr"):
        raw.ptr  # noqa: B018  (the bug this boundary exists for)
    with pytest.raises(TypeError):
        cp.cuda.driver.occupancyMaxActiveBlocksPerMultiprocessor(raw, cuda.BLOCK, 0)
    assert cp.cuda.driver.occupancyMaxActiveBlocksPerMultiprocessor(raw.kernel.ptr, cuda.BLOCK, 0) == BLOCKS_PER_SM
    with pytest.raises(TypeError, match="options"):
        cp.RawModule(code=kernel_source("rational.cu"), options=list(cuda.compile_options((5, 4), "A")))
    with pytest.raises(AssertionError, match="name expressions"):
        module.get_function("rational_forward<float, 2>")

    a, b = random_coefficients((5, 4), "A", torch.Generator().manual_seed(0), dtype=torch.float32)
    x, y = torch.randn(4096), torch.empty(4096)
    args = (x.data_ptr(), y.data_ptr(), x.numel(), a.data_ptr(), b.data_ptr())
    stream = cupy.cuda.Stream.from_external(cuda._TorchStream(7))
    with pytest.raises(TypeError, match="grid"):
        raw.kernel([4], (cuda.BLOCK,), args, stream=stream)
    with pytest.raises(TypeError, match="streem"):
        raw.kernel((4,), (cuda.BLOCK,), args, streem=stream)
    with pytest.raises(TypeError, match="Unsupported type"):
        raw.kernel((4,), (cuda.BLOCK,), (x, y, x.numel(), a, b), stream=stream)
    with pytest.raises(AttributeError, match="ptr"):
        raw.kernel((4,), (cuda.BLOCK,), args, stream=7)
    assert not emulated_cuda.launches
    raw.kernel((4,), (cuda.BLOCK,), args, stream=stream)
    assert emulated_cuda.launches == [("forward", 4, (4,), (cuda.BLOCK,), 7)]
    assert rel_err(y, naive_grads(x, a, b, "A", torch.ones_like(x))[0]) < 1e-6


def test_the_original_launch_bug_fails_on_the_cpu(emulated_cuda, monkeypatch):
    """Asking the occupancy of the RawKernel (which has no .ptr) instead of its Function: the bug that
    once passed every test against a CuPy double written from memory fails here, as what it is (a
    bug in ratsweep, not a CUDA failure to blame on the install)."""
    monkeypatch.setattr(cuda, "_function", lambda raw_kernel: raw_kernel)
    a, b = random_coefficients((5, 4), "A", torch.Generator().manual_seed(0), dtype=torch.float32)
    with pytest.raises(AttributeError, match="ptr"):
        cuda.forward(torch.randn(100), a, b, "A")


def test_a_cuda_failure_is_a_kernel_error_naming_it_and_the_way_out(emulated_cuda, monkeypatch):
    """What CuPy raises when CUDA fails (here a compile error, CuPy's own type) becomes a KernelError with
    its first line, the install to fix and backend='torch'."""
    real_compile_error = cupy.cuda.compiler.CompileException("rational.cu(3): error: expected a ';'", "", "rational.cu", (), "nvrtc")
    emulated_cuda.module.RawModule.side_effect = real_compile_error
    a, b = random_coefficients((5, 4), "A", torch.Generator().manual_seed(0), dtype=torch.float32)
    with pytest.raises(KernelError, match=r"CompileException: rational.cu\(3\): error.*CuPy install.*backend='torch'"):
        cuda.forward(torch.randn(100), a, b, "A")


def test_a_launch_from_another_device_enters_the_kernels_device(emulated_cuda):
    """A kernel runs in the context of the device it was loaded on: CuPy's current device differing,
    the launch enters that device first (a real cupy.cuda.Device, checked by CuPy)."""
    a, b = random_coefficients((5, 4), "A", torch.Generator().manual_seed(0), dtype=torch.float32)
    x = torch.randn(1000)
    y = cuda.forward(x, a, b, "A")
    assert emulated_cuda.device_switches == [DEVICE]  # compiling on the tensors' device
    emulated_cuda.current_device = DEVICE + 1
    assert torch.equal(cuda.forward(x, a, b, "A"), y)
    assert emulated_cuda.device_switches == [DEVICE, DEVICE]
    assert emulated_cuda.launch_devices == [DEVICE, DEVICE]  # both ran on the kernels' device
    assert emulated_cuda.current_device == DEVICE + 1  # and the caller's device is back


def test_the_kernels_take_the_sign_bit_for_the_derivative_of_abs(emulated_cuda):
    """As test_rational_cuda's test of the same name, on the CUDA kernels: version B from the identity
    init (D = 0) gets denominator gradients, and version A's dQ/dx follows the sign bit of x = +-0."""
    identity, zeros = torch.tensor([0.0, 1.0, 0.0, 0.0, 0.0, 0.0]), torch.zeros(4)
    x = torch.tensor([0.5, -2.0])
    _, _, grad_den = cuda.backward(torch.ones(2), x, identity, zeros, "B")
    assert grad_den.tolist() == pytest.approx([-sum(v * v ** (k + 1) for v in (0.5, -2.0)) for k in range(4)], rel=1e-6)
    a, b = torch.tensor([0.5, 1.0, 0.2, 0.0, 0.0, 0.1]), torch.tensor([0.7, 0.0, 0.3, 0.1])
    dx, _, _ = cuda.backward(torch.ones(2), torch.tensor([0.0, -0.0]), a, b, "A")
    assert dx.tolist() == pytest.approx([1.0 - 0.5 * 0.7, 1.0 + 0.5 * 0.7], rel=1e-6)
