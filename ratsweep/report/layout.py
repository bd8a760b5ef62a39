"""Which runs make each cell of a report: rows, columns and best-of from the search space's `report:`
layout (or the CLI), each cell's seeds counted by outcome, and the best and second best marked."""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


from .. import config as cfg
from .. import registry
from ..errors import UserError
from ..sweep.results import Sweep, TrialRun


OUTCOMES = ("diverged", "failed", "missing")  # shown after the finished count when there are any
# a run's count of evaluations it reported non-finite and its final score skipped (offline RL, the authors' rule)
NONFINITE_METRIC = "nonfinite_evaluations"


@dataclass
class Group:
    """The runs of one setting of the layout's keys, and how many trials the sweep planned for it.

    `values` are the finished runs' metrics. With `failed_as` (the authors' rule for Tables 1-2 and
    5), a diverged run adds the last value it reported (a best_* metric: the best before divergence;
    `failed_as` if it reported none), and every failed or missing trial adds `failed_as`; a NaN
    `failed_as` adds nothing for them (Table 5: a run's best epoch counts, no run no number)."""

    key: tuple
    metric: str
    failed_as: float | None = None
    population: bool = False  # std with ddof 0 (as the paper's RL tables), else the sample std
    runs: list[TrialRun] = field(default_factory=list)
    planned: int = 0

    def count(self, outcome: str) -> int:
        if outcome == "missing":  # planned but without a result: never started, interrupted, still running
            ended = sum(self.count(o) for o in ("finished", "diverged", "failed"))
            return max(self.planned - ended, self.count("unfinished"))
        return sum(r.outcome(self.metric) == outcome for r in self.runs)

    @property
    def finished(self) -> list[TrialRun]:
        return [r for r in self.runs if r.outcome(self.metric) == "finished"]

    @property
    def values(self) -> list[float]:
        values = [r.metrics[self.metric] for r in self.finished]
        if self.failed_as is None:
            return values
        for run in self.runs:
            if run.outcome(self.metric) == "diverged":
                last = run.metrics.get(self.metric, math.nan)
                values.append(last if math.isfinite(last) else self.failed_as)
        values += [self.failed_as] * (self.count("failed") + self.count("missing"))
        return [v for v in values if not math.isnan(v)]

    @property
    def mean(self) -> float:
        return statistics.fmean(self.values) if self.values else math.nan

    @property
    def std(self) -> float:
        return self.spread(self.values)

    def figure(self, metric: str) -> list[float]:
        """Another metric of the same finished runs (report.also: the RL tables' return and time)."""
        return [r.metrics[metric] for r in self.finished if math.isfinite(r.metrics.get(metric, math.nan))]

    def spread(self, values: list[float]) -> float:
        if len(values) < 2:
            return 0.0
        return statistics.pstdev(values) if self.population else statistics.stdev(values)

    @property
    def caveats(self) -> list[str]:
        """What the runs say qualifies their numbers: their `caveat` param (e.g. substitute reference
        scores), and evaluations their final score skipped as non-finite."""
        out = {str(r.extra["caveat"]) for r in self.runs if r.extra.get("caveat")}
        skipped = sum(r.metrics.get(NONFINITE_METRIC, 0) > 0 for r in self.finished)
        if skipped:
            out.add("non-finite evaluations skipped: a final score averages the last 5 finite ones (table_RL.py)")
        return sorted(out)

    def counts(self) -> str:
        """"5", "4, 1 diverged", "3, 1 failed, 1 missing": finished runs, then the others."""
        others = [f"{self.count(o)} {o}" for o in OUTCOMES if self.count(o)]
        return ", ".join([str(len(self.finished)), *others])


def check_layout(sweep: Sweep, layout: Layout) -> None:
    """Every key the layout names is a config key of the sweep's experiment (else one line, with a
    did-you-mean)."""
    try:
        known = cfg.keys(registry.get_experiment(sweep.experiment).config)
    except KeyError:  # its plugin is not installed here: the keys its runs have
        known = list(dict.fromkeys(k for r in sweep.runs for k in r.config))
    for option, keys in (("--group-by", layout.rows), ("--columns", [layout.columns]), ("--best-of", [layout.best_of])):
        for key in keys:
            if key is not None and key not in known:
                raise UserError(f"{option}: unknown key {key!r}{cfg.did_you_mean(key, known)}; expected one of {', '.join(known)}")


def default_group_by(sweep: Sweep) -> list[str]:
    """The config keys that vary across the runs, except seeds (what the table averages over)."""
    keys: list[str] = []
    for run in sweep.runs:
        keys += [k for k in run.config if k not in keys]
    def distinct(key):  # values where the key applies (rational.* is absent from relu runs)
        return {repr(r.config[key]) for r in sweep.runs if key in r.config}

    return [k for k in keys if k != "seed" and len(distinct(k)) > 1]


def _position(sweep: Sweep) -> Callable[[str, str], tuple]:
    """Sort key of a shown value of a config key: "-" (does not apply) first, then the order the search
    space lists the values in (its plan), then anything else by name."""
    order = {key: [show(v) for v in values] for key, values in sweep.plan.get("order", {}).items()}

    def position(key: str, shown: str) -> tuple:
        listed = order.get(key, [])
        if shown == "-":
            return (0, 0, "")
        return (1, listed.index(shown), "") if shown in listed else (2, 0, shown)

    return position


def groups(sweep: Sweep, group_by: list[str], failed_as: float | None = None, population: bool = False) -> list[Group]:
    """Every run, and every trial the sweep planned, by its values of `group_by`, in the space's order."""
    out: dict[tuple, Group] = {}

    def group(config: dict[str, Any]) -> Group:
        key = tuple(show(config.get(k, "-")) for k in group_by)
        return out.setdefault(key, Group(key, sweep.metric, failed_as, population))

    for run in sweep.runs:
        group(run.config).runs.append(run)
    for trial in sweep.plan.get("trials") or []:
        group(trial).planned += 1
    position = _position(sweep)
    return sorted(out.values(), key=lambda g: [position(k, v) for k, v in zip(group_by, g.key)])


def show(value) -> str:
    if isinstance(value, list):
        return "(" + ", ".join(map(str, value)) + ")"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


@dataclass
class Layout:
    """How `report` arranges the groups: a row per combination of `rows`' values; with `columns`,
    one column per value of that key; with `best_of`, each cell the better of that key's settings
    (by mean, as the paper's Table 2 takes the better of LSUV on/off); `percent` shows 100 x metric;
    `curve` is the metric the learning-curve plots show (default: the sweep's); `labels` maps shown
    values (or "a | b" runs of consecutive row values, or "column=value") to the paper's names;
    `paper` names the paper's table of this sweep (paper_tables.yaml); `std` is "sample" or
    "population" (ddof 0, as the authors' RL table script); `best` is "per_column" (within each block
    of rows) or "per_row"; `decimals` fixes the places shown; `also` adds figures per cell ({metric:
    decimals}, e.g. the RL tables' return and time), each mean ± std over the cell's finished runs."""

    rows: list[str]
    columns: str | None = None
    best_of: str | None = None
    percent: bool = False
    curve: str | None = None
    labels: dict[str, str] = field(default_factory=dict)
    paper: str | None = None
    std: str = "sample"
    best: str = "per_column"
    decimals: int | None = None
    also: dict[str, int | None] = field(default_factory=dict)

    @classmethod
    def of(cls, sweep: Sweep) -> Layout:
        """The sweep's own layout (its search space's `report:`), else a row per varying key."""
        report = sweep.report
        return cls(list(report.get("rows") or default_group_by(sweep)), report.get("columns"), report.get("best_of"),
                   bool(report.get("percent", False)), report.get("curve"), dict(report.get("labels") or {}), report.get("paper"),
                   report.get("std", "sample"), report.get("best", "per_column"), report.get("decimals"),
                   dict(report.get("also") or {}))

    def row_labels(self, row: tuple) -> list[str]:
        """The row's values as shown: the longest run of consecutive values that has a label becomes
        that label (in the run's first column, the others blank)."""
        shown, i = [], 0
        while i < len(row):
            for j in range(len(row), i, -1):
                label = self.labels.get(" | ".join(row[i:j]))
                if label is not None:
                    shown += [label] + [""] * (j - i - 1)
                    i = j
                    break
            else:
                shown.append(row[i])
                i += 1
        return shown

    def figure_label(self, metric: str) -> str:
        return self.labels.get(metric, metric)

    def column_label(self, column: str) -> str:
        if not self.columns:
            return column
        qualified = f"{self.columns}={column}"
        return self.labels.get(qualified, self.labels.get(column, qualified))


@dataclass
class Cell:
    row: tuple
    column: str  # "" without layout.columns
    group: Group
    chosen: str | None  # the best_of setting this cell shows


def _better(a: Group, b: Group, mode: str) -> bool:
    """Whether a has a strictly better mean than b (a group without values is never better)."""
    if not a.values:
        return False
    return not b.values or (a.mean > b.mean if mode == "max" else a.mean < b.mean)


def cells(sweep: Sweep, layout: Layout, failed_as: float | None = None) -> list[Cell]:
    """One cell per (row, column) in the space's order; with best_of, the setting with the better mean."""
    keys = [*layout.rows, *(k for k in (layout.columns, layout.best_of) if k)]
    out: dict[tuple, Cell] = {}
    for g in groups(sweep, keys, failed_as, layout.std == "population"):
        row, rest = g.key[:len(layout.rows)], g.key[len(layout.rows):]
        column = rest[0] if layout.columns else ""
        chosen = rest[-1] if layout.best_of else None
        current = out.get((row, column))
        if current is None or _better(g, current.group, sweep.mode):
            out[(row, column)] = Cell(row, column, g, chosen)
    position = _position(sweep)
    key_of = lambda c: ([position(k, v) for k, v in zip(layout.rows, c.row)], position(layout.columns or "", c.column))  # noqa: E731
    return sorted(out.values(), key=key_of)


def block(layout: Layout, row: tuple) -> tuple:
    """The rows a best is marked among (a plot's panel): those sharing the first row key's value, or
    the values its label spans ("vit | True": ViT no norm, a block of its own as in the paper's
    Table 5); all rows with one key."""
    if len(layout.rows) < 2:
        return ()
    shown = layout.row_labels(row)
    spanned = 1 + next((i for i, x in enumerate(shown[1:]) if x != ""), len(shown) - 1)
    return row[:min(spanned, len(row) - 1)]


def _rivals(layout: Layout, c: Cell) -> tuple:
    """The cells a cell's best/second mark is decided among: with `best: per_row`, its row (the
    paper's RL tables, activations as columns); else its column within its block of rows."""
    return (c.row,) if layout.best == "per_row" else (block(layout, c.row), c.column)


def marks(found: list[Cell], layout: Layout, mode: str) -> dict[tuple, str]:
    """{(row, column): "best" | "second"} per column within each block of rows (per model, as the
    paper's CIFAR tables mark them), or per row (layout.best == "per_row"); equal means share a mark."""
    means: dict[tuple, set[float]] = {}
    for c in found:
        if c.group.values:
            means.setdefault(_rivals(layout, c), set()).add(c.group.mean)
    ranked = {block: sorted(values, reverse=mode == "max") for block, values in means.items()}
    out = {}
    for c in found:
        top = ranked.get(_rivals(layout, c), [])
        if c.group.values and c.group.mean in top[:2]:
            out[(c.row, c.column)] = "best" if c.group.mean == top[0] else "second"
    return out
