"""Gauss-Newton curvature of a model on a batch, as linear operators; GN steps as operator x solver.

With J the Jacobian of the model's outputs on a batch (logits by default, x_L with output="body" for a
RevMLP), the GN-type steps of this library are Delta = J^T u with (J J^T + mu I) u = eps (eq-gn; mu > 0 is
Levenberg-Marquardt, mu = 0 and J of full row rank the Moore-Penrose step J^+ eps). This module applies
J, J^T and J J^T + mu I in three ways, and hands the system to a solver of `revgn.solvers`:

- explicit: `jacobian_matrix` (jacrev; memory (n O) x p, small models only, for checks), then eigh with a
  spectral filter (`kernel_step`, `spectral_step`, `explicit_gn_direction`);
- matrix-free: `TangentKernel` (jvp/vjp products only, any model), then CG (`matrix_free_gn_direction`);
- factored: `factored_kernel` (a RevMLP's per-half-layer factors, eq-ntk-factors), then Cholesky
  (`gram_gn_direction`); for x_L of a RevMLP, `revgn.block_kernel.BlockKernel` (J J^T through the blocks, with
  the blocks' own inverses), then preconditioned CG (`block_pcg_direction`).

The tractable exact step of a RevMLP, which never forms J J^T, is `revgn.gn`'s.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn
from torch.func import jacrev, jvp, vjp

from .block_kernel import BlockKernel
from .functional import Params, as_function, params_of, unflatten
from .solvers import CGResult, cholesky_factor, conjugate_gradient, spectral_solve


def jacobian_matrix(model: nn.Module, x: torch.Tensor, params: Params | None = None, *, wrt=None,
                    **kwargs) -> torch.Tensor:
    """J = d vec(f(x)) / d theta as an (n * out) x p matrix, rows example-major, columns in parameter order: the
    library's one Jacobian builder. `wrt`: only these parameters' columns (the others held at `params`), so a
    caller can build J one parameter tensor at a time (memory: that tensor's columns)."""
    params = params_of(model) if params is None else params
    f = as_function(model, x, **kwargs)
    part = params if wrt is None else {k: params[k] for k in wrt}
    jac = jacrev(lambda sub: f({**params, **sub}))(part)
    rows = next(iter(jac.values())).shape[0] * next(iter(jac.values())).shape[1]
    return torch.cat([jac[k].reshape(rows, -1) for k in part], dim=1)


class TangentKernel:
    """J J^T + damping I of the model's outputs on x at `params` (keyword arguments go to its forward), as a
    linear operator on output-shaped tensors.

    `J(step)` (a jvp: parameters -> outputs), `JT(u)` (a vjp: outputs -> parameters) and `K(u)` =
    J J^T u + damping u. The forward pass is taken once, here (`outputs`); each product costs one pass.
    """

    def __init__(self, model: nn.Module, x: torch.Tensor, *, params: Params | None = None, damping: float = 0.0,
                 **kwargs):
        self._linearise(as_function(model, x, **kwargs), params_of(model) if params is None else params, damping)

    @classmethod
    def of_function(cls, f: Callable[[Params], torch.Tensor], params: Params, *,
                    damping: float = 0.0) -> "TangentKernel":
        """The same operator for any function of the parameters, f(params) -> outputs (no model, no inputs)."""
        kernel = cls.__new__(cls)
        kernel._linearise(f, params, damping)
        return kernel

    def _linearise(self, f: Callable[[Params], torch.Tensor], params: Params, damping: float) -> None:
        if damping < 0:
            raise ValueError(f"damping must be >= 0, got {damping}")
        self.params, self.damping, self.f = params, damping, f
        self.outputs, self._pullback = vjp(self.f, self.params)

    def J(self, step: Params) -> torch.Tensor:
        return jvp(self.f, (self.params,), (step,))[1]

    def JT(self, u: torch.Tensor) -> Params:
        return self._pullback(u)[0]

    def __call__(self, u: torch.Tensor) -> torch.Tensor:
        moved = self.J(self.JT(u))
        # no "+ 0 * u" when undamped: the NTK-vector product is then J J^T u to the last bit
        return moved + self.damping * u if self.damping else moved

    def relative_residual(self, step: Params, u: torch.Tensor, error: torch.Tensor) -> float:
        """||J step + damping u - error|| / ||error||, with one more jvp (a solver's own residual can drift
        from it)."""
        with torch.no_grad():  # a diagnostic: no graph (the error may carry one from the caller's forward pass)
            moved = self.J(step) + self.damping * u
            norm = error.detach().norm()
            return float((moved - error.detach()).norm() / norm) if norm > 0 else 0.0


def factored_kernel(model: nn.Module, x1: torch.Tensor, x2: torch.Tensor | None = None) -> torch.Tensor:
    """Theta(x1, x2) = J1 J2^T ((n1 C) x (n2 C)) for a RevMLP's logits from its `ntk_factors`: the sum over
    half-layers of (A1 A2^T)_{ij} (G1[i, c] . G2[j, c']) (eq-ntk-factors), C backward passes per input set."""
    if not hasattr(model, "ntk_factors"):
        raise ValueError(f"the factored kernel needs a model with ntk_factors (a RevMLP), got {type(model).__name__}")
    pairs1 = model.ntk_factors(x1)
    pairs2 = pairs1 if x2 is None else model.ntk_factors(x2)
    (n1, C, _), n2 = pairs1[0][1].shape, pairs2[0][1].shape[0]
    K = 0
    for (A1, G1), (A2, G2) in zip(pairs1, pairs2):  # one matrix product each (einsum's path is far slower)
        GG = (G1.reshape(n1 * C, -1) @ G2.reshape(n2 * C, -1).T).view(n1, C, n2, C)
        K = K + GG * (A1 @ A2.T)[:, None, :, None]
    return K.reshape(n1 * C, n2 * C)


def kernel_step(J: torch.Tensor, residual: torch.Tensor, phi) -> torch.Tensor:
    """Delta = -J^T U phi(Lambda) U^T r for an explicit Jacobian J ((n O) x p) and residual r (n O)
    (eq-filters; `revgn.damping` holds the filters phi)."""
    return -J.T @ spectral_solve(J @ J.T, residual.reshape(-1), phi)


def spectral_step(model: nn.Module, x: torch.Tensor, residual: torch.Tensor, phi) -> Params:
    """`kernel_step` for a model's explicit Jacobian on x, as {parameter name: step} (small models only)."""
    params = params_of(model)
    return unflatten(kernel_step(jacobian_matrix(model, x, params), residual, phi), params)


def explicit_gn_direction(model: nn.Module, x: torch.Tensor, error: torch.Tensor, **kwargs) -> Params:
    """The Moore-Penrose GN direction J^+ eps from the explicit Jacobian."""
    params = params_of(model)
    J = jacobian_matrix(model, x, params, **kwargs)
    step = torch.linalg.pinv(J) @ error.reshape(-1)
    return unflatten(step, params)


def _checked_kernel(model: nn.Module, x: torch.Tensor, error: torch.Tensor, damping: float, what: str,
                    **kwargs) -> TangentKernel:
    K = TangentKernel(model, x, damping=damping, **kwargs)
    if K.outputs.shape != error.shape:
        raise ValueError(f"error has shape {tuple(error.shape)}, the model's {what} {tuple(K.outputs.shape)}")
    return K


def matrix_free_gn_direction(model: nn.Module, x: torch.Tensor, error: torch.Tensor, *, damping: float = 0.0,
                             rtol: float = 1e-10, maxiter: int | None = None, strict: bool = True,
                             precondition: Callable[[torch.Tensor], torch.Tensor] | None = None,
                             **kwargs) -> tuple[Params, CGResult]:
    """Delta = J^T (J J^T + damping I)^{-1} eps without forming J: CG on the kernel, jvp/vjp products only.

    J is the Jacobian of the model's outputs on x (keyword arguments go to its forward): of the logits by
    default, of x_L with output="body" (a RevMLP).
    The result's `relative_residual` is the true one, ||J Delta + damping u - eps|| / ||eps||, recomputed with
    one more product (CG's recursive residual drifts from it in floating point). `precondition`: as in
    `conjugate_gradient` (for x_L's Jacobian of a RevMLP, `BlockKernel.inverse`)."""
    K = _checked_kernel(model, x, error, damping, "output", **kwargs)
    res = conjugate_gradient(K, error, rtol=rtol, maxiter=maxiter, strict=strict, precondition=precondition)
    step = K.JT(res.solution)
    res.relative_residual = K.relative_residual(step, res.solution, error)
    return step, res


def block_pcg_direction(model: nn.Module, x: torch.Tensor, target: torch.Tensor, *, damping: float = 0.0,
                        rtol: float = 1e-10, maxiter: int | None = None,
                        strict: bool = True) -> tuple[Params, CGResult]:
    """The step of `matrix_free_gn_direction` for x_L of a RevMLP (target: n x d), by CG on `BlockKernel`
    preconditioned by the blocks' own inverses (`BlockKernel.inverse`), and Delta = J^T u through the blocks.
    The result's `relative_residual` is the true one, recomputed by a jvp (autograd: another route than the
    products CG used). Raises `RankDeficientError` where a block's features are rank-deficient (no block
    inverse exists; plain CG, `matrix_free_gn_direction`, still solves such a system)."""
    K = BlockKernel(model, x, damping)
    res = conjugate_gradient(K, target, rtol=rtol, maxiter=maxiter, strict=strict, precondition=K.inverse)
    step = K.JT(res.solution)
    res.relative_residual = _checked_kernel(model, x, target, damping, "x_L", output="body").relative_residual(
        step, res.solution, target)
    return step, res


def gram_gn_direction(model: nn.Module, x: torch.Tensor, error: torch.Tensor, *,
                      damping: float = 0.0) -> tuple[Params, float]:
    """The step of `matrix_free_gn_direction` for a RevMLP's logits, solved directly: J J^T from the model's
    per-half-layer factors (`factored_kernel`), then (J J^T + damping I) u = eps by Cholesky and Delta = J^T u
    (one vjp). No iterations, so its cost does not grow as J J^T grows ill-conditioned along training. Returns
    Delta and its true relative residual ||J Delta + damping u - eps|| / ||eps||; raises `RankDeficientError`
    where J J^T + damping I is not numerically positive definite (the step is then refused, as for CG)."""
    K = _checked_kernel(model, x, error, damping, "logits")
    with torch.no_grad():
        dense = factored_kernel(model, x)
        dense.diagonal().add_(damping)
        chol = cholesky_factor(dense, f"J J^T + {damping:g} I")
    u = torch.cholesky_solve(error.detach().reshape(-1, 1), chol).view_as(error)
    step = K.JT(u)
    return step, K.relative_residual(step, u, error)
