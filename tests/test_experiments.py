"""The embedded experiments (approx, digits) run end to end on the CPU: pure torch, no Ray, no MLflow."""

import pytest
import torch
from torch import nn

from ratsweep.config import ConfigError, build
from ratsweep.experiments import approx, digits
from ratsweep.experiments.common import Diverged, LocalSession, Rational, num_params, rational_param_groups
from ratsweep.registry import architectures, experiments

ACTIVATIONS = ["relu", "leaky_relu", "gelu", "silu", "tanh", "rational"]
DIGITS_METRICS = {"epoch", "train_loss", "test_acc", "best_test_acc", "epoch_time_s"}


def run_approx(session=None, **values):
    session = session or LocalSession()
    return approx.run(build(approx.ApproxConfig, smoke_values("approx", session) | values), session), session


def run_digits(session=None, **values):
    session = session or LocalSession()
    return digits.run(build(digits.DigitsConfig, smoke_values("digits", session) | values), session), session


def smoke_values(name, session) -> dict:
    """What `ratsweep run --smoke` sets for this experiment, when the session is a smoke one."""
    return dict(experiments()[name].smoke) if session.smoke else {}


def test_both_experiments_and_their_architectures_are_registered():
    registered = experiments()
    assert registered["approx"].config is approx.ApproxConfig and registered["approx"].run is approx.run
    assert registered["digits"].config is digits.DigitsConfig and registered["digits"].run is digits.run
    assert set(architectures("digits")) == {"digits_mlp", "digits_cnn"}
    assert set(architectures("mlp")) == {"mlp"}


@pytest.mark.parametrize("name", ["digits_mlp", "digits_cnn"])
def test_digits_architectures_use_the_activation_for_every_nonlinearity(name):
    model = architectures("digits")[name].build(Rational)
    assert len([m for m in model.modules() if isinstance(m, Rational)]) == (3 if name == "digits_cnn" else 2)
    assert not any(isinstance(m, (nn.ReLU, nn.GELU)) for m in model.modules())
    assert model(torch.rand(5, 1, 8, 8)).shape == (5, 10)


@pytest.mark.parametrize("target", approx.TARGET_FUNCTIONS)
def test_every_target_is_finite_and_not_constant_on_the_domain(target):
    y = approx.TARGET_FUNCTIONS[target](torch.linspace(*approx.DOMAIN, approx.GRID_POINTS))
    assert torch.isfinite(y).all()
    assert y.max() - y.min() > 0.1


@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_approx_training_reduces_the_error(activation):
    final, session = run_approx(target="abs", activation=activation, steps=300, report_every=50)
    assert len(session.history) == 6
    assert final == session.history[-1]
    assert final["mse"] < 0.2 * session.history[0]["mse"]
    assert final["max_abs_err"] < 0.6 * session.history[0]["max_abs_err"]


@pytest.mark.parametrize("activation", ["relu", "rational"])
@pytest.mark.parametrize("budget", [200, 400, 1000])
def test_approx_width_is_the_widest_within_the_parameter_budget(activation, budget):
    _, session = run_approx(LocalSession(smoke=True), activation=activation, param_budget=budget)
    width, count = session.params["width"], session.params["num_params"]
    config = build(approx.ApproxConfig, {"activation": activation})
    factory = Rational if activation == "rational" else nn.ReLU
    wider = approx.mlp(factory, in_features=1, out_features=1, width=width + 1, depth=config.depth)
    assert count <= budget < num_params(wider)
    if activation == "rational":  # the rational coefficients count: 10 per (5, 4) version-A activation
        plain = approx.mlp(nn.ReLU, in_features=1, out_features=1, width=width, depth=config.depth)
        assert count == num_params(plain) + 10 * config.depth


def test_approx_rejects_a_budget_below_the_smallest_mlp():
    with pytest.raises(ConfigError, match="param_budget"):
        run_approx(LocalSession(smoke=True), param_budget=3)


def test_approx_smoke_reports_several_times_and_writes_its_plots():
    final, session = run_approx(LocalSession(smoke=True), activation="rational", depth=2)
    assert len(session.history) >= 2
    assert all(set(m) == {"step", "mse", "max_abs_err", "train_loss"} for m in session.history)
    assert session.states[-1]["step"] == approx.SMOKE_STEPS
    files = {p.name for p in session.artifact_dir.iterdir()}
    assert "fit.png" in files
    assert {f for f in files if f.startswith("activation_")} == {"activation_layer1.png", "activation_layer2.png"}


def test_approx_resume_continues_at_the_next_step_and_matches_an_uninterrupted_run():
    values = {"activation": "rational", "target": "step", "steps": 100, "report_every": 25}
    uninterrupted, full = run_approx(**values)
    resumed, rest = run_approx(LocalSession(restored=full.states[1]), **values)
    assert len(rest.history) == 2 and rest.states[0]["step"] == 75
    assert resumed == uninterrupted


def test_digits_smoke_reports_every_metric():
    final, session = run_digits(LocalSession(smoke=True), model="digits_mlp")
    assert len(session.history) == 1
    assert set(final) == DIGITS_METRICS
    assert 0 <= final["test_acc"] <= 1 and final["train_loss"] > 0
    assert session.params["num_params"] == 64 * 128 + 128 + 128 * 128 + 128 + 128 * 10 + 10


def test_digits_learns_in_a_few_epochs():
    final, session = run_digits(model="digits_mlp", epochs=3)
    assert [set(m) for m in session.history] == [DIGITS_METRICS] * 3
    assert final["test_acc"] > 0.8
    assert final["best_test_acc"] == max(m["test_acc"] for m in session.history)
    assert session.history[-1]["train_loss"] < session.history[0]["train_loss"]


def test_digits_rational_cnn_writes_its_plots():
    _, session = run_digits(LocalSession(smoke=True), model="digits_cnn", activation="rational")
    files = {p.name for p in session.artifact_dir.iterdir()}
    assert "learning_curve.png" in files
    assert len([f for f in files if f.startswith("activation_layer")]) == 3


def test_digits_resume_continues_at_the_next_epoch_and_matches_an_uninterrupted_run():
    values = {"model": "digits_cnn", "activation": "rational", "epochs": 3}
    uninterrupted, full = run_digits(**values)
    resumed, rest = run_digits(LocalSession(restored=full.states[0]), **values)
    assert len(rest.history) == 2 and rest.states[0]["epoch"] == 2
    assert [m["test_acc"] for m in rest.history] == [m["test_acc"] for m in full.history[1:]]
    for key in DIGITS_METRICS - {"epoch_time_s"}:
        assert resumed[key] == uninterrupted[key], key
    assert [m["train_loss"] for m in rest.states[-1]["curve"]] == [m["train_loss"] for m in full.history]


def test_digits_split_is_fixed_and_stratified():
    (train_x, train_y), (test_x, test_y) = digits.load_split(0.25)
    assert len(test_y) == 450 and len(train_y) == 1797 - 450
    per_digit = torch.bincount(train_y) + torch.bincount(test_y)
    assert (torch.bincount(test_y) - 0.25 * per_digit).abs().max() <= 1  # each digit's share, to one image
    assert 0 <= train_x.min() and train_x.max() == 1 and train_x.shape[1:] == (1, 8, 8)
    (_, _), (again_x, _) = digits.load_split(0.25)
    assert torch.equal(test_x, again_x)


def test_approx_diverges_with_an_absurd_learning_rate():
    with pytest.raises(Diverged, match="step"):
        run_approx(LocalSession(smoke=True), lr=1e6)


def test_digits_diverges_when_the_loss_is_not_finite(monkeypatch):
    monkeypatch.setattr(digits.F, "cross_entropy", lambda logits, labels: logits.sum() * float("nan"))
    with pytest.raises(Diverged, match="epoch 1"):
        run_digits(LocalSession(smoke=True), model="digits_mlp")


@pytest.mark.parametrize(
    "config, values, key",
    [
        (digits.DigitsConfig, {"model": "nope"}, "model"),
        (digits.DigitsConfig, {"test_fraction": 1.5}, "test_fraction"),
        (digits.DigitsConfig, {"epochs": 0}, "epochs"),
        (approx.ApproxConfig, {"target": "sine"}, "target"),
        (approx.ApproxConfig, {"depth": 0}, "depth"),
        (approx.ApproxConfig, {"rational.lr_mult": -1}, "rational.lr_mult"),
    ],
)
def test_config_errors_are_one_line_and_name_the_key(config, values, key):
    with pytest.raises(ConfigError) as error:
        build(config, values)
    assert error.value.key == key
    assert "\n" not in str(error.value)
    if key == "model":
        assert "digits_cnn" in str(error.value) and "digits_mlp" in str(error.value)


def test_restore_takes_learning_rates_from_the_current_config():
    """PBT restarts a trial from another's checkpoint with a mutated lr_mult: the new rate applies,
    at the same point of the schedule; an unchanged config restores exactly."""
    from ratsweep.experiments.common import checkpoint, restore

    def build(lr_mult):
        model = torch.nn.Sequential(torch.nn.Linear(2, 4), Rational(), torch.nn.Linear(4, 1))
        optimizer = torch.optim.Adam(rational_param_groups(model, 1e-2, lr_mult))
        schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=10)
        return {"model": model, "optimizer": optimizer, "schedule": schedule}

    donor, generator = build(1.0), torch.Generator()
    for _ in range(3):
        donor["optimizer"].step()
        donor["schedule"].step()
    state = checkpoint(donor, generator, step=3)
    same, mutated = build(1.0), build(4.0)
    restore(state, same, generator)
    restore(state, mutated, generator)
    lrs = {g["name"]: g["lr"] for g in donor["optimizer"].param_groups}
    assert {g["name"]: g["lr"] for g in same["optimizer"].param_groups} == lrs
    got = {g["name"]: g["lr"] for g in mutated["optimizer"].param_groups}
    assert got["rational"] == pytest.approx(4 * lrs["rational"]) and got["decay"] == pytest.approx(lrs["decay"])
    for part in (donor, mutated):
        part["optimizer"].step()
        part["schedule"].step()
    assert mutated["optimizer"].param_groups[0]["lr"] == pytest.approx(4 * donor["optimizer"].param_groups[0]["lr"])
