"""Experiments and architectures by name, extended by other packages through entry points.

    @register_experiment("approx", config=ApproxConfig)
    def run(config: ApproxConfig, session: Session) -> dict[str, float]: ...

    @register_architecture("vgg4", family="image_classifier")
    def vgg4(activation: Callable[[], nn.Module], **kwargs) -> nn.Module: ...

Datasets an experiment reads are registered too (`register_dataset`), for `ratsweep data` and
the check before a sweep starts.

A third-party package registers its own in a module named by an entry point in the group
`ratsweep.experiments` or `ratsweep.architectures` (the value is a module or an object in it;
loading it runs the decorators). Lookups load ratsweep's own modules and every entry point once.
This module imports nothing heavy: listing never builds a model.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

from .config import did_you_mean

ENTRY_POINT_GROUPS = ("ratsweep.experiments", "ratsweep.architectures")
# ratsweep's own experiments: found without installed metadata, e.g. from a source checkout.
BUILTIN_MODULES = ("ratsweep.experiments.approx", "ratsweep.experiments.digits", "ratsweep.experiments.cifar10",
                   "ratsweep.experiments.iql", "ratsweep.experiments.td3bc", "ratsweep.experiments.tinyimagenet")


@dataclass(frozen=True)
class Experiment:
    name: str
    config: type  # the config dataclass
    run: Callable[..., dict[str, float]]  # run(config, session) -> final metrics
    metrics: tuple[str, ...]  # what it reports (a search space's metric must be one); () = unchecked
    description: str
    source: str  # the module that registered it
    datasets: tuple[str, ...] = ()  # registered datasets it reads from the data dir (checked before a sweep)
    smoke: Mapping[str, Any] = field(default_factory=dict)  # config values of a --smoke run (steps, epochs...)
    family: str | None = None  # the architecture family its `model` key takes
    modes: Mapping[str, str] = field(default_factory=dict)  # metric -> "min" | "max", where declared


@dataclass(frozen=True)
class Architecture:
    name: str
    build: Callable[..., Any]  # build(activation_factory, **kwargs) -> nn.Module
    family: str
    description: str
    source: str


@dataclass(frozen=True)
class Dataset:
    name: str
    download: Callable[[Path], None]  # download(data_dir): fetch it (where there is internet)
    verify: Callable[..., None]  # verify(data_dir, **{key: values}): raise DataError saying how to get it if absent
    description: str
    source: str
    keys: tuple[str, ...] = ()  # config keys that choose what is needed: verify gets the values a sweep can take
    location: Callable[[Path], Path] | None = None  # where it lands given --dir (default: --dir itself)


_experiments: dict[str, Experiment] = {}
_architectures: dict[str, Architecture] = {}
_datasets: dict[str, Dataset] = {}
_loaded = False
load_errors: list[str] = []  # plugins that failed to load, shown by `ratsweep list`
_distributions: dict[str, str] = {}  # top-level module -> the distribution whose entry point loaded it


def _doc(fn) -> str:
    return (fn.__doc__ or "").strip().split("\n")[0]


def register_experiment(name: str, config: type, metrics: Sequence[str] | Mapping[str, str] = (),
                        datasets: tuple[str, ...] = (), smoke: Mapping[str, Any] | None = None, family: str | None = None):
    """Register `run(config, session) -> metrics` under `name` with its config dataclass, the
    metrics it reports (names, or {name: "min" | "max"} to say which way is better), the
    registered datasets it needs, the config values that
    shrink it for `--smoke` (dotted keys; applied to the config, so a smoke run's params say what
    ran) and the architecture family its models come from (for `ratsweep describe`)."""

    def decorator(run):
        modes = dict(metrics) if isinstance(metrics, Mapping) else {}
        _experiments[name] = Experiment(name, config, run, tuple(metrics), _doc(run), run.__module__, tuple(datasets),
                                        dict(smoke or {}), family, modes)
        return run

    return decorator


def register_dataset(name: str, download: Callable[[Path], None], verify: Callable[..., None],
                     keys: Sequence[str] = (), location: Callable[[Path], Path] | None = None) -> None:
    """Register a dataset for `ratsweep data NAME --dir DIR` (download's docstring describes it).

    `verify(data_dir)` raises DataError saying how to get what is missing. With `keys` (config keys
    such as "task"), a sweep checks only what it will read: verify(data_dir, task=(values...)) gets
    each key's values the sweep can take. `location(data_dir)` is where the data lands, for datasets
    kept elsewhere than --dir (Minari's own folder)."""
    _datasets[name] = Dataset(name, download, verify, _doc(download), download.__module__, tuple(keys), location)


def register_architecture(name: str, family: str = "image_classifier"):
    """Register `build(activation, **kwargs) -> nn.Module` under `name`; `family` says which kwargs it takes."""

    def decorator(build):
        _architectures[name] = Architecture(name, build, family, _doc(build), build.__module__)
        return build

    return decorator


def load_plugins() -> None:
    """Import ratsweep's own experiment modules and every entry point, once."""
    global _loaded
    if _loaded:
        return
    _loaded = True
    for module in BUILTIN_MODULES:
        importlib.import_module(module)
    for group in ENTRY_POINT_GROUPS:
        for ep in entry_points(group=group):
            try:
                ep.load()
            except Exception as e:  # a broken plugin must not take ratsweep down with it
                load_errors.append(f"{group}: {ep.name} = {ep.value}: {type(e).__name__}: {e}")
                continue
            if ep.dist is not None:
                _distributions.setdefault(ep.module.partition(".")[0], ep.dist.name)


def distribution(module: str) -> str | None:
    """The installed distribution that provides a registered experiment's or architecture's module
    (ratsweep's own included), or None (registered from a script)."""
    load_plugins()
    top = module.partition(".")[0]
    return _distributions.get(top, "ratsweep" if top == "ratsweep" else None)


def experiments() -> dict[str, Experiment]:
    load_plugins()
    return dict(sorted(_experiments.items()))


def architectures(family: str | None = None) -> dict[str, Architecture]:
    load_plugins()
    return {k: v for k, v in sorted(_architectures.items()) if family is None or v.family == family}


def datasets() -> dict[str, Dataset]:
    load_plugins()
    return dict(sorted(_datasets.items()))


def get_dataset(name: str) -> Dataset:
    known = datasets()
    if name not in known:
        raise unknown("dataset", name, known)
    return known[name]


def unknown(kind: str, name: str, known) -> KeyError:
    """KeyError("unknown experiment 'x' (did you mean 'y'?); known: ...")."""
    return KeyError(f"unknown {kind} {name!r}{did_you_mean(name, known)}; known: {', '.join(known) or 'none'}")


def get_experiment(name: str) -> Experiment:
    known = experiments()
    if name not in known:
        raise unknown("experiment", name, known)
    return known[name]


def create_model(name: str, activation: Callable[[], Any], **kwargs):
    """Build a registered architecture with `activation()` making each activation module."""
    known = architectures()
    if name not in known:
        raise unknown("architecture", name, known)
    return known[name].build(activation, **kwargs)
