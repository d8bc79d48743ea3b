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
# # Which right inverse? Gauss-Newton, or the paper's step
#
# **Question.** The tractable step of {doc}`03_exact_gauss_newton` is *a* right inverse of the logits' Jacobian,
# not the Moore-Penrose step $J^{+}\varepsilon$ of {eq}`eq-gn`. The paper's Theorem 4.3 {cite}`buffelli2024exact`
# says that the choice does not matter in continuous time. Its conclusion, that exact GN generalises poorly, is
# measured with one particular right inverse. Is it a property of Gauss-Newton, or of that inverse? No public work
# has tested this. We compare three GN steps that all move a batch's logits by $-\alpha\varepsilon$ to first order.
#
# **Three right inverses.** Let $J$ be the Jacobian of the batch's logits $\mathbf z = X_LR$, and $J_X$ the Jacobian of
# the reversible network's output $X_L$, so that $J = (I_n\otimes R^\top)J_X$. Then
#
# $$
# \Delta_{\mathrm{MP}} = J^{+}\varepsilon = J^\top(JJ^\top)^{-1}\varepsilon ,\qquad
# \Delta_{X} = J_X^{+}\,(\varepsilon R^\top) ,\qquad
# \Delta_{\mathrm{lw}} = \tfrac1L\big[J_{X,1}^{+};\dots;J_{X,L}^{+}\big](\varepsilon R^\top) .
# $$ (eq-three-inverses)
#
# $\Delta_{\mathrm{MP}}$ is the shortest parameter step that moves the logits by $\varepsilon$. $\Delta_X$ is the shortest that
# moves all of $X_L$ by $\varepsilon R^\top$, the smallest change of $X_L$ with that effect on the logits; it is what
# each block of the layer-wise step $\Delta_{\mathrm{lw}}$ ({eq}`eq-stack`) is minimum-norm for, solved for all blocks at
# once. So $\|\Delta_{\mathrm{MP}}\|\le\|\Delta_X\|\le\|\Delta_{\mathrm{lw}}\|$, and comparing the three separates *which output*
# ($\mathbf z$ or $X_L$) from *which inverse* (joint or per block).
#
# **Solving them.** $J_XJ_X^\top$ has $n\,d$ rows ($64\times3072$ on CIFAR-10), too many to form: $\Delta_X$ is solved
# matrix-free, by conjugate gradients with Jacobian-vector products only, to a relative residual of $10^{-8}$ in
# float64. $JJ^\top$ has only $nC$ rows, and the coupling layers make it cheap to form: a trained half-layer adds
# $AW^\top$ to the stream, with $A$ its $n\times h$ features, and each example's logits depend on its own row only, so
# with $g_{ic}$ the derivative of logit $c$ of example $i$ in that half-layer's output,
#
# $$
# (JJ^\top)_{(i,c),(j,c')} = \sum_{\text{half-layers}} (AA^\top)_{ij}\; g_{ic}^\top g_{jc'} ,
# $$ (eq-ntk-factors)
#
# which takes $C$ backward passes (`RevMLP.ntk_factors`); $\Delta_{\mathrm{MP}}$ is then solved by Cholesky, exact to
# rounding, at a cost that does not grow as $JJ^\top$ grows ill-conditioned along training. Every step's true residual
# is recorded, and a step whose residual exceeds $10^{-7}$, or whose $JJ^\top$ is numerically singular, is refused
# (the run is then recorded as a failure of the method). The tests check both steps against an explicit
# `torch.linalg.pinv` to $10^{-8}$, the kernel of {eq}`eq-ntk-factors` against the Jacobian's to $10^{-12}$, and the chain
# of norms.
#
# **What Theorem 4.3 says, and what it does not.** With $\dot\theta = -J^{\dashv}\varepsilon$ for any right inverse,
#
# $$
# \dot{\mathbf z}_{\text{batch}} = J\dot\theta = -\varepsilon ,\qquad
# \dot{\mathbf z}_{\text{other}} = -J_{\text{other}}\,J^{\dashv}\varepsilon ,
# $$ (eq-gn-flow)
#
# so on the batch the logits follow one flow whichever inverse is used, and discrete steps of rate $\alpha$ differ
# from it, and from each other, by $O(\alpha)$. On any other input, the logits move by
# $J_{\text{other}}J^{\dashv}\varepsilon$, which depends on the inverse: the theorem is silent there, and generalisation
# lives there.

# %% tags=["parameters"]
# "book": reads the recorded runs (minutes on a 2-core CPU to record); "paper": trains
# what is missing
scale = "book"
device = "auto"
seed = 0

# %%
import json

import matplotlib.pyplot as plt
import numpy as np

import revgn
from revgn.book import markdown, table
from revgn.experiments import gn_protocol as gp
from revgn.experiments import right_inverse as ri
from revgn import recompute
from revgn.runs import RESULTS, Runs, provenance, splits_of
from revgn.stats import TEST, verdict
from revgn.sweep import collect

run = revgn.book.setup(scale, device, seed)
# Both scales read the recorded sweep (recorded by
# `python -m revgn.sweep revgn.experiments.right_inverse:mnist`); "paper" trains what is
# missing, through the same records.
walked = {}
for setting in ri.SETTINGS:
    store = ri.store_of(setting)
    runs = Runs(store, run.device, progress=True)
    walked[setting] = ri.walk(
        setting,
        runs.all if run.scale == "paper" else lambda specs: collect(specs, store),
    )
    needed, done = walked[setting]
    print(
        f"{setting}: {len(done)} of {len(ri.METHODS)} methods recorded at all"
        f" {len(ri.SEEDS)} seeds; runs not recorded yet of those asked for so far:"
        f" {sum(r is None for r in collect(needed, store))} (seed 0 chooses a method's"
        " rate before its other seeds are asked for)"
    )
flows = {name: (flow, ri.load_flow(flow)) for name, flow in ri.FLOWS.items()}
for name, (flow, recs) in flows.items():
    print(f"flow {name}: {len(recs)} of {len(flow.seeds)} seeds recorded")
COSTS = RESULTS / "benchmarks" / "right_inverse_step-cpu.json"
costs = json.loads(COSTS.read_text()) if COSTS.exists() else None
PCG = RESULTS / "benchmarks" / "right_inverse_pcg-cpu.json"
pcg = json.loads(PCG.read_text()) if PCG.exists() else None

# %% [markdown]
# ## Theorem 4.3, measured
#
# From the same initial network (two blocks, $h=256$, the paper's init sd $10^{-3}$, float64), each GN step trains
# one fixed batch of 64 images (MNIST, and the CIFAR-10 subset) for the same time $t=\alpha k = 1$, in $k = 1, 2, 4, 8, 16$ steps of rate
# $\alpha = 1, \frac12, \dots, \frac1{16}$ (`revgn.experiments.right_inverse.Flow`). We then compare the logits of each pair of
# methods, on the batch and on 500 held-out images, as a fraction of how far the layer-wise step moved them:
# $\|\mathbf z_A-\mathbf z_B\|_F/\|\mathbf z_{\mathrm{lw}}-\mathbf z_0\|_F$. The exponent $s$ of distance $\propto\alpha^{s}$ is fitted per seed
# (least squares in log-log) and given with a 95% t-interval over five seeds. Theorem 4.3 predicts $s=1$ on the
# batch.
#
# {numref}`fig-ri-flow` shows the distances against $\alpha$.

# %% tags=["nbval-check-output"]
slopes = {
    name: ri.flow_summary(flow, recs) for name, (flow, recs) in flows.items() if recs
}
NAMES = {"mnist": "MNIST", "cifar10-subset": "CIFAR-10 subset"}
for name, by_where in slopes.items():
    for where, by_pair in by_where.items():
        for pair, s in by_pair.items():
            print(
                f"{name:14s} {where:9s} {pair:52s} s = {s.interval.text(1, '')};"
                f" between the two smallest rates {s.tail.text(1, '')}; distance at"
                f" alpha = {flows[name][0].alphas[-1]:g}: {s.at_smallest:.2g}"
            )

# %% mystnb={"figure": {"caption": "Distance between the logits reached by each pair of right inverses after total time $\\alpha k=1$, as a fraction of the layer-wise step's move, against the rate $\\alpha$: on the batch (solid) and on held-out images (dashed), means over the seeds; dotted: slope 1. Theorem 4.3 predicts the on-batch distances to vanish like $\\alpha$.", "name": "fig-ri-flow"}}
if slopes:
    fig, axes = plt.subplots(
        1, len(slopes), figsize=(6.8, 4.2), squeeze=False, sharey=True
    )
    for ax, name in zip(axes[0], slopes):
        flow, recs = flows[name]
        alphas = np.array(flow.alphas)
        for k, pair in enumerate(" vs ".join(p) for p in ri.PAIRS):
            for where, style in (("batch", "o-"), ("held-out", "s--")):
                d = np.array([r["distance"][where][pair] for r in recs])
                ax.loglog(
                    alphas,
                    d.mean(0),
                    style,
                    color=f"C{k}",
                    label=f"{pair.replace('Moore-Penrose', 'MP')} ({where})",
                )
        d0 = np.mean(
            [r["distance"]["batch"][" vs ".join(ri.PAIRS[0])][0] for r in recs]
        )
        ax.loglog(
            alphas, d0 * alphas / alphas[0], "k:", lw=1, label=r"slope 1 ($O(\alpha)$)"
        )
        ax.set(
            xlabel=r"rate $\alpha$ (time $\alpha k = 1$ fixed)",
            title=f"{NAMES[name]} ({len(recs)} seeds)",
        )
    axes[0, 0].set_ylabel("distance of logits / layer-wise move")
    fig.legend(
        *axes[0, 0].get_legend_handles_labels(), ncol=2, loc="outside lower center"
    )
    fig.suptitle("Right inverses agree on the batch, not off it")
    plt.show()


# %% tags=["hide-input"]
def shrinks(by_pair) -> str:
    """The rule's word for a set of pairs: all shrink, none does, or undecided (mixed,
    or an interval on 1/2)."""
    words = {s.vanishes for s in by_pair.values()}
    return {True: "shrinks with the rate", False: "does not shrink with the rate"}.get(
        words.pop() if len(words) == 1 else None, "is undecided"
    )


def flow_verdict(name: str) -> str:
    """The flow comparison of one dataset in words, from its records (no verdict before
    all its seeds are in)."""
    flow, recs = flows[name]
    if len(recs) < len(flow.seeds):
        return (
            f"**{NAMES[name]}.** The flow comparison is recorded for {len(recs)} of"
            f" {len(flow.seeds)} seeds (`python -m revgn.experiments.right_inverse flow"
            f" {name}` records the rest): no verdict."
        )
    batch, held = slopes[name]["batch"], slopes[name]["held-out"]
    exps = lambda by_pair: "; ".join(
        f"{pair}, $s$ = {s.interval.text(1, '')}" for pair, s in by_pair.items()
    )
    return (
        f"**{NAMES[name]}. On the batch** every pair's distance {shrinks(batch)}:"
        f" {exps(batch)} (the rule: the whole interval of $s$ above 1/2 shrinks, below"
        " 1/2 does not). Between the two smallest rates alone the exponents are "
        + ", ".join(f"{s.tail.text(1, '')}" for s in batch.values())
        + " (same order)"
        + ", against the 1 that Theorem 4.3 predicts as $\\alpha\\to0$"
        + (
            ": closer to it than the fit over all rates, which includes rates too large"
            " for the limit"
            if all(s.tail.mean > s.interval.mean for s in batch.values())
            else ""
        )
        + f". At $\\alpha={flow.alphas[-1]:g}$ the three steps' batch logits are within"
        f" {max(s.at_smallest for s in batch.values()):.1%} of the layer-wise move of"
        f" one another. **Off the batch** the distance {shrinks(held)}: {exps(held)};"
        " at the smallest rate the right inverses still put the held-out logits"
        f" {min(s.at_smallest for s in held.values()):.0%} to"
        f" {max(s.at_smallest for s in held.values()):.0%} of the layer-wise move"
        " apart."
    )


recorded = [
    name for name, (flow, recs) in flows.items() if len(recs) == len(flow.seeds)
]
markdown(
    "\n\n".join(flow_verdict(name) for name in flows)
    + (
        "\n\nWhere the batch distance shrinks and the held-out one does not, the steps"
        " fit the batch alike and move the rest of the function differently, which is"
        " where a difference in generalisation could come from. This is one batch,"
        " trained for a short time from the paper's small init; whether a difference"
        " survives a whole training run is what the next section measures."
        if recorded
        else ""
    )
)

# %% [markdown]
# ## Training with each step
#
# The setting is small enough that a Moore-Penrose step costs seconds on this CPU: 2,000 MNIST training images
# (500 more held out for validation), all 10,000 test images, two blocks with $h=256$, batches of $n=64$, 6 epochs, cross-entropy,
# float64. Every method gets its learning rate from a bracketed grid on validation accuracy (GN steps capped at 2,
# where the first-order error changes sign), chosen on seed 0 and reused for seeds 1 to 4; all methods share the
# data, the initial weights and the batch order at each seed. Adam and SGD are the anchors.


# %% tags=["hide-input"]
def describe(setting: str):
    """Per method: the rate, the metrics at the end, and paired gaps to the layer-wise
    step and to Adam."""
    _, done = walked[setting]
    ok = lambda label: ri.complete(done, label)
    mean = lambda label, key: float(
        np.mean([r.metrics[key] for r in done[label].records])
    )
    cost = (costs or {}).get("settings", {}).get(setting, {})
    rows = []
    for label in ri.METHODS:
        measured = f"{cost[label]['median_s']:.2g} s" if label in cost else ""
        if not ok(label):
            scores, chosen, k = ri.progress(
                setting, label, lambda specs: collect(specs, ri.store_of(setting))
            )
            seed0 = ", ".join(
                f"{lr:.3g}: " + ("not recorded" if v is None else f"{v:.3g}")
                for lr, v in scores.items()
            )
            state = (
                "failed: " + str(done[label].selection.describe())
                if label in done
                else (
                    f"{seed0}; rate not chosen yet"
                    if chosen is None
                    else f"{chosen.describe()}; {k} of {len(ri.SEEDS)} seeds recorded"
                )
            )
            rows.append([label, state] + [""] * 7 + [measured])
            continue
        recs = done[label].records
        drop = np.mean([gp.batch_loss_drop(r).mean() for r in recs])
        direction = np.mean(
            [np.mean(r.history.steps["step_norm"]) / r.spec.optimizer.lr for r in recs]
        )
        iters = [
            np.mean(r.history.steps["cg_iterations"])
            for r in recs
            if "cg_iterations" in r.history.steps
        ]
        gap = lambda other: (
            ""
            if label == other or not ok(other)
            else gp.compare(recs, done[other].records).text()
        )
        rows.append([
            label,
            done[label].selection.describe(),
            f"{mean(label, 'test_acc'):.3f} / {mean(label, 'test_loss'):.3f}",
            gap(ri.GN_METHODS[0]),
            gap("Adam"),
            f"{mean(label, 'train_loss'):.3f}",
            f"{drop:.1f}%",
            f"{direction:.3g}",
            f"{mean(label, 'ntk_distance'):.3f}",
            measured + (f", {np.mean(iters):.0f} CG it." if iters else ""),
        ])
    return done, rows


HEADER = [
    "method",
    "rates (validation acc; chosen)",
    "test acc / loss",
    "- layer-wise GN",
    "- Adam",
    "train loss",
    "batch-loss drop per step",
    "direction norm",
    "NTK distance",
    "cost per step",
]
done, rows = describe("mnist")
load = (
    f" Step costs measured at load average {costs['meta']['load_average_1min']:.1f} on"
    f" {costs['meta']['threads']} thread(s)."
    if costs
    else ""
)
markdown(
    table(
        HEADER,
        rows,
        caption="MNIST, 5 paired seeds (means; gaps in test-accuracy points)",
    )
    + f"\n\nTest: {TEST}.{load}"
)

# %% [markdown]
# Columns: the test accuracy and loss at the end (means of five seeds); the paired gaps to the layer-wise step and to Adam
# (the test is named under the table); the final training loss on the training images; the mean drop of a batch's own loss over
# the step taken on it; the mean norm of the parameter direction $\|J^{\dashv}\varepsilon\|$ (the step divided by its
# rate; each method's mean along its own trajectory, so the ordering of norms that {doc}`03_exact_gauss_newton` proves at one
# common point need not hold between these columns); the kernel distance $1-\langle K_0,K\rangle_F/(\|K_0\|_F\|K\|_F)$ of the empirical NTK on 8 training
# images from init; and the cost of a step on this machine (`benchmarks/right_inverse_step.py`, one thread,
# median of interleaved rounds at init), with the mean CG iterations per step along training from the records.
#
# {numref}`fig-ri-curves` shows the training curves.

# %% tags=["hide-input"]
agree = ri.solver_agreement(done, lambda specs: collect(specs, ri.store_of("mnist")))
# the logits' step by the direct solve of eq-ntk-factors, checked against CG on whole
# runs
if agree:
    same = (
        "the same test accuracy in every pair"
        if agree["test_acc"] == 0
        else (
            f"test accuracies that differ by at most {100 * agree['test_acc']:.2g}"
            " points"
        )
    )
    markdown(
        "The logits' Moore-Penrose runs above solve the factorised $JJ^\\top$"
        f" directly. {agree['runs']} of them were also recorded with CG (to"
        f" $10^{{-8}}$): {same}, and final training losses that differ by at most"
        f" {agree['train_loss']:.1e} relative."
    )

# %% tags=["nbval-check-output"]
for row in rows:
    print(" | ".join(row[:6]))

# %% mystnb={"figure": {"caption": "MNIST, each method at its tuned rate: test accuracy (left) and training loss (right) per epoch, means over the seeds.", "name": "fig-ri-curves"}}
fig, axes = plt.subplots(1, 2, figsize=(6.8, 3.2))
for label in ri.METHODS:
    if ri.complete(done, label):
        e = done[label].records[0].history.epochs["epoch"]
        for ax, key in zip(axes, ("test_acc", "train_loss")):
            ax.plot(
                e,
                np.mean([r.history.epochs[key] for r in done[label].records], axis=0),
                "o-",
                ms=3,
                label=label,
            )
axes[0].set(xlabel="epoch", ylabel="test accuracy (mean of 5 seeds)", ylim=(0.8, None))
axes[1].set(xlabel="epoch", ylabel="training loss", yscale="log")
if axes[0].lines:
    axes[0].legend()
fig.suptitle("MNIST, each method at its tuned rate")
plt.show()

# %% [markdown]
# ## Verdict

# %% tags=["hide-input"]
LETTERS = {
    "a": (
        "(a) all right inverses generalise alike: at this scale, the paper's conclusion"
        " is about Gauss-Newton, not about its right inverse"
    ),
    "b": (
        "(b) the minimum-norm step generalises differently: the paper's conclusion"
        " depends on its right inverse"
    ),
    "c": "(c) inconclusive at this scale",
}


def verdict_text(setting: str, where: str) -> str:
    answer = ri.which_inverse(walked[setting][1])
    _, d = walked[setting]
    complete = lambda label: ri.complete(d, label)
    vs_adam = [
        f"{label} minus Adam, {gp.compare(d[label].records, d['Adam'].records).text()}"
        for label in ri.GN_METHODS
        if complete(label) and complete("Adam")
    ]
    if answer is None:
        missing = [label for label in ri.GN_METHODS if not complete(label)]
        lw = ri.GN_METHODS[0]
        vs_lw = [
            f"{label} minus {lw}, {gp.compare(d[label].records, d[lw].records).text()} "
            + "("
            + verdict(
                gp.compare(d[label].records, d[lw].records),
                "better",
                "worse",
                "no detectable difference",
            )
            + ")"
            for label in ri.GN_METHODS[1:]
            if complete(label) and complete(lw)
        ]
        return (
            f"**{where}.** Not recorded at every seed yet: {', '.join(missing)}; so no"
            f" verdict on the question (`{ri.sweep_command(setting)}` records the rest,"
            " resuming across sessions)."
            + (
                " Recorded so far, against the layer-wise step: "
                + "; ".join(vs_lw)
                + "."
                if vs_lw
                else ""
            )
            + (" Against Adam: " + "; ".join(vs_adam) + "." if vs_adam else "")
        )
    comps = "; ".join(
        f"{label} minus layer-wise GN, {c.text()}"
        for label, c in answer.comparisons.items()
    )
    text = (
        f"**{where}: {LETTERS[answer.letter]}.** Test accuracy, paired over seeds:"
        f" {comps}. (The rule, fixed before the runs: (a) when both 95% intervals lie"
        f" inside $\\pm${ri.EQUIVALENCE * 100:g} point, an equivalence margin; else (b)"
        " when one excludes zero; else (c).) For reference, against Adam: "
        + "; ".join(vs_adam)
        + "."
    )
    return text + " " + in_words(setting, answer)


def in_words(setting: str, answer) -> str:
    """How large and how firm the answer is, and what it does to GN against Adam and to
    laziness (from the records)."""
    _, d = walked[setting]
    m = ri.EQUIVALENCE
    n_test = len(splits_of(ri.SETTINGS[setting].data)["test"].y)
    sizes = [abs(c.mean) for c in answer.comparisons.values()]
    out = [
        f"The differences are {min(sizes) * 100:.1f} to {max(sizes) * 100:.1f} points"
        f" of test accuracy, a net {min(sizes) * n_test:.0f} to"
        f" {max(sizes) * n_test:.0f} of the {n_test:,} test images."
    ]
    # the farthest interval end from 0; a tenth of a point
    need, tenth = answer.margin_for_a, 0.001
    close = (
        "; a margin a tenth of a point narrower would change the letter"
        if answer.letter == "a" and need > m - tenth
        else (
            "; a margin a tenth of a point wider would make it (a)"
            if answer.letter != "a" and need < m + tenth
            else ""
        )
    )
    out.append(
        f"(a) would hold at any equivalence margin above $\\pm${need * 100:.2f} points"
        f" (the farthest end of the intervals), against the $\\pm${m * 100:g} fixed"
        f" before the runs{close}."
    )
    if ri.complete(d, "Adam"):
        words = {
            label: verdict(
                gp.compare(d[label].records, d["Adam"].records),
                "better than Adam",
                "worse than Adam",
                "not detectably different from Adam",
            )
            for label in ri.GN_METHODS
        }
        out.append(
            "By the book's rule against Adam: "
            + "; ".join(f"{label} is {w}" for label, w in words.items())
            + "."
        )
    kd = {
        label: float(np.mean([r.metrics["ntk_distance"] for r in d[label].records]))
        for label in ri.GN_METHODS
    }
    lazy, busy = min(kd, key=kd.get), max(kd, key=kd.get)
    c = gp.compare(d[lazy].records, d[busy].records)
    word = verdict(c, "better", "worse", "not detectably different")
    out.append(
        f"The kernel moves least under {lazy} and most under {busy} (NTK distance from"
        f" init {kd[lazy]:.3f} and {kd[busy]:.3f}); the laziest step's test accuracy is"
        f" {word} ({c.text()} against the least lazy)"
        + {
            "better": (
                ": among these steps, staying closer to the initial kernel did not cost"
                " accuracy."
            ),
            "worse": ", in line with laziness costing accuracy.",
            "not detectably different": (
                ": among these steps, laziness does not predict test accuracy."
            ),
        }.get(word, ".")
    )
    return " ".join(out)


markdown(verdict_text("mnist", "MNIST"))

# %% [markdown]
# ## CIFAR-10 subset
#
# The regime map finds GN clearly below Adam on the CIFAR-10 subset ({doc}`07_gn_regime_map`), which makes it the
# setting that matters most for this question. It is the same comparison at $d=3072$, where each Moore-Penrose
# product costs about $3072/784$ times as much as on MNIST, and the $X_L$ system has $64\times3072$ unknowns.

# %% tags=["hide-input"]
done_c, rows_c = describe("cifar10-subset")
recorded_c = sorted(ri.store_of("cifar10-subset").glob("*.json"))
if done_c:
    markdown(
        table(
            HEADER,
            rows_c,
            caption="CIFAR-10 subset, 5 paired seeds (means; gaps in points)",
        )
        + f"\n\nTest: {TEST}.\n\n"
        + verdict_text("cifar10-subset", "CIFAR-10 subset")
    )
else:
    markdown(
        f"**Not measured yet.** {len(recorded_c)} runs of this comparison are recorded,"
        f" and no method has its rate chosen and all {len(ri.SEEDS)} seeds run, so this"
        " page draws no conclusion about CIFAR-10 from it: the MNIST verdict above is"
        f" not evidence about this setting. `{ri.sweep_command('cifar10-subset')}`"
        " records it (it resumes across sessions)."
    )
cost_c = (costs or {}).get("settings", {}).get("cifar10-subset", {})
lw = ri.GN_METHODS[0]
if ri.complete(done_c, lw) and all(label in cost_c for label in ri.GN_METHODS):
    # every method takes the same steps
    steps = len(done_c[lw].records[0].history.steps["loss"])
    # cost grows with iterations
    cg = [label for label in ri.GN_METHODS[1:] if ri.METHODS[label].solver == "cg"]
    mp_logits = "Moore-Penrose GN (logits)"
    # timed next to the others, not swept (benchmarks/right_inverse_step.py)
    by_cg = f"{mp_logits}, by CG"
    markdown(
        f"What a run costs here: at init a step costs {cost_c[lw]['median_s']:.2g} s"
        " for the layer-wise GN and "
        + " and ".join(
            f"{cost_c[label]['median_s']:.2g} s for {label}"
            for label in ri.GN_METHODS[1:]
        )
        + f" on one core (the table's last column), and a run takes {steps} steps: at"
        " least "
        + " and ".join(
            f"{cost_c[label]['median_s'] * steps / 60:.0f} min for {label}"
            for label in ri.GN_METHODS[1:]
        )
        + " per run"
        + (
            f", more for {' and '.join(cg)}, where CG needs more iterations along"
            " training than at init."
            if cg
            else "."
        )
        + (
            " Solved by CG instead of directly, the logits' step would take"
            f" {cost_c[by_cg]['median_s']:.2g} s"
            f" ({cost_c[by_cg]['median_s'] / cost_c[mp_logits]['median_s']:.0f} times"
            " as long)."
            if by_cg in cost_c
            else ""
        )
    )
    cost_m, done_m = costs["settings"].get("mnist", {}), walked["mnist"][1]
    mp = [label for label in cg if label in cost_m and ri.complete(done_m, label)]
    if mp:
        along = {
            label: np.mean([
                np.mean(r.history.steps["cg_iterations"]) for r in done_m[label].records
            ])
            for label in mp
        }
        markdown(
            "On MNIST, CG took "
            + " and ".join(
                f"{along[label]:.0f} iterations per step along training for "
                f"{label} (at init {cost_m[label]['cg_iterations']:.0f})"
                for label in mp
            )
            + "."
        )

# %% [markdown]
# The $X_L$ system need not cost this much. Its kernel is a sum over blocks, $JJ^\top = \sum_b J_b J_b^\top$, and
# each block's own inverse $(J_b J_b^\top)^{-1}$ is what the layer-wise step already computes from its half-layers'
# Gram matrices. Summed, they precondition CG (the additive Schwarz preconditioner, exact for one block), and
# both the product and the preconditioner can be applied through the blocks without autograd
# (`revgn.block_kernel`, run-spec solver `"pcg"`). The records above were computed by plain CG; the benchmark
# below times both on one batch.

# %% tags=["hide-input"]
if pcg:
    x_L, by_pcg = "Moore-Penrose GN (x_L)", "Moore-Penrose GN (x_L), by PCG"
    timed = [c for setting in pcg["settings"].values() for c in setting.values()]
    its = [c[by_pcg]["cg_iterations"] for c in timed]
    plain = [c[x_L]["cg_iterations"] for c in timed]
    faster = [c[x_L]["median_s"] / c[by_pcg]["median_s"] for c in timed]
    markdown(
        f"Preconditioned, the same step to the same tolerance took {min(its):.0f} to"
        f" {max(its):.0f} iterations where plain CG took {min(plain):.0f} to"
        f" {max(plain):.0f}, and {min(faster):.0f} to {max(faster):.0f} times less time"
        " per step, on MNIST and the CIFAR-10 subset, at init and after"
        f" {pcg['args']['after_epochs']} epochs of training ({pcg['meta']['threads']}"
        f" thread{'' if pcg['meta']['threads'] == '1' else 's'}, measured side by side"
        f" on {pcg['meta']['date'][:10]}, commit {pcg['meta']['commit'][:7]};"
        " `benchmarks/right_inverse_step.py --pcg`)."
    )

# %% [markdown]
# ## What this does and does not show
#
# The comparison is at one small scale (2,000 images, $h=256$, $n=64$, 6 epochs), far from the paper's $h=8000$ and
# $n=1024$, and at one init scale; the rates were tuned on seed 0 only. The flow measurement is one batch over a
# short time. A sentence above that goes beyond these settings is an extrapolation. What the tables rest on (every
# recorded run of the rate grids and seeds, a method still training included; not the CG twins), the flows and the
# step costs:

# %% tags=["nbval-check-output"]
asked = [
    r
    for setting, (needed, _) in walked.items()
    for r in collect(needed, ri.store_of(setting))
    if r is not None
]
print(provenance(asked, "results/right_inverse", code=False))
for name, (flow, recs) in flows.items():
    if recs:
        print(
            f"flow {name}: {len(recs)} seeds, commit(s)"
            f" {sorted({r['provenance']['commit'][:12] for r in recs})}"
        )
if costs:
    print(
        f"step costs: {costs['meta']['date'][:10]}, {costs['meta']['device']}, commit"
        f" {costs['meta']['commit'][:12]}"
    )

# %%
print(recompute.summary(asked))
print(
    "The flows: "
    + recompute.summary(
        [r for flow in ri.FLOWS.values() for r in ri.flow_records(flow)]
    )
)
