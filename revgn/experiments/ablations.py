"""Chapter 06's ablations of exact GN (Buffelli et al. 2024, Sec. 5 and App. K), as data, each at its tuned rate.

Every ablation is a `Variant`: the changes it makes to one baseline run spec, and how its learning rate is
set. A tuned variant gets its rate from a bracketed grid on validation accuracy (`gn_protocol.tuning`), on
the first seed, reused for the others; a fixed one keeps the rate it names (the learning-rate ablations); a
switch of optimiser trains each phase at the rate chosen for that optimiser's baseline. Every variant runs at
the same paired seeds (data subset shared, initial weights and batch order per seed). `grid(tier)` lists what
the records ask for next (`python -m revgn.sweep revgn.experiments.ablations:book`), recorded under
results/gn_ablations/<tier>/; `walk(tier, records_of)` reads every variant's `study.ArmResult`. The variants
become the arms of one `study.Study` (`arms`), which derives the grid, the store and the tier lookup.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace

from ..spec import DataSpec, ModelSpec, OptimSpec, RunSpec
from ..sweep import Grid
from . import gn_protocol as gp
from .study import GRIDS, Arm, ArmResult, Rates, Study, Tied

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


GN, ADAM = OptimSpec("gn", GRIDS["gn"][0]), OptimSpec("adam", GRIDS["adam"][0])
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


def _rates(t: Tier, v: Variant) -> Rates:
    """A variant's rate policy: a tuned one from its optimiser's grid and cap, scaled for a relative ridge rho
    by 1 + rho (the damped step is that much shorter at the mean eigenvalue), chosen on the first seed; a fixed
    one at its own rate."""
    if not v.tune:
        return Rates.fixed(v.optimizer.lr)
    return Rates.tuned(v.optimizer.name, scale=1 + v.optimizer.ridge if v.optimizer.pinv == "ridge" else 1.0,
                       extensions=t.extensions)


def spec_of(t: Tier, v: Variant, lr: float, seed: int = 0, target: float = 0.0) -> RunSpec:
    changes = dict(v.changes)
    if changes.get("epochs") == "scaled":  # the epochs the paper's rate needs, times 0.1 / lr, with headroom
        changes["epochs"] = math.ceil(round(t.base.epochs * 0.1 / lr * HEADROOM, 9))  # round: 90.000...01 is 90
    spec = t.base.replace(optimizer=replace(v.optimizer, lr=float(lr)), until_train_loss=target, **changes)
    return gp.at_seeds(spec, [seed])[0]


def arms(t: Tier) -> dict[str, Arm | Tied]:
    """Every variant as an arm of the study: a tuned or fixed one at the tier's seeds; a switch tied to the
    rates chosen for its two baselines; an equal-training-loss run tied to the losses its `match` reached."""
    out = {}
    for label, v in VARIANTS.items():
        if v.match is not None:  # trained to the final training loss of `match`, seed by seed
            out[label] = Tied((v.match,), lambda res, v=v: _matched(t, v, res[v.match]))
        elif v.then is not None:  # a switch: each phase at the rate chosen for its optimiser's baseline
            out[label] = Tied((v.first, v.then), lambda res, v=v: _switch(t, v, res))
        else:
            rates = _rates(t, v)
            out[label] = Arm([spec_of(t, v, rates.grid[0], seed) for seed in t.seeds], rates)
    return out


def _matched(t: Tier, v: Variant, match: ArmResult) -> Arm | None:
    specs = [spec_of(t, v, v.optimizer.lr, r.spec.seed, target=r.metrics["train_loss"]) for r in match.records if r.ok]
    return Arm(specs, Rates.fixed(v.optimizer.lr, each_seed=True)) if specs else None


def _switch(t: Tier, v: Variant, res: dict) -> Arm | None:
    first, then = (res[k].selection.best for k in (v.first, v.then))
    if first is None or then is None:  # a baseline failed at every rate: nothing to switch between
        return None
    assert not VARIANTS[v.then].changes, "a switch continues the same network: its second phase changes nothing else"
    opt = first.spec.optimizer
    return Arm(gp.at_seeds(t.base.replace(optimizer=opt, then=then.spec.optimizer, switch_epoch=t.switch,
                                          **dict(VARIANTS[v.first].changes)), t.seeds),
               Rates.fixed(opt.lr, each_seed=True))


STUDY = Study("gn_ablations", TIERS, arms)
store_of, walk, grid = STUDY.store, STUDY.walk, STUDY.grid


def book(store=None) -> Grid:
    return grid("book", store)


def paper(store=None) -> Grid:
    return grid("paper", store)
