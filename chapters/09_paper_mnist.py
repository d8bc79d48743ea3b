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
# # The paper's own MNIST experiment
#
# **Claim** {cite}`buffelli2024exact` (Sec. 5, mini-batch MNIST). Trained with mini-batches, exact GN makes
# fast early progress and then saturates, on the training loss too; Adam ends lower on training and test loss.
# Per step, GN removes a much larger share of its own mini-batch's loss, yet the epoch loss stalls: it
# "overfits each mini-batch". Along training, the NTK similarity and the CKA of the block representations to
# their values at initialisation stay near 1 for GN (and SGD) but drop for Adam: GN trains in the lazy regime.
#
# The chapters before this one test these claims at book scale and with tuned rates. This one runs the
# paper's own protocol at its own scale, before varying anything: full MNIST (55,000 training, 5,000
# validation and the 10,000 test images), a RevMLP of 2 blocks with the paper's inverted bottleneck $h=8000$
# and init, batches of $n=1024$, **100 epochs with no early stopping and no schedule**, cross-entropy, the
# paper's rates (GN 0.1, SGD 0.1, Adam $10^{-4}$), and five paired seeds where the paper used three: at a seed
# the three methods share the data, the initial weights and the batch order. Every epoch records the training
# loss and accuracy on 10,000 fixed training images, the validation and test loss and accuracy, and the
# paper's distances from initialisation (`revgn.experiments.paper_mnist`); every step records its batch's loss
# before and after the update.
#
# Each claim is scored at two endpoints, both as paired verdicts over the seeds (paired t-test, 95% interval,
# five seeds needed): the **end of training**, which is the paper's, and each run's **best validation epoch**
# (a checkpoint choice, not a stop). Under the default rank rule exact GN refuses the paper's features within
# its first epoch (their smallest singular value falls below $\max(n,h)\,\epsilon$ of the largest), though
# they are full rank by some 300 times their own rounding; the GN runs therefore use the rank rule
# "rounding", the same exact step refused only below the features' own precision ({doc}`03_exact_gauss_newton`).
# Only then does the chapter vary one thing: the last section keeps the protocol and tunes GN's and Adam's
# rates on the validation split, as the book's rule asks of every comparison.

# %% tags=["parameters"]
# "book": reads the recorded runs; "paper": also trains what is missing (GPU: minutes)
scale = "book"
device = "auto"
seed = 0

# %%
from itertools import cycle

import matplotlib.pyplot as plt
from matplotlib.ticker import NullFormatter
import numpy as np

import revgn
from revgn.book import markdown, table
from revgn.plots import empty, seed_band
from revgn.experiments import gn_protocol as gp
from revgn.experiments import paper_mnist as pm
from revgn import recompute
from revgn.runs import Runs, provenance
from revgn.stats import MIN_SEEDS, TEST
from revgn.sweep import collect

run = revgn.book.setup(scale, device, seed)
GRID = pm.paper_rates()
if (
    run.scale == "paper"
):  # train what is missing, recording it under results/paper_mnist/
    Runs(pm.store_of(), run.device, progress=True).all(GRID.specs, desc="paper rates")
recs = pm.recorded()
runs = pm.paired_runs(recs)
paired_seeds = [r.spec.seed for r in runs["gn"]]
COLORS = {"gn": "C0", "sgd": "C2", "adam": "C1"}

# %% tags=["nbval-check-output"]
for m in pm.METHODS:
    done = [pm.SEEDS[i] for i, r in enumerate(recs[m]) if r is not None]
    print(
        f"{m:4s} at rate {pm.PAPER_RATES[m]:g}: {len(done)} of {len(pm.SEEDS)} seeds"
        f" recorded {done}"
    )
print(f"paired seeds (every method recorded): {paired_seeds or 'none yet'}")
refused = collect([pm.refused_by_matrix_rank()], pm.store_of())[0]
why = "not recorded" if refused is None else (refused.failure or "trained")
print("GN under the default rank rule, seed 0:", why.split(". Exact GN")[0])

# %% [markdown]
# ## Training curves
#
# {numref}`fig-paper-curves` shows training and test loss and accuracy along the hundred epochs.


# %% mystnb={"figure": {"caption": "The paper's mini-batch MNIST experiment at its own scale ($h=8000$, $n=1024$, 100 epochs, the paper's rates): training loss and accuracy (on 10,000 fixed training images) and test loss and accuracy per epoch; lines are means over the recorded seeds, bands their range. The paper's claim: GN leads early, then saturates, and Adam ends lower on both losses.", "name": "fig-paper-curves"}}
fig, axes = plt.subplots(2, 2, figsize=(6.8, 5.4), sharex=True)
panels = (
    ("train_loss", "training loss"),
    ("test_loss", "test loss"),
    ("train_acc", "training accuracy"),
    ("test_acc", "test accuracy"),
)
for ax, (key, name) in zip(axes.flat, panels):
    for m in pm.METHODS:
        if done := [r for r in recs[m] if r is not None and r.ok]:
            n = len(done)
            seed_band(
                ax, done, key, color=COLORS[m], label=f"{m} ({n} seed{'s' * (n != 1)})"
            )
    if not ax.lines:
        empty(ax)
    ax.set(ylabel=name, yscale="log" if "loss" in key else "linear")
for ax in axes[1]:
    ax.set_xlabel("epoch")
if axes[0, 0].lines:
    axes[0, 0].legend()
plt.show()

# %% [markdown]
# ## Each step against its own batch
#
# The paper's third claim is about what a step does to the mini-batch it was computed on: the percentage of
# that batch's loss the step removed, next to how the epoch loss moves. {numref}`fig-paper-batch` shows the
# per-step percentage, averaged over each epoch.

# %% mystnb={"figure": {"caption": "Percentage of its own mini-batch's loss that each step removed, averaged over each epoch; means over the recorded seeds, bands their range. The paper's claim: GN's is much larger than SGD's and Adam's, while its epoch loss stalls.", "name": "fig-paper-batch"}}
fig, ax = plt.subplots(figsize=(6.0, 3.4))
for m in pm.METHODS:
    if done := [r for r in recs[m] if r is not None and r.ok]:
        seed_band(ax, done, gp.drop_by_epoch, color=COLORS[m], label=m)
if ax.lines:
    ax.legend()
else:
    empty(ax)
ax.set(xlabel="epoch", ylabel="batch loss removed by its own step (%)")
plt.show()

# %% [markdown]
# ## Distance from initialisation, with the paper's metrics
#
# The paper's NTK similarity (on one training batch, the cosine between $K_0v$ and $K_tv$ for $v$ the mean of
# 100 Gaussian probes in the space of $x_L$; in effect one random direction) and the linear CKA of each
# block's output with its output at initialisation, on 1,000 test images; both are 1 at initialisation and
# higher means closer to it. {numref}`fig-paper-lazy` follows them along training.

# %% mystnb={"figure": {"caption": "The paper's laziness metrics along training: NTK similarity to init (one training batch, 100 averaged probes) and the linear CKA of block 1's and block 2's outputs with their outputs at init; means over the recorded seeds, bands their range. The paper's claim: near 1 for GN and SGD, dropping for Adam.", "name": "fig-paper-lazy"}}
fig, axes = plt.subplots(1, 3, figsize=(6.8, 2.9), sharey=True)
for ax, (key, name) in zip(axes, pm.LAZY_MEASURES.items()):
    for m in pm.METHODS:
        if done := [r for r in recs[m] if r is not None and r.ok]:
            seed_band(ax, done, key, color=COLORS[m], label=m)
    if not ax.lines:
        empty(ax, "none recorded")
    ax.set(xlabel="epoch", title=name)
axes[0].set_ylabel("similarity to init")
if axes[0].lines:
    axes[0].legend()
plt.show()

# %% [markdown]
# ## The paper's claims, measured
#
# Each row is one of the paper's claims, what is compared (paired over the seeds at which all three methods
# finished), and the verdict of the book's rule at the end of training and at each run's best validation epoch.
# Differences of losses are in the loss's units, of accuracies and percentages in points.


# %% tags=["hide-input"]
def claims_table(runs: dict) -> str:
    """The paper's claims against `runs` (paired), at both endpoints: a table."""
    at_end, at_best = pm.findings(runs, "end"), pm.findings(runs, "best_val")
    scaled = lambda f: f.text(1, "") if "loss," in f.measured else f.text()
    rows = [
        [e.claim, e.measured, scaled(e), e.verdict, scaled(b), b.verdict]
        for e, b in zip(at_end, at_best)
    ]
    header = ["the paper says", "measured", "end of training", "verdict"]
    header += ["best validation epoch", "verdict"]
    return (
        table(header, rows)
        + f"\n\nTest: {TEST}; a verdict needs {MIN_SEEDS} paired seeds. The saturation"
        " and per-step rows describe whole runs, so both endpoints give them the"
        " same value."
    )


def reproduced(runs: dict, what: str) -> str:
    """Which claims held, failed or are undecided at the end of training."""
    at_end = pm.findings(runs, "end")
    held = {f.claim for f in at_end if f.verdict.startswith("yes")}
    failed = {f.claim for f in at_end if f.verdict.startswith("no:")}
    open_ = [c for c in pm.PAPER_SAYS.values() if c not in held | failed]
    listed = lambda claims: "; ".join(claims)
    return (
        f"**What reproduced at the end of training** {what}"
        f" ({len(runs['gn'])} of {len(pm.SEEDS)} paired seeds recorded): "
        + (
            listed(c for c in pm.PAPER_SAYS.values() if c in held - failed)
            or "nothing yet"
        )
        + ". **What did not**: "
        + (listed(sorted(failed)) or "nothing yet")
        + ". **Not decided**: "
        + (listed(open_) or "nothing")
        + "."
    )


markdown(claims_table(runs))

# %% tags=["hide-input"]
markdown(reproduced(runs, "at the paper's rates"))

# %% [markdown]
# A claim whose rows disagree (GN against SGD and against Adam, or two laziness measures) is listed where its
# rows put it, possibly twice. The runs take 6 to 17 hours each on this project's 2-core CPU (one thread per
# run), minutes on a GPU: `python -m revgn.sweep revgn.experiments.paper_mnist:paper_rates` records them and
# resumes a stopped run from its last epoch. What is recorded:

# %%
asked = [r for r in collect(GRID.specs, pm.store_of()) if r is not None]
print(provenance(asked, "results/paper_mnist/paper_rates", code=False))
print(recompute.summary(asked))

# %% [markdown]
# ## Tuned rates, to the end of training
#
# The paper's rates are its own choice; the book's rule tunes every compared method on the validation split.
# The tuned tier keeps the protocol above (full MNIST, $n=1024$, 100 epochs with no early stopping, every
# measurement) at a quarter of the paper's width, $h=2048$, so that it fits a CPU, and compares GN with Adam.
# Each method's rate is chosen on seed 0 from a bracketed grid (a rate beyond the best edge is added until the
# best is inside it, or at GN's cap) by the peak of the run's whole validation-accuracy curve, never a
# stopping epoch; seeds 1 to 4 then train at the chosen rate, paired by seed as above. Where GN chooses its
# cap, one more seed-0 run past it shows whether the cap binds (`revgn.experiments.paper_mnist`, `tuned`).
# {numref}`fig-tuned` shows the curves each choice was made on and the runs at the chosen rates.

# %% tags=["nbval-check-output"]
tuned = pm.tuned_recorded()
for m, sel in tuned.chosen.items():
    done = [s for s, r in zip(pm.SEEDS, tuned.records[m]) if r is not None]
    peaks = [
        f"{lr:g}: {gp.score(r, 'peak_val_acc'):.3g}" for lr, r in tuned.grid[m].items()
    ]
    choice = (
        sel.describe()
        if sel
        else f"not chosen yet ({', '.join(peaks) or 'none recorded'}{tuned.next_at(m)})"
    )
    print(f"{m:4s} seed 0, peak validation accuracy by rate: {choice}")
    print(
        f"     at the chosen rate: {len(done)} of {len(pm.SEEDS)} seeds recorded {done}"
    )
if tuned.beyond_cap is not None:
    best = gp.score(tuned.beyond_cap, "peak_val_acc")
    print(f"gn past its cap, at {pm.BEYOND_CAP:g}: peak validation accuracy {best:.3g}")

# %% mystnb={"figure": {"caption": "The tuned tier ($h=2048$, $n=1024$, 100 epochs, each method's rate chosen on seed 0 by its peak validation accuracy). Left: seed 0's validation accuracy at every rate tried (one line style per rate), the chosen rate drawn thick. Middle and right: training loss (10,000 fixed training images) and test accuracy at the chosen rates, means over the recorded seeds, bands their range. Both accuracy axes start at 0.97, where the rates differ; lower values (the first epochs, a rate's dips) are cut.", "name": "fig-tuned"}}
fig, axes = plt.subplots(1, 3, figsize=(6.5, 3.3), layout="constrained")
for m, grid in tuned.grid.items():
    chosen = tuned.chosen[m].lr if tuned.chosen[m] else None
    # a line style per rate tried (past six rates, they repeat in order)
    styles = cycle(("-", "--", ":", "-.", (0, (3, 1, 1, 1, 1, 1)), (0, (1, 3))))
    for style, (lr, rec) in zip(styles, grid.items()):
        if rec.ok:
            wide = 2.2 if lr == chosen else 1.0
            epochs = rec.history.epochs
            axes[0].plot(
                epochs["epoch"],
                epochs["val_acc"],
                ls=style,
                color=COLORS[m],
                lw=wide,
                label=f"{m} {lr:g}",
            )
    done = [r for r in tuned.records[m] if r is not None and r.ok]
    for ax, key in zip(axes[1:], ("train_loss", "test_acc")):
        if done:
            seed_band(
                ax,
                done,
                key,
                color=COLORS[m],
                label=f"{m} {chosen:g} ({len(done)} seed{'s' * (len(done) != 1)})",
            )
for ax, name in zip(axes, ("validation accuracy", "training loss", "test accuracy")):
    if not ax.lines:
        empty(ax)
    ax.set(xlabel="epoch", title=name)
for ax in axes[::2]:  # both accuracies on one scale, zoomed to where the rates differ
    ax.set_ylim(0.97, 0.99)
axes[1].set_yscale("log")
axes[1].yaxis.set_minor_formatter(NullFormatter())  # labels at the decades only
if axes[1].lines:
    axes[1].legend(fontsize="x-small")
# the rates tried go below the panels: inside, their legend hid the low curves
if axes[0].lines:
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncol=4, fontsize="x-small")
plt.show()

# %% [markdown]
# The paper's claims that compare GN with Adam, on the tuned tier:

# %% tags=["hide-input"]
markdown(claims_table(tuned.runs))

# %% tags=["hide-input"]
markdown(reproduced(tuned.runs, "with tuned rates"))

# %% [markdown]
# `python -m revgn.sweep revgn.experiments.paper_mnist:tuned` records the tier (about two hours a run on one
# core of this project's CPU, seconds an epoch on a GPU). What is recorded:

# %%
asked = tuned.every()
print(provenance(asked, "results/paper_mnist/tuned", code=False))
if asked:
    print(recompute.summary(asked))
