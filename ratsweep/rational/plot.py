"""Looking at learned rationals: the curve over its init target, over the inputs it saw."""

from __future__ import annotations

import contextlib
from pathlib import Path

import torch
from torch import nn

from . import reference
from .fits import DOMAIN
from .module import Rational


@contextlib.contextmanager
def capture_inputs(model: nn.Module, max_samples: int = 100_000):
    """Record (a random sample of) what every Rational in `model` receives while the block runs.

    with capture_inputs(model) as seen:
        model(batch)
    plot_rational(layer, seen[layer], "layer.png")
    """
    seen: dict[nn.Module, torch.Tensor] = {}

    def hook(module, args):
        x = args[0].detach().flatten().float()
        if x.numel() > max_samples:
            x = x[torch.randint(x.numel(), (max_samples,), device=x.device)]
        prev = seen.get(module)
        seen[module] = x.cpu() if prev is None else torch.cat([prev, x.cpu()])[-max_samples:]

    handles = [m.register_forward_pre_hook(hook) for m in model.modules() if isinstance(m, Rational)]
    # a compiled model's graph would not call the hooks: it runs eager here (torch._dynamo loads in
    # seconds, so only where something was compiled)
    compiled = any(getattr(m, "_compiled_call_impl", None) is not None for m in model.modules())
    try:
        with torch.compiler.set_stance("force_eager") if compiled else contextlib.nullcontext():
            yield seen
    finally:
        for h in handles:
            h.remove()


def rational_curve(x: torch.Tensor, numerator: torch.Tensor, denominator: torch.Tensor, version: str) -> torch.Tensor:
    """F(x) in float64 on the CPU, for plotting; version D without its training noise (as B)."""
    with torch.no_grad():
        return reference.forward(x, numerator.double().cpu(), denominator.double().cpu(), "B" if version == "D" else version)


def histogram_underlay(ax, values: torch.Tensor, bins: int) -> None:
    """A grey density histogram of `values` behind what is drawn on `ax` (on its own hidden y-axis)."""
    hist_ax = ax.twinx()
    hist_ax.hist(values.numpy(), bins=bins, color="0.85", density=True)
    hist_ax.set_yticks([])
    hist_ax.set_zorder(0)
    ax.set_zorder(1)
    ax.patch.set_visible(False)


def plot_rational(module: Rational, inputs: torch.Tensor | None = None, path: str | Path = "rational.png",
                  title: str | None = None) -> Path:
    """Save a PNG of the module's F(x) over its init target, with a histogram of `inputs` if given.

    The x-range covers the fitted domain [-3, 3] and the central 99.8 % of the inputs.
    """
    import matplotlib  # noqa: PLC0415  (plotting is optional for the activation itself)

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    lo, hi = DOMAIN
    sample = None
    if inputs is not None:
        sample = inputs.detach().flatten().double().cpu()
        sample = sample[torch.isfinite(sample)]
        if sample.numel():
            lo = min(lo, torch.quantile(sample[:1_000_000], 0.001).item())
            hi = max(hi, torch.quantile(sample[:1_000_000], 0.999).item())
    x = torch.linspace(lo, hi, 1000, dtype=torch.float64)
    learned = rational_curve(x, module.numerator, module.denominator, module.version)
    with torch.no_grad():
        target = module.init_target(x)

    fig, ax = plt.subplots(figsize=(5, 3.6), dpi=120)
    if sample is not None and sample.numel():
        histogram_underlay(ax, sample.clamp(lo, hi), bins=80)
    name = module.init if isinstance(module.init, str) else "init"
    ax.plot(x.numpy(), target.numpy(), "--", color="0.4", lw=1.2, label=f"{name} (init target)")
    ax.plot(x.numpy(), learned.numpy(), color="C3", lw=1.8, label=f"rational {module.degrees} {module.version}")
    ax.axvspan(*DOMAIN, color="C0", alpha=0.05, lw=0)
    ax.set_xlabel("x")
    ax.set_ylabel("F(x)")
    ax.legend(loc="upper left", fontsize=8, frameon=False)
    if title:
        ax.set_title(title, fontsize=9)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path
