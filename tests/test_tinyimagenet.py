"""Tiny ImageNet (`tinyimagenet`): timm models as the authors created and swapped them, the
norm-free ViT, weight-decay groups and schedule, EMA, the repeated-augmentation sampler and per-image
augmentation, the decoded cache, exact resume, the Table 5 space, and a smoke sweep end to end. The
data is a synthetic tiny-imagenet-200 folder in the real layout: no number from it is a result."""

from __future__ import annotations

import math
import os
import statistics

import numpy as np
import pytest
import torch
from torch import nn

from helpers import artifacts, mlflow_client, ratsweep, trial_runs
from ratsweep import config as cfg
from ratsweep import registry
from ratsweep.experiments import tinyimagenet as ti
from ratsweep.experiments.common import DataError, Diverged, LocalSession, Rational, activation_factory
from ratsweep.rational.fits import published_fit
from ratsweep.sweep.space import load as load_space
from synthetic_data import write_tinyimagenet

TIMM_NAMES = {"vit": ("vit_small_patch8_224", 12), "cait": ("cait_s24_224", 26), "swin": ("swin_tiny_patch4_window7_224", 12)}
COEFFICIENTS_PER_RATIONAL = 6 + 4  # (5, 4): numerator a_0..a_5, denominator b_1..b_4


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return write_tinyimagenet(tmp_path_factory.mktemp("tiny"))


def make(**values) -> ti.TinyImageNetConfig:
    return cfg.build(ti.TinyImageNetConfig, values)


def timm_reference(model: str) -> nn.Module:
    import timm

    return timm.create_model(TIMM_NAMES[model][0], pretrained=False, num_classes=200, img_size=64, drop_path_rate=0.1)


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("model", list(TIMM_NAMES))
def test_models_are_timms_with_every_gelu_swapped(model):
    reference = timm_reference(model)
    swaps = TIMM_NAMES[model][1]
    assert sum(type(m) is nn.GELU for m in reference.modules()) == swaps
    torch.manual_seed(0)
    rational = registry.create_model(model, activation_factory("rational", make(model=model, activation="rational").rational),
                                     num_classes=200, img_size=64, drop_path_rate=0.1)
    rationals = [m for m in rational.modules() if isinstance(m, Rational)]
    assert not any(isinstance(m, nn.GELU) for m in rational.modules())
    assert len(rationals) == swaps and len({id(m.numerator) for m in rationals}) == swaps  # one coefficient set per layer
    assert count_params(rational) == count_params(reference) + swaps * COEFFICIENTS_PER_RATIONAL
    gelu = published_fit("gelu", (5, 4), "A")  # the authors' init: the package's GELU fit
    assert all(torch.allclose(r.numerator.double(), torch.tensor(gelu["numerator"], dtype=torch.float64)) for r in rationals)
    relu = registry.create_model(model, nn.ReLU, num_classes=200, img_size=64, drop_path_rate=0.1)
    assert sum(type(m) is nn.ReLU for m in relu.modules()) == swaps and not any(isinstance(m, nn.GELU) for m in relu.modules())
    assert count_params(relu) == count_params(reference)
    assert relu(torch.randn(2, 3, 64, 64)).shape == (2, 200)


def test_the_norm_free_vit_has_no_layernorm_in_its_blocks_nor_in_its_ema():
    model, ema, _ = ti.build(make(model="vit", activation="rational", no_norm=True), torch.device("cpu"))
    for network in (model, ema.module):
        assert not any(isinstance(m, nn.LayerNorm) for m in network.blocks.modules())
        assert isinstance(network.norm, nn.LayerNorm)  # the final norm is not a block's
        assert all(isinstance(block.norm1, nn.Identity) and isinstance(block.norm2, nn.Identity) for block in network.blocks)
    kept, _, _ = ti.build(make(model="vit"), torch.device("cpu"))
    assert sum(isinstance(m, nn.LayerNorm) for m in kept.blocks.modules()) == 24
    with pytest.raises(cfg.ConfigError, match="no_norm: model 'flat' has no blocks"):
        registry._architectures["flat"] = registry.Architecture("flat", lambda activation, **_: nn.Linear(1, 1), ti.FAMILY, "", __name__)
        try:
            ti.build(make(model="flat", no_norm=True), torch.device("cpu"))
        finally:
            del registry._architectures["flat"]


def test_ema_averages_every_state_entry_every_step():
    model, ema, _ = ti.build(make(model="swin", ema_decay=0.9), torch.device("cpu"))
    before = {k: v.clone() for k, v in ema.module.state_dict().items()}
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    ema.update(model)
    after, current = ema.module.state_dict(), model.state_dict()
    for key, value in before.items():
        expected = 0.9 * value + 0.1 * current[key] if value.is_floating_point() else current[key]
        assert torch.allclose(after[key], expected, atol=1e-6), key
    assert not ema.module.training  # evaluated as is


def test_weight_decay_groups_follow_the_authors_rule():
    for model_name, decayed, not_decayed in [
        ("vit", ("pos_embed", "cls_token", "blocks.0.attn.qkv.weight", "patch_embed.proj.weight"), ("blocks.0.norm1.weight", "head.bias")),
        ("cait", ("pos_embed", "cls_token"), ("blocks.0.gamma_1", "blocks_token_only.0.norm1.weight")),
        ("swin", ("layers.0.blocks.0.attn.relative_position_bias_table",), ("layers.1.downsample.norm.weight", "norm.bias")),
    ]:
        model, _, _ = ti.build(make(model=model_name, activation="rational"), torch.device("cpu"))
        groups = {g["name"]: g for g in ti.param_groups(model, 5e-4, 4.0, 0.05)}
        names = {id(p): n for n, p in model.named_parameters()}
        members = {name: {names[id(p)] for p in g["params"]} for name, g in groups.items()}
        assert set(decayed) <= members["decay"] and set(not_decayed) <= members["no_decay"], model_name
        assert all(n.endswith(("numerator", "denominator")) for n in members["rational"]) and len(members["rational"]) == 2 * TIMM_NAMES[model_name][1]
        assert (groups["rational"]["lr"], groups["rational"]["weight_decay"]) == (5e-4 * 4.0, 0.0)
        assert (groups["decay"]["weight_decay"], groups["no_decay"]["weight_decay"]) == (0.05, 0.0)
        assert sum(len(g) for g in members.values()) == len(names)  # every parameter once


def test_schedule_warms_up_per_step_then_cosines_to_the_floor():
    warmup, total, floor = 10, 110, 1e-6 / 5e-4
    factors = [ti.lr_factor(step, warmup, total, floor) for step in range(total)]
    assert factors[:warmup] == [(s + 1) / warmup for s in range(warmup)]
    assert factors[warmup] == 1.0 and all(a >= b for a, b in zip(factors[warmup:], factors[warmup + 1:]))
    assert ti.lr_factor(total, warmup, total, floor) == pytest.approx(floor)
    assert factors[warmup + 50] == pytest.approx(floor + (1 - floor) * 0.5)
    # In the optimizer: each group's rate is its base times the factor, so the rational group ends at min_lr x lr_mult.
    parameters = [nn.Parameter(torch.zeros(1)), nn.Parameter(torch.zeros(1))]
    optimizer = torch.optim.AdamW([{"params": [parameters[0]], "lr": 5e-4}, {"params": [parameters[1]], "lr": 5e-4 * 8}])
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: ti.lr_factor(step, warmup, total, floor))
    assert [g["lr"] for g in optimizer.param_groups] == pytest.approx([5e-4 / warmup, 5e-4 * 8 / warmup])
    for _ in range(total):
        optimizer.step()
        schedule.step()
    assert [g["lr"] for g in optimizer.param_groups] == pytest.approx([1e-6, 8e-6])


def test_an_epoch_shows_every_image_repeats_times_in_a_seeded_order():
    sampler = ti.RepeatedAugmentationBatches(n=100, repeats=3, batch_size=16, seed=1)
    assert len(sampler) == 300 // 16
    epoch0 = [key for batch in sampler for key in batch]
    assert len(epoch0) == 18 * 16 and all(len(batch) == 16 for batch in sampler)
    full = ti.RepeatedAugmentationBatches(n=100, repeats=3, batch_size=20, seed=1)
    counts = np.bincount([i for batch in full for i, _ in batch], minlength=100)
    assert (counts == 3).all()  # every image three times (300 divides into batches of 20)
    assert len({seed for batch in full for _, seed in batch}) == 300  # each draw its own augmentation seed
    assert epoch0 == [key for batch in ti.RepeatedAugmentationBatches(100, 3, 16, seed=1) for key in batch]  # seeded
    sampler.set_epoch(1)
    assert [key for batch in sampler for key in batch] != epoch0
    assert sampler.seed + sampler.epoch == 2  # seed + epoch, as the authors' sampler
    shifted = ti.RepeatedAugmentationBatches(100, 3, 16, seed=2)
    assert [key for batch in shifted for key in batch] == [key for batch in sampler for key in batch]
    assert len(ti.RepeatedAugmentationBatches(100, 3, 16, seed=1, steps=2)) == 2
    with pytest.raises(DataError, match="make no batch"):
        ti.RepeatedAugmentationBatches(2, 1, 4, seed=0)


def test_augmentation_draws_per_image_and_is_the_same_in_any_worker(data_dir):
    cache = ti.cached_arrays(str(data_dir.resolve()))
    config = make(batch_size=8, steps_per_epoch=2, workers=0)
    dataset = ti.AugmentedImages(cache / "train_images.npy", np.load(cache / "train_labels.npy"), ti.train_transform(config))
    torch.manual_seed(123)
    state = torch.get_rng_state()
    first, again, other = dataset[(5, 1)][0], dataset[(5, 1)][0], dataset[(5, 2)][0]
    assert torch.equal(torch.get_rng_state(), state)  # the caller's RNG is untouched
    assert first.shape == (3, 64, 64) and first.dtype == torch.float32
    assert torch.equal(first, again) and not torch.equal(first, other)  # the same image, its own crop/ops per draw
    batches = {}
    for workers in (0, 2):
        loader = ti.train_loader(cache, make(batch_size=8, steps_per_epoch=2, workers=workers), pin_memory=False)
        batches[workers] = [(x.clone(), y.clone()) for x, y in loader]
    assert len(batches[0]) == 2 and batches[0][0][0].shape == (8, 3, 64, 64)
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(batches[0], batches[2]))
    # Normalized, then randomly erased with random values: no longer in [0, 1], not constant per image.
    x = batches[0][0][0]
    assert x.min() < 0 and x.std(dim=(1, 2, 3)).min() > 0


def test_mixup_mixes_labels_with_smoothing():
    mixup, loss = ti.mixer(make())
    labels = torch.arange(8) * 3
    np.random.seed(0)
    images, targets = mixup(torch.randn(8, 3, 64, 64), labels)
    assert images.shape == (8, 3, 64, 64) and targets.shape == (8, 200)
    assert torch.allclose(targets.sum(1), torch.ones(8))
    off = 0.1 / 200
    mixed = targets[torch.arange(8), labels] + targets[torch.arange(8), labels.flip(0)]
    assert torch.allclose(mixed, torch.full((8,), 1 - 198 * off)) and targets.min() == pytest.approx(off)  # batch mode: one lambda
    assert loss(torch.zeros(8, 200), targets).item() == pytest.approx(math.log(200))


def test_defaults_are_the_authors(data_dir):
    config = make()
    assert (config.model, config.activation, config.epochs, config.batch_size, config.lr) == ("vit", "gelu", 100, 128, 5e-4)
    assert (config.warmup_epochs, config.weight_decay, config.ema_decay, config.repeats, config.seed) == (5, 0.05, 0.999, 3, 1)
    assert config.rational.init == "gelu" and config.rational.degrees == (5, 4) and config.rational.version == "A"
    assert {m: make(model=m).rational.lr_mult for m in TIMM_NAMES} == {"cait": 2.0, "vit": 4.0, "swin": 8.0}
    assert make(model="swin", **{"rational.lr_mult": 16.0}).rational.lr_mult == 16.0
    assert make(batch_size=256).lr == pytest.approx(1e-3)
    assert (config.tf32, config.amp) == (True, False)
    for bad, key in [({"batch_size": 7}, "batch_size"), ({"model": "vgg4"}, "model"), ({"hue": 0.7}, "hue"), ({"crop_scale": [0.9, 0.5]}, "crop_scale")]:
        with pytest.raises(cfg.ConfigError, match=f"^{key}: expected"):
            make(**bad)


def test_cache_is_decoded_once_and_holds_rgb_images_with_their_labels(tmp_path):
    root = write_tinyimagenet(tmp_path, train_per_class=1, val_per_class=1)
    cache = ti.cached_arrays(str(root))
    train, val = np.load(cache / "train_images.npy", mmap_mode="r"), np.load(cache / "val_images.npy", mmap_mode="r")
    assert train.shape == (200, 64, 64, 3) and val.shape == (200, 64, 64, 3) and train.dtype == np.uint8
    assert np.load(cache / "train_labels.npy").tolist() == list(range(200))  # wnids.txt's order
    assert np.load(cache / "val_labels.npy").tolist() == [i % 200 for i in range(200)]  # from val_annotations.txt
    grey = train[6]  # the synthetic writer saves every seventh image grayscale: converted to RGB
    assert (grey[..., 0] == grey[..., 1]).all() and (grey[..., 1] == grey[..., 2]).all()
    built = (cache / "manifest.json").stat().st_mtime_ns
    ti.cached_arrays.cache_clear()
    assert ti.cached_arrays(str(root)) == cache and (cache / "manifest.json").stat().st_mtime_ns == built  # reused
    extra = root / ti.FOLDER / "train" / (root / ti.FOLDER / "wnids.txt").read_text().split()[0] / "images" / "extra.JPEG"
    extra.write_bytes((next(extra.parent.glob("*_0.JPEG"))).read_bytes())
    ti.cached_arrays.cache_clear()
    assert np.load(ti.cached_arrays(str(root)) / "train_images.npy", mmap_mode="r").shape[0] == 201  # rebuilt
    (extra.parent / "broken.JPEG").write_bytes(b"not a jpeg")
    ti.cached_arrays.cache_clear()
    with pytest.raises(DataError, match=r"cannot decode .*broken.JPEG.*ratsweep data tinyimagenet --dir"):
        ti.cached_arrays(str(root))


def test_missing_or_malformed_data_is_one_line_naming_the_command(tmp_path):
    with pytest.raises(DataError, match=r"tiny-imagenet-200 does not exist; get it with: ratsweep data tinyimagenet --dir"):
        ti.verify(tmp_path)
    root = write_tinyimagenet(tmp_path / "bad", train_per_class=1, val_per_class=1)
    (root / ti.FOLDER / "val" / "val_annotations.txt").unlink()
    with pytest.raises(DataError, match=r"lacks val/val_annotations.txt; get it with: ratsweep data tinyimagenet"):
        ti.verify(root)
    (root / ti.FOLDER / "wnids.txt").write_text("n0001\nn0002\n")
    with pytest.raises(DataError, match=r"must list 200 distinct class ids, found 2"):
        ti.verify(root)
    proc = ratsweep(tmp_path, "run", "tinyimagenet_table5", "--smoke", "--data-dir", str(tmp_path / "nowhere"), check=False)
    assert proc.returncode == 2 and proc.stderr.strip().count("\n") == 0 and "ratsweep data tinyimagenet" in proc.stderr, proc.stderr
    assert not (tmp_path / "mlruns.db").exists()  # nothing started


RESUME = {"model": "swin", "activation": "rational", "epochs": 2, "batch_size": 4, "steps_per_epoch": 2, "workers": 0}


def test_a_resumed_run_continues_exactly(data_dir):
    whole = LocalSession(smoke=True, data_dir=data_dir)
    ti.run(make(**RESUME), whole)
    resumed = LocalSession(smoke=True, data_dir=data_dir, restored=whole.states[0])
    ti.run(make(**RESUME), resumed)
    timing = {"epoch_time_s", "img_per_s", "elapsed_min", "median_epoch_min"}
    assert len(resumed.history) == 1
    assert {k: v for k, v in resumed.history[0].items() if k not in timing} == {k: v for k, v in whole.history[1].items() if k not in timing}
    for part in ("model", "ema"):
        for key, value in whole.states[1][part].items():
            assert torch.equal(value, resumed.states[0][part][key]), (part, key)
    assert whole.states[1]["optimizer"]["param_groups"][0]["lr"] == resumed.states[0]["optimizer"]["param_groups"][0]["lr"]
    assert whole.params["num_params"] == count_params(timm_reference("swin")) + 12 * COEFFICIENTS_PER_RATIONAL
    names = {p.name for p in whole.artifact_dir.iterdir()}
    assert {"learning_curve.png", "rational_evolution.png", "activation_layer1.png"} <= names
    # Table 5's time: the total of epoch times (training and both evaluations), and the median epoch beside it
    epochs = [m["epoch_time_s"] for m in whole.history]
    assert whole.history[1]["elapsed_min"] == pytest.approx(sum(epochs) / 60)
    assert whole.history[1]["median_epoch_min"] == pytest.approx(statistics.median(epochs) / 60)


def test_a_diverging_run_fails_with_its_reason(data_dir, monkeypatch):
    """Any architecture registered with family tinyimagenet can be named; one whose loss turns NaN
    (as the paper's norm-free ReLU/GELU ViTs) raises Diverged, which a sweep records as FAILED."""

    class Exploding(nn.Module):
        def __init__(self, activation, num_classes, **_):
            super().__init__()
            self.head, self.act = nn.Linear(3, num_classes), activation()

        def forward(self, x):
            return self.head(self.act(x.mean((2, 3)))) * float("nan")

    monkeypatch.setitem(registry._architectures, "exploding", registry.Architecture("exploding", Exploding, ti.FAMILY, "", __name__))
    with pytest.raises(Diverged, match="loss is nan at epoch 1"):
        ti.run(make(model="exploding", batch_size=4, steps_per_epoch=1, workers=0), LocalSession(smoke=True, data_dir=data_dir))


def test_the_table5_space_pins_the_authors_settings_and_lays_out_the_table():
    [space] = load_space("tinyimagenet_table5")
    cells = [(t["model"], t["no_norm"], t["activation"]) for t in space.trials()]
    assert len(cells) == 12 and len(set(cells)) == 12
    assert {c for c in cells if c[1]} == {("vit", True, a) for a in ("relu", "gelu", "rational")}  # only the ViT without norms
    assert {(m, a) for m, no_norm, a in cells if not no_norm} == {(m, a) for m in TIMM_NAMES for a in ("relu", "gelu", "rational")}
    for trial in space.trials():
        config = space.build_config(trial)
        assert (config.epochs, config.batch_size, config.lr, config.tf32, config.amp, config.seed) == (100, 128, 5e-4, True, False, 1)
        if config.activation == "rational":
            assert config.rational.init == "gelu" and config.rational.lr_mult == ti.RATIONAL_LR_MULT[config.model]
    assert space.resources["gpu"] == 1 and space.report["paper"] == "table5" and space.report["rows"] == ["model", "no_norm", "activation"]
    assert list(space.report["also"]) == ["elapsed_min", "median_epoch_min"]


def test_the_authors_committed_variant_is_one_key_every_rational_run_norm_free():
    """rational_no_norm (the authors' ALWAYS_DISABLE_NORMS_WHEN_RATIONAL): a rational run is built and
    recorded norm-free; other activations keep their norms. In the Table 5 space the ViT rational
    cell of both documents is then one config, run once."""
    assert make(model="cait", activation="rational", rational_no_norm=True).no_norm is True
    assert make(model="cait", activation="gelu", rational_no_norm=True).no_norm is False
    assert make(model="cait", activation="rational").no_norm is False  # Table 5's reading, the default
    [space] = load_space("tinyimagenet_table5", overrides={"rational_no_norm": True})
    built = [space.build_config(t) for t in space.trials()]
    assert len(built) == 11 and all(c.no_norm for c in built if c.activation == "rational")
    assert sorted(c.model for c in built if c.activation == "rational") == ["cait", "swin", "vit"]


SMOKE_SPACE = """\
name: tin_smoke
experiment: tinyimagenet
metric: {name: best_ema_top1, mode: max}
config: {model: vit}
search_space:
  activation: {grid: [relu, rational]}
report: {rows: [model], columns: activation, percent: true}
"""


def test_smoke_sweep_lands_ema_top1_num_params_and_plots_in_mlflow(data_dir, tmp_path):
    (tmp_path / "space.yaml").write_text(SMOKE_SPACE)
    ratsweep(tmp_path, "run", "space.yaml", "--smoke", "--data-dir", str(data_dir), timeout=600)
    client = mlflow_client(tmp_path)
    runs, _ = trial_runs(client, "tin_smoke")
    assert len(runs) == 2 and all(r.info.status == "FINISHED" for r in runs)
    for run in runs:
        assert 0 <= run.data.metrics["ema_top1"] <= 1 and math.isfinite(run.data.metrics["train_loss"])
        rational = run.data.params["activation"] == "rational"
        assert int(run.data.params["num_params"]) == count_params(timm_reference("vit")) + rational * 12 * COEFFICIENTS_PER_RATIONAL
        names = artifacts(client, run)
        assert "learning_curve.png" in names and any(n.startswith("activation_layer") for n in names) == rational
    out = ratsweep(tmp_path, "report", "tin_smoke", "--include-smoke").stdout
    assert "| vit |" in out, out
    assert os.path.isdir(data_dir / ti.FOLDER / ti.CACHE)  # decoded beside the data, once for both trials


def test_a_timm_model_by_name_runs_the_recipe_with_its_swap_logged(data_dir):
    """model: timm:NAME at 64 px with 200 classes and the recipe's drop path; its GELUs become
    rationals fitted to GELU, with the lr multiplier of an unlisted model (1)."""
    config = make(model="timm:vit_tiny_patch16_224", activation="rational", epochs=1, batch_size=4, steps_per_epoch=1, workers=0)
    assert config.rational.init == "replaced" and config.rational.lr_mult == ti.OTHER_LR_MULT
    session = LocalSession(smoke=True, data_dir=data_dir)
    final = ti.run(config, session)
    assert session.params["swapped.torch.GELU"] == 12
    import timm

    reference = timm.create_model("vit_tiny_patch16_224", num_classes=200, img_size=64, drop_path_rate=0.1)
    assert session.params["num_params"] == count_params(reference) + 12 * COEFFICIENTS_PER_RATIONAL
    assert 0 <= final["ema_top1"] <= 1
