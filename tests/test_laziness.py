"""The lazy-regime metrics read 'unchanged' at init, move when the model moves, and agree with the generic NTK."""
from __future__ import annotations

import torch

from revgn.kernels import empirical_ntk
from revgn.laziness import (block_cka, empirical_ntk_by_parameter, frozen_copy, laziness_metrics,
                            ntk_kernel_distance, ntk_similarity_probes, weight_cosines)
from revgn.models import RevMLP

F64 = torch.float64


def setup():
    model = RevMLP(12, 3, depth=2, hidden=16, init_std=0.1, dtype=F64, seed=0)
    x = torch.randn(6, 12, dtype=F64, generator=torch.Generator().manual_seed(1))
    return model, frozen_copy(model), x


def test_metrics_at_init_say_nothing_moved():
    model, model0, x = setup()
    assert abs(ntk_similarity_probes(model0, model, x) - 1) < 1e-12
    assert ntk_kernel_distance(model0, model, x[:3]) < 1e-12
    assert all(abs(c - 1) < 1e-12 for c in block_cka(model0, model, x))
    assert all(abs(c - 1) < 1e-12 for c in weight_cosines(model0, model).values())
    metrics = laziness_metrics(model0, x, x[:3], x)
    assert set(metrics) == {"ntk_similarity", "ntk_distance", "weight_cosine", "cka_block1", "cka_block2"}


def test_metrics_move_when_the_weights_move():
    model, model0, x = setup()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p))
    assert ntk_kernel_distance(model0, model, x[:3]) > 1e-3
    assert min(weight_cosines(model0, model).values()) < 0.5
    assert min(block_cka(model0, model, x)) < 1 - 1e-6
    assert frozen_copy(model0).blocks[0].W1.requires_grad is False


def test_ntk_by_parameter_equals_the_generic_ntk():
    model, _, x = setup()
    assert torch.allclose(empirical_ntk_by_parameter(model, x[:3]), empirical_ntk(model, x[:3]), atol=1e-12)
