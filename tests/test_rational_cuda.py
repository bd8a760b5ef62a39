"""The CUDA backend against the float64 reference.

The bodies of the tests that can run anywhere also run on the `cpu` and `torch` backends (on CPU
tensors), so a wrong expectation shows up on machines without a GPU; their `cuda` cases run where
CUDA is, and fail with the install hint (instead of skipping) where CUDA is but CuPy is not.
"""

import math

import pytest
import torch
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
from torch import nn

from ratsweep.rational import Rational, cuda, functional, reference, resolve_backend
from ratsweep.rational.functional import rational

VERSIONS = ("A", "B", "C")
BACKENDS = [pytest.param("cuda", marks=pytest.mark.gpu), "cpu", "torch"]
# (dtype, relative tolerance for outputs/dx, for each coefficient gradient relative to its own scale)
DTYPES = [
    (torch.float64, 1e-12, 1e-12),
    (torch.float32, 1e-6, 1e-5),
    (torch.float16, 2e-3, 1e-4),
    (torch.bfloat16, 1.6e-2, 1e-4),
]


def require_cupy() -> None:
    """On a CUDA machine, CuPy missing is a failure with the fix, never a silent skip."""
    if not cuda.available():
        pytest.fail("CUDA is available but CuPy is not installed: pip install -e '.[test,cuda12]' or '.[test,cuda13]'")


def device_of(backend: str) -> str:
    if backend == "cuda":
        require_cupy()
    return "cuda" if backend == "cuda" else "cpu"


def rel_err(got, want):
    return ((got.double().cpu() - want.double().cpu()).norm() / want.double().cpu().norm().clamp_min(1e-30)).item()


def exact(x, dy, a, b, version):
    """float64 reference evaluated at the (rounded) inputs the kernel actually sees."""
    return naive_grads(x.double().cpu(), a.double().cpu(), b.double().cpu(), version, dy.double().cpu())


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("degrees", [(1, 1), (5, 4), (8, 8)])
@pytest.mark.parametrize("dtype,tol,coef_tol", DTYPES, ids=lambda v: str(v))
def test_matches_float64_reference(backend, version, degrees, dtype, tol, coef_tol):
    device = device_of(backend)
    g = torch.Generator().manual_seed(0)
    coef_dtype = torch.float64 if dtype == torch.float64 else torch.float32  # float32 coefficients cannot give 1e-12
    a, b = random_coefficients(degrees, version, g, dtype=coef_dtype)
    n = 1 << 20 if device == "cuda" else 1 << 16  # many blocks on a GPU; the CPU backends run in CI
    x = (torch.randn(n, generator=g) * 1.5).clamp(-3, 3).to(dtype)
    dy = torch.randn(n, generator=g).to(dtype)
    want_y, want_dx, want_da, want_db = exact(x, dy, a, b, version)
    scale_a, scale_b = coefficient_scales(x, a, b, version, dy)
    xs = x.to(device).requires_grad_()
    as_, bs = a.to(device).requires_grad_(), b.to(device).requires_grad_()
    y = rational(xs, as_, bs, version, backend)
    y.backward(dy.to(device))
    assert y.dtype == dtype and xs.grad.dtype == dtype and as_.grad.dtype == coef_dtype and bs.grad.dtype == coef_dtype
    scale = 10 if max(degrees) > 5 else 1  # degree-8 random polynomials cancel (see test_rational_numerics)
    assert rel_err(y, want_y) < tol * scale
    assert rel_err(xs.grad, want_dx) < tol * scale * 2
    assert_coefficient_grads(as_.grad, want_da, scale_a, coef_tol * scale, "numerator")
    assert_coefficient_grads(bs.grad, want_db, scale_b, coef_tol * scale, "denominator")


def test_a_dropped_coefficient_gradient_is_caught():
    """The component-wise check fails where the norm-wise one passed: b_0 of (8, 8) version C is
    about 2e-4 of the gradient's norm, under the half-precision rows' norm tolerance."""
    g = torch.Generator().manual_seed(0)
    a, b = random_coefficients((8, 8), "C", g, dtype=torch.float32)
    x = (torch.randn(1 << 14, generator=g) * 1.5).clamp(-3, 3)
    dy = torch.randn(1 << 14, generator=g)
    _, _, _, want_db = exact(x, dy, a, b, "C")
    _, scale_b = coefficient_scales(x, a, b, "C", dy)
    dropped = want_db.clone()
    dropped[0] = 0
    half_tol = 1e-4 * 10  # the fp16/bf16 rows' tolerance at degree 8
    assert rel_err(dropped, want_db) < half_tol  # a norm-wise check lets the bug through
    with pytest.raises(AssertionError, match=r"denominator\[\[0\]\]"):
        assert_coefficient_grads(dropped, want_db, scale_b, half_tol, "denominator")


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.gpu
def test_gradcheck_float64(version):
    require_cupy()
    g = torch.Generator().manual_seed(1)
    a, b = random_coefficients((3, 2), version, g, conditioned=False)
    x = torch.randn(301, dtype=torch.float64, generator=g)
    inputs = tuple(t.cuda().requires_grad_() for t in (x, a, b))
    assert torch.autograd.gradcheck(lambda x, a, b: rational(x, a, b, version, "cuda"), inputs)


@pytest.mark.parametrize(
    "shape",
    [(1,), (7,), (4099,), "misaligned", "channels_last", "transposed"],
    ids=["one", "seven", "tail", "misaligned", "channels_last", "transposed"],
)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("backend", BACKENDS)
def test_shapes_and_layouts(backend, shape, dtype, monkeypatch):
    device = device_of(backend)
    a, b = random_coefficients((5, 4), "A", torch.Generator().manual_seed(2), dtype=torch.float32)
    if shape == "misaligned":  # a view starting one element in: not on a 16-byte boundary, so the scalar path
        base = torch.randn((1 << 18) + 5, device=device).to(dtype).requires_grad_()
        xs = base[1:]
    elif shape == "channels_last":
        xs = torch.randn(8, 16, 33, 33, device=device).to(dtype).to(memory_format=torch.channels_last).requires_grad_()
    elif shape == "transposed":  # non-contiguous
        xs = torch.randn(300, 257, device=device).to(dtype).t().detach().requires_grad_()
    else:
        xs = torch.randn(shape, device=device).to(dtype).requires_grad_()
    dy = torch.randn(xs.shape, device=device).to(dtype)
    seen, alignments = [], []
    call = functional._call
    monkeypatch.setattr(functional, "_call", lambda method, *args: seen.append((method, args[3] if method == "backward" else args[2])) or call(method, *args))
    plan = cuda._plan
    monkeypatch.setattr(cuda, "_plan", lambda kind, degrees, version, x, aligned, count: alignments.append(aligned) or plan(kind, degrees, version, x, aligned, count))
    if device == "cuda":  # poison what the caching allocator hands out next, so unwritten outputs show up
        torch.empty(xs.numel() * 4, device="cuda").fill_(float("nan"))
    y = rational(xs, a.to(device), b.to(device), "A", backend)
    y.backward(dy)
    grad = base.grad[1:] if shape == "misaligned" else xs.grad
    assert y.shape == xs.shape and torch.isfinite(y).all() and torch.isfinite(grad).all()
    if shape == "misaligned":  # what the backend received is the misaligned view itself, forward and backward
        assert [method for method, _ in seen] == ["forward", "backward"]
        assert all(x.data_ptr() % 16 != 0 and x.data_ptr() == xs.data_ptr() for _, x in seen)
        if backend == "cuda":
            assert alignments == [False, False]  # one element per load: the scalar kernels
    want_y, want_dx, _, _ = exact(xs.detach(), dy, a, b, "A")
    tol = {torch.float64: 1e-12, torch.float32: 1e-6, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}[dtype]
    assert rel_err(y, want_y) < tol and rel_err(grad, want_dx) < 2 * tol


@pytest.mark.gpu
def test_empty_tensor():
    require_cupy()
    x = torch.empty(0, 5, device="cuda", requires_grad=True)
    a, b = torch.randn(6, device="cuda", requires_grad=True), torch.randn(4, device="cuda", requires_grad=True)
    y = rational(x, a, b, "A", "cuda")
    y.sum().backward()
    assert y.shape == (0, 5) and torch.equal(a.grad, torch.zeros_like(a))


@pytest.mark.gpu
def test_backward_is_bitwise_reproducible():
    """The last block sums the per-block partials in a fixed order: no atomics on the gradients, in
    deterministic mode or not."""
    require_cupy()
    a, b = random_coefficients((5, 4), "A", torch.Generator().manual_seed(3), dtype=torch.float32)
    a, b = a.cuda(), b.cuda()
    x, dy = torch.randn(1 << 22, device="cuda"), torch.randn(1 << 22, device="cuda")
    runs = [cuda.backward(dy, x, a, b, "A") for _ in range(3)]
    torch.use_deterministic_algorithms(True)
    try:
        runs.append(cuda.backward(dy, x, a, b, "A"))
    finally:
        torch.use_deterministic_algorithms(False)
    for run in runs[1:]:
        for u, v in zip(run, runs[0]):
            assert torch.equal(u, v)


@pytest.mark.gpu
@pytest.mark.parametrize("n", [256 * 256, 1 << 24])
def test_one_kernel_per_call_in_one_wave(n):
    """Forward and backward are one kernel each (no fills or sums around them, as the emulated
    version of this test also checks of the host side), on a grid of at most one wave of the blocks
    the occupancy calculator says fit on an SM."""
    require_cupy()
    from torch.profiler import ProfilerActivity, profile

    a, b = random_coefficients((8, 8), "C", torch.Generator().manual_seed(3), dtype=torch.float32)
    a, b = a.cuda().requires_grad_(), b.cuda().requires_grad_()
    x = torch.randn(n, device="cuda").requires_grad_()
    dy = torch.randn(n, device="cuda")
    rational(x, a, b, "C", "cuda").backward(dy)  # compile and plan
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        y = cuda.forward(x.detach(), a.detach(), b.detach(), "C")
        cuda.backward(dy, x.detach(), a.detach(), b.detach(), "C")
        torch.cuda.synchronize()
    kernels = [e.name for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
    assert len(kernels) == 2 and "rational_forward" in kernels[0] and "rational_backward" in kernels[1], kernels
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    for (kind, degrees, version, dtype, device, aligned, _), plan in cuda._plans.items():
        kernel = cuda._kernels[(degrees, version, dtype, device)][(kind, cuda.elements_per_load(dtype, aligned))]
        wave = sms * kernel.blocks_per_sm
        assert 1 <= kernel.blocks_per_sm <= 2048 // cuda.BLOCK and plan.wave == wave
        assert plan.grid(n) == wave if n == 1 << 24 else plan.grid(n) <= wave
    assert torch.isfinite(y).all()


@pytest.mark.gpu
def test_runs_on_the_current_stream():
    """The side stream is kept busy (a GPU spin) before it writes the input, so a kernel launched on
    any other stream would run first and read the NaNs the input held: the result must be exact."""
    require_cupy()
    a, b = random_coefficients((5, 4), "B", torch.Generator().manual_seed(4), dtype=torch.float32)
    a, b = a.cuda(), b.cuda()
    x = torch.randn(1 << 22, device="cuda")
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        x2 = torch.full_like(x, float("nan"))
        torch.cuda._sleep(100_000_000)  # ~50 ms of spinning queued ahead of the write
        x2.copy_(x).mul_(2)
        y = rational(x2, a, b, "B", "cuda")
    torch.cuda.current_stream().wait_stream(side)
    want = reference.forward((x * 2).double(), a.double(), b.double(), "B")
    assert torch.isfinite(y).all() and rel_err(y, want) < 1e-6


@pytest.mark.gpu
def test_module_under_autocast():
    require_cupy()
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), Rational(init="gelu"), torch.nn.Conv2d(8, 4, 1)).cuda()
    assert resolve_backend("auto", torch.device("cuda")) == "cuda"
    x = torch.randn(4, 3, 16, 16, device="cuda")
    with torch.autocast("cuda", dtype=torch.float16):
        out = model(x)
    out.float().sum().backward()
    assert model[1].numerator.grad.dtype == torch.float32 and torch.isfinite(model[1].numerator.grad).all()


def vgg4_with_rationals() -> nn.Module:
    from ratsweep.experiments import cifar10  # noqa: PLC0415  (imports yaml: only where this model is built)

    return cifar10.vgg4(lambda: Rational(init="relu"))


MODELS = {
    "mlp": (lambda: nn.Sequential(nn.Linear(17, 64), Rational(init="gelu"), nn.Linear(64, 64),
                                  Rational(init="leaky_relu", version="B"), nn.Linear(64, 3)), (32, 17)),
    "vgg4": (vgg4_with_rationals, (4, 3, 32, 32)),
}
DEVICES = [pytest.param("cuda", marks=pytest.mark.gpu), "cpu"]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", MODELS)
def test_compiled_model_has_no_graph_break_and_matches_eager(device, name):
    """torch.compile(fullgraph=True) (inductor) of a Rational MLP and of VGG4 with rationals: one graph
    (a break raises), and outputs and every parameter's gradient as in eager mode."""
    if device == "cuda":
        require_cupy()
    torch.manual_seed(0)
    make, shape = MODELS[name]
    model = make().to(device)
    x = torch.randn(shape, device=device)
    params = list(model.parameters())
    want = model(x)
    want_grads = torch.autograd.grad(want.square().sum(), params)
    got = torch.compile(model, fullgraph=True)(x)
    got_grads = torch.autograd.grad(got.square().sum(), params)
    assert torch.allclose(got, want, rtol=1e-5, atol=1e-6)
    for g, w in zip(got_grads, want_grads):
        assert (g - w).abs().max() <= 1e-5 * w.abs().max() + 1e-7


@pytest.mark.gpu
def test_cuda_graph_replays_forward_and_backward_after_larger_eager_work():
    """Forward and backward of a Rational MLP captured in torch.cuda.graph replay correctly after eager
    work on larger tensors (which would once have replaced the backward workspace the graph points at),
    and two graphs captured on the same stream keep their own counters."""
    require_cupy()
    torch.manual_seed(0)
    model = MODELS["mlp"][0]().cuda()
    params = list(model.parameters())
    static_x = torch.randn(256, 17, device="cuda")
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm-up, as torch.cuda.graph requires
        for _ in range(3):
            torch.autograd.grad(model(static_x).square().sum(), params)
    torch.cuda.current_stream().wait_stream(side)
    graphs = []
    for _ in range(2):
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            out = model(static_x)
            grads = torch.autograd.grad(out.square().sum(), params)
        graphs.append((graph, out, grads))
    big = torch.randn(1 << 20, 17, device="cuda")
    torch.autograd.grad(model(big).square().sum(), params)  # larger grids, eagerly
    static_x.copy_(torch.randn_like(static_x))
    want = model(static_x)
    want_grads = torch.autograd.grad(want.square().sum(), params)
    for graph, out, grads in graphs:
        graph.replay()
        torch.cuda.synchronize()
        assert torch.allclose(out, want, rtol=1e-5, atol=1e-6)
        for g, w in zip(grads, want_grads):
            assert torch.equal(g, w) or (g - w).abs().max() <= 1e-5 * w.abs().max()


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", list(LARGE), ids=str)
@pytest.mark.parametrize("version,degrees", [("A", (5, 4)), ("B", (5, 4)), ("C", (5, 4)), ("A", (3, 5)), ("B", (8, 2))])
def test_large_inputs_infinities_and_nan(backend, dtype, version, degrees):
    """Against exact values (mpmath): F, dF/dx and every coefficient's gradient stay right at |x| up to
    the dtype's largest values, where Horner in x would return inf/inf = NaN; F at +-inf is its limit,
    and NaN stays NaN. One element per call, so each coefficient gradient is one exact term."""
    device = device_of(backend)
    g = torch.Generator().manual_seed(7)
    a, b = random_coefficients(degrees, version, g, dtype=torch.float32)
    tol = LARGE_TOL[dtype]
    values = [s * v for v in LARGE[dtype] for s in (1, -1)]
    x = torch.tensor([*values, float("inf"), float("-inf"), float("nan")]).to(dtype)
    y = rational(x.to(device), a.to(device), b.to(device), version, backend).cpu()
    for xi, yi, (want, *_) in zip(x.tolist(), y.float().tolist(), exact_terms(x, a, b, version)):
        assert_close_or_overflows(yi, want, abs(want), tol, dtype, f"F({xi:.3e})")
    for xi, (_, want_dx, dx_scale, want_da, want_db) in zip(values, exact_terms(x[: len(values)], a, b, version)):
        xs = torch.tensor([xi]).to(dtype).to(device).requires_grad_()
        as_, bs = (c.clone().to(device).requires_grad_() for c in (a, b))
        rational(xs, as_, bs, version, backend).backward(torch.ones_like(xs))
        assert_close_or_overflows(xs.grad.float().item(), want_dx, dx_scale, 2 * tol, dtype, f"dF/dx({xi:.3e})")
        # coefficient gradients accumulate in fp32 whatever x's dtype
        for j, want in enumerate(want_da):
            assert_close_or_overflows(as_.grad[j].item(), want, abs(want), tol, torch.float32, f"dF/da_{j}({xi:.3e})")
        for k, want in enumerate(want_db):
            assert_close_or_overflows(bs.grad[k].item(), want, abs(want), tol, torch.float32, f"dF/db_{k}({xi:.3e})")
    for mixed in mixed_inputs(dtype):  # far, infinite and NaN elements leave the others' results alone
        xs = mixed.to(device).requires_grad_()
        y = rational(xs, a.to(device), b.to(device), version, backend)
        y.backward(torch.ones_like(y))
        for i, (want, want_dx, dx_scale, _, _) in enumerate(exact_terms(mixed, a, b, version)):
            if math.isfinite(mixed[i].item()):
                what = f"at {mixed[i].item():.3e} among {mixed.tolist()}"
                assert_close_or_overflows(y[i].float().item(), want, abs(want), tol, dtype, f"F {what}")
                assert_close_or_overflows(xs.grad[i].float().item(), want_dx, dx_scale, 2 * tol, dtype, f"dF/dx {what}")


@pytest.mark.parametrize("backend", BACKENDS)
def test_derivatives_of_abs_take_the_sign_bit(backend):
    """|.| is differentiated as copysign(1, .), as in the rational_activations kernels the paper used
    (rational_math.h): version A's dQ/dx at x = +0 and -0 is +|b_1| and -|b_1| (torch's abs gives 0 at
    both), and a b_k of exactly 0 gets a gradient; version B from its identity init (D = 0 everywhere)
    gets denominator gradients, so it can leave the identity (with sign(0) = 0 it never could)."""
    device = device_of(backend)
    a0, a1, b1 = 0.5, 1.0, 0.7
    a = torch.tensor([a0, a1, 0.2, 0.0, 0.0, 0.1], device=device, requires_grad=True)
    b = torch.tensor([b1, 0.0, 0.3, 0.1], device=device, requires_grad=True)  # b_2 = 0 exactly
    x = torch.tensor([0.0, -0.0, 1.5], device=device, requires_grad=True)
    rational(x, a, b, "A", backend).backward(torch.ones(3, device=device))
    # F'(+-0) = P'(0)/Q(0) - P(0) Q'(+-0)/Q(0)^2 with P(0) = a0, P'(0) = a1, Q(0) = 1, Q'(+-0) = +-|b_1|
    assert x.grad[:2].tolist() == pytest.approx([a1 - a0 * b1, a1 + a0 * b1], rel=1e-6)
    p, q = sum(c * 1.5**j for j, c in enumerate([a0, a1, 0.2, 0.0, 0.0, 0.1])), 1 + b1 * 1.5 + 0.3 * 1.5**3 + 0.1 * 1.5**4
    assert b.grad[1].item() == pytest.approx(-p / q**2 * 1.5**2, rel=1e-5)  # sign(+0) = +1

    identity = torch.tensor([0.0, 1.0, 0.0, 0.0, 0.0, 0.0], device=device, requires_grad=True)
    zeros = torch.zeros(4, device=device, requires_grad=True)
    xs = torch.tensor([0.5, -2.0], device=device)
    y = rational(xs, identity, zeros, "B", backend)
    y.backward(torch.ones(2, device=device))
    assert y.tolist() == [0.5, -2.0]
    # F = x / (1 + |D|), D = 0 (+0: sign +1): dF/db_k = -x x^(k+1)
    want = [-sum(v * v ** (k + 1) for v in (0.5, -2.0)) for k in range(4)]
    assert zeros.grad.tolist() == pytest.approx(want, rel=1e-6)


@pytest.mark.parametrize("backend", BACKENDS)
def test_fp32_subnormals_flush_to_zero_on_the_gpu_only(backend):
    """CuPy builds with -ftz=true: the GPU flushes fp32 subnormals, the CPU paths keep them
    (rational_math.h says so)."""
    device = device_of(backend)
    torch.set_flush_denormal(False)  # torch's default; the sweep's trials turn flushing on
    a, b = torch.tensor([0.0, 1.0, 0, 0, 0, 0]), torch.zeros(4)  # F(x) = x exactly
    x = torch.tensor([1e-40, -3e-39, 1e-30, 2.0])
    assert x[0] != 0 and x[0].abs() < torch.finfo(torch.float32).tiny  # subnormal
    y = rational(x.to(device), a.to(device), b.to(device), "A", backend).cpu()
    if backend == "cuda":
        assert torch.equal(y, torch.tensor([0.0, 0.0, 1e-30, 2.0]))
    else:
        assert torch.equal(y, x)
