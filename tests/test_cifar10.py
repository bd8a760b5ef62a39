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
from ratsweep.experiments.common import DataError, Diverged, LocalSession, Rational
from ratsweep.sweep import results
from ratsweep.sweep.space import load


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return write_cifar10(tmp_path_factory.mktemp("cifar"), train_per_batch=100, test=100)


def build(name: str, activation: str = "relu", **kwargs) -> nn.Module:
    cfg = config.build(cifar10.Cifar10Config, {"activation": activation})
    return registry.create_model(name, cifar10.activation_factory(activation, cfg.rational), **kwargs)


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


def test_lsuv_reaches_the_target_variance_on_a_random_batch():
    torch.manual_seed(0)
    model = build("vgg4", dropout=0.5)
    layers = [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    with torch.no_grad():
        for layer in layers:
            layer.weight.mul_(3)  # far from the target, so every layer must be rescaled
    images = torch.randn(64, 3, 32, 32)

    def output_stats():
        outs = []
        handles = [layer.register_forward_hook(lambda m, a, out: outs.append(out)) for layer in layers]
        with torch.no_grad():
            model.eval()
            model(images)
        for h in handles:
            h.remove()
        return [(out.var().item(), out.mean().item()) for out in outs]

    assert all(abs(var - 0.125) > 0.1 for var, _ in output_stats()[1:])
    rounds = cifar10.lsuv(model, images)
    assert model.training  # back in train mode afterwards
    assert len(rounds) == len(layers) and all(0 <= r <= 10 for r in rounds) and rounds[1] >= 1
    for var, mean in output_stats():
        assert abs(var - 0.125) <= 0.1
        assert abs(mean) < 1e-4  # bias mean subtraction
    cifar10.lsuv(model, images, tol=1e-4)
    assert all(abs(var - 0.125) <= 1e-4 for var, _ in output_stats())


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
    from torchvision.transforms import Normalize

    images = torch.randint(0, 256, (5, 3, 32, 32), dtype=torch.uint8)
    expected = Normalize(cifar10.MEAN, cifar10.STD)(images.float() / 255)
    assert torch.allclose(cifar10.Normalize(torch.device("cpu"))(images), expected, atol=1e-5)


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
    assert {"learning_curve.png", "rational_evolution.png", "rational_features_1.png"} <= names
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
    report = ratsweep(tmp_path, "report", "cifar10_table1").stdout
    rows = [line for line in report.splitlines() if line.startswith("| vgg")]
    assert len(rows) == 10 and "x 100" in report and "best per model" in report


def test_missing_data_stops_the_sweep_before_it_starts(tmp_path):
    proc = ratsweep(tmp_path, "run", "cifar10_table1", "--smoke", "--data-dir", "nowhere", check=False)
    assert proc.returncode == 2 and "ratsweep data cifar10 --dir nowhere" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and not (tmp_path / "mlruns.db").exists()


def _run(config_: dict, value: float, seconds: float = 60.0) -> results.TrialRun:
    return results.TrialRun(run_id=str(id(config_)), status="FINISHED", config=config_, extra={},
                            metrics={"best_test_acc": value}, seconds=seconds, sweep="s")


def test_table_2_layout_takes_the_better_lsuv_setting_per_cell():
    runs = []
    for seed in range(2):
        for norm in ("none", "group"):
            for lsuv, bonus in ((False, 0.0), (True, 0.02 if norm == "group" else -0.02)):
                runs.append(_run({"model": "vgg4", "activation": "relu", "norm": norm, "lsuv": lsuv, "seed": seed}, 0.80 + bonus + seed * 0.01))
                runs.append(_run({"model": "vgg4", "activation": "rational", "rational.init": "gelu", "norm": norm, "lsuv": lsuv, "seed": seed}, 0.85 + bonus))
    sweep = results.Sweep("t2", "cifar10", "best_test_acc", "max", runs, None, ["s"],
                          {"rows": ["model", "activation", "rational.init"], "columns": "norm", "best_of": "lsuv", "percent": True})
    md = results.table(sweep, results.Layout.of(sweep), "md")
    assert "| model | activation | rational.init | norm=group | norm=none | n | minutes |" in md
    relu = next(line for line in md.splitlines() if "| relu |" in line)
    assert "82.50 ± 0.71 (lsuv=True)" in relu and "80.50 ± 0.71 (lsuv=False)" in relu  # group: LSUV helps; none: it hurts
    rational = next(line for line in md.splitlines() if "| rational |" in line)
    assert "**87.00 ± 0.00 (lsuv=True)**" in rational and "**85.00 ± 0.00 (lsuv=False)**" in rational  # best per column
    csv_rows = results.table(sweep, results.Layout.of(sweep), "csv").splitlines()
    assert csv_rows[0] == "model,activation,rational.init,norm,lsuv,best_test_acc_mean,best_test_acc_std,n,minutes"
    assert len(csv_rows) == 1 + 4
