"""Running a run: `run(spec, store)` trains what a `RunSpec` describes, or loads its record.

For example::

    spec = RunSpec(DataSpec("mnist", n_train=4000, n_val=1000), ModelSpec(hidden=512), OptimSpec("gn", 0.3),
                   batch_size=128, epochs=6)
    rec = run(spec, RESULTS / "my_topic")      # trains, or loads results/my_topic/<spec.key>.json
    rec.metrics["val_acc"], rec.history.epochs["test_acc"], rec.provenance["commit"]

The spec (schema, validation, key) is `revgn.spec`; the record and its store, `revgn.records`; this module
only executes: it builds the data, model and optimisers a spec names, trains them with `revgn.train.train`
under the run's lock with a checkpoint per phase, and writes the record once the run ends. A run that fails
for a reason of the method (a non-finite loss, features GN cannot invert) is recorded as a failure, so a sweep
does not retry it and a table can say so. Sweeps (`revgn.sweep`) are lists of specs dispatched through
submitit. The spec and record types are re-exported here, so `from revgn.runs import RunSpec, Runs` is the
one import a chapter needs.
"""
from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import torch

from .fingerprint import current as current_fingerprint
from .history import History
from .records import (RESULTS, Record, RunInProgressError, StaleRecordError, exclusive, provenance, record_path,
                      records, scratch_for, staleness)
from .solvers import StepRefused
from .spec import ADDED, MEASURES, SCHEMA, DataSpec, ModelSpec, OptimSpec, RunSpec
from .utils import atomic_write_json, run_metadata

__all__ = ["ADDED", "MEASURES", "RESULTS", "SCHEMA", "DataSpec", "ModelSpec", "OptimSpec", "Record",
           "RunInProgressError", "RunSpec", "Runs", "StaleRecordError", "exclusive", "provenance", "record_path",
           "records", "run", "scratch_for", "splits_of", "staleness"]


def splits_of(spec: DataSpec, device="cpu") -> dict[str, Any]:
    """{"train", "val", "test"} Datasets of a data spec (val is None when n_val is 0).

    The training and validation images are one draw of n_train + n_val images from the training split
    (`subset_seed`); validation is its last n_val. The test images are drawn by seed 0, the same for every run.
    """
    from . import data as _data

    dtype = getattr(torch, spec.dtype)
    n = None if spec.n_train is None else spec.n_train + spec.n_val
    full = _data.load(spec.dataset, "train", n=n, seed=spec.subset_seed, normalize=spec.normalize, dtype=dtype,
                      device=device)
    if spec.n_val >= len(full):
        raise ValueError(f"data.n_val={spec.n_val} leaves no training images of {len(full)}")
    cut = len(full) - spec.n_val
    part = lambda sl, name: _data.Dataset(full.name, name, full.x[sl], full.y[sl], full.classes)
    test = _data.load(spec.dataset, "test", n=spec.n_test, seed=0, normalize=spec.normalize, dtype=dtype,
                      device=device)
    return {"train": part(slice(0, cut), "train"), "val": part(slice(cut, None), "val") if spec.n_val else None,
            "test": test}


def run(spec: RunSpec, store: str | Path | None = None, *, device="cpu", progress: bool = False) -> Record:
    """Train the run `spec` describes and return its Record; with `store`, record it there (or load it).

    The record is `store/<spec.key>.json`, written atomically once the run has finished (or failed for a
    reason of the method: `Record.failure`); a later call with the same spec loads it. While the run trains,
    its checkpoint (model, optimiser state, history and shuffling generator, with a SHA-256 of its content)
    is `store/<spec.key>.partial/phase<i>.ckpt` (one per optimiser of a switch), written after every evaluation; an interrupted run resumes from it
    with exactly the numbers of an uninterrupted run, and a checkpoint of any other spec is refused. The
    scratch folder is removed once the record is written. A computed record carries the trained network as
    `rec.model` (not stored). A run trains under its lock (`exclusive`): a second process asking for a run that
    another is training gets `RunInProgressError` at once, and the store is left as it was.
    """
    if store is None:
        return _train(spec, None, device, progress)
    path = record_path(store, spec)
    if path.exists():
        return Record.load(path)
    with exclusive(scratch_for(path)):
        if path.exists():  # recorded by a process that held the lock until a moment ago
            return Record.load(path)
        return _train(spec, path, device, progress)


def _train(spec: RunSpec, path: Path | None, device, progress: bool) -> Record:
    """`run` without the store's bookkeeping: train, and record at `path` (under the run's lock) if given."""
    from .kernels import distance_from_init, frozen_copy
    from .losses import NonFiniteLossError
    from .train import train

    sets = splits_of(spec.data, device)
    train_set = sets["train"]
    model = spec.model.build(train_set.x.shape[1], train_set.num_classes, getattr(torch, spec.data.dtype), device)
    evals = {name: sets[name] for name in spec.evaluate}
    metrics = {}
    for name, ds in evals.items():
        if name != "test":  # the loop evaluates the test set itself; other splits are metrics
            metrics[f"{name}_loss"] = lambda m, ds=ds: _eval(m, ds, spec.loss)[0]
            metrics[f"{name}_acc"] = lambda m, ds=ds: _eval(m, ds, spec.loss)[1]
    if spec.measure:
        metrics.update(distance_from_init(
            frozen_copy(model), spec.measure, kernel_inputs=train_set.x[:spec.kernel_inputs],
            probe_batch=train_set.x[:spec.batch_size or len(train_set)],
            cka_inputs=sets["test"].x[:spec.cka_inputs] if "cka" in spec.measure else None,
            kappa_data=(train_set.x[:spec.kappa_inputs], train_set.y[:spec.kappa_inputs])))
    scratch = None if path is None else scratch_for(path)
    code = current_fingerprint()
    if scratch is not None:
        _set_aside_other_code(scratch, code)
    phases = [(spec.optimizer, spec.switch_epoch or spec.epochs)] + \
             ([] if spec.then is None else [(spec.then, spec.epochs - spec.switch_epoch)])
    for opt, _ in phases[1:]:  # every phase is checked before the first step (setup refuses what cannot run)
        opt.build(spec.seed).setup(model, spec.batch_size or len(train_set))
    hist, failure = None, None
    try:
        for i, (opt, epochs) in enumerate(phases):  # a switch continues the same network and history
            hist = train(model, opt.build(spec.seed), train_set, test_set=evals.get("test"), loss=spec.loss,
                         stop=_stop_rule(spec),
                         epochs=epochs, batch_size=spec.batch_size, seed=spec.seed + i, eval_every=spec.eval_every,
                         eval_train_size=spec.eval_train_size, track_batch_change=spec.track_batch_change,
                         metrics=metrics, progress=progress, history=hist,
                         config={"spec": spec.key, "phase": i, "code": code["fingerprint"]},
                         checkpoint=None if scratch is None else scratch / f"phase{i}.ckpt")
    except (NonFiniteLossError, StepRefused) as err:  # the method failed, not the machine: record it
        failure = f"{type(err).__name__}: {err}"
        hist = getattr(err, "history", None) or hist or History(config={"spec": spec.key})
    final = {} if failure else {k: v[-1] for k, v in hist.epochs.items() if k != "epoch"}
    rec = Record(spec, hist, final, {**run_metadata(device), "fingerprint": code}, failure)
    if path is not None:
        atomic_write_json(path, rec.to_dict())
        shutil.rmtree(scratch, ignore_errors=True)
    rec.model = model  # the trained network, for measurements after the run (not stored)
    return rec


def _set_aside_other_code(scratch: Path, code: dict) -> None:
    """A checkpoint of this run written by other code is never resumed (the record would mix two versions): it
    is renamed `<name>.other-code` (kept, not deleted) and the run restarts from scratch, saying so. (One of
    another spec is left for `revgn.train` to refuse.)"""
    import sys

    from .checkpoint import checkpoint_config

    for ckpt in sorted(scratch.glob("phase*.ckpt")):
        config = checkpoint_config(ckpt)
        made_by = config.get("code")
        if config.get("spec") == scratch.stem and made_by != code["fingerprint"]:  # another spec's: refused later
            aside = ckpt.with_name(ckpt.name + ".other-code")
            ckpt.replace(aside)
            print(f"revgn: {ckpt} was written by other code (fingerprint {made_by or 'none'}, running "
                  f"{code['fingerprint']}): not resumed, kept as {aside.name}; the run restarts from scratch",
                  file=sys.stderr)


def _stop_rule(spec: RunSpec):
    """The spec's stop rules (patience, a training-loss target) as one `stop` for `revgn.train.train`."""
    from .history import plateaued, reached

    rules = ([plateaued("val_acc", spec.patience)] if spec.patience else []) + \
            ([reached("train_loss", spec.until_train_loss)] if spec.until_train_loss else [])
    return (lambda hist: any(rule(hist) for rule in rules)) if rules else None


def _eval(model, ds, loss):
    from .losses import get_loss
    from .train import evaluate

    return evaluate(model, ds.x, ds.y, get_loss(loss))


class Runs:
    """The runs of one chapter or sweep: each spec run once through `run` (or loaded from `store`), kept by key.

        runs = Runs(store=None, device=run.device)    # book scale: computed, not written to the repository
        recs = runs.all(specs, desc="mini-batch")      # a list of Records, in the order of the specs
    """

    STALE = ("accept", "refuse")

    def __init__(self, store: str | Path | None = None, device="cpu", progress: bool = True, compute: bool = True,
                 stale: str = "accept"):
        """compute=False: only read what `store` holds; a spec without a record is a FileNotFoundError.
        stale: "accept" a record computed by other code than the running one (`Record.stale`; `stale_records`
        lists them, chapters count them in their provenance line) or "refuse" it (`StaleRecordError`)."""
        if stale not in self.STALE:
            raise ValueError(f"Runs(stale=...) must be one of {self.STALE}, got {stale!r}")
        self.store, self.device, self.progress, self.compute, self.stale = store, device, progress, compute, stale
        self.records: dict[str, Record] = {}

    def __call__(self, spec: RunSpec) -> Record:
        if spec.key not in self.records:
            if not self.compute:
                path = None if self.store is None else record_path(self.store, spec)
                if path is None or not path.exists():
                    raise FileNotFoundError(f"no record of run {spec.key} in {self.store} (and compute=False)")
            rec = run(spec, self.store, device=self.device)
            if self.stale == "refuse" and rec.stale:
                raise StaleRecordError(f"the record of run {spec.key[:12]} in {self.store} was computed by other "
                                       f"code: {'; '.join(rec.changes())}. Delete it to recompute it, or read it "
                                       f"with Runs(stale='accept')")
            self.records[spec.key] = rec
        return self.records[spec.key]

    def stale_records(self) -> list[Record]:
        """The records read so far that other code computed."""
        return [r for r in self.records.values() if r.stale]

    def all(self, specs, desc: str = "runs") -> list[Record]:
        from tqdm import tqdm

        specs = list(specs)
        todo = [s for s in dict.fromkeys(specs) if s.key not in self.records]
        for s in tqdm(todo, desc=desc, disable=not self.progress or not todo, mininterval=5.0):
            self(s)
        return [self.records[s.key] for s in specs]
