"""Exact GN against SGD and Adam on real data (Buffelli et al. 2024, Sec. 5): the experiments' building blocks.

Every run goes through `revgn.train.train` on a float32 `RevMLP` with cross-entropy (GN uses the paper's
identity-Hessian error). Learning rates are chosen on a validation split carved from the training data,
never on the test set.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from .data import Dataset
from .models import RevMLP
from .runs import recorded_run, scratch_for
from .train import SGD, Adam, GaussNewton, History, Optimizer, train

OPTIMISERS: dict[str, Callable[[float], Optimizer]] = {"gn": GaussNewton, "sgd": SGD, "adam": Adam}


@dataclass
class Arch:
    """The RevMLP used: depth, bottleneck width h, init sd of W, first-block activation."""

    depth: int = 2
    hidden: int = 1024
    init_std: float = 1e-3
    first_activation: str = "relu"

    def build(self, data: Dataset, seed: int, device="cpu") -> RevMLP:
        return RevMLP(data.x.shape[1], data.num_classes, depth=self.depth, hidden=self.hidden, init_std=self.init_std,
                      first_activation=self.first_activation, seed=seed, device=device)


def split(data: Dataset, n_val: int) -> tuple[Dataset, Dataset]:
    """The last n_val examples as a validation set, the rest for training."""
    if not 0 < n_val < len(data):
        raise ValueError(f"n_val must be in 1..{len(data) - 1}, got {n_val}")
    cut = len(data) - n_val
    part = lambda sl, name: Dataset(data.name, name, data.x[sl], data.y[sl], data.classes)
    return part(slice(0, cut), "train"), part(slice(cut, None), "val")


def run(optimizer: str | Optimizer, lr: float | None, arch: Arch, train_set: Dataset, eval_set: Dataset | None, *,
        epochs: int, batch_size: int | None, seed: int = 0, device="cpu", track_batch_change: bool = True,
        eval_train_size: int | None = 2000, model=None, history: History | None = None, metrics=None,
        store: str | Path | None = None, checkpoint: str | Path | None = None) -> History:
    """One run: a fresh RevMLP (seeded; or `model`, to continue one) trained by `optimizer`.

    optimizer: a name in OPTIMISERS (then at `lr`) or an Optimizer instance. `eval_set` plays the test set.
    store: a directory; the run is then recorded there (`revgn.runs.recorded_run`) and loaded instead of rerun
    when the same configuration was recorded before. Only fresh runs without metric callbacks can be stored,
    and a stored run's History has no `model`. While it trains, a stored run keeps a checkpoint in its record's
    scratch folder, so that a run interrupted mid-way resumes from its last epoch.
    checkpoint: a file for `revgn.train.train`'s checkpoint (resume an interrupted run).
    """
    opt = OPTIMISERS[optimizer](lr) if isinstance(optimizer, str) else optimizer
    if store is not None:
        if model is not None or history is not None or metrics:
            raise ValueError("only a fresh run without metric callbacks can be stored")
        config = {"optimizer": opt.describe(), "arch": vars(arch), "epochs": epochs, "batch_size": batch_size,
                  "seed": seed, "track_batch_change": track_batch_change, "eval_train_size": eval_train_size,
                  "train": [train_set.name, train_set.split, len(train_set)],
                  "eval": None if eval_set is None else [eval_set.name, eval_set.split, len(eval_set)]}
        digest = hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()[:12]
        path = Path(store) / f"{train_set.name}-{opt.name}-lr{getattr(opt, 'lr', lr)}-seed{seed}-{digest}.json"
        return recorded_run(path, config, lambda: run(opt, lr, arch, train_set, eval_set, epochs=epochs,
                                                       batch_size=batch_size, seed=seed, device=device,
                                                       track_batch_change=track_batch_change,
                                                       eval_train_size=eval_train_size,
                                                       checkpoint=scratch_for(path) / "run.ckpt"), device)
    model = arch.build(train_set, seed, device) if model is None else model
    hist = train(model, opt, train_set, test_set=eval_set, loss="ce", epochs=epochs, batch_size=batch_size, seed=seed,
                 track_batch_change=track_batch_change, eval_train_size=eval_train_size, progress=False,
                 history=history, metrics=metrics, checkpoint=checkpoint)
    hist.config.update({"arch": vars(arch), "lr": lr if lr is not None else getattr(opt, "lr", None),
                        "dataset": train_set.name})
    hist.model = model  # the trained network, for measurements after the run
    return hist


def switched(first: Optimizer, second: Optimizer, switch_epoch: int, arch: Arch, train_set: Dataset,
             eval_set: Dataset, *, epochs: int, **kwargs) -> History:
    """Train with `first` for `switch_epoch` epochs, then continue the same network with `second` (not stored)."""
    kwargs.pop("store", None)
    hist = run(first, None, arch, train_set, eval_set, epochs=switch_epoch, **kwargs)
    return run(second, None, arch, train_set, eval_set, epochs=epochs - switch_epoch, model=hist.model,
               history=hist, **kwargs)


@dataclass
class Selection:
    """The learning rate chosen for one optimiser and the validation scores it was chosen from."""

    lr: float
    scores: dict[float, float] = field(default_factory=dict)


def select_lr(opt_name: str, lrs, arch: Arch, train_set: Dataset, val_set: Dataset, *, criterion: str,
              **kwargs) -> Selection:
    """Train at each lr; keep the best by `criterion`: "val_acc" (highest) or "train_loss" (lowest, full batch).

    A run that diverges (non-finite loss) or is refused (rank-deficient features) scores -inf, and so does a
    non-finite score: such a rate is ranked last wherever it sits in the grid. A grid of one rate is returned
    without training.
    """
    from .gn import RankDeficientError
    from .losses import NonFiniteLossError

    if criterion not in ("val_acc", "train_loss"):
        raise ValueError(f"criterion must be 'val_acc' or 'train_loss', got {criterion!r}")
    if len(lrs) == 1:
        return Selection(lrs[0])
    scores = {}
    for lr in lrs:
        try:
            hist = run(opt_name, lr, arch, train_set, val_set, track_batch_change=False, **kwargs)
            score = hist.final("test_acc") if criterion == "val_acc" else -hist.final("train_loss")
            scores[lr] = score if np.isfinite(score) else -np.inf
        except (NonFiniteLossError, RankDeficientError):
            scores[lr] = -np.inf
    return Selection(max(scores, key=scores.get), scores)  # every score is finite or -inf: no NaN to misrank


def batch_loss_drop(hist: History) -> np.ndarray:
    """Per step: 100 (1 - loss after / loss before) on that step's own batch (%)."""
    before, after = np.array(hist.steps["loss"]), np.array(hist.steps["loss_after"])
    return 100 * (1 - after / before)


def saturation(hist: History, last: int = 3) -> float:
    """Relative improvement of the training loss over the last `last` epochs: (L[-1-last] - L[-1]) / L[-1-last].

    Near 0 means the training loss has stopped improving ("saturated").
    """
    loss = hist.epochs["train_loss"]
    return (loss[-1 - last] - loss[-1]) / loss[-1 - last]
