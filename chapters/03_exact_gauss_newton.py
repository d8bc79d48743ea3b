# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Exact Gauss-Newton in reversible networks
#
# **Claim** {cite}`buffelli2024exact`. In a coupling-layer MLP with a fixed random inverted bottleneck, an
# exact Gauss-Newton (GN) update, one that moves the network's outputs on a batch by exactly the error to first
# order, can be computed block by block, at roughly the cost of a gradient step.
#
# This chapter derives the update, checks numerically that the library's implementation is exact, and
# measures what it costs. The experiments on what the update does to generalisation come in later chapters.
#
# ## Gauss-Newton in function space
#
# Take a batch of $n$ examples and stack the network's outputs into $\mathbf f(\theta)\in\mathbb R^{nC}$. The loss
# is a sum over the batch, $L(\theta)=\tilde L(\mathbf f(\theta))$, with Jacobian $J=\partial\mathbf f/\partial\theta\in\mathbb R^{nC\times p}$ and
# function-space error
#
# $$
# \varepsilon=\nabla_{\mathbf f}\tilde L \qquad(\text{square loss: } \varepsilon=\mathbf f-\mathbf y;\ \text{cross-entropy: } \varepsilon=\mathrm{softmax}(\mathbf z)-\mathbf y).
# $$ (eq-error)
#
# The GN step replaces the loss Hessian in function space by the identity and solves the linearised problem:
#
# $$
# \theta \leftarrow \theta-\alpha\,J^{+}\varepsilon = \theta-\alpha\,(J^\top J)^{+}\nabla_\theta L .
# $$ (eq-gn)
#
# With the true Hessian $H=\nabla^2_{\mathbf f}\tilde L$ it is the generalised GN step; when $J$ has full row rank,
# $(J^\top HJ)^{+}J^\top\varepsilon=J^{+}H^{-1}\varepsilon$: Newton's method in function space. For softmax cross-entropy each
# example's $H_i=\mathrm{diag}(p_i)-p_ip_i^\top$ is singular along the all-ones vector (logits are shift invariant), and
# the library uses its pseudo-inverse, the shortest logit change with $H_i\delta_i=\varepsilon_i$
# (`CrossEntropy(hessian="exact")`):
#
# $$
# \delta_i = H_i^{+}\varepsilon_i .
# $$ (eq-ggn)
#
# A GN step does not change if the loss is rescaled, so summing or averaging over the batch gives the same
# step; with $\alpha=1$ it moves the outputs by $-\varepsilon$ to first order.
#
# ## Any right inverse will do
#
# When $p\ge nC$ and $J$ has full row rank, $J$ has many right inverses $J^{\dashv}$ with $JJ^{\dashv}=I$; $J^{+}$ is the
# one giving the shortest parameter step. In continuous time, $\dot\theta=-J^{\dashv}\varepsilon$ gives
# $\dot{\mathbf f}=J\dot\theta=-\varepsilon$ for *every* right inverse: for the square loss the error decays as
# $\dot\varepsilon=-\varepsilon$ whichever is used (the paper's Theorem 4.3). Discrete steps differ only at second
# order in $\alpha$. So one may pick the right inverse that is cheapest to compute.
#
# ## The coupling block
#
# Let $X_\ell\in\mathbb R^{n\times d}$ be the activations after block $\ell$ (one row per example, so every product
# is the transpose of the paper's), split into halves $X^{(1)},X^{(2)}$ of width $d/2$. Block $\ell$ is
#
# $$
# \begin{aligned}
# X^{(1)}_\ell &= X^{(1)}_{\ell-1} + \sigma\big(X^{(2)}_{\ell-1}V_2^\top\big)W_1^\top,\\
# X^{(2)}_\ell &= X^{(2)}_{\ell-1} + \sigma\big(X^{(1)}_{\ell}V_1^\top\big)W_2^\top,
# \end{aligned}
# $$ (eq-block)
#
# with trained $W_1,W_2\in\mathbb R^{d/2\times h}$, fixed random $V_1,V_2\in\mathbb R^{h\times d/2}$ (the inverted
# bottleneck, entries $\mathcal N(0,1/h)$) and $\sigma$ = ReLU at *every* half-layer, the first included. It is
# inverted exactly by subtracting in reverse order:
#
# $$
# X^{(2)}_{\ell-1} = X^{(2)}_\ell - \sigma\big(X^{(1)}_\ell V_1^\top\big)W_2^\top,\qquad
# X^{(1)}_{\ell-1} = X^{(1)}_\ell - \sigma\big(X^{(2)}_{\ell-1}V_2^\top\big)W_1^\top .
# $$ (eq-inverse)
#
# The inputs (dimension $D$) enter by zero-padding to $d$, and the logits are $X_L R$ with a fixed random
# $R\in\mathbb R^{d\times C}$ with orthonormal columns, so a logit change $\varepsilon$ is met by the change
# $\varepsilon R^\top$ of $X_L$, the shortest one that does so:
#
# $$
# \mathbf z = X_L R,\qquad R^\top R=I .
# $$ (eq-readout)
#
# ## The layer-wise right inverse
#
# Carry the output error back to block $\ell$'s output through the *inverse* network, a forward-mode tangent
# of {eq}`eq-inverse` started at $T_L=\varepsilon R^\top$:
#
# $$
# T_{\ell-1} = \frac{\partial X_{\ell-1}}{\partial X_\ell}\,T_\ell .
# $$ (eq-tangent)
#
# $T_\ell$ is the change of $X_\ell$ that moves the output by $\varepsilon$. Block $\ell$ must produce it by changing its
# own weights. With features $A_1=\sigma(X^{(2)}_{\ell-1}V_2^\top)$ and $A_2=\sigma(X^{(1)}_\ell V_1^\top)$ (both $n\times h$),
# a change $\Delta W_1$ moves $X^{(1)}_\ell$ by $A_1\Delta W_1^\top$, so
#
# $$
# \Delta W_1^\top = A_1^{+}\,T^{(1)}_\ell .
# $$ (eq-dw1)
#
# That change of $X^{(1)}_\ell$ also moves $X^{(2)}_\ell$ through the second half-layer, by
# $M=\big((T^{(1)}_\ell V_1^\top)\odot\sigma'\big)W_2^\top$, which $\Delta W_2$ must compensate:
#
# $$
# \Delta W_2^\top = A_2^{+}\big(T^{(2)}_\ell - M\big) .
# $$ (eq-dw2)
#
# $M$ is precisely the term that {eq}`eq-tangent` subtracts when it inverts the second half-layer, so
# $T^{(2)}_\ell-M$ is the tangent's second half *after* block $\ell$ has been inverted: the cross term costs
# nothing extra. When $A_1,A_2$ have linearly independent rows (this needs $h\ge n$), block $\ell$'s step alone
# moves the output by exactly $\varepsilon$. Its solution set is a product of two affine sets, and the two
# pseudo-inverses pick the shortest point of each, so it is the Moore-Penrose step for block $\ell$'s
# Jacobian of $X_L$. Stacking the $L$ blocks and sharing the work gives a right inverse of the whole Jacobian:
#
# $$
# J^{\dashv}\varepsilon = \frac1L\big[\Delta_1;\dots;\Delta_L\big],\qquad JJ^{\dashv}\varepsilon=\varepsilon .
# $$ (eq-stack)
#
# ## Pseudo-inverses through the Gram matrix
#
# $A\in\mathbb R^{n\times h}$ is wide, so with full row rank $A^{+}=A^\top(AA^\top)^{-1}$:
#
# $$
# \Delta W^\top = A^\top G^{-1}T,\qquad G=AA^\top\in\mathbb R^{n\times n}.
# $$ (eq-gram)
#
# Forming $G$ costs $n^2h$, factorising it $n^3$; an SVD of $A$ would cost $nh\min(n,h)$ with a much larger
# constant. The library forms $G$ in float64, whatever the model's precision (real MNIST features have
# condition numbers up to $10^3$ at $n=1024$, so $G$'s reach $10^6$). It solves the exact kind by Cholesky and the
# regularised variants of the paper's Appendix K (truncation, damping, additive noise, plus a ridge) through
# an eigendecomposition. When $h<n$, or the features are numerically rank-deficient and no regularisation was
# asked for, it raises an error that says why exactness fails, rather than return a step that is not exact.
#
# ## Checking it numerically
#
# The checks use small float64 models, for which the Jacobian can be formed explicitly.

# %% tags=["parameters"]
# "book": minutes on a 2-core CPU; "paper": the benchmark's shapes, for a GPU
scale = "book"
device = "auto"
seed = 0

# %%
import matplotlib.pyplot as plt
import numpy as np
import torch

import revgn
from revgn import verify
from revgn.bench import Shape, compare
from revgn.gn import gn_direction
from revgn.pinv import Pinv
from revgn.solvers import RankDeficientError
from revgn.losses import CrossEntropy, SquareLoss
from revgn.models import RevMLP
from revgn.book import markdown
from revgn.utils import REPO_ROOT, read_json

run = revgn.book.setup(scale, device, seed)
F64 = torch.float64


def small_problem(
    depth, hidden, n, bias=False, loss=SquareLoss(), init_std=0.2, seed=0
):
    """A float64 RevMLP (13 inputs, 4 classes), a batch and its GN error, as in the
    tests."""
    g = torch.Generator().manual_seed(seed)
    model = RevMLP(
        13,
        4,
        depth=depth,
        hidden=hidden,
        bias=bias,
        init_std=init_std,
        seed=seed,
        dtype=F64,
    )
    x = torch.randn(n, 13, generator=g, dtype=F64)
    y = torch.randint(0, 4, (n,), generator=g)
    return model, x, y, loss.error(model(x), y)


# %% [markdown]
# **The step is exact.** For each configuration, the function-space residual $\|J\Delta-\varepsilon\|/\|\varepsilon\|$ of
# the tractable step {eq}`eq-stack`, and the largest gap between a block's step and the Moore-Penrose step
# $\mathrm{pinv}(J_\ell)\,\varepsilon R^\top$ of that block's Jacobian:

# %% tags=["nbval-check-output"]
configs = [
    (1, 40, 16, True, SquareLoss()),
    (2, 32, 20, False, CrossEntropy()),
    (3, 48, 12, True, CrossEntropy("exact")),
    (4, 36, 18, False, SquareLoss()),
]
for depth, hidden, n, bias, loss in configs:
    model, x, y, eps = small_problem(depth, hidden, n, bias, loss)
    residual = verify.function_space_residual(
        model, x, gn_direction(model, x, eps), eps
    )
    block_gap = max(verify.block_moore_penrose_errors(model, x, eps))
    print(
        f"L={depth} h={hidden} n={n} bias={bias!s:5} {type(loss).__name__:12s} residual"
        f" <= 1e-12: {residual <= 1e-12}   block step = pinv(J_l) eps to 1e-10:"
        f" {block_gap <= 1e-10}"
    )

# %% [markdown]
# The residuals themselves (not checked by nbval: the last digits depend on the machine's BLAS):

# %%
for depth, hidden, n, bias, loss in configs:
    model, x, y, eps = small_problem(depth, hidden, n, bias, loss)
    residual = verify.function_space_residual(
        model, x, gn_direction(model, x, eps), eps
    )
    print(f"L={depth}: residual {residual:.1e}")

# %% [markdown]
# **Three routes, one function-space step, different parameter steps.** The explicit Moore-Penrose step
# $J^{+}\varepsilon$ (jacrev and a pseudo-inverse) and the matrix-free step (conjugate gradients on $JJ^\top$ with
# jvp and vjp products, no Jacobian formed) agree with each other. The tractable step moves the outputs the
# same way, but it is a different, longer parameter step: a right inverse, not $J^{+}$.

# %% tags=["nbval-check-output"]
model, x, y, eps = small_problem(2, 32, 20, False, CrossEntropy())
routes = verify.compare_routes(model, x, eps)
print(
    "function-space residual <= 1e-9 for all three routes:",
    all(routes[k] <= 1e-9 for k in ("tractable", "explicit", "matrix_free")),
)
print(
    "matrix-free vs explicit parameter step agree to 1e-8:"
    f" {routes['matrix_free_vs_explicit'] <= 1e-8}"
)
print(f"||tractable step|| / ||J^+ eps|| = {routes['norm_ratio']:.2f}")
print(f"||tractable step - J^+ eps|| / ||J^+ eps|| = {routes['step_gap']:.2f}")

# %% [markdown]
# Two honest caveats follow from the derivation and the numbers.
#
# - The parameter step is not $J^{+}\varepsilon$: it is longer (ratio above), as any right inverse other than
#   $J^{+}$ must be. By Theorem 4.3 this changes nothing in continuous time, but a discrete step of size $\alpha$
#   differs at second order, and *which* right inverse is used may matter for where training ends up.
#   {doc}`08_right_inverse` measures both: how far the right inverses' functions drift apart as the rate shrinks,
#   on the batch and off it, and whether the Moore-Penrose steps generalise differently from this one.
# - Each block's step is the Moore-Penrose step for that block's Jacobian of $X_L$, the reversible network's
#   output. For the Jacobian of the logits it is not, because $\mathbf z=X_LR$ discards the $d-C$ directions
#   orthogonal to $R$'s columns, which the block step is still asked to leave alone.
#
# **The inverse network is exact.** Reconstruction error of the inputs' embedding through
# {eq}`eq-inverse`:

# %% tags=["nbval-check-output"]
for depth in (1, 2, 4):
    model, x, _, _ = small_problem(depth, 32, 16, True)
    u = model.embed(x)
    print(
        f"L={depth}: max |inverse(forward(u)) - u| <= 1e-12: "
        f"{(model.inverse_body(model.body(u)) - u).abs().max().item() <= 1e-12}"
    )

# %% [markdown]
# **One step fits the batch, to first order.** With learning rate 1 and the square loss, the step moves the
# outputs onto targets placed at distance $s$ from them, up to a second-order remainder. So the loss should
# fall from $O(s^2)$ to $O(s^4)$: a slope of 4 on a log-log plot. The figure measures it at the paper's init
# scale ($W$ entries with sd $10^{-3}$).
#
# {numref}`fig-gn-fit` shows the two slopes.

# %% tags=["nbval-check-output"]
model, x, _, _ = small_problem(2, 64, 16, init_std=1e-3)
scales = np.logspace(-3, 0, 7)
before, after = verify.one_step_losses(model, x, scales)
slope = np.polyfit(np.log10(scales[:4]), np.log10(after[:4]), 1)[0]
print(f"log-log slope of the loss after one step, s <= 0.1: {slope:.1f}")
print(
    f"loss after / before at s = 0.01: {after[2] / before[2]:.0e};  at s = 1:"
    f" {after[-1] / before[-1]:.2f}"
)

# %% mystnb={"figure": {"caption": "Square loss on the batch before and after one exact GN step with learning rate 1, against the distance $s$ of the targets from the outputs (log-log). After the step the loss falls like $s^4$ (dotted: slope 4), the second-order remainder.", "name": "fig-gn-fit"}}
fig, ax = plt.subplots(figsize=(5, 3.4))
ax.loglog(scales, before, "o-", label="before the step")
ax.loglog(scales, after, "s-", label="after one GN step (lr 1)")
ax.loglog(scales, after[0] * (scales / scales[0]) ** 4, "k:", lw=1, label="slope 4")
ax.set(
    xlabel="distance $s$ of the targets from the outputs",
    ylabel="square loss on the batch",
    title="A GN step fits the batch to first order",
)
ax.legend()
plt.show()

# %% [markdown]
# The slope comes out at 4, as first-order theory predicts. The right-hand end of the plot carries a
# warning for the experiments. When the targets are $O(1)$ away, which is the situation with one-hot labels at
# initialisation, one step removes only part of the loss: the ReLU features change under the step, and the
# remainder is no longer small.
#
# **Where exactness fails, the library says so.** A bottleneck narrower than the batch, and the public
# code's linear first block when $n>d/2$, both make the features rank-deficient:

# %% tags=["nbval-check-output"]
cases = {
    "h = 12 < n = 16": (RevMLP(13, 4, hidden=12, dtype=F64), 16),
    "identity first block, n = 10 > d/2 = 7": (
        RevMLP(13, 4, hidden=64, dtype=F64, first_activation="identity"),
        10,
    ),
}
for name, (model, n) in cases.items():
    x = torch.randn(n, 13, dtype=F64)
    try:
        gn_direction(model, x, torch.randn(n, 4, dtype=F64))
    except (
        RankDeficientError
    ) as err:  # where, and why; the numbers after the reason depend on the last digits
        where, _, why = str(err).partition(": ")
        print(f"{name}: refused at {where}: {why.split(': ')[0].split('. ')[0]}")

# %% [markdown]
# A last numerical point. Forming $G=AA^\top$ squares the condition number, so the function-space residual of
# the Gram route is of order $\epsilon_{\text{mach}}\,\mathrm{cond}(A)^2$. It is $10^{-14}$ for the configurations above,
# but reaches $10^{-9}$ for exactly square $h=n$ features (condition number $10^4$); the test suite checks that
# bound instead of pretending to $10^{-10}$ there.
#
# ## What it costs
#
# The benchmark (`benchmarks/gn_step.py`) times one step of each optimiser on the same model and batch, in
# interleaved rounds, and measures the peak memory of a GN step and an SGD step. Counted in matrix products
# of size $n\times h\times d/2$ per half-layer, an SGD step is about 5 (2 forward, 3 backward); a GN step is 2
# forward, 2 for the tangent {eq}`eq-tangent`, 1 for $\Delta W$ {eq}`eq-gram`, plus the float64 Gram matrix and its
# $n\times n$ factorisation. At book scale:

# %%
shapes = run.pick(
    book=[Shape(784, 1024, 2, 128), Shape(784, 2048, 2, 256)],
    paper=[
        Shape(784, 2048, 2, 256),
        Shape(784, 4096, 2, 512),
        Shape(3072, 2048, 2, 256),
    ],
)
rows = [compare(s, ["gn", "sgd", "adam"], repeats=5, device=run.device) for s in shapes]
for r in rows:
    print(
        f"{r['shape']:28s} GN {r['gn_s'] * 1e3:6.1f} ms   SGD {r['sgd_s'] * 1e3:6.1f}"
        f" ms   Adam {r['adam_s'] * 1e3:6.1f} ms   GN/SGD {r['gn/sgd']:.2f}x"
    )

# %% [markdown]
# How the GN step's cost grows with the batch size $n$, next to SGD's. The Gram matrix ($n^2h$) and its
# factorisation ($n^3$) make GN's cost grow faster than linearly in $n$, while SGD's stays linear:
#
# {numref}`fig-gn-cost` shows the timings.

# %% mystnb={"figure": {"caption": "Median time of one exact GN step and one SGD step on this machine against the batch size $n$ ($d=784$, $h=2048$, $L=2$), measured side by side.", "name": "fig-gn-cost"}}
ns = run.pick(book=[32, 64, 128, 256, 512], paper=[64, 128, 256, 512, 1024, 2048])
scaling = [
    compare(Shape(784, 2048, 2, n), ["gn", "sgd"], repeats=3, device=run.device)
    for n in ns
]
fig, ax = plt.subplots(figsize=(5, 3.4))
ax.loglog(ns, [r["gn_s"] * 1e3 for r in scaling], "o-", label="exact GN step")
ax.loglog(ns, [r["sgd_s"] * 1e3 for r in scaling], "s-", label="SGD step")
ax.set(
    xlabel="batch size $n$",
    ylabel="time per step (ms)",
    title="Cost of a step, d=784, h=2048, L=2",
)
ax.set_xticks(ns, [str(n) for n in ns])
ax.tick_params(which="minor", labelbottom=False)
ax.legend()
plt.show()

# %% [markdown]
# The full benchmark, with matrix-free GN, explicit-Jacobian GN and peak memory, is recorded with its date,
# machine and commit in `results/benchmarks/gn_step-cpu.json` (and summarised in `benchmarks/README.md`).
# What it measured, side by side in one run:

# %% tags=["hide-input"]
bench = read_json(
    REPO_ROOT / "results" / "benchmarks" / "gn_step-cpu.json", "benchmark record"
)
main, explicit = bench["main"], bench["explicit"]
span = lambda xs: f"{min(xs):.2f} to {max(xs):.2f}"
ratios = [m["gn/sgd"] for m in main]
tractable = max(ratios) < 3
markdown(
    "\n".join([
        f"On {bench['meta']['device']} with {bench['meta']['threads']} threads"
        f" ({bench['meta']['date'][:10]}, commit {bench['meta']['commit'][:10]}), for"
        " the shapes "
        + ", ".join(m["shape"] for m in main)
        + ":",
        (
            f"- an exact GN step costs {span(ratios)} SGD steps, and"
            f" {span([m['gn/sgd'] / m['gn/gn-f32gram'] for m in main])} with the Gram"
            " matrix in float32 (the float64 Gram is kept because real features need"
            " it for the step to be certifiably exact);"
        ),
        (
            f"- its peak memory is {span([m['gn/sgd_memory'] for m in main])} times"
            " that of an SGD step;"
        ),
        (
            f"- it is {explicit['speedup']:,.0f} times faster than forming and"
            " pseudo-inverting the explicit Jacobian, at the largest shape where that"
            f" Jacobian fits in {bench['args']['explicit_budget_gb']:g} GB"
            f" ({explicit['shape']})."
        ),
        "",
        (
            "Tractable, by the chapter's criterion (a GN step within three SGD steps"
            f" on every paper-like shape): {'yes' if tractable else 'no'}. The ratio"
            " grows with the batch size, as the $n^2h$ Gram matrix and its $n^3$"
            " factorisation predict (the figure above)."
        ),
    ])
)
