"""timm:/torchvision: models in the image experiments: names checked, activations swapped as the
`swap` section says (counts logged, nothing matched refused), and a sweep of them end to end on
synthetic CIFAR-10 pickles (real format, fake pixels: never a result)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from helpers import mlflow_client, ratsweep, trial_runs
from synthetic_data import write_cifar10
from torch import nn

from ratsweep import config
from ratsweep.errors import ConfigError
from ratsweep.experiments import cifar10, library_models
from ratsweep.experiments.common import LocalSession, Rational
from ratsweep.rational import activation_calls, count_activations, replace_activations

timm = pytest.importorskip("timm")


def cifar(**values) -> cifar10.Cifar10Config:
    return config.build(cifar10.Cifar10Config, values)


def swaps(params: dict) -> dict:
    return {k: v for k, v in params.items() if k.startswith("swapped.")}


def rationals(model: nn.Module) -> list[Rational]:
    return list({id(m): m for m in model.modules() if isinstance(m, Rational)}.values())


# ---- names ------------------------------------------------------------------------------------


@pytest.mark.parametrize("model, hint", [("timm:resnet81", "did you mean 'resnet18'?"),
                                         ("torchvision:resnt18", "did you mean 'resnet18'?"),
                                         ("vgg5", "or timm:NAME, torchvision:NAME, got 'vgg5' (did you mean 'vgg8'?)")])
def test_a_misspelt_model_name_gets_a_did_you_mean(model, hint):
    with pytest.raises(ConfigError, match="^model: ") as error:
        cifar(model=model)
    assert hint in str(error.value) and "\n" not in str(error.value)


def test_validate_checks_a_library_name_against_the_installed_library(tmp_path):
    proc = ratsweep(tmp_path, "validate", "examples/cifar10_timm_resnets", "--set", "model=timm:resnet81", check=False)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "timm has no model 'resnet81' (did you mean 'resnet18'?)" in proc.stderr


def test_native_and_replaced_apply_only_to_library_models():
    with pytest.raises(ConfigError, match="^activation: .*native keeps"):
        cifar(model="vgg4", activation="native")
    with pytest.raises(ConfigError, match="^rational.init: .*replaced applies"):
        cifar(model="vgg4", activation="rational", **{"rational.init": "replaced"})
    with pytest.raises(ConfigError, match="^norm: expected none for a timm"):
        cifar(model="timm:resnet10t", norm="group")
    # the paper's models keep the paper's init; library models follow what they replace
    assert cifar(activation="rational").rational.init == "leaky_relu"
    assert cifar(model="timm:resnet10t", activation="rational").rational.init == "replaced"


def test_swap_keys_apply_only_to_library_models_and_take_from_as_a_key():
    vgg = config.flatten(cifar(activation="rational"))
    assert not any(key.startswith("swap.") for key in vgg)
    timm_config = cifar(model="timm:resnet10t", activation="rational", swap={"from": ["relu"], "share": "model", "skip": ["conv1*"]})
    flat = config.flatten(timm_config)
    assert flat["swap.from"] == ["relu"] and flat["swap.share"] == "model" and flat["swap.skip"] == ["conv1*"]
    assert timm_config.swap.replace == ("relu",)
    with pytest.raises(ConfigError, match=r"^swap.from: expected one of relu, gelu, silu, leaky_relu, tanh, got 'relux' \(did you mean 'relu'\?\)"):
        cifar(model="timm:resnet10t", **{"swap.from": ["relux"]})
    docs = {d.key: d for d in config.key_docs(cifar10.Cifar10Config)}
    assert docs["swap.from"].when == "model = timm:NAME or torchvision:NAME" and docs["swap.from"].doc


def test_build_passes_each_optional_keyword_the_builder_takes():
    resnet = library_models.build("timm:resnet10t", 7, img_size=32, image_size=32, drop_rate=0.3)  # ResNet takes drop_rate only
    assert resnet.num_classes == 7 and resnet.drop_rate == 0.3
    vit = library_models.build("timm:vit_tiny_patch16_224", 7, img_size=32, image_size=32)
    assert vit.patch_embed.img_size == (32, 32)
    tv_vit = library_models.build("torchvision:vit_b_16", 7, img_size=32, image_size=32, dropout=0.1)
    assert tv_vit.image_size == 32 and tv_vit.heads.head.out_features == 7 and tv_vit.dropout == 0.1
    assert library_models.is_library_model("timm:resnet18") and not library_models.is_library_model("vgg4")
    assert not library_models.is_library_model("timmy:resnet18")


# ---- the swap ---------------------------------------------------------------------------------


def test_timm_resnet_every_relu_becomes_its_own_rational_fitted_to_relu():
    model, swapped = cifar10.build_model(cifar(model="timm:resnet18", activation="rational"), dropout=0.0)
    assert swaps(swapped) == {"swapped.torch.ReLU": 17}  # stem + two per basic block, each its own module in timm
    layers = rationals(model)
    assert len(layers) == 17 and not any(isinstance(m, nn.ReLU) for m in model.modules())
    relu_fit = Rational(init="relu")
    assert all(torch.equal(r.numerator, relu_fit.numerator) for r in layers)
    out = model(torch.randn(2, 3, 32, 32))
    assert out.shape == (2, 10)
    out.sum().backward()
    assert all(r.numerator.grad is not None for r in layers)  # all in the graph; the blocks' act1 get 0 for now:
    # timm zero-inits each block's last BatchNorm (zero_init_last), so nothing flows back through it yet
    assert [name for name, r in model.named_modules() if isinstance(r, Rational) and not r.numerator.grad.abs().sum()] == \
        [f"layer{i}.{j}.act1" for i in range(1, 5) for j in range(2)]


def test_a_gelu_becomes_a_rational_fitted_to_gelu_unless_the_init_is_given():
    vit = {"model": "timm:vit_tiny_patch16_224", "activation": "rational"}
    model, swapped = cifar10.build_model(cifar(**vit), dropout=0.0)
    assert swaps(swapped) == {"swapped.torch.GELU": 12}
    assert model(torch.randn(1, 3, 32, 32)).shape == (1, 10)  # built for 32 px images (img_size)
    gelu_fit = Rational(init="gelu")
    assert all(torch.equal(r.numerator, gelu_fit.numerator) for r in rationals(model))
    model, _ = cifar10.build_model(cifar(**vit, **{"rational.init": "tanh"}), dropout=0.0)
    assert all(torch.equal(r.numerator, Rational(init="tanh").numerator) for r in rationals(model))


def test_timm_activation_layers_built_through_act_layer_are_swapped():
    """timm's own GELU class (get_act_layer('gelu')) is not nn.GELU; it is a gelu kind all the same."""
    from timm.layers import activations as timm_activations

    model, swapped = cifar10.build_model(cifar(model="timm:convnext_atto", activation="rational"), dropout=0.0)
    assert swaps(swapped) == {"swapped.timm.GELU": 12}  # one per block: depths 2, 2, 6, 2
    assert not any(isinstance(m, timm_activations.GELU) for m in model.modules()) and len(rationals(model)) == 12


def test_a_fixed_activation_replaces_every_kind_and_is_counted_once():
    model, swapped = cifar10.build_model(cifar(model="torchvision:resnet18", activation="gelu"), dropout=0.0)
    import torchvision

    assert swapped["torchvision_version"] == torchvision.__version__
    # torchvision's blocks call one ReLU module twice: 9 modules, each now a GELU (not counted again as one)
    assert swaps(swapped) == {"swapped.torch.ReLU": 9}
    assert sum(isinstance(m, nn.GELU) for m in model.modules()) == 9 and not any(isinstance(m, nn.ReLU) for m in model.modules())


def test_share_model_gives_the_whole_model_one_coefficient_set():
    model, swapped = cifar10.build_model(cifar(model="timm:resnet10t", activation="rational", **{"swap.share": "model"}), dropout=0.0)
    assert swapped["swapped.torch.ReLU"] > 1 and len(rationals(model)) == 1
    groups = cifar10.rational_param_groups(model, lr=0.1)
    assert sum(p.numel() for p in groups[0]["params"]) == 10  # one numerator (6) and denominator (4)


def test_skip_leaves_matching_module_paths_alone():
    model, swapped = cifar10.build_model(cifar(model="timm:resnet18", activation="rational", **{"swap.skip": ["act1", "layer4.*"]}),
                                         dropout=0.0)
    assert swaps(swapped) == {"swapped.torch.ReLU": 17 - 1 - 4}
    assert isinstance(model.act1, nn.ReLU) and isinstance(model.layer4[0].act1, nn.ReLU)
    assert isinstance(model.layer1[0].act1, Rational)


def test_native_keeps_the_models_own_activations():
    model, swapped = cifar10.build_model(cifar(model="timm:resnet10t", activation="native"), dropout=0.0)
    assert swapped == {"timm_version": timm.__version__} and not rationals(model) and any(isinstance(m, nn.ReLU) for m in model.modules())


def test_a_model_with_functional_activations_is_refused_naming_them():
    """torchvision's GoogLeNet calls F.relu in forward: nothing to swap, so the trial must fail."""
    with pytest.warns(FutureWarning):  # torchvision's note on GoogLeNet's init
        with pytest.raises(ConfigError) as error:
            cifar10.build_model(cifar(model="torchvision:googlenet", activation="rational"), dropout=0.0)
    message = str(error.value)
    assert message.startswith("swap.from: torchvision:googlenet has no relu | gelu | silu activation module")
    assert "relu() x 57 outside any module (functional activations cannot be swapped)" in message and "\n" not in message


def test_skipping_every_match_is_refused_too():
    with pytest.raises(ConfigError, match=r"its activation modules are torch.ReLU x 17; swap.skip \['\*'\] leaves out every match"):
        cifar10.build_model(cifar(model="timm:resnet18", activation="rational", **{"swap.skip": ["*"]}), dropout=0.0)


def test_activation_calls_tell_functional_calls_from_activation_modules():
    class Mixed(nn.Module):
        def __init__(self):
            super().__init__()
            self.linear, self.act, self.other = nn.Linear(3, 3), nn.GELU(), nn.Hardswish()

        def forward(self, x):
            return self.other(torch.sigmoid(self.act(F.relu(self.linear(x)))))

    model = Mixed()
    functional, modules = activation_calls(model, torch.randn(2, 3))
    assert functional == {"relu": 1, "sigmoid": 1}  # nn.GELU's own F.gelu is the module's, not the forward's
    assert modules == {nn.GELU: 1, nn.Hardswish: 1}
    assert count_activations(model) == {nn.GELU: 1}
    assert model.training  # put back as it was


def test_replace_activations_shares_one_module_when_asked():
    model = nn.Sequential(nn.Linear(2, 2), nn.ReLU(), nn.Linear(2, 2), nn.ReLU(), nn.Sequential(nn.ReLU()))
    assert replace_activations(model, Rational, skip=["4.*"], share=True) == 2
    assert model[1] is model[3] and isinstance(model[1], Rational) and isinstance(model[4][0], nn.ReLU)


# ---- runs -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return write_cifar10(tmp_path_factory.mktemp("cifar"), train_per_batch=100, test=100)


def test_a_torchvision_model_trains_with_lsuv_and_logs_its_swap(data_dir):
    session = LocalSession(smoke=True, data_dir=data_dir)
    final = cifar10.run(cifar(model="torchvision:resnet18", activation="rational", lsuv=True, epochs=1), session)
    assert session.params["swapped.torch.ReLU"] == 9
    assert session.params["num_params"] == 11_181_642 + 9 * 10  # ResNet-18 with 10 classes, and 9 rationals
    assert 0 <= final["test_acc"] <= 1 and (session.artifact_dir / "rational_evolution.png").is_file()


def test_a_sweep_of_timm_and_torchvision_models_logs_swaps_and_fails_what_cannot_swap(data_dir, tmp_path):
    """The bundled example (its two timm ResNets, ReLU against rational), extended (a space of one's
    own in three lines) with a torchvision model and a functional-activation model; --smoke on
    synthetic data, one seed."""
    space = tmp_path / "mine.yaml"
    space.write_text("extends: examples/cifar10_timm_resnets\nname: mine\n"
                     "search_space: {model: {grid: [timm:resnet10t, timm:resnet18, torchvision:resnet18, torchvision:googlenet]}}\n")
    proc = ratsweep(tmp_path, "run", str(space), "--smoke", "--set", "seed=0", "--data-dir", str(data_dir), timeout=900, check=False)
    assert proc.returncode == 3, proc.stderr[-3000:]  # the sweep ran; some trials failed
    runs, _ = trial_runs(mlflow_client(tmp_path), "mine")
    by_config = {(r.data.params["model"], r.data.params["activation"]): r for r in runs}
    assert len(by_config) == 8
    for activation in ("relu", "rational"):
        assert by_config["timm:resnet18", activation].data.params["swapped.torch.ReLU"] == "17"
        assert by_config["torchvision:resnet18", activation].data.params["swapped.torch.ReLU"] == "9"
        assert int(by_config["timm:resnet10t", activation].data.params["swapped.torch.ReLU"]) > 0
        assert by_config["timm:resnet10t", activation].info.status == "FINISHED"
        failed = by_config["torchvision:googlenet", activation]
        assert failed.info.status == "FAILED"
        assert "functional activations cannot be swapped" in failed.data.tags["ratsweep.failure"]
    assert by_config["timm:resnet10t", "rational"].data.params["rational.init"] == "replaced"
    assert by_config["timm:resnet10t", "rational"].data.params["swap.from"] == "['relu']"
