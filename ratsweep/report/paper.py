"""`ratsweep report NAME --paper`: each cell beside the paper's published number and their difference
in standard errors."""

from __future__ import annotations

import csv
import io
import math
import statistics


from ..errors import UserError
from ..sweep.results import Sweep
from . import published as paper_tables
from .layout import Layout, cells, show
from .table import caveat_notes, cell_text, failed_as_note


def paper_comparison(sweep: Sweep, layout: Layout, fmt: str, table_name: str | None, failed_as: float | None = None) -> str:
    """Each cell beside the paper's published number (paper_tables.yaml), with the difference and
    z = difference / its standard error, sqrt(s^2/n + s_paper^2/n_paper) (the paper's population stds
    turned into sample ones; where one side is a single run, the other side's std stands in for its
    spread). Cells the paper has no number for, and published cells this sweep lacks, are named."""
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
    scale = published.scale
    paper_std = {"sample": 1.0, "none": math.nan}.get(published.std, math.sqrt(published.runs / max(published.runs - 1, 1)))
    keys = [*layout.rows, *([layout.columns] if layout.columns else [])]
    found = cells(sweep, layout, failed_as)
    used: set[int] = set()
    rows = []
    for c in found:
        values = dict(zip(keys, (*c.row, c.column)))
        match = next((i for i, e in enumerate(published.cells)
                      if all(values.get(k) == show(v) for k, v in published.where(e).items())), None)
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
             f"{failed_as_note(layout, failed_as)}", "",
             "| " + " | ".join(header) + " |", "|" + "---|" * len(keys) + "---:|" * 4]
    for c, ours, text, diff, z, _ in rows:
        shown = [*layout.row_labels(c.row), *([layout.column_label(c.column)] if layout.columns else [])]
        lines.append("| " + " | ".join([*shown, ours, text, diff, z]) + " |")
    if unmatched:
        lines += ["", f"published but not in this sweep's table ({len(unmatched)}): "
                  + "; ".join(", ".join(f"{k}={v}" for k, v in published.where(e).items()) for e in unmatched)]
    notes = caveat_notes(found)
    return "\n".join([*lines, *([""] + notes if notes else [])]) + "\n"
