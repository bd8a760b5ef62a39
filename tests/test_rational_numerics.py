"""Numerics of the rational op on the CPU backends: gradients against float64 references."""

import pytest
import torch
from naive import naive_grads, random_coefficients, clip_inputs

from ratsweep.rational import cpu, reference
from ratsweep.rational.functional import rational

VERSIONS = ("A", "B", "C")
DEGREES = [(1, 1), (2, 5), (3, 2), (5, 4), (8, 8)]
CPU_BACKENDS = ("torch", "cpu")


def fp32_tol(degrees):
    """Random degree-8 polynomials cancel heavily on |x| <= 3 (terms ~1e3, values ~1); fp32 rounding is
    amplified accordingly, in the reference path as much as in the kernels."""
    return 1e-5 if max(degrees) <= 5 else 1e-4


def rel_err(got, want):
    return ((got.double() - want).norm() / want.norm().clamp_min(1e-30)).item()


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("degrees", [(1, 1), (3, 2), (5, 4)])
def test_gradcheck_float64(backend, version, degrees):
    """The hand-derived backward agrees with numerical derivatives (x and both coefficient sets)."""
    g = torch.Generator().manual_seed(17)
    a, b = random_coefficients(degrees, version, g, conditioned=False)
    x = torch.randn(37, dtype=torch.float64, generator=g) * 1.5
    inputs = (x.requires_grad_(), a.requires_grad_(), b.requires_grad_())
    assert torch.autograd.gradcheck(lambda x, a, b: rational(x, a, b, version, backend), inputs)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("degrees", DEGREES)
def test_fp32_matches_float64_reference(backend, version, degrees):
    """fp32 forward and all three gradients against autograd through an independent float64 formula."""
    g = torch.Generator().manual_seed(7)
    a, b = random_coefficients(degrees, version, g)
    x = clip_inputs(version, torch.randn(50_001, generator=g) * 2)
    dy = torch.randn(50_001, generator=g)
    want_y, want_dx, want_da, want_db = naive_grads(x, a, b, version, dy)
    xs, as_, bs = x.clone().requires_grad_(), a.float().requires_grad_(), b.float().requires_grad_()
    y = rational(xs, as_, bs, version, backend)
    y.backward(dy)
    assert y.dtype == torch.float32
    tol = fp32_tol(degrees)
    assert rel_err(y, want_y) < tol / 10
    assert rel_err(xs.grad, want_dx) < tol
    assert rel_err(as_.grad, want_da) < tol
    assert rel_err(bs.grad, want_db) < tol


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("degrees", DEGREES)
def test_cpu_backend_equals_reference(version, degrees):
    """The cpu kernels against the reference evaluated in float64: in float64 with unrestricted
    coefficients (version C's polynomial changes sign, so both branches of |.| and the region near
    Q's floor are covered), and in fp32 on well-conditioned coefficients and x in [-3, 3]."""
    g = torch.Generator().manual_seed(3)
    for dtype, tol, conditioned in ((torch.float64, 1e-12, False), (torch.float32, fp32_tol(degrees), True)):
        a, b = random_coefficients(degrees, version, g, conditioned=conditioned)
        x = torch.randn(70_000, generator=g, dtype=dtype) * 2
        x = x.clamp(-3, 3) if conditioned else x
        dy = torch.randn(70_000, generator=g, dtype=dtype)
        assert rel_err(cpu.forward(x, a, b, version), reference.forward(x.double(), a, b, version)) < tol
        exact = reference.backward(dy.double(), x.double(), a, b, version)
        for got, want in zip(cpu.backward(dy, x, a, b, version), exact):
            assert rel_err(got, want) < tol


@pytest.mark.parametrize(
    "make",
    [
        lambda g: torch.randn(0),
        lambda g: torch.randn(1, generator=g),
        lambda g: torch.randn(255, generator=g),  # under one chunk
        lambda g: torch.randn(3, 5, 257, generator=g),  # odd sizes, several chunks
        lambda g: torch.randn(2, 8, 9, 9, generator=g).to(memory_format=torch.channels_last),
        lambda g: torch.randn(64, 33, generator=g).t(),  # non-contiguous
        lambda g: torch.randn(1 << 17, generator=g),  # split across threads
    ],
    ids=["empty", "one", "sub-chunk", "odd", "channels_last", "transposed", "threaded"],
)
def test_cpu_backend_shapes_and_layouts(make):
    g = torch.Generator().manual_seed(11)
    a, b = random_coefficients((5, 4), "A", g, dtype=torch.float32)
    x = make(g).requires_grad_()
    y = rational(x, a, b, "A", "cpu")
    assert y.shape == x.shape
    if x.dim() == 4:
        assert y.is_contiguous(memory_format=torch.channels_last)
    dy = torch.randn(x.shape, generator=g)
    y.backward(dy)
    xr = x.detach().double().requires_grad_()
    ar, br = a.double().requires_grad_(), b.double().requires_grad_()
    yr = rational(xr, ar, br, "A", "torch")
    yr.backward(dy.double())
    if x.numel():
        assert rel_err(y, yr.detach()) < 1e-6
        assert rel_err(x.grad, xr.grad) < 1e-5
    assert x.grad.shape == x.shape


def test_threaded_backward_is_deterministic():
    g = torch.Generator().manual_seed(5)
    a, b = random_coefficients((5, 4), "A", g, dtype=torch.float32)
    x, dy = torch.randn(1 << 18, generator=g), torch.randn(1 << 18, generator=g)
    first = cpu.backward(dy, x, a, b, "A")
    for _ in range(3):
        for u, v in zip(cpu.backward(dy, x, a, b, "A"), first):
            assert torch.equal(u, v)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("degrees", [(5, 4), (8, 8)])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_large_inputs_stay_finite(backend, version, degrees, dtype):
    """|x| up to 1e4 in fp16/bf16: everything is computed in fp32, so where the true value fits the
    dtype the output is finite and accurate, and the gradients are finite."""
    g = torch.Generator().manual_seed(1)
    a, b = random_coefficients(degrees, version, g, dtype=torch.float32)
    b = b.abs() + 0.05  # keep |b_n| away from 0 so F grows like x^(m-n), not faster
    x = torch.cat([torch.linspace(-1e4, 1e4, 4001), torch.tensor([-1e4, -3e3, -1.0, 0.0, 1.0, 3e3, 1e4])]).to(dtype)
    want = naive_grads(x.double(), a, b, version, torch.ones(x.shape, dtype=torch.float64))
    representable = want[0].abs() < torch.finfo(dtype).max / 2
    assert representable.float().mean() > 0.5  # the test must exercise the large-x regime
    xs, as_, bs = x.clone().requires_grad_(), a.clone().requires_grad_(), b.clone().requires_grad_()
    y = rational(xs, as_, bs, version, backend)
    y.backward(torch.ones_like(y))
    assert y.dtype == dtype
    assert torch.isfinite(y[representable]).all()
    close = (y[representable].double() - want[0][representable]).abs() <= 2e-2 * want[0][representable].abs() + 1e-2
    assert close.all()
    assert torch.isfinite(as_.grad).all() and torch.isfinite(bs.grad).all()
    dx_ok = want[1].abs() < torch.finfo(dtype).max / 2
    assert torch.isfinite(xs.grad[dx_ok]).all()


def test_saves_only_x_and_coefficients():
    """Autograd keeps x and the two coefficient vectors, nothing else: one activation-sized tensor."""
    saved = []
    x = torch.randn(4096, requires_grad=True)
    a, b = (torch.randn(6, requires_grad=True), torch.randn(4, requires_grad=True))
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        y = rational(x, a, b, "A", "cpu")
    assert sorted(t.numel() for t in saved) == [4, 6, 4096]
    y.sum().backward()
    assert x.grad is not None


def test_compile_fullgraph_matches_eager():
    """Registered as a custom op with a fake kernel: torch.compile traces it without a graph break."""
    a, b = torch.randn(6, requires_grad=True), torch.randn(4, requires_grad=True)
    x = torch.randn(8, 16, requires_grad=True)

    def f(x, a, b):
        return rational(x * 2.0, a, b, "A", "cpu").sum()

    compiled = torch.compile(f, fullgraph=True, backend="aot_eager")
    out = compiled(x, a, b)
    grads = torch.autograd.grad(out, (x, a, b))
    want = f(x, a, b)
    want_grads = torch.autograd.grad(want, (x, a, b))
    assert torch.allclose(out, want)
    for got, exp in zip(grads, want_grads):
        assert torch.allclose(got, exp, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("backend", ["torch", "cpu"])
@pytest.mark.parametrize(
    "make",
    [
        lambda: torch.randn(16, 24).t(),  # transposed: dense but not contiguous
        lambda: torch.randn(2, 8, 5, 6).to(memory_format=torch.channels_last),
        lambda: torch.randn(6, 40)[:, ::2],  # strided: not dense
    ],
    ids=["transposed", "channels_last", "strided"],
)
def test_compiled_layouts_match_eager(backend, make):
    """Outputs have the strides the fake implementations promise, for every input layout and backend."""
    torch.manual_seed(0)
    a, b = torch.randn(6, requires_grad=True), torch.randn(4, requires_grad=True)
    x = make().requires_grad_()

    def f(x, a, b):
        y = rational(x, a, b, "B", backend)
        return y, (y * torch.linspace(0, 1, y.shape[-1])).sum()

    (y_c, loss_c), (y_e, loss_e) = torch.compile(f, fullgraph=True)(x, a, b), f(x, a, b)
    assert y_c.stride() == y_e.stride() and torch.allclose(y_c, y_e)
    for got, want in zip(torch.autograd.grad(loss_c, (x, a, b)), torch.autograd.grad(loss_e, (x, a, b))):
        assert torch.allclose(got, want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("backend", ["torch", "cpu"])
def test_custom_ops_pass_opcheck(backend):
    """torch.library's own checks: schema, fake tensors, autograd registration, AOT dispatch."""
    from ratsweep.rational.functional import _rational, _rational_backward

    torch.manual_seed(0)
    a, b = torch.randn(6, requires_grad=True), torch.randn(4, requires_grad=True)
    for x in (torch.randn(16, 24).t(), torch.randn(2, 8, 5, 6).to(memory_format=torch.channels_last)):
        torch.library.opcheck(_rational, (x.requires_grad_(), a, b, "A", backend))
        grad = torch.randn_like(x)
        torch.library.opcheck(_rational_backward, (grad, x.detach(), a.detach(), b.detach(), "A", backend))


def test_autocast_bf16_on_cpu():
    torch.manual_seed(0)
    layer = torch.nn.Linear(32, 64)
    a, b = torch.randn(6, requires_grad=True), torch.randn(4, requires_grad=True)
    x = torch.randn(16, 32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        h = layer(x)
        y = rational(h, a, b, "A", "cpu")
    assert h.dtype == torch.bfloat16 and y.dtype == torch.bfloat16
    y.float().sum().backward()
    assert a.grad.dtype == torch.float32 and torch.isfinite(a.grad).all()
    want = rational(layer(x), a.detach(), b.detach(), "A", "torch")
    assert rel_err(y.float(), want.detach().double()) < 3e-2
