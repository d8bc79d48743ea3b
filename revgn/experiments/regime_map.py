"""A regime map: where does exact GN generalise worse than a tuned Adam? Grids of settings as run specs.

A `Point` fixes a setting (data, sizes, architecture, pseudo-inverse, epochs, seed); `Settings` fixes what
is shared by every point of a tier (rate grids and their cap, validation and test sizes, NTK inputs) and
groups the points into `Regime`s: one setting at several paired seeds. Each optimiser's rate is chosen on
validation accuracy from a bracketed grid (`gn_protocol.tuning`), at every seed or on the first seed and
reused for the others (`Regime.each_seed`). Every (point, optimiser, rate) is one `RunSpec`. `grid(tier)` is
the sweep of what the records say is needed next (the grid grows as bracketing asks for more rates and as
the first seed's choice frees the others): `python -m revgn.sweep revgn.experiments.regime_map:book` runs
it to completion, recording under results/regime_map/<tier>/. `summaries` reads a regime's records;
`regime_verdicts` says what they show.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace

import numpy as np

from .. import data
from ..spec import DataSpec, ModelSpec, OptimSpec, RunSpec
from ..sweep import Grid
from . import gn_protocol as gp
from .study import GN_CAP, GRIDS, Arm, Rates, Study, walk_arm

#: the truncated pseudo-inverse when a point asks for it (the paper's App. K main setting)
TRUNCATION = dict(pinv="truncate", rtol=1e-2, atol=1e-5)
OPTIMISERS = ("gn", "adam")


@dataclass(frozen=True)
class Point:
    """One setting of the map. n_train: training images (plus a validation split drawn with them);
    hidden: bottleneck width h; batch: n; pinv: "exact" or "truncate"; first_activation: "relu" or "identity".
    patience: 0 trains all `epochs`; else training stops once validation accuracy has not risen for that many
    epochs (`epochs` is then the most). seed: the data subset, the initial weights and the batch order (shared
    by GN and Adam: a paired seed)."""

    dataset: str = "mnist"
    n_train: int = 4000
    hidden: int = 512
    batch: int = 128
    depth: int = 2
    epochs: int = 6
    first_activation: str = "relu"
    pinv: str = "exact"
    init_std: float = 1e-3
    patience: int = 0
    seed: int = 0

    def __post_init__(self):
        if self.dataset not in data.DATASETS:
            raise ValueError(f"unknown dataset {self.dataset!r}; choose one of {data.DATASETS}")
        if self.pinv not in ("exact", "truncate"):
            raise ValueError(f"pinv must be 'exact' or 'truncate', got {self.pinv!r}")
        if self.pinv == "exact" and self.batch > self.hidden:
            raise ValueError(f"exact GN needs batch n <= width h; got n={self.batch} > h={self.hidden}")
        for name in ("n_train", "hidden", "batch", "depth", "epochs"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.patience < 0:
            raise ValueError(f"patience must be >= 0, got {self.patience}")

    def vary(self, **changes) -> "Point":
        """This point with some settings changed (one factor at a time)."""
        return replace(self, **changes)

    def spec(self, optimiser: str, lr: float, s: "Settings") -> RunSpec:
        """The run of `optimiser` ("gn" or "adam") at rate lr on this point, at its seed with its own draw of
        the training subset (`gn_protocol.at_seeds`, subset "drawn": a regime's verdict holds across draws).
        Adam's run does not depend on the pseudo-inverse, so points that differ only in `pinv` share their Adam
        runs."""
        if optimiser not in OPTIMISERS:
            raise ValueError(f"optimiser must be one of {OPTIMISERS}, got {optimiser!r}")
        opt = OptimSpec("gn", lr, **(TRUNCATION if self.pinv == "truncate" else {})) if optimiser == "gn" \
            else OptimSpec("adam", lr)
        base = RunSpec(DataSpec(self.dataset, n_train=self.n_train, n_val=s.n_val[self.dataset],
                                n_test=s.n_test[self.dataset]),
                       ModelSpec(depth=self.depth, hidden=self.hidden, init_std=self.init_std,
                                 first_activation=self.first_activation),
                       opt, loss="ce", batch_size=self.batch, epochs=self.epochs,
                       eval_train_size=2000, evaluate=("val", "test"), track_batch_change=True,
                       measure=("ntk_distance",), kernel_inputs=s.kernel_inputs, patience=self.patience)
        return gp.at_seeds(base, [self.seed], subset="drawn")[0]


@dataclass(frozen=True)
class Regime:
    """One setting at several paired seeds (`points`, the same but for the seed). each_seed: choose each
    optimiser's rate at every seed; else on the first seed, and train the others at that rate."""

    points: tuple[Point, ...]
    each_seed: bool = True

    def __post_init__(self):
        object.__setattr__(self, "points", tuple(self.points))
        if not self.points or len({p.vary(seed=0) for p in self.points}) != 1:
            raise ValueError("a regime is one setting at several seeds: its points may differ only in their seed")


@dataclass(frozen=True)
class Settings:
    """What every point of one tier shares, and which regimes there are."""

    base: Point
    lrs: dict = field(default_factory=lambda: {o: GRIDS[o] for o in OPTIMISERS})
    cap: dict = field(default_factory=lambda: {"gn": GN_CAP})  # GN's grid stops at its cap
    extensions: int = 3  # at most this many rates added beyond an edge of the grid
    batches: tuple = (32, 128)
    ratios: tuple = (1, 2, 4, 16)
    cells: tuple | None = None  # (n, h/n) of the main grid, in this order; None: every batch with every ratio
    seeds: tuple = (0, 1, 2, 3, 4)  # paired seeds of every regime: enough for a verdict
    each_seed: bool = True  # main grid and CIFAR-10: rates chosen at every seed (else on the first, reused)
    # validation images per dataset, drawn with the training images and held out from them
    n_val: dict = field(default_factory=lambda: {"mnist": 500, "cifar10-subset": 500})
    # test images per dataset (None: the whole test split; the CIFAR-10 subset has 1,000)
    n_test: dict = field(default_factory=lambda: {"mnist": 2000, "cifar10-subset": None})
    kernel_inputs: int = 8
    sizes: tuple = (500, 6000)  # training-set sizes of the single-factor changes
    n_big: int | None = 512  # a batch beyond d/2 = 392, where the identity first block is rank-deficient
    big_n_train: int = 4000
    factors: bool = True  # single-factor changes around the base point (rates chosen on the first seed)
    cifar: tuple = ({"dataset": "cifar10-subset"},)  # changes of the base point that make each CIFAR-10 regime

    @property
    def endpoint(self) -> str:
        """Where the tier's runs are scored (`gn_protocol.ENDPOINTS`): where training ends ("end") when it runs a
        fixed number of epochs; at each run's own validation peak ("best_val", a checkpoint chosen on validation
        data) when a stopping rule ends it, never at the epoch the rule happened to stop on."""
        return "best_val" if self.base.patience else "end"

    def at_seeds(self, point: Point, each_seed: bool) -> Regime:
        return Regime([point.vary(seed=s) for s in self.seeds], each_seed)

    def grid_regimes(self) -> dict[tuple[int, int], Regime]:
        """(n, h/n) -> the regime of the main grid there."""
        cells = self.cells or [(n, r) for n in self.batches for r in self.ratios]
        return {(n, r): self.at_seeds(self.base.vary(batch=n, hidden=r * n), self.each_seed) for n, r in cells}

    def factor_points(self) -> dict[str, Point]:
        """Single-factor changes around the base point."""
        if not self.factors:
            return {}
        b = self.base
        out = {"base": b, **{f"N = {n}": b.vary(n_train=n) for n in self.sizes},
               f"{3 * b.epochs} epochs": b.vary(epochs=3 * b.epochs),
               "W init sd 0.1": b.vary(init_std=0.1),
               "truncated pinv": b.vary(pinv="truncate")}
        if self.n_big:
            wide = b.vary(batch=self.n_big, hidden=2 * self.n_big, n_train=self.big_n_train)
            out[f"n = {self.n_big}, ReLU, exact"] = wide
            out[f"n = {self.n_big}, identity, truncated"] = wide.vary(first_activation="identity", pinv="truncate")
        return out

    def factor_regimes(self) -> dict[str, Regime]:
        return {label: self.at_seeds(p, each_seed=False) for label, p in self.factor_points().items()}

    def cifar_regimes(self) -> dict[str, Regime]:
        label = lambda c: "CIFAR-10" + (f", {c['depth']} blocks" if "depth" in c else "")
        return {label(c): self.at_seeds(self.base.vary(**c), self.each_seed) for c in self.cifar}

    def regimes(self) -> dict[str, Regime]:
        """Every regime of the tier, labelled: the main grid, CIFAR-10, the single factors."""
        return {**{f"n = {n}, h/n = {r}": reg for (n, r), reg in self.grid_regimes().items()},
                **self.cifar_regimes(), **self.factor_regimes()}


SETTINGS = {
    "book": Settings(Point(n_train=2000, hidden=512, batch=128, epochs=6)),
    # All of MNIST's training images but the validation split, trained until validation accuracy stops rising,
    # tested on the whole test split; rates chosen on seed 0 and reused for the other seeds (the CPU budget).
    # The cells come in the order they decide the question: n = 1024 first, where the paper trains, then the n
    # axis at n = 256. (256, 16) was planned too and dropped unrun: h = 4096 at n = 256 is some eight core-hours for
    # its rate grid and seeds, past the tier's budget, and the n axis is already crossed at h/n = 4.
    "full": Settings(Point(n_train=55000, hidden=2048, batch=1024, epochs=30, patience=3), cells=((1024, 2), (1024, 4),
                     (256, 4)), lrs={"gn": (0.3, 1.0), "adam": GRIDS["adam"]}, each_seed=False,
                     n_val={"mnist": 5000, "cifar10-subset": 500}, n_test={"mnist": None, "cifar10-subset": None},
                     factors=False,
                     cifar=({"dataset": "cifar10-subset", "n_train": 3500, "hidden": 512, "batch": 128},
                            {"dataset": "cifar10-subset", "n_train": 3500, "hidden": 512, "batch": 128, "depth": 6})),
    "paper": Settings(Point(n_train=55000, hidden=8192, batch=1024, epochs=100), batches=(256, 1024), ratios=(1, 2, 8),
                      n_val={"mnist": 5000, "cifar10": 5000}, n_test={"mnist": None, "cifar10": None}, kernel_inputs=32,
                      sizes=(10000,), n_big=1024, big_n_train=55000,
                      cifar=({"dataset": "cifar10", "depth": 6, "n_train": 45000},)),
}


def regime_arms(regime: Regime, s: Settings) -> dict[str, Arm]:
    """A regime's two arms, GN's and Adam's, each with its rate chosen from the tier's grid and cap, at every
    seed or on the first (`Regime.each_seed`)."""
    return {o: Arm([p.spec(o, s.lrs[o][0], s) for p in regime.points],
                   Rates(s.lrs[o], cap=s.cap.get(o), each_seed=regime.each_seed, extensions=s.extensions))
            for o in OPTIMISERS}


def arms(s: Settings) -> dict[str, Arm]:
    """Every regime's arms, labelled "<regime>: <optimiser>" (so a regime's label prefixes its arms')."""
    return {f"{label}: {o}": arm for label, reg in s.regimes().items() for o, arm in regime_arms(reg, s).items()}


STUDY = Study("regime_map", SETTINGS, arms)
store_of = STUDY.store


def walk(regime: Regime, s: Settings, records_of) -> tuple[list[RunSpec], list[dict]]:
    """A regime's specs needed so far, and the summary of each seed whose rates are chosen and runs recorded
    (in seed order; all of them once the walk is complete). records_of(specs) -> Records, None where missing:
    `revgn.runs.Runs.all` runs them, `revgn.sweep.collect` only reads a store."""
    needed, chosen = [], {}
    for o, arm in regime_arms(regime, s).items():
        more, chosen[o], _ = walk_arm(arm, records_of)
        needed += more
    done = [i for i in range(len(regime.points)) if all(chosen[o][i] is not None for o in OPTIMISERS)]
    return needed, [summarise(regime.points[i], chosen["gn"][i], chosen["adam"][i]) for i in done]


def summaries(regime: Regime, s: Settings, records_of) -> list[dict]:
    """The per-seed summaries of a regime (see `walk`), all seeds: its runs must all be recorded or computable."""
    needed, out = walk(regime, s, records_of)
    if len(out) != len(regime.points):
        missing = [sp.key[:12] for sp, r in zip(needed, records_of(needed)) if r is None]
        raise FileNotFoundError(f"the regime's runs are not all recorded: {len(out)} of {len(regime.points)} seeds "
                                f"complete; missing {missing}")
    return out


def grid(tier: str, store=None, only: str = "") -> Grid:
    """The runs of a tier that its records ask for next, as a sweep recorded under results/regime_map/<tier>/
    (or read from `store`): the starting rate grids, the rates that bracketing adds, the seeds that a first
    seed's choice frees. With `only`, the regimes whose label starts with it (their records are the tier's)."""
    return STUDY.grid(tier, store, only)


def book(store=None) -> Grid:
    return grid("book", store)


def full(store=None) -> Grid:
    return grid("full", store)


def full_cifar(store=None) -> Grid:
    """The full tier's CIFAR-10 regimes alone (minutes each, where an MNIST cell takes hours): sweep them first."""
    return grid("full", store, only="CIFAR-10")


def full_n1024(store=None) -> Grid:
    """The full tier's MNIST cells at n = 1024, the paper's batch size: the cells that decide the question first."""
    return grid("full", store, only="n = 1024,")


def paper(store=None) -> Grid:
    return grid("paper", store)


def summarise(point: Point, gn: gp.Selection, adam: gp.Selection) -> dict:
    """What a point's chosen runs say: {"point", "gn", "adam", "gap"} with, per optimiser, the chosen rate, its
    selection and the test numbers of that run; gap = GN minus Adam test accuracy (None when either failed at
    every rate)."""
    out = {"point": asdict(point)}
    for o, sel in (("gn", gn), ("adam", adam)):
        out[o] = {"lr": sel.lr, "selection": sel}
        if sel.best is not None:
            rec = sel.best
            drop = gp.drop_by_epoch(rec)
            out[o].update({k: rec.metrics[k] for k in ("train_loss", "train_acc", "val_acc", "test_acc", "ntk_distance")},
                          epochs=rec.history.epochs["epoch"][-1],
                          saturation=gp.saturation(rec, last=max(1, rec.history.epochs["epoch"][-1] // 2)),
                          drop_first=float(drop[0]), drop_last=float(drop[-1]), record=rec)
    out["gap"] = out["gn"]["test_acc"] - out["adam"]["test_acc"] if out["gn"]["lr"] and out["adam"]["lr"] else None
    return out


def mean_over_seeds(summaries: list[dict], value) -> float:
    """The mean over a regime's seeds of value(summary); NaN where some seed has no value (a failed optimiser)."""
    vals = [value(r) for r in summaries]
    return float(np.mean(vals)) if vals and all(v is not None for v in vals) else float("nan")
