"""Reference GN routes for checking the tractable step, and for models that are not reversible.

- `jacobian_matrix` / `explicit_gn_direction`: the full Jacobian by reverse mode (jacrev) and the
  Moore-Penrose step J^+ eps (eq-gn). Memory (n C) x p: small models only.
- `matrix_free_gn_direction`: Delta = J^T u with (J J^T + lambda I) u = eps solved by conjugate gradients,
  using only Jacobian-vector (jvp) and vector-Jacobian (vjp) products. With lambda = 0 and J of full row rank
  this is again J^+ eps, for any model; with lambda > 0 it is the Levenberg-Marquardt step.
- `gram_gn_direction`: the same step for a RevMLP's logits with J J^T formed from per-half-layer factors and
  solved by Cholesky: exact to rounding, at the cost of C backward passes instead of one jvp/vjp per CG iteration.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn
from torch.func import jacrev, jvp, vjp

from .functional import Params, as_function, params_of, unflatten
from .gn import RankDeficientError


class StepNotSolved(RankDeficientError):
    """A Moore-Penrose step's kernel system was not solved to the asked tolerance (CG ran out of iterations, or
    the true residual of a CG or Cholesky solution is too large): the step is refused (a failure of the method on
    this batch, like rank-deficient features, not of the machine)."""


def jacobian_matrix(model: nn.Module, x: torch.Tensor, params: Params | None = None, **kwargs) -> torch.Tensor:
    """J = d vec(f(x)) / d theta as an (n * out) x p matrix, rows example-major, columns in parameter order."""
    params = params_of(model) if params is None else params
    jac = jacrev(as_function(model, x, **kwargs))(params)
    rows = next(iter(jac.values())).shape[0] * next(iter(jac.values())).shape[1]
    return torch.cat([jac[k].reshape(rows, -1) for k in params], dim=1)


def explicit_gn_direction(model: nn.Module, x: torch.Tensor, error: torch.Tensor, **kwargs) -> Params:
    """The Moore-Penrose GN direction J^+ eps from the explicit Jacobian."""
    params = params_of(model)
    J = jacobian_matrix(model, x, params, **kwargs)
    step = torch.linalg.pinv(J) @ error.reshape(-1)
    return unflatten(step, params)


@dataclass
class CGResult:
    solution: torch.Tensor
    iterations: int
    relative_residual: float


def conjugate_gradient(matvec: Callable[[torch.Tensor], torch.Tensor], b: torch.Tensor, *, rtol: float = 1e-10,
                       maxiter: int | None = None, strict: bool = True,
                       precondition: Callable[[torch.Tensor], torch.Tensor] | None = None) -> CGResult:
    """Solve A u = b for symmetric positive (semi-)definite A given as `matvec`.

    Stops when ||A u - b|| <= rtol ||b||. If `maxiter` iterations do not get there: raises when `strict`,
    else returns the last iterate (for timing a fixed number of iterations). `precondition`: v -> M^{-1} v
    for a symmetric positive definite M^{-1} close to A^{-1} (preconditioned CG); the stopping rule stays the
    unpreconditioned residual's. Without it the iteration is plain CG, operation for operation.
    """
    maxiter = maxiter or 2 * b.numel()
    M = precondition or (lambda v: v)
    u = torch.zeros_like(b)
    r = b.clone()
    z = M(r)
    p = z.clone()
    rs = (r * z).sum()
    bnorm = b.norm()
    if bnorm == 0:
        return CGResult(u, 0, 0.0)
    for it in range(1, maxiter + 1):
        Ap = matvec(p)
        alpha = rs / (p * Ap).sum()
        u = u + alpha * p
        r = r - alpha * Ap
        rnorm = (r * r).sum().sqrt()
        if rnorm <= rtol * bnorm:
            return CGResult(u, it, (rnorm / bnorm).item())
        z = M(r)
        rs_new = (r * z).sum()
        p = z + (rs_new / rs) * p
        rs = rs_new
    if not strict:
        return CGResult(u, maxiter, (rnorm / bnorm).item())
    raise StepNotSolved(f"conjugate gradients did not reach rtol={rtol} in {maxiter} iterations "
                        f"(relative residual {(rnorm / bnorm).item():.2e}); J J^T may be singular: add damping")


def matrix_free_gn_direction(model: nn.Module, x: torch.Tensor, error: torch.Tensor, *, damping: float = 0.0,
                             rtol: float = 1e-10, maxiter: int | None = None, strict: bool = True,
                             precondition: Callable[[torch.Tensor], torch.Tensor] | None = None,
                             **kwargs) -> tuple[Params, CGResult]:
    """Delta = J^T (J J^T + damping I)^{-1} eps without forming J: CG on the kernel, jvp/vjp products only.

    J is the Jacobian of model(x, **kwargs): of the logits by default, of x_L with output="body" (a RevMLP).
    The result's `relative_residual` is the true one, ||J Delta + damping u - eps|| / ||eps||, recomputed with
    one more product (CG's recursive residual drifts from it in floating point). `precondition`: as in
    `conjugate_gradient` (for x_L's Jacobian of a RevMLP, `revgn.gn.layerwise_preconditioner`)."""
    if damping < 0:
        raise ValueError(f"damping must be >= 0, got {damping}")
    params = params_of(model)
    f = as_function(model, x, **kwargs)
    out, vjp_fn = vjp(f, params)
    if out.shape != error.shape:
        raise ValueError(f"error has shape {tuple(error.shape)}, the model's output {tuple(out.shape)}")

    def kernel_matvec(v: torch.Tensor) -> torch.Tensor:
        (g,) = vjp_fn(v)
        return jvp(f, (params,), (g,))[1] + damping * v

    res = conjugate_gradient(kernel_matvec, error, rtol=rtol, maxiter=maxiter, strict=strict, precondition=precondition)
    (step,) = vjp_fn(res.solution)
    res.relative_residual = _true_residual(f, params, step, res.solution, error, damping)
    return step, res


def gram_gn_direction(model: nn.Module, x: torch.Tensor, error: torch.Tensor, *,
                      damping: float = 0.0) -> tuple[Params, float]:
    """The step of `matrix_free_gn_direction` for a RevMLP's logits, solved directly: J J^T from the model's
    per-half-layer factors (`empirical_ntk(method="factors")`, eq-ntk-factors, C backward passes), then
    (J J^T + damping I) u = eps by Cholesky and Delta = J^T u (one vjp). No iterations, so its cost does not
    grow as J J^T grows ill-conditioned along training. Returns Delta and its true relative residual
    ||J Delta + damping u - eps|| / ||eps||; raises RankDeficientError where J J^T + damping I is not
    numerically positive definite (the step is then refused, as for CG)."""
    from .kernels import empirical_ntk

    if damping < 0:
        raise ValueError(f"damping must be >= 0, got {damping}")
    params = params_of(model)
    f = as_function(model, x)
    out, vjp_fn = vjp(f, params)
    if out.shape != error.shape:
        raise ValueError(f"error has shape {tuple(error.shape)}, the model's logits {tuple(out.shape)}")
    with torch.no_grad():
        K = empirical_ntk(model, x, method="factors")
        K.diagonal().add_(damping)
        chol, info = torch.linalg.cholesky_ex(K)
    if info:
        raise RankDeficientError(f"J J^T + {damping:g} I ({K.shape[0]} x {K.shape[0]}) is not numerically positive "
                                 f"definite (Cholesky failed at column {int(info)}): add damping")
    u = torch.cholesky_solve(error.detach().reshape(-1, 1), chol).view_as(error)
    (step,) = vjp_fn(u)
    return step, _true_residual(f, params, step, u, error, damping)


def _true_residual(f, params: Params, step: Params, u: torch.Tensor, error: torch.Tensor, damping: float) -> float:
    """||J step + damping u - error|| / ||error||, with one more jvp (a solver's own residual can drift from it)."""
    with torch.no_grad():  # a diagnostic: no graph (the error may carry one from the caller's forward pass)
        moved = jvp(f, (params,), (step,))[1] + damping * u
        norm = error.detach().norm()
        return float((moved - error.detach()).norm() / norm) if norm > 0 else 0.0
