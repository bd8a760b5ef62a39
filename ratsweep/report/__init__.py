"""A sweep read back from MLflow (ratsweep.sweep.results), laid out as the paper does: cells and their
marks (layout), the table in Markdown, LaTeX or CSV (table), beside the paper's published numbers
(paper, from published), and its plots, attached to the sweep's run (plots)."""

from .layout import Layout, cells, check_layout, default_group_by, groups
from .paper import paper_comparison
from .plots import attach_report, log_report, plots
from .table import most_at_once, table

__all__ = ["Layout", "attach_report", "cells", "check_layout", "default_group_by", "groups", "log_report", "most_at_once",
           "paper_comparison", "plots", "table"]
