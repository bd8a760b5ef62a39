"""The paper's published tables (paper_tables.yaml), for `ratsweep report NAME --paper`."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import yaml

from .. import registry

TABLES_FILE = Path(__file__).with_name("paper_tables.yaml")
VALUE_KEYS = ("mean", "std", "failed")  # an entry's other keys identify its cell


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
    cells: tuple[dict[str, Any], ...]

    def where(self, entry: dict[str, Any]) -> dict[str, Any]:
        """The config values that identify an entry's cell."""
        return {k: v for k, v in entry.items() if k not in VALUE_KEYS}


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
