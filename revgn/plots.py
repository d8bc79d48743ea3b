"""Figure helpers shared by chapters (only what more than one figure needs)."""
from __future__ import annotations

import numpy as np
from matplotlib.patches import Rectangle


def heatmap(ax, values, rows, cols, *, fmt="{:+.3f}", cmap="RdBu", center: float | None = 0.0, title="",
            xlabel="", ylabel="", missing="n/a"):
    """values[i][j] at row rows[i], column cols[j], written in each cell; None or NaN cells are hatched.

    center: the value at the colour map's midpoint (symmetric limits around it), or None for min..max.
    """
    v = np.array([[np.nan if x is None else x for x in row] for row in values], dtype=float)
    finite = v[np.isfinite(v)]
    if center is None or not finite.size:
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
                ax.text(j, i, missing, ha="center", va="center", fontsize=8)
    ax.set(xticks=range(len(cols)), xticklabels=[str(c) for c in cols], yticks=range(len(rows)),
           yticklabels=[str(r) for r in rows], title=title, xlabel=xlabel, ylabel=ylabel)
    ax.grid(False)
    return im
