"""Figure helpers shared by chapters: the book's figure style, the heatmap and the seed band.

The book's text column is about 690 CSS pixels wide in a 1280-pixel window, and Jupyter stores figures at
100 dpi, so a figure up to `PAGE_WIDTH` inches wide is shown at its own size and its fonts at their own point
sizes; a wider one would be scaled down with its text (the browser check, tests/test_book_html.py, fails on a
figure shown below 95% of its size). `use_book_style` sets fonts no smaller than 9 pt.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence

import matplotlib as mpl
import numpy as np
from matplotlib.patches import Rectangle
from matplotlib.ticker import MaxNLocator

#: the widest figure (inches, at 100 dpi) the book shows at its own size
PAGE_WIDTH = 6.8
BOOK_STYLE = {"figure.dpi": 100, "savefig.dpi": 100, "figure.figsize": (6.0, 3.6), "axes.grid": True,
              "grid.alpha": 0.3, "axes.spines.top": False, "axes.spines.right": False, "legend.frameon": False,
              "font.size": 10, "axes.titlesize": 10, "axes.labelsize": 10,
              "xtick.labelsize": 9, "ytick.labelsize": 9, "legend.fontsize": 9, "legend.title_fontsize": 9,
              "figure.titlesize": 11, "figure.constrained_layout.use": True}


def use_book_style() -> None:
    """Fonts of at least 9 pt and constrained layout for every figure that follows."""
    mpl.rcParams.update(BOOK_STYLE)


def heatmap(ax, values, rows, cols, *, fmt="{:+.3f}", cmap="RdBu", center: float | None = 0.0, title="",
            xlabel="", ylabel="", missing="n/a", unit: str | None = None,
            limits: tuple[float, float] | None = None):
    """values[i][j] at row rows[i], column cols[j], written in each cell; None or NaN cells are hatched; a
    colorbar labelled `unit` beside it (unless unit is None).

    center: the value at the colour map's midpoint (symmetric limits around it), or None for min..max.
    limits: the colour map's (low, high), overriding `center` (so several heatmaps share one colorbar).
    """
    v = np.array([[np.nan if x is None else x for x in row] for row in values], dtype=float)
    finite = v[np.isfinite(v)]
    if limits is not None:
        lo, hi = limits
    elif center is None or not finite.size:
        lo, hi = (finite.min(), finite.max()) if finite.size else (0.0, 1.0)
    else:
        half = max(np.abs(finite - center).max(), 1e-12)
        lo, hi = center - half, center + half
    im = ax.imshow(np.ma.masked_invalid(v), cmap=cmap, vmin=lo, vmax=hi, origin="lower", aspect="auto")
    for i in range(v.shape[0]):
        for j in range(v.shape[1]):
            if np.isfinite(v[i, j]):
                r, g, b, _ = im.cmap(im.norm(v[i, j]))
                dark = 0.299 * r + 0.587 * g + 0.114 * b < 0.5  # perceived luminance: white text on dark cells
                ax.text(j, i, fmt.format(v[i, j]), ha="center", va="center", fontsize=9, color="w" if dark else "k")
            else:
                ax.add_patch(Rectangle((j - .5, i - .5), 1, 1, fill=False, hatch="//", alpha=0.4))
                ax.text(j, i, missing, ha="center", va="center", fontsize=9)
    ax.set(xticks=range(len(cols)), xticklabels=[str(c) for c in cols], yticks=range(len(rows)),
           yticklabels=[str(r) for r in rows], title=title, xlabel=xlabel, ylabel=ylabel)
    ax.grid(False)
    if unit is not None:
        ax.figure.colorbar(im, ax=ax, label=unit, fraction=0.08, pad=0.03)
    return im


def seed_band(ax, records: Sequence, metric: str | Callable[..., Sequence[float]], **line):
    """One method's curve over its seeds: the mean of `metric` against epoch, and a band from the seeds'
    minimum to their maximum, in the line's colour.

    records: one finished run per seed (each with `history.epochs`), all of the same length.
    metric: a key of `history.epochs` (plotted against its "epoch" column), or a function of one record giving
        one value per epoch from epoch 1 (a per-step quantity averaged over each epoch, say).
    line: passed to `ax.plot` (label, color, linestyle, lw, marker ...).
    Returns (x, mean, lo, hi), each of shape (epochs,).
    """
    if not records:
        raise ValueError("seed_band: no records to draw (check for an empty method before calling)")
    rows = [metric(r) if callable(metric) else r.history.epochs[metric] for r in records]
    if len({len(row) for row in rows}) > 1:
        raise ValueError(f"seed_band: {getattr(metric, '__name__', metric)} has {[len(r) for r in rows]} epochs "
                         "across the records; a band over seeds needs runs of one length")
    vals = np.array(rows, dtype=float)
    x = np.arange(1, vals.shape[1] + 1) if callable(metric) else np.asarray(records[0].history.epochs["epoch"])
    mean, lo, hi = vals.mean(0), vals.min(0), vals.max(0)
    (drawn,) = ax.plot(x, mean, **line)
    ax.fill_between(x, lo, hi, color=drawn.get_color(), alpha=0.2, lw=0)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True, steps=[1, 2, 5, 10]))  # epochs: 0, 50, 100; no 2.5
    return x, mean, lo, hi


def empty(ax, what: str = "no run recorded yet") -> None:
    """Say in the middle of an axes why it has nothing to show (a figure of records still being made)."""
    ax.text(0.5, 0.5, what, ha="center", va="center", transform=ax.transAxes)
