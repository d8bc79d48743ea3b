"""Any nn.Module as a pure function of its parameters, and flat views of parameter dicts (torch.func)."""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn
from torch.func import functional_call

Params = dict[str, torch.Tensor]


def params_of(model: nn.Module) -> Params:
    """The trained parameters (requires_grad), detached: the point a functional transform works around.

    Frozen parameters (a centering copy, a linearisation anchor) are left out and keep their values.
    """
    return {k: v.detach() for k, v in model.named_parameters() if v.requires_grad}


def snapshot(model: nn.Module) -> Params:
    """A copy of the trained parameters that later training does not change (params_of shares storage)."""
    return {k: v.clone() for k, v in params_of(model).items()}


def as_function(model: nn.Module, x: torch.Tensor, **kwargs) -> Callable[[Params], torch.Tensor]:
    """f(params) = model(x, **kwargs) with `params` swapped in; buffers stay the model's."""
    return lambda p: functional_call(model, p, (x,), kwargs)


def flatten(tree: Params) -> torch.Tensor:
    return torch.cat([v.reshape(-1) for v in tree.values()])


def unflatten(vec: torch.Tensor, like: Params) -> Params:
    out, i = {}, 0
    for k, v in like.items():
        out[k] = vec[i:i + v.numel()].view_as(v)
        i += v.numel()
    if i != vec.numel():
        raise ValueError(f"vector has {vec.numel()} entries, the parameters {i}")
    return out


def tree_dot(a: Params, b: Params) -> torch.Tensor:
    return sum((a[k] * b[k]).sum() for k in a)


def tree_norm(a: Params) -> torch.Tensor:
    return tree_dot(a, a).sqrt()
