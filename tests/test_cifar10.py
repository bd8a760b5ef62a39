"""The cifar10 experiment: models, LSUV, batched augmentation, data loading, recipes, resume, and an
end-to-end smoke sweep on synthetic CIFAR-10 pickles (real format, fake pixels: never a result)."""

from __future__ import annotations

import pickle
import urllib.error

import pytest
import torch
from helpers import artifacts, mlflow_client, ratsweep, trial_runs
from synthetic_data import write_cifar10
from torch import nn

from ratsweep import cli, config, registry
from ratsweep.experiments import cifar10
from ratsweep.experiments.common import DataError, Diverged, LocalSession, Normalize, Rational
from ratsweep import report
from ratsweep.sweep import results
from ratsweep.sweep.space import load


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return write_cifar10(tmp_path_factory.mktemp("cifar"), train_per_batch=100, test=100)


def build(name: str, activation: str = "relu", **kwargs) -> nn.Module:
    cfg = config.build(cifar10.Cifar10Config, {"activation": activation})
    return registry.create_model(name, cifar10.cifar_activation(cfg), **kwargs)


def count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# ---- models -----------------------------------------------------------------------------------


@pytest.mark.parametrize("name, expected, convs", [("vgg4", 1_001_866, 4), ("vgg8", 4_705_866, 8)])
def test_parameter_counts_match_the_paper(name, expected, convs):
    for activation in ("relu", "leaky_relu", "gelu", "silu"):
        assert count(build(name, activation)) == expected
    model = build(name, "rational")
    assert sum(isinstance(m, Rational) for m in model.modules()) == convs  # one per conv, none elsewhere
    assert count(model) == expected + convs * (6 + 4)  # (5, 4) version A: 6 numerator + 4 denominator
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_group_count_is_sixteen_reduced_until_it_divides():
    assert [cifar10.group_count(c) for c in (64, 128, 256, 512)] == [16, 16, 16, 16]
    assert [cifar10.group_count(c) for c in (24, 20, 10, 7, 1)] == [12, 10, 10, 7, 1]


def test_group_norm_sits_after_each_conv_before_its_activation():
    plain, normed = build("vgg8"), build("vgg8", norm="group")
    layers = list(normed.features)
    convs = [i for i, m in enumerate(layers) if isinstance(m, nn.Conv2d)]
    assert len(convs) == 8 and not any(isinstance(m, nn.GroupNorm) for m in plain.modules())
    for i in convs:
        norm, act = layers[i + 1], layers[i + 2]
        assert isinstance(norm, nn.GroupNorm) and norm.num_channels == layers[i].out_channels
        assert norm.num_groups == 16 and isinstance(act, nn.ReLU)
    assert count(normed) == count(plain) + sum(2 * layers[i].out_channels for i in convs)


def test_dropout_comes_right_before_the_classifier():
    model = build("vgg4", dropout=0.3)
    names = [name for name, _ in model.named_children()]
    assert names[-2:] == ["dropout", "classifier"] and model.dropout.p == 0.3
    assert build("vgg4").dropout.p == 0.0


def _layers(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]


def _measured(model: nn.Module, images: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(layer output, what LSUV measures) per Conv/Linear: the activation right after it in
    model.features (VGG: conv [GroupNorm] activation), the output itself for the classifier. Copies,
    so in-place activations cannot overwrite them."""
    outs: dict[nn.Module, torch.Tensor] = {}
    modules = list(model.modules())
    handles = [m.register_forward_hook(lambda mod, a, out: outs.__setitem__(mod, out.clone())) for m in modules[1:]]
    model.eval()
    with torch.no_grad():
        model(images)
    model.train()
    for h in handles:
        h.remove()
    features = list(model.features)
    pairs = []
    for layer in _layers(model):
        if layer in features:
            after = features[features.index(layer) + 1:]
            act = next(m for m in after if isinstance(m, cifar10.ACTIVATION_MODULES))
            pairs.append((outs[layer], outs[act]))
        else:
            pairs.append((outs[layer], outs[layer]))
    return pairs


@pytest.mark.parametrize("activation", ["relu", "rational"])
def test_lsuv_without_norm_brings_each_activation_output_to_the_target_variance(activation):
    torch.manual_seed(0)
    model = build("vgg4", activation, dropout=0.5)
    with torch.no_grad():
        for layer in _layers(model)[1:]:
            layer.weight.mul_(3)  # far from the target, so these layers must be rescaled
    images = torch.randn(64, 3, 32, 32)
    rounds = cifar10.lsuv(model, images)
    assert model.training  # back in train mode afterwards
    assert len(rounds) == 5 and all(1 <= r <= 10 for r in rounds[1:])
    pairs = _measured(model, images)
    for out, act in pairs:
        var = act.var(unbiased=False).item()
        assert abs(var - 0.125) / 0.125 <= 0.1  # relative tolerance: within [0.1125, 0.1375]
        assert abs(out.mean().item()) < 1e-3  # the bias absorbed the layer output's mean
    for out, act in pairs[:-1]:  # the activation is what was measured, not the conv (ReLU halves it)
        assert out.var(unbiased=False).item() > 0.2
    if activation == "rational":
        assert sum(isinstance(m, Rational) for m in model.modules()) == 4
    assert cifar10.lsuv(model, images) == [0] * 5  # converged: a second pass changes nothing


def test_lsuv_with_group_norm_runs_every_round_and_shrinks_the_conv_weights():
    """GroupNorm makes the activation's input independent of the conv weight's scale: the test can
    never pass, all 10 rounds run, and the convs end at about 1 % of their norm (as the paper's GN +
    LSUV cells were trained)."""
    torch.manual_seed(0)
    model = build("vgg4", norm="group")
    before = [layer.weight.norm().item() for layer in _layers(model)]
    rounds = cifar10.lsuv(model, torch.randn(64, 3, 32, 32))
    after = [layer.weight.norm().item() for layer in _layers(model)]
    assert rounds[:4] == [10, 10, 10, 10] and rounds[4] < 10  # the classifier has no norm after it
    shrink = [a / b for a, b in zip(after[:4], before[:4])]
    assert all(0.002 < f < 0.03 for f in shrink), shrink


def test_lsuv_shifts_the_bias_every_round_by_the_hooked_output_mean():
    """One round (max_rounds=1): the bias moves by the layer output's mean before the test; a mean
    under 1e-3 leaves it alone; with an in-place LeakyReLU (as the authors built it) the hooked conv
    output is the post-activation tensor, so that mean is the one subtracted."""
    torch.manual_seed(0)
    images = torch.randn(16, 3, 8, 8)
    for inplace in (False, True):
        model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.LeakyReLU(inplace=inplace))
        with torch.no_grad():
            model[0].bias.fill_(0.5)
            conv_out = model[0](images)
            expected_mean = (nn.functional.leaky_relu(conv_out) if inplace else conv_out).mean()
            weight = model[0].weight.clone()
        cifar10.lsuv(model, images, max_rounds=1)
        assert torch.allclose(model[0].bias, torch.full((4,), 0.5) - expected_mean, atol=1e-6)
        assert not torch.equal(model[0].weight, weight)  # variance far from 0.125: rescaled once
    model = nn.Sequential(nn.Linear(5, 3), nn.ReLU())
    with torch.no_grad():
        x = torch.randn(32, 5)
        model[0].bias.sub_(model[0](x).mean() - 5e-4)  # output mean 5e-4: below the threshold
        bias = model[0].bias.clone()
    cifar10.lsuv(model, x, max_rounds=1)
    assert torch.equal(model[0].bias, bias)


def test_cifar10_builds_leaky_relu_and_silu_in_place_as_the_authors_did():
    for activation, inplace in (("leaky_relu", True), ("silu", True), ("relu", False)):
        acts = [m for m in build("vgg4", activation).modules() if isinstance(m, cifar10.ACTIVATION_MODULES)]
        assert len(acts) == 4 and all(getattr(m, "inplace", False) == inplace for m in acts)


def test_lsuv_gets_the_first_64_images_of_the_first_augmented_batch(data_dir, monkeypatch):
    seen = []
    monkeypatch.setattr(cifar10, "lsuv", lambda model, images, activations: seen.append(images.clone()))
    cfg = config.build(cifar10.Cifar10Config, {"recipe": "augmented", "lsuv": True, "epochs": 1, "seed": 3})
    cifar10.run(cfg, LocalSession(data_dir=data_dir))
    (train_x, _), _ = cifar10.load(str(data_dir))
    order, offsets, flips = cifar10.epoch_plan(len(train_x), torch.Generator().manual_seed(3), torch.device("cpu"))
    first = order[:64]
    expected = Normalize(cifar10.MEAN, cifar10.STD, torch.device("cpu"))(cifar10.flip(cifar10.random_crop(train_x[first], offsets[first]), flips[first]))
    assert len(seen) == 1 and torch.equal(seen[0], expected)


# ---- augmentation -----------------------------------------------------------------------------


def test_random_crop_is_a_zero_padded_translation():
    images = torch.randint(1, 256, (3, 3, 32, 32), dtype=torch.uint8)
    offsets = torch.tensor([[4, 4], [0, 0], [8, 2]])
    out = cifar10.random_crop(images, offsets)
    assert out.shape == images.shape and out.dtype == torch.uint8
    assert torch.equal(out[0], images[0])  # offset (4, 4) is the original position
    assert torch.equal(out[1, :, 4:, 4:], images[1, :, :28, :28]) and not out[1, :, :4].any() and not out[1, :, :, :4].any()
    assert torch.equal(out[2, :, :28, 2:], images[2, :, 4:, :30]) and not out[2, :, 28:].any()


def test_flip_mirrors_only_the_masked_images():
    images = torch.randn(4, 3, 32, 32)
    out = cifar10.flip(images, torch.tensor([True, False, True, False]))
    assert torch.equal(out[0], images[0].flip(-1)) and torch.equal(out[1], images[1])
    assert torch.equal(out[2, :, :, 0], images[2, :, :, 31])


def test_normalize_matches_torchvision():
    from torchvision.transforms import Normalize as TorchvisionNormalize

    images = torch.randint(0, 256, (5, 3, 32, 32), dtype=torch.uint8)
    expected = TorchvisionNormalize(cifar10.MEAN, cifar10.STD)(images.float() / 255)
    assert torch.allclose(Normalize(cifar10.MEAN, cifar10.STD, torch.device("cpu"))(images), expected, atol=1e-5)


def test_epoch_plan_is_a_permutation_drawn_from_the_data_rng():
    first = cifar10.epoch_plan(100, torch.Generator().manual_seed(3), torch.device("cpu"))
    again = cifar10.epoch_plan(100, torch.Generator().manual_seed(3), torch.device("cpu"))
    order, offsets, flips = first
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    assert torch.equal(order.sort().values, torch.arange(100))
    assert offsets.min() >= 0 and offsets.max() <= 8 and 20 < flips.sum() < 80


def test_mixup_with_label_smoothing_gives_soft_targets_summing_to_one():
    from timm.data import Mixup

    recipe = cifar10.RECIPES["augmented"]
    mixup = Mixup(mixup_alpha=recipe.mixup_alpha, cutmix_alpha=0.0, label_smoothing=recipe.label_smoothing, num_classes=10)
    x, y = torch.randn(8, 3, 32, 32), torch.arange(8)
    original = x.clone()
    mixed, soft = mixup(x, y)
    assert mixed.shape == (8, 3, 32, 32) and soft.shape == (8, 10)
    assert torch.allclose(soft.sum(1), torch.ones(8)) and (soft >= 0.01 - 1e-6).all()
    lam = (soft[0, 0].item() - 0.01) / 0.9  # soft[0] = lam * smoothed(0) + (1 - lam) * smoothed(7)
    assert torch.allclose(mixed[0], lam * original[0] + (1 - lam) * original[7], atol=1e-5)


# ---- config and recipes -----------------------------------------------------------------------


def test_recipes_set_the_rational_lr_multiplier_unless_given():
    assert config.build(cifar10.Cifar10Config, {"recipe": "baseline"}).rational.lr_mult == 1.0
    assert config.build(cifar10.Cifar10Config, {"recipe": "augmented"}).rational.lr_mult == 0.5
    assert config.build(cifar10.Cifar10Config, {"recipe": "augmented", "rational.lr_mult": 2}).rational.lr_mult == 2.0
    with pytest.raises(config.ConfigError, match="model: expected one of vgg4, vgg8"):
        config.build(cifar10.Cifar10Config, {"model": "vgg16"})


# ---- data -------------------------------------------------------------------------------------


def test_reads_the_torchvision_pickles(data_dir):
    (train_x, train_y), (test_x, test_y) = cifar10.load(str(data_dir))
    assert train_x.shape == (500, 3, 32, 32) and train_x.dtype == torch.uint8 and test_x.shape == (100, 3, 32, 32)
    with open(data_dir / cifar10.FOLDER / "data_batch_2", "rb") as f:
        raw = pickle.load(f, encoding="latin1")
    assert torch.equal(train_x[100:200].reshape(100, -1), torch.from_numpy(raw["data"]))
    assert train_y[100:200].tolist() == raw["labels"]


def test_missing_or_corrupt_data_says_how_to_get_it(tmp_path):
    with pytest.raises(DataError, match=r"lacks data_batch_1.*ratsweep data cifar10 --dir"):
        cifar10.verify(tmp_path)
    root = write_cifar10(tmp_path / "broken", train_per_batch=4, test=4)
    (root / cifar10.FOLDER / "data_batch_3").write_bytes(b"\x80\x02not a pickle")
    with pytest.raises(DataError, match=r"data_batch_3 is not a CIFAR-10 python batch.*ratsweep data cifar10"):
        cifar10.load(str(root))


def test_data_command_downloads_through_torchvision(tmp_path, monkeypatch, capsys):
    import torchvision.datasets

    def fake_download(root, train, download):  # stands in for the 170 MB download
        assert download and train
        write_cifar10(root, train_per_batch=2, test=2)

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", fake_download)
    with pytest.raises(SystemExit) as done:
        cli.main(["data", "cifar10", "--dir", str(tmp_path / "d")])
    assert done.value.code == 0 and "cifar10: ready" in capsys.readouterr().out

    def offline(root, train, download):
        raise urllib.error.URLError("no route to host")

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", offline)
    with pytest.raises(SystemExit) as done:
        cli.main(["data", "cifar10", "--dir", str(tmp_path / "e")])
    err = capsys.readouterr().err.strip()
    assert done.value.code == 2 and "download into" in err and "no route to host" in err and len(err.splitlines()) == 1


# ---- training ---------------------------------------------------------------------------------


def test_resumed_run_continues_at_the_next_epoch_exactly(data_dir):
    values = {"activation": "rational", "recipe": "augmented", "lsuv": True, "epochs": 4, "batch_size": 64}
    cfg = config.build(cifar10.Cifar10Config, values)
    whole = LocalSession(data_dir=data_dir)
    cifar10.run(cfg, whole)
    assert len(whole.history) == 4 and whole.params["num_params"] == 1_001_866 + 40
    state = whole.states[0]
    groups = {g["name"]: g for g in state["optimizer"]["param_groups"]}
    assert groups["rational"]["lr"] == 0.01 and groups["rational"]["weight_decay"] == 0  # lr_mult 0.5
    assert groups["decay"]["weight_decay"] == 5e-4 and groups["no_decay"]["weight_decay"] == 0
    assert state["schedule"]["milestones"] == {2: 1, 3: 1}  # 0.5 and 0.75 of 4 epochs (30 and 45 of 60)

    resumed = LocalSession(data_dir=data_dir, restored=torch.load(_saved(state), weights_only=False))
    cifar10.run(config.build(cifar10.Cifar10Config, values), resumed)
    assert len(resumed.history) == 3  # epochs 2 to 4 only
    for key in ("train_loss", "test_loss", "test_acc", "best_test_acc"):
        assert [m[key] for m in resumed.history] == pytest.approx([m[key] for m in whole.history[1:]], rel=1e-5), key
    final_whole, final_resumed = whole.states[-1]["model"], resumed.states[-1]["model"]
    assert all(torch.allclose(final_whole[k], final_resumed[k], atol=1e-6) for k in final_whole)
    names = {p.name for p in resumed.artifact_dir.iterdir()}
    assert {"learning_curve.png", "rational_evolution.png", "activation_layer1.png"} <= names
    assert sorted(resumed.states[-1]["shapes"]) == [0, 2, 4]  # start, epochs // 2, last (5 > 4 epochs)


def _saved(state):
    """The state as a trial's checkpoint file would hold it (a torch.save round trip)."""
    import io

    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return buffer


def test_divergence_is_reported_not_hidden(data_dir):
    cfg = config.build(cifar10.Cifar10Config, {"lr": 1e6, "epochs": 2})
    with pytest.raises(Diverged, match="epoch 1"):
        cifar10.run(cfg, LocalSession(data_dir=data_dir))


# ---- sweeps and reports -----------------------------------------------------------------------


def test_bundled_table_spaces_expand_to_the_papers_grids():
    [table1], [table2] = load("cifar10_table1"), load("cifar10_table2")
    assert len(table1.trials()) == 2 * 5 * 5 and table1.config["recipe"] == "baseline"
    trials = table2.trials()
    assert len(trials) == 2 * (4 + 2) * 2 * 2 * 5
    assert sum(t.get("rational.init") == "gelu" for t in trials) == 2 * 2 * 2 * 5
    assert table2.resources["gpu"] == 0.25 and table2.report["best_of"] == "lsuv"


def test_smoke_sweep_lands_in_mlflow_and_reports_like_table_1(data_dir, tmp_path):
    out = ratsweep(tmp_path, "run", "cifar10_table1", "--smoke", "--set", "seed=0", "--data-dir", str(data_dir), timeout=600)
    assert "without GPUs: trials run on CPU" in out.stdout
    client = mlflow_client(tmp_path)
    runs, sweeps = trial_runs(client, "cifar10_table1")
    assert len(runs) == 10 and all(r.info.status == "FINISHED" for r in runs)
    for run in runs:
        assert {"train_loss", "test_loss", "test_acc", "best_test_acc", "epoch_time_s"} <= set(run.data.metrics)
        model, activation = run.data.params["model"], run.data.params["activation"]
        expected = {"vgg4": 1_001_866, "vgg8": 4_705_866}[model] + (10 * (4 if model == "vgg4" else 8) if activation == "rational" else 0)
        assert int(run.data.params["num_params"]) == expected
        assert "learning_curve.png" in artifacts(client, run)
        if activation == "rational":
            assert run.data.params["rational.lr_mult"] == "1.0" and "rational_evolution.png" in artifacts(client, run)
    report = ratsweep(tmp_path, "report", "cifar10_table1", "--include-smoke").stdout
    rows = [line for line in report.splitlines() if line.startswith("| VGG")]
    assert len(rows) == 10 and "x 100" in report and "best per model" in report
    names = [line.split("|")[2].strip() for line in rows]  # the grid's order, the paper's names
    assert names == ["GELU", "ReLU", "Swish", "LeakyReLU", "Rational"] * 2
    assert all(" (1)" in line and "diverged" not in line for line in rows)  # one seed each, all finished
    paper = ratsweep(tmp_path, "report", "cifar10_table1", "--paper", "--include-smoke").stdout
    assert "Table 1" in paper and "| VGG8 | Rational | " in paper and "84.89 ± 0.19 (5)" in paper


def test_missing_data_stops_the_sweep_before_it_starts(tmp_path):
    proc = ratsweep(tmp_path, "run", "cifar10_table1", "--smoke", "--data-dir", "nowhere", check=False)
    assert proc.returncode == 2 and "ratsweep data cifar10 --dir nowhere" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and not (tmp_path / "mlruns.db").exists()


def _run(config_: dict, value: float, seconds: float = 60.0) -> results.TrialRun:
    return results.TrialRun(run_id=str(id(config_)), status="FINISHED", config=config_, extra={},
                            metrics={"best_test_acc": value}, seconds=seconds, sweep="s")


def test_table_2_layout_takes_the_better_lsuv_setting_per_cell():
    """A sweep stored without a plan (before plan.json existed): values sorted by name, counts from its runs."""
    runs = []
    for seed in range(2):
        for norm in ("none", "group"):
            for lsuv, bonus in ((False, 0.0), (True, 0.02 if norm == "group" else -0.02)):
                runs.append(_run({"model": "vgg4", "activation": "relu", "norm": norm, "lsuv": lsuv, "seed": seed}, 0.80 + bonus + seed * 0.01))
                runs.append(_run({"model": "vgg4", "activation": "rational", "rational.init": "gelu", "norm": norm, "lsuv": lsuv, "seed": seed}, 0.85 + bonus))
    sweep = results.Sweep("t2", "cifar10", "best_test_acc", "max", runs, None, ["s"],
                          {"rows": ["model", "activation", "rational.init"], "columns": "norm", "best_of": "lsuv", "percent": True})
    md = report.table(sweep, report.Layout.of(sweep), "md")
    assert "| model | activation | rational.init | norm=group | norm=none | minutes |" in md
    relu = next(line for line in md.splitlines() if "| relu |" in line)
    assert "*82.50 ± 0.71 (2) lsuv=True*" in relu and "*80.50 ± 0.71 (2) lsuv=False*" in relu  # group: LSUV helps; none: it hurts
    rational = next(line for line in md.splitlines() if "| rational |" in line)
    assert "**87.00 ± 0.00 (2) lsuv=True**" in rational and "**85.00 ± 0.00 (2) lsuv=False**" in rational  # best per column
    csv_rows = report.table(sweep, report.Layout.of(sweep), "csv").splitlines()
    assert csv_rows[0] == "model,activation,rational.init,norm,lsuv,best_test_acc_mean,best_test_acc_std,n,diverged,failed,missing,mark,minutes,caveat"
    assert len(csv_rows) == 1 + 4


def test_compiled_training_matches_eager_with_the_rationals_inside_one_graph(data_dir):
    """compile: true compiles the model whole-graph (fullgraph: a graph break would raise) after
    LSUV; its two steps match the eager ones within fp32 reordering (rtol 1e-4: measured 1e-6; more
    steps of SGD on random images amplify it to 1e-2), and the first step's compile time is reported
    apart. (The baseline recipe: the augmented one's dropout, compiled, draws its masks from
    inductor's own generator, the same distribution but other draws.)"""
    values = {"activation": "rational", "lsuv": True, "epochs": 1, "batch_size": 256}
    eager, compiled = LocalSession(data_dir=data_dir), LocalSession(data_dir=data_dir)
    cifar10.run(config.build(cifar10.Cifar10Config, values), eager)
    cifar10.run(config.build(cifar10.Cifar10Config, {**values, "compile": True}), compiled)
    for key in ("train_loss", "test_loss", "test_acc"):
        assert compiled.history[0][key] == pytest.approx(eager.history[0][key], rel=1e-4), key
    assert compiled.history[0]["compile_s"] > 0 and "compile_s" not in eager.history[0]
    weights_eager, weights_compiled = eager.states[-1]["model"], compiled.states[-1]["model"]
    assert weights_compiled.keys() == weights_eager.keys()  # compiled in place: a checkpoint loads either way
    assert all(torch.allclose(weights_eager[k], weights_compiled[k], rtol=1e-4, atol=1e-5) for k in weights_eager)
    assert "activation_layer1.png" in {p.name for p in compiled.artifact_dir.iterdir()}  # the plots' hooks ran eager
