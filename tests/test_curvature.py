"""Curvature as operators, solvers apart: each operator against the explicit Jacobian, each GN-type step as
operator x solver against the others, and the library's import graph without a cycle."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest
import torch

from revgn.curvature import (TangentKernel, factored_kernel, gram_gn_direction, jacobian_matrix,
                             matrix_free_gn_direction, spectral_step)
from revgn.damping import lm_filter
from revgn.functional import as_function, flatten, params_of, unflatten
from revgn.models import MLP, RevMLP
from revgn.solvers import RankDeficientError, StepNotSolved, StepRefused, cholesky_factor, spectral_solve

F64 = torch.float64
LIBRARY = Path(__file__).resolve().parents[1] / "revgn"


def models():
    yield "revmlp-logits", RevMLP(9, 3, depth=2, hidden=24, init_std=0.3, seed=1, dtype=F64), {}
    yield "revmlp-body", RevMLP(9, 3, depth=2, hidden=24, init_std=0.3, seed=1, dtype=F64), {"output": "body"}
    yield "mlp", MLP(9, 3, hidden=(16,), seed=2).double(), {}


@pytest.mark.parametrize("name,model,kwargs", list(models()), ids=[m[0] for m in models()])
def test_the_tangent_kernel_applies_J_its_transpose_and_the_damped_kernel_as_the_explicit_jacobian(name, model,
                                                                                                  kwargs):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(7, 9, generator=g, dtype=F64)
    J = jacobian_matrix(model, x, **kwargs)
    K = TangentKernel(model, x, damping=0.3, **kwargs)
    u = torch.randn(K.outputs.shape, generator=g, dtype=F64)
    step = unflatten(torch.randn(J.shape[1], generator=g, dtype=F64), params_of(model))
    assert torch.allclose(K.J(step).reshape(-1), J @ flatten(step), rtol=0, atol=1e-12)
    assert torch.allclose(flatten(K.JT(u)), J.T @ u.reshape(-1), rtol=0, atol=1e-12)
    assert torch.allclose(K(u).reshape(-1), J @ (J.T @ u.reshape(-1)) + 0.3 * u.reshape(-1), rtol=0, atol=1e-12)
    assert torch.equal(TangentKernel(model, x, **kwargs)(u), K.J(K.JT(u)))  # undamped: nothing added
    # the same operator from a function of the parameters (what kappa's power iteration uses)
    of_f = TangentKernel.of_function(as_function(model, x, **kwargs), params_of(model), damping=0.3)
    assert torch.equal(of_f.outputs, K.outputs) and torch.equal(of_f(u), K(u))
    with pytest.raises(ValueError, match="damping must be >= 0"):
        TangentKernel.of_function(as_function(model, x, **kwargs), params_of(model), damping=-1.0)
    # one Jacobian builder: J one parameter tensor at a time is J's own columns, to the bit
    assert torch.equal(torch.cat([jacobian_matrix(model, x, wrt=(k,), **kwargs) for k in params_of(model)], 1), J)


def test_levenberg_marquardt_is_one_step_whichever_way_the_kernel_is_applied_and_solved():
    """(J J^T + mu I) u = eps, Delta = J^T u: explicit Jacobian + eigh with the LM filter, jvp/vjp + CG, and a
    RevMLP's factored kernel + Cholesky give one step, to 1e-9 in float64."""
    model = RevMLP(9, 3, depth=2, hidden=24, init_std=0.3, seed=1, dtype=F64)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(8, 9, generator=g, dtype=F64)
    eps = torch.randn(8, 3, generator=g, dtype=F64)
    mu = 0.05
    explicit = flatten(spectral_step(model, x, -eps, lambda lam: lm_filter(lam, mu)))  # -J^T phi(.) (-eps)
    by_cg, cg = matrix_free_gn_direction(model, x, eps, damping=mu, rtol=1e-13)
    by_cholesky, residual = gram_gn_direction(model, x, eps, damping=mu)
    scale = explicit.norm()
    assert cg.relative_residual < 1e-11 and residual < 1e-11
    assert (flatten(by_cg) - explicit).norm() / scale < 1e-9
    assert (flatten(by_cholesky) - explicit).norm() / scale < 1e-9


def test_the_factored_kernel_is_J_J_transpose_and_refuses_a_model_without_factors():
    model = RevMLP(9, 3, depth=2, hidden=24, init_std=0.3, seed=1, dtype=F64)
    x = torch.randn(6, 9, generator=torch.Generator().manual_seed(2), dtype=F64)
    J = jacobian_matrix(model, x)
    assert torch.allclose(factored_kernel(model, x), J @ J.T, rtol=0, atol=1e-12)
    with pytest.raises(ValueError, match="ntk_factors.*MLP"):
        factored_kernel(MLP(9, 3, hidden=(16,)).double(), x)


def test_solvers_see_only_the_matrix_and_refuse_what_they_cannot_solve():
    A = torch.randn(5, 3, generator=torch.Generator().manual_seed(3), dtype=F64)
    singular = A @ A.T  # rank 3 of 5
    with pytest.raises(RankDeficientError, match=r"the kernel \(5 x 5\) is not numerically positive definite"):
        cholesky_factor(singular, "the kernel")
    K = singular + torch.eye(5, dtype=F64)
    b = torch.arange(5, dtype=F64)
    assert torch.allclose(spectral_solve(K, b, lambda lam: 1 / lam), torch.linalg.solve(K, b), atol=1e-12)


def test_refused_steps_share_one_base_and_neither_kind_is_the_other():
    assert issubclass(RankDeficientError, StepRefused) and issubclass(StepNotSolved, StepRefused)
    assert not issubclass(StepNotSolved, RankDeficientError) and not issubclass(RankDeficientError, StepNotSolved)


def _imports(path: Path) -> set[str]:
    """The revgn modules `path` imports anywhere in its body (function-local imports included)."""
    package = path.parent.relative_to(LIBRARY.parent).as_posix().replace("/", ".")
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            if not base.startswith("revgn"):
                continue
            for alias in node.names:  # "from . import data" names a module, "from .gn import Pinv" a member
                out.add(f"{base}.{alias.name}" if (LIBRARY.parent / f"{base}.{alias.name}".replace(".", "/")).with_suffix(
                    ".py").exists() else base)
        elif isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.startswith("revgn")}
    return out


def test_the_library_imports_without_a_cycle_and_no_production_module_is_named_reference():
    modules = {p.relative_to(LIBRARY.parent).with_suffix("").as_posix().replace("/", "."): p
               for p in LIBRARY.rglob("*.py") if p.name != "__init__.py"}
    graph = {m: {i for i in _imports(p) if i in modules and i != m} for m, p in modules.items()}
    assert graph["revgn.gn_optimizers"] >= {"revgn.curvature", "revgn.gn", "revgn.solvers"}  # the parser sees imports
    state: dict[str, int] = {}

    def visit(m, path):
        state[m] = 1
        for n in sorted(graph[m]):
            assert state.get(n) != 1, "import cycle: " + " -> ".join(path + [m, n])
            if n not in state:
                visit(n, path + [m])
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m, [])
    assert not [m for m in modules if "reference" in m]


def test_the_moore_penrose_optimiser_routes_agree_and_a_truncated_cg_step_is_taken_only_when_asked():
    """solver="explicit" (the whole Jacobian, pseudo-inverted) and CG give one step; with maxiter=1 CG's step
    is refused by default and taken with refuse=False (the benchmarks' fixed-iteration timing), its residual
    still reported."""
    import copy

    from revgn.gn_optimizers import MoorePenroseGaussNewton
    from revgn.losses import CrossEntropy
    from revgn.models import RevMLP
    from revgn.solvers import StepNotSolved

    torch.manual_seed(0)
    model = RevMLP(8, 3, depth=1, hidden=16, seed=0, dtype=torch.float64)
    x, y = torch.randn(4, 8, dtype=torch.float64), torch.tensor([0, 1, 2, 0])
    moved = {}
    for solver in ("explicit", "cg"):
        net = copy.deepcopy(model)
        MoorePenroseGaussNewton(1.0, solver=solver, rtol=1e-10).step(net, x, y, CrossEntropy())
        moved[solver] = torch.cat([p.flatten() for p in net.parameters()])
    assert torch.allclose(moved["explicit"], moved["cg"], rtol=0, atol=1e-10)
    before = [p.clone() for p in model.parameters()]
    with pytest.raises(StepNotSolved):
        MoorePenroseGaussNewton(1.0, rtol=1e-10, maxiter=1).step(model, x, y, CrossEntropy())
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))  # refused: the model as it was
    truncated = MoorePenroseGaussNewton(1.0, rtol=1e-10, maxiter=1, refuse=False)
    truncated.step(model, x, y, CrossEntropy())
    assert truncated.step_info["cg_iterations"] == 1 and truncated.step_info["cg_residual"] > 1e-9
    assert not all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
    with pytest.raises(ValueError, match="undamped"):
        MoorePenroseGaussNewton(1.0, solver="explicit", damping=0.1)
