"""Chapter-specific experiments, built on the library core.

- `lazy_training`: Chizat, Oyallon & Bach (2019), chapter "Lazy training".
- `iterative_linearisation`: Goldwaser & Ge (2023), chapter "Iterative linearisation".
- `study`: experiments as data: a `Study` of arms (a run at paired seeds and a rate policy: the one grid
  and cap per optimiser, chosen per seed or on the first, fixed, or tied to other arms) and the one walk
  that turns a study and its records into an `ArmResult` per arm; a study derives its sweep grid and store.
- `gn_protocol`: what the exact-GN chapters share: bracketed rate tuning, selection on validation, per-step
  and per-epoch measurements read from records, paired comparisons across seeds.
- `gn_experiments`: chapter "Exact Gauss-Newton on real data" (full batch and mini-batch, GN against SGD and Adam).
- `gn_lazy_regime`: chapter "Why: does exact Gauss-Newton keep the network lazy?" (distances from init at
  the paper's rates).
- `regime_map`: the grid of settings where exact GN is compared with a tuned Adam (its book and paper
  grids are sweeps: `python -m revgn.sweep revgn.experiments.regime_map:book`); `regime_verdicts`: what
  its records say, per regime (the verdict as a value, the tables chapter 07 prints).
- `ablations`: chapter "Ablations", each variant an arm of one study.
- `right_inverse`: chapter "Which right inverse": Moore-Penrose steps against the layer-wise one.
- `paper_mnist`: the paper's own MNIST mini-batch experiment at its scale, and chapter "The paper's own MNIST
  experiment"'s reading of it (the paper's claims as paired verdicts at two endpoints).
"""
