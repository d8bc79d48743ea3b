"""Is it Gauss-Newton, or the paper's right inverse, that generalises poorly? The steps compared, as data.

Three GN steps move a batch's logits by the error to first order (`revgn.train`): the paper's layer-wise
right inverse ("gn"), the Moore-Penrose step of the logits' Jacobian J^+ eps ("gn-mp"), and the Moore-Penrose
step of x_L's Jacobian with target eps R^T ("gn-mp", output "body": what each layer-wise block is
minimum-norm for, solved for all blocks at once). Adam and SGD are the anchors. At each setting every method
gets a rate from a bracketed grid on validation accuracy, on seed 0, reused for the other seeds
(`gn_protocol.at_chosen_rates`); all share the data split, subset, initial weights and batch order per seed.
Runs are float64, so that CG reaches its tolerance (in float32 its true residual stalls near 1e-5). `grid(setting)` is
the sweep (`python -m revgn.sweep revgn.experiments.right_inverse:mnist`), recorded under
results/right_inverse/<setting>/; `walk` reads it.
"""
from __future__ import annotations

from dataclasses import replace

from ..runs import RESULTS, DataSpec, ModelSpec, OptimSpec, RunSpec
from ..sweep import Grid, collect
from . import gn_protocol as gp

METHODS = {  # label -> the optimiser (its lr is replaced by the grid's)
    "layer-wise GN": OptimSpec("gn", 1.0),
    "Moore-Penrose GN (logits)": OptimSpec("gn-mp", 1.0, cg_rtol=1e-8),
    "Moore-Penrose GN (x_L)": OptimSpec("gn-mp", 1.0, output="body", cg_rtol=1e-8),
    "Adam": OptimSpec("adam", 1e-3),
    "SGD": OptimSpec("sgd", 0.1),
}
LRS = {"gn": (0.1, 0.3, 1.0), "gn-mp": (0.1, 0.3, 1.0), "adam": (3e-4, 1e-3, 3e-3), "sgd": (0.03, 0.1, 0.3)}
CAP = {"gn": 2.0, "gn-mp": 2.0}  # every GN step's first-order error changes sign at rate 2
SEEDS = (0, 1, 2, 3, 4)


def base(dataset: str) -> RunSpec:
    """The setting: N = 2,000 training images (500 more for validation), h = 256, n = 64, 6 epochs."""
    return RunSpec(DataSpec(dataset, n_train=2000, n_val=500, dtype="float64"), ModelSpec(depth=2, hidden=256),
                   OptimSpec("adam"), loss="ce", batch_size=64, epochs=6, evaluate=("val", "test"),
                   track_batch_change=True, measure=("ntk_distance",), kernel_inputs=8)


SETTINGS = {"mnist": base("mnist"), "cifar10-subset": base("cifar10-subset")}


def store_of(setting: str):
    if setting not in SETTINGS:
        raise ValueError(f"setting must be one of {tuple(SETTINGS)}, got {setting!r}")
    return RESULTS / "right_inverse" / setting


def walk(setting: str, records_of) -> tuple[list, dict]:
    """The specs the records ask for next, and {method: (selection on seed 0, [Record per seed])} for every
    method whose runs are recorded. records_of(specs) -> Records, None where missing."""
    store_of(setting)
    needed, out = [], {}
    for label, opt in METHODS.items():
        lrs = LRS[opt.name]
        specs = gp.at_seeds(SETTINGS[setting].replace(optimizer=replace(opt, lr=lrs[0])), SEEDS)
        more, sels = gp.at_chosen_rates(specs, lrs, "val_acc", records_of, each_seed=False, cap=CAP.get(opt.name))
        needed += more
        if all(s is not None for s in sels):
            out[label] = (sels[0], gp.records_at(specs, sels[0], records_of))
    return needed, out


def grid(setting: str, store=None) -> Grid:
    store = store or store_of(setting)
    return Grid(f"right_inverse/{setting}", tuple(dict.fromkeys(walk(setting, lambda s: collect(s, store))[0])))


def mnist(store=None) -> Grid:
    return grid("mnist", store)


def cifar(store=None) -> Grid:
    return grid("cifar10-subset", store)
