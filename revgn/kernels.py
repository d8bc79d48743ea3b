"""Tangent kernels, representation similarity and the lazy-training criterion kappa.

- `empirical_ntk`: the (n1 O) x (n2 O) kernel J1 J2^T, by Jacobian contraction or by NTK-vector products.
- `kernel_distance` (Fort et al. 2020), `relative_kernel_change`, `linear_cka` (Kornblith et al. 2019).
- `kappa`: kappa(w0) = ||h(w0) - y*|| ||D^2 h(w0)|| / ||D h(w0)||^2 (Chizat et al. 2019), with both operator
  norms estimated by power iteration on jvp/vjp products.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn
from torch.func import jacrev, jvp, vjp, vmap

from .functional import Params, as_function, params_of, tree_norm


def _jac_rows(model: nn.Module, params: Params, x: torch.Tensor) -> torch.Tensor:
    jac = jacrev(as_function(model, x))(params)
    n, o = next(iter(jac.values())).shape[:2]
    return torch.cat([jac[k].reshape(n * o, -1) for k in params], dim=1)


def empirical_ntk(model: nn.Module, x1: torch.Tensor, x2: torch.Tensor | None = None, *,
                  params: Params | None = None, method: str = "jacobian") -> torch.Tensor:
    """The empirical NTK Theta(x1, x2) = J(x1) J(x2)^T as an (n1 O) x (n2 O) matrix, rows example-major.

    method="jacobian": contract explicit Jacobians (memory n O p; for small sets).
    method="ntk-vp": NTK-vector products J(x1) [J(x2)^T v] for each basis vector v, vmapped (no Jacobian).
    """
    params = params_of(model) if params is None else params
    x2 = x1 if x2 is None else x2
    if method == "jacobian":
        J1 = _jac_rows(model, params, x1)
        J2 = J1 if x2 is x1 else _jac_rows(model, params, x2)
        return J1 @ J2.T
    if method != "ntk-vp":
        raise ValueError(f"method must be 'jacobian' or 'ntk-vp', got {method!r}")
    f1, f2 = as_function(model, x1), as_function(model, x2)
    out2, vjp_fn = vjp(f2, params)

    def column(v):  # Theta(x1, x2) v = J1 (J2^T v)
        (g,) = vjp_fn(v.view_as(out2))
        return jvp(f1, (params,), (g,))[1].reshape(-1)

    basis = torch.eye(out2.numel(), dtype=out2.dtype, device=out2.device)
    return vmap(column)(basis).T


def ntk_vector_product(model: nn.Module, x: torch.Tensor, v: torch.Tensor, params: Params | None = None, **kwargs):
    """Theta(x, x) v = J (J^T v) for v shaped like the outputs on x (kwargs go to the model's forward)."""
    params = params_of(model) if params is None else params
    f = as_function(model, x, **kwargs)
    _, vjp_fn = vjp(f, params)
    (g,) = vjp_fn(v)
    return jvp(f, (params,), (g,))[1]


def kernel_distance(K0: torch.Tensor, K1: torch.Tensor) -> float:
    """1 - <K0, K1>_F / (||K0||_F ||K1||_F): 0 when the kernels are proportional (Fort et al. 2020).

    Clamped at 0: for identical kernels rounding can otherwise give -1e-16.
    """
    return max(0.0, (1 - (K0 * K1).sum() / (K0.norm() * K1.norm())).item())


def relative_kernel_change(K0: torch.Tensor, K1: torch.Tensor) -> float:
    """||K1 - K0||_F / ||K0||_F."""
    return ((K1 - K0).norm() / K0.norm()).item()


def linear_cka(X: torch.Tensor, Y: torch.Tensor) -> float:
    """Linear CKA of two representations of the same n inputs (n x p, n x q) (Kornblith et al. 2019)."""
    if X.shape[0] != Y.shape[0]:
        raise ValueError(f"CKA needs the same inputs: {X.shape[0]} vs {Y.shape[0]} rows")
    X = X.double() - X.double().mean(0)
    Y = Y.double() - Y.double().mean(0)
    # <H Kx H, H Ky H>_F with K = X X^T equals ||Y^T X||_F^2 for centred X, Y.
    num = (Y.T @ X).norm() ** 2
    return (num / ((X.T @ X).norm() * (Y.T @ Y).norm())).item()


# ------------------------------------------------------------------------------------------ kappa
@dataclass
class Kappa:
    """kappa = residual * second / first^2, with the three factors it is made of."""

    kappa: float
    residual: float  # ||h(w0) - y*||
    first: float  # ||Dh(w0)||, operator norm R^p -> R^(nO)
    second: float  # ||D^2 h(w0)||, operator norm of the symmetric bilinear map R^p x R^p -> R^(nO)


def _unit_like(params: Params, generator: torch.Generator) -> Params:
    u = {k: torch.randn(v.shape, generator=generator, dtype=v.dtype).to(v.device) for k, v in params.items()}
    norm = tree_norm(u)
    return {k: v / norm for k, v in u.items()}


def jacobian_norm(f: Callable[[Params], torch.Tensor], params: Params, *, max_iterations: int = 100,
                  rtol: float = 1e-6, seed: int = 0) -> float:
    """||Dh||: the largest singular value of J, by power iteration on J^T J (one jvp and one vjp per step).

    The estimate sigma^2 = ||J u||^2 (a Rayleigh quotient, never above the true value) stops when it changes
    by less than rtol in relative terms, or after max_iterations.
    """
    _, vjp_fn = vjp(f, params)
    u = _unit_like(params, torch.Generator().manual_seed(seed))
    sigma = 0.0
    for _ in range(max_iterations):
        Ju = jvp(f, (params,), (u,))[1]
        new = Ju.norm().item()
        (g,) = vjp_fn(Ju)
        norm = tree_norm(g)
        if norm == 0:
            return 0.0
        u = {k: v / norm for k, v in g.items()}
        if abs(new - sigma) <= rtol * new:
            return new
        sigma = new
    return sigma


def hessian_norm(f: Callable[[Params], torch.Tensor], params: Params, *, max_iterations: int = 100,
                 rtol: float = 1e-6, seed: int = 0) -> float:
    """||D^2 h||: max over unit u of ||D^2 h(w)[u, u]||, by a higher-order power iteration.

    For a symmetric bilinear map B between Hilbert spaces, ||B|| = sup_{||u||=1} ||B(u, u)||, so it suffices
    to maximise the quadratic form. The iteration u <- B(u, .)^T B(u, u) / norm is the power method for that
    problem: B(u, u) is a nested jvp (a second directional derivative) and B(u, .)^T z the vjp of
    w -> Dh(w)[u]. Returns the best value seen (never above ||B||), once it changes by less than rtol.
    """
    def second(u: Params) -> torch.Tensor:  # D^2 h(w)[u, u]
        return jvp(lambda p: jvp(f, (p,), (u,))[1], (params,), (u,))[1]

    u = _unit_like(params, torch.Generator().manual_seed(seed))
    best = 0.0
    for _ in range(max_iterations):
        Buu = second(u)
        new = Buu.norm().item()
        _, back = vjp(lambda p, u=u: jvp(f, (p,), (u,))[1], params)  # back(z) = B(u, .)^T z
        (g,) = back(Buu)
        norm = tree_norm(g)
        if norm == 0:
            return max(best, new)
        u = {k: v / norm for k, v in g.items()}
        if abs(new - best) <= rtol * max(new, best):
            return max(best, new)
        best = max(best, new)
    return best


def kappa(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, max_iterations: int = 100, rtol: float = 1e-6,
          seed: int = 0) -> Kappa:
    """The lazy-training criterion at the model's current parameters (Chizat et al. 2019, eq. 3).

    h = the model's outputs on x, flattened; y* = y (same shape as the outputs). Both operator norms are
    estimated by power iteration from a seeded start (`jacobian_norm`, `hessian_norm`).
    """
    params = params_of(model)
    if not params:
        raise ValueError("kappa needs a model with trainable parameters (a frozen copy has none)")
    f = as_function(model, x)
    with torch.no_grad():
        residual = (f(params) - y).norm().item()
    first = jacobian_norm(f, params, max_iterations=max_iterations, rtol=rtol, seed=seed)
    second = hessian_norm(f, params, max_iterations=max_iterations, rtol=rtol, seed=seed)
    return Kappa(residual * second / first ** 2 if first > 0 else float("inf"), residual, first, second)


# ------------------------------------------------------------------------------------------ ReLU patterns
@torch.no_grad()
def relu_patterns(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """On/off state of every nn.ReLU unit of `model` on inputs x, concatenated: a bool vector.

    Collected with forward hooks on the model's nn.ReLU modules (so it sees the units of any architecture
    that uses them); raises if the model has none.
    """
    states: list[torch.Tensor] = []
    hooks = [m.register_forward_hook(lambda _m, _i, out: states.append((out > 0).reshape(-1)))
             for m in model.modules() if isinstance(m, nn.ReLU)]
    if not hooks:
        raise ValueError("relu_patterns needs a model with nn.ReLU modules")
    try:
        model(x)
    finally:
        for h in hooks:
            h.remove()
    return torch.cat(states)


def pattern_stability(before: torch.Tensor, after: torch.Tensor) -> float:
    """Fraction of ReLU units (over all inputs) whose on/off state is the same in both patterns."""
    if before.shape != after.shape:
        raise ValueError("patterns come from different models or inputs")
    return (before == after).double().mean().item()
