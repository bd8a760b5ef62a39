"""digits: classify scikit-learn's bundled 8x8 handwritten digits (1797 images, no download).

A real classification task small enough for a whole sweep on a laptop CPU: one trial takes
seconds. The train/test split is stratified and fixed (SPLIT_SEED), so `seed` varies only the
initialization and the batch order, and every trial is scored on the same test images.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..config import check
from ..rational import capture_inputs
from ..registry import create_model, register_architecture, register_experiment
from .common import (
    Activation,
    RationalConfig,
    Session,
    activation_factory,
    check_finite,
    check_model,
    check_seed,
    checkpoint,
    evaluating,
    num_params,
    plot_rationals,
    rational_field,
    rational_param_groups,
    restore,
    save_learning_curve,
    seed_everything,
)

SPLIT_SEED = 0  # the train/test split, the same for every trial
SMOKE_TRAIN_IMAGES = 300
NUM_CLASSES = 10
FAMILY = "digits"  # the architectures `model` can name (plugins add theirs)


@dataclass
class DigitsConfig:
    model: str = "digits_cnn"  # a registered architecture of family "digits"
    activation: Activation = "relu"  # every nonlinearity of the model
    rational: RationalConfig = rational_field()  # degrees/version/init/lr_mult, when activation is rational
    epochs: int = 20  # passes over the training images
    batch_size: int = 64
    lr: float = 2e-3  # AdamW, constant
    weight_decay: float = 1e-2  # AdamW's decoupled decay, on Linear/Conv weights only
    test_fraction: float = 0.25  # share of the images held out for test_acc
    seed: int = 0  # model init and batch order (not the split)

    def __post_init__(self):
        check_seed(self.seed)
        self.rational.default_lr_mult(1.0)
        check_model(self.model, FAMILY)
        check(self.epochs >= 1, "epochs", "an integer >= 1", self.epochs)
        check(self.batch_size >= 1, "batch_size", "an integer >= 1", self.batch_size)
        check(self.lr > 0, "lr", "a number > 0", self.lr)
        check(self.weight_decay >= 0, "weight_decay", "a number >= 0", self.weight_decay)
        check(0 < self.test_fraction < 1, "test_fraction", "a number between 0 and 1", self.test_fraction)


@register_architecture("digits_mlp", family=FAMILY)
def digits_mlp(activation: Callable[[], nn.Module], num_classes: int = NUM_CLASSES) -> nn.Module:
    """64-128-128-10 fully connected."""
    return nn.Sequential(
        nn.Flatten(),
        nn.Linear(64, 128), activation(),
        nn.Linear(128, 128), activation(),
        nn.Linear(128, num_classes),
    )  # fmt: skip


@register_architecture("digits_cnn", family=FAMILY)
def digits_cnn(activation: Callable[[], nn.Module], num_classes: int = NUM_CLASSES) -> nn.Module:
    """conv 16 -> conv 32 -> 2x2 max-pool -> 64 units -> 10, on 1x8x8 images."""
    return nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1), activation(),
        nn.Conv2d(16, 32, 3, padding=1), activation(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(32 * 4 * 4, 64), activation(),
        nn.Linear(64, num_classes),
    )  # fmt: skip


def load_split(test_fraction: float) -> tuple[tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    """(train images, labels), (test images, labels): images 1x8x8 in [0, 1], split stratified by label."""
    from sklearn.datasets import load_digits  # noqa: PLC0415  (only this experiment needs scikit-learn)
    from sklearn.model_selection import train_test_split  # noqa: PLC0415

    digits = load_digits()
    images = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16  # pixel values are 0..16
    labels = torch.tensor(digits.target, dtype=torch.long)
    train_idx, test_idx = train_test_split(
        torch.arange(len(labels)).numpy(), test_size=test_fraction, stratify=labels.numpy(), random_state=SPLIT_SEED
    )
    return (images[train_idx], labels[train_idx]), (images[test_idx], labels[test_idx])


@register_experiment("digits", config=DigitsConfig, metrics={"train_loss": "min", "test_acc": "max", "best_test_acc": "max", "epoch_time_s": "min"},
                     smoke={"epochs": 1}, family=FAMILY)
def run(config: DigitsConfig, session: Session) -> dict[str, float]:
    """Classify sklearn's 8x8 handwritten digits (real data, bundled, seconds per trial)."""
    (train_x, train_y), (test_x, test_y) = load_split(config.test_fraction)
    epochs = config.epochs
    if session.smoke:  # and epochs: 1 (the registered smoke config)
        train_x, train_y = train_x[:SMOKE_TRAIN_IMAGES], train_y[:SMOKE_TRAIN_IMAGES]

    generator = seed_everything(config.seed)
    model = create_model(config.model, activation_factory(config.activation, config.rational), num_classes=NUM_CLASSES)
    session.log_params(num_params=num_params(model))
    optimizer = torch.optim.AdamW(rational_param_groups(model, config.lr, config.rational.lr_mult, config.weight_decay))
    parts = {"model": model, "optimizer": optimizer}

    start, best_test_acc, curve = 0, 0.0, []  # curve: every epoch's metrics, for the learning-curve plot
    if session.restored is not None:
        state = restore(session.restored, parts, generator)
        start, best_test_acc, curve = state["epoch"], state["best_test_acc"], list(state["curve"])

    for epoch in range(start + 1, epochs + 1):
        started = time.perf_counter()
        loss_sum = 0.0
        for batch in torch.randperm(len(train_y), generator=generator).split(config.batch_size):
            loss = F.cross_entropy(model(train_x[batch]), train_y[batch])
            check_finite(loss, f"epoch {epoch}")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            loss_sum += loss.item() * len(batch)

        with evaluating(model):
            test_acc = (model(test_x).argmax(1) == test_y).float().mean().item()
        best_test_acc = max(best_test_acc, test_acc)
        metrics = {
            "epoch": epoch,  # the MLflow step of this report (sweep.names.STEP_KEYS)
            "train_loss": loss_sum / len(train_y),
            "test_acc": test_acc,
            "best_test_acc": best_test_acc,
            "epoch_time_s": time.perf_counter() - started,
        }
        curve.append(metrics)
        if epoch == epochs:  # artifacts go out with the final report
            save_learning_curve(curve, session)
            with evaluating(model), capture_inputs(model) as rational_inputs:
                model(test_x)
            plot_rationals(model, session.artifact_dir, inputs=rational_inputs)
        session.report(metrics, state=checkpoint(parts, generator, epoch=epoch, best_test_acc=best_test_acc, curve=curve))
    return curve[-1]
