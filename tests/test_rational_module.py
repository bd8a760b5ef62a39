"""The Rational module and its helpers: construction, init fits, swap, param groups, plots, backends."""

import copy
import json
import re
import warnings

import pytest
import torch
from torch import nn

import ratsweep.rational as R
from ratsweep.rational import cpu, fits, functional, reference
from ratsweep.rational._native import KernelError

from pathlib import Path

# The rational_activations package's (5, 4) fits as the project's shared notes hold them (beside the
# checkout; CI clones it there).
SHARED_FITS = Path(__file__).resolve().parents[2] / "shared" / "paper" / "published_fits.json"


def grid():
    return torch.linspace(-3, 3, 6001, dtype=torch.float64)


# ---- init fits -----------------------------------------------------------------------------------


def _shared_fits() -> dict:
    if not SHARED_FITS.is_file():
        pytest.skip(f"{SHARED_FITS} is not beside this checkout (the project's shared notes)")
    return json.loads(SHARED_FITS.read_text())


def test_init_starts_from_the_packages_published_54_fits():
    """Every (version, function) the package publishes: stored_fit returns those exact numbers, and a
    Rational built with that init holds them (as float32)."""
    shared = _shared_fits()
    assert shared["degrees"] == [5, 4]
    names = {"swish": "silu"}
    count = 0
    for version, table in shared["versions"].items():
        for package_name, expected in table.items():
            name = names.get(package_name, package_name)
            stored = fits.stored_fit(name, (5, 4), version)
            assert stored["numerator"] == expected["numerator"] and stored["denominator"] == expected["denominator"], (version, name)
            layer = R.Rational((5, 4), init=name, version=version)
            assert torch.equal(layer.numerator.data, torch.tensor(expected["numerator"], dtype=torch.float32))
            assert torch.equal(layer.denominator.data, torch.tensor(expected["denominator"], dtype=torch.float32))
            count += 1
    assert count == 7 + 7 + 7 + 7  # A-D: identity, relu, leaky_relu, tanh, sigmoid, gelu, swish


def test_published_gelu_differs_from_our_refit_far_from_the_fitted_domain():
    """Why the published numbers matter: our closer refit and the package's agree on [-3, 3], but not at
    x = -10, where a trained network's pre-activations do go."""
    ours = fits._stored()["gelu"]["A"]["5,4"]
    published = fits.stored_fit("gelu", (5, 4), "A")
    at = lambda e, x: reference.forward(torch.tensor([x], dtype=torch.float64), torch.tensor(e["numerator"], dtype=torch.float64),  # noqa: E731
                                        torch.tensor(e["denominator"], dtype=torch.float64), "A").item()
    assert all(abs(at(ours, x) - at(published, x)) < 0.01 for x in (-3.0, -1.0, 0.0, 1.0, 3.0))
    assert abs(at(ours, -10.0) - at(published, -10.0)) > 1.0


def test_degrees_and_targets_the_package_does_not_publish_use_our_fits():
    assert fits.published_fit("gelu", (6, 4), "A") is None and fits.published_fit("gelu", (5, 4), "A") is not None
    assert fits.stored_fit("gelu", (6, 4), "A") == fits._stored()["gelu"]["A"]["6,4"]
    assert fits.published_fit("leaky_relu", (5, 4), "C") is not None and fits.published_fit("silu", (5, 4), "D") is not None


def test_stored_fits_cover_every_target_degree_and_version():
    stored = json.loads(fits.FITS_FILE.read_text())["fits"]
    assert set(stored) >= {"relu", "leaky_relu", "gelu", "silu", "tanh", "sigmoid", "identity"}
    for name, versions in stored.items():
        assert set(versions) == {"A", "B", "C"}
        for version, table in versions.items():
            assert len(table) == fits.MAX_DEGREE**2
            for key, entry in table.items():
                m, n = map(int, key.split(","))
                assert len(entry["numerator"]) == m + 1
                assert len(entry["denominator"]) == fits.denominator_size((m, n), version)


@pytest.mark.parametrize("name", sorted(fits.TARGETS))
@pytest.mark.parametrize("version", fits.FIT_VERSIONS)
def test_stored_fits_are_accurate_and_improve_with_degree(name, version):
    table = json.loads(fits.FITS_FILE.read_text())["fits"][name][version]
    x = fits._grid()
    target = fits.TARGETS[name](x)
    coefs = lambda e: (torch.tensor(e["numerator"], dtype=torch.float64), torch.tensor(e["denominator"], dtype=torch.float64))  # noqa: E731
    for key in ("5,4", "8,8"):  # the stored error is the real one
        residual = reference.forward(x, *coefs(table[key]), version) - target
        assert residual.abs().max().item() == pytest.approx(table[key]["max_err"], rel=1e-9, abs=1e-15)
    assert table["5,4"]["max_err"] < 0.05  # the kink of relu/leaky_relu costs ~0.03 at x = 0

    def objective(e):  # what the fit minimizes: squared residuals plus the small ridge term
        a, b = coefs(e)
        return e["rms_err"] ** 2 * fits.GRID_POINTS + fits.RIDGE * (a.pow(2).sum() + b.pow(2).sum()).item()

    for m in range(1, fits.MAX_DEGREE + 1):
        for n in range(1, fits.MAX_DEGREE + 1):
            for lower in ((m - 1, n), (m, n - 1)):
                if min(lower) >= 1:  # warm-started from the lower degree padded with zeros
                    assert objective(table[f"{m},{n}"]) <= objective(table[f"{lower[0]},{lower[1]}"]) * (1 + 1e-6)


def test_callable_init_is_fitted():
    layer = R.Rational(degrees=(4, 4), init=torch.sin)
    x = torch.linspace(-3, 3, 301)
    assert (layer(x) - torch.sin(x)).abs().max() < 0.02
    assert layer.init_target is torch.sin


# ---- module ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("version,den", [("A", 4), ("B", 4), ("C", 5), ("D", 4)])
def test_parameters_per_version(version, den):
    layer = R.Rational(degrees=(5, 4), init="gelu", version=version)
    assert layer.numerator.shape == (6,) and layer.denominator.shape == (den,)
    assert [name for name, _ in layer.named_parameters()] == ["numerator", "denominator"]
    x = torch.linspace(-3, 3, 101)
    assert (layer.eval()(x) - torch.nn.functional.gelu(x)).abs().max() < 0.01


@pytest.mark.parametrize(
    "kwargs,field",
    [
        ({"degrees": (0, 4)}, "degrees"),
        ({"degrees": (9, 1)}, "degrees"),
        ({"degrees": (5,)}, "degrees"),
        ({"degrees": "5,4"}, "degrees"),
        ({"degrees": (True, 4)}, "degrees"),
        ({"version": "E"}, "version"),
        ({"init": "elu"}, "init"),
        ({"init": 3}, "init"),
        ({"backend": "gpu"}, "backend"),
    ],
)
def test_bad_arguments_name_the_field(kwargs, field):
    with pytest.raises(ValueError) as err:
        R.Rational(**kwargs)
    message = str(err.value)
    assert message.startswith(f"{field}:") and "\n" not in message


def test_inplace_is_accepted_and_ignored():
    """timm and torchvision call act_layer(inplace=True)."""
    layer = R.Rational(inplace=True)
    x = torch.randn(10)
    y = layer(x)
    assert not torch.equal(x, y)


def test_every_degree_pair_builds_and_runs():
    x = torch.randn(2, 300, requires_grad=True)
    for m in range(1, 9):
        for n in range(1, 9):
            layer = R.Rational(degrees=(m, n), init="relu")
            layer(x).sum().backward()
            assert torch.isfinite(layer.numerator.grad).all() and torch.isfinite(layer.denominator.grad).all()


def test_version_d_is_noisy_in_training_and_b_in_eval():
    torch.manual_seed(0)
    d = R.Rational(version="D", init="gelu")
    b = R.Rational(version="B", init="gelu")
    x = torch.randn(1000)
    train1, train2 = d.train()(x), d(x)
    assert not torch.allclose(train1, train2)
    # numerator coefficients scaled by U(0.9, 1.1): |F_D - F_B| <= 0.1 sum_j |a_j x^j| / Q
    a, den = b.numerator.detach(), b.denominator.detach()
    p_abs = sum(a[j].abs() * x.abs() ** j for j in range(6))
    q = 1 + sum(den[k] * x ** (k + 1) for k in range(4)).abs()
    assert ((train1 - b(x)).abs() <= 0.1 * p_abs / q + 1e-6).all()
    assert torch.equal(d.eval()(x), b.eval()(x))
    d.train()(x).sum().backward()
    assert d.numerator.grad.abs().sum() > 0


def test_state_dict_and_deepcopy_roundtrip():
    layer = R.Rational(init="relu")
    with torch.no_grad():
        layer.numerator.add_(0.1)
    other = R.Rational(init="gelu")
    other.load_state_dict(layer.state_dict())
    x = torch.randn(100)
    assert torch.equal(other(x), layer(x))
    assert torch.equal(copy.deepcopy(layer)(x), layer(x))
    assert "degrees=(5, 4)" in repr(layer) and "init=relu" in repr(layer)


# ---- replace_activations / rational_param_groups ------------------------------------------------


def test_replace_activations_in_timm_swin():
    """Swin ignores act_layer; swapping after creation reaches every MLP activation."""
    timm = pytest.importorskip("timm")
    model = timm.create_model(
        "swin_tiny_patch4_window7_224", pretrained=False, img_size=64, window_size=4, num_classes=10, depths=(1, 1, 2, 1)
    )
    gelus = sum(isinstance(m, nn.GELU) for m in model.modules())
    assert gelus == 5
    count = R.replace_activations(model, lambda: R.Rational(init="gelu"))
    assert count == gelus
    assert not any(isinstance(m, nn.GELU) for m in model.modules())
    rationals = [m for m in model.modules() if isinstance(m, R.Rational)]
    assert len(rationals) == gelus and len({id(m) for m in rationals}) == gelus
    out = model(torch.randn(2, 3, 64, 64))
    assert out.shape == (2, 10)
    out.sum().backward()
    assert all(m.numerator.grad.abs().sum() > 0 for m in rationals)


def test_replace_activations_keeps_shared_modules_shared():
    act = nn.ReLU()
    model = nn.Sequential(nn.Linear(3, 3), act, nn.Linear(3, 3), act, nn.Sequential(nn.GELU(), nn.Tanh()))
    count = R.replace_activations(model, R.Rational)
    assert count == 2
    assert model[1] is model[3] and isinstance(model[1], R.Rational)
    assert isinstance(model[4][0], R.Rational) and isinstance(model[4][1], nn.Tanh)
    assert R.replace_activations(model, R.Rational) == 0  # rationals are never replaced


def test_replace_activations_rejects_a_shared_instance_factory():
    shared = R.Rational()
    model = nn.Sequential(nn.ReLU(), nn.ReLU())
    with pytest.raises(TypeError, match="factory"):
        R.replace_activations(model, lambda: shared)


def test_param_groups_follow_the_paper_policy():
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3), nn.GroupNorm(2, 8), R.Rational(), nn.Flatten(), nn.Linear(8, 4), R.Rational()
    )
    model[4].bias.requires_grad_(False)  # frozen parameters are left out
    groups = {g["name"]: g for g in R.rational_param_groups(model, lr=0.1, lr_mult=4.0, weight_decay=5e-4)}
    ids = lambda ps: {id(p) for p in ps}  # noqa: E731
    assert ids(groups["rational"]["params"]) == ids([model[2].numerator, model[2].denominator, model[5].numerator, model[5].denominator])
    assert groups["rational"]["lr"] == pytest.approx(0.4) and groups["rational"]["weight_decay"] == 0.0
    assert ids(groups["decay"]["params"]) == ids([model[0].weight, model[4].weight])
    assert groups["decay"]["weight_decay"] == 5e-4 and groups["decay"]["lr"] == 0.1
    assert ids(groups["no_decay"]["params"]) == ids([model[0].bias, model[1].weight, model[1].bias])
    assert groups["no_decay"]["weight_decay"] == 0.0
    total = sum(len(g["params"]) for g in groups.values())
    assert total == sum(p.requires_grad for p in model.parameters())
    torch.optim.SGD(list(groups.values()), lr=0.1)  # a valid optimizer spec
    with pytest.raises(ValueError, match="lr_mult"):
        R.rational_param_groups(model, lr=0.1, lr_mult=0.0)


# ---- plots -------------------------------------------------------------------------------------


def test_plot_rational_writes_png_with_captured_inputs(tmp_path):
    model = nn.Sequential(nn.Linear(4, 16), R.Rational(init="gelu"), nn.Linear(16, 1))
    with R.capture_inputs(model) as seen:
        model(torch.randn(64, 4))
        model(torch.randn(64, 4))
    layer = model[1]
    assert seen[layer].shape == (2 * 64 * 16,)
    model(torch.randn(64, 4))  # hooks are gone after the block
    assert seen[layer].shape == (2 * 64 * 16,)
    path = R.plot_rational(layer, seen[layer], tmp_path / "plots" / "layer1.png")
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
    bare = R.plot_rational(layer, path=tmp_path / "bare.png")
    assert bare.stat().st_size > 5_000


# ---- backend selection -------------------------------------------------------------------------


def test_auto_uses_the_cpu_kernels_on_cpu():
    assert R.resolve_backend("auto", torch.device("cpu")) == "cpu"
    assert R.resolve_backend("torch", torch.device("cpu")) == "torch"
    with pytest.raises(ValueError, match="backend"):
        R.resolve_backend("cuda", torch.device("cpu"))


def test_missing_cupy_warns_once_and_uses_torch(monkeypatch):
    """A CUDA tensor without CuPy: the backend is absent, so one clear warning, then the torch path."""
    monkeypatch.setattr(functional, "_absent", {})
    monkeypatch.setattr(functional.cuda, "available", lambda: False)
    with pytest.warns(RuntimeWarning, match="CuPy is not installed.*pip install"):
        assert R.resolve_backend("auto", torch.device("cuda")) == "torch"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert R.resolve_backend("auto", torch.device("cuda")) == "torch"


def test_no_compiler_is_reported(monkeypatch):
    monkeypatch.setattr(functional, "_absent", {})
    monkeypatch.setattr(cpu, "compiler", lambda: None)
    with pytest.warns(RuntimeWarning, match="no C\\+\\+ compiler"):
        assert R.resolve_backend("auto", torch.device("cpu")) == "torch"


@pytest.mark.parametrize("backend", ["auto", "cpu"])
def test_a_broken_kernel_is_an_error_never_a_silent_fallback(monkeypatch, backend):
    """A backend that is there but fails (a compiler that runs and cannot build) is an error naming the
    cause and the way out, for auto as for the named backend: a sweep must not run on other kernels than
    it reports."""
    monkeypatch.setenv("CXX", "/bin/false")  # exists and runs: the backend is present
    monkeypatch.setattr(functional, "_absent", {})
    monkeypatch.setattr(cpu, "_libraries", {})
    assert R.resolve_backend("auto", torch.device("cpu")) == "cpu"
    R.functional.reset_backends_used()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(KernelError, match="/bin/false could not build the CPU rational kernel.*backend='torch'"):
            R.rational(torch.randn(100), torch.randn(6), torch.randn(4), "A", backend)
    assert R.functional.backends_used() == ()  # it did not run


def test_an_unusable_cache_dir_is_an_error_naming_it(monkeypatch, tmp_path):
    monkeypatch.setattr(functional, "_absent", {})
    monkeypatch.setattr(cpu, "_libraries", {})
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")
    monkeypatch.setenv("RATSWEEP_CACHE_DIR", str(blocker / "cache"))
    with pytest.raises(KernelError, match="could not build.*not-a-directory.*RATSWEEP_CACHE_DIR"):
        R.rational(torch.randn(100), torch.randn(6), torch.randn(4), "A", "auto")


def test_a_compiler_that_cannot_run_is_an_error_naming_it(monkeypatch, tmp_path):
    """An OSError from the toolchain probe (a compiler that exists but cannot be executed) is a
    KernelError naming the compiler and CXX, from the user's model call."""
    fake = tmp_path / "c++"
    fake.write_bytes(b"\x7fELF not really a compiler")
    fake.chmod(0o755)
    monkeypatch.setenv("CXX", str(fake))
    monkeypatch.setattr(functional, "_absent", {})
    monkeypatch.setattr(cpu, "_libraries", {})
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), R.Rational(init="relu"))
    with pytest.raises(KernelError, match=f"could not run the C\\+\\+ compiler {re.escape(str(fake))}.*set CXX"):
        model(torch.randn(3, 4))


def test_backends_used_says_what_ran():
    """What a run's kernel_backend tag reports: the backends that actually ran, not the ones auto
    would pick."""
    R.functional.reset_backends_used()
    assert R.functional.backends_used() == ()
    x, a, b = torch.randn(10, requires_grad=True), torch.randn(6), torch.randn(4)
    R.rational(x, a, b, "A", "auto").sum().backward()
    assert R.functional.backends_used() == ("cpu",)
    R.rational(x, a, b, "A", "torch")
    assert R.functional.backends_used() == ("cpu", "torch")
    R.functional.reset_backends_used()
    assert R.functional.backends_used() == ()


def test_bad_dtype_and_version_are_rejected():
    a, b = torch.randn(6), torch.randn(4)
    with pytest.raises(TypeError, match="x:"):
        R.rational(torch.arange(5), a, b)
    with pytest.raises(ValueError, match="version:"):
        R.rational(torch.randn(5), a, b, "Q")
