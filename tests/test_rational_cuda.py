"""The CUDA backend against the float64 reference. Skipped without a CUDA GPU and CuPy."""

import pytest
import torch
from naive import naive_grads, random_coefficients

from ratsweep.rational import Rational, cuda, reference, resolve_backend
from ratsweep.rational.functional import rational

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not cuda.available(), reason="CuPy is not installed"),
]
VERSIONS = ("A", "B", "C")
# (dtype, relative tolerance for outputs/dx, for coefficient gradients)
DTYPES = [
    (torch.float64, 1e-12, 1e-12),
    (torch.float32, 1e-6, 1e-5),
    (torch.float16, 2e-3, 1e-4),
    (torch.bfloat16, 1.6e-2, 1e-4),
]


def rel_err(got, want):
    return ((got.double().cpu() - want.double().cpu()).norm() / want.double().cpu().norm().clamp_min(1e-30)).item()


def exact(x, dy, a, b, version):
    """float64 reference evaluated at the (rounded) inputs the kernel actually sees."""
    return naive_grads(x.double().cpu(), a.double().cpu(), b.double().cpu(), version, dy.double().cpu())


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("degrees", [(1, 1), (5, 4), (8, 8)])
@pytest.mark.parametrize("dtype,tol,coef_tol", DTYPES, ids=lambda v: str(v))
def test_matches_float64_reference(version, degrees, dtype, tol, coef_tol):
    g = torch.Generator().manual_seed(0)
    a, b = random_coefficients(degrees, version, g, dtype=torch.float32)
    x = (torch.randn(1 << 20, generator=g) * 1.5).clamp(-3, 3).to(dtype)
    dy = torch.randn(1 << 20, generator=g).to(dtype)
    want_y, want_dx, want_da, want_db = exact(x, dy, a, b, version)
    xs = x.cuda().requires_grad_()
    as_, bs = a.cuda().requires_grad_(), b.cuda().requires_grad_()
    y = rational(xs, as_, bs, version, "cuda")
    y.backward(dy.cuda())
    assert y.dtype == dtype and xs.grad.dtype == dtype and as_.grad.dtype == torch.float32
    scale = 10 if max(degrees) > 5 else 1  # degree-8 random polynomials cancel (see test_rational_numerics)
    assert rel_err(y, want_y) < tol * scale
    assert rel_err(xs.grad, want_dx) < tol * scale * 2
    assert rel_err(as_.grad, want_da) < coef_tol * scale
    assert rel_err(bs.grad, want_db) < coef_tol * scale


@pytest.mark.parametrize("version", VERSIONS)
def test_gradcheck_float64(version):
    g = torch.Generator().manual_seed(1)
    a, b = random_coefficients((3, 2), version, g, conditioned=False)
    x = torch.randn(301, dtype=torch.float64, generator=g)
    inputs = tuple(t.cuda().requires_grad_() for t in (x, a, b))
    assert torch.autograd.gradcheck(lambda x, a, b: rational(x, a, b, version, "cuda"), inputs)


@pytest.mark.parametrize(
    "make",
    [
        lambda dt: torch.randn(1, device="cuda").to(dt),
        lambda dt: torch.randn(7, device="cuda").to(dt),  # shorter than one vector
        lambda dt: torch.randn(4099, device="cuda").to(dt),  # a vector tail
        lambda dt: torch.randn((1 << 22) + 5, device="cuda").to(dt)[1:],  # misaligned start: scalar path
        lambda dt: torch.randn(8, 16, 33, 33, device="cuda").to(dt).to(memory_format=torch.channels_last),
        lambda dt: torch.randn(300, 257, device="cuda").to(dt).t(),  # non-contiguous
    ],
    ids=["one", "seven", "tail", "misaligned", "channels_last", "transposed"],
)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_shapes_and_layouts(make, dtype):
    a, b = random_coefficients((5, 4), "A", torch.Generator().manual_seed(2), dtype=torch.float32)
    x = make(dtype)
    if x.numel() > 4099:
        assert x.data_ptr() % 16 != 0 or x.dim() == 4 or not x.is_contiguous()
    dy = torch.randn(x.shape, device="cuda").to(dtype)
    xs = x.clone().requires_grad_()
    # poison what the caching allocator hands out next, so unwritten outputs show up
    torch.empty(x.numel() * 4, device="cuda").fill_(float("nan"))
    y = rational(xs, a.cuda(), b.cuda(), "A", "cuda")
    y.backward(dy)
    assert y.shape == x.shape and torch.isfinite(y).all() and torch.isfinite(xs.grad).all()
    want_y, want_dx, _, _ = exact(x, dy, a, b, "A")
    tol = 1e-6 if dtype == torch.float32 else 1.6e-2
    assert rel_err(y, want_y) < tol and rel_err(xs.grad, want_dx) < 2 * tol


def test_empty_tensor():
    x = torch.empty(0, 5, device="cuda", requires_grad=True)
    a, b = torch.randn(6, device="cuda", requires_grad=True), torch.randn(4, device="cuda", requires_grad=True)
    y = rational(x, a, b, "A", "cuda")
    y.sum().backward()
    assert y.shape == (0, 5) and torch.equal(a.grad, torch.zeros_like(a))


def test_deterministic_mode_is_bitwise_reproducible():
    a, b = random_coefficients((5, 4), "A", torch.Generator().manual_seed(3), dtype=torch.float32)
    a, b = a.cuda(), b.cuda()
    x, dy = torch.randn(1 << 22, device="cuda"), torch.randn(1 << 22, device="cuda")
    atomic = cuda.backward(dy, x, a, b, "A")
    torch.use_deterministic_algorithms(True)
    try:
        runs = [cuda.backward(dy, x, a, b, "A") for _ in range(3)]
    finally:
        torch.use_deterministic_algorithms(False)
    for run in runs[1:]:
        for u, v in zip(run, runs[0]):
            assert torch.equal(u, v)
    for u, v in zip(runs[0], atomic):
        assert rel_err(u, v) < 1e-5


def test_runs_on_the_current_stream():
    a, b = random_coefficients((5, 4), "B", torch.Generator().manual_seed(4), dtype=torch.float32)
    x = torch.randn(1 << 22, device="cuda")
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        x2 = x * 2  # queued on the side stream; the kernel must run after it on the same stream
        y = rational(x2, a.cuda(), b.cuda(), "B", "cuda")
    torch.cuda.current_stream().wait_stream(side)
    want = reference.forward((x * 2).double(), a.double().cuda(), b.double().cuda(), "B")
    assert rel_err(y, want) < 1e-6


def test_module_under_autocast_and_compile():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), Rational(init="gelu"), torch.nn.Conv2d(8, 4, 1)).cuda()
    assert resolve_backend("auto", torch.device("cuda")) == "cuda"
    x = torch.randn(4, 3, 16, 16, device="cuda")
    with torch.autocast("cuda", dtype=torch.float16):
        out = model(x)
    out.float().sum().backward()
    assert model[1].numerator.grad.dtype == torch.float32 and torch.isfinite(model[1].numerator.grad).all()
    compiled = torch.compile(model, fullgraph=True)
    assert torch.allclose(compiled(x), model(x), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("version", VERSIONS)
def test_half_precision_large_inputs_stay_finite(dtype, version):
    a, b = random_coefficients((5, 4), version, torch.Generator().manual_seed(5), dtype=torch.float32)
    b = b.abs() + 0.05
    x = torch.linspace(-1e4, 1e4, 40001).to(dtype)
    want = exact(x, torch.ones_like(x), a, b, version)[0]
    representable = want.abs() < torch.finfo(dtype).max / 2
    xs = x.cuda().requires_grad_()
    as_, bs = a.cuda().requires_grad_(), b.cuda().requires_grad_()
    y = rational(xs, as_, bs, version, "cuda")
    y.backward(torch.ones_like(y))
    assert torch.isfinite(y.cpu()[representable]).all()
    assert torch.isfinite(as_.grad).all() and torch.isfinite(bs.grad).all()
