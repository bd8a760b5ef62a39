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
from .layout import Layout, block, cells, check_layout
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
            histories = [sorted(sweep.client.get_metric_history(r.run_id, metric), key=lambda m: m.step) for r in finished]
            curves = [[m.value for m in history] for history in histories]
            length = min(len(curve) for curve in curves)
            if length:
                steps = [m.step for m in histories[0][:length]]  # the experiment's steps or epochs (names.STEP_KEYS)
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
        ax.set_xlabel(next((k for k in names.STEP_KEYS if k in found[0].group.finished[0].metrics), "report"))
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
    sweep = results.load_sweep(uri, name, include_smoke=smoke, all_runs=False)
    layout = Layout.of(sweep)
    check_layout(sweep, layout)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "report.md").write_text(table(sweep, layout, "md", None))
        log_report(sweep, [root / "report.md", *plots(sweep, layout, root)], root, run_id)
