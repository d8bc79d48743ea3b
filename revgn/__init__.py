"""revgn: exact Gauss-Newton in reversible networks, lazy training and generalisation.

Modules (one idea each): `data` (verified dataset loaders), `models` (RevMLP and friends), `losses` (losses and
their GN errors), `gn` (the exact, tractable GN step), `gn_reference` (explicit and matrix-free GN),
`linearize` (linearisation, centering, output scaling), `kernels` (NTK, CKA, kappa), `damping` (GN as spectral
filters), `train` (the one training loop and its optimisers), `laziness` (how far a RevMLP moved from init),
`runs` (atomically recorded results), `lazy`, `itlin`, `gn_experiments` and `regime` (chapter experiments),
`plots`, `verify`, `bench`, `functional`, `book`, `utils`.
"""
from . import book, data, models, utils

__version__ = "0.1.0"
