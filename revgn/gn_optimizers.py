"""The Gauss-Newton optimisers of the one training loop: exact GN through the reversible blocks
(`GaussNewton`, {eq}`eq-stack`), the Moore-Penrose step of any model (`MoorePenroseGaussNewton`, {eq}`eq-gn`)
and Levenberg-Marquardt from the explicit Jacobian (`DampedGaussNewton`). Each one is an operator of
`revgn.curvature` (or the layer-wise recursion of `revgn.gn`) with a solver, behind the `revgn.optimizers.Optimizer`
interface: the whole direction is computed and checked before a parameter changes.
"""
from __future__ import annotations

from functools import partial
from typing import Any

import torch
from torch import nn

from .curvature import (TangentKernel, block_pcg_direction, explicit_gn_direction, gram_gn_direction,
                        matrix_free_gn_direction, spectral_step)
from .damping import gn_filter, lm_filter
from .gn import iter_block_directions
from .losses import check_finite
from .models import RevMLP
from .optimizers import Optimizer, apply_step, check_lr, step_norm
from .pinv import SPEC_FIELDS as PINV_FIELDS
from .pinv import Pinv, pinv_of_spec
from .solvers import StepNotSolved


class GaussNewton(Optimizer):
    """The exact, tractable GN step of `revgn.gn` for a `RevMLP`: ``theta <- theta - lr * J^{-|} eps`` (eq-stack).

    lr = 1 moves the logits by -eps to first order (for the square loss: onto the targets).
    """

    name = "gn"

    def __init__(self, lr: float = 1.0, pinv: Pinv = Pinv(), seed: int = 0):
        self.lr, self.pinv, self.seed = check_lr(lr), pinv, seed
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
            self._step_info = {"step_norm": self.lr / model.depth * step_norm(direction.values())}
        return value

    @staticmethod
    def spec_fields(o) -> tuple[str, ...]:
        return ("pinv", *PINV_FIELDS[o.pinv])  # the pseudo-inverse's own fields (`revgn.pinv.SPEC_FIELDS`)

    @classmethod
    def from_spec(cls, o, seed: int) -> GaussNewton:
        return cls(o.lr, pinv_of_spec(o), seed=seed)

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
        self.lr, self.damping, self.rtol, self.maxiter, self.output = check_lr(lr), damping, rtol, maxiter, output
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
        self._step_info = {**info, "step_norm": self.lr * step_norm(direction.values())}
        return value

    @staticmethod
    def spec_fields(o) -> tuple[str, ...]:
        return ("mu", "output", "cg_rtol", "cg_maxiter", "solver")

    @classmethod
    def from_spec(cls, o, seed: int) -> MoorePenroseGaussNewton:
        return cls(o.lr, damping=o.mu, rtol=o.cg_rtol, maxiter=o.cg_maxiter or None, output=o.output, solver=o.solver)

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
        self.lr, self.damping = check_lr(lr), float(damping)

    def step(self, model, x, y, loss) -> float:
        with torch.no_grad():
            logits = model(x)
            value = check_finite(loss(logits, y), "LM step")
            eps = loss.error(logits, y)
        phi = gn_filter if self.damping == 0 else (lambda lam: lm_filter(lam, self.damping))
        # spectral_step returns -J^T phi(JJ^T) eps: the step to add.
        apply_step(model, {k: -v for k, v in spectral_step(model, x, eps, phi).items()}, self.lr)
        return value
