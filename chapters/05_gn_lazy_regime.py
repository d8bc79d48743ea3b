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
# # Why: does exact Gauss-Newton keep the network lazy?
#
# **Claim** {cite}`buffelli2024exact`. Along training, the tangent kernel and the block representations of
# a RevMLP trained by exact GN (and by SGD) stay close to their values at initialisation, while Adam moves
# them. So GN trains in the lazy regime of the first chapter {cite}`chizat2019lazy`: it fits with fixed
# features, which would explain why it generalises no better than kernel regression.
#
# We measure four things along training, each against the network at initialisation:
#
# - the paper's **NTK similarity**: on one training batch, with $v$ the average of 100 Gaussian probes in the
#   space of the reversible body's output $x_L$, the cosine between $K_0v$ and $K_tv$ ($K=JJ^\top$). Because
#   the probes are averaged first, this looks at the kernel along a *single* random direction;
# - the sounder **kernel distance** $1-\langle K_0,K_t\rangle_F/(\|K_0\|_F\|K_t\|_F)$ of the full empirical NTK of the
#   logits, on a few fixed inputs {cite}`fort2020deep`;
# - **linear CKA** of each block's output on 500 test images {cite}`kornblith2019cka`;
# - the **cosine** between each trained weight matrix and its initial value (the smallest over half-layers).
#
# Going beyond the paper, we also measure the lazy-training criterion $\kappa$ of the first chapter at
# initialisation and at the end of each run.
#
# Setting (book scale): MNIST, 4,000 training and 1,000 test images, RevMLP with 2 blocks and $h=512$, batches
# of 128, 6 epochs, cross-entropy, the paper's learning rates (GN 0.1, SGD 0.1, Adam $10^{-4}$). Paper scale:
# $h=8000$, $n=1024$, 100 epochs.

# %% tags=["parameters"]
scale = "book"  # "book": minutes on a 2-core CPU; "paper": the paper's settings, for a GPU
device = "auto"
seed = 0

# %%
import matplotlib.pyplot as plt
import numpy as np
import torch

import revgn
from revgn import data, laziness
from revgn.book import claim
from revgn.kernels import kappa
from revgn.models import RevMLP
from revgn.runs import RESULTS, provenance, recorded, scratch_for
from revgn.train import SGD, Adam, GaussNewton, History, train

run = revgn.book.setup(scale, device, seed)
S = dict(n_train=run.pick(4000, 60000), hidden=run.pick(512, 8000), batch=run.pick(128, 1024),
         epochs=run.pick(6, 100), eval_every=run.pick(2, 10), kernel_inputs=4, kappa_inputs=20)
train_set = data.load("mnist", "train", n=S["n_train"], seed=run.seed, device=run.device)
test_set = data.load("mnist", "test", n=1000, seed=run.seed, device=run.device)
optimisers = {"gn": lambda: GaussNewton(0.1), "sgd": lambda: SGD(0.1), "adam": lambda: Adam(1e-4)}
print(S)

# %%
onehot = torch.nn.functional.one_hot(train_set.y[:S["kappa_inputs"]], 10).to(train_set.x.dtype)
kappa_of = lambda m: kappa(m, train_set.x[:S["kappa_inputs"]], onehot, max_iterations=20, rtol=1e-3).kappa
store = run.pick(None, RESULTS / "gn_lazy_regime")  # paper scale: recorded, and long runs resume mid-way


def lazy_run(name: str, make, checkpoint) -> dict:
    """Train one optimiser with the laziness metrics; its history and kappa at init and at the end."""
    model = RevMLP(784, 10, depth=2, hidden=S["hidden"], seed=run.seed, device=run.device)
    model0 = laziness.frozen_copy(model)
    kappa_init = kappa_of(model)
    metrics = laziness.laziness_metrics(model0, train_set.x[:S["batch"]], train_set.x[:S["kernel_inputs"]], test_set.x[:500])
    hist = train(model, make(), train_set, test_set=test_set, loss="ce", epochs=S["epochs"], batch_size=S["batch"],
                 seed=run.seed, eval_every=S["eval_every"], eval_train_size=1000, metrics=metrics, progress=False,
                 checkpoint=checkpoint)
    return {**hist.to_dict(), "kappa": [kappa_init, kappa_of(model)]}


histories, kappas = {}, {}
for name, make in optimisers.items():
    path = None if store is None else store / f"{name}-seed{run.seed}.json"
    checkpoint = None if path is None else scratch_for(path) / "run.ckpt"  # a long run resumes mid-way
    rec = recorded(path, {"optimiser": make().describe(), **S, "seed": run.seed},
                   lambda: lazy_run(name, make, checkpoint), run.device)
    histories[name], kappas[name] = History(rec["steps"], rec["epochs"], rec["config"]), tuple(rec["kappa"])

# %%
for name, h in histories.items():
    print(f"{name:4s} test acc {h.final('test_acc'):.3f} | end of training: NTK similarity {h.final('ntk_similarity'):.3f}, "
          f"kernel distance {h.final('ntk_distance'):.3f}, CKA block 1 {h.final('cka_block1'):.3f}, "
          f"block 2 {h.final('cka_block2'):.3f}, weight cosine {h.final('weight_cosine'):.2f}, "
          f"kappa {kappas[name][0]:.2f} -> {kappas[name][1]:.2f}")

# %% tags=["nbval-check-output"]
end = lambda key: {name: h.final(key) for name, h in histories.items()}
claim("the paper's NTK similarity stays above 0.95 for all three optimisers", min(end("ntk_similarity").values()) > 0.95)
claim("the full kernel distance stays below 0.05 for all three", max(end("ntk_distance").values()) < 0.05)
claim("GN leaves block 2's representation closest to init (highest CKA)", max(end("cka_block2"), key=end("cka_block2").get) == "gn")
claim("kappa falls during GN training and rises under SGD and Adam",
      kappas["gn"][1] < kappas["gn"][0] and all(kappas[o][1] > kappas[o][0] for o in ("sgd", "adam")))

# %%
panels = [("ntk_similarity", "NTK similarity (paper's probe)"), ("ntk_distance", "NTK kernel distance"),
          ("cka_block2", "CKA of block 2's output"), ("weight_cosine", "weight cosine (min over half-layers)")]
fig, axes = plt.subplots(1, 4, figsize=(13, 3.2))
for ax, (key, title) in zip(axes, panels):
    for name, h in histories.items():
        ax.plot(h.epochs["epoch"], h.epochs[key], "o-", label=name)
    ax.set(xlabel="epoch", title=title)
axes[0].legend()
plt.show()

# %% [markdown]
# At `scale = "paper"` the runs above are recorded in `results/gn_lazy_regime/` (and loaded from there when the chapter
# is executed again). What is recorded there, and where it came from:

# %%
print(provenance(RESULTS / "gn_lazy_regime"))

# %% [markdown]
# ## What the measurements say
#
# - **The paper's NTK similarity stays near 1 for all three optimisers.** GN's is the highest, but SGD and
#   Adam are barely lower. Measured along one random direction, the kernel hardly distinguishes them.
# - **The full kernel distance is small for all three**, of order $10^{-2}$ after six epochs. At book scale none of
#   the optimisers moves the tangent kernel much.
# - **Representations separate the optimisers.** GN leaves the blocks' output representations essentially
#   where they started (CKA to init about 0.998), while SGD and Adam move them measurably. This is the
#   direction of the paper's claim, with the roles of SGD and GN less distinct than it reports.
# - **Weight cosines fall for everyone.** The trained weights start at sd $10^{-3}$, so any update soon
#   dominates them, and the cosine with init drops towards 0.2 within a few epochs for every optimiser. It says
#   more about the tiny init than about laziness.
# - **Beyond the paper, $\kappa$.** The criterion *falls* during GN training, while it rises under SGD and
#   Adam. The network that GN produces is lazier, in Chizat et al.'s sense, than the one it started from. That
#   is the link between the first chapter and this one: exact GN moves within the linear regime and
#   reinforces it.
#
# The claim that GN stays lazy reproduces at book scale for representations and for $\kappa$. That SGD
# stays as lazy as GN while Adam moves away does not: SGD and Adam behave alike here. Whether the lazy
# regime also makes GN *generalise* worse is the previous chapter's question, and its book-scale answer was
# mixed. The regime map of {doc}`07_gn_regime_map` finds where it holds. GN's kernel moves less than Adam's
# everywhere, yet GN loses only where the initial features are poor or the per-batch fit is noisy.
