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
# # Second-order optimisation, lazy training and generalisation
#
# Gauss-Newton (GN) methods take the step that a linearised model says will fit the data. In a wide network
# the linearised model is also what the network becomes in the *lazy* regime, where its features hardly move
# and training reduces to kernel regression with the neural tangent kernel {cite}`jacot2018ntk`. This book
# asks what that coincidence means for generalisation, and answers with code that runs.
#
# It reproduces, checks and extends three results:
#
# 1. **Lazy training** {cite}`chizat2019lazy`. Scaling a model's output by $\alpha$ makes gradient descent
#    follow the model's linearisation; a criterion $\kappa$ predicts when, and lazy CNNs generalise worse.
# 2. **Iterative linearisation** {cite}`goldwaser2023iterative`. Re-linearising every $K$ steps interpolates
#    between gradient descent ($K=1$) and NTK-regime training ($K=\infty$). It is a damped Gauss-Newton
#    method in disguise; infrequent feature learning suffices, none at all hurts.
# 3. **Exact, tractable Gauss-Newton in reversible networks** {cite}`buffelli2024exact`. In coupling-layer
#    MLPs {cite}`gomez2017revnet` with a fixed random inverted bottleneck, an exact GN update can be computed
#    block by block at the cost of a gradient step. The paper reports that exact GN overfits each
#    mini-batch, stays lazy and generalises poorly. Where that holds is for this book to measure.
#
# ## Map of the book
#
# | chapter | the claim it tests (whose) | where its answer comes from |
# |---|---|---|
# | {doc}`01_lazy_training` | $\kappa$ predicts laziness; lazy nets generalise worse (Chizat et al.) | runs computed when the chapter executes |
# | {doc}`02_iterative_linearisation` | $K$ and GN damping interpolate between feature learning and kernel regression (Goldwaser and Ge) | runs computed when the chapter executes |
# | {doc}`03_exact_gauss_newton` | the layer-wise GN step is an exact right inverse of the Jacobian, at roughly the cost of an SGD step (Buffelli et al.) | exact checks and timings, computed when the chapter executes |
# | {doc}`04_gn_experiments` | exact GN fits each batch fast but saturates; Adam ends lower (Buffelli et al.) | runs computed when the chapter executes |
# | {doc}`05_gn_lazy_regime` | GN keeps the network lazy: NTK, CKA, weights; and the criterion $\kappa$ (Buffelli et al.; $\kappa$ is ours) | runs computed when the chapter executes |
# | {doc}`06_gn_ablations` | regularised pseudo-inverses, no bottleneck, optimiser switches, init scale, learning rate; a damping continuum (ours) | committed records |
# | {doc}`07_gn_regime_map` | where exact GN generalises worse than a tuned Adam: a regime map over data, widths, batch sizes, first block, init (ours, testing Buffelli et al.) | committed records |
# | {doc}`08_right_inverse` | beyond the paper: is it Gauss-Newton, or the paper's right inverse, that generalises as it does? Moore-Penrose steps against the layer-wise one (ours) | committed records |
#
# Each chapter ends with its own verdicts. What the committed records say so far, computed as this page is
# executed (the README shows the same block):

# %% tags=["hide-input"]
from revgn import findings
from revgn.book import markdown

markdown(findings.block())

# %% [markdown]
# Each chapter reads like a paper section: a claim, its derivation, an experiment, a figure, and a plain
# statement of whether the run reproduces the claim. All computing happens in the `revgn` library; the
# chapters stay thin.
#
# ## How to run a chapter
#
# The chapters are [Jupytext](https://jupytext.readthedocs.io) notebooks: `chapters/*.py` is the source and
# the paired `.ipynb` holds the outputs of its last execution. Every chapter starts with a cell tagged
# `parameters`:
#
# - `scale = "book"` runs in minutes on a 2-core CPU, with widths, sample sizes and epochs scaled down (each
#   chapter says which values it uses);
# - `scale = "paper"` uses the papers' settings and is meant for a GPU;
# - `device` (`"auto"`, `"cpu"` or `"cuda"`) and `seed`.
#
# To execute one chapter at paper scale on a GPU, with outputs written to a new notebook:
#
# ```bash
# make venv
# .venv/bin/jupytext --to ipynb chapters/03_exact_gauss_newton.py
# .venv/bin/papermill -k python3 --cwd chapters -p scale paper -p device cuda \
#     chapters/03_exact_gauss_newton.ipynb paper_run.ipynb
# ```
#
# or execute the whole book that way with `make book SCALE=paper DEVICE=cuda`. Long runs record their
# histories under `results/`, with the date, device and commit.
#
# ## Data
#
# The library reads MNIST {cite}`lecun1998mnist` from its four official IDX files and CIFAR-10
# {cite}`krizhevsky2009cifar` from the official *binary* archive (never the pickled one). Every file is
# checked against its SHA-256 before use. Files are cached in `$REVGN_DATA` (by default `~/.cache/revgn`);
# a missing MNIST or CIFAR-10 file is downloaded there. The book's CPU-scale chapters use MNIST and a real
# 4,000-image subset of CIFAR-10 (`cifar10-subset`), which the cell below loads.

# %% tags=["parameters"]
# "book": minutes on a 2-core CPU; "paper": the papers' settings, for a GPU
scale = "book"
device = "auto"
seed = 0

# %%
import torch

import revgn
from revgn import data

run = revgn.book.setup(scale, device, seed)

# %% tags=["nbval-check-output"]
for name in ("mnist", "cifar10-subset"):
    for split in ("train", "test"):
        ds = data.load(name, split)
        print(
            f"{name:15s} {split:5s} x {tuple(ds.x.shape)}  mean {ds.x.mean():+.3f}  sd"
            f" {ds.x.std():.3f}"
        )
        print(f"{'':15s} label counts {ds.label_counts()}")

# %% [markdown]
# The inputs are normalised with the standard per-channel statistics, so the MNIST training set has mean 0
# and standard deviation 1 exactly (to three decimals), and the CIFAR-10 subset nearly so: its statistics
# differ slightly from the full training set's.
