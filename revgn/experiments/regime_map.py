"""A regime map: where does exact GN generalise worse than a tuned Adam? Grids of settings as run specs.

A `Point` fixes a setting (data, sizes, architecture, pseudo-inverse, epochs, seed); `Settings` fixes what
is shared by every point of a scale (rate grids, validation and test sizes, NTK inputs) and lists the
points: the main grid (batch size n against h/n, several seeds), single-factor changes around a base
point (seed 0), and CIFAR-10 (several seeds). Every (point, optimiser, rate) is one `RunSpec`; `grid(scale)`
is the sweep of all of them (`python -m revgn.sweep revgn.experiments.regime_map:book`), recorded under
results/regime_map/<scale>/. `summarise` reads a point's records: each optimiser's rate chosen on
validation accuracy, the test numbers of that run, and what describes how it trained.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace

import numpy as np

from .. import data
from ..book import table
from ..stats import TEST, paired, verdict
from ..runs import DataSpec, ModelSpec, OptimSpec, RunSpec
from ..sweep import Grid
from . import gn_protocol as gp

#: the truncated pseudo-inverse when a point asks for it (the paper's App. K main setting)
TRUNCATION = dict(pinv="truncate", rtol=1e-2, atol=1e-5)
OPTIMISERS = ("gn", "adam")


@dataclass(frozen=True)
class Point:
    """One setting of the map. n_train: training images (plus a validation split drawn with them);
    hidden: bottleneck width h; batch: n; pinv: "exact" or "truncate"; first_activation: "relu" or "identity".
    seed: the data subset, the initial weights and the batch order (shared by GN and Adam: a paired seed)."""

    dataset: str = "mnist"
    n_train: int = 4000
    hidden: int = 512
    batch: int = 128
    depth: int = 2
    epochs: int = 6
    first_activation: str = "relu"
    pinv: str = "exact"
    init_std: float = 1e-3
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

    def vary(self, **changes) -> "Point":
        """This point with some settings changed (one factor at a time)."""
        return replace(self, **changes)

    @property
    def constraints_per_parameter(self) -> float:
        """n d / p: equations per GN step (n outputs of width d) per trained parameter (p = L d h): n / (L h)."""
        return self.batch / (self.depth * self.hidden)

    def spec(self, optimiser: str, lr: float, s: "Settings") -> RunSpec:
        """The run of `optimiser` ("gn" or "adam") at rate lr on this point. Adam's run does not depend on
        the pseudo-inverse, so points that differ only in `pinv` share their Adam runs."""
        if optimiser not in OPTIMISERS:
            raise ValueError(f"optimiser must be one of {OPTIMISERS}, got {optimiser!r}")
        opt = OptimSpec("gn", lr, **(TRUNCATION if self.pinv == "truncate" else {})) if optimiser == "gn" \
            else OptimSpec("adam", lr)
        return RunSpec(DataSpec(self.dataset, n_train=self.n_train, n_val=s.n_val, subset_seed=self.seed,
                                n_test=s.n_test[self.dataset]),
                       ModelSpec(depth=self.depth, hidden=self.hidden, init_std=self.init_std,
                                 first_activation=self.first_activation, seed=self.seed),
                       opt, loss="ce", batch_size=self.batch, epochs=self.epochs, seed=self.seed,
                       eval_train_size=2000, evaluate=("val", "test"), track_batch_change=True,
                       measure=("ntk_distance",), kernel_inputs=s.kernel_inputs)

    def specs(self, s: "Settings", optimiser: str) -> list[RunSpec]:
        return [self.spec(optimiser, lr, s) for lr in s.lrs[optimiser]]


@dataclass(frozen=True)
class Settings:
    """What every point of one scale shares, and which points there are."""

    base: Point
    lrs: dict = field(default_factory=lambda: {"gn": (0.1, 0.3, 1.0), "adam": (3e-4, 1e-3, 3e-3)})
    batches: tuple = (32, 128)
    ratios: tuple = (1, 2, 4, 16)
    seeds: tuple = (0, 1, 2, 3, 4)  # paired seeds of the main grid and CIFAR-10: enough for a verdict
    n_val: int = 500
    # test images per dataset (None: the whole test split; the CIFAR-10 subset has 1,000)
    n_test: dict = field(default_factory=lambda: {"mnist": 2000, "cifar10-subset": None})
    kernel_inputs: int = 8
    sizes: tuple = (500, 6000)  # training-set sizes of the single-factor changes
    n_big: int = 512  # a batch beyond d/2 = 392, where the identity first block is rank-deficient
    big_n_train: int = 4000
    cifar: dict = field(default_factory=lambda: {"dataset": "cifar10-subset"})

    def grid_points(self) -> dict[tuple[int, int], list[Point]]:
        """(n, h/n) -> the point at each seed."""
        return {(n, r): [self.base.vary(batch=n, hidden=r * n, seed=s) for s in self.seeds]
                for n in self.batches for r in self.ratios}

    def factor_points(self) -> dict[str, Point]:
        """Single-factor changes around the base point (seed 0)."""
        b = self.base
        wide = b.vary(batch=self.n_big, hidden=2 * self.n_big, n_train=self.big_n_train)
        return {"base": b,
                **{f"N = {n}": b.vary(n_train=n) for n in self.sizes},
                f"{3 * b.epochs} epochs": b.vary(epochs=3 * b.epochs),
                "W init sd 0.1": b.vary(init_std=0.1),
                "truncated pinv": b.vary(pinv="truncate"),
                f"n = {self.n_big}, ReLU, exact": wide,
                f"n = {self.n_big}, identity, truncated": wide.vary(first_activation="identity", pinv="truncate")}

    def cifar_points(self) -> list[Point]:
        return [self.base.vary(**self.cifar, seed=s) for s in self.seeds]

    def points(self) -> list[Point]:
        pts = [p for ps in self.grid_points().values() for p in ps] + list(self.factor_points().values()) \
            + self.cifar_points()
        return list(dict.fromkeys(pts))


SETTINGS = {
    "book": Settings(Point(n_train=2000, hidden=512, batch=128, epochs=6)),
    "paper": Settings(Point(n_train=55000, hidden=8192, batch=1024, epochs=100), batches=(256, 1024), ratios=(1, 2, 8),
                      n_val=5000, n_test={"mnist": None, "cifar10": None}, kernel_inputs=32,
                      sizes=(10000,), n_big=1024,
                      big_n_train=55000, cifar={"dataset": "cifar10", "depth": 6, "n_train": 45000}),
}


def grid(scale: str) -> Grid:
    """Every run of the map at a scale, as a sweep recorded under results/regime_map/<scale>/."""
    if scale not in SETTINGS:
        raise ValueError(f"scale must be one of {tuple(SETTINGS)}, got {scale!r}")
    s = SETTINGS[scale]
    specs = [spec for p in s.points() for o in OPTIMISERS for spec in p.specs(s, o)]
    return Grid(f"regime_map/{scale}", tuple(dict.fromkeys(specs)))


def book() -> Grid:
    return grid("book")


def paper() -> Grid:
    return grid("paper")


def summarise(point: Point, s: Settings, record_of) -> dict:
    """What a point's records say: {"point", "gn", "adam", "gap"} with, per optimiser, the rate chosen on
    validation accuracy and the test numbers of that run; gap = GN minus Adam test accuracy (None when
    either failed at every rate). record_of: spec -> Record (e.g. a `revgn.runs.Runs`)."""
    out = {"point": asdict(point)}
    for o in OPTIMISERS:
        sel = gp.select([record_of(spec) for spec in point.specs(s, o)], "val_acc")
        out[o] = {"lr": sel.lr, "selection": sel}
        if sel.best is not None:
            rec = sel.best
            drop = gp.drop_by_epoch(rec)
            out[o].update({k: rec.metrics[k] for k in ("train_loss", "train_acc", "val_acc", "test_acc", "ntk_distance")},
                          saturation=gp.saturation(rec, last=max(1, point.epochs // 2)),
                          drop_first=float(drop[0]), drop_last=float(drop[-1]), record=rec)
    out["gap"] = out["gn"]["test_acc"] - out["adam"]["test_acc"] if out["gn"]["lr"] and out["adam"]["lr"] else None
    return out


def mean_over_seeds(summaries: list[dict], value) -> float:
    """The mean over a point's seeds of value(summary); NaN where some seed has no value (a failed optimiser)."""
    vals = [value(r) for r in summaries]
    return float(np.mean(vals)) if all(v is not None for v in vals) else float("nan")


def gap_verdict(summaries: list[dict]) -> tuple[str, str]:
    """A regime's gap, paired over its seeds ("-1.2 [-2.0, -0.4] points (5 seeds)"), and the verdict of
    `revgn.stats.verdict` on it: "claim holds: GN worse", "claim fails: GN better", "no detectable
    difference", or no verdict with fewer than five seeds."""
    if any(r["gap"] is None for r in summaries):
        return "exact GN refused at every rate", "no comparison"
    c = paired([r["gn"]["test_acc"] for r in summaries], [r["adam"]["test_acc"] for r in summaries])
    return c.text(), verdict(c, above="claim fails: GN better", below="claim holds: GN worse")


def verdict_table(regimes: dict[str, list[dict]]) -> str:
    """The Markdown verdict table of labelled regimes (label -> the summaries of its seeds)."""
    rows = [[label, *gap_verdict(summaries)] for label, summaries in regimes.items()]
    return table(["regime", "gap, GN - Adam [95% interval]", "verdict"], rows) + f"\n\nTest: {TEST}."
