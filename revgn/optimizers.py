"""What supplies a step to the one training loop (`revgn.train.train`): the `Optimizer` interface, the
first-order optimisers (SGD, Adam) and `IterativeLinearisation`; the Gauss-Newton optimisers, which build on
this interface, are `revgn.gn_optimizers`.

An optimiser implements `step(model, x, y, loss) -> float`: one update on a batch, returning the batch loss
*before* the update, and `describe()`, its configuration as a record stores it. A step is atomic: every
optimiser checks its whole update (loss, gradient or direction) before it changes a parameter, so a step
that raises leaves the model bit-identical. One that a run spec can name (`revgn.spec.OPTIMIZERS`) also owns its
spec fields: `spec_fields(o)` lists those it reads and `from_spec(o, seed)` builds it from them.
"""
from __future__ import annotations

import math
import numbers
from typing import Any, Callable

import torch
from torch import nn

from .losses import NonFiniteLossError, check_finite


def check_lr(lr: float) -> float:
    """A positive finite rate as a float; numpy and torch scalars are accepted, bools and strings are not."""
    if isinstance(lr, torch.Tensor) and lr.numel() == 1:
        lr = lr.item()
    if isinstance(lr, bool) or not isinstance(lr, numbers.Real):
        raise TypeError(f"learning rate must be a number, got {lr!r} ({type(lr).__name__})")
    if not (math.isfinite(lr) and lr > 0):
        raise ValueError(f"learning rate must be a positive finite number, got {lr!r}")
    return float(lr)


def check_finite_tensors(tensors: dict[str, torch.Tensor], what: str) -> None:
    """Raise NonFiniteLossError, before anything is changed, if an update holds NaN or inf."""
    bad = [k for k, t in tensors.items() if t is not None and not torch.isfinite(t).all()]
    if bad:
        raise NonFiniteLossError(f"the {what} of {', '.join(bad[:4])}{' ...' if len(bad) > 4 else ''} holds NaN or "
                                 f"inf; the step was not applied (lower the learning rate or regularise)")


class Optimizer:
    """Base class: `setup` once before training, `step` once per batch. After a step, `step_info` holds what
    the optimiser reports about it (the parameter step's norm, a solver's residual); the loop logs it."""

    name = "optimizer"

    @property
    def step_info(self) -> dict[str, float]:
        """What the last step measured beyond its loss (its norm, a solver's residual and iterations)."""
        return getattr(self, "_step_info", {})  # a fresh {} before the first step: nothing shared

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

    @staticmethod
    def spec_fields(o) -> tuple[str, ...]:
        """The fields of a run spec's optimiser (`revgn.spec.OptimSpec` o) this optimiser reads beyond its name and
        rate; a spec that sets any other is refused (it would train as without it, under another key)."""
        return ()

    @classmethod
    def from_spec(cls, o, seed: int) -> Optimizer:
        """The optimiser a run spec's `OptimSpec` o names (`revgn.spec.OPTIMIZERS`); seed draws any step noise."""
        raise NotImplementedError(f"{cls.__name__} cannot be named by a run spec")


class FirstOrder(Optimizer):
    """A torch.optim optimiser on the batch-mean loss (the gradient is taken with autograd, grad enabled).

    decay: beta of the schedule lr_t = lr / (1 + beta t), t the number of steps taken (0: constant).
    """

    def __init__(self, name: str, factory: Callable, lr: float, decay: float = 0.0, **kwargs):
        if decay < 0:
            raise ValueError(f"decay must be >= 0, got {decay}")
        self.name, self.lr, self.decay, self.kwargs = name, check_lr(lr), decay, kwargs
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
        check_finite_tensors({k: p.grad for k, p in model.named_parameters() if p.requires_grad}, "gradient")
        before = [p.detach().clone() for group in self._opt.param_groups for p in group["params"]]
        self._opt.step()
        params = [p for group in self._opt.param_groups for p in group["params"]]
        with torch.no_grad():
            norm = step_norm(p - b for p, b in zip(params, before))
            if not math.isfinite(norm):  # the update overflowed: put the parameters back, then refuse
                for p, b in zip(params, before):
                    p.copy_(b)
                raise NonFiniteLossError(f"{self.name} step: the update is not finite (lr {self.lr:g}); the "
                                         f"parameters are left as they were")
        self._step_info = {"step_norm": norm}
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


class SGD(FirstOrder):
    """`torch.optim.SGD`; a run spec names it "sgd" and sets momentum, weight_decay and decay."""

    def __init__(self, lr: float, momentum: float = 0.0, weight_decay: float = 0.0, decay: float = 0.0):
        super().__init__("sgd", torch.optim.SGD, lr, decay, momentum=momentum, weight_decay=weight_decay)

    @staticmethod
    def spec_fields(o) -> tuple[str, ...]:
        return ("momentum", "weight_decay", "decay")

    @classmethod
    def from_spec(cls, o, seed: int) -> SGD:
        return cls(o.lr, momentum=o.momentum, weight_decay=o.weight_decay, decay=o.decay)


class Adam(FirstOrder):
    """`torch.optim.Adam` at its default betas and eps, with no schedule (Adam as in the papers); "adam" in a
    run spec, which sets only its rate."""

    def __init__(self, lr: float, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8):
        super().__init__("adam", torch.optim.Adam, lr, betas=betas, eps=eps)

    @classmethod
    def from_spec(cls, o, seed: int) -> Adam:
        return cls(o.lr)


def step_norm(tensors) -> float:
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
    check_finite_tensors(direction, "step")
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name in direction:
                p.sub_(direction[name], alpha=lr)


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
