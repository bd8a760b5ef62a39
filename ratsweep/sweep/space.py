"""Search-space YAML files: load, validate against the experiment's config, expand into trials.

A file holds one sweep, or several as YAML documents separated by `---` (run in order). Every
error names the file and the key and says what was expected (`SpaceError`); nothing is started
until every document of the file is valid.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import math
import os
import random
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ..errors import ConfigError, SpaceError, UserError
from .. import config as cfg
from .. import registry

SCHEMA_VERSION = 1
DOMAINS = ("grid", "choice", "uniform", "loguniform", "randint")
SCHEDULERS = {
    "fifo": {},
    "asha": {"max_t": int, "grace_period": int, "reduction_factor": float},
    "pbt": {"perturbation_interval": int, "quantile_fraction": float, "mutate": list},
}
SEARCH_ALGS = ("random", "grid", "optuna", "hyperopt")
# More trials than this are refused unless asked for (--max-trials): a grid that size is usually a
# typo, and expanding it costs memory and time before anything runs.
MAX_TRIALS = 10_000
TOP_LEVEL = (
    "version", "name", "experiment", "metric", "num_samples", "resources", "scheduler", "search_alg",
    "max_failures", "config", "search_space", "report",
)
REPORT_KEYS = ("rows", "columns", "best_of", "percent", "curve", "labels", "paper", "std", "best", "decimals")


def check_writable_folder(path: str | Path, option: str) -> Path:
    """The folder an option names, created if need be and written to once, or one line naming the option."""
    folder = Path(path).expanduser()
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".ratsweep-write-check-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise UserError(f"{option}: {path}: expected a folder this machine can write ({e.strerror or e})") from None
    return folder


def encode(value):
    """A list value (a degree pair) as one string: Tune walks into lists and tuples in a trial config
    as if they were nested search spaces. Space.decode turns it back."""
    return yaml.safe_dump(list(value), default_flow_style=True).strip() if isinstance(value, (list, tuple)) else value


@dataclass(frozen=True)
class Domain:
    kind: str  # one of DOMAINS
    values: tuple  # grid/choice: the options; uniform/loguniform/randint: (low, high)

    @property
    def sampled(self) -> bool:
        return self.kind != "grid"

    @property
    def of_lists(self) -> bool:
        return self.kind in ("grid", "choice") and any(isinstance(v, list) for v in self.values)

    def sample(self, rng: random.Random):
        low, high = self.values[:2]
        if self.kind == "choice":
            return rng.choice(self.values)
        if self.kind == "uniform":
            return rng.uniform(low, high)
        if self.kind == "loguniform":
            return float(low * (high / low) ** rng.random())
        return rng.randrange(low, high)  # randint: high exclusive, as in Ray Tune


@dataclass
class Space:
    """One validated sweep."""

    path: str
    name: str
    experiment: str
    metric: str
    mode: str
    num_samples: int = 1
    resources: dict[str, float] = field(default_factory=lambda: {"cpu": 1.0, "gpu": 0.0})
    scheduler: dict[str, Any] = field(default_factory=lambda: {"type": "fifo"})
    search_alg: dict[str, Any] = field(default_factory=lambda: {"type": "random"})
    max_failures: int = 2
    config: dict[str, Any] = field(default_factory=dict)  # fixed dotted values
    search_space: dict[str, Domain] = field(default_factory=dict)  # every searched key (a union's merged)
    parts: list[dict[str, Domain]] = field(default_factory=list)  # a union's spaces (search_space: a list)
    report: dict[str, Any] = field(default_factory=dict)  # `ratsweep report`'s default layout (REPORT_KEYS)
    document: dict[str, Any] = field(default_factory=dict)  # as written, for the MLflow artifact

    def definition(self) -> dict[str, Any]:
        """What a resumed sweep keeps from its start (Tune restores its search, scheduler and failure
        settings; the trials' fixed config comes from the file): as JSON reads it back, to compare
        with the file at --resume. Resources may change (another cluster), and the report layout."""
        definition = {"experiment": self.experiment, "metric": self.metric, "mode": self.mode, "num_samples": self.num_samples,
                      "scheduler": self.scheduler, "search_alg": self.search_alg, "max_failures": self.max_failures,
                      "config": self.config, "search_space": [{k: [d.kind, d.values] for k, d in part.items()}
                                                              for part in self.parts or [self.search_space]]}
        return json.loads(json.dumps(definition, default=list))

    @property
    def config_class(self) -> type:
        return registry.get_experiment(self.experiment).config

    def decode(self, values: dict[str, Any]) -> dict[str, Any]:
        """A trial config as Tune holds it, with encode()d list values as lists again."""
        def plain(key, value):
            domain = self.search_space.get(key)
            return yaml.safe_load(value) if domain is not None and domain.of_lists and isinstance(value, str) else value

        return {k: plain(k, v) for k, v in values.items()}

    def active(self, values: dict[str, Any]) -> dict[str, Any]:
        """values without the keys that do not apply (rational.* when activation is not rational)."""
        values = self.decode(values)
        merged = {**self.config, **values}
        return {k: v for k, v in values.items() if cfg.applies(self.config_class, k, merged)}

    def trial_name(self, values: dict[str, Any]) -> str:
        """A trial's short name from the values searched, in the space's order, seed last:
        "abs · rational(5,4) leaky_relu · s0" (a rational's degrees always, its other searched keys
        beside it); the experiment's name where nothing is searched."""
        searched = self.active(values)
        parts, rational = [], []
        for key, value in searched.items():
            if key == "seed":
                continue
            if key.startswith("rational.") and key != "rational.degrees":
                rational.append(_short(key, value))
            elif key == "activation" and value == "rational":
                degrees = self.build_config(values).rational.degrees
                parts.append(f"rational({degrees[0]},{degrees[1]})")
            elif key != "rational.degrees" or searched.get("activation") is None:
                parts.append(_short(key, value))
        if rational:  # beside the rational's own part where there is one
            at = next((i for i, part in enumerate(parts) if part.startswith("rational(")), len(parts) - 1)
            parts[at:at + 1] = [" ".join([*parts[at:at + 1], *rational])]
        if "seed" in searched:
            parts.append(f"s{searched['seed']}")
        return " · ".join(parts) or self.experiment

    def trial_bound(self) -> int:
        """At most how many trials the sweep runs, counted without expanding them: every grid point
        times num_samples (fewer run where keys that do not apply make configs repeat), or
        num_samples for a model-based searcher."""
        if self.search_alg["type"] not in ("random", "grid"):
            return self.num_samples
        return sum(math.prod(len(d.values) for d in part.values() if not d.sampled) for part in self.spaces) * self.num_samples

    @property
    def spaces(self) -> list[dict[str, Domain]]:
        """The search spaces whose trials the sweep runs: a union's parts, else the one."""
        return self.parts or [self.search_space]

    def trials(self) -> list[dict[str, Any]]:
        """The distinct trial configs of the random/grid search: in each space (of a union, in
        order), every grid point times num_samples samples of the other domains, keeping only keys
        that apply, each distinct config once."""
        rng = random.Random(self.search_alg.get("seed", 0))
        seen, out = set(), []
        for space in self.spaces:
            grid = {k: d.values for k, d in space.items() if not d.sampled}
            sampled = {k: d for k, d in space.items() if d.sampled}
            for point in itertools.product(*grid.values()):
                for _ in range(self.num_samples):
                    values = dict(zip(grid, point)) | {k: d.sample(rng) for k, d in sampled.items()}
                    trial = self.active(values)
                    key = cfg.identity(trial)
                    if key not in seen:
                        seen.add(key)
                        out.append(trial)
        return out

    def build_config(self, trial: dict[str, Any]):
        """The experiment's config dataclass for one trial (fixed values, then the trial's)."""
        return cfg.build(self.config_class, self.active({**self.config, **trial}))


def _short(key: str, value: Any) -> str:
    """A searched value as a trial's name shows it: a word as itself, a number or list with its key."""
    name = key.rsplit(".", 1)[-1]
    if isinstance(value, bool):  # lsuv / no lsuv; no_norm: no norm / norm
        positive = name.removeprefix("no_")
        return (f"no {positive}" if value else positive) if name.startswith("no_") else (name if value else f"no {name}")
    if isinstance(value, float):
        return f"{name} {value:.3g}"
    if isinstance(value, (list, tuple)):
        return f"{name} ({','.join(map(str, value))})"
    if isinstance(value, int) or value in ("none", "None", None):  # norm: none reads "no norm"
        return f"{name} {value}" if isinstance(value, int) else f"no {name}"
    return str(value) if len(str(value)) > 2 else f"{name} {value}"  # version A


def bundled_dir() -> Path:
    """search_spaces/ inside an installed wheel, else the source checkout's top level."""
    package = Path(__file__).resolve().parent.parent
    for candidate in (package / "search_spaces", package.parent / "search_spaces"):
        if candidate.is_dir():
            return candidate
    return package / "search_spaces"


def bundled() -> dict[str, Path]:
    return {p.stem: p for p in sorted(bundled_dir().glob("*.yaml"))}


def resolve(space: str) -> Path:
    """A path to a YAML file, or the name of a bundled space."""
    path = Path(space)
    if path.is_file():
        return path
    known = bundled()
    if space in known:
        return known[space]
    hint = registry.unknown("search space", space, known).args[0]
    raise SpaceError(f"{space}: no such file, and {hint}")


def load(space: str, overrides: dict[str, Any] | None = None, smoke: bool = False, max_trials: int | None = None) -> list[Space]:
    """Every sweep in the file (path or bundled name), validated; overrides ("--set") apply to each,
    after the experiment's registered smoke values when `smoke`; more than `max_trials` trials
    (default MAX_TRIALS) is an error."""
    path = resolve(space)
    try:
        documents = [d for d in cfg.yaml_load_all(path.read_text(encoding="utf-8")) if d is not None]
    except UnicodeDecodeError as e:
        raise SpaceError(f"{path}: not UTF-8 text (byte {e.start}: {e.reason}); save the file as UTF-8") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark else ""
        raise SpaceError(f"{path}: not valid YAML{where}: {getattr(e, 'problem', e)}") from None
    if not documents:
        raise SpaceError(f"{path}: empty file; expected a search space (see README: Search spaces)")
    errors, spaces = _Errors(), []
    limit = max_trials or MAX_TRIALS
    for doc in documents:  # every document's mistakes, not just the first one's
        with errors.check():
            space = _parse(path, doc, overrides or {}, smoke)
            bound = space.trial_bound()
            if bound > limit:
                raise SpaceError(f"{path}: {space.name}: up to {bound:,} trials, more than the limit of {limit:,}; "
                                 f"pass --max-trials {bound} to run it anyway")
            spaces.append(space)
    errors.raise_any()
    return spaces


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


class _Errors:
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


def _parse(path: Path, doc, overrides: dict[str, Any], smoke: bool = False) -> Space:
    """One document as a Space; SpaceError with every mistake found, one line each."""
    errors = _Errors()
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
    label}, paper: table, std: sample | population, best: per_column | per_row, decimals: int}."""
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
