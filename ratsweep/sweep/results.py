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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from mlflow.tracking import MlflowClient

from .. import config as cfg
from .. import registry
from .space import UserError
from .tracking import TAG_KIND, TAG_PARENT, TAG_REPORT, client


class NotFound(UserError):
    """No such MLflow experiment, or no finished trials in it."""


@dataclass
class TrialRun:
    run_id: str
    status: str
    config: dict[str, Any]  # the experiment config keys that applied, values as in YAML
    extra: dict[str, Any]  # other params (num_params, ...)
    metrics: dict[str, float]  # latest value of each
    seconds: float | None
    sweep: str


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

    def ranked(self) -> list[TrialRun]:
        """Finished trials with the metric, best first."""
        done = [r for r in self.runs if r.status == "FINISHED" and math.isfinite(r.metrics.get(self.metric, math.nan))]
        return sorted(done, key=lambda r: r.metrics[self.metric], reverse=self.mode == "max")


def _parse(value: str):
    try:
        return yaml.safe_load(value)
    except yaml.YAMLError:
        return value


def load_sweep(uri: str, name: str) -> Sweep:
    mlflow_client = client(uri)
    experiment = mlflow_client.get_experiment_by_name(name)
    if experiment is None:
        known = [e.name for e in mlflow_client.search_experiments() if "ratsweep.metric" in e.tags]
        raise NotFound(f"{name}: {registry.unknown('sweep', name, known).args[0]} (in {uri})")
    tags = experiment.tags
    try:
        keys = set(cfg.keys(registry.get_experiment(tags["ratsweep.experiment"]).config))
    except KeyError:  # the experiment's plugin is not installed here: every param is config
        keys = None
    runs, sweeps = [], []
    for run in _all_runs(mlflow_client, experiment.experiment_id):
        kind = run.data.tags.get(TAG_KIND)
        if kind == "sweep":
            sweeps.append(run)
            continue
        if kind != "trial":
            continue
        params = {k: _parse(v) for k, v in run.data.params.items()}
        end = run.info.end_time
        runs.append(
            TrialRun(
                run_id=run.info.run_id,
                status=run.info.status,
                config={k: v for k, v in params.items() if keys is None or k in keys},
                extra={k: v for k, v in params.items() if keys is not None and k not in keys},
                metrics=dict(run.data.metrics),
                seconds=(end - run.info.start_time) / 1000 if end and run.info.start_time else None,
                sweep=run.data.tags.get(TAG_PARENT, ""),
            )
        )
    sweeps.sort(key=lambda r: r.info.start_time, reverse=True)
    report = json.loads(sweeps[0].data.tags.get(TAG_REPORT, "{}")) if sweeps else {}
    return Sweep(name, tags.get("ratsweep.experiment", "?"), tags["ratsweep.metric"], tags["ratsweep.mode"], runs,
                 mlflow_client, [r.info.run_id for r in sweeps], report)


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
    return [{"run_id": r.run_id, "metric": sweep.metric, "value": r.metrics[sweep.metric], "config": r.config} for r in ranked[:top]]


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


@dataclass
class Group:
    key: tuple
    runs: list[TrialRun]
    values: list[float]

    @property
    def mean(self) -> float:
        return statistics.fmean(self.values)

    @property
    def std(self) -> float:
        return statistics.stdev(self.values) if len(self.values) > 1 else 0.0


def default_group_by(sweep: Sweep) -> list[str]:
    """The config keys that vary across the runs, except seeds (what the table averages over)."""
    keys: list[str] = []
    for run in sweep.runs:
        keys += [k for k in run.config if k not in keys]
    def distinct(key):  # values where the key applies (rational.* is absent from relu runs)
        return {repr(r.config[key]) for r in sweep.runs if key in r.config}

    return [k for k in keys if k != "seed" and len(distinct(k)) > 1]


def groups(sweep: Sweep, group_by: list[str]) -> list[Group]:
    out: dict[tuple, Group] = {}
    for run in sweep.ranked():
        key = tuple(_show(run.config.get(k, "-")) for k in group_by)
        group = out.setdefault(key, Group(key, [], []))
        group.runs.append(run)
        group.values.append(run.metrics[sweep.metric])
    return sorted(out.values(), key=lambda g: g.key)


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
    `curve` is the metric the learning-curve plots show (default: the sweep's)."""

    rows: list[str]
    columns: str | None = None
    best_of: str | None = None
    percent: bool = False
    curve: str | None = None

    @classmethod
    def of(cls, sweep: Sweep) -> Layout:
        """The sweep's own layout (its search space's `report:`), else a row per varying key."""
        report = sweep.report
        return cls(list(report.get("rows") or default_group_by(sweep)), report.get("columns"), report.get("best_of"),
                   bool(report.get("percent", False)), report.get("curve"))


@dataclass
class Cell:
    row: tuple
    column: str  # "" without layout.columns
    group: Group
    chosen: str | None  # the best_of setting this cell shows


def cells(sweep: Sweep, layout: Layout) -> list[Cell]:
    keys = [*layout.rows, *(k for k in (layout.columns, layout.best_of) if k)]
    pick = max if sweep.mode == "max" else min
    out: dict[tuple, Cell] = {}
    for g in groups(sweep, keys):
        row, rest = g.key[:len(layout.rows)], g.key[len(layout.rows):]
        column = rest[0] if layout.columns else ""
        chosen = rest[-1] if layout.best_of else None
        current = out.get((row, column))
        if current is None or pick(g.mean, current.group.mean) != current.group.mean:
            out[(row, column)] = Cell(row, column, g, chosen)
    return list(out.values())


def _block(layout: Layout, row: tuple) -> tuple:
    """The rows a best is marked among: those sharing the first row key's value (all, with one key)."""
    return row[:1] if len(layout.rows) > 1 else ()


def table(sweep: Sweep, layout: Layout, fmt: str) -> str:
    """mean ± std of the metric per cell over its runs (seeds), with n and mean minutes per row. The
    best is marked per column within each block of rows sharing the first row key's value (per
    model, the best activation, as the paper marks it)."""
    found = cells(sweep, layout)
    if not found:
        raise NotFound(f"{sweep.name}: no finished trial has a {sweep.metric!r} metric yet")
    scale = 100 if layout.percent else 1
    digits = ".2f" if layout.percent else ".4g"

    def value(c: Cell) -> str:
        text = f"{scale * c.group.mean:{digits}} ± {scale * c.group.std:{'.2f' if layout.percent else '.2g'}}"
        return f"{text} ({layout.best_of}={c.chosen})" if layout.best_of else text

    def minutes(cs: list[Cell]) -> str:
        seconds = [r.seconds for c in cs for r in c.group.runs if r.seconds is not None]
        return f"{statistics.fmean(seconds) / 60:.2f}" if seconds else "-"

    if fmt == "csv":
        out = io.StringIO()
        writer = csv.writer(out)
        extra = [k for k in (layout.columns, layout.best_of) if k]
        writer.writerow([*layout.rows, *extra, f"{sweep.metric}_mean", f"{sweep.metric}_std", "n", "minutes"])
        for c in sorted(found, key=lambda c: (c.row, c.column)):
            chosen = [c.column] * bool(layout.columns) + [c.chosen] * bool(layout.best_of)
            writer.writerow([*c.row, *chosen, c.group.mean, c.group.std, len(c.group.values), minutes([c])])
        return out.getvalue()

    pick = max if sweep.mode == "max" else min
    best: dict[tuple, float] = {}
    for c in found:
        block = (_block(layout, c.row), c.column)
        best[block] = pick(best.get(block, c.group.mean), c.group.mean)
    columns = sorted({c.column for c in found})
    by_row: dict[tuple, dict[str, Cell]] = {}
    for c in found:
        by_row.setdefault(c.row, {})[c.column] = c
    header = [*layout.rows, *([f"{layout.columns}={v}" for v in columns] if layout.columns else [sweep.metric]), "n", "minutes"]
    body = []
    for row in sorted(by_row):
        row_cells = by_row[row]
        counts = sorted({len(c.group.values) for c in row_cells.values()})
        texts = []
        for column in columns:
            c = row_cells.get(column)
            texts.append(("-", False) if c is None else (value(c), c.group.mean == best[(_block(layout, row), column)]))
        body.append([*row, *texts, "/".join(map(str, counts)), minutes(list(row_cells.values()))])

    if fmt == "latex":
        lines = [r"\begin{tabular}{" + "l" * len(layout.rows) + "r" * (len(columns) + 2) + "}", r"\toprule",
                 " & ".join(_tex(h) for h in header) + r" \\", r"\midrule"]
        for cells_ in body:
            rendered = [_tex(x) if isinstance(x, str) else (r"\textbf{" + _tex(x[0]) + "}" if x[1] else _tex(x[0])) for x in cells_]
            lines.append(" & ".join(rendered).replace("±", r"$\pm$") + r" \\")
        return "\n".join([*lines, r"\bottomrule", r"\end{tabular}"]) + "\n"
    scope = f" per {layout.rows[0]}" if len(layout.rows) > 1 else ""
    unit = " x 100" if layout.percent else ""
    lines = [f"{sweep.name}: {sweep.metric}{unit} ({sweep.mode}), mean ± std over runs; best{scope} in bold", "",
             "| " + " | ".join(header) + " |", "|" + "---|" * len(layout.rows) + "---:|" * (len(columns) + 2)]
    for cells_ in body:
        rendered = [x if isinstance(x, str) else (f"**{x[0]}**" if x[1] else x[0]) for x in cells_]
        lines.append("| " + " | ".join(rendered) + " |")
    return "\n".join(lines) + "\n"


def _tex(text: str) -> str:
    return str(text).replace("_", r"\_").replace("%", r"\%")


def plots(sweep: Sweep, layout: Layout, directory: Path) -> list[Path]:
    """learning_curves.png: the curve metric per report, mean ± std over each cell's runs, one panel
    per (first row key's value, column), one line per the other row values; and each cell's best
    run's plots (learned rationals, fits), copied from its MLflow artifacts."""
    from matplotlib.figure import Figure  # noqa: PLC0415

    directory.mkdir(parents=True, exist_ok=True)
    metric = layout.curve or sweep.metric
    found = cells(sweep, layout)
    panels = sorted({(_block(layout, c.row), c.column) for c in found})
    ncols = len({column for _, column in panels})
    nrows = math.ceil(len(panels) / ncols)
    figure = Figure(figsize=(5 * ncols, 3.4 * nrows), dpi=120)
    axes = figure.subplots(nrows, ncols, squeeze=False).flat
    written = []
    for ax, panel in zip(axes, panels):
        for c in sorted((c for c in found if (_block(layout, c.row), c.column) == panel), key=lambda c: c.row):
            curves = [[m.value for m in sorted(sweep.client.get_metric_history(r.run_id, metric), key=lambda m: m.step)] for r in c.group.runs]
            length = min(len(curve) for curve in curves)
            if length:
                steps = range(1, length + 1)
                mean = [statistics.fmean(curve[i] for curve in curves) for i in range(length)]
                std = [statistics.pstdev([curve[i] for curve in curves]) for i in range(length)]
                label = ", ".join(c.row[len(panel[0]):]) or "all"
                ax.plot(steps, mean, "o-", ms=2, label=label)
                ax.fill_between(steps, [m - s for m, s in zip(mean, std)], [m + s for m, s in zip(mean, std)], alpha=0.2)
            written += _copy_artifacts(sweep.client, c.group.runs[0].run_id, directory / _slug((*c.row, c.column)))
        title = ", ".join([*panel[0], *([f"{layout.columns}={panel[1]}"] if layout.columns else [])])
        ax.set_title(f"{sweep.name}: {title}" if title else sweep.name, fontsize=9)
        ax.set_xlabel("report (epoch / step block)")
        ax.set_ylabel(metric)
        ax.legend(fontsize=7, frameon=False)
    figure.tight_layout()
    path = directory / "learning_curves.png"
    figure.savefig(path)
    return [path, *written]


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


def log_report(sweep: Sweep, files: list[Path], root: Path) -> None:
    """Attach the report to the newest sweep run, so the MLflow UI shows it beside the runs."""
    if sweep.sweep_run_ids:
        for path in files:
            parent = path.parent.relative_to(root)
            sweep.client.log_artifact(sweep.sweep_run_ids[0], str(path), artifact_path=str(Path("report") / parent))

