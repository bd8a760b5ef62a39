"""Independent formulations of the rational activation to test the backends against: float64 through
autograd, and exact (mpmath) values for inputs where float64's powers would overflow.

Written like the rational_activations package (explicit powers, |b_k x^k| for version A), not like
ratsweep's Horner and far forms, so agreement with them checks the hand-derived backward passes."""

import math

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


def exact_terms(x, a, b, version, dps=50):
    """Per element of x, in mpmath at `dps` digits (no overflow at any float), from the textbook
    formulas: F, dF/dx, the scale of dF/dx (|P'/Q| + |P Q'/Q^2|: dF/dx is their difference, which
    cancels for large x), and the rows dF/da_j, dF/db_k. At +-inf, F is its limit (F at +-1e1000) and
    the derivatives are NaN (not compared); NaN gives NaN. Derivatives of |.| use copysign(1, .)."""
    import mpmath

    nan = float("nan")
    rows = []

    def unit_sign(v):
        return 1 if v >= 0 else -1

    with mpmath.workdps(dps):
        A = [mpmath.mpf(float(v)) for v in a]
        B = [mpmath.mpf(float(v)) for v in b]

        def parts(X):
            P = sum(A[j] * X**j for j in range(len(A)))
            dP = sum(j * A[j] * X ** (j - 1) for j in range(1, len(A)))
            if version == "A":
                Q = 1 + sum(abs(B[k]) * abs(X) ** (k + 1) for k in range(len(B)))
                dQ = sum((k + 1) * abs(B[k]) * abs(X) ** k for k in range(len(B))) * unit_sign(X)
                dQdb = [unit_sign(B[k]) * abs(X) ** (k + 1) for k in range(len(B))]
            else:
                first = 0 if version == "C" else 1
                D = sum(B[k] * X ** (k + first) for k in range(len(B)))
                s = unit_sign(D)
                Q = (mpmath.mpf("0.1") if version == "C" else 1) + abs(D)
                dQ = s * sum((k + first) * B[k] * X ** (k + first - 1) for k in range(len(B)) if k + first > 0)
                dQdb = [s * X ** (k + first) for k in range(len(B))]
            return P, dP, Q, dQ, dQdb

        for value in x.double().tolist():
            if value != value:
                rows.append((nan, nan, nan, [nan] * len(A), [nan] * len(B)))
                continue
            if abs(value) == float("inf"):
                P, _, Q, _, _ = parts(mpmath.mpf("1e1000") * (1 if value > 0 else -1))
                rows.append((float(P / Q), nan, nan, [nan] * len(A), [nan] * len(B)))
                continue
            X = mpmath.mpf(value)
            P, dP, Q, dQ, dQdb = parts(X)
            rows.append((
                float(P / Q), float(dP / Q - P * dQ / Q**2), float(abs(dP / Q) + abs(P * dQ / Q**2)),
                [float(X**j / Q) for j in range(len(A))], [float(-P / Q**2 * d) for d in dQdb],
            ))
    return rows


LARGE = {  # |x| far beyond where Horner in x overflows fp32 (~6e7 at degree 5), within each dtype's range
    torch.float32: [300.0, 1e4, 1e8, 3e38],
    torch.bfloat16: [300.0, 1e4, 1e8, 3e38],
    torch.float16: [300.0, 1e4, 6e4],
}
LARGE_TOL = {torch.float32: 1e-5, torch.bfloat16: 1.6e-2, torch.float16: 2e-3}


def assert_close_or_overflows(got: float, want: float, scale: float, tol: float, dtype: torch.dtype, what: str) -> None:
    """got within tol x scale of want (or one step of the dtype's subnormals) where want fits the dtype
    with room, the same infinity where it does not fit at all, a number (or infinity) of want's sign at
    the edge of the range; NaN where want is NaN."""
    limit = torch.finfo(dtype).max
    if want != want:
        assert got != got, f"{what}: {got}, expected NaN"
    elif abs(want) > 2 * limit:
        assert got == (float("inf") if want > 0 else float("-inf")), f"{what}: {got}, expected {want:.3e} to overflow"
    elif scale < limit / 2:
        step = torch.finfo(dtype).tiny * torch.finfo(dtype).eps
        assert abs(got - want) <= tol * scale + step, f"{what}: {got!r}, expected {want!r} (scale {scale:.3e})"
    else:
        assert got == got and math.copysign(1, got) == math.copysign(1, want), f"{what}: {got}, expected about {want:.3e}"


def mixed_inputs(dtype: torch.dtype) -> list[torch.Tensor]:
    """Far, infinite and NaN elements among ordinary ones: a far element with only a NaN after it (a NaN
    must not hide it), and infinities on both sides of one."""
    far = LARGE[dtype][-2]
    inf, nan = float("inf"), float("nan")
    return [torch.tensor(values).to(dtype) for values in ([far, nan], [1.0, inf, -far, -inf, 0.5, -2.0])]
