"""A report's table in Markdown, LaTeX or CSV: each cell mean ± std (finished, diverged, failed and
missing seeds counted), marked, with what the trials asked for and how they ran."""

from __future__ import annotations

import csv
import io
import math
import statistics
from collections.abc import Callable


from ..errors import NotFound
from ..sweep.results import Sweep, TrialRun
from .layout import OUTCOMES, Cell, Layout, cells, marks


# figures of report.also in minutes: a layout showing one leaves out the minutes column (trial wall time)
TIME_FIGURES = ("elapsed_min",)


def _format(percent: bool, decimals: int | None) -> tuple[Callable[[float], str], Callable[[float], str]]:
    """(mean format, std format): percent as 12.34, `decimals` places if set, else 4 significant digits."""
    if percent:
        return lambda x: f"{100 * x:.2f}", lambda x: f"{100 * x:.2f}"
    if decimals is not None:
        return lambda x: f"{x:.{decimals}f}", lambda x: f"{x:.{decimals}f}"
    return lambda x: f"{x:.4g}", lambda x: f"{x:.2g}"


def figure_text(c: Cell, layout: Layout, metric: str) -> str:
    """A report.also figure of a cell: "12823.84 ± 1164.38", "481" (one run), "-" (none)."""
    mean, std = _format(False, layout.also[metric])
    values = c.group.figure(metric)
    if not values:
        return "-"
    average = statistics.fmean(values)
    return f"{mean(average)} ± {std(c.group.spread(values))}" if len(values) > 1 else mean(average)


def _shows_minutes(layout: Layout) -> bool:
    return not any(m in TIME_FIGURES for m in layout.also)


def cell_text(c: Cell, layout: Layout) -> str:
    """"90.62 ± 0.21 (5)", "88.10 ± 0.40 (4, 1 diverged)", "57.26 (1)", "fails to train (0, 5 diverged)",
    "- (0, 5 missing)"."""
    mean, std = _format(layout.percent, layout.decimals)
    g = c.group
    body = f"{mean(g.mean)} ± {std(g.std)}" if len(g.values) > 1 else mean(g.mean) if g.values else \
        "fails to train" if g.count("diverged") else "-"
    text = f"{body}{CAVEAT_MARK if g.caveats else ''} ({g.counts()})"
    return f"{text} {layout.best_of}={c.chosen}" if layout.best_of else text


CAVEAT_MARK = " †"


def caveat_notes(found: list[Cell]) -> list[str]:
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


def failed_as_note(layout: Layout, failed_as: float | None) -> str:
    if failed_as is None:
        return "diverged, failed and missing seeds are counted, not averaged"
    if math.isnan(failed_as):
        return "with --failed-as nan: a diverged seed counts at its last value (the best before divergence), failed and missing ones are dropped"
    return (f"with --failed-as {failed_as:g}: a diverged seed counts at its last value (the best before divergence), "
            f"a failed or missing seed as {_format(layout.percent, layout.decimals)[0](failed_as)}")


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
        figures = [name for metric in layout.also for name in (f"{metric}_mean", f"{metric}_std")]
        writer.writerow([*layout.rows, *extra, f"{sweep.metric}_mean", f"{sweep.metric}_std", *figures, "n", *OUTCOMES, "mark",
                         "minutes", "caveat"])
        for c in found:
            g = c.group
            chosen = [c.column] * bool(layout.columns) + [c.chosen] * bool(layout.best_of)
            stats = [g.mean, g.std] if g.values else ["", ""]
            for metric in layout.also:
                values = g.figure(metric)
                stats += [statistics.fmean(values), g.spread(values)] if values else ["", ""]
            writer.writerow([*c.row, *chosen, *stats, len(g.finished), *(g.count(o) for o in OUTCOMES),
                             marked.get((c.row, c.column), ""), _minutes([c]), "; ".join(g.caveats)])
        return out.getvalue()

    columns = list(dict.fromkeys(c.column for c in found))
    by_row: dict[tuple, dict[str, Cell]] = {}
    for c in found:
        by_row.setdefault(c.row, {})[c.column] = c
    figures = [layout.figure_label(sweep.metric), *(layout.figure_label(m) for m in layout.also)]
    header = list(layout.rows)
    for column in columns:  # per column the metric, then each figure of report.also
        named = [layout.column_label(column)] if layout.columns else []
        header += [" ".join([*named, f]) for f in (figures if layout.also or not named else [])] or named
    minutes = _shows_minutes(layout)
    header += ["minutes"] * minutes
    body = []
    for row, row_cells in by_row.items():
        texts = []
        for column in columns:
            c = row_cells.get(column)
            texts.append(("-", "") if c is None else (cell_text(c, layout), marked.get((row, column), "")))
            texts += ["-" if c is None else figure_text(c, layout, m) for m in layout.also]
        body.append([*layout.row_labels(row), *texts, *[_minutes(list(row_cells.values()))] * minutes])

    if fmt == "latex":
        style = {"best": r"\textbf{%s}", "second": r"\underline{%s}", "": "%s"}
        lines = [r"\begin{tabular}{" + "l" * len(layout.rows) + "r" * (len(header) - len(layout.rows)) + "}", r"\toprule",
                 " & ".join(_tex(h) for h in header) + r" \\", r"\midrule"]
        for cells_ in body:
            rendered = [_tex(x) if isinstance(x, str) else style[x[1]] % _tex(x[0]) for x in cells_]
            lines.append(" & ".join(rendered).replace("±", r"$\pm$") + r" \\")
        notes = [_tex(note) + r" \\" for note in caveat_notes(found)]
        return "\n".join([*lines, r"\bottomrule", r"\end{tabular}", *notes]) + "\n"
    style = {"best": "**%s**", "second": "*%s*", "": "%s"}
    scope = " per row" if layout.best == "per_row" else f" per {layout.rows[0]}" if len(layout.rows) > 1 else ""
    unit = " x 100" if layout.percent else ""
    std = " (population)" if layout.std == "population" else ""
    lines = [f"{sweep.name}: {sweep.metric}{unit} ({sweep.mode}), mean ± std{std} over seeds (finished, then diverged, "
             f"failed, missing); best{scope} in bold, second best in italics",
             f"{failed_as_note(layout, failed_as)}" + (f"; {_minutes_note(sweep)}" if minutes else "") + _superseded_note(sweep), "",
             "| " + " | ".join(header) + " |", "|" + "---|" * len(layout.rows) + "---:|" * (len(header) - len(layout.rows))]
    for cells_ in body:
        rendered = [x if isinstance(x, str) else style[x[1]] % x[0] for x in cells_]
        lines.append("| " + " | ".join(rendered) + " |")
    notes = caveat_notes(found)
    return "\n".join([*lines, *([""] + notes if notes else [])]) + "\n"


def _tex(text: str) -> str:
    return str(text).replace("_", r"\_").replace("%", r"\%")
