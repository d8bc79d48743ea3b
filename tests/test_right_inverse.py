"""The three GN steps compared in the right-inverse chapter, through the one training loop's optimisers:
the layer-wise right inverse (`GaussNewton`), the Moore-Penrose step of the logits' Jacobian and that of
x_L's Jacobian (`MoorePenroseGaussNewton`, CG to a stated tolerance, or for the logits a direct solve of J J^T
formed from per-half-layer factors), checked against explicit pseudo-inverses in float64 on models small enough
to form J."""
from __future__ import annotations

import copy
import json
import os
from pathlib import Path

import pytest
import torch

from revgn.curvature import jacobian_matrix
from revgn.experiments.study import ArmResult
from revgn.functional import flatten
from revgn.gn import gn_direction
from revgn.gn_optimizers import GaussNewton, MoorePenroseGaussNewton
from revgn.losses import CrossEntropy
from revgn.models import RevMLP
from revgn.solvers import RankDeficientError, StepNotSolved

F64 = torch.float64
CONFIGS = [(1, 30, 12), (2, 24, 10), (3, 36, 8)]  # (depth, hidden, n)


def problem(depth, hidden, n, seed=0, in_features=11, classes=4):
    g = torch.Generator().manual_seed(seed)
    model = RevMLP(in_features, classes, depth=depth, hidden=hidden, init_std=0.2, seed=seed, dtype=F64)
    x = torch.randn(n, in_features, generator=g, dtype=F64)
    y = torch.randint(0, classes, (n,), generator=g)
    return model, x, y


def moved(optimizer, model, x, y) -> torch.Tensor:
    """The parameter step the optimiser takes (theta_before - theta_after) on a copy of the model."""
    m = copy.deepcopy(model)
    before = flatten({k: v.detach().clone() for k, v in m.named_parameters()})
    optimizer.setup(m, len(x))
    optimizer.step(m, x, y, CrossEntropy())
    return before - flatten({k: v.detach() for k, v in m.named_parameters()})


def explicit(model, x, target, output):
    J = jacobian_matrix(model, x, **({"output": "body"} if output == "body" else {}))
    return J, torch.linalg.pinv(J) @ target.reshape(-1)


@pytest.mark.parametrize("cfg", CONFIGS, ids=[f"L{L}-h{h}-n{n}" for L, h, n in CONFIGS])
@pytest.mark.parametrize("output,solver", [("logits", "cg"), ("body", "cg"), ("logits", "gram")])
def test_the_moore_penrose_steps_solve_their_systems_and_equal_the_explicit_pseudo_inverse(cfg, output, solver):
    model, x, y = problem(*cfg)
    with torch.no_grad():
        eps = CrossEntropy().error(model(x), y)
    target = eps if output == "logits" else eps @ model.readout.T  # x_L's smallest change that moves logits by eps
    opt = MoorePenroseGaussNewton(lr=1.0, rtol=1e-10, output=output, solver=solver)
    step = moved(opt, model, x, y)
    J, reference = explicit(model, x, target, output)
    assert ((step - reference).norm() / reference.norm()).item() <= 1e-8
    assert ((J @ step - target.reshape(-1)).norm() / target.norm()).item() <= 1e-8
    J_logits, _ = explicit(model, x, eps, "logits")  # either way, the logits move by eps to first order
    assert ((J_logits @ step - eps.reshape(-1)).norm() / eps.norm()).item() <= 1e-8
    info = opt.step_info
    if solver == "cg":
        assert info["cg_residual"] <= 1e-9 and info["cg_iterations"] >= 1
    else:  # a direct solve: rounding only
        assert info["gram_residual"] <= 1e-11 and "cg_iterations" not in info
    assert info["step_norm"] == pytest.approx(step.norm().item(), rel=1e-12)


@pytest.mark.parametrize("cfg", CONFIGS, ids=[f"L{L}-h{h}-n{n}" for L, h, n in CONFIGS])
def test_the_minimum_norm_chain_logits_then_body_then_layer_wise(cfg):
    """All three move the logits by eps. J^+ eps is the shortest such step; the x_L step solves a stricter
    system (the whole of x_L's move fixed), so it is no shorter; the layer-wise step solves that same system,
    so it is no shorter than its minimum-norm solution."""
    model, x, y = problem(*cfg)
    mp = moved(MoorePenroseGaussNewton(lr=1.0, rtol=1e-12), model, x, y).norm()
    body = moved(MoorePenroseGaussNewton(lr=1.0, rtol=1e-10, output="body"), model, x, y).norm()
    layer = moved(GaussNewton(lr=1.0), model, x, y)
    with torch.no_grad():
        eps = CrossEntropy().error(model(x), y)
    assert layer.norm() / model.depth <= layer.norm()  # lr / L of eq-stack is inside the optimiser's step
    assert torch.allclose(layer, flatten(gn_direction(model, x, eps)), rtol=1e-10, atol=1e-14)
    assert mp <= body * (1 + 1e-10) and body <= layer.norm() * (1 + 1e-10)
    assert mp < layer.norm() * (1 - 1e-6)  # strictly: the layer-wise step is not the Moore-Penrose step


def test_a_step_whose_cg_does_not_converge_is_refused_and_the_model_is_left_as_it_was():
    model, x, y = problem(2, 24, 10)
    before = copy.deepcopy(model.state_dict())
    with pytest.raises(StepNotSolved, match="did not reach"):
        MoorePenroseGaussNewton(lr=1.0, rtol=1e-12, maxiter=2).step(model, x, y, CrossEntropy())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    with pytest.raises(TypeError, match="RevMLP"):
        MoorePenroseGaussNewton(output="body").setup(torch.nn.Linear(3, 2), 4)
    with pytest.raises(TypeError, match="RevMLP"):
        MoorePenroseGaussNewton(solver="gram").setup(torch.nn.Linear(3, 2), 4)
    with pytest.raises(ValueError, match="needs 'cg'"):
        MoorePenroseGaussNewton(output="body", solver="gram")


def test_a_direct_step_on_a_singular_system_is_refused_and_the_model_is_left_as_it_was():
    """A repeated example makes J J^T singular: no step moves the logits by two different errors at once."""
    model, x, y = problem(2, 24, 10)
    x, y = torch.cat([x, x[:1]]), torch.cat([y, (y[:1] + 1) % 4])  # the same image, another label
    before = copy.deepcopy(model.state_dict())
    with pytest.raises(RankDeficientError):
        MoorePenroseGaussNewton(lr=1.0, rtol=1e-10, solver="gram").step(model, x, y, CrossEntropy())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


@pytest.mark.skipif(not (Path(os.environ.get("REVGN_DATA", "/nonexistent")) / "mnist").exists(),
                    reason="needs MNIST in $REVGN_DATA (make test points it at ../shared/data)")
def test_run_specs_train_the_moore_penrose_steps_and_record_each_steps_residual_and_norm(tmp_path):
    from revgn.runs import DataSpec, ModelSpec, OptimSpec, RunSpec, run

    spec = RunSpec(DataSpec("mnist", n_train=64, n_test=32), ModelSpec(depth=2, hidden=48), OptimSpec("gn-mp", 0.5),
                   batch_size=16, epochs=1, evaluate=("test",))
    rec = run(spec, tmp_path)
    steps = rec.history.steps
    assert rec.ok and len(steps["cg_residual"]) == 4 and max(steps["cg_residual"]) <= 10 * spec.optimizer.cg_rtol
    assert min(steps["step_norm"]) > 0
    refused = run(spec.replace(**{"optimizer.cg_maxiter": 1}), tmp_path)  # a method failure, recorded as such
    assert not refused.ok and refused.failure.startswith("StepNotSolved")
    direct = run(spec.replace(**{"optimizer.solver": "gram"}), tmp_path)  # the same steps, solved directly (float32)
    assert direct.ok and max(direct.history.steps["gram_residual"]) <= 10 * spec.optimizer.cg_rtol
    assert direct.metrics["test_acc"] == rec.metrics["test_acc"]
    assert abs(direct.metrics["train_loss"] - rec.metrics["train_loss"]) <= 1e-3 * rec.metrics["train_loss"]
    from revgn.experiments.right_inverse import solver_agreement  # what ch08 reports, read from such twins
    from revgn.sweep import collect
    agree = solver_agreement({"mp": ArmResult([], [direct])}, lambda specs: collect(specs, tmp_path), "mp")
    assert agree == {"runs": 1, "test_acc": 0.0,
                     "train_loss": abs(direct.metrics["train_loss"] / rec.metrics["train_loss"] - 1)}
    assert solver_agreement({"mp": ArmResult([], [rec])}, lambda specs: collect(specs, tmp_path / "none"), "mp") is None
    for bad in ({"optimizer.output": "body"}, {"optimizer.name": "gn"}):
        with pytest.raises(ValueError, match="optimizer.solver='gram'"):
            spec.replace(**{"optimizer.solver": "gram", **bad})
    for name in ("gn", "adam"):  # every optimiser reports its parameter step's norm
        assert min(run(spec.replace(optimizer=OptimSpec(name, 0.5 if name == "gn" else 1e-3))).history.steps["step_norm"]) > 0


@pytest.mark.skipif(not (Path(os.environ.get("REVGN_DATA", "/nonexistent")) / "mnist").exists(),
                    reason="needs MNIST in $REVGN_DATA (make test points it at ../shared/data)")
def test_theorem_4_3_on_the_batch_the_right_inverses_agree_to_o_alpha_and_off_it_they_do_not(tmp_path):
    """Equal time t = alpha k at shrinking alpha: on the trained batch the methods' logits converge to one
    another (the same error flow); on held-out images they stay apart. A record is resumed seed by seed, to
    the same numbers, and a file holding another seed's record is refused."""
    from revgn.experiments import right_inverse as ri
    from revgn.fingerprint import current as current_fingerprint
    from revgn.records import measurement_key

    flow = ri.Flow("mnist", hidden=32, batch=8, held_out=20, alphas=(0.5, 0.25, 0.125), seeds=(0, 1))
    ri.record_flow(flow, store=tmp_path)
    recs = ri.load_flow(flow, tmp_path)
    assert [r["seed"] for r in recs] == [0, 1]
    for rec in recs:
        for pair, batch in rec["distance"]["batch"].items():
            held_out = rec["distance"]["held-out"][pair]
            assert batch[0] > batch[1] > batch[2] > 0  # shrinks with alpha ...
            assert batch[0] / batch[2] > 4 ** 0.5  # ... at least like sqrt(alpha) over a factor 4
            assert min(held_out) > 10 * max(batch)  # off the batch the flows themselves differ
        assert all(max(v) < 1 for v in rec["error_decay"].values())  # each method reduced the batch's error
    summary = ri.flow_summary(flow, recs)
    assert all(s.interval.n == 2 and s.vanishes is None for s in summary["batch"].values())  # 2 < 5 seeds
    # one content-addressed measurement record per seed, keyed by the setting and the seed
    paths = {seed: tmp_path / f"{measurement_key('flow', flow.setting(seed))}.json" for seed in flow.seeds}
    assert sorted(tmp_path.glob("*.json")) == sorted(paths.values())
    first = json.loads(paths[1].read_text())
    assert first["provenance"]["measured_by"] == ri.MEASURED_BY  # the training path's code and the measurer's
    assert first["provenance"]["fingerprint"] == current_fingerprint(("experiments/right_inverse.py",))
    paths[1].unlink()
    assert ri.record_flow(flow, store=tmp_path) == [paths[1]]  # only the missing seed
    assert json.loads(paths[1].read_text())["result"] == first["result"]
    other = ri.Flow("mnist", hidden=32, batch=8, held_out=20, alphas=(0.5, 0.25), seeds=(0,))
    assert ri.load_flow(other, tmp_path) == []  # another setting is another record, not this one
    paths[1].write_text(paths[0].read_text())  # a file holding another seed's measurement is refused, by name
    with pytest.raises(ValueError, match=f"{paths[1].name} holds another measurement"):
        ri.load_flow(flow, tmp_path)
    with pytest.raises(ValueError, match="whole steps"):
        ri.Flow(alphas=(0.3,))


def test_a_flow_record_is_keyed_by_the_runs_it_makes(monkeypatch):
    """A flow's setting names the keys of its runs: a method that now runs another solver makes another
    measurement (a new key), and a setting whose runs this code does not make is refused, not measured."""
    from dataclasses import replace

    from revgn.experiments import right_inverse as ri
    from revgn.records import measurement_key

    flow = ri.Flow("mnist", hidden=32, batch=8, held_out=20, alphas=(0.5, 0.25), seeds=(0,))
    before = flow.setting(0)
    assert before["runs"] == [flow.spec(m, a, 0).key for m in ri.GN_METHODS for a in flow.alphas]
    logits = "Moore-Penrose GN (logits)"
    monkeypatch.setitem(ri.METHODS, logits, replace(ri.METHODS[logits], solver="cg"))
    after = flow.setting(0)
    assert measurement_key("flow", after) != measurement_key("flow", before)
    changed = [i for i, (k, j) in enumerate(zip(before["runs"], after["runs"])) if k != j]
    at = ri.GN_METHODS.index(logits) * len(flow.alphas)
    assert changed == list(range(at, at + len(flow.alphas)))  # the logits' runs, and only they
    with pytest.raises(ValueError, match="seed 0: its runs are not the ones this code's methods make"):
        ri.measure_flow(before)


def _done(offsets: dict[str, list[float]], failed: str = "") -> dict:
    """A `walk` result whose GN methods score 0.9 + offset at each seed (test accuracy); `failed` fails one run."""
    from types import SimpleNamespace as NS

    from revgn.experiments import right_inverse as ri
    recs = lambda label, offs: [NS(spec=NS(seed=s), ok=not (label == failed and s == 0),
                                   metrics={"test_acc": 0.9 + o}) for s, o in enumerate(offs)]
    return {label: ArmResult([], recs(label, offsets.get(label, [0.0] * 5))) for label in ri.GN_METHODS}


def test_the_verdict_letter_follows_the_rule_and_waits_for_every_seed_of_every_gn_step():
    from revgn.experiments import right_inverse as ri

    lw, *mp = ri.GN_METHODS
    small = [0.001, -0.002, 0.0015, 0.0, -0.001]  # inside +-1 point, tightly
    assert ri.which_inverse(_done({m: small for m in mp})).letter == "a"
    assert ri.which_inverse(_done({mp[0]: [0.02, 0.025, 0.018, 0.022, 0.02]})).letter == "b"
    noisy = [0.03, -0.02, 0.025, -0.015, 0.0]  # mean near 0, interval past the margin both ways
    assert ri.which_inverse(_done({m: noisy for m in mp})).letter == "c"
    # the margin that would give (a): (a) at any margin above it, not at any below, whatever the letter
    for offsets in ({m: small for m in mp}, {m: noisy for m in mp}, {mp[0]: [0.02, 0.025, 0.018, 0.022, 0.02]}):
        need = ri.which_inverse(_done(offsets)).margin_for_a
        assert ri.which_inverse(_done(offsets), margin=need * 1.01).letter == "a"
        assert ri.which_inverse(_done(offsets), margin=need * 0.99).letter != "a"
    assert ri.which_inverse(_done({m: [0.02, 0.02, 0.02, 0.02, 0.0201] for m in mp})).letter == "b"
    # incomplete: a GN step missing, with fewer seeds' runs, or with a failed run gives no letter
    partial = _done({})
    del partial[mp[-1]]
    assert ri.which_inverse(partial) is None
    assert ri.which_inverse({**_done({}), lw: ArmResult([], [])}) is None
    assert ri.which_inverse(_done({}, failed=mp[0])) is None
    assert not ri.complete(_done({}, failed=lw), lw) and ri.complete(_done({}), lw)


def test_each_setting_names_the_sweep_that_records_it():
    from revgn.experiments import right_inverse as ri
    from revgn.sweep import load_grid

    for setting in ri.SETTINGS:
        name = ri.sweep_command(setting).split()[-1]
        assert load_grid(name).topic == f"right_inverse/{setting}"
    with pytest.raises(ValueError, match="setting"):
        ri.sweep_command("imagenet")


def test_a_method_enters_the_walk_result_only_once_every_seed_is_recorded_and_progress_says_how_far_it_is():
    from dataclasses import replace
    from types import SimpleNamespace as NS

    from revgn.experiments import right_inverse as ri

    label = "Moore-Penrose GN (x_L)"
    val = {0.1: 0.30, 0.3: 0.33, 1.0: 0.34, 2.0: 0.32}  # seed 0: 1 wins at the grid's top, so the cap 2 is tried
    recorded = {}

    def records_of(specs):
        return [recorded.get(s) for s in specs]

    def record(lr, seed):
        spec = ri.SETTINGS["cifar10-subset"].replace(optimizer=replace(ri.METHODS[label], lr=lr), seed=seed,
                                                     **{"model.seed": seed})
        recorded[spec] = NS(spec=spec, ok=True, metrics={"val_acc": val[lr], "test_acc": 0.3})

    for lr in (0.1, 0.3, 1.0):
        record(lr, 0)
    scores, chosen, k = ri.progress("cifar10-subset", label, records_of)
    assert scores == {0.1: 0.30, 0.3: 0.33, 1.0: 0.34, 2.0: None} and chosen is None and k == 0
    record(2.0, 0)
    record(1.0, 1)
    needed, done = ri.walk("cifar10-subset", records_of)
    assert label not in done  # rate chosen, seeds 2-4 missing: not a result yet (nor a failure)
    assert {s.seed for s in needed if s.optimizer.output == "body" and s.optimizer.lr == 1.0} == set(ri.SEEDS)
    _, chosen, k = ri.progress("cifar10-subset", label, records_of)
    assert (chosen.lr, k) == (1.0, 2) and chosen.describe() == "0.1: 0.3, 0.3: 0.33, 1: 0.34 (chosen), 2: 0.32"
    for seed in ri.SEEDS[2:]:
        record(1.0, seed)
    needed, done = ri.walk("cifar10-subset", records_of)
    assert done[label].selection.lr == 1.0 and len(done[label].records) == len(ri.SEEDS) and ri.complete(done, label)


def test_the_moore_penrose_step_works_on_a_float32_model_with_its_default_tolerance():
    """float32 CG cannot reach float64's 1e-6: the default rtol is chosen by the model's dtype, so the first
    float32 step is taken (it was refused at a fixed 1e-5), and it still moves the logits by the error to
    within that tolerance, measured against the float64 Jacobian of the same weights."""
    g = torch.Generator().manual_seed(3)
    net = torch.nn.Sequential(torch.nn.Linear(20, 64), torch.nn.Tanh(), torch.nn.Linear(64, 5))
    x, y = torch.randn(24, 20, generator=g), torch.randint(0, 5, (24,), generator=g)
    opt = MoorePenroseGaussNewton(lr=1.0)
    step = moved(opt, net, x, y).double()
    assert opt.step_info["cg_residual"] <= MoorePenroseGaussNewton.REFUSE * MoorePenroseGaussNewton.RTOL[torch.float32]
    net64 = copy.deepcopy(net).double()
    with torch.no_grad():
        eps = CrossEntropy().error(net64(x.double()), y)
    J = jacobian_matrix(net64, x.double())
    assert ((J @ step - eps.reshape(-1)).norm() / eps.norm()).item() <= 1e-3
    with pytest.raises(TypeError, match="no default rtol"):
        MoorePenroseGaussNewton()._rtol(torch.nn.Linear(2, 2).half())


def test_gauss_newton_names_what_it_needs_when_given_another_model():
    """Called from a user's own loop without `setup`, the step says it needs a RevMLP, not AttributeError."""
    net = torch.nn.Linear(4, 3)
    with pytest.raises(TypeError, match="needs a RevMLP.*MoorePenroseGaussNewton"):
        GaussNewton(lr=0.1).step(net, torch.randn(2, 4), torch.tensor([0, 1]), CrossEntropy())
