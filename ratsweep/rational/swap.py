"""Putting rationals into existing models, and giving their coefficients their own optimizer group."""

from __future__ import annotations

import fnmatch
from collections import Counter
from collections.abc import Callable, Iterator, Sequence

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from .module import Rational

DEFAULT_ACTIVATIONS: tuple[type[nn.Module], ...] = (nn.ReLU, nn.LeakyReLU, nn.GELU, nn.SiLU)
_DECAYED = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)


def _slots(model: nn.Module, types: tuple[type[nn.Module], ...], skip: Sequence[str]) -> Iterator[tuple[nn.Module, str, nn.Module]]:
    """(parent, attribute, module) for every place in `model` holding an instance of `types` (not a
    Rational) whose dotted path matches none of the fnmatch patterns `skip`. Every slot: a module
    the model uses in several places appears once per place (named_modules would dedupe it)."""
    for path, parent in list(model.named_modules(remove_duplicate=False)):
        for name, child in list(parent._modules.items()):
            if isinstance(child, types) and not isinstance(child, Rational):
                where = f"{path}.{name}" if path else name
                if not any(fnmatch.fnmatchcase(where, pattern) for pattern in skip):
                    yield parent, name, child


def count_activations(model: nn.Module, types: tuple[type[nn.Module], ...] = DEFAULT_ACTIVATIONS,
                      skip: Sequence[str] = ()) -> dict[type[nn.Module], int]:
    """How many distinct modules of each class `replace_activations` would replace (classes with none left out)."""
    modules = {id(child): child for _, _, child in _slots(model, types, skip)}
    return dict(Counter(type(m) for m in modules.values()))


def replace_activations(
    model: nn.Module,
    factory: Callable[[], nn.Module],
    types: tuple[type[nn.Module], ...] = DEFAULT_ACTIVATIONS,
    skip: Sequence[str] = (),
    share: bool = False,
) -> int:
    """Replace, in place, every submodule that is an instance of `types` by `factory()`, except
    where its dotted path (e.g. "layer1.0.act1") matches an fnmatch pattern of `skip`.

    Each replaced module gets its own new module (its own coefficients); a module instance that the
    model uses in several places stays shared. With `share`, one `factory()` replaces them all (one
    coefficient set for the model). Returns how many modules were replaced, so callers can assert
    the count (timm's Swin, for one, ignores `act_layer`, and a silent miss would go unnoticed).
    """
    replaced: dict[int, nn.Module] = {}
    shared: nn.Module | None = None
    for parent, name, child in list(_slots(model, types, skip)):
        if id(child) not in replaced:
            new = shared if shared is not None else factory()
            if shared is None and (not isinstance(new, nn.Module) or new is child or any(new is r for r in replaced.values())):
                raise TypeError("factory: expected a callable that returns a new nn.Module on every call")
            replaced[id(child)] = new
            if share:
                shared = new
        setattr(parent, name, replaced[id(child)])
    return len(replaced)


# torch functions that are activations: a model calling them in forward has nothing to replace
FUNCTIONAL_ACTIVATIONS = frozenset({"relu", "relu_", "relu6", "gelu", "silu", "leaky_relu", "leaky_relu_", "elu", "elu_",
                                    "selu", "celu", "mish", "hardswish", "hardsigmoid", "tanh", "sigmoid"})


class _ActivationCalls(TorchFunctionMode):
    """Counts activation-function calls, by the leaf module running them (None: no leaf module, a
    container's forward calling F.relu)."""

    def __init__(self):
        super().__init__()
        self.calls: Counter[str] = Counter()
        self.leaf_modules: dict[int, nn.Module] = {}
        self.running: list[nn.Module] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        name = getattr(func, "__name__", "")
        if name in FUNCTIONAL_ACTIVATIONS:
            if self.running:
                self.leaf_modules[id(self.running[-1])] = self.running[-1]
            else:
                self.calls[name] += 1
        return func(*args, **(kwargs or {}))  # the mode is off inside: F.relu's own torch.relu is not counted again


def activation_calls(model: nn.Module, sample: torch.Tensor) -> tuple[dict[str, int], dict[type[nn.Module], int]]:
    """What computes activations in one eval forward of `model` on `sample`: (how often each
    activation function, F.relu or x.relu_(), is called outside any leaf module, which
    replace_activations cannot reach; how many leaf modules of each class call one, the classes
    it can replace when asked)."""
    counter = _ActivationCalls()
    leaves = [m for m in model.modules() if not m._modules]

    def enter(module, args) -> None:
        counter.running.append(module)

    def leave(module, args, output) -> None:  # returning anything would replace the module's output
        counter.running.pop()

    handles = [h for m in leaves for h in (m.register_forward_pre_hook(enter), m.register_forward_hook(leave))]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), counter:
            model(sample)
    finally:
        model.train(was_training)
        for handle in handles:
            handle.remove()
    return dict(counter.calls.most_common()), dict(Counter(type(m) for m in counter.leaf_modules.values()))


def rational_param_groups(model: nn.Module, lr: float, lr_mult: float = 1.0, weight_decay: float = 0.0) -> list[dict]:
    """Optimizer parameter groups in the paper's policy.

    - "rational": every Rational's coefficients, lr = lr * lr_mult, weight decay 0;
    - "decay": weights of Linear and Conv layers, `weight_decay`;
    - "no_decay": everything else (biases, normalization, embeddings, layer scales), weight decay 0.
    Empty groups are left out; frozen parameters are skipped; shared parameters appear once.
    """
    if lr_mult <= 0:
        raise ValueError(f"lr_mult: expected a positive number, got {lr_mult!r}")
    groups: dict[str, list] = {"rational": [], "decay": [], "no_decay": []}
    seen: set[int] = set()
    for module in model.modules():
        for pname, param in module.named_parameters(recurse=False):
            if not param.requires_grad or id(param) in seen:
                continue
            seen.add(id(param))
            if isinstance(module, Rational):
                groups["rational"].append(param)
            elif isinstance(module, _DECAYED) and pname == "weight":
                groups["decay"].append(param)
            else:
                groups["no_decay"].append(param)
    settings = {"rational": (lr * lr_mult, 0.0), "decay": (lr, weight_decay), "no_decay": (lr, 0.0)}
    return [
        {"name": name, "params": params, "lr": settings[name][0], "weight_decay": settings[name][1]}
        for name, params in groups.items()
        if params
    ]
