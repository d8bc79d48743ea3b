"""The paper's own MNIST mini-batch experiment (Buffelli et al. 2024, Sec. 5), at its scale, as run specs.

Full MNIST (55,000 training, 5,000 validation and the 10,000 test images), a RevMLP of 2 blocks with the
paper's inverted bottleneck h = 8000 and init (trained W ~ N(0, 1e-6), V ~ N(0, 1/h)), batches of n = 1024,
100 epochs with no early stopping and no schedule, cross-entropy, at the paper's rates: GN 0.1, SGD 0.1,
Adam 1e-4. Every epoch records the training loss and accuracy on a fixed subset of the training images
(`EVAL_TRAIN`), the validation and test loss and accuracy, the paper's NTK probe similarity of x_L, the
empirical-NTK kernel distance of the logits on a few training images, linear CKA of each block's output
to init, and the smallest weight cosine to init; every step records its batch's loss before and after the
update. The three methods share the data, the initial weights and the batch order at each seed (paired).

    python -m revgn.sweep revgn.experiments.paper_mnist:paper_rates --workers 2     # here, two processes
    python -m revgn.sweep revgn.experiments.paper_mnist:paper_rates --device cuda --workers 1

Records land under results/paper_mnist/paper_rates/. The grid lists seeds in order (every method at seed 0,
then seed 1, ...), so a sweep that is stopped part-way has complete paired seeds first.

`tuned` is the same protocol at h = 2048 with each method's rate chosen rather than the paper's: GN and Adam
each from a bracketed grid on seed 0, by the peak of each run's whole validation curve (never a stopping
epoch), then seeds 1-4 at the chosen rate; where GN's choice is its cap of 2, one seed-0 run at 3 shows
whether the cap binds (results/paper_mnist/tuned/).
"""
from __future__ import annotations

from dataclasses import dataclass

from ..records import RESULTS, Record
from ..spec import DataSpec, ModelSpec, OptimSpec, RunSpec
from ..stats import MIN_SEEDS, Paired, paired, verdict
from ..sweep import Grid
from . import gn_protocol as gp
from .study import GN_CAP, Arm, Rates, walk_arm

#: the paper's MNIST mini-batch rates (papers.md, "Settings")
PAPER_RATES = {"gn": 0.1, "sgd": 0.1, "adam": 1e-4}
#: Exact GN refuses features it cannot resolve. Under the default rule, "matrix_rank" (s_min <= max(n, h) eps
#: s_max, 9.5e-4 s_max in float32 at h = 8000), the paper's run is refused at step 47 of epoch 1 (seed 0,
#: recorded: `refused_by_matrix_rank`), where s_min/s_max = 6.6e-4; yet those float32 features are full rank
#: by some 300 times their own rounding (Weyl's bound, 10 eps ||A||_F ~ 2e-6 s_max). The paper's code inverts
#: them (its pseudo-inverse truncates only below an absolute 1e-7). The GN arm therefore uses the rule
#: "rounding" (`revgn.pinv.rounding_threshold`): the same exact step, refused only below the features' precision.
RANK_RULE = {"gn": "rounding"}
METHODS = tuple(PAPER_RATES)
NAMES = {"gn": "GN", "sgd": "SGD", "adam": "Adam"}  # as the prose writes them
SEEDS = (0, 1, 2, 3, 4)  # the paper uses three; five make a verdict under the book's rule
EPOCHS = 100
EVAL_TRAIN = 10_000  # training images evaluated every epoch (the first of the fixed training split)
MEASURES = ("ntk_similarity", "ntk_distance", "cka", "weight_cosine")

BASE = RunSpec(DataSpec("mnist", n_train=55_000, n_val=5_000, n_test=None),
               ModelSpec(depth=2, hidden=8000, init_std=1e-3), OptimSpec("gn", PAPER_RATES["gn"]), loss="ce",
               batch_size=1024, epochs=EPOCHS, eval_train_size=EVAL_TRAIN, evaluate=("val", "test"),
               track_batch_change=True, measure=MEASURES, kernel_inputs=8, cka_inputs=1000)


def spec(method: str, seed: int, base: RunSpec = BASE) -> RunSpec:
    """The run of `method` ("gn", "sgd", "adam") at the paper's rate and `seed` (weights and batch order)."""
    if method not in PAPER_RATES:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    opt = OptimSpec(method, PAPER_RATES[method], **({"rank_rule": RANK_RULE[method]} if method in RANK_RULE else {}))
    return gp.at_seeds(base.replace(optimizer=opt), [seed])[0]


def refused_by_matrix_rank() -> RunSpec:
    """GN seed 0 under the default rank rule: recorded as refused at epoch 1 (kept as the finding it is)."""
    return gp.at_seeds(BASE, [0])[0]


#: the tuned tier: starting grids (bracketed by `gn_protocol.tuning`), GN's cap, the rate that probes it
TUNED_HIDDEN = 2048
TUNED_LRS = {"gn": (0.3, 1.0), "adam": (1e-4, 3e-4, 1e-3)}
CAP, BEYOND_CAP = {"gn": GN_CAP}, 3.0


def tuned_arms() -> dict[str, Arm]:
    """The tuned tier's arms: GN and Adam at h = 2048, each rate chosen on seed 0 by its validation peak."""
    base = BASE.replace(**{"model.hidden": TUNED_HIDDEN})
    return {m: Arm([spec(m, s, base) for s in SEEDS], Rates(TUNED_LRS[m], "peak_val_acc", cap=CAP.get(m)))
            for m in ("gn", "adam")}


def tuned_walk(records_of) -> tuple[list[RunSpec], dict[str, list], dict[str, list]]:
    """The tuned tier's specs needed so far and, per method, its per-seed `Selection`s and its records at the
    chosen rate (each None while missing). records_of(specs) -> records or None, as in `gn_protocol.tuning`."""
    needed, chosen, recs = [], {}, {}
    for method, arm in tuned_arms().items():
        more, chosen[method], recs[method] = walk_arm(arm, records_of)
        needed += more
        if chosen[method][0] is not None and chosen[method][0].capped:  # does the cap bind? one run past it
            needed += gp.rate_grid(arm.specs[0], [BEYOND_CAP])
    # The sweep dispatches in this order. A choice gates the runs at its rate, so the runs that make choices
    # (seed 0's) go first, and no worker waits on one method's choice while another's seeds run; then seed by
    # seed, GN beside Adam, so that a paired seed (the unit of a verdict) lands every two runs.
    needed.sort(key=lambda s: SEEDS.index(s.seed))
    return needed, chosen, recs


def tuned(store=None) -> Grid:
    """The tuned tier's runs that its records ask for next (the grid grows as rates are chosen)."""
    from ..sweep import collect

    store = store or store_of("tuned")
    return Grid("paper_mnist/tuned", tuple(dict.fromkeys(tuned_walk(lambda specs: collect(specs, store))[0])))


@dataclass(frozen=True)
class Tuned:
    """The tuned tier as far as it is recorded. Per method: `chosen`, the seed-0 rate choice (None while its
    grid is not all recorded); `records`, its run at that rate at each seed of SEEDS (None where missing);
    `grid`, seed 0's run at each rate tried ({lr: record}, the curves the choice was made on). `beyond_cap`:
    GN's seed-0 run at BEYOND_CAP where its choice is the cap (None when not asked for or not recorded).
    `pending`: per method not chosen yet, the seed-0 rates its choice still waits for (a grid's first rates, or
    the rate past a best edge that brackets it), ascending."""

    chosen: dict[str, gp.Selection | None]
    records: dict[str, list]
    grid: dict[str, dict[float, Record]]
    beyond_cap: Record | None
    pending: dict[str, tuple[float, ...]]

    @property
    def runs(self) -> dict[str, list]:
        """The paired unit of `findings`: each method's finished runs at the seeds where both finished."""
        return paired_runs(self.records)

    def next_at(self, method: str) -> str:
        """"; next at 0.003, 0.01" for the seed-0 rates `method`'s choice still waits for ("" for none)."""
        rates = self.pending.get(method, ())
        return f"; next at {', '.join(f'{lr:g}' for lr in rates)}" if rates else ""

    def every(self) -> list[Record]:
        """Every record of the tier read so far, each once: the grids, the chosen rates' seeds, the cap probe."""
        recs = [r for rs in self.records.values() for r in rs] + [r for g in self.grid.values() for r in g.values()]
        return list({r.spec.key: r for r in recs + [self.beyond_cap] if r is not None}.values())


def tuned_recorded(store=None) -> Tuned:
    """Read the tuned tier's records (default: results/paper_mnist/tuned/)."""
    from ..sweep import collect

    store = store_of("tuned") if store is None else store
    records_of = lambda specs: collect(specs, store)
    needed, chosen, recs = tuned_walk(records_of)
    grid, beyond, pending = {}, None, {}
    for method, arm in tuned_arms().items():
        lrs = {*TUNED_LRS[method], *(chosen[method][0].scores if chosen[method][0] else ()),
               *(s.optimizer.lr for s in needed if s.optimizer.name == method and s.seed == arm.specs[0].seed)}
        tried = gp.rate_grid(arm.specs[0], sorted(lrs - {BEYOND_CAP}))
        recorded = records_of(tried)
        grid[method] = {s.optimizer.lr: r for s, r in zip(tried, recorded) if r is not None}
        if chosen[method][0] is None:
            pending[method] = tuple(s.optimizer.lr for s, r in zip(tried, recorded) if r is None)
        elif chosen[method][0].capped:
            beyond = records_of(gp.rate_grid(arm.specs[0], [BEYOND_CAP]))[0]
    return Tuned({m: c[0] for m, c in chosen.items()}, recs, grid, beyond, pending)


def store_of(name: str = "paper_rates"):
    return RESULTS / "paper_mnist" / name


def paper_rates(store=None) -> Grid:
    """Every method at the paper's rate, seed by seed: 15 runs of 100 epochs (and the refused default-rule run)."""
    return Grid("paper_mnist/paper_rates",
                (refused_by_matrix_rank(), *(spec(m, s) for s in SEEDS for m in METHODS)))


# --- reading the paper-rate tier: the paper's mini-batch claims as paired verdicts, at both endpoints ---

#: the paper's mini-batch claims (Buffelli et al. Sec. 5; `../shared/reference/papers.md`, "Claims and figures")
PAPER_SAYS = {
    "saturates": "GN makes fast early progress, then saturates, on training loss too",
    "train_loss": "Adam ends lower on training loss",
    "test_loss": "Adam ends lower on test loss",
    "test_acc": "Adam generalises better (the paper's conclusion)",
    "batch_fit": "GN's step removes much more of its own mini-batch's loss, yet the epoch loss stalls",
    "lazy": "NTK similarity and CKA to init stay near 1 for GN (and SGD) but drop for Adam",
}
#: saturation: the training loss fell by less than SATURATED over the last SATURATION_EPOCHS epochs
SATURATION_EPOCHS, SATURATED = 10, 0.10
#: the laziness measures compared (higher: closer to init)
LAZY_MEASURES = {"ntk_similarity": "NTK similarity", "cka_block1": "CKA, block 1", "cka_block2": "CKA, block 2"}


def recorded(store=None) -> dict[str, list]:
    """Per method, its records at the paper's rate for each seed of SEEDS (None where not recorded yet)."""
    from ..sweep import collect

    store = store_of() if store is None else store
    return {m: collect([spec(m, s) for s in SEEDS], store) for m in METHODS}


def paired_runs(recs: dict[str, list]) -> dict[str, list]:
    """The finished runs of the seeds at which every method of `recs` ({method: a record or None per seed of
    SEEDS}) has one, per method, in seed order: the unit of a paired comparison."""
    done = [i for i in range(len(SEEDS)) if all(r[i] is not None and r[i].ok for r in recs.values())]
    return {m: [r[i] for i in done] for m, r in recs.items()}


@dataclass(frozen=True)
class Finding:
    """One claim of the paper against the records: what is compared, the paired comparison (None with no
    paired seed) and the verdict of the book's rule (`revgn.stats.verdict`)."""

    claim: str
    measured: str
    comparison: Paired | None
    verdict: str

    def text(self, scale: float = 100, unit: str = " points") -> str:
        return "no paired seed recorded" if self.comparison is None else self.comparison.text(scale, unit)


def _finding(claim: str, measured: str, a, b, above: str, below: str) -> Finding:
    """a, b: per-seed values (paired); above/below: the verdict when the whole interval of a - b is > 0, < 0."""
    if len(a) == 0:
        return Finding(claim, measured, None, f"no verdict (0 of {MIN_SEEDS} seeds)")
    c = paired(a, b)
    return Finding(claim, measured, c, verdict(c, above=above, below=below))


def findings(runs: dict[str, list], endpoint: str = "end") -> list[Finding]:
    """The paper's mini-batch claims (`PAPER_SAYS`) as paired verdicts over the seeds of `runs` (from
    `paired_runs`: GN, Adam and, where the tier has it, SGD), each run scored at `endpoint` ("end": the last
    epoch, the paper's; "best_val": its own validation peak). Saturation and the per-step batch fit are
    properties of the whole run, the same at both endpoints. Rows about SGD are left out without SGD runs."""
    gn, adam = runs["gn"], runs["adam"]
    others = [m for m in ("sgd", "adam") if m in runs]
    at = lambda recs, key: [gp.at_endpoint(r, key, endpoint) for r in recs]
    fall = [gp.saturation(r, SATURATION_EPOCHS) for r in gn]
    drop = {m: [float(gp.batch_loss_drop(r).mean()) for r in recs] for m, recs in runs.items()}
    out = [
        _finding(PAPER_SAYS["saturates"], f"GN's training-loss fall over its last {SATURATION_EPOCHS} epochs "
                 f"minus {SATURATED:.0%} (points)", fall, [SATURATED] * len(fall), "no: still falling", "yes"),
        _finding(PAPER_SAYS["train_loss"], "training loss, Adam - GN", at(adam, "train_loss"),
                 at(gn, "train_loss"), "no: GN lower", "yes"),
        _finding(PAPER_SAYS["test_loss"], "test loss, Adam - GN", at(adam, "test_loss"), at(gn, "test_loss"),
                 "no: GN lower", "yes"),
        _finding(PAPER_SAYS["test_acc"], "test accuracy, Adam - GN (points)", at(adam, "test_acc"),
                 at(gn, "test_acc"), "yes", "no: GN better"),
    ]
    for other in others:
        out.append(_finding(PAPER_SAYS["batch_fit"], f"mean per-step drop of the batch's own loss, GN - "
                            f"{NAMES[other]} (points of %)", drop["gn"], drop[other], "yes", "no: GN's is smaller"))
    for key, name in LAZY_MEASURES.items():
        out.append(_finding(PAPER_SAYS["lazy"], f"{name} to init, GN - Adam", at(gn, key), at(adam, key),
                            "yes: GN closer to init", "no: Adam closer"))
        if "sgd" in runs:
            out.append(_finding(PAPER_SAYS["lazy"], f"{name} to init, SGD - Adam", at(runs["sgd"], key),
                                at(adam, key), "yes: SGD closer to init", "no: Adam closer"))
    return out
