"""Numerical checks of the GN step against explicit Jacobians (small float64 models), shared by tests and book."""
from __future__ import annotations

import itertools

import torch

from .functional import flatten, params_of
from .gn import block_directions, gn_direction
from .pinv import Pinv
from .curvature import explicit_gn_direction, jacobian_matrix, matrix_free_gn_direction
from .losses import SquareLoss
from .models import RevMLP


def function_space_residual(model, x: torch.Tensor, direction: dict, error: torch.Tensor, **kwargs) -> float:
    """||J Delta - eps|| / ||eps||, J the explicit Jacobian of the logits (or of `output=...`)."""
    params = params_of(model)
    J = jacobian_matrix(model, x, params, **kwargs)
    step = flatten({k: direction.get(k, torch.zeros_like(v)) for k, v in params.items()})
    return ((J @ step - error.reshape(-1)).norm() / error.norm()).item()


def block_moore_penrose_errors(model: RevMLP, x: torch.Tensor, error: torch.Tensor) -> list[float]:
    """For each block: ||Delta_l - pinv(J_l) eps_L|| / ||pinv(J_l) eps_L||, J_l the block's Jacobian of x_L."""
    _, _, caches = model.forward_with_features(x)
    params = params_of(model)
    J = jacobian_matrix(model, x, params, output="body")
    eps_body = (error @ model.readout.T).reshape(-1)
    offsets = dict(zip(params, itertools.accumulate([0] + [p.numel() for p in params.values()])))
    errors = []
    for direction in block_directions(model, caches, error):
        cols = torch.cat([torch.arange(offsets[k], offsets[k] + params[k].numel()) for k in direction])
        mp = torch.linalg.pinv(J[:, cols]) @ eps_body
        ours = torch.cat([direction[k].reshape(-1) for k in direction])
        errors.append(((ours - mp).norm() / mp.norm()).item())
    return errors


def compare_routes(model, x: torch.Tensor, error: torch.Tensor, cg_rtol: float = 1e-12) -> dict[str, float]:
    """The tractable, explicit Moore-Penrose and matrix-free GN steps side by side.

    Returns each route's function-space residual, the relative gap between the matrix-free and explicit
    parameter steps, and ||Delta_tractable|| / ||J^+ eps|| (> 1 unless they coincide: J^+ eps is the shortest).
    """
    ours = gn_direction(model, x, error)
    explicit = explicit_gn_direction(model, x, error)
    free, cg = matrix_free_gn_direction(model, x, error, rtol=cg_rtol)
    gap = ((flatten(free) - flatten(explicit)).norm() / flatten(explicit).norm()).item()
    return {
        "tractable": function_space_residual(model, x, ours, error),
        "explicit": function_space_residual(model, x, explicit, error),
        "matrix_free": function_space_residual(model, x, free, error),
        "matrix_free_vs_explicit": gap,
        "cg_iterations": cg.iterations,
        "norm_ratio": (flatten(ours).norm() / flatten(explicit).norm()).item(),
        "step_gap": ((flatten(ours) - flatten(explicit)).norm() / flatten(explicit).norm()).item(),
    }


def one_step_losses(model: RevMLP, x: torch.Tensor, scales, seed: int = 1, pinv: Pinv = Pinv()):
    """Square loss before and after one GN step with lr 1, for targets at distance s from the outputs.

    First-order theory predicts the loss after the step is O(s^4) while before it is O(s^2).
    Returns (before, after) lists; the model is left unchanged.
    """
    loss = SquareLoss()
    start = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        outputs = model(x)
    offset = torch.randn(outputs.shape, generator=torch.Generator().manual_seed(seed), dtype=outputs.dtype)
    before, after = [], []
    for s in scales:
        targets = outputs + s * offset
        with torch.no_grad():
            before.append(loss(model(x), targets).item())
            direction = gn_direction(model, x, loss.error(model(x), targets), pinv)
            for k, p in model.named_parameters():
                p -= direction[k]
            after.append(loss(model(x), targets).item())
        model.load_state_dict(start)
    return before, after
