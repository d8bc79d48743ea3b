"""Runs as data: one frozen description of a training run, one way to run it, one shape of its result.

For example::

    spec = RunSpec(DataSpec("mnist", n_train=4000, n_val=1000), ModelSpec(hidden=512), OptimSpec("gn", 0.3),
                   batch_size=128, epochs=6)
    rec = run(spec, RESULTS / "my_topic")      # trains, or loads results/my_topic/<spec.key>.json
    rec.metrics["val_acc"], rec.history.epochs["test_acc"], rec.provenance["commit"]

`spec.key` is the SHA-256 of the spec's canonical JSON (with `SCHEMA`), so a record is found by what was
run, never by a name. Records are written atomically once a run finishes; while it trains, a checkpoint
under the same key lets an interrupted run resume with identical numbers. A run that fails for a reason
of the method (a non-finite loss, features GN cannot invert) is recorded as a failure, so a sweep does not
retry it and a table can say so. Sweeps (`revgn.sweep`) are lists of specs dispatched through submitit.
"""
from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import json
import math
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numbers

import numpy as np
import torch

from .fingerprint import current as current_fingerprint
from .solvers import StepRefused
from .history import History
from .utils import REPO_ROOT, atomic_write_json, check_int, read_json, run_metadata

RESULTS = REPO_ROOT / "results"


SCHEMA = 2  # part of every key: bump it when the meaning of a field changes
#: RunSpec fields added within schema 2, with their defaults: at the default they leave the key unchanged
ADDED = {"patience": 0, "until_train_loss": 0.0,
         **{f"{part}.{k}": v for part in ("optimizer", "then") for k, v in
            {"output": "logits", "cg_rtol": 1e-6, "cg_maxiter": 0, "solver": "cg", "rank_rule": "matrix_rank",
             "mu": 0.0, "gram": "float64"}.items()}}

#: what `RunSpec.measure` can name: distances of the network from its initialisation (`revgn.kernels`),
#: recorded at init and at every evaluation like the losses
MEASURES = ("ntk_similarity", "ntk_distance", "cka", "weight_cosine", "kappa")


def _choice(name: str, value, options) -> None:
    if isinstance(value, (list, dict)) or value not in options:
        raise ValueError(f"{name} must be one of {tuple(options)}, got {value!r}")


def _positive(name: str, value, allow_zero: bool = False) -> float:
    """A finite number >= 0 (> 0 unless allow_zero) as a Python float: 1 and 1.0, or a numpy scalar and its
    value, are one value, so they give one key."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value) or \
            value < 0 or (value == 0 and not allow_zero):
        raise ValueError(f"{name} must be a {'non-negative' if allow_zero else 'positive'} finite number, got {value!r}")
    return float(value)


def _flag(name: str, value) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be True or False, got {value!r}")
    return bool(value)


def _names(name: str, value, options) -> tuple[str, ...]:
    """A tuple of names from `options` (a lone string is refused: "val" is not ("v", "a", "l"))."""
    if isinstance(value, str) or not isinstance(value, (tuple, list)):
        raise TypeError(f"{name} must be a tuple of names from {tuple(options)}, got {value!r}")
    for v in value:
        _choice(name, v, options)
    return tuple(value)


def _canonical(obj, ints=(), floats=(), flags=(), optional_ints=()) -> None:
    """Check and store a frozen dataclass's fields as plain Python values (before the key is taken)."""
    for f in ints:
        object.__setattr__(obj, f, check_int(f"{_PART[type(obj).__name__]}{f}", getattr(obj, f), 0))
    for f in optional_ints:
        if getattr(obj, f) is not None:
            object.__setattr__(obj, f, check_int(f"{_PART[type(obj).__name__]}{f}", getattr(obj, f), 1))
    for f in floats:
        object.__setattr__(obj, f, _positive(f"{_PART[type(obj).__name__]}{f}", getattr(obj, f), allow_zero=True))
    for f in flags:
        object.__setattr__(obj, f, _flag(f"{_PART[type(obj).__name__]}{f}", getattr(obj, f)))


_PART = {"DataSpec": "data.", "ModelSpec": "model.", "OptimSpec": "optimizer.", "RunSpec": ""}


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
        _canonical(self, ints=("n_val", "subset_seed"), optional_ints=("n_train", "n_test"), flags=("normalize",))


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
        _canonical(self, ints=("seed",), optional_ints=("depth", "hidden", "width"), floats=("init_std",),
                   flags=("bias", "bottleneck"))
        for name in ("depth", "hidden"):
            check_int(f"model.{name}", getattr(self, name), 1)
        if self.width is not None and (self.width < 2 or self.width % 2):
            raise ValueError(f"model.width must be an even integer >= 2 (the coupling layers split the stream in two "
                             f"halves), got {self.width}")
        if isinstance(self.mlp_hidden, (str, int)):
            raise TypeError(f"model.mlp_hidden must be a tuple of layer widths, got {self.mlp_hidden!r}")
        object.__setattr__(self, "mlp_hidden", tuple(check_int("model.mlp_hidden", h, 1) for h in self.mlp_hidden))

    def build(self, in_features: int, num_classes: int, dtype: torch.dtype, device="cpu") -> torch.nn.Module:
        from .models import MLP, RevMLP

        if self.arch == "mlp":
            return MLP(in_features, num_classes, hidden=self.mlp_hidden, seed=self.seed, dtype=dtype).to(device)
        return RevMLP(in_features, num_classes, depth=self.depth, hidden=self.hidden, width=self.width, bias=self.bias,
                      init_std=self.init_std, first_activation=self.first_activation, seed=self.seed, dtype=dtype,
                      device=device, bottleneck=self.bottleneck)


#: the fields of `OptimSpec` each optimiser reads, beyond its name and rate
READS = {"gn": {"pinv"}, "gn-mp": {"mu", "output", "cg_rtol", "cg_maxiter", "solver"},
         "sgd": {"momentum", "weight_decay", "decay"}, "adam": set()}
#: the fields exact GN reads for each pseudo-inverse (`revgn.gn.Pinv`); the rank rule decides only exact steps
PINV_READS = {"exact": {"rank_rule", "gram"}, "noise": {"noise", "rank_rule", "gram"}, "truncate": {"rtol", "atol"},
              "damp": {"damping"}, "ridge": {"ridge", "ridge_relative"}}


@dataclass(frozen=True)
class OptimSpec:
    """An optimiser of `revgn.train`: "gn" (the layer-wise right inverse, with the pseudo-inverse `pinv` and its
    parameters: rtol and atol of a truncation, damping the singular-value shift of "damp", ridge and
    ridge_relative, noise), "gn-mp" (the Moore-Penrose step, Levenberg-Marquardt with mu > 0, of the logits'
    Jacobian or, with output "body", of x_L's; by
    `solver` "cg", matrix-free CG to `cg_rtol` in at most `cg_maxiter` iterations (0: twice the unknowns), or
    "gram", J J^T of a RevMLP's logits formed from its factors and solved by Cholesky, or "pcg" (output "body"),
    CG preconditioned by the blocks' own inverses (`revgn.gn.layerwise_preconditioner`); either way a step whose
    true relative residual exceeds 10 cg_rtol is refused), "sgd" (momentum, weight_decay, decay) or "adam".
    rank_rule: when exact GN refuses features as rank-deficient (`revgn.gn.Pinv.rank_rule`: "matrix_rank", the
    default, or "rounding"); gram: how it forms and solves the Gram matrix (`revgn.gn.Pinv.gram`: "float64", the
    default, or "refined", the same exact step by a float32 Gram refined against the features). Each optimiser
    reads only its own fields (`READS`): setting another is an error."""

    name: str = "adam"
    lr: float = 1e-3
    pinv: str = "exact"
    rtol: float = 0.0
    atol: float = 0.0
    damping: float = 0.0
    ridge: float = 0.0
    noise: float = 0.0
    ridge_relative: bool = False
    momentum: float = 0.0
    weight_decay: float = 0.0
    decay: float = 0.0
    output: str = "logits"
    cg_rtol: float = 1e-6
    cg_maxiter: int = 0
    solver: str = "cg"
    rank_rule: str = "matrix_rank"
    mu: float = 0.0
    gram: str = "float64"

    def __post_init__(self):
        from .gn import GRAM_ROUTES, PINV_KINDS, RANK_RULES

        _choice("optimizer.name", self.name, READS)
        _choice("optimizer.pinv", self.pinv, PINV_KINDS)
        _choice("optimizer.output", self.output, ("logits", "body"))
        _choice("optimizer.solver", self.solver, ("cg", "gram", "pcg"))
        _choice("optimizer.rank_rule", self.rank_rule, RANK_RULES)
        _choice("optimizer.gram", self.gram, GRAM_ROUTES)
        object.__setattr__(self, "lr", _positive("optimizer.lr", self.lr))
        object.__setattr__(self, "cg_rtol", _positive("optimizer.cg_rtol", self.cg_rtol))
        _canonical(self, ints=("cg_maxiter",), flags=("ridge_relative",),
                   floats=("rtol", "atol", "damping", "ridge", "noise", "momentum", "weight_decay", "decay", "mu"))
        # A field the optimiser does not read would train exactly as without it, under another key: refused.
        reads = self.reads()
        for f in dataclasses.fields(self):
            if f.name not in reads and getattr(self, f.name) != f.default:
                raise ValueError(f"optimizer.{f.name}={getattr(self, f.name)!r} is not read by {self.describe_reader()}, "
                                 f"which reads {sorted(reads - {'name', 'lr'}) or 'only its rate'}: drop it (the run "
                                 f"would train exactly as without it)")
        if self.solver == "gram" and self.output != "logits":
            raise ValueError("optimizer.solver='gram' is the Moore-Penrose step of the logits: it needs output "
                             f"'logits', got {self.output!r}")
        if self.solver == "pcg" and self.output != "body":
            raise ValueError("optimizer.solver='pcg' preconditions x_L's J J^T by the blocks' own inverses: it "
                             f"needs output 'body', got {self.output!r}")

    def reads(self) -> set[str]:
        """The fields this optimiser reads (`READS`; exact GN's also by its pseudo-inverse, `PINV_READS`)."""
        return {"name", "lr"} | READS[self.name] | (PINV_READS[self.pinv] if self.name == "gn" else set())

    def describe_reader(self) -> str:
        return f"{self.name!r}" + (f" with pinv {self.pinv!r}" if self.name == "gn" else "")

    def build(self, seed: int):
        from .gn import Pinv
        from .optimizers import SGD, Adam, GaussNewton, MoorePenroseGaussNewton

        if self.name == "gn-mp":
            return MoorePenroseGaussNewton(self.lr, damping=self.mu, rtol=self.cg_rtol,
                                           maxiter=self.cg_maxiter or None, output=self.output, solver=self.solver)
        if self.name == "gn":
            pinv = Pinv(self.pinv, rtol=self.rtol, atol=self.atol, damping=self.damping, ridge=self.ridge,
                        noise=self.noise, ridge_relative=self.ridge_relative, rank_rule=self.rank_rule, gram=self.gram)
            return GaussNewton(self.lr, pinv, seed=seed)
        if self.name == "sgd":
            return SGD(self.lr, momentum=self.momentum, weight_decay=self.weight_decay, decay=self.decay)
        return Adam(self.lr)


@dataclass(frozen=True)
class RunSpec:
    """Everything that decides a training run's numbers. Two specs with equal `key` are the same run.

    Evaluations (at init and after every `eval_every` epochs) record the training loss on the first
    `eval_train_size` training images, loss and accuracy on each split in `evaluate` ("val", "test"), and each
    distance from init named in `measure` (see `MEASURES`): the NTK on the first `kernel_inputs` training
    images, CKA on the first `cka_inputs` test images, kappa on the first `kappa_inputs` training images, the
    paper's probe similarity on the first batch. With `then`, training continues from epoch `switch_epoch`
    with that optimiser (the same network). With `patience` > 0, training stops once the validation accuracy
    has not risen above its best for that many evaluations (`revgn.history.plateaued`): `epochs` is then the
    most it trains, and the record's final metrics are those of the evaluation where it stopped. With
    `until_train_loss` > 0, training stops once the evaluated training loss is at or below it (a budget of
    equal training loss; `epochs` is again the most).
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
    evaluate: tuple[str, ...] | None = None  # None: ("val", "test"), or ("test",) without a validation split
    track_batch_change: bool = False
    measure: tuple[str, ...] = ()
    kernel_inputs: int = 8
    cka_inputs: int = 500
    kappa_inputs: int = 20
    then: OptimSpec | None = None
    switch_epoch: int = 0
    patience: int = 0
    until_train_loss: float = 0.0

    def __post_init__(self):
        for name, cls in (("data", DataSpec), ("model", ModelSpec), ("optimizer", OptimSpec)):
            if not isinstance(getattr(self, name), cls):
                raise TypeError(f"RunSpec.{name} must be a {cls.__name__}, got {type(getattr(self, name)).__name__}")
        if self.then is not None and not isinstance(self.then, OptimSpec):
            raise TypeError(f"RunSpec.then must be an OptimSpec or None, got {type(self.then).__name__}")
        _canonical(self, ints=("switch_epoch", "epochs", "seed", "patience"),
                   optional_ints=("batch_size", "eval_train_size", "eval_every", "kernel_inputs", "cka_inputs",
                                  "kappa_inputs"),
                   floats=("until_train_loss",), flags=("track_batch_change",))
        for name in ("eval_every", "kernel_inputs", "cka_inputs", "kappa_inputs"):
            check_int(name, getattr(self, name), 1)
        _choice("loss", self.loss, ("ce", "ce-exact", "mse"))
        # No `evaluate` given: the validation split when there is one, and the test split (so RunSpec() is valid).
        evaluate = self.evaluate if self.evaluate is not None else ("val", "test") if self.data.n_val else ("test",)
        object.__setattr__(self, "evaluate", _names("evaluate", evaluate, ("val", "test")))
        object.__setattr__(self, "measure", _names("measure", self.measure, MEASURES))
        if (self.then is None) != (self.switch_epoch == 0) or self.switch_epoch >= max(self.epochs, 1):
            raise ValueError(f"a switch of optimiser needs both `then` and 0 < switch_epoch < epochs={self.epochs}; "
                             f"got then={self.then!r}, switch_epoch={self.switch_epoch}")
        if self.patience and ("val" not in self.evaluate or self.then is not None):
            raise ValueError("patience stops on the validation accuracy: it needs 'val' in evaluate, and no switch "
                             "of optimiser (then)")
        if {"ntk_similarity", "cka", "weight_cosine"} & set(self.measure) and self.model.arch != "revmlp":
            raise ValueError("measure: ntk_similarity, cka and weight_cosine are defined for a RevMLP only")
        if "cka" in self.measure and "test" not in self.evaluate:
            raise ValueError("measure names 'cka', which is taken on test images: add 'test' to evaluate")
        if "val" in self.evaluate and self.data.n_val == 0:
            raise ValueError("evaluate names 'val' but data.n_val is 0: draw a validation split or drop 'val'")

    def to_dict(self) -> dict[str, Any]:
        return json.loads(json.dumps(asdict(self)))  # tuples become lists: the canonical, JSON form

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "RunSpec":
        try:
            parts = {"data": DataSpec(**d["data"]), "model": ModelSpec(**{**d["model"],
                                                                            "mlp_hidden": tuple(d["model"]["mlp_hidden"])}),
                     "optimizer": OptimSpec(**d["optimizer"]),
                     "then": None if d.get("then") is None else OptimSpec(**d["then"])}
            return cls(**{**{k: v for k, v in d.items() if k not in parts}, **parts,
                          "evaluate": tuple(d.get("evaluate", ())), "measure": tuple(d.get("measure", ()))})
        except (KeyError, TypeError) as err:
            raise ValueError(f"not a RunSpec of schema {SCHEMA}: {err}") from err

    def canonical(self) -> str:
        """The spec as canonical JSON (sorted keys, no spaces), with the schema version. A field added within
        a schema (`ADDED`) enters it only when it differs from its default, so earlier records keep their keys."""
        d = {k: v for k, v in self.to_dict().items() if not (k in ADDED and v == ADDED[k])}
        for part in ("optimizer", "then"):
            if isinstance(d.get(part), dict):
                d[part] = {k: v for k, v in d[part].items() if ADDED.get(f"{part}.{k}", object()) != v}
        return json.dumps({"schema": SCHEMA, "spec": d}, sort_keys=True, separators=(",", ":"))

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
        for part in ("data", "model", "optimizer", "then"):
            if isinstance(parts.get(part), dict):
                if getattr(self, part) is None:
                    raise ValueError(f"{part} is None: give a whole {part}=OptimSpec(...) instead of {part}.<field>")
                parts[part] = dataclasses.replace(getattr(self, part), **parts[part])
        return dataclasses.replace(self, **parts)


@dataclass
class Record:
    """A finished run: its spec, its `History`, the final metrics, and where and when it was computed.

    `failure` is None for a run that finished, else the reason it stopped (a non-finite loss, features GN
    cannot invert); the history then ends where the run stopped and `metrics` is empty.
    """

    spec: RunSpec
    history: History
    metrics: dict[str, float]
    provenance: dict[str, str]
    failure: str | None = None

    @property
    def ok(self) -> bool:
        return self.failure is None

    @property
    def fingerprint(self) -> dict | None:
        """The code that computed the record (`revgn.fingerprint`); None for a record of unknown code."""
        return self.provenance.get("fingerprint")

    def changes(self) -> list[str]:
        """Why the running code is not the code that computed this record ([] when it is: not stale)."""
        from .fingerprint import changes

        return changes(self.fingerprint)

    @property
    def stale(self) -> bool:
        return bool(self.changes())

    def to_dict(self) -> dict[str, Any]:
        return {"schema": SCHEMA, "key": self.spec.key, "spec": self.spec.to_dict(), "failure": self.failure,
                "history": self.history.to_dict(), "metrics": self.metrics, "provenance": self.provenance}

    @classmethod
    def load(cls, path: str | Path) -> "Record":
        """Read a record; a file that is unreadable or whose content does not hash to its name is an error."""
        path = Path(path)
        fix = "delete it (or restore it with git); the run is then recomputed"
        d = read_json(path, "run record", fix)
        if not (isinstance(d, dict) and {"spec", "history", "metrics", "provenance"} <= set(d)):
            raise ValueError(f"{path} is not a run record: expected the keys spec, history, metrics, provenance; {fix}")
        if d.get("schema") != SCHEMA:
            raise ValueError(f"{path} is a record of schema {d.get('schema')}, this revgn reads schema {SCHEMA}; {fix}")
        try:
            spec = RunSpec.from_dict(d["spec"])
        except ValueError as err:
            raise ValueError(f"{path}: {err}; {fix}") from err
        if spec.key != path.stem:
            raise ValueError(f"{path} holds the record of another run: its spec hashes to {spec.key[:16]}..., not to "
                             f"its file name; {fix}")
        problem = _invalid(d)
        if problem:
            raise ValueError(f"{path} is not a valid run record: {problem}; {fix}")
        h = d["history"]
        return cls(spec, History(h["steps"], h["epochs"], h["config"]), d["metrics"], d["provenance"], d.get("failure"))


def _invalid(d: dict) -> str | None:
    """What is wrong with a record's content (None: nothing). A record holds exactly one of its final metrics
    (a finished run: finite numbers) and a failure (a string, with empty metrics), and a history of per-step
    and per-evaluation columns of equal lengths with the fields every run logs."""
    metrics, failure, h = d["metrics"], d.get("failure"), d["history"]
    if not isinstance(metrics, dict) or not all(isinstance(k, str) for k in metrics):
        return f"metrics must be a mapping of names to numbers, got {type(metrics).__name__}"
    if failure is not None and not isinstance(failure, str):
        return f"failure must be a message or null, got {failure!r}"
    if (failure is None) == (not metrics):
        return "it must hold either final metrics (a finished run) or a failure, not both nor neither"
    bad = [k for k, v in metrics.items() if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v)]
    if bad:
        return f"metrics {bad[:3]} are not finite numbers"
    if not (isinstance(h, dict) and {"steps", "epochs", "config"} <= set(h)) or \
            not all(isinstance(h[t], dict) for t in ("steps", "epochs", "config")):
        return "history must hold the mappings steps, epochs and config"
    for table, required in (("steps", ("epoch", "loss")), ("epochs", ("epoch",))):
        cols = h[table]
        missing = [c for c in required if c not in cols]
        if missing:
            return f"history.{table} lacks {missing}"
        lengths = {k: len(v) if isinstance(v, list) else None for k, v in cols.items()}
        if None in lengths.values() or len(set(lengths.values())) > 1:
            return f"history.{table} columns must be lists of one length, got {lengths}"
    if failure is None and not h["epochs"]["epoch"]:
        return "a finished run's history has no evaluation"
    if not isinstance(d["provenance"], dict):
        return "provenance must be a mapping"
    return None


def record_path(store: str | Path, spec: RunSpec) -> Path:
    """Where the record of `spec` lives in a store folder: <store>/<spec.key>.json."""
    return Path(store) / f"{spec.key}.json"


def scratch_for(path: str | Path) -> Path:
    """The folder where the run recorded at `path` keeps its checkpoints while it trains."""
    return Path(path).with_suffix(".partial")


class StaleRecordError(RuntimeError):
    """A record computed by other code than the running one, read where stale records are refused."""


class RunInProgressError(RuntimeError):
    """Another process holds the run's lock: it is training the same spec into the same store."""


@contextlib.contextmanager
def exclusive(scratch: Path):
    """Hold the lock `scratch/lock` of a run, or raise `RunInProgressError` at once if another process holds it.

    Two processes training one spec into one store would write the same checkpoint and record (a second sweep
    started over the first, or a worker that outlived its sweep). The lock is an advisory `flock`, released by
    the kernel when its holder exits, however it exits, so no stale lock survives a killed run.
    """
    scratch.mkdir(parents=True, exist_ok=True)
    with open(scratch / "lock", "a") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RunInProgressError(f"run {scratch.stem[:12]} is being trained by another process (it holds "
                                     f"{scratch / 'lock'}); wait for it, or stop it, then run this again") from None
        try:
            yield
        finally:  # a run that stopped before its first checkpoint (bad input, say) leaves the store as it was
            if scratch.is_dir() and [p.name for p in scratch.iterdir()] == ["lock"]:
                shutil.rmtree(scratch, ignore_errors=True)


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


def records(store: str | Path) -> list[Record]:
    """Every record in a store folder, in file-name order; a bad file is an error that names it."""
    store = Path(store)
    return [Record.load(p) for p in sorted(store.glob("*.json"))] if store.is_dir() else []


def provenance(recs: list[Record], where: str | Path = "", code: bool = True) -> str:
    """One line on a set of records: how many, when, on which devices and CPUs, at which commits, and (code=True)
    how many are stale (`staleness`; False in a chapter's checked cells, since it depends on the kernels)."""
    if not recs:
        return f"{where}: nothing recorded." if where else "nothing recorded."
    meta = [r.provenance for r in recs]
    dates = sorted(m.get("date", "?") for m in meta)
    devices = sorted({m.get('device', '?') for m in meta})
    commits = sorted({m.get("commit", "?")[:10] for m in meta})
    head = f"{where}: " if where else ""
    return (f"{head}{len(recs)} recorded runs, {dates[0]} to {dates[-1]}, on {', '.join(devices)}, "
            f"at commit{'s' if len(commits) > 1 else ''} {', '.join(commits)}." + (" " + staleness(recs) if code else ""))


def staleness(recs: list[Record]) -> str:
    """How many of some records other code computed (`Record.stale`), in a sentence. It depends on the code and
    the CPU kernels that run now, so a chapter prints it outside its checked cells."""
    unknown = sum(r.fingerprint is None for r in recs)
    stale = sum(r.stale for r in recs) - unknown
    if not stale + unknown:
        return f"All {len(recs)} were computed by this code, or by code shown to give the same numbers."
    parts = [f"{stale} computed by other code than this commit's and not shown to give the same numbers"] * bool(stale) \
        + [f"{unknown} computed from trees with uncommitted changes (code unknown)"] * bool(unknown)
    return f"Of these {len(recs)}: " + "; ".join(parts) + " (stale; `python -m revgn.recompute` checks them)."


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
