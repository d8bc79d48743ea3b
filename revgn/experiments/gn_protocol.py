"""The protocol the exact-GN chapters share (Buffelli et al. 2024, Sec. 5), on records of `revgn.runs.run`.

A learning rate is chosen from a grid of run specs by a criterion read from their records: the final
validation accuracy (mini-batch runs, the validation split held out from the training images), the peak of
each run's whole validation curve (fixed-horizon runs: a choice that no stopping epoch decides), or the final
training loss (full-batch runs, a question of optimisation). The test set is never used to choose. A run
that failed (diverged, or features GN cannot invert) ranks below every run that finished.

A finished run is scored at one of two endpoints (`ENDPOINTS`): "end", its last evaluation (the paper's: where
100 epochs of training end), or "best_val", the evaluation where its validation accuracy first peaked (a
checkpoint choice made on validation data, not a stop: the run trained on to its end).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..records import Record
from ..spec import RunSpec
from ..stats import Paired, paired

CRITERIA = ("val_acc", "peak_val_acc", "train_loss")
ENDPOINTS = ("end", "best_val")


def rate_grid(spec: RunSpec, lrs) -> list[RunSpec]:
    """The spec at each learning rate of `lrs`."""
    return [spec.replace(**{"optimizer.lr": float(lr)}) for lr in lrs]


SUBSETS = ("shared", "drawn")


def at_seeds(spec: RunSpec, seeds, subset: str = "shared") -> list[RunSpec]:
    """The spec at each seed. A seed always sets the initial weights, the batch order and any noise of the
    step; compared methods at one seed share all of them (paired seeds). `subset` says what a seed does to the
    training images, a choice of the study: "shared", the spec's own draw at every seed (the variation over
    seeds is the training's alone), or "drawn", each seed draws its own subset (`data.subset_seed`; the
    variation then includes which images were drawn, as the regime map's points have it)."""
    if subset not in SUBSETS:
        raise ValueError(f"subset must be one of {SUBSETS}, got {subset!r}")
    drawn = lambda s: {"data.subset_seed": s} if subset == "drawn" else {}
    return [spec.replace(seed=s, **{"model.seed": s}, **drawn(s)) for s in seeds]


def score(rec: Record, criterion: str | None) -> float:
    """Higher is better: the final validation accuracy, its peak, or minus the final training loss; -inf for a
    failure. criterion None (a fixed rate, where nothing is chosen): 0 for a run that finished."""
    if criterion is not None and criterion not in CRITERIA:
        raise ValueError(f"criterion must be one of {CRITERIA}, got {criterion!r}")
    if not rec.ok:
        return -np.inf
    if criterion is None:
        return 0.0
    value = (rec.metrics["val_acc"] if criterion == "val_acc" else max(rec.history.epochs["val_acc"])
             if criterion == "peak_val_acc" else -rec.metrics["train_loss"])
    return value if np.isfinite(value) else -np.inf


def best_val_index(rec: Record) -> int:
    """The evaluation (index into `history.epochs`) where validation accuracy first reached its peak."""
    if "val_acc" not in rec.history.epochs:
        raise ValueError(f"run {rec.spec.key[:12]} evaluated no validation split: no best validation epoch")
    acc = rec.history.epochs["val_acc"]
    return max(range(len(acc)), key=lambda i: (acc[i], -i))


def at_endpoint(rec: Record, key: str, endpoint: str = "end") -> float:
    """A finished run's metric `key` at an endpoint of `ENDPOINTS`."""
    if endpoint not in ENDPOINTS:
        raise ValueError(f"endpoint must be one of {ENDPOINTS}, got {endpoint!r}")
    if not rec.ok:
        raise ValueError(f"run {rec.spec.key[:12]} failed ({rec.failure}): it has no endpoint")
    return rec.metrics[key] if endpoint == "end" else rec.history.epochs[key][best_val_index(rec)]


@dataclass
class Selection:
    """The record chosen from a rate grid, and every rate's score (failures: -inf)."""

    best: Record | None
    scores: dict[float, float]
    bracketed: bool | None = None  # set by `tuning`: is the chosen rate inside the grid (or at the cap)?
    capped: bool = False  # set by `tuning`: the chosen rate is the grid's cap (bracketed only by the cap)

    @property
    def lr(self) -> float | None:
        return None if self.best is None else self.best.spec.optimizer.lr

    @property
    def runner_up(self) -> float | None:
        """The rate with the next best score (None when no other rate has a finite one)."""
        others = {lr: s for lr, s in self.scores.items() if lr != self.lr and np.isfinite(s)}
        return None if self.best is None or not others else max(others, key=others.get)

    @property
    def margin(self) -> float | None:
        """How far the chosen rate's score is ahead of the runner-up's (validation accuracy: a fraction of the
        validation split), which says how much the choice can turn on noise; None without a runner-up."""
        return None if self.runner_up is None else self.scores[self.lr] - self.scores[self.runner_up]

    def describe(self) -> str:
        """"0.1: 0.931, 0.3: 0.940 (chosen), 1: failed"; a capped or unbracketed choice says so."""
        return ", ".join(f"{lr:.3g}: " + ("failed" if not np.isfinite(s) else f"{abs(s):.3g}")
                         + (" (chosen" + (", at the cap" if self.capped else "")
                            + (", at an edge" if self.bracketed is False else "") + ")" if lr == self.lr else "")
                         for lr, s in sorted(self.scores.items()))


def select(recs: list[Record], criterion: str) -> Selection:
    """The best record of a rate grid by `criterion`; best is None when every rate failed."""
    scores = {r.spec.optimizer.lr: score(r, criterion) for r in recs}
    ok = [r for r in recs if np.isfinite(scores[r.spec.optimizer.lr])]
    best = max(ok, key=lambda r: scores[r.spec.optimizer.lr]) if ok else None  # first of equals: the smaller rate
    return Selection(best, scores)


def batch_loss_drop(rec: Record) -> np.ndarray:
    """Per step: 100 (1 - loss after / loss before) on that step's own batch (%); needs track_batch_change."""
    if "loss_after" not in rec.history.steps:
        raise ValueError(f"run {rec.spec.key[:12]} did not track the batch loss after each step (track_batch_change)")
    before, after = np.array(rec.history.steps["loss"]), np.array(rec.history.steps["loss_after"])
    return 100 * (1 - after / before)


def drop_by_epoch(rec: Record) -> np.ndarray:
    """`batch_loss_drop` averaged over each epoch (one value per epoch)."""
    drop = batch_loss_drop(rec)
    epochs = np.array(rec.history.steps["epoch"])
    return np.array([drop[epochs == e].mean() for e in np.unique(epochs)])


def saturation(rec: Record, last: int = 3) -> float:
    """Relative improvement of the training loss over the last `last` evaluations: (L[-1-last] - L[-1]) / L[-1-last].

    Near 0 means the training loss has stopped improving ("saturated").
    """
    loss = rec.history.epochs["train_loss"]
    if len(loss) <= last:
        raise ValueError(f"saturation over the last {last} evaluations needs more than {last}, the run has {len(loss)}")
    return (loss[-1 - last] - loss[-1]) / loss[-1 - last]


def compare(a: list[Record], b: list[Record], key: str = "test_acc", endpoint: str = "end") -> Paired:
    """The paired comparison of metric `key` at `endpoint` between two lists of records that share their
    seeds, a - b (each run scored at its own endpoint: with "best_val", at its own validation peak)."""
    sa, sb = [r.spec.seed for r in a], [r.spec.seed for r in b]
    if sa != sb:
        raise ValueError(f"paired records must share their seeds in order: {sa} vs {sb}")
    if not all(r.ok for r in a + b):
        raise ValueError("a compared run failed: there is no value to pair")
    return paired([at_endpoint(r, key, endpoint) for r in a], [at_endpoint(r, key, endpoint) for r in b])


def tuning(spec: RunSpec, lrs, criterion: str, records_of, *, cap: float | None = None,
           extensions: int = 3) -> tuple[list[RunSpec], Selection | None]:
    """Walk a bracketed rate grid as far as the records decide it: the specs needed so far, and the selection
    (None while some of them has no record).

    Start from the rates `lrs`; while the best rate sits at an edge of the grid, add the next rate beyond that
    edge (a factor 3 on, not past `cap`), at most `extensions` times. records_of(specs) returns each spec's
    Record, or None where it has not been run: a `revgn.runs.Runs`' `all` (which runs them), or
    `revgn.sweep.collect` on a store (so a sweep can list what the walk needs next). The selection says whether
    the chosen rate is bracketed (interior, or at the cap: `Selection.capped`).
    """
    lrs = sorted(float(lr) for lr in lrs)
    for extension in range(extensions + 1):
        specs = rate_grid(spec, lrs)
        recs = records_of(specs)
        if any(r is None for r in recs):
            return specs, None
        sel = select(recs, criterion)
        i = None if sel.best is None else lrs.index(sel.lr)
        sel.capped = cap is not None and i == len(lrs) - 1 and lrs[-1] >= cap
        # a single rate is a fixed rate, not a grid: there is nothing to bracket (None)
        sel.bracketed = None if len(lrs) == 1 else i is not None and (0 < i < len(lrs) - 1 or sel.capped)
        if i is None or sel.bracketed or len(lrs) == 1 or extension == extensions:
            return specs, sel
        if i == 0:
            lrs.insert(0, lrs[0] / 3)
        else:
            lrs.append(lrs[-1] * 3 if cap is None else min(lrs[-1] * 3, cap))
    raise AssertionError("unreachable")


def at_chosen_rates(specs: list[RunSpec], lrs, criterion: str, records_of, *, each_seed: bool = True,
                    cap: float | None = None, extensions: int = 3) -> tuple[list[RunSpec], list[Selection | None]]:
    """Rates for one setting at several seeds (`specs`, one per seed): chosen by `tuning` at every seed, or
    (each_seed=False) on the first seed, whose chosen rate then trains the others. Returns the specs needed so
    far and each seed's selection (None while its records are missing; a reused rate keeps the first seed's
    `bracketed` and `capped`, and a seed whose reused run failed has no best record)."""
    walks = [tuning(s, lrs, criterion, records_of, cap=cap, extensions=extensions) for s in
             (specs if each_seed else specs[:1])]
    needed, selections = [sp for w in walks for sp in w[0]], [w[1] for w in walks]
    first = selections[0]
    for spec in [] if each_seed else specs[1:]:
        if first is None or first.best is None:  # not chosen yet, or every rate failed: nothing to rerun
            selections.append(None if first is None else Selection(None, {}, first.bracketed, first.capped))
            continue
        spec = rate_grid(spec, [first.lr])[0]
        rec = records_of([spec])[0]
        needed.append(spec)
        selections.append(None if rec is None else Selection(rec if rec.ok else None, {first.lr: score(rec, criterion)},
                                                             first.bracketed, first.capped))
    return needed, selections


def records_at(specs: list[RunSpec], first: Selection, records_of) -> list[Record]:
    """Each seed's record at the rate chosen on the first seed (failed or not; none if every rate failed)."""
    return [] if first.best is None else records_of([rate_grid(s, [first.lr])[0] for s in specs])

