"""Putting rationals into existing models, and giving their coefficients their own optimizer group."""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from .module import Rational

DEFAULT_ACTIVATIONS: tuple[type[nn.Module], ...] = (nn.ReLU, nn.LeakyReLU, nn.GELU, nn.SiLU)
_DECAYED = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)


def replace_activations(
    model: nn.Module,
    factory: Callable[[], nn.Module],
    types: tuple[type[nn.Module], ...] = DEFAULT_ACTIVATIONS,
) -> int:
    """Replace, in place, every submodule that is an instance of `types` by `factory()`.

    Each replaced module gets its own new module (its own coefficients); a module instance that the
    model uses in several places stays shared. Returns how many modules were replaced, so callers can
    assert the count (timm's Swin, for one, ignores `act_layer`, and a silent miss would go unnoticed).
    """
    replaced: dict[int, nn.Module] = {}
    for parent in list(model.modules()):
        for name, child in list(parent._modules.items()):  # every slot: named_children() skips repeats
            if isinstance(child, types) and not isinstance(child, Rational):
                if id(child) not in replaced:
                    new = factory()
                    if not isinstance(new, nn.Module) or new is child or any(new is r for r in replaced.values()):
                        raise TypeError("factory: expected a callable that returns a new nn.Module on every call")
                    replaced[id(child)] = new
                setattr(parent, name, replaced[id(child)])
    return len(replaced)


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
