"""Any timm or torchvision model from one line: `model: timm:resnet18` or `model: torchvision:resnet18`.

The image experiments build such a model untrained, for their data (`num_classes`, and the input
size where the model takes one), then put the config's `activation` where the model has the
activation modules its `swap` section names: every replacement counted and logged, and a model
where nothing matched refused (a sweep must never compare a model with itself). `native` keeps
the model's own activations. A rational replacing a GELU starts as GELU's fit (`rational.init:
replaced`, these models' default) unless `rational.init` names another.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from functools import cache
from typing import Any, Literal

import torch
from torch import nn

from ..config import did_you_mean
from ..errors import ConfigError
from ..rational import Rational, activation_calls, count_activations, replace_activations
from .common import FIXED_ACTIVATIONS, Activation, RationalConfig, RationalInit, check, check_model

LIBRARIES = ("timm", "torchvision")
ImageActivation = Literal[Activation, "native"]  # native: a timm:/torchvision: model's own activations, untouched
ImageRationalInit = Literal[RationalInit, "replaced"]  # replaced: the fit of the activation each rational replaces
SwapKind = Literal["relu", "gelu", "silu", "leaky_relu", "tanh"]  # each also a rational init (its fit)
SWAP_DEFAULT: tuple[SwapKind, ...] = ("relu", "gelu", "silu")


class LibraryModelName:
    """The `when` condition of the swap section: the config's model is a timm: or torchvision: one."""

    def __call__(self, model: Any) -> bool:
        return isinstance(model, str) and model.partition(":")[0] in LIBRARIES and ":" in model

    def __str__(self) -> str:
        return "timm:NAME or torchvision:NAME"


is_library_model = LibraryModelName()


@dataclass
class SwapConfig:
    """Which activation modules of a timm:/torchvision: model the config's `activation` replaces."""

    replace: tuple[SwapKind, ...] = field(default=SWAP_DEFAULT, metadata={"key": "from"})  # kinds replaced: nn.ReLU, nn.GELU, nn.SiLU ... and timm's own of that kind
    share: Literal["layer", "model"] = "layer"  # layer: each replaced module its own coefficients; model: one set per model (per init)
    skip: tuple[str, ...] = ()  # module paths left alone, fnmatch patterns such as "conv1" or "head.*"


@dataclass
class ImageRationalConfig(RationalConfig):
    """The image experiments' rationals: init null is the paper's for its models, `replaced` for
    timm:/torchvision: models (filled in by check_config)."""

    init: ImageRationalInit | None = None  # null: the paper's for its models; replaced (timm:/torchvision: models): the fit of the activation each replaces


def check_config(model: str, family: str, activation: str, rational: ImageRationalConfig, paper_init: RationalInit) -> None:
    """For an image experiment config's __post_init__: `model` is an architecture of `family` or a
    name the installed timm/torchvision knows; `native` and `rational.init: replaced` only for the
    latter; rational.init's default filled in (`paper_init` for the registered models)."""
    if is_library_model(model):
        check_name(model)
        rational.default_init("replaced")
        return
    check_model(model, family, also="timm:NAME, torchvision:NAME")
    rational.default_init(paper_init)
    check(activation != "native", "activation", f"one of {', '.join(Activation.__args__)} for {model!r} "
          "(native keeps a timm:/torchvision: model's own activations)", activation)
    check(rational.init != "replaced", "rational.init", f"one of {', '.join(RationalInit.__args__)} for {model!r} (replaced "
          "applies to timm:/torchvision: models, whose activations are replaced)", rational.init)


def swap_field() -> Any:
    """An image experiment's `swap` field: applies only to timm:/torchvision: models."""
    return field(default_factory=SwapConfig, metadata={"when": ("model", is_library_model)})


def activation_classes() -> dict[str, tuple[type[nn.Module], ...]]:
    """The module classes of each swap kind: torch's, and timm's own (built through act_layer too)."""
    from timm.layers import activations as timm_activations  # noqa: PLC0415  (loads in seconds)
    from timm.layers import activations_me  # noqa: PLC0415

    return {
        "relu": (nn.ReLU,),
        "gelu": (nn.GELU, timm_activations.GELU, timm_activations.GELUTanh, timm_activations.QuickGELU),
        "silu": (nn.SiLU, timm_activations.Swish, activations_me.SwishMe),
        "leaky_relu": (nn.LeakyReLU,),
        "tanh": (nn.Tanh, timm_activations.Tanh),
    }


@cache
def model_names(library: str) -> tuple[str, ...]:
    """Every model the installed library builds by name."""
    if library == "timm":
        import timm  # noqa: PLC0415

        return tuple(timm.list_models())
    import torchvision.models  # noqa: PLC0415

    return tuple(torchvision.models.list_models(module=torchvision.models))  # the classification models


def check_name(model: str) -> None:
    """ConfigError on `model` unless the installed timm/torchvision builds it (with a did-you-mean)."""
    library, _, name = model.partition(":")
    known = model_names(library)
    if name.split(".")[0] not in known:  # timm takes "resnet18.a1_in1k": the part before the dot is the model
        raise ConfigError("model", f"{library} has no model {name!r}{did_you_mean(name, known)}; "
                                   f"`python -c 'import {library}.models as m; print(m.list_models())'` lists its {len(known)}")


def build(model: str, num_classes: int, **optional: Any) -> nn.Module:
    """The untrained model (timm: pretrained=False; torchvision: weights=None) with `num_classes`
    and each `optional` keyword its builder accepts (img_size for a ViT, drop_path_rate; a builder
    that rejects one is called again without it)."""
    library, _, name = model.partition(":")
    if library == "timm":
        import timm  # noqa: PLC0415

        def builder(**kwargs):
            return timm.create_model(name, pretrained=False, **kwargs)
    else:
        import torchvision.models  # noqa: PLC0415

        def builder(**kwargs):
            return torchvision.models.get_model(name, weights=None, **kwargs)
    kwargs = {"num_classes": num_classes, **optional}
    while True:
        try:
            return builder(**kwargs)
        except TypeError as e:
            rejected = next((key for key in optional if key in kwargs and repr(key) in str(e)), None)
            if rejected is None:
                raise
            del kwargs[rejected]


def version(model: str) -> dict[str, str]:
    """The param naming the installed version of the library that built `model` ({"timm_version": ...})."""
    library = model.partition(":")[0]
    return {f"{library}_version": importlib.import_module(library).__version__}


def class_name(cls: type) -> str:
    """torch.ReLU, timm.GELU: the class with its package, as swap counts are logged."""
    return f"{cls.__module__.partition('.')[0]}.{cls.__name__}"


def unswappable(model: nn.Module, config: SwapConfig, classes: dict[str, tuple[type[nn.Module], ...]],
                sample: torch.Tensor) -> list[str]:
    """Why nothing matched, from one forward on `sample`: activation functions its forward calls,
    activation modules of kinds swap.from leaves out, matches swap.skip leaves out."""
    functional, modules = activation_calls(model, sample)
    reasons = []
    if functional:
        calls = ", ".join(f"{fn}() x {n}" for fn, n in functional.items())
        reasons.append(f"its forward calls {calls} outside any module (functional activations cannot be swapped)")
    others = {class_name(cls): n for cls, n in modules.items() if not issubclass(cls, Rational)}
    if others:
        reasons.append(f"its activation modules are {', '.join(f'{c} x {n}' for c, n in others.items())}")
    covered = tuple(cls for kind in config.replace for cls in classes[kind])
    if config.skip and count_activations(model, covered):
        reasons.append(f"swap.skip {list(config.skip)} leaves out every match")
    return reasons


def swap(model: nn.Module, name: str, activation: str, rational: RationalConfig, config: SwapConfig,
         sample: torch.Tensor) -> dict[str, int]:
    """Replace, in place, `model`'s activation modules of the kinds `config.replace` names (outside
    `config.skip`) by `activation` (a rational's init: the kind it replaces where rational.init is
    "replaced"): a new module for each replaced one, or with `config.share == "model"` one for the
    model (one per init where inits differ). Returns the params to log: how many modules of each
    class were replaced ({"swapped.torch.ReLU": 17}). ConfigError when none matched, naming what
    computes the model's activations instead (`sample` runs one forward to find out)."""

    def init(kind: str) -> str:
        return kind if rational.init == "replaced" else rational.init

    def make(kind: str) -> nn.Module:
        if activation == "rational":
            return Rational(rational.degrees, init=init(kind), version=rational.version)
        return FIXED_ACTIVATIONS[activation]()

    classes = activation_classes()
    counts: dict[str, int] = {}
    shared: dict[str, nn.Module] = {}  # share == "model": by init (a fixed activation: one)
    # the activation's own kind first: a GELU put in for a ReLU must not be counted (or replaced) again as a GELU
    for kind in sorted(config.replace, key=lambda kind: kind != activation):
        found = count_activations(model, classes[kind], config.skip)
        if not found:
            continue
        counts.update({f"swapped.{class_name(cls)}": n for cls, n in found.items()})
        if config.share == "model":
            key = init(kind) if activation == "rational" else activation
            if key not in shared:
                shared[key] = make(kind)
            one = shared[key]
            replace_activations(model, lambda one=one: one, classes[kind], config.skip, share=True)
        else:
            replace_activations(model, lambda kind=kind: make(kind), classes[kind], config.skip)
    if not counts:
        reasons = "; ".join(unswappable(model, config, classes, sample))
        raise ConfigError("swap.from", f"{name} has no {' | '.join(config.replace)} activation module to replace by "
                                       f"{activation!r}" + (f": {reasons}" if reasons else "")
                                       + "; choose other kinds, another model, or activation: native")
    return counts
