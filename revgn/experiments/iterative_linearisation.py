"""The iterative-linearisation experiments (Goldwaser & Ge 2023), each a function the chapter calls.

They train through `revgn.train.train`, but not as `revgn.spec.RunSpec` runs: a linearised network re-anchored
every K steps and the explicit-Jacobian Levenberg-Marquardt step are outside the run-spec schema, and the runs
take minutes, so the chapter computes them when executed and records nothing.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from ..damping import kstep_gd_filter, lm_filter
from ..kernels import empirical_ntk, kernel_distance
from ..linearize import Linearized
from ..models import MLP, ConvNet
from ..gn_optimizers import DampedGaussNewton
from ..optimizers import SGD, IterativeLinearisation
from ..train import train


def feature_updates(K: float, steps: int) -> int:
    """How many times the anchor moves in `steps` steps (T / K)."""
    return 0 if K == math.inf else steps // int(K)


def mlp_factory(train_set, hidden=(64,)):
    """The book-scale model: seed -> a ReLU MLP for `train_set`'s flattened inputs."""
    return lambda seed: MLP(train_set.x.shape[1], train_set.num_classes, hidden=hidden, seed=seed)


def lenet_factory(train_set):
    """The paper-scale model: seed -> a small LeNet-like CNN (two conv layers of 6 and 16 channels)."""
    return lambda seed: ConvNet((6, "M", 16, "M"), in_channels=train_set.x.shape[1], num_classes=train_set.num_classes,
                                seed=seed)


def k_sweep(train_set, test_set, Ks, *, make_model=None, lr: float = 0.01, momentum: float = 0.9, epochs: int = 60,
            batch_size: int = 100, seeds=(0, 1), probe: int = 20, eval_every: int = 5, device="cpu") -> dict:
    """Train Linearized(model) with IterativeLinearisation(K, SGD) for each K and seed; square loss.

    make_model: seed -> network (default: `mlp_factory(train_set)`).

    Returns arrays (len(Ks), len(seeds)): "test_acc", "train_acc", "test_loss", "train_loss", and
    "kernel_distance" between the model's tangent kernel at the end (the NTK at its anchor) and at init, on
    `probe` training inputs; and "histories" (first seed) for the curves.
    """
    keys = ("test_acc", "train_acc", "test_loss", "train_loss", "kernel_distance")
    out = {k: np.zeros((len(Ks), len(seeds))) for k in keys}
    out["histories"] = []
    make_model = make_model or mlp_factory(train_set)
    x_probe = train_set.x[:probe].to(device)
    for i, K in enumerate(Ks):
        for j, seed in enumerate(seeds):
            net = make_model(seed).to(device)
            kernel0 = empirical_ntk(net, x_probe)
            lin = Linearized(net)
            hist = train(lin, IterativeLinearisation(K, SGD(lr, momentum=momentum)), train_set, test_set=test_set,
                         loss="mse", epochs=epochs, batch_size=batch_size, seed=seed, eval_every=eval_every,
                         progress=False)
            for k in keys[:4]:
                out[k][i, j] = hist.final(k)
            out["kernel_distance"][i, j] = kernel_distance(kernel0, empirical_ntk(lin.network("anchor"), x_probe))
            if j == 0:
                out["histories"].append(hist)
    return out


def damping_sweep(train_set, test_set, dampings, *, make_model=None, lr: float = 1.0, epochs: int = 1,
                  batch_size: int = 20, seed: int = 0, probe: int = 20, device="cpu") -> dict[str, np.ndarray]:
    """Levenberg-Marquardt (explicit Jacobian of each batch) at each damping mu; square loss.

    Returns per mu: final "test_acc", "train_loss" (inf if training diverged) and the "kernel_distance" of the
    network's NTK from init on `probe` training inputs.
    """
    from ..losses import NonFiniteLossError

    make_model = make_model or mlp_factory(train_set)
    out = {k: [] for k in ("test_acc", "train_loss", "kernel_distance")}
    x_probe = train_set.x[:probe].to(device)
    for mu in dampings:
        net = make_model(seed).to(device)
        kernel0 = empirical_ntk(net, x_probe)
        try:
            hist = train(net, DampedGaussNewton(lr, float(mu)), train_set, test_set=test_set, loss="mse",
                         epochs=epochs, batch_size=batch_size, seed=seed, progress=False)
            acc, tr, kd = hist.final("test_acc"), hist.final("train_loss"), kernel_distance(kernel0, empirical_ntk(net, x_probe))
        except NonFiniteLossError:
            acc, tr, kd = float("nan"), float("inf"), float("nan")
        out["test_acc"].append(acc)
        out["train_loss"].append(tr)
        out["kernel_distance"].append(kd)
    return {k: np.array(v) for k, v in out.items()}


def kept_fraction_kstep(lam: np.ndarray, eta: float, K: float) -> np.ndarray:
    """Fraction of each kernel eigendirection a K-step GD update keeps, relative to exact GN: lam phi(lam),
    with phi the K-step filter of `revgn.damping` (1 - (1 - eta lam)^K)."""
    lam = torch.as_tensor(lam, dtype=torch.float64)
    return (lam * kstep_gd_filter(lam, eta, K)).numpy()


def kept_fraction_lm(lam: np.ndarray, mu: float) -> np.ndarray:
    """The same for Levenberg-Marquardt damping mu: lam phi(lam) = lam / (lam + mu) (`revgn.damping.lm_filter`)."""
    lam = torch.as_tensor(lam, dtype=torch.float64)
    return (lam * lm_filter(lam, mu)).numpy()


def ntk_spectrum(model, x: torch.Tensor) -> np.ndarray:
    """Eigenvalues of the empirical NTK on x, ascending."""
    return torch.linalg.eigvalsh(empirical_ntk(model, x).double()).clamp_min(0).numpy()
