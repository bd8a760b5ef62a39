"""What every experiment shares: the session it reports to, activation configs, divergence.

An experiment is a function `run(config, session) -> final metrics`. It knows nothing of Ray or
MLflow: the sweep hands it a session that turns reports into Tune results, checkpoints and MLflow
runs; tests and notebooks hand it a `LocalSession`.
"""

from __future__ import annotations

import contextlib
import copy
import fcntl
import math
import tempfile
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..config import check
from ..errors import ConfigError, DataError, Diverged  # noqa: F401  (DataError, Diverged: what experiments raise)
from ..rational import Rational, rational_param_groups, replace_activations  # noqa: F401  (re-exported)
from ..rational.fits import MAX_DEGREE, TARGETS

Activation = Literal["relu", "leaky_relu", "gelu", "silu", "tanh", "rational"]
RationalInit = Literal["relu", "leaky_relu", "gelu", "silu", "tanh", "sigmoid", "identity"]
FIXED_ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "relu": nn.ReLU,
    "leaky_relu": nn.LeakyReLU,  # negative slope 0.01, the function the paper's rationals start as
    "gelu": nn.GELU,
    "silu": nn.SiLU,
    "tanh": nn.Tanh,
}
assert set(RationalInit.__args__) <= set(TARGETS)


class Session(Protocol):
    """Where a running experiment reports to (a Ray Tune trial, or a LocalSession)."""

    smoke: bool  # shrink everything so the whole run takes seconds
    data_dir: Path  # where datasets live (experiments that need none ignore it)
    restored: dict[str, Any] | None  # the state passed with the last report, when resuming
    artifact_dir: Path  # files written here are attached to the run with the next report

    def report(self, metrics: Mapping[str, float], state: dict[str, Any] | None = None) -> None:
        """One step/epoch's metrics; `state` (torch.save-able) is what a resumed run restarts from."""

    def log_params(self, **params: Any) -> None:
        """Facts about the run beyond its config (e.g. num_params), attached with the next report."""


class LocalSession:
    """A session that keeps everything in memory: for tests, notebooks and scripts."""

    def __init__(self, smoke: bool = False, data_dir: str | Path = ".", restored: dict | None = None, artifact_dir=None):
        self.smoke, self.data_dir, self.restored = smoke, Path(data_dir), restored
        self.artifact_dir = Path(artifact_dir or tempfile.mkdtemp(prefix="ratsweep-artifacts-"))
        self.history: list[dict[str, float]] = []
        self.states: list[dict[str, Any] | None] = []
        self.params: dict[str, Any] = {}

    def report(self, metrics, state=None):
        # A snapshot, as a Tune checkpoint is: training goes on updating tensors in place after the report.
        self.history.append(dict(metrics))
        self.states.append(copy.deepcopy(state))

    def log_params(self, **params):
        self.params.update(params)


@dataclass
class RationalConfig:
    """The rational activation's knobs; they apply only when activation == "rational"."""

    degrees: tuple[int, int] = (5, 4)  # (numerator, denominator) degrees, 1..8 each; the paper's (5, 4)
    version: Literal["A", "B", "C", "D"] = "A"  # A: pole-free, the paper's (see Rational)
    init: RationalInit = "leaky_relu"  # what F starts as on [-3, 3]
    # None: the experiment's own default (its recipe's, e.g. 0.5 for CIFAR-10 augmented), filled in
    # by default_lr_mult, which the experiment config's __post_init__ calls.
    lr_mult: float | None = None  # the coefficients' learning rate is lr x lr_mult; null: the experiment's default

    def __post_init__(self):
        check(all(1 <= d <= MAX_DEGREE for d in self.degrees), "degrees", f"two integers from 1 to {MAX_DEGREE}", list(self.degrees))
        check(self.lr_mult is None or self.lr_mult > 0, "lr_mult", "a number > 0", self.lr_mult)

    def default_lr_mult(self, value: float) -> None:
        """Called by the experiment config's __post_init__: `value` unless lr_mult was given."""
        if self.lr_mult is None:
            self.lr_mult = value

    def default_init(self, value: str) -> None:
        """For subclasses whose init may be null (the experiment's default): `value` unless init was given."""
        if self.init is None:
            self.init = value


def rational_field(config_class: type[RationalConfig] = RationalConfig) -> Any:
    """A config's `rational` field: applies only when the config's activation is "rational".
    `config_class` is RationalConfig or a dataclass subclass that changes its defaults (the field's
    annotation must name the same class)."""
    return field(default_factory=config_class, metadata={"when": ("activation", "rational")})


def check_model(model: str, family: str, also: str = "") -> None:
    """A config's `model` names an architecture registered with this family (ConfigError with a
    did-you-mean otherwise): for experiments whose models come from the registry. `also`: the
    other forms the key takes, for the message."""
    from ..registry import architectures, did_you_mean  # noqa: PLC0415  (registry loads plugins on first use)

    known = list(architectures(family))
    if model not in known:
        raise ConfigError("model", f"expected one of {', '.join(known)} (architectures of family {family!r})"
                                   f"{', or ' + also if also else ''}, got {model!r}{did_you_mean(model, known)}")


def activation_factory(activation: str, rational: RationalConfig) -> Callable[[], nn.Module]:
    """A zero-argument constructor of the activation module (each call a fresh, independent one)."""
    if activation == "rational":
        return lambda: Rational(rational.degrees, init=rational.init, version=rational.version)
    return FIXED_ACTIVATIONS[activation]


def check_finite(loss: torch.Tensor | float, where: str) -> None:
    value = float(loss.detach() if isinstance(loss, torch.Tensor) else loss)
    if not math.isfinite(value):
        raise Diverged(f"loss is {value} at {where}")


def num_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


MAX_SEED = 2**32 - 1  # numpy's global RNG (seed_everything) takes no larger seed, nor a negative one


def check_seed(seed: int) -> None:
    """For the experiment config's __post_init__: a seed every RNG a trial seeds accepts."""
    check(0 <= seed <= MAX_SEED, "seed", f"an integer from 0 to {MAX_SEED}", seed)


def seed_everything(seed: int) -> torch.Generator:
    """Seed torch's and numpy's global RNGs (numpy: timm's mixup draws from it); returns the data RNG."""
    torch.manual_seed(seed)
    np.random.seed(seed)
    return torch.Generator().manual_seed(seed)


def plot_rationals(model: nn.Module, directory: Path, inputs: Mapping[nn.Module, torch.Tensor] | None = None) -> list[Path]:
    """activation_layer1.png, ...: one PNG per Rational module of the model, in the order the model
    holds them (its learned curve over its init target, titled with the module's path)."""
    from ..rational import plot_rational

    rationals = [(name, module) for name, module in model.named_modules() if isinstance(module, Rational)]
    return [plot_rational(module, None if inputs is None else inputs.get(module), directory / f"activation_layer{i}.png",
                          title=f"activation {i} of {len(rationals)} ({name or 'the model'})")
            for i, (name, module) in enumerate(rationals, 1)]


def rational_snapshot(model: nn.Module) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Every Rational's (numerator, denominator) by module path, copied to the CPU."""
    return {
        name: (module.numerator.detach().cpu().clone(), module.denominator.detach().cpu().clone())
        for name, module in model.named_modules()
        if isinstance(module, Rational)
    }


def plot_rational_evolution(model: nn.Module, snapshots: Mapping[int, Mapping[str, tuple[torch.Tensor, torch.Tensor]]],
                            inputs: Mapping[nn.Module, torch.Tensor], path: Path) -> Path | None:
    """One panel per Rational layer: its shape at each snapshot epoch ({epoch: rational_snapshot}),
    over a histogram of what the layer receives now (`inputs`, from capture_inputs), as in the
    paper's figure of the learned VGG8 activations across depth. None if the model has no Rational."""
    from ..rational.plot import histogram_underlay, rational_curve  # noqa: PLC0415

    layers = [(name, m) for name, m in model.named_modules() if isinstance(m, Rational)]
    if not layers:
        return None
    ncols = min(4, len(layers))
    nrows = math.ceil(len(layers) / ncols)
    with saved_figure(path, nrows, ncols, width=3.2 * ncols, squeeze=False) as (_, axes):
        for ax, (name, module) in zip(axes.flat, layers):
            seen = inputs.get(module)
            lo, hi = (-4.0, 4.0) if seen is None or not seen.numel() else (
                min(-1.0, torch.quantile(seen[:100_000].double(), 0.005).item()),
                max(1.0, torch.quantile(seen[:100_000].double(), 0.995).item()))
            x = torch.linspace(lo, hi, 400, dtype=torch.float64)
            if seen is not None and seen.numel():
                histogram_underlay(ax, seen[(seen >= lo) & (seen <= hi)], bins=60)
            for epoch, coefficients in sorted(snapshots.items()):
                y = rational_curve(x, *coefficients[name], module.version)
                ax.plot(x.numpy(), y.numpy(), lw=1.2, label=f"epoch {epoch}")
            ax.set_title(name, fontsize=8)
        axes.flat[0].legend(fontsize=6, frameon=False)
        for ax in list(axes.flat)[len(layers):]:
            ax.set_visible(False)
    return path


def checkpoint(parts: Mapping[str, Any], generator: torch.Generator, **progress: Any) -> dict[str, Any]:
    """What a resumed run restarts from: a copy of each part's state_dict, the RNG states, progress.

    `parts` are objects with state_dict()/load_state_dict() (model, optimizer, LR schedule), saved
    under their names; `generator` is the run's data RNG; `progress` (step, epoch, best so far,
    history) is stored alongside. Everything is copied, because training goes on updating tensors
    and lists in place after the report (a LocalSession keeps the state in memory).
    """
    assert not set(parts) & (set(progress) | {"rng"}), "part names must not clash with progress keys"
    rng = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "data": generator.get_state()}
    if torch.cuda.is_initialized():  # dropout and other draws on the GPU use its own generators
        rng["cuda"] = torch.cuda.get_rng_state_all()
    return {
        **{name: copy.deepcopy(part.state_dict()) for name, part in parts.items()},
        "rng": rng,
        **copy.deepcopy(progress),
    }


def restore(state: Mapping[str, Any], parts: Mapping[str, Any], generator: torch.Generator) -> Mapping[str, Any]:
    """Load a `checkpoint` into the parts and RNGs; returns the state, for its progress fields.

    Learning rates follow the current config, not the checkpoint's: under PBT a trial restarts from
    another trial's checkpoint with a mutated config (say rational.lr_mult), and the change must take
    effect. Each optimizer group's base rate becomes the one it was built with, its current rate is
    rescaled by the same factor (keeping the schedule's progress), and schedules get the new bases.
    Resuming with an unchanged config changes nothing.
    """
    configured = {
        name: [group.get("initial_lr", group["lr"]) for group in part.param_groups]
        for name, part in parts.items()
        if isinstance(part, torch.optim.Optimizer)
    }
    for name, part in parts.items():
        part.load_state_dict(state[name])
    for name, bases in configured.items():
        for group, base in zip(parts[name].param_groups, bases):
            saved_base = group.get("initial_lr", group["lr"])
            group["lr"] *= base / saved_base
            if "initial_lr" in group:
                group["initial_lr"] = base
    for part in parts.values():
        if isinstance(part, torch.optim.lr_scheduler.LRScheduler):
            part.base_lrs = [group.get("initial_lr", group["lr"]) for group in part.optimizer.param_groups]
    torch.set_rng_state(state["rng"]["torch"])
    np.random.set_state(state["rng"]["numpy"])
    generator.set_state(state["rng"]["data"])
    if "cuda" in state["rng"] and torch.cuda.is_available() and len(state["rng"]["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["rng"]["cuda"])
    return state


class Normalize(nn.Module):
    """uint8 N x C x H x W images -> float, per-channel (x / 255 - mean) / std, on the device."""

    def __init__(self, mean: tuple[float, ...], std: tuple[float, ...], device: torch.device):
        super().__init__()
        self.mean = torch.tensor(mean, device=device).view(1, -1, 1, 1) * 255
        self.inv_std = 1 / (torch.tensor(std, device=device).view(1, -1, 1, 1) * 255)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return (images.float() - self.mean) * self.inv_std


def evaluate_classifier(model: nn.Module, normalize: Normalize, images: torch.Tensor, labels: torch.Tensor, autocast,
                        batch_size: int) -> tuple[float, float]:
    """(mean cross-entropy, top-1 accuracy) of `model` over uint8 images on their device, in batches, without augmentation."""
    loss, correct = torch.zeros((), device=images.device), torch.zeros((), device=images.device)
    with evaluating(model):
        for start in range(0, len(labels), batch_size):
            x, y = normalize(images[start:start + batch_size]), labels[start:start + batch_size]
            with autocast():
                logits = model(x).float()
            loss += F.cross_entropy(logits, y, reduction="sum")
            correct += (logits.argmax(1) == y).sum()
    return loss.item() / len(labels), correct.item() / len(labels)


@contextlib.contextmanager
def evaluating(model: nn.Module) -> Iterator[nn.Module]:
    """The model in eval mode without autograd for the block (no version-D noise), then back to train."""
    model.eval()
    try:
        with torch.no_grad():
            yield model
    finally:
        model.train()


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """An exclusive lock on `path`.lock, so trials starting together on one machine build a cache once."""
    with open(path.with_suffix(path.suffix + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


@contextlib.contextmanager
def saved_figure(path: Path, nrows: int = 1, ncols: int = 1, width: float = 6, **subplots: Any) -> Iterator[tuple[Any, Any]]:
    """(figure, axes) to draw on; saved as a PNG at `path` when the block ends.

    Uses matplotlib's object API without pyplot, so no backend is switched and no global figure
    state is touched (safe in notebooks and in parallel trials).
    """
    from matplotlib.figure import Figure  # noqa: PLC0415  (plotting only at the end of a run)

    figure = Figure(figsize=(width, 2.6 * nrows), dpi=120)
    axes = figure.subplots(nrows, ncols, **subplots)
    yield figure, axes
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path)


LOSS_AND_ACCURACY = (("train_loss", "train loss", "log"), ("test_acc", "test accuracy", "linear"))


def save_learning_curve(curve: list[dict[str, float]], session: Session,
                        panels: tuple[tuple[str, str, str], ...] = LOSS_AND_ACCURACY,
                        steps: list[int] | None = None, step_label: str = "epoch") -> None:
    """learning_curve.png: one panel per (metric, label, y scale) of `panels` over the reports
    (at `steps`, default 1, 2, ...); by default train loss (log scale) and test accuracy per epoch."""
    steps = steps or list(range(1, len(curve) + 1))
    with saved_figure(session.artifact_dir / "learning_curve.png", nrows=len(panels), sharex=True, squeeze=False) as (_, axes):
        for i, (ax, (metric, label, scale)) in enumerate(zip(axes[:, 0], panels)):
            ax.plot(steps, [m[metric] for m in curve], "o-", ms=3, color=f"C{2 * i}")
            ax.set_ylabel(label)
            ax.set_yscale(scale)
        axes[-1, 0].set_xlabel(step_label)
