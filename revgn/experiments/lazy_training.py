"""The lazy-training experiments (Chizat, Oyallon & Bach 2019), each a function the chapter calls.

All of them train through `revgn.train.train`; all two-layer runs are full-batch GD on the square loss in
float64. They are not `revgn.spec.RunSpec` runs: their models (scaled and centred wrappers, linearisations of
a network) and their teacher-student data are outside the run-spec schema, and each takes seconds to minutes,
so the chapter computes them when executed and records nothing.
"""
from __future__ import annotations

import numpy as np
import torch

from ..data import TeacherStudent
from ..functional import snapshot
from ..kernels import kappa, pattern_stability, relu_patterns
from ..linearize import Centered, Linearized, Scaled, ScaledSquareLoss, parameter_distance
from ..models import ConvNet, TwoLayerReLU
from ..optimizers import SGD
from ..train import train


def loglog_slope(x, y) -> float:
    """Least-squares slope of log10(y) against log10(x)."""
    return float(np.polyfit(np.log10(np.asarray(x, float)), np.log10(np.asarray(y, float)), 1)[0])


def gd_step_size(tau: float, cap: float = 10.0) -> float:
    """The paper's step size for init scale tau: min(cap, 0.1 / tau^2) (time rescaled for 2-homogeneity)."""
    return min(cap, 0.1 / tau ** 2)


def unit_trajectories(ts: TeacherStudent, tau: float, width: int = 16, steps: int = 10_000, every: int = 100,
                      seed: int = 0) -> tuple[np.ndarray, np.ndarray, float]:
    """Train a two-layer student on `ts` and record each unit's position b_j a_j (Fig. 1 of the chapter).

    Returns positions (snapshots, width, d), the signs of the output weights b_j at init, and the final
    test loss.
    """
    model = TwoLayerReLU(ts.teacher.shape[1], width, init_scale=tau, seed=seed)
    signs = torch.sign(model.b.detach()).numpy()
    snaps: list[np.ndarray] = []
    record = lambda m, _epoch: snaps.append((m.b[:, None] * m.a).detach().numpy().copy())
    hist = train(model, SGD(gd_step_size(tau, cap=1.0)), ts.train, test_set=ts.test, loss="mse", epochs=steps,
                 eval_every=every, callbacks=[record], progress=False)
    return np.stack(snaps), signs, hist.final("test_loss")


def test_loss_vs_init_scale(ts: TeacherStudent, taus, width: int = 50, steps: int = 2000,
                            seeds=(0, 1, 2)) -> dict[str, np.ndarray]:
    """Final and best test loss of a symmetric-init student, for each init scale tau and seed (Fig. 2).

    Returns arrays of shape (len(taus), len(seeds)) under "final" and "best".
    """
    final = np.zeros((len(taus), len(seeds)))
    best = np.zeros_like(final)
    d = ts.teacher.shape[1]
    for i, tau in enumerate(taus):
        for j, seed in enumerate(seeds):
            model = TwoLayerReLU(d, width, init_scale=float(tau), seed=seed)
            hist = train(model, SGD(gd_step_size(float(tau))), ts.train, test_set=ts.test, loss="mse",
                         epochs=steps, eval_every=max(1, steps // 50), progress=False)
            final[i, j], best[i, j] = hist.final("test_loss"), min(hist.epochs["test_loss"])
    return {"final": final, "best": best}


def linearisation_gaps(ts: TeacherStudent, alphas, *, centering: str = "symmetric", width: int = 100,
                       steps: int = 400, lr: float = 0.5, seed: int = 0) -> dict[str, np.ndarray]:
    """Theorem 2.2 measured: train alpha h and its linearisation alpha h_bar for the same horizon T = lr * steps.

    centering: "symmetric" (mirrored units, centering (b)) or "copy" (subtract a frozen copy, centering (a)).
    Returns, per alpha: "move" ||w_alpha(T) - w0||, "param_gap" ||w_alpha(T) - w_bar_alpha(T)||, and "function_gap"
    ||alpha h(w_alpha(T)) - alpha h_bar(w_bar_alpha(T))|| on the held-out inputs, and "train_loss".
    """
    if centering not in ("symmetric", "copy"):
        raise ValueError(f"centering must be 'symmetric' or 'copy', got {centering!r}")
    x_test = ts.test[0]
    out = {k: [] for k in ("move", "param_gap", "function_gap", "train_loss")}
    for alpha in alphas:
        alpha = float(alpha)
        net = TwoLayerReLU(ts.teacher.shape[1], width, init_scale=1.0, seed=seed, symmetric=centering == "symmetric")
        h = net if centering == "symmetric" else Centered(net)
        w0 = snapshot(h)
        lin = Linearized(h)
        loss = ScaledSquareLoss(alpha)
        hist = train(Scaled(h, alpha), SGD(lr), ts.train, loss=loss, epochs=steps, eval_every=steps, progress=False)
        train(Scaled(lin, alpha), SGD(lr), ts.train, loss=loss, epochs=steps, eval_every=steps, progress=False)
        w, w_bar = snapshot(h), {k: v.detach() for k, v in lin.current().items()}
        with torch.no_grad():
            out["function_gap"].append((alpha * h(x_test) - alpha * lin(x_test)).norm().item())
        out["move"].append(parameter_distance(w, w0))
        out["param_gap"].append(parameter_distance(w, w_bar))
        out["train_loss"].append(hist.final("train_loss"))
    return {k: np.array(v) for k, v in out.items()}


def kappa_vs_width(ts: TeacherStudent, widths, scalings=("ntk", "mean-field"), n: int = 100,
                   seeds=(0, 1, 2)) -> dict[str, np.ndarray]:
    """Median over seeds of kappa at init of a symmetric-init student (h(w0) = 0, residual ||y||), per width.

    At small widths ||Dh||^2 is dominated by a sum of few squared output weights, so a single seed's kappa
    fluctuates by factors of several; the median over seeds shows the trend.
    """
    x, y = ts.train[0][:n], ts.train[1][:n]
    return {s: np.median([[kappa(TwoLayerReLU(x.shape[1], m, output_scaling=s, seed=sd), x, y).kappa
                           for m in widths] for sd in seeds], axis=0) for s in scalings}


def kappa_vs_alpha(ts: TeacherStudent, alphas, width: int = 64, n: int = 100, seed: int = 0) -> np.ndarray:
    """kappa at init of alpha h for a centred (symmetric-init) student: kappa_h / alpha in theory."""
    x, y = ts.train[0][:n], ts.train[1][:n]
    net = TwoLayerReLU(x.shape[1], width, seed=seed)
    return np.array([kappa(Scaled(net, float(a)), x, y).kappa for a in alphas])


def cnn_alpha_sweep(train_set, test_set, alphas, *, config=(16, "M", 32, "M", 64, "M"), epochs: int = 4,
                    batch_size: int = 100, lr: float = 0.2, momentum: float = 0.9, decay: float = 1e-3,
                    float64_from: float = 1e4, probe: int = 200, seed: int = 0, device="cpu") -> dict[str, np.ndarray]:
    """Centred, output-scaled CNN trained on F_alpha with SGD (momentum, lr_t = lr_0 / (1 + decay t)).

    The step is lr * min(1, alpha): for alpha < 1 the gradient of F_alpha grows like 1/alpha, so a fixed step
    would diverge. Models with alpha >= `float64_from` run in float64 (the centred output is a difference
    of two nearly equal numbers). Returns per alpha: test accuracy, train accuracy, and the fraction of
    ReLU units (on `probe` test images) whose on/off state is unchanged since init.
    """
    out = {k: [] for k in ("test_acc", "train_acc", "pattern_stability")}
    for alpha in alphas:
        alpha = float(alpha)
        dtype = torch.float64 if alpha >= float64_from else torch.float32
        net = ConvNet(config, in_channels=train_set.x.shape[1], num_classes=train_set.num_classes, seed=seed,
                      dtype=dtype).to(device)
        xtr, xte = train_set.x.to(device, dtype), test_set.x.to(device, dtype)
        p0 = relu_patterns(net, xte[:probe])
        hist = train(Scaled(Centered(net), alpha), SGD(lr * min(1.0, alpha), momentum=momentum, decay=decay),
                     (xtr, train_set.y), test_set=(xte, test_set.y), loss=ScaledSquareLoss(alpha), epochs=epochs,
                     batch_size=batch_size, seed=seed, progress=False)
        out["test_acc"].append(hist.final("test_acc"))
        out["train_acc"].append(hist.final("train_acc"))
        out["pattern_stability"].append(pattern_stability(p0, relu_patterns(net, xte[:probe])))
    return {k: np.array(v) for k, v in out.items()}
