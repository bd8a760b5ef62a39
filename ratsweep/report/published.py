"""The paper's published tables (paper_tables.yaml), for `ratsweep report NAME --paper`."""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import yaml

from .. import registry

TABLES_FILE = Path(__file__).with_name("paper_tables.yaml")
VALUE_KEYS = ("mean", "std", "failed")  # with the table's figures, an entry's other keys identify its cell


@dataclass(frozen=True)
class PaperTable:
    name: str
    title: str
    experiment: str
    metric: str
    scale: float  # published number = scale x the experiment's metric
    runs: int  # runs behind each published cell
    std: str  # sample | population | none
    note: str
    rule: str  # how the authors' table script counted diverged, failed and missing runs, and the flag that does it here
    cells: tuple[dict[str, Any], ...]
    figures: dict[str, float] = field(default_factory=dict)  # more published columns: {our metric: scale}

    def where(self, entry: dict[str, Any]) -> dict[str, Any]:
        """The config values that identify an entry's cell."""
        return {k: v for k, v in entry.items() if k not in VALUE_KEYS and k not in self.figures}

    def find(self, values: dict[str, str]) -> int | None:
        """The index of the entry whose identifying values all equal `values` (as a report shows them), if any."""
        from .layout import show  # noqa: PLC0415  (layout imports the sweep's results; this module stays light)

        return next((i for i, e in enumerate(self.cells) if all(values.get(k) == show(v) for k, v in self.where(e).items())), None)


@cache
def tables() -> dict[str, PaperTable]:
    raw = yaml.safe_load(TABLES_FILE.read_text())
    return {name: PaperTable(name=name, **{**t, "cells": tuple(t["cells"])}) for name, t in raw.items()}


def get(name: str) -> PaperTable:
    """The table, or KeyError naming the known ones (with a did-you-mean)."""
    known = tables()
    if name not in known:
        raise registry.unknown("paper table", name, known)
    return known[name]
