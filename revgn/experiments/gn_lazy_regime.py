"""Chapter 05's experiment as a study: how far exact GN, SGD and Adam move from their initialisation, at the
paper's MNIST rates (`gn_experiments.PAPER_LRS`), at five paired seeds.

Every run measures the distances from init of `revgn.kernels` at each evaluation (the paper's NTK probe
similarity, the empirical NTK's kernel distance, CKA, the smallest weight cosine, kappa). Book scale computes
its runs in the chapter; paper scale records them under results/gn_lazy_regime/paper/.
"""
from __future__ import annotations

from ..spec import DataSpec, ModelSpec, OptimSpec, RunSpec
from ..sweep import Grid
from . import gn_protocol as gp
from .gn_experiments import PAPER_LRS
from .study import Arm, Rates, Scale, Study

#: the paper's MNIST mini-batch rates, the ones whose laziness the paper reports
RATES = PAPER_LRS["mini-batch", "MNIST"]


def base(t: Scale) -> RunSpec:
    """The run (its optimiser and seed are the arm's)."""
    return RunSpec(DataSpec("mnist", n_train=t.pick(4000, 60000), n_test=1000),
                   ModelSpec(depth=2, hidden=t.pick(512, 8000)), loss="ce", batch_size=t.pick(128, 1024),
                   epochs=t.pick(6, 100), eval_every=t.pick(2, 10), eval_train_size=1000, evaluate=("test",),
                   measure=("ntk_similarity", "ntk_distance", "cka", "weight_cosine", "kappa"), kernel_inputs=4,
                   cka_inputs=500, kappa_inputs=20)


def arms(t: Scale) -> dict[str, Arm]:
    """Each optimiser at its paper rate, at every seed (a fixed rate: nothing is tuned, no seed waits)."""
    return {o: Arm(gp.at_seeds(base(t).replace(optimizer=OptimSpec(o, lr)), t.seeds), Rates.fixed(lr, each_seed=True))
            for o, lr in RATES.items()}


STUDY = Study("gn_lazy_regime", {"book": Scale("book"), "paper": Scale("paper")}, arms)


def paper(store=None) -> Grid:
    """The paper-scale runs not yet recorded under results/gn_lazy_regime/paper/."""
    return STUDY.grid("paper", store)
