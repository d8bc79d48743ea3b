"""How far a RevMLP has moved from its initialisation: the lazy-regime metrics of Buffelli et al. (2024), and better ones.

Every function compares the model at init (`model0`, a frozen copy) with the model now, on fixed inputs:

- `ntk_similarity_probes`: the paper's definition (random probes through K = J J^T of x_L on one batch);
- `ntk_kernel_distance`: the full empirical NTK of the logits on a few inputs, 1 - cosine (Fort et al. 2020);
- `block_cka`: linear CKA of each block's output (Kornblith et al. 2019);
- `weight_cosines`: cosine between each trained half-layer's weights now and at init.
"""
from __future__ import annotations

import copy

import torch
from torch.func import jacrev

from .functional import as_function, params_of
from .kernels import kernel_distance, linear_cka, ntk_vector_product
from .models import RevMLP


def frozen_copy(model: RevMLP) -> RevMLP:
    """A copy of the model at this moment, for later comparisons."""
    return copy.deepcopy(model).requires_grad_(False)


def ntk_similarity_probes(model0: RevMLP, model: RevMLP, x: torch.Tensor, probes: int = 100, seed: int = 0) -> float:
    """The paper's "NTK similarity": cosine of mean_i K0 v_i and mean_i Kt v_i, v_i ~ N(0, I) in x_L's space.

    K = J J^T for the output x_L of the reversible body on the batch x. Since the mean of K v_i is K applied to
    the mean probe, this measures K along one random direction; see `ntk_kernel_distance` for the whole kernel.
    """
    g = torch.Generator().manual_seed(seed)
    n, d = len(x), model.width
    v = torch.randn(probes, n, d, generator=g, dtype=x.dtype).to(x.device).mean(0)
    k0 = ntk_vector_product(model0, x, v, params=_all_params(model0), output="body")
    kt = ntk_vector_product(model, x, v, params=_all_params(model), output="body")
    return torch.nn.functional.cosine_similarity(k0.reshape(1, -1), kt.reshape(1, -1)).item()


def _all_params(model) -> dict[str, torch.Tensor]:
    """All parameters, including those of a frozen copy (params_of keeps only the trained ones)."""
    return {k: v.detach() for k, v in model.named_parameters()}


def empirical_ntk_by_parameter(model, x: torch.Tensor) -> torch.Tensor:
    """The (n C) x (n C) NTK of the logits, summed one parameter tensor at a time (memory: one tensor's Jacobian)."""
    params = _all_params(model)
    f = as_function(model, x)
    K = None
    for name in params:
        def f_one(p, name=name):
            return f({**params, name: p})
        J = jacrev(f_one)(params[name]).reshape(x.shape[0] * model.num_classes, -1)
        K = J @ J.T if K is None else K + J @ J.T
    return K


def ntk_kernel_distance(model0: RevMLP, model: RevMLP, x: torch.Tensor) -> float:
    """1 - <K0, Kt>_F / (||K0|| ||Kt||) of the full empirical NTK of the logits on x (keep x small)."""
    return kernel_distance(empirical_ntk_by_parameter(model0, x), empirical_ntk_by_parameter(model, x))


@torch.no_grad()
def block_outputs(model: RevMLP, x: torch.Tensor) -> list[torch.Tensor]:
    """Each block's output (n x d) on x."""
    outs, u = [], model.embed(x)
    for block in model.blocks:
        u = block(u)
        outs.append(u)
    return outs


def block_cka(model0: RevMLP, model: RevMLP, x: torch.Tensor) -> list[float]:
    """Linear CKA between each block's output now and at init, on the same inputs."""
    return [linear_cka(a, b) for a, b in zip(block_outputs(model0, x), block_outputs(model, x))]


@torch.no_grad()
def weight_cosines(model0: RevMLP, model: RevMLP) -> dict[str, float]:
    """Cosine between each trained weight matrix (W1, W2 of every block) now and at init."""
    p0, pt = _all_params(model0), params_of(model)
    return {k: torch.nn.functional.cosine_similarity(p0[k].reshape(1, -1), pt[k].reshape(1, -1)).item()
            for k in pt if k.endswith(("W1", "W2"))}


def laziness_metrics(model0: RevMLP, probe_batch: torch.Tensor, kernel_inputs: torch.Tensor,
                     cka_inputs: torch.Tensor) -> dict:
    """The metrics above as `train(metrics=...)` callbacks (name -> f(model) -> float)."""
    K0 = empirical_ntk_by_parameter(model0, kernel_inputs)  # computed once
    out = {
        "ntk_similarity": lambda m: ntk_similarity_probes(model0, m, probe_batch),
        "ntk_distance": lambda m: kernel_distance(K0, empirical_ntk_by_parameter(m, kernel_inputs)),
        "weight_cosine": lambda m: min(weight_cosines(model0, m).values()),
    }
    for i in range(model0.depth):
        out[f"cka_block{i + 1}"] = lambda m, i=i: block_cka(model0, m, cka_inputs)[i]
    return out
