"""Experiments as data: a `Study` names its arms, each a run at paired seeds with a rate policy, and one walk
turns a study and its records into one `ArmResult` per arm::

    arms = {"GN": Arm(specs_at_seeds, Rates.tuned("gn")), "Adam": Arm(adam_specs, Rates.tuned("adam"))}
    needed, results = walk(arms, records_of)       # the specs still to run; {label: ArmResult} of the done arms
    results["GN"].selection.lr, results["GN"].records

An arm's specs are its run at each paired seed (`gn_protocol.at_seeds`: the initial weights and batch order per
seed, the training subset shared or drawn per seed as the study says); their rate is the policy's (`Rates`):
chosen on validation from a bracketed grid (`gn_protocol.tuning`) at every seed or on the first seed and
reused, or one fixed rate. An arm
tied to others (a switch of optimiser at their chosen rates, a target set by their records) is a `Tied`: it
becomes an `Arm` once the arms it needs have results. A `Study` names its tiers and where their records live
(results/<topic>/<tier>/), and derives the sweep's `Grid` (what the records ask for next) from the walk.
records_of(specs) -> a Record, or None where missing, per spec: `revgn.runs.Runs.all` trains what is missing,
`revgn.sweep.collect` only reads a store.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping

from ..records import RESULTS, Record
from ..spec import RunSpec
from . import gn_protocol as gp

#: GN's cap: at rate 2 a GN step's first-order error on its own batch changes sign (the step overshoots the
#: batch's fit), so no grid of a GN step goes past it
GN_CAP = 2.0
#: each optimiser's starting rate grid (bracketed by `gn_protocol.tuning`) and its cap
GRIDS = {"gn": (0.1, 0.3, 1.0), "gn-mp": (0.1, 0.3, 1.0), "adam": (3e-4, 1e-3, 3e-3), "sgd": (0.03, 0.1, 0.3)}
CAPS = {"gn": GN_CAP, "gn-mp": GN_CAP}


@dataclass(frozen=True)
class Scale:
    """A chapter's scale as a tier: "book" (minutes on a 2-core CPU) or "paper" (the paper's settings), and
    the first of five paired seeds."""

    scale: str = "book"
    seed: int = 0

    def pick(self, book, paper):
        return book if self.scale == "book" else paper

    @property
    def seeds(self) -> tuple[int, ...]:
        return tuple(range(self.seed, self.seed + 5))


@dataclass(frozen=True)
class Rates:
    """How an arm's rate is set: chosen by `criterion` (`gn_protocol.CRITERIA`) from a grid starting at `grid`,
    widened beyond an edge at most `extensions` times and never past `cap`; at every seed (`each_seed`) or on
    the first seed and reused for the others (a seed whose reused run then fails has no best record). A grid of
    one rate is a fixed rate: nothing is chosen (with each_seed=False the others run once the first finished),
    so it needs no criterion (None: a run need not evaluate a validation split)."""

    grid: tuple[float, ...]
    criterion: str | None = "val_acc"
    cap: float | None = None
    each_seed: bool = False
    extensions: int = 3

    def __post_init__(self):
        object.__setattr__(self, "grid", tuple(float(lr) for lr in self.grid))
        if not self.grid or min(self.grid) <= 0:
            raise ValueError(f"Rates.grid must hold positive rates, got {self.grid!r}")
        if self.criterion not in gp.CRITERIA and not (self.criterion is None and len(self.grid) == 1):
            raise ValueError(f"Rates.criterion must be one of {gp.CRITERIA} (None only for a fixed rate), got "
                             f"{self.criterion!r}")

    @classmethod
    def tuned(cls, optimizer: str, scale: float = 1.0, **kw) -> "Rates":
        """The optimiser's grid (`GRIDS`) and cap (`CAPS`), both times `scale` (a damped step is that much
        shorter), unless `kw` names them."""
        cap = CAPS.get(optimizer)
        return cls(**{"grid": tuple(lr * scale for lr in GRIDS[optimizer]),
                      "cap": None if cap is None else cap * scale, **kw})

    @classmethod
    def fixed(cls, lr: float, each_seed: bool = False) -> "Rates":
        """One rate, nothing chosen (no criterion)."""
        return cls((lr,), criterion=None, each_seed=each_seed)


@dataclass(frozen=True)
class Arm:
    """One arm: its run at each paired seed (`specs`, in seed order; their rate is replaced by the policy's)."""

    specs: tuple[RunSpec, ...]
    rates: Rates

    def __post_init__(self):
        object.__setattr__(self, "specs", tuple(self.specs))
        if not self.specs:
            raise ValueError("an arm needs its run at one seed at least")


@dataclass(frozen=True)
class Tied:
    """An arm that depends on other arms' results: `arm(results)` builds it from theirs ({label: ArmResult})
    once every label in `needs` has one (None: their results leave it nothing to run)."""

    needs: tuple[str, ...]
    arm: Callable[[dict[str, "ArmResult"]], Arm | None]


@dataclass
class ArmResult:
    """An arm whose rates are chosen and runs recorded: each seed's `Selection` (`selections[0]` is the first
    seed's, the one a reused rate came from) and each seed's record at its rate, failed or not (a seed at a
    fixed rate keeps its failed run; none where every rate failed)."""

    selections: list[gp.Selection]
    records: list[Record]

    @property
    def selection(self) -> gp.Selection:
        return self.selections[0]


def walk_arm(arm: Arm, records_of) -> tuple[list[RunSpec], list[gp.Selection | None], list[Record | None]]:
    """The specs an arm needs so far, each seed's selection (None while undecided) and each seed's record at
    its rate (None while missing, or where no rate is chosen)."""
    r = arm.rates
    first = [gp.rate_grid(s, r.grid[:1])[0] for s in arm.specs]  # each spec at the grid's first rate
    needed, sels = gp.at_chosen_rates(first, r.grid, r.criterion, records_of, each_seed=r.each_seed, cap=r.cap,
                                      extensions=r.extensions)
    if not r.each_seed:
        recs = gp.records_at(first, sels[0], records_of) if sels[0] is not None else []
        return needed, sels, recs or [None] * len(first)
    at = lambda i, s: s.best if s.best is not None or len(r.grid) > 1 else records_of([first[i]])[0]
    return needed, sels, [None if s is None else at(i, s) for i, s in enumerate(sels)]


def walk(arms: Mapping[str, Arm | Tied], records_of) -> tuple[list[RunSpec], dict[str, ArmResult]]:
    """The specs the records ask for next (in arm order, then seed order), and the result of every arm whose
    rates are chosen and runs recorded at every seed. A tied arm waits until the arms it needs, listed before
    it, have results."""
    needed, out = [], {}
    for i, (label, arm) in enumerate(arms.items()):
        if isinstance(arm, Tied):
            if set(arm.needs) - set(list(arms)[:i]):
                raise ValueError(f"tied arm {label!r} needs {sorted(set(arm.needs) - set(list(arms)[:i]))}, which "
                                 f"are not listed before it")
            arm = arm.arm(out) if all(k in out for k in arm.needs) else None
            if arm is None:
                continue
        more, sels, recs = walk_arm(arm, records_of)
        needed += more
        if all(s is not None for s in sels):
            out[label] = ArmResult(list(sels), [r for r in recs if r is not None])
    return needed, out


@dataclass(frozen=True)
class Study:
    """A named experiment: `arms(tier)` -> {label: Arm | Tied} for each tier in `tiers` (name -> the tier's
    settings, passed to `arms`), recorded under results/<topic>/<tier>/. `kind` is what a tier is called in
    its errors (a "setting", say)."""

    topic: str
    tiers: Mapping[str, Any]
    arms: Callable[[Any], Mapping[str, Arm | Tied]]
    kind: str = "tier"

    def tier(self, name: str) -> Any:
        if name not in self.tiers:
            raise ValueError(f"{self.topic}: {self.kind} must be one of {tuple(self.tiers)}, got {name!r}")
        return self.tiers[name]

    def store(self, tier: str):
        """Where a tier's records live: results/<topic>/<tier>/."""
        self.tier(tier)
        return RESULTS / self.topic / tier

    def walk(self, tier: str, records_of, only: str = "") -> tuple[list[RunSpec], dict[str, ArmResult]]:
        """`walk` over the tier's arms (with `only`, those whose label starts with it)."""
        arms = {label: arm for label, arm in self.arms(self.tier(tier)).items() if label.startswith(only)}
        if not arms:
            raise ValueError(f"no arm of {self.topic}/{tier} is labelled {only!r}...; labels: "
                             f"{sorted(self.arms(self.tier(tier)))}")
        return walk(arms, records_of)

    def grid(self, tier: str, store=None, only: str = ""):
        """What a tier's records (in `store`, else its own folder) ask for next, as a sweep's `Grid` (with
        `only`, for the arms whose label starts with it; their records are the tier's)."""
        from ..sweep import Grid, collect

        store = store or self.store(tier)
        needed = self.walk(tier, lambda specs: collect(specs, store), only)[0]
        return Grid(f"{self.topic}/{tier}", tuple(dict.fromkeys(needed)))
