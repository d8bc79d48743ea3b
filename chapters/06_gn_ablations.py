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
# # Exact Gauss-Newton: ablations, and a damping continuum
#
# **Claims** {cite}`buffelli2024exact`, Sec. 5 and its appendices. GN's behaviour is not an artefact of one
# choice. The same picture appears without the inverted bottleneck; switching from Adam to GN mid-training
# still saturates, while GN to Adam recovers; larger init variance helps GN; smaller learning rates and
# regularised pseudo-inverses (truncation, damping, noise) do not fix it, and damping is slightly better than
# truncation, noise worse.
#
# We run each ablation once at book scale, against the same baseline as the previous chapter: MNIST, 4,000
# training and 1,000 test images, RevMLP with 2 blocks and $h=512$, batches of 128, 6 epochs, cross-entropy,
# GN at learning rate 0.1 and Adam at $10^{-3}$ (the rate the validation split chose in the GN-experiments
# chapter). One seed per setting at book scale, so differences of a point or less are within noise. At paper
# scale the pseudo-inverse, init-scale and learning-rate ablations run with 3 seeds and report the mean and
# range; the no-bottleneck runs, the switches and the damping continuum use one seed at both scales.
#
# Going beyond the paper, a **damping continuum**: the per-block pseudo-inverse $A^{+}$ is replaced by the ridge
# solution $A^\top(AA^\top+\rho\bar\lambda I)^{-1}$, with $\bar\lambda$ the mean eigenvalue of $AA^\top$. $\rho=0$ is exact GN. As
# $\rho\to\infty$ the step turns into the per-block gradient direction $A^\top T$, as in Levenberg-Marquardt. The
# learning rate is scaled by $1+\rho$, so that a direction with the mean eigenvalue moves as far as under exact GN.
# We record the final test accuracy and how far the tangent kernel moved.

# %% tags=["parameters"]
scale = "book"  # "book": minutes on a 2-core CPU; "paper": the paper's settings, for a GPU
device = "auto"
seed = 0

# %%
from dataclasses import replace

import matplotlib.pyplot as plt
import numpy as np

import revgn
from revgn import data, laziness
from revgn import gn_experiments as gx
from revgn.book import claim
from revgn.gn import Pinv, RankDeficientError
from revgn.runs import RESULTS, provenance
from revgn.train import Adam, GaussNewton

run = revgn.book.setup(scale, device, seed)
S = dict(n_train=run.pick(4000, 60000), arch=run.pick(gx.Arch(2, 512), gx.Arch(2, 8000)), batch=run.pick(128, 1024),
         epochs=run.pick(6, 100), switch=run.pick(3, 50), gn_lr=0.1, adam_lr=1e-3,
         ridges=[0.0, 0.01, 0.1, 1.0, 10.0, 100.0])
train_set = data.load("mnist", "train", n=S["n_train"], seed=run.seed, device=run.device)
test_set = data.load("mnist", "test", n=1000, seed=run.seed, device=run.device)
kw = dict(train_set=train_set, eval_set=test_set, epochs=S["epochs"], batch_size=S["batch"], seed=run.seed,
          device=run.device, track_batch_change=False, eval_train_size=1000,
          store=run.pick(None, RESULTS / "gn_ablations"))  # paper scale: plain runs recorded, a rerun resumes
unstored = {**kw, "store": None}  # runs that continue or inspect a given network are not recorded
gn = lambda lr=S["gn_lr"], pinv=Pinv(): GaussNewton(lr, pinv)
adam = lambda: Adam(S["adam_lr"])
print({k: v for k, v in S.items() if k != "arch"}, S["arch"])


seeds = run.pick((run.seed,), (run.seed, run.seed + 1, run.seed + 2))


def runs_of(make_optimizer, arch=S["arch"]) -> list:
    """One plain run per seed (network init and batch order), each with a fresh optimiser."""
    return [gx.run(make_optimizer(), None, arch, **{**kw, "seed": s}) for s in seeds]


def report(runs: dict) -> None:
    """Final training loss and test accuracy of each entry: a message, one History, or a mean over seeds."""
    for label, hs in runs.items():
        if isinstance(hs, str):
            print(f"{label:34s} {hs}")
            continue
        hs = hs if isinstance(hs, list) else [hs]
        acc = [h.final("test_acc") for h in hs]
        spread = f" ({min(acc):.3f}..{max(acc):.3f} over {len(hs)} seeds)" if len(hs) > 1 else ""
        print(f"{label:34s} train loss {np.mean([h.final('train_loss') for h in hs]):.3f}   "
              f"test acc {np.mean(acc):.3f}{spread}")


# %% [markdown]
# ## Baselines and pseudo-inverse regularisation
#
# Truncation drops singular values below $10^{-2}\sigma_{\max}$ (and below $10^{-5}$), damping adds $0.01\,\sigma_{\max}$ to
# every singular value, and noise adds 10% of the features' standard deviation, freshly drawn at each step.

# %%
pinv_runs = {
    "Adam (lr 1e-3)": runs_of(adam),
    "GN exact": runs_of(gn),
    "GN truncated (rtol 1e-2)": runs_of(lambda: gn(pinv=Pinv.truncated())),
    "GN damped (1%)": runs_of(lambda: gn(pinv=Pinv.damped(0.01))),
    "GN noisy features (10%)": runs_of(lambda: gn(pinv=Pinv.noisy(0.1))),
}
report(pinv_runs)

# %% tags=["nbval-check-output"]
acc = lambda runs: np.mean([h.final("test_acc") for h in (runs if isinstance(runs, list) else [runs])])
gn_variants = [acc(v) for k, v in pinv_runs.items() if k.startswith("GN")]
claim("every regularised pseudo-inverse ends within 1.5 points of exact GN's test accuracy",
      max(abs(a - acc(pinv_runs["GN exact"])) for a in gn_variants) < 0.015)
claim("every GN variant at lr 0.1 ends more than 2 points below Adam", max(gn_variants) < acc(pinv_runs["Adam (lr 1e-3)"]) - 0.02)

# %% [markdown]
# ## No inverted bottleneck; init scale; smaller learning rates; switching optimisers
#
# Without the bottleneck, $\sigma$ acts on the half-stream itself ($V=I$, $h=d/2=392$), which still exceeds the batch
# of 128.

# %%
def guarded(make):
    try:
        return make()
    except RankDeficientError as err:
        return "refused: " + str(err).split(":")[1].strip()[:60] + "..."


other_runs = {
    "GN, no bottleneck": guarded(lambda: gx.run(gn(), None, gx.Arch(2, 392), **unstored, model=revgn.models.RevMLP(
        784, 10, depth=2, bottleneck=False, seed=run.seed, device=run.device))),
    "Adam, no bottleneck": gx.run(adam(), None, gx.Arch(2, 392), **unstored, model=revgn.models.RevMLP(
        784, 10, depth=2, bottleneck=False, seed=run.seed, device=run.device)),
    **{f"GN, W init sd {sd:g}": runs_of(gn, replace(S["arch"], init_std=sd)) for sd in (1e-2, 1e-1)},
    **{f"GN, lr {lr:g}": runs_of(lambda lr=lr: gn(lr)) for lr in (0.01, 0.03, 0.3, 1.0)},
    f"Adam -> GN at epoch {S['switch']}": gx.switched(adam(), gn(), S["switch"], S["arch"], **kw),
    f"GN -> Adam at epoch {S['switch']}": gx.switched(gn(), adam(), S["switch"], S["arch"], **kw),
}
report(other_runs)

# %% tags=["nbval-check-output"]
gn_base, adam_base = acc(pinv_runs["GN exact"]), acc(pinv_runs["Adam (lr 1e-3)"])
if isinstance(other_runs["GN, no bottleneck"], str):
    print("GN without the bottleneck was refused:", other_runs["GN, no bottleneck"])
else:
    claim("without the bottleneck, GN ends more than 5 points below Adam",
          acc(other_runs["GN, no bottleneck"]) < acc(other_runs["Adam, no bottleneck"]) - 0.05)
claim("W init sd 0.1 ends more than 10 points below sd 0.01", acc(other_runs["GN, W init sd 0.1"])
      < acc(other_runs["GN, W init sd 0.01"]) - 0.10)
claim("GN at lr 0.01 and 0.03 ends below GN at lr 0.1", max(acc(other_runs[f"GN, lr {lr:g}"]) for lr in (0.01, 0.03)) < gn_base)
claim("GN at lr 1 ends within 1.5 points of Adam", abs(acc(other_runs["GN, lr 1"]) - adam_base) < 0.015)
claim("Adam -> GN ends with a lower training loss than GN alone",
      other_runs[f"Adam -> GN at epoch {S['switch']}"].final("train_loss") < pinv_runs["GN exact"][0].final("train_loss"))
claim("GN -> Adam ends more than a point above GN alone", acc(other_runs[f"GN -> Adam at epoch {S['switch']}"]) > gn_base + 0.01)

# %%
fig, ax = plt.subplots(figsize=(6, 3.6))
for label in ("Adam (lr 1e-3)", "GN exact"):
    h = pinv_runs[label][0]
    ax.plot(h.epochs["epoch"], h.epochs["train_loss"], "o-", label=label)
for label in (f"Adam -> GN at epoch {S['switch']}", f"GN -> Adam at epoch {S['switch']}"):
    h = other_runs[label]
    ax.plot(h.epochs["epoch"], h.epochs["train_loss"], "s--", label=label)
ax.axvline(S["switch"], color="0.7", lw=1)
ax.set(yscale="log", xlabel="epoch", ylabel="training loss", title="Switching optimisers mid-training")
ax.legend(fontsize=8)
plt.show()

# %% [markdown]
# ## The damping continuum

# %%
continuum = {}
for rho in S["ridges"]:
    model = S["arch"].build(train_set, run.seed, run.device)
    model0 = laziness.frozen_copy(model)
    pinv = Pinv() if rho == 0 else Pinv.ridged(rho, relative=True)
    h = gx.run(gn(S["gn_lr"] * (1 + rho), pinv), None, S["arch"], model=model, **unstored)
    continuum[rho] = (h, laziness.ntk_kernel_distance(model0, model, train_set.x[:4]),
                      min(laziness.block_cka(model0, model, test_set.x[:500])))

# %%
for rho, (h, kd, cka) in continuum.items():
    print(f"rho = {rho:6g}: train loss {h.final('train_loss'):.3f}, test acc {h.final('test_acc'):.3f}, "
          f"NTK kernel distance {kd:.3f}, lowest block CKA to init {cka:.3f}")

# %% tags=["nbval-check-output"]
exact = continuum[0.0]
claim("every ridge rho >= 0.1 ends more than a point below exact GN's test accuracy",
      all(h.final("test_acc") < exact[0].final("test_acc") - 0.01 for rho, (h, _, _) in continuum.items() if rho >= 0.1))
claim("at rho = 1 the tangent kernel moves less than under exact GN", continuum[1.0][1] < exact[1])

# %%
rhos = np.array(S["ridges"])
x_pos = np.where(rhos > 0, rhos, 1e-3)
fig, ax = plt.subplots(figsize=(6, 3.6))
ax.semilogx(x_pos, [continuum[r][0].final("test_acc") for r in rhos], "o-", label="test accuracy")
ax2 = ax.twinx()
ax2.semilogx(x_pos, [continuum[r][1] for r in rhos], "s--", color="C1", label="NTK kernel distance")
ax.set(xlabel=r"relative ridge $\rho$ (leftmost: exact GN, $\rho=0$)", ylabel="test accuracy",
       title="From exact GN towards the gradient direction")
ax2.set_ylabel("NTK kernel distance from init", color="C1")
ax2.grid(False)
plt.show()

# %% [markdown]
# At `scale = "paper"` the plain runs above are recorded in `results/gn_ablations/` (and loaded from there
# when the chapter is executed again). What is recorded there, and where it came from:

# %%
print(provenance(RESULTS / "gn_ablations"))

# %% [markdown]
# ## What the ablations say at book scale
#
# | the paper's claim | book-scale result (one seed) |
# |---|---|
# | pseudo-inverse regularisation does not fix GN | **reproduced**: truncated, damped and noisy pseudo-inverses all end within a point of exact GN (0.90 to 0.91), well below Adam (0.94). Truncation at $10^{-2}\sigma_{\max}$ changes almost nothing, since the ReLU features are well conditioned at $h=4n$ |
# | damping slightly better than truncation, noise worse | **not resolved**: the three differ by less than a point, within single-seed noise |
# | same picture without the inverted bottleneck | **reproduced, more strongly**: GN 0.82 against Adam 0.92 |
# | larger init variance helps GN | **not reproduced**: sd $10^{-2}$ changes nothing, and sd $10^{-1}$ is much worse (0.69) |
# | smaller learning rates do not fix GN | **reproduced**: 0.01 and 0.03 are far worse (slower) |
# | Adam to GN still saturates; GN to Adam recovers | GN to Adam recovers (0.907 to 0.926). Adam to GN keeps improving the training loss after the switch (0.068 at the end) and ends at 0.930: no saturation in 3 epochs |
#
# The most consequential finding is not in that list. **GN's learning rate.** At the paper's rate 0.1, GN
# trails Adam by 3 points. At 0.3 it trails by one, and at 1.0, the full Gauss-Newton step, it *matches* Adam
# (0.941 against 0.940). The same was seen by the validation-based selection of the previous chapter, and by
# an independent trial on full MNIST ($h=1024$, $n=512$). At these scales, "exact GN generalises poorly" is mostly "exact
# GN with a tenth of its natural step trains slowly".
#
# **The damping continuum.** With the step rescaled, moving from exact GN towards the per-block gradient
# direction makes both the fit and the test accuracy worse (0.907 to about 0.88), and moves the tangent kernel
# *less*: its distance from init falls from 0.012 to 0.003 at $\rho=1$. This is the opposite of the MLP in
# the iterative-linearisation chapter, where exact GN diverged and damping was essential. In the reversible
# network the undamped step is well behaved, and damping only slows it down at a fixed budget. Damping that
# helps an unstable GN step does not help a stable one.
#
# These are single-seed, 6-epoch, $h=512$ results. The regime map of {doc}`07_gn_regime_map` repeats the
# learning-rate, init and truncation comparisons against an Adam tuned at each point. The paper-scale runs
# ($h=8000$, $n=1024$, 100 epochs) are what `scale = "paper"` executes on a GPU. Their plain runs are then
# recorded under `results/gn_ablations/`; none has been recorded yet.
