"""Runs as data: the frozen description of a training run, checked when it is made, and its key.

For example::

    spec = RunSpec(DataSpec("mnist", n_train=4000, n_val=1000), ModelSpec(hidden=512), OptimSpec("gn", 0.3),
                   batch_size=128, epochs=6)
    spec.key                   # SHA-256 of the canonical JSON: the run's content address
    spec.replace(seed=1)       # a copy; "optimizer.lr" style keys reach into the parts

`spec.key` is the SHA-256 of the spec's canonical JSON (with `SCHEMA`), so a record is found by what was
run, never by a name. Every field is validated and stored as a plain Python value when the spec is made
(1 and 1.0 are one rate, so one key), and a field the chosen optimiser does not read is refused (it would
train exactly as without it, under another key). Running a spec is `revgn.runs`; its record, `revgn.records`.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import numbers
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch

from .gn_optimizers import GaussNewton, MoorePenroseGaussNewton
from .optimizers import SGD, Adam
from .pinv import GRAM_ROUTES, PINV_KINDS, RANK_RULES
from .utils import check_int

#: every optimiser a run spec can name: each reads its own fields (`spec_fields`) and builds itself (`from_spec`);
#: a new one is added here, and its fields to `OptimSpec` at defaults that leave the committed keys as they are
OPTIMIZERS = {"gn": GaussNewton, "gn-mp": MoorePenroseGaussNewton, "sgd": SGD, "adam": Adam}

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


@dataclass(frozen=True)
class OptimSpec:
    """An optimiser of `revgn.train`: "gn" (the layer-wise right inverse, with the pseudo-inverse `pinv` and its
    parameters: rtol and atol of a truncation, damping the singular-value shift of "damp", ridge and
    ridge_relative, noise), "gn-mp" (the Moore-Penrose step, Levenberg-Marquardt with mu > 0, of the logits'
    Jacobian or, with output "body", of x_L's; by
    `solver` "cg", matrix-free CG to `cg_rtol` in at most `cg_maxiter` iterations (0: twice the unknowns), or
    "gram", J J^T of a RevMLP's logits formed from its factors and solved by Cholesky, or "pcg" (output "body"),
    CG on J J^T through the blocks preconditioned by their own inverses (`revgn.block_kernel`); either way a step whose
    true relative residual exceeds 10 cg_rtol is refused), "sgd" (momentum, weight_decay, decay) or "adam".
    rank_rule: when exact GN refuses features as rank-deficient (`revgn.pinv.Pinv.rank_rule`: "matrix_rank", the
    default, or "rounding"); gram: how it forms and solves the Gram matrix (`revgn.pinv.Pinv.gram`: "float64", the
    default, or "refined", the same exact step by a float32 Gram refined against the features). Each optimiser
    reads only its own fields (its `spec_fields`, `OPTIMIZERS`): setting another is an error."""

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
        _choice("optimizer.name", self.name, OPTIMIZERS)
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
        """The fields this optimiser reads (its `spec_fields`; exact GN's by its pseudo-inverse too)."""
        return {"name", "lr"} | set(OPTIMIZERS[self.name].spec_fields(self))

    def describe_reader(self) -> str:
        return f"{self.name!r}" + (f" with pinv {self.pinv!r}" if self.name == "gn" else "")

    def build(self, seed: int):
        """The optimiser this spec names (`OPTIMIZERS`, its `from_spec`); `seed` draws any noise of its steps."""
        return OPTIMIZERS[self.name].from_spec(self, seed)


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
