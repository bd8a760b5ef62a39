"""`ratsweep report NAME --paper`: each cell beside the paper's published numbers (every column the
paper prints: the metric, and the RL tables' return and time, Table 5's time) and their difference
in standard errors."""

from __future__ import annotations

import csv
import dataclasses
import io
import math
import statistics
from typing import Any


from ..errors import UserError
from ..sweep.results import Sweep
from . import published as paper_tables
from .layout import Layout, cells
from .table import caveat_notes, cell_text, failed_as_note, figure_text


def difference(ours: list[float], scale: float, published: dict[str, Any], runs: int, paper_std: float) -> tuple[str, str]:
    """(ours - paper, z) with z = difference / its standard error, sqrt(s^2/n + s_paper^2/n_paper)
    (`paper_std` turns the paper's std into a sample one; where one side is a single run, the other
    side's std stands in for its spread); blank without values of ours."""
    if not ours:
        return "", ""
    diff = scale * statistics.fmean(ours) - published["mean"]
    n, s = len(ours), scale * statistics.stdev(ours) if len(ours) > 1 else math.nan  # sample std, whatever the layout shows
    p_std = published.get("std", math.nan) * paper_std
    s = p_std if math.isnan(s) else s
    p_std = s if math.isnan(p_std) else p_std
    se = math.sqrt(s**2 / n + p_std**2 / runs) if not math.isnan(s) else math.nan
    return f"{diff:+.2f}", f"{diff / se:+.1f}" if se > 0 else "n/a"


def published_text(entry: dict[str, Any], runs: int) -> str:
    return f"{entry['mean']:.2f}" + (f" ± {entry['std']:.2f}" if "std" in entry else "") + f" ({runs})"


def paper_comparison(sweep: Sweep, layout: Layout, fmt: str, table_name: str | None, failed_as: float | None = None) -> str:
    """Each cell beside the paper's published number (paper_tables.yaml), and for a table with more
    columns (its figures: the RL tables' return and time) a line per column, each with the difference
    and z. Cells the paper has no number for, and published cells this sweep lacks, are named."""
    name = table_name or layout.paper
    if not name:
        raise UserError(f"--paper: {sweep.name}'s search space names no paper table (report.paper); "
                        f"give one: --paper {' | '.join(paper_tables.tables())}")
    try:
        published = paper_tables.get(name)
    except KeyError as e:
        raise UserError(f"--paper: {e.args[0]}") from None
    if published.metric != sweep.metric:
        raise UserError(f"--paper: {name} publishes {published.metric}, but {sweep.name}'s metric is {sweep.metric}")
    paper_std = {"sample": 1.0, "none": math.nan}.get(published.std, math.sqrt(published.runs / max(published.runs - 1, 1)))
    keys = [*layout.rows, *([layout.columns] if layout.columns else [])]
    figured = dataclasses.replace(layout, also={m: layout.also.get(m, 2) for m in published.figures})  # every published column
    found = cells(sweep, layout, failed_as)
    used: set[int] = set()
    rows = []  # (cell, figure label, ours, paper, difference, z)
    for c in found:
        match = published.find(dict(zip(keys, (*c.row, c.column))))
        entry = None if match is None else published.cells[match]
        used.add(match)
        ours = cell_text(c, layout)
        label = layout.figure_label(sweep.metric)
        if entry is None:
            rows.append((c, label, ours, "no paper number", "", ""))
            continue
        if entry.get("failed"):
            rows.append((c, label, ours, "fails to train", "", ""))
            continue
        rows.append((c, label, ours, published_text(entry, published.runs),
                     *difference(c.group.values, published.scale, entry, published.runs, paper_std)))
        for metric, scale in published.figures.items():
            if metric in entry:
                rows.append((c, layout.figure_label(metric), figure_text(c, figured, metric), published_text(entry[metric], published.runs),
                             *difference(c.group.figure(metric), scale, entry[metric], published.runs, paper_std)))
    unmatched = [e for i, e in enumerate(published.cells) if i not in used]
    by_figure = bool(published.figures)  # a column saying which of the paper's columns a line compares

    if fmt == "csv":
        out = io.StringIO()
        writer = csv.writer(out)
        writer.writerow([*keys, *["figure"] * by_figure, "ours", "paper", "difference", "z"])
        for c, label, ours, text, diff, z in rows:
            writer.writerow([*c.row, *([c.column] if layout.columns else []), *[label] * by_figure, ours, text, diff, z])
        return out.getvalue()
    header = [*keys, *["figure"] * by_figure, f"ours ({sweep.metric}{' x 100' if layout.percent else ''})" if not by_figure else "ours",
              "paper", "ours - paper", "z"]
    lines = [f"{sweep.name} against the paper's {published.title}",
             f"paper: {published.note}; z = (ours - paper) / standard error of the difference",
             f"the authors' rule for failed runs here: {published.rule}",
             f"{failed_as_note(layout, failed_as)}", "",
             "| " + " | ".join(header) + " |", "|" + "---|" * (len(keys) + by_figure) + "---:|" * 4]
    previous = None
    for c, label, ours, text, diff, z in rows:
        shown = [*layout.row_labels(c.row), *([layout.column_label(c.column)] if layout.columns else [])]
        if c is previous:  # the cell's further columns: its keys once, on its first line
            shown = [""] * len(shown)
        previous = c
        lines.append("| " + " | ".join([*shown, *[label] * by_figure, ours, text, diff, z]) + " |")
    if unmatched:
        lines += ["", f"published but not in this sweep's table ({len(unmatched)}): "
                  + "; ".join(", ".join(f"{k}={v}" for k, v in published.where(e).items()) for e in unmatched)]
    notes = caveat_notes(found)
    return "\n".join([*lines, *([""] + notes if notes else [])]) + "\n"
