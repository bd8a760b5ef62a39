"""Reading sweeps back from MLflow: best configs and paper-style tables with plots.

Everything here reads the tracking store (any MLflow URI), never Ray's local files, so it works
from any machine that reaches the store, long after the cluster is gone.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import shutil
import statistics
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from mlflow.tracking import MlflowClient

from .. import config as cfg
from .. import registry
from . import paper
from ..errors import NotFound, UserError
from . import tracking
from . import names
from .tracking import PLAN_FILE


@dataclass
class TrialRun:
    run_id: str
    status: str
    config: dict[str, Any]  # the experiment config keys that applied, values as in YAML
    extra: dict[str, Any]  # other params (num_params, ...)
    metrics: dict[str, float]  # latest value of each
    seconds: float | None
    sweep: str
    failure: str = ""  # why it FAILED (the ratsweep.failure tag): "diverged: ..." for a NaN/inf loss
    span: tuple[int, int] | None = None  # (start, end) in ms, when it ended
    node: str = ""  # the Ray node it ran on
    device: str = ""  # the device tag: a GPU's name, or "cpu (...)"
    name: str = ""  # the run's name: the trial's searched values (Space.trial_name)

    def outcome(self, metric: str) -> str:
        """finished (with a finite metric), diverged, failed (an error, or finished without the
        metric) or unfinished (running, killed, interrupted)."""
        if self.failure.startswith("diverged"):
            return "diverged"
        if self.status == "FINISHED":
            return "finished" if math.isfinite(self.metrics.get(metric, math.nan)) else "failed"
        return "failed" if self.status == "FAILED" else "unfinished"


@dataclass
class Sweep:
    name: str
    experiment: str
    metric: str
    mode: str
    runs: list[TrialRun]
    client: MlflowClient
    sweep_run_ids: list[str]  # newest first
    report: dict[str, Any]  # the newest sweep run's report layout from its search space ({} if none)
    plan: dict[str, Any] = field(default_factory=dict)  # the newest sweep run's tracking.sweep_plan ({} if none)
    superseded: int = 0  # runs left out: their config ran again later (load_sweep's all_runs)

    def ranked(self) -> list[TrialRun]:
        """Finished trials with the metric, best first."""
        done = [r for r in self.runs if r.status == "FINISHED" and math.isfinite(r.metrics.get(self.metric, math.nan))]
        return sorted(done, key=lambda r: r.metrics[self.metric], reverse=self.mode == "max")


def _typed(config_class: type | None, key: str, text: str):
    """A param back in its config field's type (lists for tuples, as YAML writes them); a param
    that is no config key (num_params), or of an experiment not installed here, as YAML reads it."""
    try:
        annotation = cfg.annotation_of(config_class, key)
    except (KeyError, TypeError):  # not a key of the config class, or no class
        return cfg.parse_text(text)
    value = cfg.from_text(annotation, text, key)
    return list(value) if isinstance(value, tuple) else value


def load_sweep(uri: str, name: str, include_smoke: bool = False, all_runs: bool = False) -> Sweep:
    """A sweep's trial runs: without `include_smoke`, none of its --smoke invocations; without
    `all_runs`, a config that ran more than once (the same sweep run again) counts once, by its latest
    finished run (its latest run if none finished)."""
    mlflow_client = tracking.reader(uri)
    experiment = mlflow_client.get_experiment_by_name(name)
    if experiment is None:
        known = [e.name for e in mlflow_client.search_experiments() if names.EXPERIMENT_METRIC in e.tags]
        raise NotFound(f"{name}: {registry.unknown('sweep', name, known).args[0]} (in {uri})")
    tags = experiment.tags
    if names.EXPERIMENT_METRIC not in tags:
        raise NotFound(f"{name}: an MLflow experiment, but not a ratsweep sweep (it has no ratsweep.metric tag; in {uri})")
    try:
        config_class = registry.get_experiment(tags[names.EXPERIMENT_TYPE]).config
        keys = set(cfg.keys(config_class))
    except KeyError:  # the experiment's plugin is not installed here: every param is config
        config_class, keys = None, None
    runs, sweeps = [], []
    for run in _all_runs(mlflow_client, experiment.experiment_id):
        kind = run.data.tags.get(names.KIND)
        if kind == "sweep":
            sweeps.append(run)
            continue
        if kind != "trial":
            continue
        params = {k: _typed(config_class, k, v) for k, v in run.data.params.items()}
        end = run.info.end_time
        runs.append(
            TrialRun(
                run_id=run.info.run_id,
                status=run.info.status,
                config={k: v for k, v in params.items() if keys is None or k in keys},
                extra={k: v for k, v in params.items() if keys is not None and k not in keys},
                metrics=dict(run.data.metrics),
                seconds=(end - run.info.start_time) / 1000 if end and run.info.start_time else None,
                sweep=run.data.tags.get(names.PARENT, ""),
                failure=run.data.tags.get(names.FAILURE, ""),
                span=(run.info.start_time, end) if end and run.info.start_time else None,
                node=run.data.tags.get(names.NODE, ""),
                device=run.data.tags.get(names.DEVICE, ""),
                name=run.info.run_name or "",
            )
        )
    sweeps.sort(key=lambda r: r.info.start_time, reverse=True)
    if not include_smoke:
        smoke = {s.info.run_id for s in sweeps if s.data.tags.get(names.SMOKE, "").lower() == "true"}  # "True" before 0.x
        if runs and all(r.sweep in smoke for r in runs):
            raise NotFound(f"{name}: it has only --smoke runs so far; --include-smoke shows them")
        runs = [r for r in runs if r.sweep not in smoke]
        sweeps = [s for s in sweeps if s.info.run_id not in smoke]
    superseded = 0
    if not all_runs:
        latest = latest_per_config(runs)
        runs, superseded = latest, len(runs) - len(latest)
    report = json.loads(sweeps[0].data.tags.get(names.REPORT, "{}")) if sweeps else {}
    plan = _plan(mlflow_client, sweeps[0].info.run_id) if sweeps else {}
    return Sweep(name, tags.get(names.EXPERIMENT_TYPE, "?"), tags[names.EXPERIMENT_METRIC], tags[names.EXPERIMENT_MODE], runs,
                 mlflow_client, [r.info.run_id for r in sweeps], report, plan, superseded)


def latest_per_config(runs: list[TrialRun]) -> list[TrialRun]:
    """One run per distinct config: the latest finished one, else the latest."""
    def rank(run: TrialRun) -> tuple:
        return (run.status == "FINISHED", run.span[1] if run.span else 0)

    chosen: dict[str, TrialRun] = {}
    for run in runs:
        key = cfg.identity(run.config)
        if key not in chosen or rank(run) > rank(chosen[key]):
            chosen[key] = run
    return list(chosen.values())


def _plan(mlflow_client: MlflowClient, run_id: str) -> dict[str, Any]:
    """A sweep run's plan.json; {} for sweeps from before it was written, or where the artifact store
    cannot be read (the report then sorts by name and counts no missing trials)."""
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    try:
        if PLAN_FILE not in {a.path for a in mlflow_client.list_artifacts(run_id)}:
            return {}
        with tempfile.TemporaryDirectory() as tmp:
            return json.loads(Path(mlflow_client.download_artifacts(run_id, PLAN_FILE, tmp)).read_text())
    except Exception:  # noqa: BLE001  (any store or decoding error: the plan is optional)
        return {}


def _all_runs(mlflow_client: MlflowClient, experiment_id: str):
    token = None
    while True:
        page = mlflow_client.search_runs([experiment_id], max_results=1000, page_token=token)
        yield from page
        token = page.token
        if not token:
            return


# ---- best -------------------------------------------------------------------------------------


def best(sweep: Sweep, top: int) -> list[dict[str, Any]]:
    ranked = sweep.ranked()
    if not ranked:
        raise NotFound(f"{sweep.name}: no finished trial has a {sweep.metric!r} metric yet")
    return [{"name": r.name, "run_id": r.run_id, "metric": sweep.metric, "value": r.metrics[sweep.metric], "config": r.config}
            for r in ranked[:top]]


def best_as_space(sweep: Sweep, entries: list[dict[str, Any]]) -> str:
    """A search-space file that reruns the best config; for --top K, one document (sweep) per config."""
    docs = [
        {"name": f"{sweep.name}_best", "experiment": sweep.experiment,
         "metric": {"name": sweep.metric, "mode": sweep.mode}, "config": entry["config"]}
        for entry in entries
    ]
    header = f"# the best {len(docs)} of {sweep.name} by {sweep.metric} ({sweep.mode}), from MLflow\n"
    return header + yaml.safe_dump_all(docs, sort_keys=False)


# ---- report -----------------------------------------------------------------------------------

OUTCOMES = ("diverged", "failed", "missing")  # shown after the finished count when there are any


@dataclass
class Group:
    """The runs of one setting of the layout's keys, and how many trials the sweep planned for it.

    `values` are the finished runs' metrics. With `failed_as` (the authors' convention), a diverged run
    adds the last value it reported (a best_* metric: the best before divergence; `failed_as` if it
    reported none), and every failed or missing trial adds `failed_as`."""

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
        return values + [self.failed_as] * (self.count("failed") + self.count("missing"))

    @property
    def mean(self) -> float:
        return statistics.fmean(self.values) if self.values else math.nan

    @property
    def std(self) -> float:
        if len(self.values) < 2:
            return 0.0
        return statistics.pstdev(self.values) if self.population else statistics.stdev(self.values)

    @property
    def caveats(self) -> list[str]:
        """What the runs say qualifies their numbers (their `caveat` param, e.g. substitute reference scores)."""
        return sorted({str(r.extra["caveat"]) for r in self.runs if r.extra.get("caveat")})

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
    order = {key: [_show(v) for v in values] for key, values in sweep.plan.get("order", {}).items()}

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
        key = tuple(_show(config.get(k, "-")) for k in group_by)
        return out.setdefault(key, Group(key, sweep.metric, failed_as, population))

    for run in sweep.runs:
        group(run.config).runs.append(run)
    for trial in sweep.plan.get("trials") or []:
        group(trial).planned += 1
    position = _position(sweep)
    return sorted(out.values(), key=lambda g: [position(k, v) for k, v in zip(group_by, g.key)])


def _show(value) -> str:
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
    of rows) or "per_row"; `decimals` fixes the places shown."""

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

    @classmethod
    def of(cls, sweep: Sweep) -> Layout:
        """The sweep's own layout (its search space's `report:`), else a row per varying key."""
        report = sweep.report
        return cls(list(report.get("rows") or default_group_by(sweep)), report.get("columns"), report.get("best_of"),
                   bool(report.get("percent", False)), report.get("curve"), dict(report.get("labels") or {}), report.get("paper"),
                   report.get("std", "sample"), report.get("best", "per_column"), report.get("decimals"))

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


def _block(layout: Layout, row: tuple) -> tuple:
    """The rows a best is marked among: those sharing the first row key's value (all, with one key)."""
    return row[:1] if len(layout.rows) > 1 else ()


def _rivals(layout: Layout, c: Cell) -> tuple:
    """The cells a cell's best/second mark is decided among: with `best: per_row`, its row (the
    paper's RL tables, activations as columns); else its column within its block of rows."""
    return (c.row,) if layout.best == "per_row" else (_block(layout, c.row), c.column)


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


def _format(layout: Layout) -> tuple[Callable[[float], str], Callable[[float], str]]:
    """(mean format, std format): percent as 12.34, `decimals` places if set, else 4 significant digits."""
    if layout.percent:
        return lambda x: f"{100 * x:.2f}", lambda x: f"{100 * x:.2f}"
    if layout.decimals is not None:
        return lambda x: f"{x:.{layout.decimals}f}", lambda x: f"{x:.{layout.decimals}f}"
    return lambda x: f"{x:.4g}", lambda x: f"{x:.2g}"


def cell_text(c: Cell, layout: Layout) -> str:
    """"90.62 ± 0.21 (5)", "88.10 ± 0.40 (4, 1 diverged)", "57.26 (1)", "fails to train (0, 5 diverged)",
    "- (0, 5 missing)"."""
    mean, std = _format(layout)
    g = c.group
    body = f"{mean(g.mean)} ± {std(g.std)}" if len(g.values) > 1 else mean(g.mean) if g.values else \
        "fails to train" if g.count("diverged") else "-"
    text = f"{body}{CAVEAT_MARK if g.caveats else ''} ({g.counts()})"
    return f"{text} {layout.best_of}={c.chosen}" if layout.best_of else text


CAVEAT_MARK = " †"


def _caveat_notes(found: list[Cell]) -> list[str]:
    """"† <caveat>" lines for the cells marked with CAVEAT_MARK."""
    return [f"{CAVEAT_MARK.strip()} {caveat}" for caveat in sorted({c for cell in found for c in cell.group.caveats})]


def _minutes(cs: list[Cell]) -> str:
    seconds = [r.seconds for c in cs for r in c.group.finished if r.seconds is not None]
    return f"{statistics.fmean(seconds) / 60:.2f}" if seconds else "-"


def most_at_once(runs: list[TrialRun]) -> int:
    """The most runs that ran at the same time on one node (from their start and end times)."""
    most = 0
    for node in {r.node for r in runs}:
        events = sorted((t, step) for r in runs if r.node == node and r.span for t, step in ((r.span[0], 1), (r.span[1], -1)))
        running = 0
        for _, step in events:  # an end sorts before a start at the same instant
            running += step
            most = max(most, running)
    return most


def _minutes_note(sweep: Sweep) -> str:
    """What the minutes are, and how many trials shared a device while they ran."""
    note = "minutes: mean wall time of a finished trial"
    resources = sweep.plan.get("resources")
    if resources:
        gpu = resources.get("gpu", 0)
        share = f", up to {int(1 / gpu)} per GPU" if 0 < gpu < 1 else ""
        note += f"; each trial asked for {resources.get('cpu', 1):g} CPU and {gpu:g} GPU{share}"
    finished = [r for r in sweep.runs if r.outcome(sweep.metric) == "finished"]
    on_gpu = [r for r in finished if r.device and not r.device.startswith("cpu")]
    if on_gpu:
        note += f"; at most {most_at_once(on_gpu)} trials ran at once on one node's GPUs"
    elif finished and all(r.device.startswith("cpu") for r in finished):
        note += f"; trials ran on CPU, at most {most_at_once(finished)} at once on one node"
    return note


def _superseded_note(sweep: Sweep) -> str:
    if not sweep.superseded:
        return ""
    return f"; {sweep.superseded} earlier runs of configs that ran again are left out (--all-runs counts them)"


def _failed_as_note(layout: Layout, failed_as: float | None) -> str:
    if failed_as is None:
        return "diverged, failed and missing seeds are counted, not averaged"
    return (f"with --failed-as {failed_as:g}: a diverged seed counts at its last value (the best before divergence), "
            f"a failed or missing seed as {_format(layout)[0](failed_as)}")


def table(sweep: Sweep, layout: Layout, fmt: str, failed_as: float | None = None) -> str:
    """mean ± std of the metric per cell over its seeds, with how many finished, diverged, failed or
    are missing, and the mean minutes per row; rows and columns in the search space's order, the best
    and second best marked per column within each block of rows sharing the first row key's value
    (per model, as the paper marks them)."""
    found = cells(sweep, layout, failed_as)
    if not found:
        raise NotFound(f"{sweep.name}: no trial has run yet")
    marked = marks(found, layout, sweep.mode)
    if fmt == "csv":
        out = io.StringIO()
        writer = csv.writer(out)
        extra = [k for k in (layout.columns, layout.best_of) if k]
        writer.writerow([*layout.rows, *extra, f"{sweep.metric}_mean", f"{sweep.metric}_std", "n", *OUTCOMES, "mark", "minutes", "caveat"])
        for c in found:
            g = c.group
            chosen = [c.column] * bool(layout.columns) + [c.chosen] * bool(layout.best_of)
            stats = [g.mean, g.std] if g.values else ["", ""]
            writer.writerow([*c.row, *chosen, *stats, len(g.finished), *(g.count(o) for o in OUTCOMES),
                             marked.get((c.row, c.column), ""), _minutes([c]), "; ".join(g.caveats)])
        return out.getvalue()

    columns = list(dict.fromkeys(c.column for c in found))
    by_row: dict[tuple, dict[str, Cell]] = {}
    for c in found:
        by_row.setdefault(c.row, {})[c.column] = c
    header = [*layout.rows, *([layout.column_label(v) for v in columns] if layout.columns else [sweep.metric]), "minutes"]
    body = []
    for row, row_cells in by_row.items():
        texts = [("-", "") if column not in row_cells else (cell_text(row_cells[column], layout), marked.get((row, column), ""))
                 for column in columns]
        body.append([*layout.row_labels(row), *texts, _minutes(list(row_cells.values()))])

    if fmt == "latex":
        style = {"best": r"\textbf{%s}", "second": r"\underline{%s}", "": "%s"}
        lines = [r"\begin{tabular}{" + "l" * len(layout.rows) + "r" * (len(columns) + 1) + "}", r"\toprule",
                 " & ".join(_tex(h) for h in header) + r" \\", r"\midrule"]
        for cells_ in body:
            rendered = [_tex(x) if isinstance(x, str) else style[x[1]] % _tex(x[0]) for x in cells_]
            lines.append(" & ".join(rendered).replace("±", r"$\pm$") + r" \\")
        notes = [_tex(note) + r" \\" for note in _caveat_notes(found)]
        return "\n".join([*lines, r"\bottomrule", r"\end{tabular}", *notes]) + "\n"
    style = {"best": "**%s**", "second": "*%s*", "": "%s"}
    scope = " per row" if layout.best == "per_row" else f" per {layout.rows[0]}" if len(layout.rows) > 1 else ""
    unit = " x 100" if layout.percent else ""
    std = " (population)" if layout.std == "population" else ""
    lines = [f"{sweep.name}: {sweep.metric}{unit} ({sweep.mode}), mean ± std{std} over seeds (finished, then diverged, "
             f"failed, missing); best{scope} in bold, second best in italics",
             f"{_failed_as_note(layout, failed_as)}; {_minutes_note(sweep)}{_superseded_note(sweep)}", "",
             "| " + " | ".join(header) + " |", "|" + "---|" * len(layout.rows) + "---:|" * (len(columns) + 1)]
    for cells_ in body:
        rendered = [x if isinstance(x, str) else style[x[1]] % x[0] for x in cells_]
        lines.append("| " + " | ".join(rendered) + " |")
    notes = _caveat_notes(found)
    return "\n".join([*lines, *([""] + notes if notes else [])]) + "\n"


def _tex(text: str) -> str:
    return str(text).replace("_", r"\_").replace("%", r"\%")


def paper_comparison(sweep: Sweep, layout: Layout, fmt: str, table_name: str | None, failed_as: float | None = None) -> str:
    """Each cell beside the paper's published number (paper_tables.yaml), with the difference and
    z = difference / its standard error, sqrt(s^2/n + s_paper^2/n_paper) (the paper's population stds
    turned into sample ones; where one side is a single run, the other side's std stands in for its
    spread). Cells the paper has no number for, and published cells this sweep lacks, are named."""
    name = table_name or layout.paper
    if not name:
        raise UserError(f"--paper: {sweep.name}'s search space names no paper table (report.paper); "
                        f"give one: --paper {' | '.join(paper.tables())}")
    try:
        published = paper.get(name)
    except KeyError as e:
        raise UserError(f"--paper: {e.args[0]}") from None
    if published.metric != sweep.metric:
        raise UserError(f"--paper: {name} publishes {published.metric}, but {sweep.name}'s metric is {sweep.metric}")
    scale = published.scale
    paper_std = {"sample": 1.0, "none": math.nan}.get(published.std, math.sqrt(published.runs / max(published.runs - 1, 1)))
    keys = [*layout.rows, *([layout.columns] if layout.columns else [])]
    found = cells(sweep, layout, failed_as)
    used: set[int] = set()
    rows = []
    for c in found:
        values = dict(zip(keys, (*c.row, c.column)))
        match = next((i for i, e in enumerate(published.cells)
                      if all(values.get(k) == _show(v) for k, v in published.where(e).items())), None)
        entry = None if match is None else published.cells[match]
        used.add(match)
        g = c.group
        ours = cell_text(c, layout)
        if entry is None:
            rows.append((c, ours, "no paper number", "", "", None))
            continue
        if entry.get("failed"):
            rows.append((c, ours, "fails to train", "", "", entry))
            continue
        p_std = entry.get("std", math.nan) * paper_std
        text = f"{entry['mean']:.2f}" + (f" ± {entry['std']:.2f}" if "std" in entry else "") + f" ({published.runs})"
        if not g.values:
            rows.append((c, ours, text, "", "", entry))
            continue
        diff = scale * g.mean - entry["mean"]
        n, s = len(g.values), scale * statistics.stdev(g.values) if len(g.values) > 1 else math.nan  # sample std, whatever the layout shows
        s = p_std if math.isnan(s) else s
        p_std = s if math.isnan(p_std) else p_std
        se = math.sqrt(s**2 / n + p_std**2 / published.runs) if not math.isnan(s) else math.nan
        z = f"{diff / se:+.1f}" if se > 0 else "n/a"
        rows.append((c, ours, text, f"{diff:+.2f}", z, entry))
    unmatched = [e for i, e in enumerate(published.cells) if i not in used]

    if fmt == "csv":
        out = io.StringIO()
        writer = csv.writer(out)
        writer.writerow([*keys, "ours", "paper", "difference", "z"])
        for c, ours, text, diff, z, _ in rows:
            writer.writerow([*c.row, *([c.column] if layout.columns else []), ours, text, diff, z])
        return out.getvalue()
    header = [*keys, f"ours ({sweep.metric}{' x 100' if layout.percent else ''})", "paper", "ours - paper", "z"]
    lines = [f"{sweep.name} against the paper's {published.title}",
             f"paper: {published.note}; z = (ours - paper) / standard error of the difference",
             f"{_failed_as_note(layout, failed_as)}", "",
             "| " + " | ".join(header) + " |", "|" + "---|" * len(keys) + "---:|" * 4]
    for c, ours, text, diff, z, _ in rows:
        shown = [*layout.row_labels(c.row), *([layout.column_label(c.column)] if layout.columns else [])]
        lines.append("| " + " | ".join([*shown, ours, text, diff, z]) + " |")
    if unmatched:
        lines += ["", f"published but not in this sweep's table ({len(unmatched)}): "
                  + "; ".join(", ".join(f"{k}={v}" for k, v in published.where(e).items()) for e in unmatched)]
    notes = _caveat_notes(found)
    return "\n".join([*lines, *([""] + notes if notes else [])]) + "\n"


def plots(sweep: Sweep, layout: Layout, directory: Path) -> list[Path]:
    """learning_curves.png: the curve metric per report, mean ± std over each cell's finished runs, one
    panel per (first row key's value, column), one line per the other row values; and each cell's best
    run's plots (learned rationals, fits), copied from its MLflow artifacts."""
    from matplotlib.figure import Figure  # noqa: PLC0415

    directory.mkdir(parents=True, exist_ok=True)
    metric = layout.curve or sweep.metric
    found = [c for c in cells(sweep, layout) if c.group.finished]
    if not found:
        return []
    panels = list(dict.fromkeys((_block(layout, c.row), c.column) for c in found))
    ncols = len({column for _, column in panels})
    nrows = math.ceil(len(panels) / ncols)
    figure = Figure(figsize=(5 * ncols, 3.4 * nrows), dpi=120)
    axes = figure.subplots(nrows, ncols, squeeze=False).flat
    written, copied = [], {}  # copied: each cell's label and its best run's plots
    for ax, panel in zip(axes, panels):
        for c in (c for c in found if (_block(layout, c.row), c.column) == panel):
            finished = c.group.finished
            histories = [sorted(sweep.client.get_metric_history(r.run_id, metric), key=lambda m: m.step) for r in finished]
            curves = [[m.value for m in history] for history in histories]
            length = min(len(curve) for curve in curves)
            if length:
                steps = [m.step for m in histories[0][:length]]  # the experiment's steps or epochs (tracking.STEP_KEYS)
                mean = [statistics.fmean(curve[i] for curve in curves) for i in range(length)]
                std = [statistics.pstdev([curve[i] for curve in curves]) for i in range(length)]
                label = " ".join(x for x in layout.row_labels(c.row)[len(panel[0]):] if x) or "all"
                ax.plot(steps, mean, "o-", ms=2, label=label)
                ax.fill_between(steps, [m - s for m, s in zip(mean, std)], [m + s for m, s in zip(mean, std)], alpha=0.2)
            best_run = (max if sweep.mode == "max" else min)(finished, key=lambda r: r.metrics[sweep.metric])
            files = _copy_artifacts(sweep.client, best_run.run_id, directory / _slug((*c.row, c.column)))
            label = ", ".join(x for x in [*layout.row_labels(c.row), *([layout.column_label(c.column)] if layout.columns else [])] if x)
            copied[label or "all"] = files
            written += files
        title = ", ".join([*layout.row_labels(panel[0]), *([layout.column_label(panel[1])] if layout.columns else [])])
        ax.set_title(f"{sweep.name}: {title}" if title else sweep.name, fontsize=9)
        ax.set_xlabel(next((k for k in tracking.STEP_KEYS if k in found[0].group.finished[0].metrics), "report"))
        ax.set_ylabel(metric)
        ax.legend(fontsize=7, frameon=False)
    figure.tight_layout()
    path = directory / "learning_curves.png"
    figure.savefig(path)
    return [path, *_side_by_side(copied, directory), *written]


def _side_by_side(copied: dict[str, list[Path]], directory: Path, per_row: int = 4) -> list[Path]:
    """<plot>_by_cell.png: each plot the cells' best runs have (fit, activation_layer1, ...), one tile per cell."""
    from matplotlib.figure import Figure  # noqa: PLC0415
    from matplotlib.image import imread  # noqa: PLC0415

    by_name: dict[str, list[tuple[str, Path]]] = {}
    for label, files in copied.items():
        for file in files:
            by_name.setdefault(file.stem, []).append((label, file))
    out = []
    for stem, tiles in by_name.items():
        if len(tiles) < 2:
            continue
        ncols = min(per_row, len(tiles))
        nrows = math.ceil(len(tiles) / ncols)
        figure = Figure(figsize=(4 * ncols, 3.2 * nrows + 0.3), dpi=110)
        for ax, (label, file) in zip(figure.subplots(nrows, ncols, squeeze=False).flat, tiles):
            ax.imshow(imread(file))
            ax.set_title(label, fontsize=9)
        for ax in figure.axes:
            ax.axis("off")
        figure.suptitle(f"{stem}: the best run of each cell", fontsize=10)
        figure.tight_layout()
        out.append(directory / f"{stem}_by_cell.png")
        figure.savefig(out[-1])
    return out


def _slug(key: tuple) -> str:
    text = "_".join(k.strip("()").replace(", ", "x") for k in key if k) or "all"
    return "".join(c if c.isalnum() or c in "-_." else "-" for c in text)


def _copy_artifacts(mlflow_client: MlflowClient, run_id: str, directory: Path) -> list[Path]:
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # one bar per file otherwise
    pngs = [a.path for a in mlflow_client.list_artifacts(run_id) if a.path.endswith(".png")]
    if not pngs:
        return []
    directory.mkdir(parents=True, exist_ok=True)
    out = []
    with tempfile.TemporaryDirectory() as tmp:
        for artifact in pngs:
            local = mlflow_client.download_artifacts(run_id, artifact, tmp)
            out.append(Path(shutil.copy(local, directory / Path(artifact).name)))
    return out


def log_report(sweep: Sweep, files: list[Path], root: Path, run_id: str | None = None) -> None:
    """Attach the report to a sweep run (default: the newest), so the MLflow UI shows it beside the runs."""
    run_id = run_id or (sweep.sweep_run_ids[0] if sweep.sweep_run_ids else None)
    if run_id:
        for path in files:
            parent = path.parent.relative_to(root)
            sweep.client.log_artifact(run_id, str(path), artifact_path=str(Path("report") / parent))


def attach_report(uri: str, name: str, run_id: str, smoke: bool) -> None:
    """At a sweep's end: the table `ratsweep report NAME` prints (report.md) and its plots, on the sweep's run."""
    sweep = load_sweep(uri, name, include_smoke=smoke, all_runs=False)
    layout = Layout.of(sweep)
    check_layout(sweep, layout)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "report.md").write_text(table(sweep, layout, "md", None))
        log_report(sweep, [root / "report.md", *plots(sweep, layout, root)], root, run_id)

