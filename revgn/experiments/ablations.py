"""Chapter 06's ablations of exact GN (Buffelli et al. 2024, Sec. 5 and App. K), as data, each at its tuned rate.

Every ablation is a `Variant`: the changes it makes to one baseline run spec, and how its learning rate is
set. A tuned variant gets its rate from a bracketed grid on validation accuracy (`gn_protocol.tuning`), on
the first seed, reused for the others; a fixed one keeps the rate it names (the learning-rate ablations); a
switch of optimiser trains each phase at the rate chosen for that optimiser's baseline. Every variant runs at
the same paired seeds (data subset shared, initial weights and batch order per seed). `grid(tier)` lists what
the records ask for next (`python -m revgn.sweep revgn.experiments.ablations:book`), recorded under
results/gn_ablations/<tier>/; `chosen(tier, records_of)` reads the records of every variant.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace

from ..records import RESULTS
from ..spec import DataSpec, ModelSpec, OptimSpec, RunSpec
from ..sweep import Grid, collect
from . import gn_protocol as gp

#: starting rate grids per optimiser (bracketed by `tuning`), and GN's cap: at rate 2 its first-order error
#: on the batch changes sign
LRS = {"gn": (0.1, 0.3, 1.0), "adam": (3e-4, 1e-3, 3e-3)}
CAP = {"gn": 2.0}
NO_BOTTLENECK = ModelSpec(depth=2, hidden=392, bottleneck=False)  # sigma on the half-stream: h = d/2 = 392
RIDGES = (0.0, 0.01, 0.1, 1.0, 10.0, 100.0)
SMALL_RATES = (0.01, 0.03, 0.1)  # GN at fixed small steps (0.1 is the paper's)
#: small steps trained to the training loss GN reaches at the paper's rate (Arbel et al.'s regime), with at
#: most this many times the epochs that rate/0.1 predicts
HEADROOM = 1.5
INIT_STDS = (1e-2, 1e-1)  # beyond the baseline's 1e-3


@dataclass(frozen=True)
class Variant:
    """One ablation. optimizer: the OptimSpec whose rate is tuned (its lr is the grid's first rate) or fixed;
    changes: other fields of the baseline spec ("model.init_std": 0.1, model=..., measure=...); tune: choose
    the rate (else keep optimizer.lr); then: with a switch, the name of the baseline variant whose chosen
    optimiser and rate train the second phase (the first phase uses the chosen rate of `first`); match: the
    variant whose final training loss, at the same seed, this one trains down to (`RunSpec.until_train_loss`;
    its `epochs` in `changes` is then the most it trains)."""

    optimizer: OptimSpec
    changes: tuple = ()
    tune: bool = True
    first: str | None = None
    then: str | None = None
    match: str | None = None

    def __post_init__(self):
        object.__setattr__(self, "changes", tuple(sorted(dict(self.changes).items())))
        if (self.first is None) != (self.then is None):
            raise ValueError("a switch names both the variant of its first phase and that of its second")


def _v(optimizer: OptimSpec, tune: bool = True, **changes) -> Variant:
    return Variant(optimizer, tuple(changes.items()), tune)


GN, ADAM = OptimSpec("gn", LRS["gn"][0]), OptimSpec("adam", LRS["adam"][0])
VARIANTS = {  # label -> the ablation: the grid, as data
    "Adam": _v(ADAM),
    "GN exact": _v(GN),
    "GN truncated (rtol 1e-2)": _v(OptimSpec("gn", 0.1, pinv="truncate", rtol=1e-2, atol=1e-5)),
    "GN damped (1%)": _v(OptimSpec("gn", 0.1, pinv="damp", damping=0.01)),
    "GN noisy features (10%)": _v(OptimSpec("gn", 0.1, pinv="noise", noise=0.1)),
    "GN, no bottleneck": _v(GN, model=NO_BOTTLENECK),
    "Adam, no bottleneck": _v(ADAM, model=NO_BOTTLENECK),
    **{f"GN, W init sd {sd:g}": _v(GN, **{"model.init_std": sd}) for sd in INIT_STDS},
    **{f"Adam, W init sd {sd:g}": _v(ADAM, **{"model.init_std": sd}) for sd in INIT_STDS},
    **{f"GN, lr {lr:g}": _v(OptimSpec("gn", lr), tune=False) for lr in SMALL_RATES},
    **{f"GN, lr {lr:g}, equal training loss": Variant(OptimSpec("gn", lr), (("epochs", "scaled"),), tune=False,
                                                      match="GN, lr 0.1") for lr in SMALL_RATES[:-1]},
    "Adam -> GN": Variant(ADAM, first="Adam", then="GN exact"),
    "GN -> Adam": Variant(GN, first="GN exact", then="Adam"),
    # the damping continuum: ridge rho * mean eigenvalue, each rho at its own tuned rate; NTK and CKA measured
    **{f"ridge {rho:g}": _v(OptimSpec("gn", 0.1, pinv="ridge", ridge=rho, ridge_relative=True) if rho else GN,
                            measure=("ntk_distance", "cka"), kernel_inputs=4) for rho in RIDGES},
}


@dataclass(frozen=True)
class Tier:
    """The baseline run and the seeds of one tier; switch: the epoch of a switch of optimiser."""

    base: RunSpec
    seeds: tuple = (0, 1, 2, 3, 4)
    switch: int = 3
    extensions: int = 3


def _base(n_train, n_val, hidden, batch, epochs) -> RunSpec:
    return RunSpec(DataSpec("mnist", n_train=n_train, n_val=n_val), ModelSpec(depth=2, hidden=hidden), GN, loss="ce",
                   batch_size=batch, epochs=epochs, eval_train_size=2000, evaluate=("val", "test"))


TIERS = {
    "book": Tier(_base(4000, 500, 512, 128, 6)),
    "paper": Tier(_base(55000, 5000, 8000, 1024, 100), switch=50),
}


def _tier(tier: str) -> Tier:
    if tier not in TIERS:
        raise ValueError(f"tier must be one of {tuple(TIERS)}, got {tier!r}")
    return TIERS[tier]


def store_of(tier: str):
    _tier(tier)
    return RESULTS / "gn_ablations" / tier


def cap_of(v: Variant) -> float | None:
    """GN's cap, scaled for a relative ridge rho by 1 + rho (the damped step is that much shorter at the mean
    eigenvalue)."""
    cap = CAP.get(v.optimizer.name)
    return None if cap is None else cap * (1 + (v.optimizer.ridge if v.optimizer.pinv == "ridge" else 0.0))


def spec_of(t: Tier, v: Variant, lr: float, seed: int = 0, target: float = 0.0) -> RunSpec:
    changes = dict(v.changes)
    if changes.get("epochs") == "scaled":  # the epochs the paper's rate needs, times 0.1 / lr, with headroom
        changes["epochs"] = math.ceil(round(t.base.epochs * 0.1 / lr * HEADROOM, 9))  # round: 90.000...01 is 90
    spec = t.base.replace(optimizer=replace(v.optimizer, lr=float(lr)), until_train_loss=target, **changes)
    return gp.at_seeds(spec, [seed])[0]


def walk(tier: str, records_of) -> tuple[list[RunSpec], dict[str, list]]:
    """The specs the records ask for next, and for every variant whose runs are all recorded, its records at
    each seed with the rate selection ({label: (selection on the first seed, [Record per seed])}).
    records_of(specs) -> Records, None where missing (`revgn.runs.Runs.all` or `revgn.sweep.collect`)."""
    t = _tier(tier)
    needed, out = [], {}
    for label, v in VARIANTS.items():
        if v.match is not None:  # trained to the final training loss of `match`, seed by seed
            if v.match not in out:
                continue
            sel = gp.Selection(None, {})
            specs = [spec_of(t, v, v.optimizer.lr, r.spec.seed, target=r.metrics["train_loss"])
                     for r in out[v.match][1] if r.ok]
        elif v.then is not None:  # a switch: each phase at the rate chosen for its optimiser's baseline
            if not (v.first in out and v.then in out) or out[v.first][0].best is None or out[v.then][0].best is None:
                continue
            first, then = (out[k][0].best.spec.optimizer for k in (v.first, v.then))
            assert not VARIANTS[v.then].changes, "a switch continues the same network: its second phase changes nothing else"
            sel = gp.Selection(None, {})
            specs = [gp.at_seeds(t.base.replace(optimizer=first, then=then, switch_epoch=t.switch,
                                                **dict(VARIANTS[v.first].changes)), [seed])[0] for seed in t.seeds]
        else:
            scale = 1 + v.optimizer.ridge if v.optimizer.pinv == "ridge" else 1.0
            lrs = [lr * scale for lr in LRS[v.optimizer.name]] if v.tune else [v.optimizer.lr]
            seeds, sels = gp.at_chosen_rates([spec_of(t, v, lrs[0], seed) for seed in t.seeds], lrs, "val_acc",
                                             records_of, each_seed=False, cap=cap_of(v), extensions=t.extensions)
            needed += seeds
            if all(x is not None for x in sels):
                out[label] = (sels[0], gp.records_at([spec_of(t, v, lrs[0], seed) for seed in t.seeds], sels[0],
                                                     records_of))
            continue
        needed += specs
        recs = records_of(specs)
        if all(r is not None for r in recs):
            out[label] = (sel, recs)
    return needed, out


def grid(tier: str, store=None) -> Grid:
    """What the records of a tier ask for next, as a sweep recorded under results/gn_ablations/<tier>/."""
    store = store or store_of(tier)
    return Grid(f"gn_ablations/{tier}", tuple(dict.fromkeys(walk(tier, lambda specs: collect(specs, store))[0])))


def book(store=None) -> Grid:
    return grid("book", store)


def paper(store=None) -> Grid:
    return grid("paper", store)
