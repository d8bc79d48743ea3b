"""Is it Gauss-Newton, or the paper's right inverse, that generalises poorly? The steps compared, as data.

Three GN steps move a batch's logits by the error to first order (`revgn.train`): the paper's layer-wise
right inverse ("gn"), the Moore-Penrose step of the logits' Jacobian J^+ eps ("gn-mp"), and the Moore-Penrose
step of x_L's Jacobian with target eps R^T ("gn-mp", output "body": what each layer-wise block is
minimum-norm for, solved for all blocks at once). Adam and SGD are the anchors. At each setting every method
gets a rate from a bracketed grid on validation accuracy, on seed 0, reused for the other seeds
(`gn_protocol.at_chosen_rates`); all share the data split, subset, initial weights and batch order per seed.
The logits' Moore-Penrose step is solved directly (J J^T formed from the RevMLP's per-half-layer factors,
Cholesky: C backward passes, where CG needed hundreds of jvp/vjp pairs), x_L's by CG; either way a step must reach
a true relative residual of 1e-7 (10 x cg_rtol). Runs are float64, so that CG reaches its tolerance (in float32 its
true residual stalls near 1e-5). A `Flow` record is keyed by the keys of the runs it makes, so it names the
solver of each step it compares. `grid(setting)` is
the sweep (`python -m revgn.sweep revgn.experiments.right_inverse:mnist`), recorded under
results/right_inverse/<setting>/; `walk` reads it.

`Flow` measures Theorem 4.3 itself: from one initial network, each GN step trains one fixed batch for the
same time t = alpha k at shrinking rates alpha, and the methods' outputs are compared on that batch and on
held-out images (`python -m revgn.experiments.right_inverse flow mnist`, recorded per seed as a measurement
record keyed by its setting, `revgn.records.save_measurement`, under results/right_inverse/flow/<dataset>/;
`flow_summary` reads it).
"""
from __future__ import annotations

import argparse
import itertools
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch

from .. import runs
from ..records import RESULTS, Measurement, load_measurement, save_measurement
from ..spec import DataSpec, ModelSpec, OptimSpec, RunSpec
from ..stats import Paired, paired
from ..sweep import Grid
from . import gn_protocol as gp
from .study import Arm, Rates, Study, walk_arm

METHODS = {  # label -> the optimiser (its lr is replaced by the grid's)
    "layer-wise GN": OptimSpec("gn", 1.0),
    "Moore-Penrose GN (logits)": OptimSpec("gn-mp", 1.0, cg_rtol=1e-8, solver="gram"),
    "Moore-Penrose GN (x_L)": OptimSpec("gn-mp", 1.0, output="body", cg_rtol=1e-8),
    "Adam": OptimSpec("adam", 1e-3),
    "SGD": OptimSpec("sgd", 0.1),
}
SEEDS = (0, 1, 2, 3, 4)


def base(dataset: str) -> RunSpec:
    """The setting: N = 2,000 training images (500 more for validation), h = 256, n = 64, 6 epochs."""
    return RunSpec(DataSpec(dataset, n_train=2000, n_val=500, dtype="float64"), ModelSpec(depth=2, hidden=256),
                   OptimSpec("adam"), loss="ce", batch_size=64, epochs=6, evaluate=("val", "test"),
                   track_batch_change=True, measure=("ntk_distance",), kernel_inputs=8)


SETTINGS = {"mnist": base("mnist"), "cifar10-subset": base("cifar10-subset")}


def arms(base: RunSpec) -> dict[str, Arm]:
    """Every method at the setting's seeds, its rate tuned from its optimiser's grid (and cap) on seed 0."""
    return {label: Arm(gp.at_seeds(base.replace(optimizer=opt), SEEDS), Rates.tuned(opt.name))
            for label, opt in METHODS.items()}


STUDY = Study("right_inverse", SETTINGS, arms, kind="setting")
#: `walk(setting, records_of)` -> (the specs the records ask for next, {method: `study.ArmResult`} of every
#: method recorded at every seed); `grid(setting)` the sweep; `store_of(setting)` its folder
store_of, walk, grid = STUDY.store, STUDY.walk, STUDY.grid


def progress(setting: str, label: str, records_of) -> tuple[dict[float, float | None], gp.Selection | None, int]:
    """Where a method's sweep stands: {rate: seed 0's validation accuracy, None while that run is not recorded,
    -inf if it failed} over the rates asked for so far; seed 0's selection (None while the rate is not chosen;
    its `describe()` says whether the choice is at the cap); and how many seeds are recorded at the chosen rate."""
    more, sels, recs = walk_arm(arms(STUDY.tier(setting))[label], records_of)
    first = [s for s in more if s.seed == SEEDS[0]]
    scores = {s.optimizer.lr: None if r is None else gp.score(r, "val_acc") for s, r in zip(first, records_of(first))}
    return scores, sels[0], 0 if sels[0] is None else sum(r is not None for r in recs)


def complete(done: dict, label: str) -> bool:
    """Whether method `label` of a `walk` result has its rate chosen and its runs recorded at every seed, none failed."""
    return label in done and bool(done[label].records) and all(r.ok for r in done[label].records)


def solver_agreement(done: dict, records_of, label: str = "Moore-Penrose GN (logits)") -> dict | None:
    """The direct and the CG solve of the same Moore-Penrose step, compared run by run: for each of `label`'s
    runs in `done` (a `walk` result) whose twin with solver="cg" is recorded too, the largest |difference| of
    test accuracy and the largest relative difference of final training loss. {"runs", "test_acc", "train_loss"};
    None when no twin is recorded. Both solve the same system to within 1e-7, so the runs should agree."""
    if label not in done:
        return None
    pairs = [(r, twin) for r in done[label].records
             for twin in records_of([r.spec.replace(**{"optimizer.solver": "cg"})]) if twin is not None and r.ok and twin.ok]
    if not pairs:
        return None
    return {"runs": len(pairs),
            "test_acc": max(abs(a.metrics["test_acc"] - b.metrics["test_acc"]) for a, b in pairs),
            "train_loss": max(abs(a.metrics["train_loss"] / b.metrics["train_loss"] - 1) for a, b in pairs)}


EQUIVALENCE = 0.01  # test accuracy: a paired 95% interval inside +-1 point counts as "alike"


@dataclass(frozen=True)
class Answer:
    """The chapter's verdict: "a" (all right inverses generalise alike), "b" (the minimum-norm step generalises
    differently) or "c" (inconclusive), from `comparisons`: each Moore-Penrose step's test accuracy minus the
    layer-wise step's, paired over seeds."""

    letter: str
    comparisons: dict[str, Paired]

    @property
    def margin_for_a(self) -> float:
        """The smallest equivalence margin at which the intervals give (a): the farthest end of any of them from 0
        (how close the answer is to "alike", whatever the letter; the seed counts permitting)."""
        return max(max(abs(c.lo), abs(c.hi)) for c in self.comparisons.values())


def which_inverse(done: dict, margin: float = EQUIVALENCE) -> Answer | None:
    """(a) when every Moore-Penrose step's paired difference from the layer-wise step has MIN_SEEDS pairs and a
    95% interval inside +-margin (an equivalence test at that level: a difference that small counts as alike,
    detectable or not); else (b) when some difference gets a verdict by the book's rule (`revgn.stats.verdict`:
    MIN_SEEDS pairs, an interval that excludes 0); else (c). None while a GN step is not recorded at every seed
    (or a compared run failed)."""
    from ..stats import MIN_SEEDS

    if not all(complete(done, label) for label in GN_METHODS):
        return None
    base = done[GN_METHODS[0]].records
    comps = {label: gp.compare(done[label].records, base) for label in GN_METHODS[1:]}
    if all(c.n >= MIN_SEEDS and -margin < c.lo and c.hi < margin for c in comps.values()):
        return Answer("a", comps)
    if any(c.verdict.decided for c in comps.values()):
        return Answer("b", comps)
    return Answer("c", comps)


def mnist(store=None) -> Grid:
    return grid("mnist", store)


def cifar(store=None) -> Grid:
    return grid("cifar10-subset", store)


GRIDS = {"mnist": mnist, "cifar10-subset": cifar}  # setting -> its sweep grid


def sweep_command(setting: str) -> str:
    """The command that records (and resumes) a setting's runs."""
    store_of(setting)
    return f"python -m revgn.sweep revgn.experiments.right_inverse:{GRIDS[setting].__name__}"


# ------------------------------------------------------------------------- Theorem 4.3, measured

GN_METHODS = tuple(label for label, opt in METHODS.items() if opt.name in ("gn", "gn-mp"))
PAIRS = tuple(itertools.combinations(GN_METHODS, 2))
INPUTS = ("batch", "held-out")


@dataclass(frozen=True)
class Flow:
    """Theorem 4.3 measured on one batch. From the same initial network (per seed), each GN method takes
    k = time / alpha steps of rate alpha on one fixed batch of `batch` training images (full-batch training of
    that batch), for each alpha in `alphas`; the logits are then compared on the batch and on `held_out`
    images the steps never see. Every right inverse gives the same continuous-time flow of the batch's error
    (eq-gn-flow), so on the batch two methods differ by O(alpha); off the batch the flows themselves differ,
    by how J_held-out J^{-|} spreads the step, and the theorem predicts nothing."""

    dataset: str = "mnist"
    hidden: int = 256
    batch: int = 64
    held_out: int = 500
    time: float = 1.0
    alphas: tuple[float, ...] = (1.0, 0.5, 0.25, 0.125, 0.0625)
    seeds: tuple[int, ...] = SEEDS

    def __post_init__(self):
        object.__setattr__(self, "alphas", tuple(float(a) for a in self.alphas))
        object.__setattr__(self, "seeds", tuple(self.seeds))
        for a in self.alphas:
            if not (a > 0 and abs(self.time / a - round(self.time / a)) < 1e-9):
                raise ValueError(f"Flow.alphas: every rate must divide time={self.time} into whole steps, got {a}")

    def spec(self, label: str, alpha: float, seed: int) -> RunSpec:
        """The run of one method at one rate: round(time / alpha) epochs of the single batch."""
        steps = round(self.time / alpha)
        base = RunSpec(DataSpec(self.dataset, n_train=self.batch, n_val=self.held_out, dtype="float64"),
                       ModelSpec(depth=2, hidden=self.hidden), replace(METHODS[label], lr=alpha), loss="ce",
                       batch_size=self.batch, epochs=steps, eval_every=steps, evaluate=("val",),
                       eval_train_size=self.batch)
        return gp.at_seeds(base, [seed])[0]

    def setting(self, seed: int) -> dict:
        """What decides the numbers of one seed's measurement, its record's key (`revgn.records.measurement_key`):
        the flow's fields, the seed, and the keys of the runs it makes, so that a change of what a method runs
        (its optimiser's solver, say) is another measurement, never a silent change of this one."""
        keys = [self.spec(label, alpha, seed).key for label in GN_METHODS for alpha in self.alphas]
        return {**{k: v for k, v in asdict(self).items() if k != "seeds"}, "seed": seed, "runs": keys}


FLOWS = {"mnist": Flow("mnist"), "cifar10-subset": Flow("cifar10-subset")}


def flow_store(flow: Flow, store: str | Path | None = None) -> Path:
    """Where `flow`'s records live: one measurement record ("flow") per seed, keyed by its setting and seed."""
    return Path(store or RESULTS / "right_inverse" / "flow" / flow.dataset)


def flow_seed(flow: Flow, seed: int) -> dict:
    """One seed of `flow`: for each input set, each pair of methods and each alpha, the distance of their
    logits ||f_A - f_B||_F relative to how far the layer-wise step moved them, ||f_lw - f_0||_F; and each
    method's own move ||f - f_0||_F and the batch error's decay ||eps_T|| / ||eps_0||."""
    from ..losses import get_loss

    sets = runs.splits_of(flow.spec(GN_METHODS[0], flow.alphas[0], seed).data)
    inputs = {"batch": sets["train"], "held-out": sets["val"]}
    loss = get_loss("ce")
    out = {"distance": {i: {" vs ".join(p): [] for p in PAIRS} for i in INPUTS},
           "moved": {i: {m: [] for m in GN_METHODS} for i in INPUTS}, "error_decay": {m: [] for m in GN_METHODS}}
    for alpha in flow.alphas:
        final, start = {}, None
        for label in GN_METHODS:
            spec = flow.spec(label, alpha, seed)
            rec = runs.run(spec)
            if not rec.ok:
                raise RuntimeError(f"{label} at alpha={alpha}, seed {seed} failed: {rec.failure}")
            if start is None:
                init = spec.model.build(sets["train"].x.shape[1], sets["train"].num_classes, torch.float64)
                with torch.no_grad():
                    start = {i: init(ds.x) for i, ds in inputs.items()}
            with torch.no_grad():
                final[label] = {i: rec.model(ds.x) for i, ds in inputs.items()}
            batch = inputs["batch"]
            with torch.no_grad():
                e0, eT = (loss.error(f, batch.y).norm() for f in (start["batch"], final[label]["batch"]))
            out["error_decay"][label].append(float(eT / e0))
        for i in INPUTS:
            scale = (final[GN_METHODS[0]][i] - start[i]).norm()
            for m in GN_METHODS:
                out["moved"][i][m].append(float((final[m][i] - start[i]).norm()))
            for a, b in PAIRS:
                out["distance"][i][f"{a} vs {b}"].append(float((final[a][i] - final[b][i]).norm() / scale))
    return out


def measure_flow(setting: dict) -> dict:
    """The flow measurement of one seed from its record's setting (`Flow.setting`): `flow_seed` as a function
    of the setting alone, the function a flow record names as its `measured_by`."""
    rest = {k: v for k, v in setting.items() if k not in ("seed", "runs")}
    flow, seed = Flow(**rest, seeds=(setting["seed"],)), setting["seed"]
    if flow.setting(seed)["runs"] != setting["runs"]:
        raise ValueError(f"flow setting of seed {seed}: its runs are not the ones this code's methods make (a "
                         "method's optimiser has changed since), so this code cannot measure it")
    return flow_seed(flow, seed)


#: how a flow record names `measure_flow` (the module's own name, also when it runs as `python -m`)
MEASURED_BY = "revgn.experiments.right_inverse:measure_flow"


def record_flow(flow: Flow, seeds=None, store: str | Path | None = None) -> list[Path]:
    """Compute and record every seed of `flow` (or of `seeds`) not yet recorded; each seed's record is written
    atomically when it is complete, so an interrupted run resumes at the first missing seed."""
    written = []
    for seed in flow.seeds if seeds is None else seeds:
        setting = flow.setting(seed)
        if load_measurement(flow_store(flow, store), "flow", setting) is None:
            written.append(save_measurement(flow_store(flow, store), "flow", setting, measure_flow(setting),
                                            MEASURED_BY))
    return written


def flow_records(flow: Flow, store: str | Path | None = None) -> list[Measurement]:
    """The recorded seeds of `flow` in seed order, as measurement records (missing seeds are skipped)."""
    recs = (load_measurement(flow_store(flow, store), "flow", flow.setting(seed)) for seed in flow.seeds)
    return [rec for rec in recs if rec is not None]


def load_flow(flow: Flow, store: str | Path | None = None) -> list[dict]:
    """The recorded seeds of `flow` in seed order (missing seeds are skipped), each {"seed", "provenance" and
    the measured "distance", "moved", "error_decay"}."""
    return [{"seed": r.setting["seed"], **r.result, "provenance": r.provenance} for r in flow_records(flow, store)]


@dataclass(frozen=True)
class Slope:
    """The exponent s of distance ~ alpha^s, fitted per seed (least squares in log-log), over seeds."""

    interval: Paired
    per_seed: tuple[float, ...]
    at_smallest: float  # the mean relative distance at the smallest alpha
    tail: Paired  # the exponent between the two smallest alphas alone (closest to the alpha -> 0 limit)

    @property
    def vanishes(self) -> bool | None:
        """True when s > 1/2 (the distance shrinks at least like sqrt(alpha)), False when s < 1/2, None when
        the interval straddles 1/2 or has fewer than the verdict's seeds."""
        from ..stats import MIN_SEEDS

        c = self.interval
        if c.n < MIN_SEEDS:
            return None
        return True if c.lo > 0.5 else False if c.hi < 0.5 else None


def flow_summary(flow: Flow, recs: list[dict]) -> dict[str, dict[str, Slope]]:
    """{input set: {pair: Slope}} from the records of `load_flow`."""
    x = np.log(np.array(flow.alphas))
    out = {}
    for i in INPUTS:
        out[i] = {}
        for pair in (" vs ".join(p) for p in PAIRS):
            d = np.array([r["distance"][i][pair] for r in recs])
            slopes = tuple(float(np.polyfit(x, np.log(row), 1)[0]) for row in d)
            tail = (np.log(d[:, -2]) - np.log(d[:, -1])) / (x[-2] - x[-1])
            zeros = np.zeros(len(slopes))
            out[i][pair] = Slope(paired(slopes, zeros), slopes, float(d[:, -1].mean()), paired(tail, zeros))
    return out


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m revgn.experiments.right_inverse",
                                     description="Record Theorem 4.3's flow comparison (`Flow`), seed by seed.")
    parser.add_argument("what", choices=["flow"])
    parser.add_argument("dataset", choices=sorted(FLOWS))
    parser.add_argument("--seeds", type=int, nargs="*", help="only these seeds (default: the Flow's)")
    args = parser.parse_args(argv)
    for path in record_flow(FLOWS[args.dataset], args.seeds):
        print(f"recorded {path}")


if __name__ == "__main__":
    main()
