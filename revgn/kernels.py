"""Tangent kernels, representation similarity, the lazy-training criterion kappa, and distances from init.

- `empirical_ntk`: the (n1 O) x (n2 O) kernel J1 J2^T, by Jacobian contraction (whole, or one parameter tensor
  at a time), by NTK-vector products, or from a RevMLP's per-half-layer factors: the one NTK entry point of
  the library.
- `kernel_distance` (Fort et al. 2020), `linear_cka` (Kornblith et al. 2019).
- `kappa`: kappa(w0) = ||h(w0) - y*|| ||D^2 h(w0)|| / ||D h(w0)||^2 (Chizat et al. 2019), with both operator
  norms estimated by power iteration on jvp/vjp products.
- How far a RevMLP has moved from its initialisation (`model0`, a `frozen_copy`): the paper's probe
  similarity `ntk_similarity_probes` (Buffelli et al. 2024), `block_cka`, `weight_cosines`, and all of them as
  training metrics by name (`distance_from_init`, what `RunSpec.measure` names).
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn
from torch.func import jvp, vjp, vmap

from .curvature import TangentKernel, factored_kernel, jacobian_matrix
from .functional import Params, as_function, params_of, tree_norm


def empirical_ntk(model: nn.Module, x1: torch.Tensor, x2: torch.Tensor | None = None, *,
                  params: Params | None = None, method: str = "jacobian") -> torch.Tensor:
    """The empirical NTK Theta(x1, x2) = J(x1) J(x2)^T as an (n1 O) x (n2 O) matrix, rows example-major.

    method="jacobian": contract explicit Jacobians (memory n O p; for small sets).
    method="by-parameter": the same sum, one parameter tensor at a time (memory: one tensor's Jacobian).
    method="ntk-vp": NTK-vector products J(x1) [J(x2)^T v] for each basis vector v, vmapped (no Jacobian).
    method="factors": from the model's `ntk_factors` (a RevMLP's logits, trained parameters only): sum over
    half-layers of (A1 A2^T)_{ij} (G1[i, c] . G2[j, c']) (eq-ntk-factors), C backward passes per input set.
    params: the parameters to differentiate (default: the trained ones; `all_params` for a frozen copy).
    """
    if method == "factors":
        if params is not None or not hasattr(model, "ntk_factors"):
            raise ValueError("method='factors' needs a model with ntk_factors (a RevMLP) and its trained parameters "
                             "(params=None)")
        return factored_kernel(model, x1, x2)
    params = params_of(model) if params is None else params
    x2 = x1 if x2 is None else x2
    if method == "jacobian":
        J1 = jacobian_matrix(model, x1, params)
        J2 = J1 if x2 is x1 else jacobian_matrix(model, x2, params)
        return J1 @ J2.T
    if method == "by-parameter":
        K = 0
        for name in params:
            J1 = jacobian_matrix(model, x1, params, wrt=(name,))
            K = K + J1 @ (J1 if x2 is x1 else jacobian_matrix(model, x2, params, wrt=(name,))).T
        return K
    if method != "ntk-vp":
        raise ValueError(f"method must be 'jacobian', 'by-parameter', 'ntk-vp' or 'factors', got {method!r}")
    # the cross kernel from the two input sets' tangent operators: Theta(x1, x2) v = J1 (J2^T v)
    K2 = TangentKernel(model, x2, params=params)
    K1 = K2 if x2 is x1 else TangentKernel(model, x1, params=params)
    out2 = K2.outputs
    basis = torch.eye(out2.numel(), dtype=out2.dtype, device=out2.device)
    return vmap(lambda v: K1.J(K2.JT(v.view_as(out2))).reshape(-1))(basis).T


def ntk_vector_product(model: nn.Module, x: torch.Tensor, v: torch.Tensor, params: Params | None = None, **kwargs):
    """Theta(x, x) v = J (J^T v) for v shaped like the outputs on x (kwargs go to the model's forward)."""
    return TangentKernel(model, x, params=params, **kwargs)(v)


def kernel_distance(K0: torch.Tensor, K1: torch.Tensor) -> float:
    """1 - <K0, K1>_F / (||K0||_F ||K1||_F): 0 when the kernels are proportional (Fort et al. 2020).

    Clamped at 0: for identical kernels rounding can otherwise give -1e-16.
    """
    return max(0.0, (1 - (K0 * K1).sum() / (K0.norm() * K1.norm())).item())


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
    """||Dh||: the largest singular value of J, by power iteration on J^T J (one jvp and one vjp per step, those
    of the tangent kernel of f, `revgn.curvature.TangentKernel`).

    The estimate sigma^2 = ||J u||^2 (a Rayleigh quotient, never above the true value) stops when it changes
    by less than rtol in relative terms, or after max_iterations.
    """
    tangent = TangentKernel.of_function(f, params)
    u = _unit_like(params, torch.Generator().manual_seed(seed))
    sigma = 0.0
    for _ in range(max_iterations):
        Ju = tangent.J(u)
        new = Ju.norm().item()
        g = tangent.JT(Ju)
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
    """The lazy-training criterion at the model's current parameters (Chizat et al. 2019; label eq-kappa).

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


# ------------------------------------------------------------------------------------------ distances from init
def frozen_copy(model: nn.Module) -> nn.Module:
    """A copy of the model at this moment, for later comparisons."""
    return copy.deepcopy(model).requires_grad_(False)


def all_params(model: nn.Module) -> Params:
    """All parameters, including those of a frozen copy (`params_of` keeps only the trained ones)."""
    return {k: v.detach() for k, v in model.named_parameters()}


def ntk_similarity_probes(model0: nn.Module, model: nn.Module, x: torch.Tensor, probes: int = 100,
                          seed: int = 0) -> float:
    """The paper's "NTK similarity": cosine of mean_i K0 v_i and mean_i Kt v_i, v_i ~ N(0, I) in x_L's space.

    K = J J^T for the output x_L (n x d) of the reversible body on the batch x. Since the mean of K v_i is K
    applied to the mean probe, this measures K along one random direction; `kernel_distance` of the
    `empirical_ntk` compares the whole kernel.
    """
    g = torch.Generator().manual_seed(seed)
    v = torch.randn(probes, len(x), model.width, generator=g, dtype=x.dtype).to(x.device).mean(0)
    k0 = ntk_vector_product(model0, x, v, params=all_params(model0), output="body")
    kt = ntk_vector_product(model, x, v, params=all_params(model), output="body")
    return torch.nn.functional.cosine_similarity(k0.reshape(1, -1), kt.reshape(1, -1)).item()


@torch.no_grad()
def block_outputs(model: nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    """Each reversible block's output (n x d) on x."""
    outs, u = [], model.embed(x)
    for block in model.blocks:
        u = block(u)
        outs.append(u)
    return outs


def block_cka(model0: nn.Module, model: nn.Module, x: torch.Tensor) -> list[float]:
    """Linear CKA between each block's output now and at init, on the same inputs."""
    return [linear_cka(a, b) for a, b in zip(block_outputs(model0, x), block_outputs(model, x))]


@torch.no_grad()
def weight_cosines(model0: nn.Module, model: nn.Module) -> dict[str, float]:
    """Cosine between each trained weight matrix (W1, W2 of every block) now and at init."""
    p0, pt = all_params(model0), params_of(model)
    return {k: torch.nn.functional.cosine_similarity(p0[k].reshape(1, -1), pt[k].reshape(1, -1)).item()
            for k in pt if k.endswith(("W1", "W2"))}


def distance_from_init(model0: nn.Module, names, *, kernel_inputs: torch.Tensor, probe_batch: torch.Tensor,
                       cka_inputs: torch.Tensor | None, kappa_data: tuple[torch.Tensor, torch.Tensor]) -> dict:
    """The measures `names` (of `revgn.spec.MEASURES`) as training metrics: name -> f(model) -> float.

    ntk_similarity: the paper's probe similarity on `probe_batch`; ntk_distance: `kernel_distance` of the
    logits' NTK on `kernel_inputs`; cka: `block_cka` on `cka_inputs`, one metric per block (cka_block1, ...);
    weight_cosine: the smallest of `weight_cosines`; kappa: the criterion on `kappa_data` (inputs, labels as
    one-hot targets; 20 power iterations to rtol 1e-3: a trend, not a tight estimate), with its three factors
    as kappa_residual, kappa_first (||Dh||) and kappa_second (||D^2 h||), computed once per evaluation.
    """
    out = {}
    if "ntk_similarity" in names:
        out["ntk_similarity"] = lambda m: ntk_similarity_probes(model0, m, probe_batch)
    if "ntk_distance" in names:
        K0 = empirical_ntk(model0, kernel_inputs, params=all_params(model0), method="by-parameter")
        out["ntk_distance"] = lambda m: kernel_distance(K0, empirical_ntk(m, kernel_inputs, params=all_params(m),
                                                                          method="by-parameter"))
    if "cka" in names:
        for i in range(len(model0.blocks)):
            out[f"cka_block{i + 1}"] = lambda m, i=i: block_cka(model0, m, cka_inputs)[i]
    if "weight_cosine" in names:
        out["weight_cosine"] = lambda m: min(weight_cosines(model0, m).values())
    if "kappa" in names:
        x, y = kappa_data
        onehot = torch.nn.functional.one_hot(y, model0.num_classes).to(x.dtype)
        cache = {}

        def factor(m, name):  # one kappa per evaluation: keyed by the parameters' in-place update counters
            state = (id(m), tuple(p._version for p in m.parameters()))
            if state not in cache:
                cache.clear()
                cache[state] = kappa(m, x, onehot, max_iterations=20, rtol=1e-3)
            return getattr(cache[state], name)

        out["kappa"] = lambda m: factor(m, "kappa")
        out.update({f"kappa_{name}": lambda m, name=name: factor(m, name) for name in ("residual", "first", "second")})
    return out
