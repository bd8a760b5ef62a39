"""approx: fit a 1-D function with a small MLP, the same parameter budget for every activation.

The paper's expressivity claim made visible: a rational activation composes into high-degree
rational functions, so at a matched parameter count it should fit kinks (abs, relu), sharp steps
and near-poles with less error than ReLU-type activations. Inputs are drawn from [-1, 1], where the
targets' features (kink at 0, step of width ~0.1, bump with poles at ±0.1i) sit in the middle;
the error is measured on a dense grid of that interval. No data to download; a run takes seconds.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from ..config import check
from ..registry import register_architecture, register_experiment
from .common import (
    Activation,
    RationalConfig,
    Session,
    activation_factory,
    check_finite,
    check_seed,
    checkpoint,
    evaluating,
    num_params,
    plot_rationals,
    rational_field,
    rational_param_groups,
    restore,
    saved_figure,
    seed_everything,
)

Target = Literal["abs", "relu", "gelu", "step", "pole", "sin"]
TARGET_FUNCTIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "abs": torch.abs,  # a kink: what ReLU networks represent exactly, smooth activations only approach
    "relu": torch.relu,
    "gelu": F.gelu,
    "step": lambda x: torch.tanh(20 * x),  # a smoothed unit step, ~0.1 wide
    "pole": lambda x: 0.01 / (x**2 + 0.01),  # a bump of height 1 and width ~0.2; poles at ±0.1i
    "sin": lambda x: torch.sin(2 * math.pi * x),  # two periods: oscillation rather than a local feature
}
assert set(TARGET_FUNCTIONS) == set(Target.__args__)
DOMAIN = (-1.0, 1.0)
GRID_POINTS = 4001  # the dense grid mse and max_abs_err are measured on
SMOKE_STEPS, SMOKE_REPORT_EVERY = 60, 20


@dataclass
class ApproxConfig:
    target: Target = "abs"  # the function to fit on DOMAIN
    activation: Activation = "relu"  # every hidden layer's nonlinearity
    rational: RationalConfig = rational_field()  # degrees/version/init/lr_mult, when activation is rational
    depth: int = 2  # hidden layers, each Linear then activation
    param_budget: int = 400  # the widest MLP with at most this many trainable parameters (rational coefficients count)
    steps: int = 2000  # optimizer steps, one fresh batch each
    lr: float = 3e-3  # Adam, cosine-decayed to 0 over the steps
    batch_size: int = 256  # points drawn uniformly from DOMAIN per step
    report_every: int = 100  # steps between reports (and checkpoints)
    seed: int = 0  # model init and the sampled points

    def __post_init__(self):
        check_seed(self.seed)
        self.rational.default_lr_mult(1.0)
        check(self.depth >= 1, "depth", "an integer >= 1", self.depth)
        check(self.param_budget >= 1, "param_budget", "an integer >= 1", self.param_budget)
        check(self.steps >= 1, "steps", "an integer >= 1", self.steps)
        check(self.lr > 0, "lr", "a number > 0", self.lr)
        check(self.batch_size >= 1, "batch_size", "an integer >= 1", self.batch_size)
        check(self.report_every >= 1, "report_every", "an integer >= 1", self.report_every)


@register_architecture("mlp", family="mlp")
def mlp(activation: Callable[[], nn.Module], in_features: int, out_features: int, width: int, depth: int) -> nn.Module:
    """Fully connected: `depth` hidden layers of `width` units, each followed by activation()."""
    layers: list[nn.Module] = []
    for fan_in in [in_features] + [width] * (depth - 1):
        layers += [nn.Linear(fan_in, width), activation()]
    return nn.Sequential(*layers, nn.Linear(width, out_features))


def matched_width(fits: Callable[[int], bool]) -> int:
    """The largest width with fits(width) (0 if none); parameter counts grow with width, so bisect."""
    above = 1
    while fits(above):
        above *= 2
    within = above // 2
    while above - within > 1:
        middle = (within + above) // 2
        within, above = (middle, above) if fits(middle) else (within, middle)
    return within


def save_fit_plot(model: nn.Module, grid: torch.Tensor, target: torch.Tensor, config: ApproxConfig, metrics: dict, session: Session) -> None:
    """fit.png: the learned function over the target, and their difference, across the domain."""
    with evaluating(model):
        fit = model(grid)
    x, target, fit = grid.squeeze(1).numpy(), target.squeeze(1).numpy(), fit.squeeze(1).numpy()
    with saved_figure(session.artifact_dir / "fit.png", nrows=2, sharex=True) as (_, (top, bottom)):
        top.plot(x, fit, color="C3", lw=2, label=f"MLP, {config.activation}")
        top.plot(x, target, "--", color="k", lw=1, label=f"target: {config.target}")  # on top: a good fit hides it
        top.legend(fontsize=8, frameon=False)
        top.set_title(f"{num_params(model)} parameters: mse {metrics['mse']:.1e}, max |error| {metrics['max_abs_err']:.1e}", fontsize=9)
        bottom.plot(x, fit - target, color="C0", lw=1)
        bottom.set_ylabel("fit - target")
        bottom.set_xlabel("x")


@register_experiment("approx", config=ApproxConfig, metrics={"mse": "min", "max_abs_err": "min", "train_loss": "min"},
                     smoke={"steps": SMOKE_STEPS, "report_every": SMOKE_REPORT_EVERY})
def run(config: ApproxConfig, session: Session) -> dict[str, float]:
    """Fit a 1-D target with an MLP at a matched parameter count (the expressivity experiment)."""
    steps, report_every = config.steps, config.report_every
    activation = activation_factory(config.activation, config.rational)

    def build(width: int) -> nn.Module:
        return mlp(activation, in_features=1, out_features=1, width=width, depth=config.depth)

    width = matched_width(lambda width: num_params(build(width)) <= config.param_budget)
    check(width >= 1, "param_budget", f"an integer >= {num_params(build(1))} (a width-1 MLP)", config.param_budget)
    generator = seed_everything(config.seed)  # after the width search, whose models drew from the RNG
    model = build(width)
    session.log_params(num_params=num_params(model), width=width)

    optimizer = torch.optim.Adam(rational_param_groups(model, config.lr, config.rational.lr_mult))
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=steps)
    parts = {"model": model, "optimizer": optimizer, "schedule": schedule}
    target_fn = TARGET_FUNCTIONS[config.target]
    grid = torch.linspace(*DOMAIN, GRID_POINTS).unsqueeze(1)
    grid_target = target_fn(grid)

    start, metrics = 0, None  # metrics: the last reported (all a run restored at its end returns)
    if session.restored is not None:
        state = restore(session.restored, parts, generator)
        start, metrics = state["step"], state["metrics"]

    window_losses: list[float] = []  # training losses since the last report
    for step in range(start + 1, steps + 1):
        x = torch.empty(config.batch_size, 1).uniform_(*DOMAIN, generator=generator)
        loss = F.mse_loss(model(x), target_fn(x))
        check_finite(loss, f"step {step}")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        window_losses.append(loss.item())

        if step % report_every == 0 or step == steps:
            with evaluating(model):
                error = model(grid) - grid_target
            metrics = {
                "step": step,  # the MLflow step of this report (sweep.names.STEP_KEYS)
                "mse": error.square().mean().item(),
                "max_abs_err": error.abs().max().item(),
                "train_loss": sum(window_losses) / len(window_losses),
            }
            window_losses.clear()
            if step == steps:  # artifacts go out with the final report
                save_fit_plot(model, grid, grid_target, config, metrics, session)
                plot_rationals(model, session.artifact_dir)
            session.report(metrics, state=checkpoint(parts, generator, step=step, metrics=metrics))
    return metrics
