"""Linearisation, centering, kernels and the criterion kappa, checked on models with known answers."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from revgn.functional import params_of
from revgn.curvature import jacobian_matrix
from revgn.kernels import (empirical_ntk, hessian_norm, jacobian_norm, kappa, kernel_distance, linear_cka,
                           pattern_stability, relu_patterns)
from revgn.linearize import Centered, Linearized, Scaled, ScaledSquareLoss, linearize
from revgn.functional import as_function

F64 = torch.float64


def mlp(seed=0, act=nn.ReLU):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(5, 16), nn.Tanh(), nn.Linear(16, 16), act(), nn.Linear(16, 3)).double()


def cnn(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(2, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 4 * 4, 2)).double()


def test_linearize_is_first_order_accurate():
    model, x = mlp(act=nn.Tanh), torch.randn(7, 5, dtype=F64)  # smooth, so Taylor's theorem applies
    p0 = params_of(model)
    f = as_function(model, x)
    f_lin = linearize(f, p0)
    direction = {k: torch.randn_like(v) for k, v in p0.items()}
    errors = []
    for eps in (1e-1, 1e-2, 1e-3):
        p = {k: p0[k] + eps * direction[k] for k in p0}
        errors.append((f(p) - f_lin(p)).norm().item())
    slopes = [math.log10(errors[i] / errors[i + 1]) for i in range(2)]
    assert all(abs(s - 2) < 0.1 for s in slopes), slopes  # the error shrinks like eps^2
    assert torch.equal(f_lin(p0), f(p0))


def test_linearize_is_exact_for_a_linear_model():
    model, x = nn.Linear(5, 3).double(), torch.randn(7, 5, dtype=F64)
    p0 = params_of(model)
    f = as_function(model, x)
    p = {k: v + torch.randn_like(v) for k, v in p0.items()}
    assert (linearize(f, p0)(p) - f(p)).abs().max().item() <= 1e-12


def test_linearized_module_trains_like_the_taylor_model_and_reanchors():
    model, x = mlp(), torch.randn(7, 5, dtype=F64)
    lin = Linearized(model)
    assert torch.allclose(lin(x), model(x), atol=1e-14)
    with torch.no_grad():
        for p in lin.parameters():
            p.add_(0.1 * torch.randn_like(p))
    theta = {k: v.detach() for k, v in lin.current().items()}
    assert torch.allclose(lin(x), linearize(as_function(model, x), params_of(model))(theta), atol=1e-13)
    loss = lin(x).pow(2).sum()
    loss.backward()  # gradients flow to the linearised model's parameters through the jvp
    assert {n for n, _ in lin.named_parameters()} == {f"theta.{k.replace('.', '__')}" for k in params_of(model)}
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in lin.parameters())
    lin.reanchor()
    assert torch.allclose(lin(x), lin.network()(x), atol=1e-13)
    assert not torch.allclose(lin.network()(x), model(x))


@pytest.mark.parametrize("make,shape", [(mlp, (6, 5)), (cnn, (4, 2, 6, 6))], ids=["mlp", "cnn"])
def test_ntk_by_jacobian_contraction_equals_ntk_vector_products(make, shape):
    model = make()
    x1, x2 = torch.randn(*shape, dtype=F64), torch.randn(3, *shape[1:], dtype=F64)
    for a, b in ((x1, None), (x1, x2)):
        K1 = empirical_ntk(model, a, b, method="jacobian")
        K2 = empirical_ntk(model, a, b, method="ntk-vp")
        assert K1.shape == K2.shape and ((K1 - K2).norm() / K1.norm()).item() <= 1e-12
    K = empirical_ntk(model, x1)
    assert torch.allclose(K, K.T, atol=1e-12) and torch.linalg.eigvalsh(K).min() > -1e-10


def test_kernel_distances():
    K = torch.randn(6, 6, generator=torch.Generator().manual_seed(0), dtype=F64)
    K = K @ K.T
    assert abs(kernel_distance(K, 3 * K)) < 1e-14
    assert kernel_distance(K, torch.eye(6, dtype=F64)) > 0.01


def test_centered_model_is_zero_at_init_with_an_unchanged_jacobian():
    model, x = mlp(), torch.randn(7, 5, dtype=F64)
    centered = Centered(model)
    assert torch.equal(centered(x), torch.zeros(7, 3, dtype=F64))
    J, Jc = jacobian_matrix(model, x), jacobian_matrix(centered, x)
    assert torch.equal(J, Jc)
    assert list(params_of(centered)) == [f"model.{k}" for k in params_of(model)], "the frozen copy is not trained"


def test_scaled_square_loss_fits_targets_over_alpha():
    model, x = mlp(), torch.randn(7, 5, dtype=F64)
    y = torch.randn(7, 3, dtype=F64)
    alpha = 10.0
    out = Scaled(model, alpha)(x)
    assert torch.allclose(ScaledSquareLoss(alpha)(out, y), 0.5 * (model(x) - y / alpha).pow(2).sum(1).mean())


class Quadratic(nn.Module):
    """h(w) = c * (1/2 w^T A w) + B w: D^2 h[u, u] = c (u^T A u), so ||D^2 h|| = ||c|| rho(A), Dh(0) = B."""

    def __init__(self, A, B, c):
        super().__init__()
        self.w = nn.Parameter(torch.zeros(A.shape[0], dtype=F64))
        self.register_buffer("A", A), self.register_buffer("B", B), self.register_buffer("c", c)

    def forward(self, x):  # x is ignored: the "data" are fixed in A, B, c
        return (self.c * (0.5 * self.w @ self.A @ self.w) + self.B @ self.w)[None]


def test_kappa_on_closed_form_models():
    g = torch.Generator().manual_seed(0)
    # A linear model: D^2 h = 0, so kappa = 0, and ||Dh|| is the largest singular value of its matrix.
    lin = Quadratic(torch.zeros(6, 6, dtype=F64), torch.randn(4, 6, generator=g, dtype=F64), torch.ones(4, dtype=F64))
    y = torch.randn(1, 4, generator=g, dtype=F64)
    k = kappa(lin, torch.zeros(1), y, max_iterations=2000, rtol=1e-13)
    assert k.kappa == 0 and k.second == 0
    assert abs(k.first - torch.linalg.matrix_norm(lin.B, 2).item()) <= 1e-10
    # A quadratic model with known norms.
    M = torch.randn(6, 6, generator=g, dtype=F64)
    A = (M + M.T) / 2
    B = torch.randn(4, 6, generator=g, dtype=F64)
    c = torch.randn(4, generator=g, dtype=F64)
    quad = Quadratic(A, B, c)
    k = kappa(quad, torch.zeros(1), y, max_iterations=2000, rtol=1e-13)
    rho = torch.linalg.eigvalsh(A).abs().max().item()
    expected_second = c.norm().item() * rho
    expected_first = torch.linalg.matrix_norm(B, 2).item()
    assert abs(k.second - expected_second) <= 1e-8 * expected_second
    assert abs(k.first - expected_first) <= 1e-8 * expected_first
    assert abs(k.residual - y.norm().item()) <= 1e-12
    assert abs(k.kappa - y.norm().item() * expected_second / expected_first ** 2) <= 1e-8 * k.kappa


def test_kappa_shrinks_like_one_over_alpha_for_a_centered_scaled_model():
    model, x = mlp(), torch.randn(7, 5, dtype=F64)
    y = torch.randn(7, 3, dtype=F64)
    ks = [kappa(Scaled(Centered(model), a), x, y).kappa for a in (1.0, 10.0, 100.0)]
    # kappa_{alpha h} = ||alpha h(w0) - y|| alpha ||D^2 h|| / (alpha^2 ||Dh||^2) = kappa_h / alpha when h(w0) = 0.
    assert abs(ks[0] / ks[1] - 10) < 1e-6 and abs(ks[1] / ks[2] - 10) < 1e-6


def test_linear_cka():
    g = torch.Generator().manual_seed(0)
    X = torch.randn(50, 8, generator=g, dtype=F64)
    Q, _ = torch.linalg.qr(torch.randn(8, 8, generator=g, dtype=F64))
    assert abs(linear_cka(X, 3 * X @ Q + 1.0) - 1) < 1e-12  # invariant to rotation, scale and shift
    assert linear_cka(X, torch.randn(50, 8, generator=g, dtype=F64)) < 0.5


def test_relu_pattern_stability():
    model, x = mlp(), torch.randn(20, 5, dtype=F64)
    p0 = relu_patterns(model, x)
    assert p0.shape == (20 * 16,) and pattern_stability(p0, relu_patterns(model, x)) == 1.0
    with torch.no_grad():
        model[2].bias.add_(100.0)  # every unit of that layer switches on
    assert pattern_stability(p0, relu_patterns(model, x)) == (p0.double().mean().item())
    with pytest.raises(ValueError, match="nn.ReLU"):
        relu_patterns(nn.Linear(5, 3).double(), x)
