"""Reading one search-space document into a Space: every key checked against the schema (top-level
keys, resources, scheduler, searcher, report layout, each domain's values against the experiment's
config class), every mistake collected as one line naming the file and the key (SpaceError)."""

from __future__ import annotations

import contextlib
import math
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .. import config as cfg
from .. import registry
from ..errors import ConfigError, SpaceError
from .space import DOMAINS, REPORT_KEYS, SCHEDULERS, SEARCH_ALGS, SCHEMA_VERSION, TOP_LEVEL, Domain, Space


def _fail(path: Path, key: str, message: str):
    raise SpaceError(f"{path}: {key}: {message}")


def _mapping(path, key, value) -> dict:
    if not isinstance(value, dict):
        _fail(path, key, f"expected a mapping, got {value!r}")
    return value


def _number(path, key, value, kind=float, minimum=None, exclusive=False):
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (kind is int and not isinstance(value, int)):
        _fail(path, key, f"expected {'an integer' if kind is int else 'a number'}, got {value!r}")
    if not math.isfinite(value):
        _fail(path, key, f"expected a finite number, got {value!r}")
    if minimum is not None and (value <= minimum if exclusive else value < minimum):
        _fail(path, key, f"expected a number {'>' if exclusive else '>='} {minimum}, got {value!r}")
    return kind(value)


class Errors:
    """Collects the one-line SpaceErrors of independent checks, so a file's every mistake is told at once."""

    def __init__(self):
        self.lines: list[str] = []

    @contextlib.contextmanager
    def check(self) -> Iterator[None]:
        try:
            yield
        except SpaceError as e:
            self.lines.append(str(e))

    def raise_any(self) -> None:
        if self.lines:
            raise SpaceError("\n".join(dict.fromkeys(self.lines)))


SWEEP_NAME = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9_.-]{0,99}")  # a folder name under --storage: no separators, no '..'


def parse(path: Path, doc, overrides: dict[str, Any], smoke: bool = False) -> Space:
    """One document as a Space; SpaceError with every mistake found, one line each."""
    errors = Errors()
    doc = _mapping(path, "(top level)", doc)
    for key in doc:
        with errors.check():
            if key not in TOP_LEVEL:
                _fail(path, key, f"unknown key{cfg.did_you_mean(key, TOP_LEVEL)}; expected one of {', '.join(TOP_LEVEL)}")
    with errors.check():
        version = doc.get("version", SCHEMA_VERSION)
        if version != SCHEMA_VERSION:
            _fail(path, "version", f"expected {SCHEMA_VERSION} (this ratsweep's schema), got {version!r}")
    for key in ("name", "experiment", "metric"):
        with errors.check():
            if key not in doc:
                _fail(path, key, "missing; every search space names its sweep, experiment and metric")
    with errors.check():
        if "name" in doc and not (isinstance(doc["name"], str) and SWEEP_NAME.fullmatch(doc["name"])):
            _fail(path, "name", "expected letters, digits, '_', '-' and '.' (at most 100, not starting with '.'): it names the "
                  f"sweep's results folder and MLflow experiment; got {doc['name']!r}")
    experiment = None
    with errors.check():
        if "experiment" in doc:
            try:
                experiment = registry.get_experiment(str(doc["experiment"]))
            except KeyError as e:
                _fail(path, "experiment", e.args[0])
    if experiment is None or "metric" not in doc:  # everything below is checked against them
        errors.raise_any()
    metric = {"name": None, "mode": "max"}
    with errors.check():
        metric = _mapping(path, "metric", doc["metric"])
        if not isinstance(metric.get("name"), str) or metric.get("mode") not in ("min", "max"):
            _fail(path, "metric", f"expected {{name: <metric>, mode: min | max}}, got {metric!r}")
        if experiment.metrics and metric["name"] not in experiment.metrics:
            _fail(path, "metric.name", f"expected one of {', '.join(experiment.metrics)} (what {experiment.name} reports), "
                  f"got {metric['name']!r}{cfg.did_you_mean(metric['name'], experiment.metrics)}")
        better = experiment.modes.get(metric["name"])
        if better and metric["mode"] != better:
            _fail(path, "metric.mode", f"expected {better} for {metric['name']} (lower is better for a loss, higher for "
                  f"an accuracy), got {metric['mode']!r}")

    space = Space(path=str(path), name=doc.get("name"), experiment=experiment.name, metric=metric.get("name"),
                  mode=metric.get("mode"), document=doc)
    with errors.check():
        space.resources = _resources(path, doc.get("resources", {}))
    with errors.check():
        space.num_samples = _number(path, "num_samples", doc.get("num_samples", 1), int, minimum=1)
    with errors.check():
        space.scheduler = _scheduler(path, doc.get("scheduler", {"type": "fifo"}))
    with errors.check():
        space.search_alg = _search_alg(path, doc.get("search_alg", {"type": "random"}))
    with errors.check():
        space.max_failures = _number(path, "max_failures", doc.get("max_failures", 2), int, minimum=0)
    fixed: dict[str, Any] = {}
    searched: list[dict[str, Any]] = []
    with errors.check():
        fixed = _flat(_mapping(path, "config", doc.get("config") or {}))
    with errors.check():
        searched = _searched(path, doc.get("search_space") or {})
    if smoke:  # what the run will do, so the trials' params say so
        overrides = {**experiment.smoke, **overrides}
    for key, value in overrides.items():  # --set replaces a searched key by a constant
        for part in searched:
            part.pop(key, None)
        fixed[key] = value
    cls = experiment.config
    for key, value in fixed.items():
        with errors.check():
            _check_values(path, cls, f"config.{key}", key, [value])
    union = len(searched) > 1
    parts: list[dict[str, Domain]] = []
    for i, part in enumerate(searched):
        domains: dict[str, Domain] = {}
        parts.append(domains)
        for key, raw in part.items():
            with errors.check():
                domain = _domain(path, cls, key, raw, f"search_space[{i}]" if union else "search_space", constant_as_grid=union)
                if domain is None:
                    fixed[key] = raw
                else:
                    domains[key] = domain
    space.config = fixed
    if union:
        with errors.check():
            if not errors.lines:  # every domain parsed
                space.search_space = _merged(path, parts)
                space.parts = parts
        with errors.check():
            if space.search_alg["type"] not in ("random", "grid"):
                _fail(path, "search_alg.type", f"expected random or grid with a union of search spaces (a list), got {space.search_alg['type']!r}")
    elif parts:
        space.search_space = parts[0]
    with errors.check():
        space.report = _report(path, experiment, space.metric, doc.get("report") or {})
    with errors.check():
        _check_pbt(path, space)
    if not errors.lines:  # the fixed values together (e.g. cross-field checks)
        with errors.check():
            try:
                space.build_config({})
            except ConfigError as e:
                _fail(path, f"config.{e.key}", str(e).split(": ", 1)[1])
    errors.raise_any()
    return space


def _resources(path, raw) -> dict[str, float]:
    resources = _mapping(path, "resources", raw)
    for key in resources:
        if key not in ("cpu", "gpu"):
            _fail(path, f"resources.{key}", "unknown key; expected cpu or gpu")
    cpu = _number(path, "resources.cpu", resources.get("cpu", 1), minimum=0, exclusive=True)
    gpu = _number(path, "resources.gpu", resources.get("gpu", 0), minimum=0)
    if gpu > 1 and gpu != int(gpu):
        _fail(path, "resources.gpu", f"expected a fraction <= 1 or a whole number of GPUs, got {gpu!r}")
    return {"cpu": cpu, "gpu": gpu}


def _check_pbt(path, space: Space) -> None:
    if space.scheduler["type"] != "pbt":
        return
    if space.parts:
        _fail(path, "scheduler.type", "expected fifo or asha with a union of search spaces (a list): pbt would mutate "
              "configs into combinations the union leaves out")
    if space.search_alg["type"] not in ("random", "grid"):
        _fail(path, "search_alg.type", f"expected random or grid with the pbt scheduler (it picks configs itself), got {space.search_alg['type']!r}")
    for key in space.scheduler.setdefault("mutate", [k for k, d in space.search_space.items() if d.sampled]):
        if key not in space.search_space:
            _fail(path, "scheduler.mutate", f"{key!r} is not a key of search_space")
    if not space.scheduler["mutate"]:
        _fail(path, "scheduler.mutate", "pbt needs at least one sampled (non-grid) search_space key to mutate")


def _flat(values: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested mappings under `config:` become dotted keys, like the search_space's."""
    out = {}
    for key, value in values.items():
        if isinstance(value, dict):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[prefix + key] = value
    return out


def _scheduler(path, raw) -> dict[str, Any]:
    raw = dict(_mapping(path, "scheduler", raw))
    kind = raw.pop("type", None)
    if kind not in SCHEDULERS:
        _fail(path, "scheduler.type", f"expected one of {', '.join(SCHEDULERS)}, got {kind!r}")
    out = {"type": kind}
    for key, value in raw.items():
        if key not in SCHEDULERS[kind]:
            allowed = ", ".join(SCHEDULERS[kind]) or "nothing else"
            _fail(path, f"scheduler.{key}", f"unknown for {kind}; expected {allowed}")
        expected = SCHEDULERS[kind][key]
        if expected is list:
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                _fail(path, f"scheduler.{key}", f"expected a list of search_space keys, got {value!r}")
            out[key] = value
        else:
            out[key] = _number(path, f"scheduler.{key}", value, expected, minimum=0, exclusive=True)
    if kind == "asha" and out.get("grace_period", 1) > out.get("max_t", 100):
        _fail(path, "scheduler.grace_period", f"expected <= max_t ({out['max_t']}), got {out['grace_period']}")
    return out


def _search_alg(path, raw) -> dict[str, Any]:
    raw = _mapping(path, "search_alg", raw)
    if raw.get("type") not in SEARCH_ALGS:
        _fail(path, "search_alg.type", f"expected one of {', '.join(SEARCH_ALGS)}, got {raw.get('type')!r}")
    for key in raw:
        if key not in ("type", "seed"):
            _fail(path, f"search_alg.{key}", "unknown key; expected type or seed")
    if "seed" in raw:
        _number(path, "search_alg.seed", raw["seed"], int, minimum=0)
    return dict(raw)


def _report(path, experiment, metric: str, raw) -> dict[str, Any]:
    """report: {rows: [keys], columns: key, best_of: key, percent: bool, curve: metric, labels: {shown:
    label}, paper: table, std: sample | population, best: per_column | per_row, decimals: int,
    also: {metric: decimals}}."""
    raw, cls = _mapping(path, "report", raw), experiment.config
    for key, value in raw.items():
        if key not in REPORT_KEYS:
            _fail(path, f"report.{key}", f"unknown key{cfg.did_you_mean(key, REPORT_KEYS)}; expected one of {', '.join(REPORT_KEYS)}")
    rows = raw.get("rows", [])
    if not isinstance(rows, list) or not all(isinstance(k, str) for k in rows):
        _fail(path, "report.rows", f"expected a list of config keys, got {rows!r}")
    for key in rows:
        _annotation(path, cls, "report.rows", key)
    for name in ("columns", "best_of"):
        key = raw.get(name)
        if key is None:
            continue
        if not isinstance(key, str):
            _fail(path, f"report.{name}", f"expected a config key, got {key!r}")
        _annotation(path, cls, f"report.{name}", key)
        if key in rows:
            _fail(path, f"report.{name}", f"expected a key not among report.rows, got {key!r}")
    if raw.get("columns") is not None and raw.get("columns") == raw.get("best_of"):
        _fail(path, "report.best_of", f"expected a key other than report.columns, got {raw['best_of']!r}")
    curve = raw.get("curve")
    if curve is not None and (not isinstance(curve, str) or (experiment.metrics and curve not in experiment.metrics)):
        _fail(path, "report.curve", f"expected one of {', '.join(experiment.metrics)} (what {experiment.name} reports), got {curve!r}")
    if not isinstance(raw.get("percent", False), bool):
        _fail(path, "report.percent", f"expected true or false, got {raw['percent']!r}")
    if raw.get("std", "sample") not in ("sample", "population"):
        _fail(path, "report.std", f"expected sample or population, got {raw['std']!r}")
    if raw.get("best", "per_column") not in ("per_column", "per_row"):
        _fail(path, "report.best", f"expected per_column or per_row, got {raw['best']!r}")
    decimals = raw.get("decimals")
    if decimals is not None and (not isinstance(decimals, int) or isinstance(decimals, bool) or not 0 <= decimals <= 8):
        _fail(path, "report.decimals", f"expected an integer from 0 to 8, got {decimals!r}")
    also = raw.get("also", {})
    if not isinstance(also, dict) or not all(isinstance(k, str) for k in also):
        _fail(path, "report.also", f"expected a mapping of metrics to decimals (e.g. {{final_return: 2}}), got {also!r}")
    for name, places in also.items():
        if experiment.metrics and name not in experiment.metrics:
            _fail(path, f"report.also.{name}", f"expected one of {', '.join(experiment.metrics)} (what {experiment.name} reports)"
                                               f"{cfg.did_you_mean(name, experiment.metrics)}")
        if places is not None and (not isinstance(places, int) or isinstance(places, bool) or not 0 <= places <= 8):
            _fail(path, f"report.also.{name}", f"expected decimals, an integer from 0 to 8 (or null), got {places!r}")
    out = dict(raw)
    if "labels" in raw:
        out["labels"] = _labels(path, raw["labels"])
    if "paper" in raw:
        _paper(path, experiment, metric, raw["paper"])
    return out


def _labels(path, raw) -> dict[str, str]:
    """report.labels: {value or 'value | value' of consecutive row keys: label}; keys as report shows
    values (true -> 'True')."""
    scalar = (str, int, float, bool)
    if not isinstance(raw, dict) or not all(isinstance(k, scalar) and isinstance(v, scalar) for k, v in raw.items()):
        _fail(path, "report.labels", f"expected a mapping of shown values to labels (e.g. {{silu: Swish}}), got {raw!r}")
    return {str(k): str(v) for k, v in raw.items()}


def _paper(path, experiment, metric: str, name) -> None:
    """report.paper: a table of paper_tables.yaml that publishes this experiment's numbers."""
    from ..report import published as paper  # noqa: PLC0415

    try:
        table = paper.get(str(name))
    except KeyError as e:
        _fail(path, "report.paper", e.args[0])
    if table.experiment != experiment.name:
        _fail(path, "report.paper", f"{name} publishes {table.experiment} results, not {experiment.name}'s")
    if table.metric != metric:
        _fail(path, "report.paper", f"{name} publishes {table.metric}, not this sweep's metric {metric}")
    known = cfg.keys(experiment.config)
    for entry in table.cells:
        for key in table.where(entry):
            if key not in known:
                _fail(path, "report.paper", f"{name} identifies cells by {key!r}, which is not a key of {experiment.name}")


def _searched(path, raw) -> list[dict[str, Any]]:
    """search_space as a list of spaces: one mapping, or a union (a list of mappings naming the same keys)."""
    if not isinstance(raw, list):
        return [dict(_mapping(path, "search_space", raw))]
    parts = [dict(_mapping(path, f"search_space[{i}]", part)) for i, part in enumerate(raw)]
    for i, part in enumerate(parts[1:], 1):
        if set(part) != set(parts[0]):
            missing, extra = sorted(set(parts[0]) - set(part)), sorted(set(part) - set(parts[0]))
            _fail(path, f"search_space[{i}]", "expected the same keys as search_space[0] (each space of a union names every "
                  "searched key)" + (f"; missing {', '.join(missing)}" if missing else "") + (f"; extra {', '.join(extra)}" if extra else ""))
    return parts


def _merged(path, parts: list[dict[str, Domain]]) -> dict[str, Domain]:
    """One domain per key over a union's spaces (what Tune shows and PBT, data checks and reports
    read): the values of every space in order of appearance; a range must be the same in each."""
    merged = {}
    for key in parts[0]:
        domains = [part[key] for part in parts]
        if any(d.kind not in ("grid", "choice") for d in domains):
            if any(d != domains[0] for d in domains):
                _fail(path, f"search_space[*].{key}", f"expected the same range in every space of the union, got {[d.values for d in domains]}")
            merged[key] = domains[0]
            continue
        values = []
        for d in domains:
            values += [v for v in d.values if v not in values]
        merged[key] = Domain("grid" if all(d.kind == "grid" for d in domains) else "choice", tuple(values))
    return merged


def _domain(path, cls, key: str, raw, prefix: str = "search_space", constant_as_grid: bool = False) -> Domain | None:
    """The domain written for `key`, checked against the config field; None for a constant (a
    grid of one value with `constant_as_grid`, as in a union's spaces)."""
    _annotation(path, cls, f"{prefix}.{key}", key)
    if not (isinstance(raw, dict) and len(raw) == 1 and next(iter(raw)) in DOMAINS):
        if isinstance(raw, dict) and any(k in DOMAINS for k in raw):
            _fail(path, f"{prefix}.{key}", f"expected exactly one of {', '.join(DOMAINS)}, got {raw!r}")
        values = _check_values(path, cls, f"{prefix}.{key}", key, [raw])
        return Domain("grid", tuple(values)) if constant_as_grid else None
    kind, values = next(iter(raw.items()))
    where = f"{prefix}.{key}.{kind}"
    if not isinstance(values, list) or not values:
        _fail(path, where, f"expected a non-empty list, got {values!r}")
    if kind in ("grid", "choice"):
        values = _check_values(path, cls, where, key, values)
        return Domain(kind, tuple(values))
    if len(values) != 2:
        _fail(path, where, f"expected [low, high], got {values!r}")
    number = int if kind == "randint" else float
    low, high = (_number(path, where, v, number) for v in values)
    if not low < high:
        _fail(path, where, f"expected low < high, got {values!r}")
    if kind == "loguniform" and low <= 0:
        _fail(path, where, f"expected low > 0 for a log scale, got {values!r}")
    _check_values(path, cls, where, key, [low, high - 1] if kind == "randint" else [low, high])
    return Domain(kind, (low, high))


def _check_values(path, cls, where: str, key: str, values: list) -> list:
    """Each value as the config field would take it alone; errors name the file and `where`."""
    annotation = _annotation(path, cls, where, key)
    out = []
    for value in values:
        try:
            value = cfg.coerce(annotation, value, key)
            cfg.build(cls, {key: value})
        except ConfigError as e:
            _fail(path, where, str(e).split(": ", 1)[1])
        out.append(list(value) if isinstance(value, tuple) else value)
    return out


def _annotation(path, cls, where: str, key: str):
    known = cfg.keys(cls)
    if key not in known:
        _fail(path, where, f"unknown key{cfg.did_you_mean(key, known)}; expected one of {', '.join(known)}")
    return cfg.annotation_of(cls, key)
