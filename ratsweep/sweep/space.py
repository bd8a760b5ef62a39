"""Search-space YAML files: load, validate against the experiment's config, expand into trials.

A file holds one sweep, or several as YAML documents separated by `---` (run in order). Every
error names the file and the key and says what was expected (`SpaceError`); nothing is started
until every document of the file is valid.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ..errors import SpaceError, UserError
from .. import config as cfg
from .. import registry

SCHEMA_VERSION = 1
DOMAINS = {  # what a searched key's value may be (the docs' schema reference is generated from these tables)
    "grid": "a list: every value, each a trial (times num_samples)",
    "choice": "a list: one value drawn per sample",
    "uniform": "[low, high]: a float drawn uniformly",
    "loguniform": "[low, high], low > 0: a float drawn uniformly in log space",
    "randint": "[low, high): an integer drawn uniformly, high excluded (as Ray Tune's)",
}
SCHEDULERS = {
    "fifo": {},
    "asha": {"max_t": int, "grace_period": int, "reduction_factor": float},
    "pbt": {"perturbation_interval": int, "quantile_fraction": float, "mutate": list},
}
SEARCH_ALGS = {
    "random": "every distinct grid point times num_samples, the other domains sampled (seed: the draws)",
    "grid": "the same as random",
    "optuna": "Ray Tune's OptunaSearch over the domains, num_samples trials, a config never run twice",
    "hyperopt": "Ray Tune's HyperOptSearch over the domains, num_samples trials, a config never run twice",
}
# More trials than this are refused unless asked for (--max-trials): a grid that size is usually a
# typo, and expanding it costs memory and time before anything runs.
MAX_TRIALS = 10_000
TOP_LEVEL = {
    "version": "optional; the schema version, 1",
    "extends": "optional; a bundled space's name or a path (relative to this file): that space with this document's keys "
               "added or overriding (mappings merged key by key, a search_space mapping applied to each space of a union, "
               "null removes a key); a key set in config leaves the base's search_space and vice versa; needs its own name",
    "name": "required; the MLflow experiment and the results folder's prefix: letters, digits, _ - . (at most 100)",
    "experiment": "required; a registered experiment (ratsweep list)",
    "metric": "required; {name: a metric the experiment reports, mode: min | max}",
    "num_samples": "samples of the non-grid domains per grid point (random/grid), or trials (optuna/hyperopt); default 1",
    "resources": "per trial: {cpu: number, gpu: number}; default {cpu: 1, gpu: 0}",
    "scheduler": "{type: fifo | asha | pbt, ...its keys}; default fifo",
    "search_alg": "{type: random | grid | optuna | hyperopt, seed: int}; default random",
    "max_failures": "retries of a trial that crashed (from its last checkpoint); default 2",
    "config": "fixed config keys for every trial (dotted or nested: rational.degrees or rational: {degrees: ...})",
    "search_space": "searched config keys, each a domain; or a list of such mappings (a union, each run once)",
    "report": "ratsweep report's default layout: the report keys below",
}
REPORT_KEYS = {
    "rows": "config keys, a row per value (default: the keys that vary, except seed)",
    "columns": "a config key, a column per value",
    "best_of": "a config key: each cell the better of its settings",
    "percent": "true: show 100 x the metric",
    "curve": "the metric the learning-curve plot shows (default: the sweep's)",
    "labels": "{value or 'key | value': label} shown instead of values",
    "paper": "the paper's table to set beside (table1 .. table5)",
    "std": "sample | population standard deviation",
    "best": "per_column | per_row: where the best and second best are marked",
    "decimals": "fixed decimal places (default: 4 significant digits)",
    "also": "{metric: decimals}: more figures per cell (e.g. final_return, elapsed_min), each mean ± std over the same runs",
}


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
        that apply, each distinct config once (by the config that runs: two points a config's own
        rules make equal, e.g. tinyimagenet's rational_no_norm, run once)."""
        rng = random.Random(self.search_alg.get("seed", 0))
        seen, out = set(), []
        for space in self.spaces:
            grid = {k: d.values for k, d in space.items() if not d.sampled}
            sampled = {k: d for k, d in space.items() if d.sampled}
            for point in itertools.product(*grid.values()):
                for _ in range(self.num_samples):
                    values = dict(zip(grid, point)) | {k: d.sample(rng) for k, d in sampled.items()}
                    trial = self.active(values)
                    key = cfg.identity(cfg.flatten(self.build_config(trial)))
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
    """The bundled spaces by name: the paper's tables and the quickstart by file name, then the
    examples as examples/NAME."""
    folder = bundled_dir()
    return {p.stem: p for p in sorted(folder.glob("*.yaml"))} | \
        {f"examples/{p.stem}": p for p in sorted(folder.glob("examples/*.yaml"))}


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


def documents_of(path: Path) -> list:
    """The YAML documents of a space file (empty ones left out), or SpaceError naming the file."""
    try:
        documents = [d for d in cfg.yaml_load_all(path.read_text(encoding="utf-8")) if d is not None]
    except UnicodeDecodeError as e:
        raise SpaceError(f"{path}: not UTF-8 text (byte {e.start}: {e.reason}); save the file as UTF-8") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark else ""
        raise SpaceError(f"{path}: not valid YAML{where}: {getattr(e, 'problem', e)}") from None
    if not documents:
        raise SpaceError(f"{path}: empty file; expected a search space (see docs/search-spaces.md)")
    return documents


def _merge(base: Any, update: Any) -> Any:
    """`update` over `base`: mappings merged key by key (recursively), a null value removing its key;
    anything else replaced."""
    if not (isinstance(base, dict) and isinstance(update, dict)):
        return update
    merged = dict(base)
    for key, value in update.items():
        if value is None:
            merged.pop(key, None)
        else:
            merged[key] = _merge(merged[key], value) if key in merged else value
    return merged


def extended(path: Path, doc: Any, seen: tuple[Path, ...] = ()) -> Any:
    """The document with the space its `extends:` names merged under it (recursively), as TOP_LEVEL
    says; a document without `extends` as it is."""
    if not isinstance(doc, dict) or "extends" not in doc:
        return doc
    from .schema import _flat  # noqa: PLC0415  (schema reads Space and Domain from here)

    ref = doc["extends"]
    if not isinstance(ref, str) or not ref:
        raise SpaceError(f"{path}: extends: expected a bundled space's name or a path to a YAML file, got {ref!r}")
    local = path.parent / ref
    try:
        base_path = local if local.is_file() else resolve(ref)
    except SpaceError as e:
        raise SpaceError(f"{path}: extends: {e}") from None
    if base_path.resolve() in seen + (path.resolve(),):
        raise SpaceError(f"{path}: extends: {ref} extends this file again (a cycle)")
    documents = documents_of(base_path)
    if len(documents) != 1:
        raise SpaceError(f"{path}: extends: {base_path} holds {len(documents)} sweeps (YAML documents); expected one")
    base = extended(base_path, documents[0], seen + (path.resolve(),))
    if not isinstance(base, dict):
        raise SpaceError(f"{path}: extends: {base_path} is not a search space (a mapping of keys)")
    update = {k: v for k, v in doc.items() if k != "extends"}
    if not update.get("name") or update["name"] == base.get("name"):
        raise SpaceError(f"{path}: name: an extending space needs a name of its own (the base's "
                         f"{base.get('name')!r} would put both sweeps' runs under one name)")
    config, searched = update.pop("config", {}), update.pop("search_space", {})
    base_config, base_searched = base.get("config") or {}, base.get("search_space") or {}
    if not all(isinstance(v, dict) for v in (config or {}, base_config)) or not isinstance(searched or {}, (dict, list)):
        return {**base, **doc}  # not mappings: parse says what it expected
    config = {} if config is None else _flat(config)  # dotted, so rational: {degrees: ...} overrides rational.degrees
    searched_keys = {key for part in ([searched] if isinstance(searched, dict) else searched or [])
                     if isinstance(part, dict) for key in part}
    merged = _merge({k: v for k, v in base.items() if k not in ("config", "search_space")}, update)
    # config: null drops the base's constants; a key searched here is no longer one
    kept = {} if doc.get("config", {}) is None else {k: v for k, v in _flat(base_config).items() if k not in searched_keys}
    merged["config"] = _merge(kept, config)
    if isinstance(searched, list) or searched is None:
        merged["search_space"] = searched or {}
    else:  # added or overridden in every space of a union; a key made constant in config no longer searched
        parts = [_merge({k: v for k, v in part.items() if k not in config}, searched) if isinstance(part, dict) else part
                 for part in (base_searched if isinstance(base_searched, list) else [base_searched])]
        merged["search_space"] = parts if isinstance(base_searched, list) else parts[0]
    return merged


def load(space: str, overrides: dict[str, Any] | None = None, smoke: bool = False, max_trials: int | None = None) -> list[Space]:
    """Every sweep in the file (path or bundled name), validated; overrides ("--set") apply to each,
    after the experiment's registered smoke values when `smoke`; more than `max_trials` trials
    (default MAX_TRIALS) is an error."""
    path = resolve(space)
    documents = documents_of(path)
    from .schema import Errors, parse  # noqa: PLC0415  (it reads Space and Domain from here)

    errors, spaces = Errors(), []
    limit = max_trials or MAX_TRIALS
    for doc in documents:  # every document's mistakes, not just the first one's
        with errors.check():
            space = parse(path, extended(path, doc), overrides or {}, smoke)
            bound = space.trial_bound()
            if bound > limit:
                raise SpaceError(f"{path}: {space.name}: up to {bound:,} trials, more than the limit of {limit:,}; "
                                 f"pass --max-trials {bound} to run it anyway")
            spaces.append(space)
    errors.raise_any()
    return spaces


