"""The optimisers of the one training loop (`revgn.train.train`): SGD, Adam, exact GN (`GaussNewton`), the
Moore-Penrose step (`MoorePenroseGaussNewton`), Levenberg-Marquardt (`DampedGaussNewton`),
`IterativeLinearisation`.

An optimiser implements `step(model, x, y, loss) -> float`: one update on a batch, returning the batch loss
*before* the update, and `describe()`, its configuration as a record stores it. A step is atomic: every
optimiser checks its whole update (loss, gradient or direction) before it changes a parameter, so a step
that raises leaves the model bit-identical.
"""
from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from functools import partial
from typing import Any, Callable

import torch
from torch import nn

from .curvature import (TangentKernel, block_pcg_direction, explicit_gn_direction, gram_gn_direction,
                        matrix_free_gn_direction, spectral_step)
from .damping import gn_filter, lm_filter
from .gn import iter_block_directions
from .pinv import SPEC_FIELDS as PINV_FIELDS
from .pinv import Pinv, pinv_of_spec
from .losses import NonFiniteLossError, check_finite
from .models import RevMLP
from .solvers import StepNotSolved


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
            self._step_info = {"step_norm": self.lr / model.depth * _norm(direction.values())}
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
    products (any model, either output); solver="pcg" (a RevMLP, output="body"): CG on x_L's J J^T applied
    through the blocks, preconditioned by the blocks' own inverses (`revgn.block_kernel.BlockKernel`);
    solver="gram": J J^T formed from a RevMLP's per-half-layer factors and solved by Cholesky (logits only; the
    same step, without iterations); solver="explicit": J formed whole and pseudo-inverted (undamped; small
    problems and checks). Every step reports the true relative residual ||J Delta - target|| / ||target||, the
    norm of the parameter step and, for CG, its iterations (`step_info`); a step whose residual exceeds `REFUSE`
    x rtol, or whose system is singular, is refused (`StepNotSolved`, `RankDeficientError`: both
    `StepRefused`), leaving the model as it was. refuse=False takes CG's step after at most `maxiter`
    iterations whatever its residual (truncated CG, as in Hessian-free optimisation; the benchmarks time a
    fixed number of iterations this way).
    """

    REFUSE = 10.0  # slack over rtol for the true residual (CG stops on its recursive one)
    #: The rtol used when none is given, chosen by the model's dtype. CG in float32 cannot reach float64's 1e-6
    #: (its true residual stalls near 1e-5), so a float32 model gets 1e-5 and a step is refused above 1e-4.
    RTOL = {torch.float64: 1e-6, torch.float32: 1e-5}

    def __init__(self, lr: float = 1.0, damping: float = 0.0, rtol: float | None = None, maxiter: int | None = None,
                 output: str = "logits", solver: str = "cg", refuse: bool = True):
        if output not in ("logits", "body"):
            raise ValueError(f"output must be 'logits' or 'body', got {output!r}")
        if solver not in ("cg", "gram", "pcg", "explicit"):
            raise ValueError(f"solver must be 'cg', 'gram', 'pcg' or 'explicit', got {solver!r}")
        if solver == "explicit" and damping:
            raise ValueError("solver='explicit' pseudo-inverts J undamped; damping needs 'cg', 'pcg' or 'gram'")
        if solver == "gram" and output != "logits":
            raise ValueError("solver='gram' forms J J^T of the logits (C x n rows); x_L's (d x n rows) needs 'cg'")
        if solver == "pcg" and output != "body":
            raise ValueError("solver='pcg' preconditions x_L's J J^T by the blocks' own inverses: it needs output "
                             "'body'")
        self.lr, self.damping, self.rtol, self.maxiter, self.output = _check_lr(lr), damping, rtol, maxiter, output
        self.solver, self.name, self.refuse = solver, f"gn-{solver}", refuse
        self._step_info = {}

    def setup(self, model: nn.Module, batch_size: int) -> None:
        if (self.output == "body" or self.solver in ("gram", "pcg")) and not isinstance(model, RevMLP):
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
        body = {"output": "body"} if self.output == "body" else {}
        if self.solver == "gram":
            direction, residual = gram_gn_direction(model, x, target, damping=self.damping)
            info = {"gram_residual": residual}
        elif self.solver == "explicit":
            direction = explicit_gn_direction(model, x, target, **body)
            residual = TangentKernel(model, x, **body).relative_residual(direction, torch.zeros_like(target), target)
            info = {"explicit_residual": residual}
        else:
            solve = block_pcg_direction if self.solver == "pcg" else partial(matrix_free_gn_direction, **body)
            direction, cg = solve(model, x, target, damping=self.damping, rtol=rtol, maxiter=self.maxiter,
                                  strict=self.refuse)
            residual, info = cg.relative_residual, {"cg_iterations": cg.iterations, "cg_residual": cg.relative_residual}
        if self.refuse and not residual <= self.REFUSE * rtol:
            raise StepNotSolved(f"the {self.solver} step's true relative residual {residual:.2e} exceeds "
                                f"{self.REFUSE:g} x rtol = {self.REFUSE * rtol:.1e}; step refused")
        apply_step(model, direction, self.lr)
        self._step_info = {**info, "step_norm": self.lr * _norm(direction.values())}
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


@dataclass(frozen=True)
class SpecReader:
    """How a run spec's optimiser (`revgn.spec.OptimSpec`) names one of these optimisers: the spec fields it
    reads beyond its name and rate (reads(o)), and the optimiser built from them (build(o, seed))."""

    reads: Callable[[Any], tuple[str, ...]]
    build: Callable[[Any, int], Optimizer]


#: every optimiser a run spec can name, with the spec fields it reads: a new one is added here, beside its class
#: (and its fields to `OptimSpec`, at defaults that leave the committed keys as they are)
FROM_SPEC = {
    "gn": SpecReader(lambda o: ("pinv", *PINV_FIELDS[o.pinv]),
                     lambda o, seed: GaussNewton(o.lr, pinv_of_spec(o), seed=seed)),
    "gn-mp": SpecReader(lambda o: ("mu", "output", "cg_rtol", "cg_maxiter", "solver"),
                        lambda o, seed: MoorePenroseGaussNewton(o.lr, damping=o.mu, rtol=o.cg_rtol,
                                                                maxiter=o.cg_maxiter or None, output=o.output,
                                                                solver=o.solver)),
    "sgd": SpecReader(lambda o: ("momentum", "weight_decay", "decay"),
                      lambda o, seed: SGD(o.lr, momentum=o.momentum, weight_decay=o.weight_decay, decay=o.decay)),
    "adam": SpecReader(lambda o: (), lambda o, seed: Adam(o.lr)),
}
