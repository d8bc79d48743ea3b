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
# Every ablation is a run spec that changes one field of the same baseline: MNIST, 4,000 training and 1,000
# test images, RevMLP with 2 blocks and $h=512$, batches of 128, 6 epochs, cross-entropy, GN at the paper's
# learning rate 0.1 and Adam at $10^{-3}$. Book scale runs one seed per setting, so the verdict rule of the
# book (five paired seeds and a 95% interval that excludes zero, `revgn.stats.verdict`) gives no verdict
# here: the table at the end reports the measured differences and says so. Paper scale runs five seeds.
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
import matplotlib.pyplot as plt
import numpy as np

import revgn
from revgn.book import claim, markdown, table
from revgn.experiments import gn_protocol as gp
from revgn.runs import RESULTS, DataSpec, ModelSpec, OptimSpec, Runs, RunSpec, provenance, records
from revgn.stats import TEST, verdict

run = revgn.book.setup(scale, device, seed)
GN, ADAM = OptimSpec("gn", 0.1), OptimSpec("adam", 1e-3)
BASE = RunSpec(DataSpec("mnist", n_train=run.pick(4000, 60000), n_test=1000), ModelSpec(depth=2, hidden=run.pick(512, 8000)),
               GN, loss="ce", batch_size=run.pick(128, 1024), epochs=run.pick(6, 100), eval_train_size=1000,
               evaluate=("test",))
SWITCH = run.pick(3, 50)
RIDGES = (0.0, 0.01, 0.1, 1.0, 10.0, 100.0)
NO_BOTTLENECK = ModelSpec(depth=2, hidden=392, bottleneck=False)  # sigma on the half-stream: h = d/2 = 392
ABLATIONS = {  # label -> the fields of BASE it changes: the grid, as data
    "Adam (lr 1e-3)": dict(optimizer=ADAM),
    "GN exact": {},
    "GN truncated (rtol 1e-2)": dict(optimizer=OptimSpec("gn", 0.1, pinv="truncate", rtol=1e-2, atol=1e-5)),
    "GN damped (1%)": dict(optimizer=OptimSpec("gn", 0.1, pinv="damp", damping=0.01)),
    "GN noisy features (10%)": dict(optimizer=OptimSpec("gn", 0.1, pinv="noise", noise=0.1)),
    "GN, no bottleneck": dict(model=NO_BOTTLENECK),
    "Adam, no bottleneck": dict(model=NO_BOTTLENECK, optimizer=ADAM),
    **{f"GN, W init sd {sd:g}": {"model.init_std": sd} for sd in (1e-2, 1e-1)},
    **{f"GN, lr {lr:g}": {"optimizer.lr": lr} for lr in (0.01, 0.03, 0.3, 1.0)},
    f"Adam -> GN at epoch {SWITCH}": dict(optimizer=ADAM, then=GN, switch_epoch=SWITCH),
    f"GN -> Adam at epoch {SWITCH}": dict(then=ADAM, switch_epoch=SWITCH),
    # the damping continuum: ridge rho * mean eigenvalue, the rate scaled by 1 + rho; NTK and CKA measured
    **{f"ridge {rho:g}": dict(optimizer=OptimSpec("gn", 0.1 * (1 + rho), pinv="ridge" if rho else "exact", ridge=rho,
                                                  ridge_relative=rho > 0),
                              measure=("ntk_distance", "cka"), kernel_inputs=4) for rho in RIDGES},
}
SEEDS = tuple(range(run.seed, run.seed + run.pick(1, 5)))
runs = Runs(run.pick(None, RESULTS / "gn_ablations" / "paper"), run.device, progress=run.scale == "paper")
recs = {label: runs.all(gp.at_seeds(BASE.replace(**changes), SEEDS), desc=label) for label, changes in ABLATIONS.items()}
acc = lambda label: float(np.mean([r.metrics["test_acc"] for r in recs[label]])) if recs[label][0].ok else np.nan
final = lambda label, key: float(np.mean([r.metrics[key] for r in recs[label]]))
print(BASE)


def report(labels) -> None:
    """Final training loss and test accuracy of each ablation (mean over seeds), or why it stopped."""
    for label in labels:
        rs = recs[label]
        if not rs[0].ok:
            print(f"{label:34s} {rs[0].failure[:110]}...")
            continue
        a = [r.metrics["test_acc"] for r in rs]
        spread = f" ({min(a):.3f}..{max(a):.3f} over {len(rs)} seeds)" if len(rs) > 1 else ""
        print(f"{label:34s} train loss {final(label, 'train_loss'):.3f}   test acc {np.mean(a):.3f}{spread}")


# %% [markdown]
# ## Baselines and pseudo-inverse regularisation
#
# Truncation drops singular values below $10^{-2}\sigma_{\max}$ (and below $10^{-5}$), damping adds $0.01\,\sigma_{\max}$ to
# every singular value, and noise adds 10% of the features' standard deviation, freshly drawn at each step.

# %%
PINV = ["Adam (lr 1e-3)", "GN exact", "GN truncated (rtol 1e-2)", "GN damped (1%)", "GN noisy features (10%)"]
report(PINV)

# %% tags=["nbval-check-output"]
gn_variants = [acc(k) for k in PINV if k.startswith("GN")]
claim("every regularised pseudo-inverse ends within 1.5 points of exact GN's test accuracy",
      max(abs(a - acc("GN exact")) for a in gn_variants) < 0.015)
claim("every GN variant at lr 0.1 ends more than 2 points below Adam", max(gn_variants) < acc("Adam (lr 1e-3)") - 0.02)

# %% [markdown]
# ## No inverted bottleneck; init scale; smaller learning rates; switching optimisers
#
# Without the bottleneck, $\sigma$ acts on the half-stream itself ($V=I$, $h=d/2=392$), which still exceeds the batch
# of 128.

# %%
OTHER = [k for k in ABLATIONS if k not in PINV and not k.startswith("ridge")]
report(OTHER)

# %% tags=["nbval-check-output"]
gn_base, adam_base = acc("GN exact"), acc("Adam (lr 1e-3)")
if not recs["GN, no bottleneck"][0].ok:
    print("GN without the bottleneck stopped:", recs["GN, no bottleneck"][0].failure.split(":")[0])
else:
    claim("without the bottleneck, GN ends more than 5 points below Adam",
          acc("GN, no bottleneck") < acc("Adam, no bottleneck") - 0.05)
claim("W init sd 0.1 ends more than 10 points below sd 0.01", acc("GN, W init sd 0.1") < acc("GN, W init sd 0.01") - 0.10)
claim("GN at lr 0.01 and 0.03 ends below GN at lr 0.1", max(acc(f"GN, lr {lr:g}") for lr in (0.01, 0.03)) < gn_base)
claim("GN at lr 1 ends within 1.5 points of Adam", abs(acc("GN, lr 1") - adam_base) < 0.015)
claim("Adam -> GN ends with a lower training loss than GN alone",
      final(f"Adam -> GN at epoch {SWITCH}", "train_loss") < final("GN exact", "train_loss"))
claim("GN -> Adam ends more than a point above GN alone", acc(f"GN -> Adam at epoch {SWITCH}") > gn_base + 0.01)

# %%
fig, ax = plt.subplots(figsize=(6, 3.6))
for label, style in (("Adam (lr 1e-3)", "o-"), ("GN exact", "o-"), (f"Adam -> GN at epoch {SWITCH}", "s--"),
                     (f"GN -> Adam at epoch {SWITCH}", "s--")):
    h = recs[label][0].history
    ax.plot(h.epochs["epoch"], h.epochs["train_loss"], style, label=label)
ax.axvline(SWITCH, color="0.7", lw=1)
ax.set(yscale="log", xlabel="epoch", ylabel="training loss", title="Switching optimisers mid-training")
ax.legend(fontsize=8)
plt.show()

# %% [markdown]
# ## The damping continuum

# %%
continuum = {rho: recs[f"ridge {rho:g}"] for rho in RIDGES}
cka_min = lambda rs: float(np.mean([min(r.metrics["cka_block1"], r.metrics["cka_block2"]) for r in rs]))
for rho, rs in continuum.items():
    print(f"rho = {rho:6g}: train loss {final(f'ridge {rho:g}', 'train_loss'):.3f}, test acc {acc(f'ridge {rho:g}'):.3f}, "
          f"NTK kernel distance {final(f'ridge {rho:g}', 'ntk_distance'):.3f}, lowest block CKA to init {cka_min(rs):.3f}")

# %% tags=["nbval-check-output"]
claim("every ridge rho >= 0.1 ends more than a point below exact GN's test accuracy",
      all(acc(f"ridge {rho:g}") < acc("ridge 0") - 0.01 for rho in RIDGES if rho >= 0.1))
claim("at rho = 1 the tangent kernel moves less than under exact GN",
      final("ridge 1", "ntk_distance") < final("ridge 0", "ntk_distance"))

# %%
rhos = np.array(RIDGES)
fig, ax = plt.subplots(figsize=(6, 3.6))
ax.semilogx(np.where(rhos > 0, rhos, 1e-3), [acc(f"ridge {r:g}") for r in rhos], "o-", label="test accuracy")
ax2 = ax.twinx()
ax2.semilogx(np.where(rhos > 0, rhos, 1e-3), [final(f"ridge {r:g}", "ntk_distance") for r in rhos], "s--", color="C1")
ax.set(xlabel=r"relative ridge $\rho$ (leftmost: exact GN, $\rho=0$)", ylabel="test accuracy",
       title="From exact GN towards the gradient direction")
ax2.set_ylabel("NTK kernel distance from init", color="C1")
ax2.grid(False)
plt.show()

# %% [markdown]
# ## What the ablations say
#
# Each row is the paper's claim, the measured difference in test accuracy (paired over the seeds, in points)
# and the verdict of the book's rule.

# %%
def diff(a: str, b: str, key: str = "test_acc"):
    if not (recs[a][0].ok and recs[b][0].ok):
        return None, "a run stopped: " + (recs[a][0].failure or recs[b][0].failure).split(":")[0]
    c = gp.compare(recs[a], recs[b], key)
    return c, f"{a} - {b}: {c.text(100 if key.endswith('acc') else 1, ' points' if key.endswith('acc') else '')}"


def row(claim_text: str, a: str, b: str, above: str, below: str, key: str = "test_acc"):
    c, text = diff(a, b, key)
    return [claim_text, text, "no comparison" if c is None else verdict(c, above=above, below=below)]


rows = [
    *[row("pseudo-inverse regularisation does not fix GN", v, "Adam (lr 1e-3)", above="not reproduced: it beats Adam",
          below="reproduced: still below Adam") for v in PINV[2:]],
    row("damping slightly better than truncation", "GN damped (1%)", "GN truncated (rtol 1e-2)",
        above="reproduced", below="not reproduced: worse"),
    row("noise worse than truncation", "GN noisy features (10%)", "GN truncated (rtol 1e-2)",
        above="not reproduced: better", below="reproduced"),
    row("the same picture without the inverted bottleneck", "GN, no bottleneck", "Adam, no bottleneck",
        above="not reproduced: GN better", below="reproduced: GN below Adam"),
    *[row("larger init variance helps GN", f"GN, W init sd {sd:g}", "GN exact", above="reproduced",
          below="not reproduced: worse") for sd in (1e-2, 1e-1)],
    *[row("smaller learning rates do not fix GN", f"GN, lr {lr:g}", "GN exact", above="not reproduced: better",
          below="reproduced: worse") for lr in (0.01, 0.03)],
    row("Adam to GN still saturates (training loss)", f"Adam -> GN at epoch {SWITCH}", "Adam (lr 1e-3)",
        above="reproduced: higher than Adam's", below="not reproduced: lower than Adam's", key="train_loss"),
    row("GN to Adam recovers", f"GN -> Adam at epoch {SWITCH}", "GN exact", above="reproduced",
        below="not reproduced"),
    *[row("(beyond the paper) GN at a larger rate", f"GN, lr {lr:g}", "Adam (lr 1e-3)", above="GN better",
          below="GN below Adam", ) for lr in (0.3, 1.0)],
    *[row("(beyond the paper) damping the step", f"ridge {rho:g}", "ridge 0", above="helps", below="hurts")
      for rho in RIDGES[1:]],
]
markdown(table(["the paper's claim", "measured (paired over seeds)", "verdict"], rows) + f"\n\nTest: {TEST}.")

# %% [markdown]
# Two rows matter most for the book's question. **GN's learning rate**: if GN at a larger rate (0.3 or the
# full step, 1) ties or beats Adam while GN at the paper's 0.1 trails it, then "exact GN generalises poorly"
# is, at this scale, "exact GN with a tenth of its natural step trains slowly"; the previous chapter's
# validation-based selection of GN's rate asks the same question with a tuned rate. **The damping
# continuum**: with the step rescaled, moving from exact GN towards the per-block gradient direction slows
# the fit at a fixed budget; compare the NTK distances printed above with the iterative-linearisation
# chapter, where exact GN on an MLP diverged and damping was essential. Damping that rescues an unstable GN
# step need not help a stable one.
#
# The regime map of {doc}`07_gn_regime_map` repeats the learning-rate, init and truncation comparisons
# against an Adam tuned at each point. At `scale = "paper"` ($h=8000$, $n=1024$, 100 epochs, on a GPU) every
# run above is recorded under `results/gn_ablations/paper/`. What is recorded there:

# %%
print(provenance(records(RESULTS / "gn_ablations" / "paper"), "results/gn_ablations/paper"))
