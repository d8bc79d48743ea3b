"""Solvers for the kernel systems of Gauss-Newton steps, kept apart from how the operator is applied.

Every GN-type step in this library solves a symmetric positive (semi-)definite system K u = b, with K a
tangent kernel J J^T + mu I or a half-layer's Gram matrix A A^T (`revgn.curvature` applies them as linear
operators; `revgn.gn` forms the Gram matrices). The solvers here see only K, as a matrix or as a product:

- `cholesky_factor`: a Cholesky factor, refusing a matrix that is not numerically positive definite;
- `spectral_solve`: u = U phi(Lambda) U^T b from an eigendecomposition, phi one of `revgn.damping`'s filters;
- `conjugate_gradient`: K given only as v -> K v, optionally preconditioned.

A step that cannot be computed exactly is refused, never approximated silently: `StepRefused`, as
`RankDeficientError` (the features or kernel are singular at their precision) or `StepNotSolved` (an
iterative or direct solve missed its tolerance).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch


class StepRefused(ValueError):
    """A GN-type step was refused before anything moved: the method failed on this batch, not the machine."""


class RankDeficientError(StepRefused):
    """The features of a half-layer (or a kernel) cannot be inverted exactly; the message says which and why."""


class StepNotSolved(StepRefused):
    """A Moore-Penrose step's kernel system was not solved to the asked tolerance (CG ran out of iterations, or
    the true residual of a CG or Cholesky solution is too large): the step is refused."""


def cholesky_factor(K: torch.Tensor, what: str) -> torch.Tensor:
    """The lower Cholesky factor of the SPD matrix K; `RankDeficientError` naming `what` where K is not
    numerically positive definite."""
    chol, info = torch.linalg.cholesky_ex(K)
    if info:
        raise RankDeficientError(f"{what} ({K.shape[0]} x {K.shape[0]}) is not numerically positive definite "
                                 f"(Cholesky failed at column {int(info)}): add damping")
    return chol


def spectral_solve(K: torch.Tensor, b: torch.Tensor, phi: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """u = U phi(Lambda) U^T b for K = U diag(Lambda) U^T (symmetric, m x m) and b of m entries (eq-filters)."""
    lam, U = torch.linalg.eigh(K)
    return U @ (phi(lam) * (U.T @ b))


@dataclass
class CGResult:
    solution: torch.Tensor
    iterations: int
    relative_residual: float


def conjugate_gradient(matvec: Callable[[torch.Tensor], torch.Tensor], b: torch.Tensor, *, rtol: float = 1e-10,
                       maxiter: int | None = None, strict: bool = True,
                       precondition: Callable[[torch.Tensor], torch.Tensor] | None = None) -> CGResult:
    """Solve A u = b for symmetric positive (semi-)definite A given as `matvec`.

    Stops when ||A u - b|| <= rtol ||b||. If `maxiter` iterations do not get there: raises `StepNotSolved`
    when `strict`, else returns the last iterate (for timing a fixed number of iterations). `precondition`:
    v -> M^{-1} v for a symmetric positive definite M^{-1} close to A^{-1} (preconditioned CG); the stopping
    rule stays the unpreconditioned residual's. Without it the iteration is plain CG, operation for operation.
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
