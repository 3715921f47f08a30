"""What every figure shares: method and family colours, column access, and the Agg canvas.

Why a module of its own: a method keeps one colour and one label in every figure, a figure is drawn on
a ``matplotlib.figure.Figure`` with the Agg canvas directly (no pyplot: no global state, no display
needed, safe in any process), and its PNG is byte-stable across rebuilds. Those rules are defined once
here and used by every drawing in :mod:`analysis.figure_draw`; :mod:`analysis.figures` re-exports the
public ones (``method_color``, ``figure_png``, ...).
"""

from __future__ import annotations

import io
import zlib
from typing import Sequence

import numpy as np
import pyarrow as pa
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, NullFormatter

from zoo_study.methods import method_names, method_sort_key  # order: the registry

__all__ = ["FAMILY_COLORS", "PALETTE", "method_color", "family_color", "column", "floats", "rows", "methods_in",
           "new_figure", "figure_png", "size_axis", "grid"]

# ------------------------------------------------------------------------------------ names, colours
FAMILY_COLORS = {"cnn": "#1f77b4", "transformer": "#ff7f0e", "mlp": "#2ca02c"}
PALETTE = (
    "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd",
    "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf",
)  # fmt: skip


def method_color(method: str) -> str:
    """A colour per method that is the same in every figure (registry order; unknown names by hash)."""
    order, _ = method_sort_key(method)
    if method in method_names():
        return PALETTE[order % len(PALETTE)]
    return PALETTE[zlib.crc32(method.encode()) % len(PALETTE)]


def family_color(family: str) -> str:
    return FAMILY_COLORS.get(family, "#7f7f7f")


# ------------------------------------------------------------------------------------------ helpers
def column(table: pa.Table, name: str) -> list:
    return table.column(name).to_pylist()


def floats(table: pa.Table, name: str) -> np.ndarray:
    """A numeric column as float64, with NULL as NaN."""
    return np.array([np.nan if v is None else float(v) for v in column(table, name)], dtype=float)


def rows(table: pa.Table) -> list[dict]:
    return table.to_pylist()


def methods_in(table: pa.Table) -> list[str]:
    return sorted(set(column(table, "method")), key=method_sort_key)


def new_figure(width: float = 6.4, height: float = 4.4) -> Figure:
    fig = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def figure_png(fig: Figure) -> bytes:
    """PNG bytes of a figure (Agg), without timestamps in the metadata so rebuilds are byte-stable."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, metadata={"Software": None})
    return buf.getvalue()


# ------------------------------------------------------------------------------------------- axes
def size_axis(ax, values: Sequence[float]) -> None:
    """Log scale for parameter counts only when they span more than 10x; plain numbers on the ticks."""
    v = [x for x in values if x is not None and x > 0]
    if v and max(v) / min(v) > 10:
        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _: f"{x:g}"))
        ax.xaxis.set_minor_formatter(NullFormatter())


def grid(n: int, ncols: int = 3) -> tuple[int, int]:
    """(rows, columns) of a panel grid for ``n`` panels, at most ``ncols`` wide."""
    ncols = max(1, min(ncols, n))
    return (n + ncols - 1) // ncols, ncols
