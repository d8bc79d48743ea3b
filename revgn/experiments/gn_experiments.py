"""Chapter 04's experiments (Buffelli et al. 2024, Sec. 5, Figures 2 and 3) as one study: exact GN, SGD and
Adam on MNIST and CIFAR-10, on one full batch and in mini-batches.

Each (phase, dataset, optimiser) is an arm (`arms`, labelled by `label`). Full batch: one seed, the rate of
lowest final training loss. Mini-batch: the rate of best final validation accuracy, chosen on the first seed
and reused at five paired seeds. Every grid is bracketed (`gn_protocol.tuning`; GN's capped at
`study.GN_CAP`). Book scale computes its runs in the chapter; paper scale records them under
results/gn_experiments/paper/ (`python -m revgn.sweep revgn.experiments.gn_experiments:paper`).
"""
from __future__ import annotations

import numpy as np

from ..spec import DataSpec, ModelSpec, OptimSpec, RunSpec
from ..sweep import Grid
from . import gn_protocol as gp
from .study import CAPS, GRIDS, Arm, Rates, Scale, Study

OPTIMISERS = ("gn", "sgd", "adam")
DATASETS = ("MNIST", "CIFAR-10")
PHASES = ("full batch", "mini-batch")
#: the paper's rates (Sec. 5): the centre of each paper-scale grid
PAPER_LRS = {
    ("full batch", "MNIST"): dict(gn=0.5, sgd=0.1, adam=1e-4),
    ("full batch", "CIFAR-10"): dict(gn=0.5, sgd=0.01, adam=1e-5),
    ("mini-batch", "MNIST"): dict(gn=0.1, sgd=0.1, adam=1e-4),
    ("mini-batch", "CIFAR-10"): dict(gn=0.1, sgd=0.01, adam=1e-4),
}
#: book-scale starting grids. SGD's and Adam's start a factor 3 below `study.GRIDS` (near the paper's rates);
#: they decide the chapter's recorded numbers, so they stay as they were chosen
BOOK_GRIDS = {"gn": GRIDS["gn"], "sgd": (0.01, 0.03, 0.1), "adam": (1e-4, 3e-4, 1e-3)}
#: how each phase chooses: the full batch is a question of optimisation, the mini-batch one of generalisation
CRITERION = {"full batch": "train_loss", "mini-batch": "val_acc"}


def minibatch_spec(t: Scale, name: str) -> RunSpec:
    """The mini-batch run on dataset `name` (its optimiser and seed are the arm's)."""
    ds, n_train, n_test, depth = {
        "MNIST": ("mnist", t.pick(4000, 55000), t.pick(2000, None), 2),
        "CIFAR-10": (t.pick("cifar10-subset", "cifar10"), t.pick(3000, 45000), None, t.pick(2, 6))}[name]
    return RunSpec(DataSpec(ds, n_train=n_train, n_val=t.pick(1000, 5000), n_test=n_test),
                   ModelSpec(depth=depth, hidden=t.pick(512, 8000)), loss="ce", batch_size=t.pick(128, 1024),
                   epochs=t.pick(6, 100), eval_train_size=2000, evaluate=("val", "test"), track_batch_change=True)


def full_batch_spec(t: Scale, name: str) -> RunSpec:
    """The full-batch run on dataset `name`: one batch of training images, trained on alone (seed 0)."""
    return minibatch_spec(t, name).replace(**{"data.n_train": t.pick(256, 1024), "data.n_val": 0}, batch_size=None,
                                           epochs=t.pick(30, 200), eval_train_size=None, evaluate=(),
                                           track_batch_change=False)


def rates(t: Scale, phase: str, name: str, opt: str) -> Rates:
    """Book scale: `BOOK_GRIDS`. Paper scale: the paper's rate and a factor 3 either side. Both bracketed."""
    paper = PAPER_LRS[phase, name][opt]
    grid = t.pick(BOOK_GRIDS[opt], (paper / 3, paper, min(3 * paper, CAPS.get(opt, np.inf))))
    return Rates(grid, CRITERION[phase], cap=CAPS.get(opt))


def label(phase: str, name: str, opt: str) -> str:
    return f"{phase} / {name} / {opt}"


def arms(t: Scale) -> dict[str, Arm]:
    """Every (phase, dataset, optimiser): the full batch at seed 0, the mini-batch runs at the tier's seeds."""
    out = {}
    for phase in PHASES:
        for name in DATASETS:
            for opt in OPTIMISERS:
                if phase == "full batch":
                    specs = [full_batch_spec(t, name).replace(optimizer=OptimSpec(opt))]
                else:
                    specs = gp.at_seeds(minibatch_spec(t, name).replace(optimizer=OptimSpec(opt)), t.seeds)
                out[label(phase, name, opt)] = Arm(specs, rates(t, phase, name, opt))
    return out


STUDY = Study("gn_experiments", {"book": Scale("book"), "paper": Scale("paper")}, arms)


def paper(store=None) -> Grid:
    """The paper-scale runs the records ask for next (recorded under results/gn_experiments/paper/)."""
    return STUDY.grid("paper", store)
