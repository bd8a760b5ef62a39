"""`Rational`: the trainable rational activation as an nn.Module."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from .fits import MAX_DEGREE, TARGETS, fit_rational, stored_fit
from .functional import BACKENDS, rational

VERSIONS = ("A", "B", "C", "D")
# Version D multiplies the numerator by U(1 - NOISE, 1 + NOISE), one draw per coefficient and call.
VERSION_D_NOISE = 0.1


def check_degrees(degrees) -> tuple[int, int]:
    ok = (
        isinstance(degrees, (tuple, list))
        and len(degrees) == 2
        and all(isinstance(d, int) and not isinstance(d, bool) and 1 <= d <= MAX_DEGREE for d in degrees)
    )
    if not ok:
        raise ValueError(f"degrees: expected two integers from 1 to {MAX_DEGREE} (numerator, denominator), got {degrees!r}")
    return int(degrees[0]), int(degrees[1])


class Rational(nn.Module):
    """F(x) = P(x)/Q(x) with trainable coefficients, one set per module shared by all channels.

    Args:
        degrees: (m, n), numerator and denominator degree, each 1..8. The paper uses (5, 4).
        init: what F starts as on [-3, 3]: a stored fit ("relu", "leaky_relu", "gelu", "silu",
            "tanh", "sigmoid", "identity") or any callable tensor -> tensor, fitted when built.
        version: "A" (pole-free, Q = 1 + sum |b_k||x|^k; the paper's), "B", "C", or "D" (B with
            multiplicative U(0.9, 1.1) noise on the numerator while training).
        backend: "auto", "torch", "cpu" or "cuda" (see ratsweep.rational.functional).
        inplace: accepted and ignored, so the class (or a partial of it) can be an `act_layer`.

    Parameters: `numerator` (a_0..a_m) and `denominator` (b_1..b_n; b_0..b_n for version C).
    """

    def __init__(
        self,
        degrees: tuple[int, int] = (5, 4),
        init: str | Callable[[torch.Tensor], torch.Tensor] = "leaky_relu",
        version: str = "A",
        backend: str = "auto",
        inplace: bool = False,
    ):
        super().__init__()
        self.degrees = check_degrees(degrees)
        if version not in VERSIONS:
            raise ValueError(f"version: expected one of {', '.join(VERSIONS)}, got {version!r}")
        if backend not in BACKENDS:
            raise ValueError(f"backend: expected one of {', '.join(BACKENDS)}, got {backend!r}")
        if isinstance(init, str):
            try:
                fit = stored_fit(init, self.degrees, version)
            except KeyError as e:
                raise ValueError(e.args[0]) from None
        elif callable(init):
            fit = fit_rational(init, self.degrees, version)
        else:
            raise ValueError(f"init: expected a name ({', '.join(TARGETS)}) or a callable, got {init!r}")
        self.init = init
        self.version = version
        self.backend = backend
        self.numerator = nn.Parameter(torch.tensor(fit["numerator"], dtype=torch.float32))
        self.denominator = nn.Parameter(torch.tensor(fit["denominator"], dtype=torch.float32))

    @property
    def init_target(self) -> Callable[[torch.Tensor], torch.Tensor]:
        """The function this module was initialized to approximate."""
        return TARGETS[self.init] if isinstance(self.init, str) else self.init

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        numerator = self.numerator
        if self.version == "D" and self.training:
            noise = torch.empty_like(numerator).uniform_(1 - VERSION_D_NOISE, 1 + VERSION_D_NOISE)
            numerator = numerator * noise
        return rational(x, numerator, self.denominator, self.version, self.backend)

    def extra_repr(self) -> str:
        init = self.init if isinstance(self.init, str) else getattr(self.init, "__name__", "callable")
        return f"degrees={self.degrees}, version={self.version}, init={init}, backend={self.backend}"
