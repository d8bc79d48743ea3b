"""Recorded runs: long experiments write their results once, atomically, with what is needed to trace them.

    hist = recorded_run(RESULTS / "gn" / "mnist-gn-seed0.json", config, lambda: train(...))
    rec = recorded(RESULTS / "regime" / "point.json", config, lambda: {"test_acc": ...})

If the file exists and holds the same configuration, it is loaded instead of rerun. An interrupted run
leaves no record (the write is atomic). Long computations keep checkpoints in the record's scratch folder
(`scratch_for(path)`), so the next call resumes them mid-way; the folder is removed once the record is
written. A sweep made of many recorded pieces therefore resumes where it stopped. A file whose
configuration differs is never overwritten silently.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from .train import History
from .utils import REPO_ROOT, atomic_write_json, check_int, read_json, run_metadata

RESULTS = REPO_ROOT / "results"


def _canonical(config: dict[str, Any]) -> dict[str, Any]:
    return json.loads(json.dumps(config, sort_keys=True, default=str))


def recorded(path: str | Path | None, config: dict[str, Any], compute: Callable[[], dict[str, Any]],
             device=None) -> dict[str, Any]:
    """The JSON record stored at `path` for `config`, or `compute()` it and store it (atomically).

    path None computes without storing (book-scale runs in a chapter leave the repository untouched).
    The stored file is {"run_config": config, "meta": date/device/commit, "result": compute()}. The result is
    returned as JSON reads it back (e.g. dict keys become strings) whether it was computed or loaded.
    """
    if path is None:
        return _canonical(compute())
    path = Path(path)
    config = _canonical(config)
    if path.exists():
        stored = _read_record(path)
        if stored.get("run_config") != config:
            raise ValueError(f"{path} holds a run with another configuration; move it away or choose another path.\n"
                             f"  stored: {stored.get('run_config')}\n  asked:  {config}")
        return stored["result"]
    result = _canonical(compute())
    atomic_write_json(path, {"run_config": config, "meta": run_metadata(device), "result": result})
    shutil.rmtree(scratch_for(path), ignore_errors=True)  # its checkpoints are no longer needed
    return result


def scratch_for(path: str | Path | None) -> Path | None:
    """Where the computation of the record at `path` keeps its checkpoints (None when nothing is stored)."""
    return None if path is None else Path(path).with_suffix(".partial")


def recorded_run(path: str | Path | None, config: dict[str, Any], run: Callable[[], History], device=None) -> History:
    """Load the History recorded at `path` for `config`, or run it and record it (atomically)."""
    d = recorded(path, config, lambda: run().to_dict(), device)
    return History(d["steps"], d["epochs"], d["config"])


def load_recorded(path: str | Path) -> tuple[dict[str, Any], dict[str, Any]] | None:
    """A recorded result and its metadata (date, device, commit), or None when there is no such file."""
    path = Path(path)
    if not path.exists():
        return None
    stored = _read_record(path)
    return stored["result"], stored.get("meta", {})


def _read_record(path: Path) -> dict[str, Any]:
    """A record file's content; a truncated, empty or foreign file raises a ValueError naming it."""
    fix = "delete it (or restore it with git) and rerun, which records it again"
    stored = read_json(path, "record", fix)
    if not (isinstance(stored, dict) and {"run_config", "result"} <= set(stored)):
        raise ValueError(f"{path} is not a revgn record: expected the keys run_config, result and meta; {fix}")
    return stored


def recorded_histories(directory: str | Path) -> list[tuple[History, dict[str, Any]]]:
    """Every History recorded (by `recorded_run`) in a directory, with its metadata, in file-name order."""
    out = []
    for path in sorted(Path(directory).glob("*.json")) if Path(directory).is_dir() else []:
        result, meta = load_recorded(path)
        if {"steps", "epochs", "config"} <= set(result):
            out.append((History(result["steps"], result["epochs"], result["config"]), meta))
    return out


def provenance(directory: str | Path) -> str:
    """One line on what is recorded in a directory: how many records, when, on which devices, at which commits."""
    directory = Path(directory)
    metas = [load_recorded(p)[1] for p in sorted(directory.glob("*.json"))] if directory.is_dir() else []
    where = directory.relative_to(REPO_ROOT) if directory.is_relative_to(REPO_ROOT) else directory
    if not metas:
        return f"{where}/: nothing recorded yet."
    dates = sorted(m.get("date", "?") for m in metas)
    devices = sorted({m.get("device", "?") for m in metas})
    commits = sorted({m.get("commit", "?")[:10] for m in metas})
    return (f"{where}/: {len(metas)} recorded runs, {dates[0]} to {dates[-1]}, on {', '.join(devices)}, "
            f"at commit{'s' if len(commits) > 1 else ''} {', '.join(commits)}.")


# ================================================================================== run specs and records
# One frozen description of a training run (`RunSpec`), one way to run it (`run`), one shape of its result
# (`Record`), stored under its content address: results/<topic>/<spec.key>.json. Sweeps (`revgn.sweep`) are
# lists of specs dispatched through submitit.

SCHEMA = 1  # part of every key: bump it when the meaning of a field changes


def _choice(name: str, value, options) -> None:
    if value not in options:
        raise ValueError(f"{name} must be one of {tuple(options)}, got {value!r}")


def _positive(name: str, value, allow_zero: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or \
            value < 0 or (value == 0 and not allow_zero):
        raise ValueError(f"{name} must be a {'non-negative' if allow_zero else 'positive'} finite number, got {value!r}")
    return float(value)


@dataclass(frozen=True)
class DataSpec:
    """Which images: `n_train` training and `n_val` validation images drawn from the training split by
    `subset_seed` (the validation images are the last `n_val` of the draw), and `n_test` test images drawn by
    seed 0 (None: the whole split). `normalize` and `dtype` as in `revgn.data.load`."""

    dataset: str = "mnist"
    n_train: int | None = None
    n_val: int = 0
    subset_seed: int = 0
    n_test: int | None = None
    normalize: bool = True
    dtype: str = "float32"

    def __post_init__(self):
        from . import data as _data

        _choice("data.dataset", self.dataset, _data.DATASETS)
        _choice("data.dtype", self.dtype, ("float32", "float64"))
        for name in ("n_train", "n_test"):
            if getattr(self, name) is not None:
                check_int(f"data.{name}", getattr(self, name), 1)
        check_int("data.n_val", self.n_val, 0)
        check_int("data.subset_seed", self.subset_seed, 0)
        if not isinstance(self.normalize, bool):
            raise TypeError(f"data.normalize must be True or False, got {self.normalize!r}")


@dataclass(frozen=True)
class ModelSpec:
    """A `RevMLP` (arch "revmlp", the fields are its arguments) or a plain `MLP` (arch "mlp", hidden units per
    layer in `mlp_hidden`). `seed` draws the initial weights (and V, the readout, a projection)."""

    arch: str = "revmlp"
    depth: int = 2
    hidden: int = 1024
    width: int | None = None
    bias: bool = False
    init_std: float = 1e-3
    first_activation: str = "relu"
    bottleneck: bool = True
    mlp_hidden: tuple[int, ...] = (128,)
    seed: int = 0

    def __post_init__(self):
        _choice("model.arch", self.arch, ("revmlp", "mlp"))
        _choice("model.first_activation", self.first_activation, ("relu", "identity"))
        check_int("model.depth", self.depth, 1)
        check_int("model.hidden", self.hidden, 1)
        check_int("model.seed", self.seed, 0)
        _positive("model.init_std", self.init_std, allow_zero=True)
        object.__setattr__(self, "mlp_hidden", tuple(check_int("model.mlp_hidden", h, 1) for h in self.mlp_hidden))

    def build(self, in_features: int, num_classes: int, dtype: torch.dtype, device="cpu") -> torch.nn.Module:
        from .models import MLP, RevMLP

        if self.arch == "mlp":
            return MLP(in_features, num_classes, hidden=self.mlp_hidden, seed=self.seed, dtype=dtype).to(device)
        return RevMLP(in_features, num_classes, depth=self.depth, hidden=self.hidden, width=self.width, bias=self.bias,
                      init_std=self.init_std, first_activation=self.first_activation, seed=self.seed, dtype=dtype,
                      device=device, bottleneck=self.bottleneck)


@dataclass(frozen=True)
class OptimSpec:
    """An optimiser of `revgn.train`: "gn" (with the pseudo-inverse `pinv` and its parameters), "sgd" or "adam"."""

    name: str = "adam"
    lr: float = 1e-3
    pinv: str = "exact"
    rtol: float = 0.0
    atol: float = 0.0
    damping: float = 0.0
    ridge: float = 0.0
    noise: float = 0.0
    momentum: float = 0.0
    weight_decay: float = 0.0
    decay: float = 0.0

    def __post_init__(self):
        from .gn import PINV_KINDS

        _choice("optimizer.name", self.name, ("gn", "sgd", "adam"))
        _choice("optimizer.pinv", self.pinv, PINV_KINDS)
        object.__setattr__(self, "lr", _positive("optimizer.lr", self.lr))
        for name in ("rtol", "atol", "damping", "ridge", "noise", "momentum", "weight_decay", "decay"):
            object.__setattr__(self, name, _positive(f"optimizer.{name}", getattr(self, name), allow_zero=True))

    def build(self, seed: int):
        from .gn import Pinv
        from .train import SGD, Adam, GaussNewton

        if self.name == "gn":
            pinv = Pinv(self.pinv, rtol=self.rtol, atol=self.atol, damping=self.damping, ridge=self.ridge,
                        noise=self.noise)
            return GaussNewton(self.lr, pinv, seed=seed)
        if self.name == "sgd":
            return SGD(self.lr, momentum=self.momentum, weight_decay=self.weight_decay, decay=self.decay)
        return Adam(self.lr)


@dataclass(frozen=True)
class RunSpec:
    """Everything that decides a training run's numbers. Two specs with equal `key` are the same run.

    Evaluations (at init and after every `eval_every` epochs) record the training loss on the first
    `eval_train_size` training images, and loss and accuracy on each split in `evaluate` ("val", "test").
    """

    data: DataSpec = DataSpec()
    model: ModelSpec = ModelSpec()
    optimizer: OptimSpec = OptimSpec()
    loss: str = "ce"
    batch_size: int | None = None
    epochs: int = 1
    seed: int = 0
    eval_every: int = 1
    eval_train_size: int | None = 2000
    evaluate: tuple[str, ...] = ("val", "test")
    track_batch_change: bool = False

    def __post_init__(self):
        for name, cls in (("data", DataSpec), ("model", ModelSpec), ("optimizer", OptimSpec)):
            if not isinstance(getattr(self, name), cls):
                raise TypeError(f"RunSpec.{name} must be a {cls.__name__}, got {type(getattr(self, name)).__name__}")
        _choice("loss", self.loss, ("ce", "ce-exact", "mse"))
        check_int("epochs", self.epochs, 0)
        check_int("seed", self.seed, 0)
        check_int("eval_every", self.eval_every, 1)
        if self.batch_size is not None:
            check_int("batch_size", self.batch_size, 1)
        if self.eval_train_size is not None:
            check_int("eval_train_size", self.eval_train_size, 1)
        object.__setattr__(self, "evaluate", tuple(self.evaluate))
        for split in self.evaluate:
            _choice("evaluate", split, ("val", "test"))
        if "val" in self.evaluate and self.data.n_val == 0:
            raise ValueError("evaluate names 'val' but data.n_val is 0: draw a validation split or drop 'val'")

    def to_dict(self) -> dict[str, Any]:
        return json.loads(json.dumps(asdict(self)))  # tuples become lists: the canonical, JSON form

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "RunSpec":
        try:
            parts = {"data": DataSpec(**d["data"]), "model": ModelSpec(**{**d["model"],
                                                                            "mlp_hidden": tuple(d["model"]["mlp_hidden"])}),
                     "optimizer": OptimSpec(**d["optimizer"])}
            return cls(**{**{k: v for k, v in d.items() if k not in parts}, **parts,
                          "evaluate": tuple(d.get("evaluate", ()))})
        except (KeyError, TypeError) as err:
            raise ValueError(f"not a RunSpec of schema {SCHEMA}: {err}") from err

    def canonical(self) -> str:
        """The spec as canonical JSON (sorted keys, no spaces), with the schema version."""
        return json.dumps({"schema": SCHEMA, "spec": self.to_dict()}, sort_keys=True, separators=(",", ":"))

    @property
    def key(self) -> str:
        """SHA-256 of `canonical()`: the run's content address (its record is `<topic>/<key>.json`)."""
        return hashlib.sha256(self.canonical().encode()).hexdigest()

    def replace(self, **changes) -> "RunSpec":
        """A copy with some fields changed; "data.n_train=..." style keys reach into the parts."""
        parts = {}
        for k, v in changes.items():
            if "." in k:
                part, field_name = k.split(".", 1)
                parts.setdefault(part, {})[field_name] = v
            else:
                parts[k] = v
        for part in ("data", "model", "optimizer"):
            if isinstance(parts.get(part), dict):
                parts[part] = dataclasses.replace(getattr(self, part), **parts[part])
        return dataclasses.replace(self, **parts)


@dataclass
class Record:
    """A finished run: its spec, its `History`, the final metrics, and where and when it was computed."""

    spec: RunSpec
    history: History
    metrics: dict[str, float]
    provenance: dict[str, str]

    def to_dict(self) -> dict[str, Any]:
        return {"schema": SCHEMA, "key": self.spec.key, "spec": self.spec.to_dict(),
                "history": self.history.to_dict(), "metrics": self.metrics, "provenance": self.provenance}

    @classmethod
    def load(cls, path: str | Path) -> "Record":
        """Read a record; a file that is unreadable or whose content does not hash to its name is an error."""
        path = Path(path)
        fix = "delete it (or restore it with git); the run is then recomputed"
        d = read_json(path, "run record", fix)
        if not (isinstance(d, dict) and {"spec", "history", "metrics", "provenance"} <= set(d)):
            raise ValueError(f"{path} is not a run record: expected the keys spec, history, metrics, provenance; {fix}")
        try:
            spec = RunSpec.from_dict(d["spec"])
        except ValueError as err:
            raise ValueError(f"{path}: {err}; {fix}") from err
        if spec.key != path.stem:
            raise ValueError(f"{path} holds the record of another run: its spec hashes to {spec.key[:16]}..., not to "
                             f"its file name; {fix}")
        h = d["history"]
        return cls(spec, History(h["steps"], h["epochs"], h["config"]), d["metrics"], d["provenance"])


def record_path(store: str | Path, spec: RunSpec) -> Path:
    return Path(store) / f"{spec.key}.json"


def splits_of(spec: DataSpec, device="cpu") -> dict[str, Any]:
    """{"train", "val", "test"} Datasets of a data spec (val is None when n_val is 0)."""
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

    The record is `store/<spec.key>.json`, written atomically once the run has finished; a later call with the
    same spec loads it. While the run trains, its checkpoint (model, optimiser state, history and shuffling
    generator, with a SHA-256 of its content) is `store/<spec.key>.partial/run.ckpt`, written after every
    evaluation; an interrupted run resumes from it with exactly the numbers of an uninterrupted run, and a
    checkpoint of any other spec is refused. The scratch folder is removed once the record is written.
    """
    from .train import train

    path = None if store is None else record_path(store, spec)
    if path is not None and path.exists():
        return Record.load(path)
    sets = splits_of(spec.data, device)
    train_set = sets["train"]
    model = spec.model.build(train_set.x.shape[1], train_set.num_classes, getattr(torch, spec.data.dtype), device)
    evals = {name: sets[name] for name in spec.evaluate}
    metrics = {}
    for name, ds in evals.items():
        if name != "test":  # the loop evaluates the test set itself; other splits are metrics
            metrics[f"{name}_loss"] = lambda m, ds=ds: _eval(m, ds, spec.loss)[0]
            metrics[f"{name}_acc"] = lambda m, ds=ds: _eval(m, ds, spec.loss)[1]
    checkpoint = None if path is None else scratch_for(path) / "run.ckpt"
    hist = train(model, spec.optimizer.build(spec.seed), train_set, test_set=evals.get("test"), loss=spec.loss,
                 epochs=spec.epochs, batch_size=spec.batch_size, seed=spec.seed, eval_every=spec.eval_every,
                 eval_train_size=spec.eval_train_size, track_batch_change=spec.track_batch_change, metrics=metrics,
                 progress=progress, checkpoint=checkpoint, config={"spec": spec.key})
    final = {k: v[-1] for k, v in hist.epochs.items() if k != "epoch"}
    rec = Record(spec, hist, final, run_metadata(device))
    if path is not None:
        atomic_write_json(path, rec.to_dict())
        shutil.rmtree(scratch_for(path), ignore_errors=True)
    rec.model = model  # the trained network, for measurements after the run (not stored)
    return rec


def _eval(model, ds, loss):
    from .losses import get_loss
    from .train import evaluate

    return evaluate(model, ds.x, ds.y, get_loss(loss))


def records(store: str | Path) -> list[Record]:
    """Every record in a store folder, in file-name order; a bad file is an error that names it."""
    store = Path(store)
    return [Record.load(p) for p in sorted(store.glob("*.json"))] if store.is_dir() else []
