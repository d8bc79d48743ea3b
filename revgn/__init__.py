"""revgn: exact Gauss-Newton in reversible networks, lazy training and generalisation.

Library core (one idea per module): `data` (dataset loaders), `download` (their files, fetched and verified),
`models` (RevMLP and friends), `losses` (losses and their GN errors), `gn` (the exact, tractable GN step),
`pinv` (the features' pseudo-inverse through the Gram matrix), `block_kernel` (x_L's J J^T through a RevMLP's
blocks, and the blocks' own inverses), `curvature` (J, J^T and J J^T + mu I as operators; explicit,
matrix-free and factored GN steps), `solvers`
(Cholesky, eigh with a filter, CG; refused steps), `damping` (GN as spectral filters), `linearize`
(linearisation, centering, output scaling), `kernels` (the NTK, CKA, kappa, distances from init), `optimizers`
(the optimiser interface, SGD, Adam, iterative linearisation), `gn_optimizers` (exact GN, Moore-Penrose, LM),
`train` (the one training loop), `history`
(what a run produced; stop rules), `checkpoint` (resumable runs), `spec` (run specs: schema, validation,
content address), `runs` (running a spec), `records` (content-addressed records and their store),
`fingerprint` (the code that made a record), `recompute` (recomputed records as evidence that two fingerprints
give the same numbers), `sweep` (grids of specs on submitit), `stats` (paired intervals, the verdict rule as a
value). Around it: `experiments/` (`study`, experiments as data and their one walk; chapter-specific:
`lazy_training`, `iterative_linearisation`, `gn_protocol`, `gn_experiments`, `gn_lazy_regime`, `ablations`,
`regime_map`, `regime_verdicts`, `right_inverse`, `paper_mnist`), `book`, `findings` (the README's findings
block), `plots`, `verify`, `bench`, `functional`, `utils`.
"""
from . import book, data, models, utils

__version__ = "0.1.0"
