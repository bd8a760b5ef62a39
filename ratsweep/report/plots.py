"""A report's plots: learning curves per cell, each cell's best run's own plots, and those side by
side; attached to the sweep's MLflow run under report/."""

from __future__ import annotations

import math
import os
import shutil
import statistics
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING


if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient

from ..sweep import names, results
from ..sweep.results import Sweep
from . import published as paper_tables
from .layout import Cell, Layout, block, cells, check_layout
from .table import table


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
    panels = list(dict.fromkeys((block(layout, c.row), c.column) for c in found))
    ncols = len({column for _, column in panels})
    nrows = math.ceil(len(panels) / ncols)
    figure = Figure(figsize=(5 * ncols, 3.4 * nrows), dpi=120)
    axes = figure.subplots(nrows, ncols, squeeze=False).flat
    written, copied = [], {}  # copied: each cell's label and its best run's plots
    for ax, panel in zip(axes, panels):
        for c in (c for c in found if (block(layout, c.row), c.column) == panel):
            finished = c.group.finished
            at: dict[int, list[float]] = {}  # the experiment's step or epoch (names.STEP_KEYS): the runs' values there
            for r in finished:  # a run may lack a step (a non-finite evaluation is not logged): each step averages what it has
                for m in sweep.client.get_metric_history(r.run_id, metric):
                    at.setdefault(m.step, []).append(m.value)
            if at:
                steps = sorted(at)
                mean = [statistics.fmean(at[step]) for step in steps]
                std = [statistics.pstdev(at[step]) for step in steps]
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
        ax.set_xlabel(next((k for k in names.STEP_KEYS if k in found[0].group.finished[0].metrics), "report"))
        ax.ticklabel_format(axis="x", style="sci", scilimits=(-3, 4), useMathText=True)  # 300k updates: x 10^5
        ax.set_ylabel(metric)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7, frameon=False)
    figure.tight_layout()
    path = directory / "learning_curves.png"
    figure.savefig(path)
    return [path, *bars(sweep, layout, found, directory), *_side_by_side(copied, directory), *written]


def bars(sweep: Sweep, layout: Layout, found: list[Cell], directory: Path) -> list[Path]:
    """table_bars.png: each cell's mean ± std (its std as the table shows it) as a bar, one panel per
    block of rows (per model or task), a bar group per row with a bar per column; the paper's number
    (± its std) marked on each bar its table publishes (report.paper), in the paper's units."""
    from matplotlib.figure import Figure  # noqa: PLC0415

    published = paper_tables.get(layout.paper) if layout.paper else None
    factor = published.scale if published else 100 if layout.percent else 1
    keys = [*layout.rows, *([layout.columns] if layout.columns else [])]
    panels = list(dict.fromkeys(block(layout, c.row) for c in found))
    columns = list(dict.fromkeys(c.column for c in found))
    width = 0.8 / len(columns)
    figure = Figure(figsize=(max(5.0, 1.1 * len(found) / len(panels) + 2), 3.4 * len(panels)), dpi=120)
    for ax, panel in zip(figure.subplots(len(panels), 1, squeeze=False).flat, panels):
        in_panel = [c for c in found if block(layout, c.row) == panel]
        rows = list(dict.fromkeys(c.row for c in in_panel))
        marked, lows = False, []
        for j, column in enumerate(columns):
            for i, row in enumerate(rows):
                c = next((c for c in in_panel if c.row == row and c.column == column), None)
                if c is None or not c.group.values:
                    continue
                x = i + (j - (len(columns) - 1) / 2) * width
                ax.bar(x, factor * c.group.mean, width * 0.9, yerr=factor * c.group.std, color=f"C{j}", capsize=3,
                       label=layout.column_label(column) if layout.columns and i == 0 else None)
                lows.append(factor * (c.group.mean - c.group.std))
                entry = None if published is None else published.find(dict(zip(keys, (*c.row, c.column))))
                if entry is not None and "mean" in published.cells[entry]:
                    cell = published.cells[entry]
                    ax.errorbar(x, cell["mean"], yerr=cell.get("std", 0), fmt="_", color="black", ms=14, mew=2, capsize=2,
                                label="paper" if not marked else None)
                    marked = True
                    lows.append(cell["mean"] - cell.get("std", 0))
        ax.set_xticks(range(len(rows)), [" ".join(x for x in layout.row_labels(r)[len(panel):] if x) or "all" for r in rows],
                      fontsize=8)
        low = min(lows, default=0)
        ax.set_ylim(bottom=low if low <= 0 else 0.9 * low)  # the differences, not the bars' common base
        title = " ".join(x for x in layout.row_labels(panel) if x)
        ax.set_title(f"{sweep.name}: {title}" if title else sweep.name, fontsize=9)
        ax.set_ylabel(f"{layout.figure_label(sweep.metric)}{' (%)' if factor == 100 else ''}")
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7, frameon=False)
    figure.tight_layout()
    path = directory / "table_bars.png"
    figure.savefig(path)
    return [path]


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
    sweep = results.load_sweep(uri, name, include_smoke=smoke, all_runs=False)
    layout = Layout.of(sweep)
    check_layout(sweep, layout)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "report.md").write_text(table(sweep, layout, "md", None))
        log_report(sweep, [root / "report.md", *plots(sweep, layout, root)], root, run_id)
