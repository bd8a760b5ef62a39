"""The `torch` backend: forward and hand-derived backward in plain torch ops.

It follows kernels/rational_math.h term by term (Q = q0 + |D(t)|, the near and far forms, copysign for
the derivatives of |.|; see there) and is the reference the compiled backends are tested against; run
in float64 it is checked against numerical derivatives. Inputs in fp16/bf16 are computed in fp32, as
the kernels do. Both forms are computed for every element and selected per element, with tensor-valued
degrees, so nothing here synchronizes with the device (CUDA graphs can capture it).
"""

from __future__ import annotations

import torch

_Q0 = {"A": 0.0, "B": 1.0, "C": 0.1}
FAR = 256.0  # |x| above which the far form is used (rs::FAR)


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def denominator_polynomial(denominator: torch.Tensor, version: str) -> torch.Tensor:
    """Coefficients d_0..d_n of D(t)."""
    if version == "A":
        return torch.cat([denominator.new_ones(1), denominator.abs()])
    if version == "B":
        return torch.cat([denominator.new_zeros(1), denominator])
    return denominator


def _horner(coefs: torch.Tensor, t: torch.Tensor, derivative: bool):
    value = coefs[-1].expand_as(t)
    slope = torch.zeros_like(t) if derivative else None
    for c in coefs.flip(0)[1:]:
        if derivative:
            slope = slope * t + value
        value = value * t + c
    return value, slope


def unit_sign(t: torch.Tensor) -> torch.Tensor:
    """copysign(1, t): the derivative of |t| as rational_math.h takes it (+1 at +0)."""
    return torch.copysign(torch.ones_like(t), t)


class _Terms:
    """The near form: P, Q and their x-derivatives at every element; the pieces forward, backward and
    fits need."""

    def __init__(self, x: torch.Tensor, numerator, denominator, version: str, derivative: bool):
        a = numerator.to(x.dtype)
        d = denominator_polynomial(denominator.to(x.dtype), version)
        self.t = x.abs() if version == "A" else x
        self.p, self.dp = _horner(a, x, derivative)
        s, ds = _horner(d, self.t, derivative)
        if version == "A":
            self.sign = torch.ones_like(s)
            self.q = s
            self.dq = ds * unit_sign(x) if derivative else None
        else:
            self.sign = unit_sign(s)
            self.q = _Q0[version] + s.abs()
            self.dq = self.sign * ds if derivative else None


def _degree(coefs: torch.Tensor) -> torch.Tensor:
    """The index of the last nonzero coefficient (0 if none), as a tensor."""
    index = torch.arange(coefs.numel(), device=coefs.device)
    return torch.where(coefs != 0, index, 0).max()


def _reversed_horner(coefs: torch.Tensor, degree: torch.Tensor, u: torch.Tensor):
    """c(u) = coefs[degree] + coefs[degree - 1] u + ... + coefs[0] u^degree, and c'(u). The coefficients
    are first shifted right by len - 1 - degree, zeros in front, so that plain Horner over all of them
    gives c(u): the zeros add nothing (no select per step on the elements)."""
    index = torch.arange(coefs.numel(), device=coefs.device) - (coefs.numel() - 1 - degree)
    shifted = torch.where(index >= 0, coefs[index.clamp(min=0)], 0.0)
    value, slope = shifted[0].expand_as(u), torch.zeros_like(u)
    for c in shifted[1:]:
        slope = slope * u + value
        value = value * u + c
    return value, slope


def _ipow(x: torch.Tensor, u: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
    """x^e for an integer tensor e of either sign, from x and u = 1/x."""
    return torch.where(e >= 0, x, u).pow(e.abs())


def _far_elements(x: torch.Tensor) -> tuple[torch.Tensor, bool]:
    """Which elements take the far form, and whether to compute the far form at all: on the CPU only if
    some element does; on a GPU always (asking would synchronize with the device)."""
    far = x.abs() > FAR
    return far, x.device.type != "cpu" or bool(far.any())


class _FarTerms:
    """The far form at every element (rational_math.h's far_terms): x = 1 where |x| <= FAR, a
    placeholder whose terms are all finite, so masked sums stay exact."""

    def __init__(self, x: torch.Tensor, far: torch.Tensor, numerator, denominator, version: str):
        self.far = far
        self.x = torch.where(far, x, torch.ones_like(x))
        a = numerator.to(x.dtype)
        d = denominator_polynomial(denominator.to(x.dtype), version)
        self.m, self.n = _degree(a), _degree(d)
        self.u = 1.0 / self.x
        self.t = self.x.abs() if version == "A" else self.x
        self.v = self.u.abs() if version == "A" else self.u
        self.p, self.dp = _reversed_horner(a, self.m, self.u)
        self.d, self.dd = _reversed_horner(d, self.n, self.v)
        self.r = 1.0 / (_Q0[version] * self.v.abs().pow(self.n) + self.d.abs())
        self.sign_x = unit_sign(self.x)
        self.sign_n = torch.where(self.n % 2 == 1, self.sign_x, torch.ones_like(self.x))
        self.sign_d = torch.ones_like(self.x) if version == "A" else unit_sign(self.d)
        # S of backward_far: sign(x)^m' for A, sign(x)^n' otherwise
        self.sign_s = torch.where(self.m % 2 == 1, self.sign_x, torch.ones_like(self.x)) if version == "A" else self.sign_n

    def value(self) -> torch.Tensor:
        return self.sign_n * _ipow(self.x, self.u, self.m - self.n) * self.p * self.r


def forward(x: torch.Tensor, numerator, denominator, version: str) -> torch.Tensor:
    xc = x.to(compute_dtype(x.dtype))
    far, any_far = _far_elements(xc)
    if not any_far:
        terms = _Terms(xc, numerator, denominator, version, derivative=False)
        return (terms.p / terms.q).to(x.dtype)
    terms = _Terms(torch.where(far, 0.0, xc), numerator, denominator, version, derivative=False)
    value = _FarTerms(xc, far, numerator, denominator, version).value()
    return torch.where(far, value, terms.p / terms.q).to(x.dtype)


def _power_sums(w: torch.Tensor, base: torch.Tensor, count: int) -> torch.Tensor:
    """[sum(w), sum(w base), ..., sum(w base^(count-1))]"""
    sums = []
    for _ in range(count):
        sums.append(w.sum())
        w = w * base
    return torch.stack(sums)


def denominator_len(denominator: torch.Tensor, version: str) -> int:
    """Number of coefficients of D(t): n + 1."""
    return denominator.numel() + (0 if version == "C" else 1)


def _chain_denominator(grad_d: torch.Tensor, denominator: torch.Tensor, version: str) -> torch.Tensor:
    """Chain derivatives w.r.t. d_0..d_n (last dim) to the trainable denominator coefficients."""
    if version == "A":
        return grad_d[..., 1:] * unit_sign(denominator.to(grad_d.dtype))
    if version == "B":
        return grad_d[..., 1:]
    return grad_d


def backward(grad: torch.Tensor, x: torch.Tensor, numerator, denominator, version: str):
    dtype = compute_dtype(x.dtype)
    xc, g = x.to(dtype), grad.to(dtype)
    far_mask, any_far = _far_elements(xc)
    # near form: far elements as x = 0, dy = 0 (finite, adding nothing), as the kernels do
    xn, gn = (torch.where(far_mask, 0.0, xc), torch.where(far_mask, 0.0, g)) if any_far else (xc, g)
    terms = _Terms(xn, numerator, denominator, version, derivative=True)
    r = 1.0 / terms.q
    f = terms.p * r
    w = gn * r
    dx = w * (terms.dp - f * terms.dq)
    v = -(w * f) * terms.sign
    grad_num = _power_sums(w, xn, numerator.numel())
    grad_d = _power_sums(v, terms.t, denominator_len(denominator, version))
    if any_far:
        dx, grad_num, grad_d = _add_far(dx, grad_num, grad_d, g, _FarTerms(xc, far_mask, numerator, denominator, version))
    grad_den = _chain_denominator(grad_d, denominator, version)
    return dx.to(x.dtype), grad_num.to(numerator.dtype), grad_den.to(denominator.dtype)


def _add_far(dx, grad_num, grad_d, g, far: _FarTerms):
    """backward's far form (rational_math.h's backward_far) on the far elements: their dx, and their
    terms added to the coefficient gradients."""
    gf = torch.where(far.far, g, 0.0)
    slope = (far.m * far.p - far.u * far.dp) - far.sign_d * far.p * (far.n * far.d - far.v * far.dd) * far.r
    dx = torch.where(far.far, gf * far.sign_n * _ipow(far.x, far.u, far.m - far.n - 1) * far.r * slope, dx)
    wf = gf * far.sign_n * far.r
    grad_num = grad_num + torch.stack([(wf * _ipow(far.x, far.u, j - far.n)).sum() for j in range(len(grad_num))])
    vf = -gf * far.sign_d * far.p * far.sign_s * far.r * far.r
    grad_d = grad_d + torch.stack([(vf * _ipow(far.t, far.v, far.m + k - 2 * far.n)).sum() for k in range(len(grad_d))])
    return dx, grad_num, grad_d


def coefficient_jacobian(x: torch.Tensor, numerator, denominator, version: str) -> torch.Tensor:
    """dF(x_i)/d(numerator, denominator), one row per element of a 1-D x (used to fit inits)."""
    terms = _Terms(x, numerator, denominator, version, derivative=False)
    r = 1.0 / terms.q
    v = -(terms.p * r * r) * terms.sign
    num_cols = torch.stack([r * x**j for j in range(numerator.numel())], dim=1)
    d_cols = torch.stack([v * terms.t**k for k in range(denominator_len(denominator, version))], dim=1)
    return torch.cat([num_cols, _chain_denominator(d_cols, denominator, version)], dim=1)
