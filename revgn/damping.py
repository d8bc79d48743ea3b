"""Damped Gauss-Newton as spectral filters of the tangent kernel (Goldwaser & Ge 2023, Sec. 2 of the chapter).

For the square loss with residual r = f - y and Jacobian J at the anchor, write J J^T = U diag(lambda) U^T.
Every step below has the form Delta = -J^T U diag(phi(lambda)) U^T r, and differs only in its filter phi:

    K steps of GD on the linearised loss (rate eta):  phi(lambda) = [1 - (1 - eta lambda)^K] / lambda     (eq-kstep)
    Levenberg-Marquardt, damping mu:                  phi(lambda) = 1 / (lambda + mu)                    (eq-filters)
    exact (minimum-norm) GN:                          phi(lambda) = 1 / lambda                           (eq-filters)

Relative to exact GN, K-step GD keeps the fraction 1 - (1 - eta lambda)^K of each eigendirection and LM the
fraction lambda / (lambda + mu): both damp the small-eigenvalue directions first, and as K -> infinity or
mu -> 0 both tend to exact GN, while K = 1 and mu -> infinity both become gradient steps.

The filters are functions of the eigenvalues only: `revgn.solvers.spectral_solve` applies one to a kernel,
`revgn.curvature.spectral_step` to a model's explicit Jacobian, and `revgn.gn` to one half-layer's Gram matrix.
"""
from __future__ import annotations

import torch


def kstep_gd_filter(lam: torch.Tensor, eta: float, K: float) -> torch.Tensor:
    """phi for K steps of GD with rate eta (K = inf gives exact GN where eta lambda is in (0, 2))."""
    if K == float("inf"):
        return gn_filter(lam)
    lam = lam.clamp_min(0)
    x = eta * lam
    # 1 - (1 - x)^K: through expm1/log1p where x is small (no cancellation; limit K x as x -> 0), and as a
    # plain power elsewhere (1 - x may then be negative, which log1p cannot take).
    small = x < 0.5
    kept = torch.where(small, -torch.expm1(K * torch.log1p(-x.clamp(max=0.5))), 1 - torch.pow(1 - x, K))
    return torch.where(lam > 0, kept / lam.clamp_min(1e-300), K * eta * torch.ones_like(lam))


def lm_filter(lam: torch.Tensor, mu: float) -> torch.Tensor:
    """phi for Levenberg-Marquardt damping mu > 0."""
    if mu <= 0:
        raise ValueError(f"LM damping must be positive, got {mu}; use gn_filter for mu = 0")
    return 1.0 / (lam.clamp_min(0) + mu)


def gn_filter(lam: torch.Tensor, rtol: float = 1e-12) -> torch.Tensor:
    """phi for the minimum-norm GN step: 1/lambda on the range of J J^T, 0 on its null space."""
    keep = lam > rtol * lam.max()
    return torch.where(keep, 1.0 / lam.clamp_min(1e-300), torch.zeros_like(lam))


def truncated_filter(lam: torch.Tensor, rtol: float = 0.0, atol: float = 0.0) -> torch.Tensor:
    """phi = 1/lambda where the singular value sqrt(lambda) >= max(rtol * its largest, atol), else 0: the
    truncated pseudo-inverse (the public code's `torch.linalg.pinv(rtol=...)`). lam ascending, >= 0."""
    s = lam.sqrt()
    cut = max(rtol * s[-1].item(), atol)
    return torch.where(s >= cut, 1.0 / lam.clamp_min(torch.finfo(lam.dtype).tiny), 0.0)


def shifted_filter(lam: torch.Tensor, damping: float) -> torch.Tensor:
    """phi = 1/(s (s + damping * s_max)) with s = sqrt(lambda): every singular value of the features shifted up
    by damping * s_max (the step A^T (A A^T)^{-1} with sigma -> sigma + damping sigma_max). lam ascending, >= 0."""
    s = lam.sqrt()
    return torch.where(s > 0, 1.0 / (s * (s + damping * s[-1])).clamp_min(torch.finfo(lam.dtype).tiny), 0.0)
