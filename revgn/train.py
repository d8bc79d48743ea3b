"""The one training loop, parameterised by its optimiser: SGD, Adam, exact GN (`GaussNewton`), the Moore-Penrose
step (`MoorePenroseGaussNewton`), Levenberg-Marquardt (`DampedGaussNewton`), `IterativeLinearisation`.

    history = train(model, GaussNewton(lr=0.1), train_set, test_set=test_set, loss="ce", epochs=10,
                    batch_size=256)

An optimiser implements `step(model, x, y, loss) -> float`: one update on a batch, returning the batch loss
*before* the update. The loop shuffles with its own seeded generator, evaluates at init and after every
epoch, calls optional metric callbacks, shows a tqdm progress bar and returns a `History`.

Failures leave state as it was. A step is atomic: every optimiser checks its whole update (loss, gradient or
direction) before it changes a parameter, so a step that raises leaves the model bit-identical. A loss or
metric that is not finite, at any step or evaluation, raises `NonFiniteLossError` naming the epoch, the step
and the quantity, with the history so far attached as `err.history`.
"""
from __future__ import annotations

import hashlib
import io
import json
import math
import numbers
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn
from tqdm import tqdm

from .curvature import gram_gn_direction, matrix_free_gn_direction, spectral_step
from .damping import gn_filter, lm_filter
from .gn import Pinv, iter_block_directions, layerwise_preconditioner
from .losses import NonFiniteLossError, accuracy, check_finite, get_loss
from .models import RevMLP
from .solvers import StepNotSolved, StepRefused
from .utils import atomic_write_bytes, atomic_write_json, check_int, read_json


def _check_lr(lr: float) -> float:
    """A positive finite rate as a float; numpy and torch scalars are accepted, bools and strings are not."""
    if isinstance(lr, torch.Tensor) and lr.numel() == 1:
        lr = lr.item()
    if isinstance(lr, bool) or not isinstance(lr, numbers.Real):
        raise TypeError(f"learning rate must be a number, got {lr!r} ({type(lr).__name__})")
    if not (math.isfinite(lr) and lr > 0):
        raise ValueError(f"learning rate must be a positive finite number, got {lr!r}")
    return float(lr)


def _check_finite_tensors(tensors: dict[str, torch.Tensor], what: str) -> None:
    """Raise NonFiniteLossError, before anything is changed, if an update holds NaN or inf."""
    bad = [k for k, t in tensors.items() if t is not None and not torch.isfinite(t).all()]
    if bad:
        raise NonFiniteLossError(f"the {what} of {', '.join(bad[:4])}{' ...' if len(bad) > 4 else ''} holds NaN or "
                                 f"inf; the step was not applied (lower the learning rate or regularise)")


class Optimizer:
    """Base class: `setup` once before training, `step` once per batch. After a step, `step_info` holds what
    the optimiser reports about it (the parameter step's norm, a solver's residual); the loop logs it."""

    name = "optimizer"
    step_info: dict[str, float] = {}

    def setup(self, model: nn.Module, batch_size: int) -> None:
        pass

    def step(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, loss) -> float:
        raise NotImplementedError

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, **{k: v for k, v in vars(self).items() if not k.startswith("_")}}

    def state_dict(self) -> dict[str, Any]:
        """What a resumed run needs besides the model (moments, step counters, random generators)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore `state_dict()`; called after `setup` on the model being resumed."""


class FirstOrder(Optimizer):
    """A torch.optim optimiser on the batch-mean loss (the gradient is taken with autograd, grad enabled).

    decay: beta of the schedule lr_t = lr / (1 + beta t), t the number of steps taken (0: constant).
    """

    def __init__(self, name: str, factory: Callable, lr: float, decay: float = 0.0, **kwargs):
        if decay < 0:
            raise ValueError(f"decay must be >= 0, got {decay}")
        self.name, self.lr, self.decay, self.kwargs = name, _check_lr(lr), decay, kwargs
        self._factory, self._opt, self._model, self._t = factory, None, None, 0

    def setup(self, model: nn.Module, batch_size: int) -> None:
        if self._model is model:
            return  # keep the moment estimates when training continues
        self._model = model
        self._opt = self._factory([p for p in model.parameters() if p.requires_grad], lr=self.lr, **self.kwargs)

    def step(self, model, x, y, loss) -> float:
        if self._model is not model:
            self.setup(model, len(x))
        self._opt.zero_grad(set_to_none=True)
        with torch.enable_grad():
            value = loss(model(x), y)
            check_finite(value, f"{self.name} step")
            value.backward()
        # Atomic: a non-finite gradient is refused before the parameters or the moments change.
        _check_finite_tensors({k: p.grad for k, p in model.named_parameters() if p.requires_grad}, "gradient")
        before = [p.detach().clone() for group in self._opt.param_groups for p in group["params"]]
        self._opt.step()
        params = [p for group in self._opt.param_groups for p in group["params"]]
        with torch.no_grad():
            norm = _norm(p - b for p, b in zip(params, before))
            if not math.isfinite(norm):  # the update overflowed: put the parameters back, then refuse
                for p, b in zip(params, before):
                    p.copy_(b)
                raise NonFiniteLossError(f"{self.name} step: the update is not finite (lr {self.lr:g}); the "
                                         f"parameters are left as they were")
        self.step_info = {"step_norm": norm}
        self._t += 1
        if self.decay:
            for group in self._opt.param_groups:
                group["lr"] = self.lr / (1 + self.decay * self._t)
        return value.item()

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "lr": self.lr, "decay": self.decay, **self.kwargs}

    def state_dict(self) -> dict[str, Any]:
        return {"optimizer": self._opt.state_dict() if self._opt is not None else None, "t": self._t}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state["optimizer"] is not None:
            self._opt.load_state_dict(state["optimizer"])
        self._t = state["t"]


def SGD(lr: float, momentum: float = 0.0, weight_decay: float = 0.0, decay: float = 0.0) -> FirstOrder:
    return FirstOrder("sgd", torch.optim.SGD, lr, decay, momentum=momentum, weight_decay=weight_decay)


def Adam(lr: float, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8) -> FirstOrder:
    return FirstOrder("adam", torch.optim.Adam, lr, betas=betas, eps=eps)  # no decay: Adam as in the papers


def _norm(tensors) -> float:
    """The Euclidean norm of several tensors together, in float64 (a float32 sum of squares overflows early)."""
    return math.sqrt(sum(float(torch.linalg.vector_norm(t.double())) ** 2 for t in tensors))


def apply_step(model: nn.Module, direction: dict[str, torch.Tensor], lr: float) -> None:
    """theta <- theta - lr * direction, in place; all or nothing.

    The whole direction is checked first: one NaN or inf anywhere raises NonFiniteLossError and leaves every
    parameter as it was. Names that are not parameters of the model are an error.
    """
    params = dict(model.named_parameters())
    unknown = [k for k in direction if k not in params]
    if unknown:
        raise KeyError(f"the step names parameters the model does not have: {unknown[:4]}")
    _check_finite_tensors(direction, "step")
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name in direction:
                p.sub_(direction[name], alpha=lr)


class GaussNewton(Optimizer):
    """The exact, tractable GN step of `revgn.gn` for a `RevMLP`: ``theta <- theta - lr * J^{-|} eps`` (eq-stack).

    lr = 1 moves the logits by -eps to first order (for the square loss: onto the targets).
    """

    name = "gn"

    def __init__(self, lr: float = 1.0, pinv: Pinv = Pinv(), seed: int = 0):
        self.lr, self.pinv, self.seed = _check_lr(lr), pinv, seed
        self._generator = torch.Generator().manual_seed(seed)

    def setup(self, model: nn.Module, batch_size: int) -> None:
        if not isinstance(model, RevMLP):
            raise TypeError("GaussNewton needs a RevMLP; use MoorePenroseGaussNewton for other models")
        features = model.hidden + (model.blocks[0].b1 is not None)
        if self.pinv.is_exact and batch_size > features:
            raise ValueError(
                f"exact GN needs batch size n <= bottleneck width h: got n={batch_size} > h={features}. The h x n "
                f"feature matrices then have dependent columns and no step fits the batch exactly. Use a smaller "
                f"batch, a wider RevMLP, or a regularised Pinv.")

    def step(self, model, x, y, loss) -> float:
        if not isinstance(model, RevMLP):  # a caller's own loop may skip `setup`
            raise TypeError(f"GaussNewton needs a RevMLP (its reversible blocks give the layer-wise step); got a "
                            f"{type(model).__name__}. Use MoorePenroseGaussNewton for other models")
        with torch.no_grad():
            logits, _, caches = model.forward_with_features(x)
            value = check_finite(loss(logits, y), "GN step")
            eps = loss.error(logits, y)
            # Atomic: every block's step is computed before any is applied (memory: one gradient), so a block
            # whose features are refused (RankDeficientError) leaves the whole model as it was.
            direction = {k: v for block in iter_block_directions(model, caches, eps, self.pinv, self._generator)
                         for k, v in block.items()}
            apply_step(model, direction, self.lr / model.depth)  # the 1/L of {eq}`eq-stack`, as lr / L
            self.step_info = {"step_norm": self.lr / model.depth * _norm(direction.values())}
        return value

    def describe(self) -> dict[str, Any]:
        rule = {} if self.pinv.rank_rule == "matrix_rank" else {"rank_rule": self.pinv.rank_rule}  # as before
        rule |= {} if self.pinv.gram == "float64" else {"gram": self.pinv.gram}
        return {"name": self.name, "lr": self.lr, "pinv": self.pinv.kind, "rtol": self.pinv.rtol,
                "atol": self.pinv.atol, "damping": self.pinv.damping, "ridge": self.pinv.ridge,
                "noise": self.pinv.noise, **rule}

    def state_dict(self) -> dict[str, Any]:
        return {"generator": self._generator.get_state()}  # draws the noise of Pinv.noisy

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._generator.set_state(state["generator"])


class MoorePenroseGaussNewton(Optimizer):
    """The Moore-Penrose GN step (Levenberg-Marquardt with damping > 0) for any model: theta <- theta - lr J^+ eps,
    the minimum-norm step that moves the outputs by eps (`revgn.curvature`).

    output="logits": J is the logits' Jacobian (eq-gn). output="body" (a RevMLP): J is the Jacobian of x_L and
    the target eps R^T, the smallest change of x_L that moves the logits by eps; this is what each block of the
    layer-wise step is minimum-norm for, solved for all blocks at once. solver="cg": CG on J J^T with jvp/vjp
    products (any model, either output); solver="pcg" (a RevMLP, output="body"): the same CG preconditioned by
    the blocks' own inverses (`revgn.gn.layerwise_preconditioner`); solver="gram": J J^T formed from a RevMLP's per-half-layer factors and
    solved by Cholesky (logits only; the same step, without iterations). Every step reports the true relative
    residual ||J Delta - target|| / ||target||, the norm of the parameter step and, for CG, its iterations
    (`step_info`); a step whose residual exceeds `REFUSE` x rtol, or whose system is singular, is refused
    (`StepNotSolved`, `RankDeficientError`: both `StepRefused`), leaving the model as it was.
    """

    REFUSE = 10.0  # slack over rtol for the true residual (CG stops on its recursive one)
    #: The rtol used when none is given, chosen by the model's dtype. CG in float32 cannot reach float64's 1e-6
    #: (its true residual stalls near 1e-5), so a float32 model gets 1e-5 and a step is refused above 1e-4.
    RTOL = {torch.float64: 1e-6, torch.float32: 1e-5}

    def __init__(self, lr: float = 1.0, damping: float = 0.0, rtol: float | None = None, maxiter: int | None = None,
                 output: str = "logits", solver: str = "cg"):
        if output not in ("logits", "body"):
            raise ValueError(f"output must be 'logits' or 'body', got {output!r}")
        if solver not in ("cg", "gram", "pcg"):
            raise ValueError(f"solver must be 'cg', 'gram' or 'pcg', got {solver!r}")
        if solver == "gram" and output != "logits":
            raise ValueError("solver='gram' forms J J^T of the logits (C x n rows); x_L's (d x n rows) needs 'cg'")
        if solver == "pcg" and output != "body":
            raise ValueError("solver='pcg' preconditions x_L's J J^T by the blocks' own inverses: it needs output "
                             "'body'")
        self.lr, self.damping, self.rtol, self.maxiter, self.output = _check_lr(lr), damping, rtol, maxiter, output
        self.solver, self.name = solver, f"gn-{solver}"
        self.step_info = {}

    def setup(self, model: nn.Module, batch_size: int) -> None:
        if (self.output == "body" or self.solver != "cg") and not isinstance(model, RevMLP):
            raise TypeError(f"output={self.output!r} with solver={self.solver!r} needs a RevMLP (x_L, or its "
                            "per-half-layer factors); this model is not one")

    def _rtol(self, model) -> float:
        if self.rtol is not None:
            return self.rtol
        dtype = next(model.parameters()).dtype
        if dtype not in self.RTOL:
            raise TypeError(f"MoorePenroseGaussNewton has no default rtol for {dtype} models; pass rtol=")
        return self.RTOL[dtype]

    def step(self, model, x, y, loss) -> float:
        rtol = self._rtol(model)
        with torch.no_grad():
            logits = model(x)
            value = check_finite(loss(logits, y), "Moore-Penrose GN step")
            eps = loss.error(logits, y)
            target = eps if self.output == "logits" else eps @ model.readout.T
        if self.solver == "gram":
            direction, residual = gram_gn_direction(model, x, target, damping=self.damping)
            info = {"gram_residual": residual}
        else:
            # pcg: the blocks' own inverses precondition J J^T (additive Schwarz), built from this batch's features
            precondition = layerwise_preconditioner(model, x) if self.solver == "pcg" else None
            direction, cg = matrix_free_gn_direction(model, x, target, damping=self.damping, rtol=rtol,
                                                     maxiter=self.maxiter, precondition=precondition,
                                                     **({"output": "body"} if self.output == "body" else {}))
            residual, info = cg.relative_residual, {"cg_iterations": cg.iterations, "cg_residual": cg.relative_residual}
        if not residual <= self.REFUSE * rtol:
            raise StepNotSolved(f"the {self.solver} step's true relative residual {residual:.2e} exceeds "
                                f"{self.REFUSE:g} x rtol = {self.REFUSE * rtol:.1e}; step refused")
        apply_step(model, direction, self.lr)
        self.step_info = {**info, "step_norm": self.lr * _norm(direction.values())}
        return value

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "lr": self.lr, "damping": self.damping, "rtol": self.rtol, "output": self.output}


class DampedGaussNewton(Optimizer):
    """Levenberg-Marquardt, Delta = -J^T (J J^T + mu I)^{-1} eps, from the explicit Jacobian on the batch.

    damping mu = 0 gives the minimum-norm GN step. For small models and batches (the Jacobian is formed);
    see `revgn.damping` for the spectral-filter view.
    """

    name = "lm"

    def __init__(self, lr: float = 1.0, damping: float = 0.0):
        if not damping >= 0:
            raise ValueError(f"damping must be >= 0, got {damping}")
        self.lr, self.damping = _check_lr(lr), float(damping)

    def step(self, model, x, y, loss) -> float:
        with torch.no_grad():
            logits = model(x)
            value = check_finite(loss(logits, y), "LM step")
            eps = loss.error(logits, y)
        phi = gn_filter if self.damping == 0 else (lambda lam: lm_filter(lam, self.damping))
        # spectral_step returns -J^T phi(JJ^T) eps: the step to add.
        apply_step(model, {k: -v for k, v in spectral_step(model, x, eps, phi).items()}, self.lr)
        return value


class IterativeLinearisation(Optimizer):
    """Train `Linearized(net)` with an inner optimiser and re-anchor it every K steps (Goldwaser & Ge 2023).

    Use it on a `revgn.linearize.Linearized` model: each step is the inner optimiser's step on the
    linearised model around the current anchor; every K steps the anchor moves to the current parameters
    (a "feature update"). K = 1 is plain (S)GD with the inner optimiser; K = inf never re-anchors, which is
    training the linearisation at init (NTK-regime training).
    """

    name = "itlin"

    def __init__(self, K: float, inner: Optimizer | None = None):
        if not (K == float("inf") or (isinstance(K, int) and K >= 1)):
            raise ValueError(f"K must be a positive integer or inf, got {K!r}")
        self.K, self.inner, self._t = K, inner or SGD(0.1), 0

    def setup(self, model: nn.Module, batch_size: int) -> None:
        from .linearize import Linearized

        if not isinstance(model, Linearized):
            raise TypeError("IterativeLinearisation trains a revgn.linearize.Linearized model")
        self.inner.setup(model, batch_size)

    def step(self, model, x, y, loss) -> float:
        value = self.inner.step(model, x, y, loss)
        self._t += 1
        if self.K != float("inf") and self._t % self.K == 0:
            model.reanchor()
        return value

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "K": self.K, "inner": self.inner.describe()}

    def state_dict(self) -> dict[str, Any]:
        return {"t": self._t, "inner": self.inner.state_dict()}  # the anchor is a buffer of the model

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._t = state["t"]
        self.inner.load_state_dict(state["inner"])


# ------------------------------------------------------------------------------------------------ loop
@dataclass
class History:
    """What a run produced. `steps`: one entry per update; `epochs`: one per evaluation (epoch 0 = init)."""

    steps: dict[str, list] = field(default_factory=lambda: {"epoch": [], "loss": []})
    epochs: dict[str, list] = field(default_factory=lambda: {"epoch": []})
    config: dict[str, Any] = field(default_factory=dict)

    def log(self, table: dict[str, list], **values) -> None:
        for k, v in values.items():
            table.setdefault(k, []).append(v)

    def final(self, key: str) -> float:
        return self.epochs[key][-1]

    def to_dict(self) -> dict[str, Any]:
        return {"config": self.config, "steps": self.steps, "epochs": self.epochs}

    def save(self, path: str | Path) -> Path:
        return atomic_write_json(path, self.to_dict())

    @classmethod
    def load(cls, path: str | Path) -> "History":
        d = read_json(path, "History (JSON)")
        if not (isinstance(d, dict) and {"steps", "epochs", "config"} <= set(d)):
            raise ValueError(f"{path} is not a History: expected the keys steps, epochs and config")
        return cls(d["steps"], d["epochs"], d["config"])


def plateaued(key: str, patience: int) -> Callable[[History], bool]:
    """A `stop` rule for `train`: True once the evaluated `key` (e.g. "val_acc", higher is better) has not
    exceeded its best value for `patience` evaluations in a row. The initial evaluation counts as a value."""
    patience = check_int("patience", patience, 1)

    def stop(hist: History) -> bool:
        values = hist.epochs.get(key)
        if values is None:
            raise KeyError(f"the stop rule watches {key!r}, which is not evaluated (evaluated: {sorted(hist.epochs)})")
        best = max(range(len(values)), key=lambda i: (values[i], -i))  # the first evaluation with the best value
        return len(values) - 1 - best >= patience

    return stop


def reached(key: str, target: float) -> Callable[[History], bool]:
    """A `stop` rule for `train`: True once the evaluated `key` (e.g. "train_loss") is at or below `target`
    (a budget of equal training loss for runs at different step sizes)."""
    def stop(hist: History) -> bool:
        return hist.epochs[key][-1] <= target

    return stop


@torch.no_grad()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, loss, chunk: int = 4096) -> tuple[float, float]:
    """Mean loss and accuracy over a dataset, in chunks to bound memory.

    A non-finite mean loss (NaN inputs, or a model that diverged) raises NonFiniteLossError.
    """
    if len(x) == 0:
        raise ValueError("evaluate needs at least one example")
    total, correct = 0.0, 0.0
    for i in range(0, len(x), chunk):
        out = model(x[i:i + chunk])
        total += loss(out, y[i:i + chunk]).item() * len(out)
        correct += accuracy(out, y[i:i + chunk]) * len(out)
    check_finite(total / len(x), f"evaluation over {len(x)} examples (an input or a parameter is NaN or inf)")
    return total / len(x), correct / len(x)


CHECKPOINT_FORMAT = b"revgn-checkpoint-1"


def _save_checkpoint(path: Path, model, optimizer, hist: History, gen: torch.Generator, epoch: int, last: int):
    """One line `revgn-checkpoint-1 <SHA-256 of the rest>`, then the state as a torch archive; atomic."""
    buffer = io.BytesIO()
    torch.save({"epoch": epoch, "last": last, "config": json.dumps(hist.config, sort_keys=True, default=str),
                "history": json.dumps(hist.to_dict()), "model": model.state_dict(),
                "optimizer": optimizer.state_dict(), "generator": gen.get_state()}, buffer)
    payload = buffer.getvalue()
    atomic_write_bytes(path, CHECKPOINT_FORMAT + b" " + hashlib.sha256(payload).hexdigest().encode() + b"\n" + payload)


def _load_checkpoint(path: Path) -> dict:
    """Read and verify a checkpoint: every failure names the file, says what was wrong and how to go on."""
    fix = "delete it to restart the run from scratch"
    raw = path.read_bytes()
    if not raw:
        raise ValueError(f"checkpoint {path} is empty (a write was cut off); {fix}")
    header, _, payload = raw.partition(b"\n")
    fmt, _, digest = header.partition(b" ")
    if fmt != CHECKPOINT_FORMAT or len(digest) != 64:
        raise ValueError(f"checkpoint {path} is not a {CHECKPOINT_FORMAT.decode()} file; {fix}")
    if hashlib.sha256(payload).hexdigest().encode() != digest:
        raise ValueError(f"checkpoint {path} is corrupt: its content does not match its SHA-256; {fix}")
    try:  # weights_only: tensors and plain containers only, never arbitrary pickled objects
        return torch.load(io.BytesIO(payload), map_location="cpu", weights_only=True)
    except Exception as err:
        raise ValueError(f"checkpoint {path} cannot be read ({type(err).__name__}: {err}); {fix}") from err


def checkpoint_config(path: str | Path) -> dict:
    """The configuration a checkpoint was written under (verified like any checkpoint read)."""
    return json.loads(_load_checkpoint(Path(path))["config"])


def _resume(path: Path, model, optimizer, hist: History, gen: torch.Generator, last: int):
    """Load a checkpoint into model, optimiser and generator; return its history and epoch."""
    state = _load_checkpoint(path)  # tensors are copied to the model's device by load_state_dict
    config = json.dumps(hist.config, sort_keys=True, default=str)
    if state["config"] != config or state["last"] != last:
        raise ValueError(f"checkpoint {path} is from another run (configuration or epochs differ); delete it to "
                         f"start afresh.\n  stored: {state['config']}, {state['last']} epochs\n  asked:  {config}, "
                         f"{last} epochs")
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    gen.set_state(state["generator"])
    d = json.loads(state["history"])
    return History(d["steps"], d["epochs"], d["config"]), state["epoch"]


def _as_xy(data, device) -> tuple[torch.Tensor, torch.Tensor]:
    x, y = (data.x, data.y) if hasattr(data, "x") else data
    if len(x) != len(y):
        raise ValueError(f"inputs ({len(x)}) and targets ({len(y)}) differ in length")
    return x.to(device), y.to(device)


def train(model: nn.Module, optimizer: Optimizer, train_set, *, loss="ce", epochs: int = 1,
          batch_size: int | None = None, test_set=None, seed: int = 0, eval_train_size: int | None = None,
          track_batch_change: bool = False, metrics: dict[str, Callable[[nn.Module], float]] | None = None,
          callbacks: list[Callable[[nn.Module, int], None]] | None = None, eval_every: int = 1,
          progress: bool = True, history: History | None = None, checkpoint: str | Path | None = None,
          config: dict[str, Any] | None = None, stop: Callable[[History], bool] | None = None) -> History:
    """Train `model` in place with `optimizer` and return the `History`.

    Args:
        train_set, test_set: a `revgn.data.Dataset` or an (x, y) pair; y are labels (n,) or targets (n x C).
        loss: "ce", "ce-exact", "mse" or a loss object (see `revgn.losses`).
        batch_size: None for full batch. Batches are drawn without replacement from a permutation made by a
            generator seeded with `seed`; a last batch smaller than `batch_size` is dropped (so every GN step
            sees the same n).
        eval_train_size: evaluate the training loss on the first this many training examples (>= 1; None or more
            than the training set: all of them).
        track_batch_change: also record each batch's loss *after* its update (one more forward pass).
        metrics: name -> f(model), recorded at init and at every evaluation.
        callbacks: f(model, epoch) called at init and at every evaluation (e.g. to take snapshots).
        eval_every: evaluate every this many epochs (and after the last); for long full-batch runs.
        history: continue this history (its epochs are counted on).
        checkpoint: a file. After every evaluation the model, the optimiser's state, the history and the
            shuffling generator are written there atomically. If the file exists when training starts, the run
            resumes from it and continues exactly as if it had not been interrupted (a finished checkpoint
            returns at once). It must come from the same configuration and target epoch, else ValueError.
            The file is a torch archive read with `weights_only=True` (never unpickled), carrying a SHA-256 of
            its content that is verified before use.
        config: more entries for the history's configuration (e.g. the run spec's key); a checkpoint made
            under another configuration is refused.
        stop: f(history) -> bool, asked after every evaluation: True ends training there (e.g. `plateaued`), so
            `epochs` is then the most it trains. A resumed run asks it of the restored history first.
    """
    epochs = check_int("epochs", epochs, 0)
    eval_every = check_int("eval_every", eval_every, 1)
    seed = check_int("seed", seed, 0)
    loss = get_loss(loss)
    device = next(model.parameters()).device
    x, y = _as_xy(train_set, device)
    n_train = len(x)
    batch_size = n_train if batch_size is None else check_int("batch_size", batch_size)
    if not 0 < batch_size <= n_train:
        raise ValueError(f"batch_size must be in 1..{n_train}, got {batch_size}")
    if eval_train_size is not None:
        check_int("eval_train_size", eval_train_size, 1)  # more than the training set means all of it
    test = _as_xy(test_set, device) if test_set is not None else None
    x_eval, y_eval = (x, y) if eval_train_size is None else (x[:eval_train_size], y[:eval_train_size])
    metrics = metrics or {}
    optimizer.setup(model, batch_size)
    hist = history or History(config={"optimizer": optimizer.describe(), "loss": getattr(loss, "name", str(loss)),
                                      "batch_size": batch_size, "seed": seed, "n_train": n_train, **(config or {})})
    start = hist.epochs["epoch"][-1] if hist.epochs["epoch"] else 0
    gen = torch.Generator().manual_seed(seed + 1_000_003 * start)
    last = start + epochs
    if checkpoint is not None:  # with `history` too: a continued run (a switch of optimiser) resumes as well
        checkpoint = Path(checkpoint)
        if checkpoint.exists():
            hist, start = _resume(checkpoint, model, optimizer, hist, gen, last)

    def record(epoch: int) -> None:
        where = f"evaluation at epoch {epoch}"
        tr_loss, tr_acc = _evaluated(where, "training set", lambda: evaluate(model, x_eval, y_eval, loss))
        row = {"epoch": epoch, "train_loss": tr_loss, "train_acc": tr_acc}
        if test is not None:
            row["test_loss"], row["test_acc"] = _evaluated(where, "test set", lambda: evaluate(model, *test, loss))
        with torch.no_grad():
            for k, f in metrics.items():
                row[k] = float(f(model))
                if not math.isfinite(row[k]):
                    raise NonFiniteLossError(f"{where}: metric {k!r} is {row[k]}")
        hist.log(hist.epochs, **row)
        if checkpoint is not None and epoch > 0:  # before the callbacks: a failing callback loses no epoch
            _save_checkpoint(checkpoint, model, optimizer, hist, gen, epoch, last)
        for f in callbacks or ():
            f(model, epoch)

    per_epoch = n_train // batch_size
    bar = tqdm(total=(last - start) * per_epoch, desc=optimizer.name, disable=not progress, mininterval=2.0,
               leave=False)
    stopped = lambda: stop is not None and len(hist.epochs["epoch"]) > 1 and stop(hist)
    try:
        if start == 0:
            record(0)
        for epoch in range(start + 1, last + 1):
            if stopped():  # checked before an epoch, so a run resumed after its stopping evaluation stops too
                break
            full_batch = batch_size == n_train  # then every step sees all examples: no shuffle needed
            order = None if full_batch else torch.randperm(n_train, generator=gen).to(device)
            for b in range(per_epoch):
                if order is None:
                    xb, yb = x, y
                else:
                    idx = order[b * batch_size:(b + 1) * batch_size]
                    xb, yb = x[idx], y[idx]
                try:
                    before = optimizer.step(model, xb, yb, loss)
                except NonFiniteLossError as err:
                    raise NonFiniteLossError(f"epoch {epoch}, step {b + 1}/{per_epoch}: {err}") from err
                row = {"epoch": epoch, "loss": before, **optimizer.step_info}
                if track_batch_change:
                    with torch.no_grad():
                        row["loss_after"] = check_finite(loss(model(xb), yb), f"epoch {epoch} after step")
                hist.log(hist.steps, **row)
                bar.update()
            if (epoch - start) % eval_every == 0 or epoch == last:
                record(epoch)
                bar.set_postfix(loss=f"{hist.epochs['train_loss'][-1]:.3g}", refresh=False)
    except (NonFiniteLossError, StepRefused) as err:
        err.history = hist  # what was measured before the failure
        raise
    finally:
        bar.close()
    return hist


def _evaluated(where: str, name: str, compute):
    try:
        return compute()
    except NonFiniteLossError as err:
        raise NonFiniteLossError(f"{where}, {name}: {err}") from err
