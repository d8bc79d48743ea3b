"""The tractable GN step is exact: checked against explicit Jacobians in float64 on random configurations."""
from __future__ import annotations

import math

import pytest
import torch

from revgn.curvature import explicit_gn_direction, jacobian_matrix, matrix_free_gn_direction
from revgn.functional import flatten
from revgn.gn import block_directions, gn_direction, stack_blocks
from revgn.losses import CrossEntropy, SquareLoss
from revgn.models import RevMLP
from revgn.pinv import Pinv, features_pinv
from revgn.solvers import RankDeficientError
from revgn.verify import block_moore_penrose_errors, function_space_residual, one_step_losses

F64 = torch.float64

# (depth, hidden, n, bias, loss): depths 1-4, h >= n with several ratios, biases on/off, MSE and CE.
CONFIGS = [
    (1, 36, 24, False, "mse"), (1, 40, 16, True, "ce"), (2, 32, 20, False, "ce"), (2, 20, 20, True, "mse"),
    (3, 48, 12, True, "ce"), (3, 30, 25, False, "mse"), (4, 36, 18, False, "ce"), (4, 24, 10, True, "mse"),
]
IDS = [f"L{L}-h{h}-n{n}-{'bias' if b else 'nobias'}-{loss}" for L, h, n, b, loss in CONFIGS]


def problem(depth, hidden, n, bias, loss, seed=0, in_features=13, classes=4, init_std=0.2):
    """A random model, batch and the loss's GN error. A larger init than the paper's keeps every term alive."""
    g = torch.Generator().manual_seed(seed)
    model = RevMLP(in_features, classes, depth=depth, hidden=hidden, bias=bias, init_std=init_std, seed=seed,
                   dtype=F64)
    with torch.no_grad():  # non-zero biases, so their step is tested on a generic point
        for name, p in model.named_parameters():
            if name.split(".")[-1].startswith("b"):
                p.copy_(0.1 * torch.randn(p.shape, generator=g, dtype=F64))
    x = torch.randn(n, in_features, generator=g, dtype=F64)
    y = torch.randint(0, classes, (n,), generator=g)
    loss_fn = SquareLoss() if loss == "mse" else CrossEntropy()
    eps = loss_fn.error(model(x), y)
    return model, x, y, eps


def jvp_residual(model, x, direction, eps, **kw):
    """||J Delta - eps|| / ||eps|| with J computed explicitly."""
    return function_space_residual(model, x, direction, eps, **kw)


@pytest.mark.parametrize("gram", ["float64", "refined"])
@pytest.mark.parametrize("cfg", CONFIGS, ids=IDS)
def test_step_moves_the_outputs_by_exactly_the_error(cfg, gram):
    model, x, _, eps = problem(*cfg)
    assert jvp_residual(model, x, gn_direction(model, x, eps, Pinv(gram=gram)), eps) <= 1e-10


def test_square_features_are_exact_to_the_accuracy_of_the_gram_route():
    """With h = n the ReLU features are ill-conditioned (cond(A) ~ 1e4 here). Forming G = A A^T squares the
    condition number, so the function-space residual is bounded by ~ eps * cond(A)^2, not by 1e-10."""
    model, x, _, eps = problem(1, 24, 24, False, "mse")
    _, _, caches = model.forward_with_features(x)
    cond = max(torch.linalg.cond(c.features).item() for pair in caches for c in pair)
    assert cond > 1e3, "this configuration is meant to be ill-conditioned"
    residual = jvp_residual(model, x, gn_direction(model, x, eps), eps)
    assert residual <= torch.finfo(F64).eps * cond**2


@pytest.mark.parametrize("cfg", CONFIGS, ids=IDS)
def test_each_block_step_is_the_moore_penrose_step_of_that_block(cfg):
    model, x, _, eps = problem(*cfg)
    assert max(block_moore_penrose_errors(model, x, eps)) <= 1e-10
    # ... and alone it moves the logits by the error.
    _, _, caches = model.forward_with_features(x)
    for direction in block_directions(model, caches, eps):
        assert jvp_residual(model, x, direction, eps) <= 1e-10


@pytest.mark.parametrize("cfg", CONFIGS[::2], ids=IDS[::2])
def test_matrix_free_and_explicit_routes_agree(cfg):
    model, x, _, eps = problem(*cfg)
    explicit = explicit_gn_direction(model, x, eps)
    free, cg = matrix_free_gn_direction(model, x, eps, rtol=1e-12)
    rel = ((flatten(free) - flatten(explicit)).norm() / flatten(explicit).norm()).item()
    assert rel <= 1e-8, f"parameter steps differ by {rel:.2e} after {cg.iterations} CG iterations"
    # In function space all three routes give the same move: the error.
    for d in (explicit, free, gn_direction(model, x, eps)):
        assert jvp_residual(model, x, d, eps) <= 1e-9


@pytest.mark.parametrize("cfg", CONFIGS, ids=IDS)
def test_parameter_step_differs_from_the_full_moore_penrose_step(cfg):
    """A right inverse, not J^+: same function-space move, larger parameter step (J^+ eps is the shortest)."""
    model, x, _, eps = problem(*cfg)
    ours = flatten(gn_direction(model, x, eps))
    mp = flatten(explicit_gn_direction(model, x, eps))
    assert ours.norm() > mp.norm() * (1 + 1e-6)
    assert ((ours - mp).norm() / mp.norm()).item() > 1e-3


@pytest.mark.parametrize("depth", [1, 2, 4])
@pytest.mark.parametrize("init_std", [1e-3, 0.2, 1.0])
def test_inverse_network_reconstructs_inputs(depth, init_std):
    model, x, _, _ = problem(depth, 32, 16, True, "mse", init_std=init_std)
    u = model.embed(x)
    out = model.body(u)
    # Rounding errors scale with the activations' size, which grows with init_std and depth.
    scale = max(1.0, out.abs().max().item())
    assert (model.inverse_body(out) - u).abs().max().item() <= 1e-12 * scale


def test_narrow_bottleneck_raises_a_clear_error():
    model, x, _, eps = problem(2, 12, 16, False, "mse")
    with pytest.raises(RankDeficientError, match=r"h=12 < n=16.*independent columns"):
        gn_direction(model, x, eps)
    from revgn.gn_optimizers import GaussNewton
    with pytest.raises(ValueError, match="batch size n <= bottleneck width h"):
        GaussNewton().setup(model, 16)
    # A regularised pseudo-inverse is allowed: it is knowingly inexact.
    gn_direction(model, x, eps, Pinv.truncated())


def test_rank_deficient_features_raise_a_clear_error():
    # Two identical examples make the feature matrices' columns dependent.
    model, x, _, eps = problem(2, 32, 10, False, "mse")
    x = torch.cat([x, x[:1]])
    eps = torch.cat([eps, eps[:1] + 1.0])
    with pytest.raises(RankDeficientError, match=r"n=11, h=32\) are rank-deficient.*independent"):
        gn_direction(model, x, eps)


def test_identity_first_block_is_rank_deficient_when_n_exceeds_half_width():
    """The public code's linear first block: its features have rank <= d/2, so exactness fails for n > d/2."""
    model = RevMLP(8, 3, depth=2, hidden=64, first_activation="identity", dtype=F64, seed=1)
    x = torch.randn(10, 8, dtype=F64)  # n = 10 > d/2 = 4
    with pytest.raises(RankDeficientError, match="block 1/2, half-layer 1"):
        gn_direction(model, x, torch.randn(10, 3, dtype=F64))


def test_one_step_with_lr_one_fits_a_small_full_batch_square_loss():
    """First-order theory: after one step with lr 1 the residual is second order in the error, so for targets
    at distance s from the outputs the loss falls from O(s^2) to O(s^4)."""
    model, x, _, _ = problem(2, 64, 16, False, "mse", init_std=1e-3)
    before, after = one_step_losses(model, x, [1e-1, 1e-2, 1e-3])
    assert after[1] < 1e-4 * before[1], "one step fits the batch nearly exactly"
    slopes = -torch.diff(torch.log10(torch.tensor(after)))  # per decade of s
    assert torch.allclose(slopes, torch.tensor([4.0, 4.0], dtype=slopes.dtype), atol=0.15), slopes


def svd_pinv_apply(A, T, filt):
    """(A^+ T)^T through the SVD of A, with singular values filtered by filt(s): the reference for eq. (11)."""
    U, s, Vh = torch.linalg.svd(A, full_matrices=False)
    return (Vh.T @ (filt(s)[:, None] * (U.T @ T))).T


@pytest.mark.parametrize("kind", ["exact", "truncate", "damp", "ridge"])
def test_gram_route_matches_the_svd_route(kind):
    g = torch.Generator().manual_seed(3)
    A = torch.relu(torch.randn(20, 50, generator=g, dtype=F64))
    U, s, Vh = torch.linalg.svd(A, full_matrices=False)
    s = s * torch.logspace(0, -3, 20, dtype=F64)  # singular values over three decades
    A = U @ torch.diag(s) @ Vh
    T = torch.randn(20, 7, generator=g, dtype=F64)
    smax = s.max()
    pinv, filt = {
        "exact": (Pinv.exact(), lambda s: 1 / s),
        "truncate": (Pinv.truncated(rtol=1e-2, atol=0.0), lambda s: torch.where(s >= 1e-2 * smax, 1 / s, 0 * s)),
        "damp": (Pinv.damped(0.01), lambda s: 1 / (s + 0.01 * smax)),
        "ridge": (Pinv.ridged(0.3), lambda s: s / (s**2 + 0.3)),
    }[kind]
    ours, ref = features_pinv(A, T, pinv), svd_pinv_apply(A, T, filt)
    # The Gram route squares the condition number: its error is bounded by ~ eps * cond(A)^2 (here ~1e-10).
    cond = (s.max() / s.min()).item()
    assert ((ours - ref).norm() / ref.norm()).item() <= torch.finfo(F64).eps * cond**2


def test_noise_pinv_is_seeded_and_inexact():
    model, x, _, eps = problem(2, 32, 16, False, "mse")
    a = gn_direction(model, x, eps, Pinv.noisy(0.1), torch.Generator().manual_seed(0))
    b = gn_direction(model, x, eps, Pinv.noisy(0.1), torch.Generator().manual_seed(0))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert jvp_residual(model, x, a, eps) > 1e-3


def test_exact_hessian_cross_entropy_error_is_the_newton_step_in_logit_space():
    g = torch.Generator().manual_seed(0)
    z = torch.randn(6, 5, generator=g, dtype=F64)
    y = torch.randint(0, 5, (6,), generator=g)
    delta = CrossEntropy("exact").error(z, y)
    p = torch.softmax(z, 1)
    H = torch.diag_embed(p) - p[:, :, None] * p[:, None, :]
    # H delta = softmax(z) - y (the gradient), and delta is the shortest such change: orthogonal to 1.
    assert torch.allclose((H @ delta[:, :, None]).squeeze(2), CrossEntropy().error(z, y), atol=1e-12)
    assert delta.sum(1).abs().max().item() <= 1e-12
    # Reached through a GN step, the logits move by exactly that Newton step.
    model, x, _, _ = problem(2, 32, 6, False, "ce", in_features=9, classes=5)
    eps = CrossEntropy("exact").error(model(x), y)
    assert jvp_residual(model, x, gn_direction(model, x, eps), eps) <= 1e-10


def test_bad_inputs_are_refused():
    model, x, _, eps = problem(2, 32, 16, False, "mse")
    with pytest.raises(ValueError, match=r"inputs of shape \(n, 13\)"):
        model(torch.randn(4, 12, dtype=F64))
    with pytest.raises(ValueError, match="error must be n x 4"):
        gn_direction(model, x, eps[:, :3])
    with pytest.raises(FloatingPointError, match="NaN"):
        gn_direction(model, x, eps * float("nan"))
    with pytest.raises(ValueError, match="width d=7 must be even"):
        RevMLP(7, 3, width=7)
    with pytest.raises(ValueError, match="Pinv.rtol must be >= 0"):
        Pinv("truncate", rtol=-1)


def test_odd_and_projected_inputs_are_handled_explicitly():
    odd = RevMLP(7, 3, hidden=8)
    assert odd.width == 8 and odd.embedding is None
    x = torch.randn(5, 7)
    assert torch.equal(odd.embed(x)[:, :7], x) and torch.equal(odd.embed(x)[:, 7], torch.zeros(5))
    proj = RevMLP(20, 3, hidden=8, width=10, dtype=F64)
    Q = proj.embedding
    assert Q.shape == (20, 10) and torch.allclose(Q.T @ Q, torch.eye(10, dtype=F64), atol=1e-12)
    R = proj.readout
    assert torch.allclose(R.T @ R, torch.eye(3, dtype=F64), atol=1e-12)


def test_model_without_bottleneck_is_exact_for_n_up_to_half_width():
    model = RevMLP(40, 3, depth=2, bottleneck=False, init_std=0.2, dtype=F64, seed=0)
    assert model.hidden == 20 and torch.equal(model.blocks[0].V1, torch.eye(20, dtype=F64))
    g = torch.Generator().manual_seed(0)
    x = torch.randn(8, 40, generator=g, dtype=F64)
    eps = torch.randn(8, 3, generator=g, dtype=F64)
    assert jvp_residual(model, x, gn_direction(model, x, eps), eps) <= 1e-10
    with pytest.raises(RankDeficientError, match="h=20 < n=24"):
        gn_direction(model, torch.randn(24, 40, generator=g, dtype=F64), torch.randn(24, 3, generator=g, dtype=F64))


def test_relative_ridge_scales_with_the_gram_spectrum():
    g = torch.Generator().manual_seed(0)
    A = torch.relu(torch.randn(6, 30, generator=g, dtype=F64))
    T = torch.randn(6, 2, generator=g, dtype=F64)
    mean_eig = torch.linalg.eigvalsh(A @ A.T).mean().item()
    assert torch.allclose(features_pinv(A, T, Pinv.ridged(0.5, relative=True)),
                          features_pinv(A, T, Pinv.ridged(0.5 * mean_eig)), atol=1e-12)
    assert torch.allclose(features_pinv(3 * A, T, Pinv.ridged(0.5, relative=True)),
                          features_pinv(A, T, Pinv.ridged(0.5, relative=True)) / 3, atol=1e-12)


def _conditioned_features(n=64, m=2000, smallest=1e-4, seed=0):
    """float32 n x m features with singular values from 1 down to `smallest`, and n x 5 targets."""
    g = torch.Generator().manual_seed(seed)
    U, _ = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=F64))
    V, _ = torch.linalg.qr(torch.randn(m, n, generator=g, dtype=F64))
    A = ((U * torch.logspace(0, math.log10(smallest), n, dtype=F64)) @ V.T).float()
    return A, torch.randn(n, 5, generator=g, dtype=F64).float()


def test_the_rounding_rule_accepts_features_their_own_precision_resolves_and_solves_them_exactly():
    """s_min/s_max = 1e-4 at h = 2000: below matrix_rank's max(n, h) eps = 2.4e-4 (refused, the default, so old
    records stand), yet ~30 times above 10 eps ||A||_F: the stored float32 features are full rank by Weyl's
    bound. The "rounding" rule takes the step, and it is the pseudo-inverse of the stored features to float32
    rounding, with A Delta^T = T to 1e-5 (a float32 product formed after a float64 solve misses by 7e-2)."""
    A, T = _conditioned_features()
    with pytest.raises(RankDeficientError, match="below the tolerance 0.000238"):
        features_pinv(A, T, Pinv())
    D = features_pinv(A, T, Pinv(rank_rule="rounding"))
    assert D.dtype == torch.float32
    A64, T64 = A.double(), T.double()
    ref = (torch.linalg.pinv(A64) @ T64).T
    assert ((D.double() - ref).norm() / ref.norm()).item() <= 1e-6
    assert ((A64 @ D.double().T - T64).norm() / T64.norm()).item() <= 1e-5


def test_the_rounding_rule_still_refuses_features_below_their_own_rounding_before_anything_moves():
    """s_min/s_max = 1e-7 is below 10 eps ||A||_F: refused, naming the bound; a duplicated example too; and a
    GN step on a model with such features leaves every weight as it was (the step is atomic)."""
    A, T = _conditioned_features(smallest=1e-7)
    with pytest.raises(RankDeficientError, match=r"not above 10 eps \|\|A\|\|_F"):
        features_pinv(A, T, Pinv(rank_rule="rounding"))
    with pytest.raises(RankDeficientError, match="rank-deficient"):
        features_pinv(torch.cat([A[:8], A[:1]]), torch.cat([T[:8], T[:1] + 1]), Pinv(rank_rule="rounding"))
    assert_a_duplicated_example_moves_nothing(Pinv(rank_rule="rounding"), F64)


def assert_a_duplicated_example_moves_nothing(pinv: Pinv, dtype: torch.dtype) -> None:
    """A GN step on a batch holding one example twice (rank-deficient features) is refused and leaves every
    weight of the model as it was: the step is atomic."""
    from revgn.gn_optimizers import GaussNewton

    model, x, y, _ = problem(2, 32, 10, False, "mse")
    model, x = model.to(dtype), torch.cat([x, x[:1]]).to(dtype)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(RankDeficientError):
        GaussNewton(0.5, pinv).step(model, x, torch.cat([y, y[:1]]), SquareLoss())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_the_rank_rule_is_a_spec_field_that_leaves_old_keys_alone():
    from revgn.runs import OptimSpec, RunSpec
    base = RunSpec(optimizer=OptimSpec("gn", 0.1), evaluate=("test",))
    assert base.replace(**{"optimizer.rank_rule": "matrix_rank"}).key == base.key
    rounding = base.replace(**{"optimizer.rank_rule": "rounding"})
    assert rounding.key != base.key and rounding.optimizer.build(0).pinv.rank_rule == "rounding"
    with pytest.raises(ValueError, match="rank_rule='rounding' is not read by 'adam'"):
        OptimSpec("adam", 1e-3, rank_rule="rounding")
    with pytest.raises(ValueError, match="rank_rule"):
        Pinv(rank_rule="loose")


@pytest.mark.parametrize("dtype, rtol", [(torch.float32, 1e-5), (F64, 1e-10)])
def test_the_refined_gram_route_solves_against_the_features_themselves(dtype, rtol):
    """Features with s_min/s_max = 1e-3 (as MNIST's at h = 8000, n = 1024): the Gram formed in the features'
    own dtype is refined until A Delta^T = T to REFINED_RTOL, it is the pseudo-inverse of the stored features,
    and it was not handed to the float64 route (refined_features_pinv answered)."""
    from revgn.pinv import refined_features_pinv

    A, T = _conditioned_features(smallest=1e-3)
    A, T = A.to(dtype), T.to(dtype)
    for rule in ("matrix_rank", "rounding"):
        D = refined_features_pinv(A, T, Pinv(rank_rule=rule, gram="refined"))
        assert D is not None and D.dtype == dtype
        A64, T64 = A.double(), T.double()
        assert ((A64 @ D.double().T - T64).norm() / T64.norm()).item() <= rtol
        ref = (torch.linalg.pinv(A64) @ T64).T
        assert ((D.double() - ref).norm() / ref.norm()).item() <= 100 * rtol
        assert torch.equal(features_pinv(A, T, Pinv(rank_rule=rule, gram="refined")), D)


def test_the_symmetric_gram_is_the_gram():
    from revgn.pinv import symmetric_gram

    A = torch.randn(37, 50, generator=torch.Generator().manual_seed(0), dtype=F64)
    for blocks in (1, 2, 4, 37):
        assert torch.allclose(symmetric_gram(A, blocks), A @ A.T, rtol=0, atol=1e-12)


def test_the_refined_route_hands_what_its_gram_cannot_settle_to_the_float64_route():
    """s_min/s_max = 1e-4 at h = 2000 in float32: the float32 Gram's rounding (~1e-7 of lambda_max) exceeds
    lambda_min (1e-8 of it), so refined_features_pinv cannot place the features against the rank rule and
    answers None; features_pinv then takes the float64 route: the same refusal under "matrix_rank", the same
    step, bit for bit, under "rounding" (a step float64 accepts is never refused by "refined")."""
    from revgn.pinv import refined_features_pinv

    A, T = _conditioned_features(smallest=1e-4)
    assert refined_features_pinv(A, T, Pinv(rank_rule="rounding", gram="refined")) is None
    assert torch.equal(features_pinv(A, T, Pinv(rank_rule="rounding", gram="refined")),
                       features_pinv(A, T, Pinv(rank_rule="rounding")))
    with pytest.raises(RankDeficientError, match="below the tolerance 0.000238"):
        features_pinv(A, T, Pinv(gram="refined"))


def test_the_refined_route_refuses_rank_deficient_features_before_anything_moves():
    A, T = _conditioned_features(smallest=1e-3)
    for rule in ("matrix_rank", "rounding"):
        with pytest.raises(RankDeficientError, match="rank-deficient"):
            features_pinv(torch.cat([A[:8], A[:1]]), torch.cat([T[:8], T[:1] + 1]), Pinv(rank_rule=rule, gram="refined"))
    for dtype in (torch.float32, F64):
        assert_a_duplicated_example_moves_nothing(Pinv(gram="refined"), dtype)


def test_the_gram_route_is_a_spec_field_that_leaves_old_keys_alone():
    from revgn.runs import OptimSpec, RunSpec
    base = RunSpec(optimizer=OptimSpec("gn", 0.1), evaluate=("test",))
    assert base.replace(**{"optimizer.gram": "float64"}).key == base.key
    refined = base.replace(**{"optimizer.gram": "refined"})
    assert refined.key != base.key and refined.optimizer.build(0).pinv.gram == "refined"
    assert refined.optimizer.build(0).describe()["gram"] == "refined"
    with pytest.raises(ValueError, match="gram='refined' is not read by 'sgd'"):
        OptimSpec("sgd", 0.1, gram="refined")
    with pytest.raises(ValueError, match="gram"):
        OptimSpec("gn", 0.1, gram="float16")
    with pytest.raises(ValueError, match="Pinv.gram"):
        Pinv(gram="float32")


@pytest.mark.parametrize("cfg", CONFIGS, ids=IDS)
def test_the_kernel_through_the_blocks_is_the_autograd_kernel(cfg):
    """BlockKernel's J J^T v + mu v and J^T u (function space, through the blocks) against jvp/vjp of x_L
    (`TangentKernel`): two routes, equal to 1e-12 in float64, parameters in the model's order."""
    from revgn.block_kernel import BlockKernel
    from revgn.curvature import TangentKernel

    model, x, _, _ = problem(*cfg)
    blocks, autograd = BlockKernel(model, x, damping=0.3), TangentKernel(model, x, damping=0.3, output="body")
    v = torch.randn(autograd.outputs.shape, generator=torch.Generator().manual_seed(1), dtype=F64)
    assert ((blocks(v) - autograd(v)).norm() / autograd(v).norm()).item() <= 1e-12
    JT, JT_autograd = blocks.JT(v), autograd.JT(v)
    assert list(JT) == list(JT_autograd)
    assert ((flatten(JT) - flatten(JT_autograd)).norm() / flatten(JT_autograd).norm()).item() <= 1e-12


@pytest.mark.parametrize("cfg", CONFIGS[1:6:2], ids=IDS[1:6:2])  # depths 1, 2, 3; with and without biases
def test_the_blocks_inverses_are_the_blocks_own_inverse_kernels_summed(cfg):
    """BlockKernel.inverse: symmetric, and equal to sum_b (J_b J_b^T)^{-1} from the explicit Jacobian (so,
    with one block, to (J J^T)^{-1} itself)."""
    from revgn.block_kernel import BlockKernel
    from revgn.functional import params_of

    model, x, _, _ = problem(*cfg)
    apply = BlockKernel(model, x).inverse
    n, d = len(x), model.width
    M = torch.stack([apply(e.reshape(n, d)).reshape(-1) for e in torch.eye(n * d, dtype=F64)], dim=1)
    assert (M - M.T).abs().max() <= 1e-9 * M.abs().max()
    params = params_of(model)
    J = jacobian_matrix(model, x, params, output="body")
    sizes = [p.numel() for p in params.values()]
    cols = dict(zip(params, torch.arange(sum(sizes)).split(sizes)))
    expected = sum(torch.linalg.inv(J[:, c] @ J[:, c].T) for c in (
        torch.cat([cols[k] for k in params if k.startswith(f"blocks.{l}.")]) for l in range(model.depth)))
    assert ((M - expected).norm() / expected.norm()).item() <= 1e-8


def test_the_blocks_inverses_refuse_rank_deficient_features_before_anything_moves():
    """More examples than features (n > h): no block inverse exists, so a pcg step is refused and the model
    is left as it was, with an error naming the first such half-layer."""
    from revgn.block_kernel import BlockKernel
    from revgn.gn_optimizers import MoorePenroseGaussNewton

    model, x, y, _ = problem(2, 8, 20, False, "ce")
    with pytest.raises(RankDeficientError, match=r"block 1/2, half-layer 1: the n x h features \(n=20, h=8\)"):
        BlockKernel(model, x).inverse(torch.zeros(len(x), model.width, dtype=F64))
    before = flatten({k: p.detach().clone() for k, p in model.named_parameters()})
    opt = MoorePenroseGaussNewton(1.0, output="body", solver="pcg", rtol=1e-10)
    opt.setup(model, len(x))
    with pytest.raises(RankDeficientError):
        opt.step(model, x, y, CrossEntropy())
    assert torch.equal(flatten(dict(model.named_parameters())).detach(), before)


@pytest.mark.parametrize("damping", [0.0, 0.05])
@pytest.mark.parametrize("depth", [1, 2, 3])
def test_preconditioned_cg_solves_the_same_system_in_fewer_iterations(depth, damping):
    """The x_L Moore-Penrose (damped: Levenberg-Marquardt) step by CG (jvp/vjp) and by CG through the blocks
    preconditioned with the blocks' inverses: the same step (to the solver tolerance), the true residual below
    it, and far fewer iterations (one, with one block and no damping)."""
    from revgn.curvature import block_pcg_direction

    model, x, _, eps = problem(depth, 40, 12, False, "ce")
    t = eps @ model.readout.T
    plain, cg = matrix_free_gn_direction(model, x, t, rtol=1e-10, output="body", damping=damping)
    pre, pcg = block_pcg_direction(model, x, t, rtol=1e-10, damping=damping)
    assert ((flatten(pre) - flatten(plain)).norm() / flatten(plain).norm()).item() <= 1e-8
    assert pcg.relative_residual <= 1e-9
    fewest = 1 if depth == 1 and not damping else cg.iterations // 2
    assert pcg.iterations <= fewest, (pcg.iterations, cg.iterations)


def test_the_pcg_solver_is_a_spec_field_for_x_L_steps_only():
    from revgn.gn_optimizers import MoorePenroseGaussNewton
    from revgn.runs import OptimSpec, RunSpec

    base = RunSpec(optimizer=OptimSpec("gn-mp", 1.0, output="body"), evaluate=("test",))
    pcg = base.replace(**{"optimizer.solver": "pcg"})
    assert pcg.key != base.key and pcg.optimizer.build(0).solver == "pcg"
    with pytest.raises(ValueError, match="solver='pcg'.*needs output 'body'"):
        OptimSpec("gn-mp", 1.0, solver="pcg")
    with pytest.raises(ValueError, match="solver='pcg'"):
        MoorePenroseGaussNewton(1.0, solver="pcg")
    model, x, y, _ = problem(2, 40, 12, False, "ce")
    opt = MoorePenroseGaussNewton(1.0, output="body", solver="pcg", rtol=1e-10)
    opt.setup(model, len(x))
    opt.step(model, x, y, CrossEntropy())
    assert opt.step_info["cg_residual"] <= 1e-9 and opt.step_info["cg_iterations"] >= 1
