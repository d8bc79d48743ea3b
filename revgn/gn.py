"""The exact, tractable Gauss-Newton step for `RevMLP` (Buffelli et al. 2024, Prop. 4.4).

Notation (row convention, one row per example): the GN step solves J Delta = eps in function space, where
eps (n x C) is the loss's error (see `revgn.losses`) and J the Jacobian of the logits. Equation labels (MyST) refer
to the chapter "Exact Gauss-Newton in reversible networks".

The step is built block by block. With T_l the output error carried back to block l's output through the
*inverse* network (forward-mode tangents, eq-tangent), block l's own step is

    dW1^T = A1^+ T1,                       A1 = sigma(X2 V2^T)                      (eq-dw1)
    dW2^T = A2^+ (T2 - M),   M = D_{X1'}[sigma(X1' V1^T) W2^T] T1                     (eq-dw2)

and M is exactly the term the inverse-network tangent subtracts, so T2 - M is the tangent's second half
after block l has been inverted. Each block's step alone moves the output by eps; stacking them with a
factor 1/L gives a right inverse of J (eq-stack). Pseudo-inverses of the n x h features go through the n x n
Gram matrix (eq-gram).
"""
from __future__ import annotations

from typing import Iterator

import torch

from .block_kernel import half_layer_tangent
from .models import RevMLP
from .pinv import Pinv, features_pinv


def _split(D: torch.Tensor, has_bias: bool):
    return (D[:, :-1], D[:, -1]) if has_bias else (D, None)


@torch.no_grad()
def iter_block_directions(model: RevMLP, caches, error: torch.Tensor, pinv: Pinv = Pinv(),
                          generator: torch.Generator | None = None) -> Iterator[dict[str, torch.Tensor]]:
    """Each block's own GN step (eq-tangent, eq-dw1, eq-dw2), last block first, as {parameter name: step}.

    caches: from `model.forward_with_features(x)`. error: n x C logit-space error. Block l's step alone moves
    x_L by error @ R^T (and so the logits by `error`) to first order; it is the Moore-Penrose solution for
    that block's Jacobian of x_L (the chapter explains why not of the logits). A block's weights are no longer
    read once its step has been yielded, so a caller may apply it in place before asking for the next.
    """
    if error.dim() != 2 or error.shape[1] != model.num_classes:
        raise ValueError(f"error must be n x {model.num_classes}, got {tuple(error.shape)}")
    if not torch.isfinite(error).all():
        raise FloatingPointError("the GN error contains NaN or inf; refusing to compute a step")
    t = error @ model.readout.T  # the smallest change of x_L that moves the logits by `error`
    n = error.shape[0]
    half = model.width // 2
    for l in reversed(range(model.depth)):
        block, (c1, c2) = model.blocks[l], caches[l]
        if c1.features.shape[0] != n:
            raise ValueError(f"caches hold {c1.features.shape[0]} examples but the error {n}")
        bias = block.b1 is not None
        t1, t2 = t.split(half, dim=1)
        where = f"block {l + 1}/{model.depth}, half-layer"
        w1, b1 = _split(features_pinv(c1.features, t1, pinv, where=f"{where} 1", generator=generator), bias)
        t2 = t2 - half_layer_tangent(t1, block.V1, block.W2, c2)  # T2 - M: the tangent through the inverse
        w2, b2 = _split(features_pinv(c2.features, t2, pinv, where=f"{where} 2", generator=generator), bias)
        if l > 0:
            t = torch.cat([t1 - half_layer_tangent(t2, block.V2, block.W1, c1), t2], dim=1)
        prefix = f"blocks.{l}."
        step = {prefix + "W1": w1, prefix + "W2": w2}
        if bias:
            step.update({prefix + "b1": b1, prefix + "b2": b2})
        yield step


def block_directions(model: RevMLP, caches, error: torch.Tensor, pinv: Pinv = Pinv(),
                     generator: torch.Generator | None = None) -> list[dict[str, torch.Tensor]]:
    """`iter_block_directions` as a list ordered from the first block to the last."""
    return list(iter_block_directions(model, caches, error, pinv, generator))[::-1]


def stack_blocks(directions: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """The right inverse of eq-stack: every block's own step, scaled by 1/L."""
    L = len(directions)
    return {k: v / L for d in directions for k, v in d.items()}


@torch.no_grad()
def gn_direction(model: RevMLP, x: torch.Tensor, error: torch.Tensor, pinv: Pinv = Pinv(),
                 generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
    """The tractable exact GN direction Delta with J Delta = error (eq-stack), as {parameter name: step}.

    x: n x D inputs. error: n x C. Update with theta <- theta - lr * Delta.
    """
    _, _, caches = model.forward_with_features(x)
    return stack_blocks(block_directions(model, caches, error, pinv, generator))

