"""Initial coefficients: least-squares fits of F = P/Q to a target activation on [-3, 3].

For degrees (5, 4), every target the rational_activations package publishes a fit for (versions
A-D: identity, relu, leaky_relu, tanh, sigmoid, gelu, swish = silu) starts from the package's own
coefficients (published_fits.json): the paper's runs started from exactly those, and a closer refit
differs far from [-3, 3] (GELU: by ~2 at x = -10). Every other degree pair and target uses this
project's fits, stored for every degree pair up to (8, 8) and versions A, B, C (D uses B's) in
fits.json next to this file and only read at run time. Regenerate them (prints the fit errors):

    python -m ratsweep.rational.fits

Any other callable is fitted when a Rational is built with it (needs scipy). Fits are only meaningful
on the fitted domain: outside it a rational of degree (m, n) grows like x^(m-n) times a constant.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from functools import cache
from pathlib import Path

import torch
import torch.nn.functional as F

from . import reference

DOMAIN = (-3.0, 3.0)
GRID_POINTS = 2001
MAX_DEGREE = 8
FIT_VERSIONS = ("A", "B", "C")
FITS_FILE = Path(__file__).with_name("fits.json")
PUBLISHED_FILE = Path(__file__).with_name("published_fits.json")  # rational_activations 0.2.0's (5, 4) fits
PUBLISHED_NAMES = {"silu": "swish"}  # the package's names where they differ from ours

TARGETS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "relu": F.relu,
    "leaky_relu": lambda x: F.leaky_relu(x, 0.01),
    "gelu": F.gelu,
    "silu": F.silu,
    "tanh": torch.tanh,
    "sigmoid": torch.sigmoid,
    "identity": lambda x: x,
}


def fit_version(version: str) -> str:
    """Version D shares version B's form (its noise is only applied in training)."""
    return "B" if version == "D" else version


def denominator_size(degrees: tuple[int, int], version: str) -> int:
    return degrees[1] + (1 if fit_version(version) == "C" else 0)


def _grid() -> torch.Tensor:
    return torch.linspace(*DOMAIN, GRID_POINTS, dtype=torch.float64)


def _split(theta, degrees, version):
    theta = torch.as_tensor(theta, dtype=torch.float64)
    return theta[: degrees[0] + 1], theta[degrees[0] + 1 :]


def _errors(target: torch.Tensor, numerator, denominator, version: str) -> tuple[float, float]:
    residual = reference.forward(_grid(), numerator, denominator, version) - target
    return residual.abs().max().item(), residual.pow(2).mean().sqrt().item()


def _linearized_start(x, y, degrees, version) -> list[float]:
    """Solve P(x) - y (1 + sum c_k x^k) = 0 in the least-squares sense (linear in a, c)."""
    m, n = degrees
    cols = [x**j for j in range(m + 1)] + [-y * x**k for k in range(1, n + 1)]
    sol = torch.linalg.lstsq(torch.stack(cols, 1), y.unsqueeze(1)).solution.squeeze(1)
    a, c = sol[: m + 1], sol[m + 1 :]
    if version == "C":  # b_0 = 0.9 gives Q = 0.1 + |1 + sum c_k x^k - 0.1|, the same Q where that is >= 0.1
        return a.tolist() + [0.9] + c.tolist()
    return a.tolist() + c.tolist()


def _random_start(x, y, degrees, version, generator: torch.Generator) -> list[float]:
    """A random denominator and the numerator that is optimal for it (a linear problem)."""
    m = degrees[0]
    scale = 0.1 if torch.rand((), generator=generator) < 0.5 else 1.0
    b = scale * torch.rand(denominator_size(degrees, version), dtype=torch.float64, generator=generator)
    q = 1.0 / reference.forward(x, torch.ones(1, dtype=torch.float64), b, version)
    vander = torch.stack([x**j for j in range(m + 1)], 1)
    a = torch.linalg.lstsq(vander, (y * q).unsqueeze(1)).solution.squeeze(1)
    return a.tolist() + b.tolist()


# A tiny ridge term keeps coefficients O(1): version C is nearly invariant to scaling P and Q together,
# and without it the solver drifts towards huge coefficients (and poles) for no gain in fit.
RIDGE = 1e-6


def fit_rational(
    target: Callable[[torch.Tensor], torch.Tensor],
    degrees: tuple[int, int],
    version: str = "A",
    starts: list[list[float]] | None = None,
    restarts: int = 4,
    seed: int = 0,
) -> dict:
    """Least-squares fit on DOMAIN: {"numerator", "denominator", "max_err", "rms_err"}.

    Levenberg-Marquardt from the linearized solution, the given starts and `restarts` random
    denominators; the best is then refined to convergence.
    """
    from scipy.optimize import least_squares  # noqa: PLC0415  (only needed to fit)

    version = fit_version(version)
    x = _grid()
    y = target(x).to(torch.float64)
    if y.shape != x.shape or not torch.isfinite(y).all():
        raise ValueError("init: the target must map a float64 tensor to finite values of the same shape")
    ridge = math.sqrt(RIDGE)

    def residual(theta):
        a, b = _split(theta, degrees, version)
        return torch.cat([reference.forward(x, a, b, version) - y, ridge * torch.as_tensor(theta)]).numpy()

    def jacobian(theta):
        a, b = _split(theta, degrees, version)
        eye = ridge * torch.eye(len(theta), dtype=torch.float64)
        return torch.cat([reference.coefficient_jacobian(x, a, b, version), eye]).numpy()

    generator = torch.Generator().manual_seed(seed)
    candidates = [_linearized_start(x, y, degrees, version), *(starts or [])]
    candidates += [_random_start(x, y, degrees, version, generator) for _ in range(restarts)]
    best = None
    for start in candidates:
        result = least_squares(residual, start, jac=jacobian, method="lm", max_nfev=500)
        if best is None or result.cost < best.cost:
            best = result
    best = least_squares(residual, best.x, jac=jacobian, method="lm", max_nfev=5000, xtol=1e-12, ftol=1e-12)
    a, b = _split(best.x, degrees, version)
    max_err, rms_err = _errors(y, a, b, version)
    return {"numerator": a.tolist(), "denominator": b.tolist(), "max_err": max_err, "rms_err": rms_err}


@cache
def _stored() -> dict:
    return json.loads(FITS_FILE.read_text())["fits"]


@cache
def _published() -> dict:
    return json.loads(PUBLISHED_FILE.read_text())


def published_fit(name: str, degrees: tuple[int, int], version: str) -> dict | None:
    """The rational_activations package's coefficients for `name`, if it publishes a fit of these
    degrees and version ({"numerator", "denominator", "source"}), else None."""
    published = _published()
    if tuple(degrees) != tuple(published["degrees"]):
        return None
    entry = published["versions"].get(version, {}).get(PUBLISHED_NAMES.get(name, name))
    if entry is None:
        return None
    return {"numerator": entry["numerator"], "denominator": entry["denominator"], "source": published["source"]}


def stored_fit(name: str, degrees: tuple[int, int], version: str) -> dict:
    """The coefficients `init=name` starts from: the package's published fit where there is one
    (published_fit), else this project's own; KeyError names what exists."""
    published = published_fit(name, degrees, version)
    if published is not None:
        return published
    fits = _stored()
    if name not in fits:
        raise KeyError(f"init: no stored fit for {name!r}; expected one of {', '.join(sorted(fits))} or a callable")
    key = f"{degrees[0]},{degrees[1]}"
    entry = fits[name][fit_version(version)].get(key)
    if entry is None:
        raise KeyError(f"init: no stored fit for degrees {degrees}; stored degrees go up to ({MAX_DEGREE}, {MAX_DEGREE})")
    return entry


def _pad(coefs: list[float], size: int) -> list[float]:
    return coefs + [0.0] * (size - len(coefs))


def _fit_table(job: tuple[str, str]) -> tuple[str, str, dict]:
    """All degree pairs of one target and version. Each pair is warm-started from its lower
    neighbours padded with zeros, so the error never grows with the degree."""
    name, version = job
    table: dict = {}
    for m in range(1, MAX_DEGREE + 1):
        for n in range(1, MAX_DEGREE + 1):
            starts = [
                _pad(prev["numerator"], m + 1) + _pad(prev["denominator"], denominator_size((m, n), version))
                for prev in (table.get(f"{m - 1},{n}"), table.get(f"{m},{n - 1}"))
                if prev
            ]
            table[f"{m},{n}"] = fit_rational(TARGETS[name], (m, n), version, starts)
    return name, version, table


def generate(processes: int | None = None) -> dict:
    from multiprocessing import Pool  # noqa: PLC0415

    torch.set_num_threads(1)
    jobs = [(name, version) for name in TARGETS for version in FIT_VERSIONS]
    fits: dict = {name: {} for name in TARGETS}
    with Pool(processes) as pool:
        for name, version, table in pool.imap_unordered(_fit_table, jobs):
            fits[name][version] = table
            print(f"  fitted {name} {version}", flush=True)
    return {name: {v: fits[name][v] for v in FIT_VERSIONS} for name in TARGETS}


def main() -> None:
    t0 = time.time()
    fits = generate()
    payload = {
        "format": 1,
        "domain": list(DOMAIN),
        "grid_points": GRID_POINTS,
        "generated_by": "python -m ratsweep.rational.fits",
        "fits": fits,
    }
    FITS_FILE.write_text(json.dumps(payload, indent=None, separators=(",", ":")) + "\n")
    print(f"wrote {FITS_FILE} in {time.time() - t0:.0f} s\n")
    print(f"{'target':<11} {'version':<8} {'(5,4) max':>10} {'(5,4) rms':>10} {'worst max':>10} {'at':>6}")
    for name, versions in fits.items():
        for version, table in versions.items():
            worst_key = max(table, key=lambda k: table[k]["max_err"])
            print(
                f"{name:<11} {version:<8} {table['5,4']['max_err']:>10.2e} {table['5,4']['rms_err']:>10.2e} "
                f"{table[worst_key]['max_err']:>10.2e} {worst_key:>6}"
            )
    assert all(math.isfinite(e["rms_err"]) for v in fits.values() for t in v.values() for e in t.values())


if __name__ == "__main__":
    main()
