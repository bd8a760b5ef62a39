"""An independent float64 formulation of the rational activation, differentiated by autograd.

Written like the rational_activations package (explicit powers, |b_k x^k| for version A), not like
ratsweep's Horner form, so agreement with it checks the hand-derived backward passes."""

import torch


def naive_rational(x, a, b, version):
    p = sum(a[j] * x**j for j in range(len(a)))
    if version == "A":
        q = 1 + sum((b[k] * x ** (k + 1)).abs() for k in range(len(b)))
    elif version == "B":
        q = 1 + sum(b[k] * x ** (k + 1) for k in range(len(b))).abs()
    else:
        q = 0.1 + sum(b[k] * x**k for k in range(len(b))).abs()
    return p / q


X_MAX = 3.0


def random_coefficients(degrees, version, generator=None, dtype=torch.float64, scale=0.5, conditioned=True):
    """Random coefficients. With `conditioned`, version C gets a b_0 that dominates the rest of
    b_0 + b_1 x + ... twice over on [-X_MAX, X_MAX] (with a random sign), so Q stays well away from its floor
    0.1 where fp32 rounding is amplified without bound; tests then clip x to that range."""
    m, n = degrees
    a = torch.randn(m + 1, dtype=dtype, generator=generator) * scale
    b = torch.randn(n + (version == "C"), dtype=dtype, generator=generator) * scale
    if version == "C" and conditioned:
        powers = X_MAX ** torch.arange(1, n + 1, dtype=dtype)
        sign = 1.0 if torch.rand((), generator=generator) < 0.5 else -1.0
        b[0] = sign * 2.0 * (1.0 + (b[1:].abs() * powers).sum())
    return a, b


def clip_inputs(version, x):
    return x.clamp(-X_MAX, X_MAX) if version == "C" else x


def naive_grads(x, a, b, version, dy):
    """(y, dx, da, db) in float64 by autograd through naive_rational."""
    x, a, b = (t.detach().double().requires_grad_() for t in (x, a, b))
    y = naive_rational(x, a, b, version)
    y.backward(dy.double())
    return y.detach(), x.grad, a.grad, b.grad


def coefficient_scales(x, a, b, version, dy):
    """Per coefficient, sum_i |dy_i| |dF(x_i)/dc| in float64: the scale of the sum a backend
    accumulates for that coefficient's gradient, so each component is checked against its own size
    (a component that is 1e-4 of the gradient's norm is still checked)."""
    x, dy = x.detach().double(), dy.detach().double()
    coefficients = torch.cat([a.detach().double(), b.detach().double()])
    m = len(a)
    jacobian = torch.func.jacfwd(lambda c: naive_rational(x, c[:m], c[m:], version))(coefficients)  # N x K
    scales = (dy.abs()[:, None] * jacobian.abs()).sum(0)
    return scales[:m], scales[m:]


def assert_coefficient_grads(got, want, scale, tol, name):
    """Every component of a coefficient gradient within tol x its own scale (coefficient_scales),
    not of the whole vector's norm."""
    error = (got.detach().double().cpu() - want).abs()
    bad = error > tol * scale + 1e-300
    assert not bad.any(), f"{name}[{bad.nonzero().flatten().tolist()}]: error {error[bad].tolist()} vs scale {scale[bad].tolist()}"
