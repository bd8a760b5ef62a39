"""The `torch` backend: forward and hand-derived backward in plain torch ops.

It follows kernels/rational_math.h term by term (Q = q0 + |D(t)|, see there) and is the reference the
compiled backends are tested against; run in float64 it is checked against numerical derivatives.
Inputs in fp16/bf16 are computed in fp32, as the kernels do.
"""

from __future__ import annotations

import torch

_Q0 = {"A": 0.0, "B": 1.0, "C": 0.1}


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


class _Terms:
    """P, Q and their x-derivatives at every element; the pieces forward, backward and fits need."""

    def __init__(self, x: torch.Tensor, numerator, denominator, version: str, derivative: bool):
        a = numerator.to(x.dtype)
        d = denominator_polynomial(denominator.to(x.dtype), version)
        self.t = x.abs() if version == "A" else x
        self.p, self.dp = _horner(a, x, derivative)
        s, ds = _horner(d, self.t, derivative)
        if version == "A":
            self.sign = torch.ones_like(s)
            self.q = s
            self.dq = ds * torch.sign(x) if derivative else None
        else:
            self.sign = torch.sign(s)
            self.q = _Q0[version] + s.abs()
            self.dq = self.sign * ds if derivative else None


def forward(x: torch.Tensor, numerator, denominator, version: str) -> torch.Tensor:
    xc = x.to(compute_dtype(x.dtype))
    terms = _Terms(xc, numerator, denominator, version, derivative=False)
    return (terms.p / terms.q).to(x.dtype)


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
        return grad_d[..., 1:] * torch.sign(denominator.to(grad_d.dtype))
    if version == "B":
        return grad_d[..., 1:]
    return grad_d


def backward(grad: torch.Tensor, x: torch.Tensor, numerator, denominator, version: str):
    dtype = compute_dtype(x.dtype)
    xc, g = x.to(dtype), grad.to(dtype)
    terms = _Terms(xc, numerator, denominator, version, derivative=True)
    r = 1.0 / terms.q
    f = terms.p * r
    w = g * r
    dx = w * (terms.dp - f * terms.dq)
    v = -(w * f) * terms.sign
    grad_num = _power_sums(w, xc, numerator.numel())
    grad_d = _power_sums(v, terms.t, denominator_len(denominator, version))
    grad_den = _chain_denominator(grad_d, denominator, version)
    return dx.to(x.dtype), grad_num.to(numerator.dtype), grad_den.to(denominator.dtype)


def coefficient_jacobian(x: torch.Tensor, numerator, denominator, version: str) -> torch.Tensor:
    """dF(x_i)/d(numerator, denominator), one row per element of a 1-D x (used to fit inits)."""
    terms = _Terms(x, numerator, denominator, version, derivative=False)
    r = 1.0 / terms.q
    v = -(terms.p * r * r) * terms.sign
    num_cols = torch.stack([r * x**j for j in range(numerator.numel())], dim=1)
    d_cols = torch.stack([v * terms.t**k for k in range(denominator_len(denominator, version))], dim=1)
    return torch.cat([num_cols, _chain_denominator(d_cols, denominator, version)], dim=1)
