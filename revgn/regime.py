"""A regime map: where does exact GN generalise worse than a tuned Adam? One grid point, measured honestly.

A `Point` fixes everything about a setting (data, sizes, architecture, pseudo-inverse, epochs, seed).
`measure` trains GN and Adam at every learning rate of their grids on a training split, picks each
optimiser's rate by accuracy on a validation split carved from the training data, and reports the test
numbers of the chosen runs, with:

- saturation: relative improvement of GN's training loss over the last half of training (`gn_experiments.saturation`);
- the NTK kernel distance from init, on a few fixed training inputs (`laziness.ntk_kernel_distance`);
- the per-step batch-loss drop in the first and last epoch (`gn_experiments.batch_loss_drop`).

Everything returned is plain JSON, so that a sweep can record each point with `revgn.runs.recorded`.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from . import data
from . import gn_experiments as gx
from .gn import Pinv, RankDeficientError
from .kernels import kernel_distance
from .laziness import empirical_ntk_by_parameter
from .losses import NonFiniteLossError, get_loss
from .runs import recorded, scratch_for
from .train import Adam, GaussNewton, evaluate

#: the rtol of truncation when a point asks for it (the paper's App. K main setting; atol 1e-5)
TRUNCATION_RTOL = 1e-2


@dataclass(frozen=True)
class Point:
    """One setting of the regime map.

    n_train: training images (a validation split of `n_val` more is drawn from the training data);
    hidden: bottleneck width h; batch: n; pinv: "exact" or "truncate"; first_activation: "relu" or "identity".
    """

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

    @property
    def arch(self) -> gx.Arch:
        return gx.Arch(self.depth, self.hidden, self.init_std, self.first_activation)

    @property
    def gn_pinv(self) -> Pinv:
        return Pinv.truncated(TRUNCATION_RTOL) if self.pinv == "truncate" else Pinv.exact()

    @property
    def constraints_per_parameter(self) -> float:
        """n d / p: equations per GN step (n outputs of width d) per trained parameter (p = L d h): n / (L h)."""
        return self.batch / (self.depth * self.hidden)

    def key(self) -> str:
        """A file name that identifies the point."""
        return "-".join(f"{k}{v}" for k, v in asdict(self).items()).replace("first_activation", "act")


def splits(point: Point, n_val: int, n_test: int | None, device="cpu") -> tuple[data.Dataset, ...]:
    """(train, val, test) for a point: n_train + n_val training images drawn by the point's seed, and n_test test
    images drawn by seed 0 (the same for every point; all of them when n_test is None or exceeds the test set)."""
    full = data.load(point.dataset, "train", n=point.n_train + n_val, seed=point.seed, device=device)
    train_set, val_set = gx.split(full, n_val)
    test_set = data.load(point.dataset, "test", device=device)
    if n_test is not None and n_test < len(test_set):  # else the whole test set
        test_set = data.load(point.dataset, "test", n=n_test, seed=0, device=device)
    return train_set, val_set, test_set


def _heldout_metrics(sets: dict[str, data.Dataset]) -> dict:
    ce = get_loss("ce")
    out = {}
    for name, ds in sets.items():
        out[f"{name}_loss"] = lambda m, ds=ds: evaluate(m, ds.x, ds.y, ce)[0]
        out[f"{name}_acc"] = lambda m, ds=ds: evaluate(m, ds.x, ds.y, ce)[1]
    return out


def _optimiser(name: str, lr: float, point: Point):
    return GaussNewton(lr, point.gn_pinv, seed=point.seed) if name == "gn" else Adam(lr)


def tune(name: str, lrs, point: Point, train_set, val_set, test_set, *, kernel_inputs: torch.Tensor,
         kernel0: torch.Tensor, device="cpu", checkpoints: Path | None = None) -> dict:
    """Train `name` ("gn" or "adam") at each lr; report the run with the best final validation accuracy.

    A run that diverges or meets rank-deficient features is recorded as failed (and cannot be chosen).
    kernel0: the empirical NTK at init on `kernel_inputs`, against which the chosen run's kernel is compared.
    checkpoints: a directory for each run's checkpoint, so that an interrupted run resumes mid-way.
    """
    scores, best, best_model = {}, None, None
    for lr in lrs:
        try:
            hist = gx.run(_optimiser(name, lr, point), lr, point.arch, train_set, None, epochs=point.epochs,
                          batch_size=point.batch, seed=point.seed, device=device, track_batch_change=True,
                          eval_train_size=2000, metrics=_heldout_metrics({"val": val_set, "test": test_set}),
                          checkpoint=None if checkpoints is None else Path(checkpoints) / f"{name}-lr{lr}.ckpt")
        except (NonFiniteLossError, RankDeficientError) as err:
            scores[lr] = type(err).__name__
            continue
        scores[lr] = hist.final("val_acc")
        if best is None or scores[lr] > best.final("val_acc"):
            best, best_model = hist, hist.model
    if best is None:
        return {"lr": None, "val_acc_by_lr": scores}
    drop = gx.batch_loss_drop(best)
    per_epoch = len(drop) // point.epochs
    return {
        "lr": best.config["lr"],
        "val_acc_by_lr": scores,
        **{k: best.final(k) for k in ("train_loss", "train_acc", "val_acc", "test_loss", "test_acc")},
        "saturation": gx.saturation(best, last=max(1, point.epochs // 2)),
        "ntk_distance": kernel_distance(kernel0, empirical_ntk_by_parameter(best_model, kernel_inputs)),
        "batch_drop_first_epoch": float(drop[:per_epoch].mean()),
        "batch_drop_last_epoch": float(drop[-per_epoch:].mean()),
        "curves": {k: best.epochs[k] for k in ("epoch", "train_loss", "test_loss", "test_acc")},
    }


def measure(point: Point, lrs: dict[str, list[float]], *, n_val: int = 1000, n_test: int | None = 2000,
            kernel_size: int = 16, device="cpu", checkpoints: Path | None = None) -> dict:
    """Each optimiser in `lrs` ({"gn": [...], "adam": [...]}) tuned on validation at one point.

    Returns {"point": the settings, "gn": ..., "adam": ..., "gap": GN minus Adam test accuracy (None if either
    is missing or failed at every rate)}. Where GN fails at every rate there is no gap to measure, and the
    other optimisers are skipped.
    """
    train_set, val_set, test_set = splits(point, n_val, n_test, device)
    kernel_inputs = train_set.x[:kernel_size]
    kernel0 = empirical_ntk_by_parameter(point.arch.build(train_set, point.seed, device), kernel_inputs)
    out = {"point": asdict(point)}
    for name, grid in lrs.items():
        if name != "gn" and "gn" in out and out["gn"]["lr"] is None:
            out[name] = {"lr": None, "skipped": "GN failed at every rate"}
            continue
        out[name] = tune(name, grid, point, train_set, val_set, test_set, kernel_inputs=kernel_inputs,
                         kernel0=kernel0, device=device, checkpoints=checkpoints)
    out["gap"] = gap(out, out)
    return out


def gap(gn_record: dict, adam_record: dict) -> float | None:
    """GN's test accuracy minus Adam's (each from a `measure` record), or None where either is unavailable."""
    gn, adam = gn_record.get("gn", {}), adam_record.get("adam", {})
    return gn["test_acc"] - adam["test_acc"] if gn.get("lr") is not None and adam.get("lr") is not None else None


def vary(base: Point, **changes) -> Point:
    """The base point with some settings changed (one factor at a time)."""
    return replace(base, **changes)


def seed_mean(records: list[dict], value) -> float:
    """The mean over records (seeds) of value(record); NaN if any record lacks it (a failed optimiser)."""
    vals = [value(r) for r in records]
    return float(np.mean(vals)) if all(v is not None for v in vals) else float("nan")


def sweep(points: list[Point], lrs: dict[str, list[float]], store=None, progress: bool = False, **kwargs) -> list[dict]:
    """`measure` every point; with `store` (a directory), each point is recorded there as it finishes.

    A stored point with the same configuration is loaded instead of rerun, so an interrupted sweep resumes
    at the first unfinished point (`revgn.runs.recorded`), and within it at the last epoch of the unfinished
    run (checkpoints in the record's scratch folder, `revgn.runs.scratch_for`). kwargs go to `measure`.
    """
    out = []
    for p in tqdm(points, desc="regime map", disable=not progress):
        path = None if store is None else Path(store) / f"{p.key()}.json"
        config = {"point": asdict(p), "lrs": lrs, **{k: v for k, v in kwargs.items() if k != "device"}}
        compute = lambda p=p, path=path: measure(p, lrs, checkpoints=scratch_for(path), **kwargs)
        out.append(recorded(path, config, compute, kwargs.get("device")))
    return out
