"""Losses and the function-space errors a GN step fits.

For a loss summed over the batch, L = sum_i l(z_i, y_i), the GN step eq-gn of the GN chapter moves the
logits by -lr * eps, where eps (n x C) is:

- square loss, l = 1/2 ||z - y||^2:                eps = z - y                  (exact GN: H = I);
- cross-entropy, "identity" Hessian (the paper):     eps = softmax(z) - y        (H replaced by I);
- cross-entropy, "exact" Hessian:                    eps = H_i^+ (softmax(z_i) - y_i), H_i = diag(p_i) - p_i p_i^T,
  the minimum-norm Newton step of each example's loss in logit space (generalised GN, eq-ggn).

A GN step is invariant to scaling the loss, so summing or averaging over the batch gives the same step.
The *reported* loss value is the batch mean, and first-order optimisers (SGD, Adam) descend that mean, as
PyTorch's losses do by default; their learning rates are per-example-average rates.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F


class NonFiniteLossError(FloatingPointError):
    """The loss became NaN or infinite; training stops rather than continue with garbage."""


def _targets(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Class labels (n,) become one-hot rows; real-valued targets (n x C) pass through."""
    if logits.dim() != 2:
        raise ValueError(f"logits must be n x C, got shape {tuple(logits.shape)}")
    if y.dtype in (torch.int64, torch.int32, torch.uint8):
        if y.shape != logits.shape[:1]:
            raise ValueError(f"labels must have shape ({logits.shape[0]},), got {tuple(y.shape)}")
        return F.one_hot(y.long(), logits.shape[1]).to(logits.dtype)
    if y.shape != logits.shape:
        raise ValueError(f"targets must have the logits' shape {tuple(logits.shape)}, got {tuple(y.shape)}")
    return y.to(logits.dtype)


class SquareLoss:
    """l(z, y) = 1/2 ||z - y||^2 per example; labels are one-hot encoded."""

    name = "mse"

    def __call__(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return 0.5 * (logits - _targets(logits, y)).pow(2).sum(dim=1).mean()

    def error(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return logits - _targets(logits, y)


class CrossEntropy:
    """Softmax cross-entropy; `hessian` picks the GN error: "identity" (the paper's) or "exact"."""

    name = "ce"

    def __init__(self, hessian: str = "identity"):
        if hessian not in ("identity", "exact"):
            raise ValueError(f"hessian must be 'identity' or 'exact', got {hessian!r}")
        self.hessian = hessian

    def __call__(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        t = _targets(logits, y)
        return -(t * torch.log_softmax(logits, dim=1)).sum(dim=1).mean()

    def error(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        p = torch.softmax(logits, dim=1)
        eps = p - _targets(logits, y)
        if self.hessian == "identity":
            return eps
        p64 = p.double()
        hess = torch.diag_embed(p64) - p64[:, :, None] * p64[:, None, :]
        # H_i is singular along the all-ones direction (logits are shift invariant), and eps_i is orthogonal
        # to it, so the pseudo-inverse gives the minimum-norm logit change. rtol drops directions whose
        # curvature underflowed (a class probability of ~0).
        return (torch.linalg.pinv(hess, hermitian=True, rtol=1e-12) @ eps.double()[:, :, None]).squeeze(2).to(
            logits.dtype)


LOSSES = {"mse": SquareLoss, "ce": CrossEntropy}


def get_loss(loss: str | SquareLoss | CrossEntropy):
    """A loss object from its name ("mse", "ce", "ce-exact") or the object itself."""
    if not isinstance(loss, str):
        return loss
    if loss == "ce-exact":
        return CrossEntropy("exact")
    if loss not in LOSSES:
        raise ValueError(f"unknown loss {loss!r}; choose 'mse', 'ce' or 'ce-exact'")
    return LOSSES[loss]()


def accuracy(logits: torch.Tensor, y: torch.Tensor) -> float:
    labels = y if y.dim() == 1 else y.argmax(dim=1)
    return (logits.argmax(dim=1) == labels).double().mean().item()


def check_finite(value: torch.Tensor, where: str) -> float:
    v = float(value.detach()) if isinstance(value, torch.Tensor) else float(value)
    if not math.isfinite(v):
        raise NonFiniteLossError(f"loss is {v} at {where}; stopping (lower the learning rate or regularise)")
    return v
