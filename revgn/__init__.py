"""revgn: exact Gauss-Newton in reversible networks, lazy training and generalisation.

Modules (one idea each): `data` (verified dataset loaders), `models` (RevMLP and friends), `gn` (the exact,
tractable GN step and its reference routes), `losses` (losses and their GN errors), `train` (the one training
loop and its optimisers), `book` (chapter setup), `utils` (seeding, atomic writes, run metadata).
"""
from . import book, data, utils

__version__ = "0.1.0"
