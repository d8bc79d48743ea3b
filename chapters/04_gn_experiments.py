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
# # Exact Gauss-Newton on real data: fast on the batch, slow on the epoch?
#
# **Claims** {cite}`buffelli2024exact`, in the paper's words of its Figures 2 and 3:
#
# 1. *Full batch:* exact GN drives the training loss down much faster than SGD and Adam.
# 2. *Mini-batch:* GN makes fast early progress, then saturates, on the *training* loss too. Adam ends lower on
#    training and test loss.
# 3. *Per step:* GN reduces the loss of the mini-batch it has just seen far more than SGD or Adam do (it fits
#    each batch), yet the epoch loss stalls: it overfits each mini-batch.
#
# We test all three with the exact step of the previous chapter, on MNIST {cite}`lecun1998mnist` and on the
# real 4,000-image CIFAR-10 subset {cite}`krizhevsky2009cifar`. GN, SGD and Adam each get a learning rate
# chosen from a small grid that contains the paper's value. For the full-batch claim, which is about
# optimisation, the choice is the lowest final training loss. For the mini-batch claims it is the best
# accuracy on a validation split held out from the training data; the test set is never used to choose.
#
# | setting | book scale (this run) | paper scale |
# |---|---|---|
# | model | RevMLP, 2 blocks, $h=512$, ReLU everywhere, $W$ sd $10^{-3}$ | $h=8000$; 2 blocks on MNIST, 6 on the full CIFAR-10 |
# | full batch | 256 training images, 30 steps | 1024 images, 200 steps |
# | mini-batch | $n=128$; MNIST 4,000 train / 1,000 val, CIFAR 3,000 / 1,000; 6 epochs | $n=1024$, full sets, 100 epochs |
# | learning rates | chosen from a grid (below) | the paper's |
| seeds | 2 at the chosen rates | 3 |
#
# Book scale keeps $h\ge n$, which exactness requires. Cross-entropy throughout, with GN using the paper's
# identity-Hessian error $\varepsilon=\mathrm{softmax}(z)-y$.

# %% tags=["parameters"]
scale = "book"  # "book": minutes on a 2-core CPU; "paper": the paper's settings, for a GPU
device = "auto"
seed = 0

# %%
import matplotlib.pyplot as plt
import numpy as np

import revgn
from revgn import data
from revgn import gn_experiments as gx
from revgn.book import claim
from revgn.runs import RESULTS, recorded_histories

run = revgn.book.setup(scale, device, seed)
PAPER_LRS = {("full batch", "MNIST"): dict(gn=0.5, sgd=0.1, adam=1e-4),  # the paper's rates (Sec. 5)
             ("full batch", "CIFAR-10"): dict(gn=0.5, sgd=0.01, adam=1e-5),
             ("mini-batch", "MNIST"): dict(gn=0.1, sgd=0.1, adam=1e-4),
             ("mini-batch", "CIFAR-10"): dict(gn=0.1, sgd=0.01, adam=1e-4)}
BOOK_GRIDS = {"gn": [0.1, 0.5, 1.0], "sgd": [0.01, 0.03, 0.1], "adam": [1e-5, 1e-4, 1e-3]}
S = dict(
    arch={"MNIST": run.pick(gx.Arch(depth=2, hidden=512), gx.Arch(depth=2, hidden=8000)),
          "CIFAR-10": run.pick(gx.Arch(depth=2, hidden=512), gx.Arch(depth=6, hidden=8000))},
    fb_n=run.pick(256, 1024), fb_steps=run.pick(30, 200),
    mb_n=run.pick(128, 1024), mb_epochs=run.pick(6, 100),
    mnist_train=run.pick(5000, None), n_val=run.pick(1000, 5000),
    seeds=run.pick((0, 1), (0, 1, 2)),
    store=run.pick(None, RESULTS / "gn_experiments"),  # paper scale: every run recorded, an interrupted chapter resumes
)


def lr_grid(phase: str, dataset: str, opt: str) -> list[float]:
    """Book scale: a small grid to choose from. Paper scale: the paper's rate."""
    return run.pick(BOOK_GRIDS[opt], [PAPER_LRS[phase, "CIFAR-10" if "CIFAR" in dataset else "MNIST"][opt]])


cifar = run.pick("cifar10-subset", "cifar10")
datasets = {
    "MNIST": (data.load("mnist", "train", n=S["mnist_train"], seed=run.seed, device=run.device),
              data.load("mnist", "test", n=run.pick(2000, None), seed=run.seed, device=run.device)),
    run.pick("CIFAR-10 subset", "CIFAR-10"): (data.load(cifar, "train", device=run.device),
                                             data.load(cifar, "test", device=run.device)),
}
arch_of = lambda name: S["arch"]["CIFAR-10" if "CIFAR" in name else "MNIST"]
print({k: v for k, v in S.items() if k != "arch"}, S["arch"], sep="\n")

# %% [markdown]
# ## 1. Full batch
#
# The first 256 training images as a single batch; training loss on that batch, step by step.

# %%
full_batch = {}
for name, (train_set, _) in datasets.items():
    fb = gx.split(train_set, len(train_set) - S["fb_n"])[0]  # the first fb_n images
    kw = dict(arch=arch_of(name), epochs=S["fb_steps"], batch_size=None, seed=run.seed, device=run.device,
              store=S["store"])
    chosen = {o: gx.select_lr(o, lr_grid("full batch", name, o), train_set=fb, val_set=fb, criterion="train_loss",
                              **kw).lr for o in gx.OPTIMISERS}
    full_batch[name] = {o: gx.run(o, lr, train_set=fb, eval_set=fb, **kw) for o, lr in chosen.items()}

# %%
for name, runs in full_batch.items():
    for o, h in runs.items():
        loss = h.epochs["train_loss"]
        print(f"{name:15s} {o:4s} lr {h.config['lr']:<6g} train loss after 5 steps {loss[5]:.3f}, "
              f"after {len(loss) - 1} {loss[-1]:.2e}")

# %% tags=["nbval-check-output"]
for name, runs in full_batch.items():
    after = lambda step: {o: h.epochs["train_loss"][step] for o, h in runs.items()}
    claim(f"{name}: after 5 steps GN's training loss is below SGD's and Adam's", min(after(5), key=after(5).get) == "gn")
    print(f"{name}: lowest training loss after {S['fb_steps']} steps: {min(after(-1), key=after(-1).get)}")

# %%
fig, axes = plt.subplots(1, 2, figsize=(9.5, 3.4), sharey=True)
for ax, (name, runs) in zip(axes, full_batch.items()):
    for o, h in runs.items():
        ax.semilogy(h.epochs["epoch"], h.epochs["train_loss"], label=f"{o} (lr {h.config['lr']:g})")
    ax.set(xlabel="step", title=f"{name}, full batch of {S['fb_n']}")
axes[0].set_ylabel("training loss")
axes[0].legend()
plt.show()

# %% [markdown]
# ## 2. Mini-batches
#
# Learning rates are chosen on the validation split (seed 0), then each optimiser runs with two seeds and is
# evaluated on the test set.

# %%
selected, minibatch = {}, {}
for name, (train_set, test_set) in datasets.items():
    tr, val = gx.split(train_set, S["n_val"])
    kw = dict(arch=arch_of(name), epochs=S["mb_epochs"], batch_size=S["mb_n"], device=run.device, store=S["store"])
    selected[name] = {o: gx.select_lr(o, lr_grid("mini-batch", name, o), train_set=tr, val_set=val, criterion="val_acc",
                                      seed=run.seed, **kw) for o in gx.OPTIMISERS}
    minibatch[name] = {o: [gx.run(o, sel.lr, train_set=tr, eval_set=test_set, seed=s, **kw) for s in S["seeds"]]
                       for o, sel in selected[name].items()}

# %%
for name, runs in minibatch.items():
    for o, hs in runs.items():
        sel = selected[name][o]
        val = ", ".join(f"{lr:g}: {acc:.3f}" for lr, acc in sel.scores.items())
        fin = lambda k: np.mean([h.final(k) for h in hs])
        print(f"{name:15s} {o:4s} lr {sel.lr:<6g} (val acc {val})\n{'':20s} train loss {fin('train_loss'):.3f}, "
              f"test loss {fin('test_loss'):.3f}, test acc {fin('test_acc'):.3f}, "
              f"train-loss gain over the last 3 epochs {np.mean([gx.saturation(h) for h in hs]):.0%}")

# %% tags=["nbval-check-output"]
for name, runs in minibatch.items():
    mean = lambda o, f: np.mean([f(h) for h in runs[o]])
    final_loss = {o: mean(o, lambda h: h.final("train_loss")) for o in runs}
    claim(f"{name}: Adam ends with the lowest training loss", min(final_loss, key=final_loss.get) == "adam")
    claim(f"{name}: GN's training loss has saturated (it fell by less than 10% over the last 3 epochs)",
          mean("gn", gx.saturation) < 0.10)
    lead = 100 * (mean("adam", lambda h: h.final("test_acc")) - mean("gn", lambda h: h.final("test_acc")))
    print(f"{name}: test accuracy, Adam against GN: " + ("within 1.5 points (a tie at this noise level)"
          if abs(lead) <= 1.5 else f"{'Adam' if lead > 0 else 'GN'} ahead by more than 1.5 points"))

# %%
fig, axes = plt.subplots(2, 3, figsize=(11, 6), sharex=True)
for row, (name, runs) in zip(axes, minibatch.items()):
    for o, hs in runs.items():
        ep = hs[0].epochs["epoch"]
        for ax, key in zip(row, ("train_loss", "test_loss", "test_acc")):
            vals = np.array([h.epochs[key] for h in hs])
            ax.plot(ep, vals.mean(0), label=o)
            ax.fill_between(ep, vals.min(0), vals.max(0), alpha=0.2)
    for ax, key in zip(row, ("training loss", "test loss", "test accuracy")):
        ax.set(title=f"{name}: {key}")
    row[0].set_yscale("log")
    row[1].set_yscale("log")
    row[2].set_ylim(0.2 if "CIFAR" in name else 0.8, None)
for ax in axes[1]:
    ax.set_xlabel("epoch")
axes[0, 0].legend()
plt.show()

# %% [markdown]
# ## 3. What one step does to its own batch
#
# For every step, the percentage by which it lowered the loss of the batch it was computed on, then the
# average over each epoch (seed 0).

# %%
fig, axes = plt.subplots(1, 2, figsize=(9.5, 3.4), sharey=True)
for ax, (name, runs) in zip(axes, minibatch.items()):
    for o, hs in runs.items():
        drop = gx.batch_loss_drop(hs[0])
        per_epoch = drop.reshape(S["mb_epochs"], -1).mean(1)
        ax.plot(np.arange(1, S["mb_epochs"] + 1), per_epoch, "o-", label=o)
    ax.set(xlabel="epoch", title=name)
axes[0].set_ylabel("batch loss removed by its own step (%)")
axes[0].legend()
plt.show()

# %%
for name, runs in minibatch.items():
    print(name + ": mean batch-loss drop per step, first and last epoch: " + "; ".join(
        f"{o} {gx.batch_loss_drop(hs[0])[:len(hs[0].steps['loss']) // S['mb_epochs']].mean():.0f}% -> "
        f"{gx.batch_loss_drop(hs[0])[-(len(hs[0].steps['loss']) // S['mb_epochs']):].mean():.0f}%" for o, hs in runs.items()))

# %% tags=["nbval-check-output"]
for name, runs in minibatch.items():
    first = {o: gx.batch_loss_drop(hs[0]).reshape(S["mb_epochs"], -1)[0].mean() for o, hs in runs.items()}
    claim(f"{name}: in the first epoch, GN's step removes at least 1.5 times as much of its own batch's loss "
          f"as SGD's and Adam's do", all(first["gn"] >= 1.5 * first[o] for o in ("sgd", "adam")))

# %% [markdown]
# ## What reproduces at book scale
#
# | claim | MNIST | CIFAR-10 subset |
# |---|---|---|
# | 1. full batch: GN much faster | **early, yes**: after 5 steps GN's loss is 4x below SGD's and below Adam's; by step 30, Adam at its best rate ($10^{-3}$) is 10x lower | **yes**: GN leads throughout the 30 steps |
# | 2. mini-batch: GN saturates, Adam ends lower | **no saturation** in 6 epochs: GN's training loss still falls by half over the last 3. Adam ends lower on training loss, but test accuracy is a tie (0.935 vs 0.938) and GN's test loss is the lowest | a **saturating trend**: GN's training loss gains 29% over the last 3 epochs against Adam's 71% (SGD: 26%); Adam wins test accuracy (0.39 vs 0.36), while its test loss rises and GN's stays low |
# | 3. GN fits each batch far better | **in the first epoch** (37% of the batch loss per step vs 17% for SGD, 16% for Adam); by the last epoch all three are at about 20% | no: all three similar |
#
# So the paper's picture holds where it is about speed. A GN step removes much more of the loss on the data it
# was computed on, and early training is fast. The picture does not hold, at this scale and budget, where
# it is about the end of training: we see no saturation of GN's training loss, and its generalisation is close
# to that of the tuned first-order methods. The learning-rate selection matters here. The paper's Adam rate
# ($10^{-4}$) is clearly worse than $10^{-3}$ on the validation split, and against that weaker Adam GN would look
# better still.
#
# The book-scale runs differ from the paper in width ($h=512$ vs 8000), batch size (128 vs 1024), data (4,000
# vs 60,000 images) and length (6 vs 100 epochs). Saturation may need many more epochs, or a larger $n$
# relative to the data. The regime map of {doc}`07_gn_regime_map` varies these factors one at a time. There,
# GN loses to a tuned Adam on CIFAR-10, at small batches and near $h=n$, and ties or wins on MNIST at moderate
# batches with a wide bottleneck.
# `scale = "paper"` runs the paper's settings on a GPU (below).
#
# ## Paper scale: recorded runs
#
# At `scale = "paper"` every run above is recorded under `results/gn_experiments/` with its date, device,
# commit and configuration, and is loaded instead of rerun when the chapter is executed again, so an
# interrupted execution resumes at the first unfinished run. This cell plots whatever has been recorded
# there, at any scale, and says where each curve came from.

# %%
recorded = [(h, meta) for h, meta in recorded_histories(RESULTS / "gn_experiments")
            if h.config.get("batch_size", 0) < h.config.get("n_train", 0)]  # the mini-batch runs
if not recorded:
    print("No paper-scale run is recorded under results/gn_experiments/ yet (no GPU has been lent to this "
          "project so far).")
else:
    names = sorted({h.config["dataset"] for h, _ in recorded})
    fig, axes = plt.subplots(1, len(names), figsize=(5 * len(names), 3.4), squeeze=False)
    for ax, name in zip(axes[0], names):
        for h, meta in recorded:
            if h.config["dataset"] == name and "test_acc" in h.epochs:
                ax.plot(h.epochs["epoch"], h.epochs["test_acc"],
                        label=f"{h.config['optimizer']['name']} lr {h.config['lr']:g} seed {h.config['seed']}")
        ax.set(title=name, xlabel="epoch", ylabel="test accuracy")
        ax.legend(fontsize=7)
    plt.show()
    for h, meta in recorded:
        print(f"{h.config['dataset']:10s} {h.config['optimizer']['name']:4s} seed {h.config['seed']}: final test acc "
              f"{h.final('test_acc'):.3f}; recorded {meta.get('date')} on {meta.get('device')} at commit "
              f"{meta.get('commit', '')[:10]}")
