"""A plugin experiment ("toy": fit x^2 with one hidden layer) and architecture ("digits_tiny")."""

import os
from dataclasses import dataclass

import torch
from torch import nn

from ratsweep.experiments.common import Activation, RationalConfig, activation_factory, check_finite, rational_field
from ratsweep.registry import register_architecture, register_experiment


@dataclass
class ToyConfig:
    activation: Activation = "relu"
    rational: RationalConfig = rational_field()
    steps: int = 30
    fail: bool = False  # raise mid-run: a crashing trial must not take the sweep down
    diverge: bool = False  # NaN loss on the second report: recorded FAILED, not retried
    report_as: str = "mse"  # the metric's name in reports: another name leaves the sweep's metric unreported
    note: str = ""  # free text (a str default of "" must survive best --format yaml)
    seed: int = 0
    threads: int = 0  # > 0: torch.set_num_threads(threads) and cuDNN benchmark on (process-wide flags a trial may set)


@register_experiment("toy", config=ToyConfig, metrics=("mse",))
def run(config: ToyConfig, session):
    """Fit x^2 on [-1, 1] with 8 hidden units."""
    torch.manual_seed(config.seed)
    model = nn.Sequential(nn.Linear(1, 8), activation_factory(config.activation, config.rational)(), nn.Linear(8, 1))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    x = torch.linspace(-1, 1, 64)[:, None]
    tiny = torch.tensor([1e-40])  # a subnormal float32: 0 when the trial flushes them
    session.log_params(num_params=sum(p.numel() for p in model.parameters()), denormals_flushed=bool((tiny * 1.0).item() == 0),
                       flags_at_start=f"{torch.get_num_threads()} {torch.backends.cudnn.benchmark}", pid=os.getpid())
    if config.threads:
        torch.set_num_threads(config.threads)
        torch.backends.cudnn.benchmark = True
    for step in range(2):
        for _ in range(config.steps):
            loss = (model(x) - x**2).pow(2).mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        if config.fail:
            raise RuntimeError("toy: asked to fail")
        check_finite(loss * float("nan") if config.diverge and step else loss, f"report {step}")
        session.report({config.report_as: loss.item()})
    (session.artifact_dir / "final.txt").write_text(f"mse {loss.item()}\n")  # after the last report
    return {config.report_as: loss.item()}


@register_architecture("digits_tiny", family="digits")
def digits_tiny(activation, num_classes=10):
    """64 -> 16 -> 10."""
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 16), activation(), nn.Linear(16, num_classes))
