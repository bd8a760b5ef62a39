"""Reading sweeps back from MLflow: best configs and paper-style tables with plots.

Everything here reads the tracking store (any MLflow URI), never Ray's local files, so it works
from any machine that reaches the store, long after the cluster is gone.
"""

from __future__ import annotations

import csv
import io
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
from .tracking import TAG_KIND, TAG_PARENT, client


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
    sweep_run_ids: list[str]

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
    return Sweep(name, tags.get("ratsweep.experiment", "?"), tags["ratsweep.metric"], tags["ratsweep.mode"], runs,
                 mlflow_client, [r.info.run_id for r in sweeps])


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


def table(sweep: Sweep, group_by: list[str], fmt: str) -> str:
    """mean ± std of the metric per group over its runs (seeds), with n and mean minutes. The best
    is marked per block of rows sharing all group-by values but the last (per target, the best
    activation), as the paper marks the best activation per model."""
    rows = groups(sweep, group_by)
    if not rows:
        raise NotFound(f"{sweep.name}: no finished trial has a {sweep.metric!r} metric yet")
    pick = max if sweep.mode == "max" else min
    block_best = {}
    for g in rows:
        block_best[g.key[:-1]] = pick(block_best.get(g.key[:-1], g.mean), g.mean)

    def is_best(g: Group) -> bool:
        return g.mean == block_best[g.key[:-1]]

    header = [*group_by, sweep.metric, "n", "minutes"]
    body = []
    for g in rows:
        seconds = [r.seconds for r in g.runs if r.seconds is not None]
        minutes = f"{statistics.fmean(seconds) / 60:.2f}" if seconds else "-"
        body.append((g, [*g.key, f"{g.mean:.4g} ± {g.std:.2g}", str(len(g.values)), minutes]))
    if fmt == "csv":
        out = io.StringIO()
        writer = csv.writer(out)
        writer.writerow([*group_by, f"{sweep.metric}_mean", f"{sweep.metric}_std", "n", "minutes"])
        for g, cells in body:
            writer.writerow([*g.key, g.mean, g.std, len(g.values), cells[-1]])
        return out.getvalue()
    if fmt == "latex":
        lines = [r"\begin{tabular}{" + "l" * len(group_by) + "rrr}", r"\toprule", " & ".join(_tex(h) for h in header) + r" \\", r"\midrule"]
        for g, cells in body:
            cells = [_tex(c) for c in cells]
            if is_best(g):
                cells[len(group_by)] = r"\textbf{" + cells[len(group_by)] + "}"
            lines.append(" & ".join(cells).replace("±", r"$\pm$") + r" \\")
        return "\n".join([*lines, r"\bottomrule", r"\end{tabular}"]) + "\n"
    scope = f" per {', '.join(group_by[:-1])}" if len(group_by) > 1 else ""
    lines = [f"{sweep.name}: {sweep.metric} ({sweep.mode}), mean ± std over runs; best{scope} in bold", "",
             "| " + " | ".join(header) + " |", "|" + "---|" * len(group_by) + "---:|---:|---:|"]
    for g, cells in body:
        if is_best(g):
            cells[len(group_by)] = f"**{cells[len(group_by)]}**"
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _tex(text: str) -> str:
    return str(text).replace("_", r"\_").replace("%", r"\%")


def plots(sweep: Sweep, group_by: list[str], directory: Path) -> list[Path]:
    """learning_curves.png (metric per report, mean per group) and each group's best run's
    learned-rational and fit plots, copied from its MLflow artifacts."""
    import matplotlib  # noqa: PLC0415

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    directory.mkdir(parents=True, exist_ok=True)
    written = []
    fig, ax = plt.subplots(figsize=(6.5, 4), dpi=120)
    for g in groups(sweep, group_by):
        curves = [[m.value for m in sorted(sweep.client.get_metric_history(r.run_id, sweep.metric), key=lambda m: m.step)] for r in g.runs]
        length = min(len(c) for c in curves)
        if length:
            mean = [statistics.fmean(c[i] for c in curves) for i in range(length)]
            ax.plot(range(1, length + 1), mean, label=", ".join(g.key) or "all")
        written += _copy_artifacts(sweep.client, g.runs[0].run_id, directory / _slug(g.key))
    ax.set_xlabel("report (epoch / step block)")
    ax.set_ylabel(sweep.metric)
    ax.set_title(f"{sweep.name}: {sweep.metric} (mean over runs)")
    ax.legend(fontsize=7, frameon=False)
    fig.tight_layout()
    path = directory / "learning_curves.png"
    fig.savefig(path)
    plt.close(fig)
    return [path, *written]


def _slug(key: tuple) -> str:
    text = "_".join(k.strip("()").replace(", ", "x") for k in key) or "all"
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

