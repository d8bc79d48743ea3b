"""Linearisation, centering and output scaling (Chizat, Oyallon & Bach 2019), with torch.func.

    f_lin = linearize(f, params0)       # f_lin(params) = f(params0) + Df(params0) (params - params0), by jvp
    model_lin = Linearized(model)       # the same as an nn.Module whose own parameters start at params0

Notation of the lazy-training chapter: h(w) the model's outputs on the data, w0 the init, h_bar(w) the
linearisation at w0 (eq-lin), alpha the output scale, F_alpha(w) = R(alpha h(w)) / alpha^2 (eq-falpha).
"""
from __future__ import annotations

import copy
from typing import Callable

import torch
from torch import nn
from torch.func import functional_call, jvp

from .functional import Params, params_of


def linearize(f: Callable[[Params], torch.Tensor], params0: Params) -> Callable[[Params], torch.Tensor]:
    """The first-order Taylor model of f at params0: p -> f(params0) + J(params0)(p - params0) (eq-lin).

    Computed with one forward-mode jvp per call; the Jacobian is never formed.
    """
    params0 = {k: v.detach() for k, v in params0.items()}

    def f_lin(params: Params) -> torch.Tensor:
        delta = {k: params[k] - params0[k] for k in params0}
        out0, tangent = jvp(f, (params0,), (delta,))
        return out0 + tangent

    return f_lin


class Linearized(nn.Module):
    """`model` linearised at its current parameters, as a trainable module.

    Its parameters theta start equal to the anchor; forward(x) = f(x; anchor) + J(x; anchor)(theta - anchor).
    `reanchor()` moves the anchor to theta (a "feature update" of iterative linearisation). The anchor is a
    set of buffers, so only theta is trained. The wrapped network (a private copy, outside the module tree)
    supplies the architecture and its buffers; build the model on its final device first.
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        self._net = [copy.deepcopy(model)]  # a list hides it from parameters(), state_dict() and .to()
        self._names = list(params_of(model))
        self.theta = nn.ParameterDict({_key(k): nn.Parameter(v.clone()) for k, v in params_of(model).items()})
        for k, v in params_of(model).items():
            self.register_buffer("anchor__" + _key(k), v.clone())

    def current(self) -> Params:
        return {k: self.theta[_key(k)] for k in self._names}

    def anchor(self) -> Params:
        return {k: getattr(self, "anchor__" + _key(k)) for k in self._names}

    @torch.no_grad()
    def reanchor(self) -> None:
        for k in self._names:
            getattr(self, "anchor__" + _key(k)).copy_(self.theta[_key(k)])

    def forward(self, x: torch.Tensor, **kwargs) -> torch.Tensor:
        net = lambda p: functional_call(self._net[0], p, (x,), kwargs)
        return linearize(net, self.anchor())(self.current())

    def network(self, at: str = "theta") -> nn.Module:
        """The wrapped network (a new module) at the current parameters theta, or at the anchor.

        The linearised model's tangent kernel is the network's NTK at the anchor.
        """
        if at not in ("theta", "anchor"):
            raise ValueError(f"at must be 'theta' or 'anchor', got {at!r}")
        values = self.current() if at == "theta" else self.anchor()
        net = copy.deepcopy(self._net[0])
        with torch.no_grad():
            for k, p in net.named_parameters():
                if k in values:
                    p.copy_(values[k])
        return net


def _key(name: str) -> str:
    return name.replace(".", "__")


class Centered(nn.Module):
    """h(w) = f(w) - f(w0): subtract a frozen copy of the network at init, so h(w0) = 0 (centering (a)).

    The copy is not trained. At init the outputs are exactly zero and the Jacobian is f's.
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self.frozen = copy.deepcopy(model)
        for p in self.frozen.parameters():
            p.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            ref = self.frozen(x)
        return self.model(x) - ref


class Scaled(nn.Module):
    """alpha * model(x): the output scaling that makes training lazy as alpha grows."""

    def __init__(self, model: nn.Module, alpha: float):
        super().__init__()
        if not alpha > 0:
            raise ValueError(f"alpha must be positive, got {alpha}")
        self.model, self.alpha = model, float(alpha)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.alpha * self.model(x)


class ScaledSquareLoss:
    """F_alpha = ||alpha h - y||^2 / (2 alpha^2), per example, batch mean (eq-falpha).

    Applied to the outputs of `Scaled(model, alpha)`, this is 1/2 ||h - y / alpha||^2: the unscaled model fits
    the targets divided by alpha. `error` is the GN error of F_alpha with respect to the scaled outputs.
    """

    name = "mse-scaled"

    def __init__(self, alpha: float):
        if not alpha > 0:
            raise ValueError(f"alpha must be positive, got {alpha}")
        self.alpha = float(alpha)

    def _targets(self, out, y):
        from .losses import _targets
        return _targets(out, y)

    def __call__(self, scaled_out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return 0.5 * (scaled_out - self._targets(scaled_out, y)).pow(2).sum(1).mean() / self.alpha ** 2

    def error(self, scaled_out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return (scaled_out - self._targets(scaled_out, y)) / self.alpha ** 2


def parameter_distance(a: nn.Module | Params, b: nn.Module | Params) -> float:
    """||w_a - w_b|| over the parameters both share, by name."""
    pa = params_of(a) if isinstance(a, nn.Module) else a
    pb = params_of(b) if isinstance(b, nn.Module) else b
    return sum(((pa[k] - pb[k]) ** 2).sum() for k in pa).sqrt().item()
