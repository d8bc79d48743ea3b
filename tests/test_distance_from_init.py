"""Distances from init read 'unchanged' at init, move when the model moves, and agree with the whole NTK."""
from __future__ import annotations

import pytest
import torch

from revgn.kernels import (all_params, block_cka, distance_from_init, empirical_ntk, frozen_copy, kernel_distance,
                           ntk_similarity_probes, weight_cosines)
from revgn.models import RevMLP

F64 = torch.float64


def setup():
    model = RevMLP(12, 3, depth=2, hidden=16, init_std=0.1, dtype=F64, seed=0)
    x = torch.randn(6, 12, dtype=F64, generator=torch.Generator().manual_seed(1))
    return model, frozen_copy(model), x


def measures(model0, x):
    names = ("ntk_similarity", "ntk_distance", "cka", "weight_cosine", "kappa")
    return distance_from_init(model0, names, kernel_inputs=x[:3], probe_batch=x, cka_inputs=x,
                              kappa_data=(x, torch.tensor([0, 1, 2, 0, 1, 2])))


def test_measures_at_init_say_nothing_moved():
    model, model0, x = setup()
    fs = measures(model0, x)
    m = {k: f(model) for k, f in fs.items()}
    assert set(m) == {"ntk_similarity", "ntk_distance", "weight_cosine", "cka_block1", "cka_block2", "kappa",
                      "kappa_residual", "kappa_first", "kappa_second"}
    assert abs(m["ntk_similarity"] - 1) < 1e-12 and m["ntk_distance"] < 1e-12 and abs(m["weight_cosine"] - 1) < 1e-12
    assert abs(m["cka_block1"] - 1) < 1e-12 and abs(m["cka_block2"] - 1) < 1e-12 and m["kappa"] > 0
    # kappa is its three factors (eq-kappa), computed once per state of the weights: an update recomputes them
    assert m["kappa"] == pytest.approx(m["kappa_residual"] * m["kappa_second"] / m["kappa_first"] ** 2, rel=1e-12)
    with torch.no_grad():
        next(model.parameters()).mul_(2.0)
    assert fs["kappa_first"](model) != m["kappa_first"] and fs["kappa"](model) != m["kappa"]


def test_measures_move_when_the_weights_move():
    model, model0, x = setup()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p))
    m = {k: f(model) for k, f in measures(model0, x).items()}
    assert m["ntk_distance"] > 1e-3 and m["weight_cosine"] < 0.5 and min(m["cka_block1"], m["cka_block2"]) < 1 - 1e-6
    assert m["ntk_similarity"] < 1 - 1e-6
    assert frozen_copy(model0).blocks[0].W1.requires_grad is False
    assert min(block_cka(model0, model, x)) < 1 - 1e-6 and min(weight_cosines(model0, model).values()) < 0.5
    assert abs(ntk_similarity_probes(model0, model0, x) - 1) < 1e-12


def test_the_ntk_methods_agree_on_a_frozen_copy_and_on_two_input_sets():
    model, model0, x = setup()
    K = empirical_ntk(model, x[:3], x[3:])
    for method in ("by-parameter", "ntk-vp", "factors"):
        assert torch.allclose(empirical_ntk(model, x[:3], x[3:], method=method), K, atol=1e-12), method
    # the factors of a half-layer with a bias carry a column of ones; an identity first activation has no kink
    biased = RevMLP(12, 3, depth=3, hidden=16, init_std=0.3, bias=True, first_activation="identity", dtype=F64, seed=2)
    with torch.no_grad():
        biased.blocks[1].b2.normal_()
    assert torch.allclose(empirical_ntk(biased, x, method="factors"), empirical_ntk(biased, x), rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match="ntk_factors"):
        empirical_ntk(torch.nn.Linear(12, 3).double(), x, method="factors")
    with pytest.raises(ValueError, match="params=None"):
        empirical_ntk(model0, x, params=all_params(model0), method="factors")
    # a frozen copy has no trained parameters: all_params differentiates it anyway
    assert torch.allclose(empirical_ntk(model0, x[:3], params=all_params(model0), method="by-parameter"),
                          empirical_ntk(model, x[:3]), atol=1e-12)
    assert kernel_distance(K, 2 * K) < 1e-12
