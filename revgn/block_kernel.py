"""x_L's tangent kernel of a RevMLP on a batch, applied through its blocks: J J^T and the blocks' inverses.

J is the Jacobian of x_L (n x d) in all blocks' trained weights, so J J^T = sum_b P_b G_b G_b^T P_b^T, with
G_b block b's Jacobian of its own output in its own weights and P_b the tangent map of the blocks after it
(x_b -> x_L). Within a block (eq-block), with K_i = A_i A_i^T the n x n Gram matrix of half-layer i's features
and N_i its input tangent (`half_layer_tangent`),

    G G^T (w1, w2) = (K1 y, K2 w2 + N2(K1 y)),    y = w1 + N2^T w2,
    (G G^T)^{-1} (t1, t2) = (K1^{-1} t1 - N2^T b, b),    b = K2^{-1} (t2 - N2 t1),

(the second is the first's inverse, checked by multiplying out; b is half-layer 2's step target of eq-dw2).
So both J J^T v and the additive Schwarz preconditioner sum_b (J_b J_b^T)^{-1} v, with J_b J_b^T =
P_b G_b G_b^T P_b^T, are products with n x n Gram matrices and tangents through half-layers, in function space:
no parameter-sized product, no autograd. A product costs 7 tangents through a half-layer at L = 2 (each two
n x h x d/2 matmuls), where a vjp and then a jvp cost about 20 such matmuls and a forward pass.
`revgn.curvature.TangentKernel` is the same J J^T by jvp/vjp, for any model; the tests hold the two together.
"""
from __future__ import annotations

import torch

from .models import HalfLayerCache, RevMLP
from .pinv import rank_error

_F64 = torch.float64


def half_layer_tangent(t: torch.Tensor, V: torch.Tensor, W: torch.Tensor, cache: HalfLayerCache) -> torch.Tensor:
    """N t = D_x[sigma(x V^T) W^T] t: how a half-layer's output moves when its input moves by t (n x d/2)."""
    z = t @ V.T
    if cache.activation == "relu":
        # z * sigma'(Z) with sigma'(Z) = (A > 0): the kernel autograd uses for ReLU's backward pass.
        z = torch.ops.aten.threshold_backward(z, cache.features[:, :cache.hidden], 0.0)
    return z @ W.T


def half_layer_cotangent(s: torch.Tensor, V: torch.Tensor, W: torch.Tensor, cache: HalfLayerCache) -> torch.Tensor:
    """N^T s, the adjoint of `half_layer_tangent` (n x d/2): a half-layer's backward pass to its input."""
    z = s @ W
    if cache.activation == "relu":
        z = torch.ops.aten.threshold_backward(z, cache.features[:, :cache.hidden], 0.0)
    return z @ V


class BlockKernel:
    """J J^T + damping I for x_L of a RevMLP on the batch x (J in all blocks' trained weights), as a linear
    operator on n x d tensors, with J^T and the blocks' own inverses, all through the blocks.

    `K(v)` = `self(v)`: J J^T v + damping v. `JT(u)`: the parameter step J^T u, {name: tensor}. `inverse(v)`:
    sum_b (J_b J_b^T)^{-1} v, the additive Schwarz (block Jacobi) preconditioner of J J^T, exact for one block;
    built on first use from a float64 Cholesky factor of each half-layer's Gram matrix, and raising
    `RankDeficientError` where one is not positive definite (then no block inverse exists). The Gram matrices
    are float64 (formed once, n^2 h each); tangents run in the model's dtype.
    """

    def __init__(self, model: RevMLP, x: torch.Tensor, damping: float = 0.0):
        if not isinstance(model, RevMLP):
            raise TypeError(f"BlockKernel needs a RevMLP, got {type(model).__name__}")
        if damping < 0:
            raise ValueError(f"damping must be >= 0, got {damping}")
        self.model, self.damping = model, damping
        with torch.no_grad():
            _, self.outputs, self.caches = model.forward_with_features(x)
            self.grams = [tuple((A := c.features.to(_F64)) @ A.T for c in pair) for pair in self.caches]
        self._factors = None

    # --- the tangent maps of one block l (eq-block), on (n x d/2, n x d/2) pairs ---
    def _N(self, l: int, i: int, t: torch.Tensor, adjoint: bool = False) -> torch.Tensor:
        block = self.model.blocks[l]
        V, W = (block.V2, block.W1) if i == 1 else (block.V1, block.W2)
        return (half_layer_cotangent if adjoint else half_layer_tangent)(t, V, W, self.caches[l][i - 1])

    def _forward(self, l, t1, t2):  # F: input tangent -> output tangent
        t1 = t1 + self._N(l, 1, t2)
        return t1, t2 + self._N(l, 2, t1)

    def _forward_T(self, l, w1, w2):  # F^T; its first half is y of G G^T
        y = w1 + self._N(l, 2, w2, adjoint=True)
        return y, w2 + self._N(l, 1, y, adjoint=True)

    def _gram(self, l: int, i: int, w: torch.Tensor) -> torch.Tensor:
        return (self.grams[l][i - 1] @ w.to(_F64)).to(w.dtype)

    def _split(self, v: torch.Tensor):
        if v.shape != self.outputs.shape:
            raise ValueError(f"v has shape {tuple(v.shape)}, x_L on this batch {tuple(self.outputs.shape)}")
        return v.split(self.model.width // 2, dim=1)

    @torch.no_grad()
    def __call__(self, v: torch.Tensor) -> torch.Tensor:
        w1, w2 = self._split(v)
        blocks = []  # G_l G_l^T P_l^T v, from the last block back
        for l in reversed(range(self.model.depth)):
            y, x2 = self._forward_T(l, w1, w2) if l else (w1 + self._N(l, 2, w2, adjoint=True), None)
            a = self._gram(l, 1, y)
            blocks.append((a, self._gram(l, 2, w2) + self._N(l, 2, a)))
            w1, w2 = y, x2
        r1, r2 = blocks.pop()
        for l in range(1, self.model.depth):  # sum_l P_l s_l, Horner from the first block
            r1, r2 = self._forward(l, r1, r2)
            s1, s2 = blocks.pop()
            r1, r2 = r1 + s1, r2 + s2
        out = torch.cat([r1, r2], dim=1)
        return out + self.damping * v if self.damping else out

    @torch.no_grad()
    def JT(self, u: torch.Tensor) -> dict[str, torch.Tensor]:
        """J^T u as {parameter name: step}: each half-layer's weights get (its output's cotangent)^T A."""
        w1, w2 = self._split(u)
        step = {}
        for l in reversed(range(self.model.depth)):
            y, x2 = self._forward_T(l, w1, w2)
            for i, w in ((1, y), (2, w2)):
                g = w.T @ self.caches[l][i - 1].features
                bias = getattr(self.model.blocks[l], f"b{i}") is not None
                step[f"blocks.{l}.W{i}"] = g[:, :-1] if bias else g
                if bias:
                    step[f"blocks.{l}.b{i}"] = g[:, -1]
            w1, w2 = y, x2
        names = [k for k, p in self.model.named_parameters() if p.requires_grad]
        return {k: step[k] for k in names}

    def _cholesky(self):
        if self._factors is None:
            factors = []
            for l, (pair, grams) in enumerate(zip(self.caches, self.grams)):
                for i, (c, K) in enumerate(zip(pair, grams), 1):
                    chol, info = torch.linalg.cholesky_ex(K)
                    if info.item() != 0 or c.features.shape[1] < c.features.shape[0]:
                        raise rank_error(f"block {l + 1}/{self.model.depth}, half-layer {i}", *c.features.shape,
                                         "its Gram matrix is not numerically positive definite")
                    factors.append(chol)
            self._factors = [factors[2 * l: 2 * l + 2] for l in range(self.model.depth)]
        return self._factors

    def _solve(self, l: int, i: int, t: torch.Tensor) -> torch.Tensor:
        return torch.cholesky_solve(t.to(_F64), self._factors[l][i - 1]).to(t.dtype)

    @torch.no_grad()
    def inverse(self, v: torch.Tensor) -> torch.Tensor:
        """sum_b (J_b J_b^T)^{-1} v = sum_b P_b^{-T} (G_b G_b^T)^{-1} P_b^{-1} v (n x d)."""
        self._cholesky()
        t1, t2 = self._split(v)
        blocks = []
        for l in reversed(range(self.model.depth)):
            t2 = t2 - self._N(l, 2, t1)  # b's target; also the second half of P^{-1} through this block
            b = self._solve(l, 2, t2)
            blocks.append((self._solve(l, 1, t1) - self._N(l, 2, b, adjoint=True), b))
            if l:
                t1 = t1 - self._N(l, 1, t2)  # the inverse network's tangent (eq-tangent)
        r1, r2 = blocks.pop()
        for l in range(1, self.model.depth):  # sum_l P_l^{-T} s_l: F^{-T} of each later block, then add
            h2 = r2 - self._N(l, 1, r1, adjoint=True)
            r1, r2 = r1 - self._N(l, 2, h2, adjoint=True), h2
            s1, s2 = blocks.pop()
            r1, r2 = r1 + s1, r2 + s2
        return torch.cat([r1, r2], dim=1)
