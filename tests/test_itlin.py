"""Iterative linearisation interpolates between SGD (K = 1) and linearised training (K = inf), and K steps of GD
on the linearised square loss are a spectrally damped Gauss-Newton step. float64 throughout."""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from revgn.curvature import kernel_step
from revgn.damping import gn_filter, kstep_gd_filter, lm_filter
from revgn.functional import flatten, params_of, snapshot
from revgn.curvature import jacobian_matrix
from revgn.linearize import Linearized
from revgn.optimizers import SGD, IterativeLinearisation
from revgn.train import train

F64 = torch.float64


def net(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 24), nn.Tanh(), nn.Linear(24, 3)).double()


def data(n=40, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 6, generator=g, dtype=F64)
    return x, torch.randint(0, 3, (n,), generator=g)


@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_k_equal_one_is_sgd_step_for_step(momentum):
    x, y = data()
    plain, base = net(), net()
    h_sgd = train(plain, SGD(0.2, momentum=momentum), (x, y), loss="mse", epochs=10, batch_size=8, seed=3,
                  progress=False)
    lin = Linearized(base)
    h_lin = train(lin, IterativeLinearisation(1, SGD(0.2, momentum=momentum)), (x, y), loss="mse", epochs=10,
                  batch_size=8, seed=3, progress=False)
    theta = {k: v.detach() for k, v in lin.current().items()}
    assert (flatten(theta) - flatten(params_of(plain))).abs().max().item() <= 1e-12
    assert max(abs(a - b) for a, b in zip(h_sgd.steps["loss"], h_lin.steps["loss"])) <= 1e-12


def test_k_infinite_is_training_the_linearisation_at_init():
    x, y = data(n=12)
    model = net()
    theta0 = flatten(snapshot(model))
    J = jacobian_matrix(model, x)
    f0 = model(x).detach().reshape(-1)
    target = nn.functional.one_hot(y, 3).to(F64).reshape(-1)
    lin = Linearized(model)
    train(lin, IterativeLinearisation(float("inf"), SGD(0.3)), (x, y), loss="mse", epochs=25, progress=False)
    # The same GD by hand on 1/2 mean_i ||f0 + J (theta - theta0) - y||^2 with the explicit Jacobian.
    theta = theta0.clone()
    for _ in range(25):
        theta -= 0.3 * J.T @ (f0 + J @ (theta - theta0) - target) / len(x)
    ours = flatten({k: v.detach() for k, v in lin.current().items()})
    assert ((ours - theta).norm() / (theta - theta0).norm()).item() <= 1e-10


def test_k_steps_of_gd_on_the_linearised_loss_is_a_filtered_gn_step():
    x, y = data(n=10)
    model = net()
    theta0 = flatten(snapshot(model))
    J = jacobian_matrix(model, x)
    r = (model(x).detach() - nn.functional.one_hot(y, 3).to(F64)).reshape(-1)
    eta, K = 0.4, 17
    lin = Linearized(model)
    train(lin, IterativeLinearisation(float("inf"), SGD(eta)), (x, y), loss="mse", epochs=K, progress=False)
    delta = flatten({k: v.detach() for k, v in lin.current().items()}) - theta0
    # Our loss is a batch mean, so the rate on 1/2 ||J d + r||^2 is eta / n.
    closed = kernel_step(J, r, lambda lam: kstep_gd_filter(lam, eta / len(x), K))
    assert ((delta - closed).norm() / closed.norm()).item() <= 1e-10
    # ... which is -J^T (J J^T)^-1 [I - (I - eta J J^T)^K] r written out with matrices.
    G = J @ J.T
    M = torch.linalg.matrix_power(torch.eye(len(G), dtype=F64) - eta / len(x) * G, K)
    explicit = -J.T @ torch.linalg.solve(G, (torch.eye(len(G), dtype=F64) - M) @ r)
    assert ((closed - explicit).norm() / explicit.norm()).item() <= 1e-8


def test_k_to_infinity_tends_to_the_minimum_norm_gn_step_and_lm_interpolates():
    x, y = data(n=8)
    model = net()
    J = jacobian_matrix(model, x)  # 24 x 243: full row rank, so J J^T is invertible
    r = (model(x).detach() - nn.functional.one_hot(y, 3).to(F64)).reshape(-1)
    gn = kernel_step(J, r, gn_filter)
    assert ((gn + torch.linalg.pinv(J) @ r).norm() / gn.norm()).item() <= 1e-9  # = -J^+ r
    lam_max = torch.linalg.eigvalsh(J @ J.T).max().item()
    eta = 1.0 / lam_max  # a stable rate
    errors = [((kernel_step(J, r, lambda l: kstep_gd_filter(l, eta, K)) - gn).norm() / gn.norm()).item()
              for K in (1, 10, 100, 1000, 100_000)]
    assert all(a > b for a, b in zip(errors, errors[1:])), errors
    assert errors[-1] <= 1e-6
    assert torch.equal(kstep_gd_filter(torch.tensor([2.0, 0.5]), eta, float("inf")), gn_filter(torch.tensor([2.0, 0.5])))
    # K = 1 is a gradient step, and so is LM with a large damping (times mu).
    grad_step = -J.T @ r
    assert torch.allclose(kernel_step(J, r, lambda l: kstep_gd_filter(l, eta, 1)), eta * grad_step, atol=1e-12)
    mu = 1e8
    assert ((mu * kernel_step(J, r, lambda l: lm_filter(l, mu)) - grad_step).norm() / grad_step.norm()).item() <= 1e-6
    assert ((kernel_step(J, r, lambda l: lm_filter(l, 1e-10)) - gn).norm() / gn.norm()).item() <= 1e-6


def test_iterative_linearisation_input_checks():
    with pytest.raises(ValueError, match="K must be"):
        IterativeLinearisation(0)
    with pytest.raises(TypeError, match="Linearized"):
        x, y = data()
        train(net(), IterativeLinearisation(5), (x, y), loss="mse", progress=False)
