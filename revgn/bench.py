"""Side-by-side timings and peak memory of one optimiser step on a RevMLP.

Every optimiser runs on its own copy of the same model and batch; timings are taken in interleaved rounds
(each round times every method once), so slow drifts of the machine hit all methods alike. Peak memory is
measured in a fresh process per method on the CPU (the rise of the resident set over the step, read from
Linux's resettable high-water mark) and with the allocator's statistics on CUDA.
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass

import torch

from .gn_optimizers import GaussNewton, MoorePenroseGaussNewton
from .losses import CrossEntropy
from .models import RevMLP
from .optimizers import SGD, Adam, Optimizer
from .pinv import Pinv


@dataclass(frozen=True)
class Shape:
    d: int
    h: int
    depth: int
    n: int
    classes: int = 10

    def __str__(self) -> str:
        return f"d={self.d} h={self.h} L={self.depth} n={self.n}"

    @property
    def params(self) -> int:
        return 2 * self.depth * (self.d // 2) * self.h


def make_optimizer(name: str, cg_iterations: int = 10) -> Optimizer:
    """The library's optimiser a benchmark times under `name`. "gn-cg": the Moore-Penrose step by matrix-free
    CG, stopped after `cg_iterations` whatever its residual (a lower bound on a converged step's cost);
    "gn-explicit": the same step from the whole Jacobian, pseudo-inverted."""
    return {"gn": lambda: GaussNewton(1.0), "gn-f32gram": lambda: GaussNewton(1.0, Pinv(gram_dtype=torch.float32)),
            "gn-refined": lambda: GaussNewton(1.0, Pinv(gram="refined")),
            "sgd": lambda: SGD(0.01), "adam": lambda: Adam(1e-4),
            "gn-cg": lambda: MoorePenroseGaussNewton(1.0, rtol=1e-12, maxiter=cg_iterations, refuse=False),
            "gn-explicit": lambda: MoorePenroseGaussNewton(1.0, solver="explicit", refuse=False)}[name]()


def make_problem(shape: Shape, device="cpu", dtype=torch.float32, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    model = RevMLP(shape.d, shape.classes, depth=shape.depth, hidden=shape.h, seed=seed, dtype=dtype, device=device)
    x = torch.randn(shape.n, shape.d, generator=g, dtype=dtype).to(device)
    y = torch.randint(0, shape.classes, (shape.n,), generator=g).to(device)
    return model, x, y


def _sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def time_steps(shape: Shape, methods: list[str], repeats: int = 5, device="cpu", cg_iterations: int = 10,
               seed: int = 0) -> dict[str, list[float]]:
    """Seconds per step for each method: one warm-up step, then `repeats` interleaved rounds."""
    model, x, y = make_problem(shape, device, seed=seed)
    return time_optimizers(model, x, y, CrossEntropy(), {m: make_optimizer(m, cg_iterations) for m in methods},
                           repeats, device)


def time_optimizers(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, loss, optimizers: dict[str, Optimizer],
                    repeats: int = 5, device="cpu") -> dict[str, list[float]]:
    """Seconds per step of each optimiser, each on its own copy of `model`, on the batch (x, y): one warm-up
    step, then `repeats` interleaved rounds (every optimiser once per round). Each copy keeps training, so a
    step's cost is that of the states it passes through."""
    runs = {m: (copy.deepcopy(model), opt) for m, opt in optimizers.items()}
    for net, opt in runs.values():
        opt.setup(net, len(x))
        opt.step(net, x, y, loss)
    times: dict[str, list[float]] = {m: [] for m in runs}
    for _ in range(repeats):
        for m, (net, opt) in runs.items():
            _sync(device)
            t0 = time.perf_counter()
            opt.step(net, x, y, loss)
            _sync(device)
            times[m].append(time.perf_counter() - t0)
    return times


def _rss_kib(field: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not found in /proc/self/status")


def _step_peak_bytes_here(shape: Shape, method: str, device="cpu") -> int:
    model, x, y = make_problem(shape, device)
    opt = make_optimizer(method)
    opt.setup(model, shape.n)
    loss = CrossEntropy()
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        opt.step(model, x, y, loss)
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) - base
    base = _rss_kib("VmRSS")
    with open("/proc/self/clear_refs", "w") as fh:  # resets VmHWM to the current resident set
        fh.write("5")
    opt.step(model, x, y, loss)
    return (_rss_kib("VmHWM") - base) * 1024


def step_peak_bytes(shape: Shape, method: str, device="cpu") -> int:
    """Peak extra memory of the first step of `method` (CPU: in a fresh process; CUDA: allocator stats)."""
    if torch.device(device).type == "cuda":
        return _step_peak_bytes_here(shape, method, device)
    cmd = [sys.executable, "-m", "revgn.bench", "--memory-probe", method, "--shape",
           json.dumps(asdict(shape))]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, env={**os.environ, "OMP_NUM_THREADS":
                                                                              str(torch.get_num_threads())})
    return int(out.stdout.strip().splitlines()[-1])


def mnist_problem(shape: Shape, device="cpu", dtype=torch.float32, seed: int = 0):
    """`make_problem` with the first n MNIST training images and labels (d = 784): real features, whose
    conditioning decides how much work route "refined" does (`revgn.pinv.refined_features_pinv`)."""
    from .data import load

    if shape.d != 784:
        raise ValueError(f"MNIST images have d = 784, not {shape.d}")
    ds = load("mnist", "train", n=shape.n)
    model = RevMLP(shape.d, shape.classes, depth=shape.depth, hidden=shape.h, seed=seed, dtype=dtype, device=device)
    return model, ds.x.to(device, dtype), ds.y.to(device)


def gn_residual(model: RevMLP, x: torch.Tensor, y: torch.Tensor, pinv: Pinv) -> float:
    """||J Delta - eps|| / ||eps|| of exact GN's direction Delta (eq-stack) on the batch, with J Delta the
    logits' directional derivative (one jvp) in the model's dtype."""
    from torch.func import functional_call, jvp

    from .gn import gn_direction

    with torch.no_grad():
        eps = CrossEntropy().error(model(x), y)
    params = {k: v.detach() for k, v in model.named_parameters()}
    direction = gn_direction(model, x, eps, pinv)
    tangent = {k: direction.get(k, torch.zeros_like(v)) for k, v in params.items()}
    _, moved = jvp(lambda p: functional_call(model, p, (x,)), (params,), (tangent,))
    return ((moved - eps).norm() / eps.norm()).item()


def pinv_seconds(model: RevMLP, x: torch.Tensor, y: torch.Tensor, opt: Optimizer, repeats: int = 3) -> tuple[float, float]:
    """Median seconds of a step of `opt` and of the part of it spent in exact GN's pseudo-inverses
    (`revgn.pinv.features_pinv`: the Gram matrix, its factorisation, the solve, any refinement), timed by
    wrapping that function for the duration."""
    from . import gn

    spent, inner, steps = [0.0], gn.features_pinv, []

    def timed(*args, **kwargs):
        t0 = time.perf_counter()
        out = inner(*args, **kwargs)
        spent[0] += time.perf_counter() - t0
        return out

    net, loss = copy.deepcopy(model), CrossEntropy()
    opt.setup(net, len(x))
    opt.step(net, x, y, loss)
    shares = []
    gn.features_pinv = timed
    try:
        for _ in range(repeats):
            spent[0] = 0.0
            t0 = time.perf_counter()
            opt.step(net, x, y, loss)
            steps.append(time.perf_counter() - t0)
            shares.append(spent[0])
    finally:
        gn.features_pinv = inner
    return statistics.median(steps), statistics.median(shares)


def route_row(shape: Shape, repeats: int = 5, device="cpu", data: str = "random") -> dict:
    """Exact GN's Gram routes ("float64", "refined") side by side with SGD and Adam on one problem: median
    step seconds from interleaved rounds, the ratios, each route's share of its step in the pseudo-inverses,
    and J Delta = eps's relative residual of each route in float32 (the benchmarked model) and in float64 (the
    same problem built in float64 from the same seed)."""
    make = mnist_problem if data == "mnist" else make_problem
    model, x, y = make(shape, device)
    routes = {"gn": Pinv(), "gn-refined": Pinv(gram="refined")}
    opts = {"gn": GaussNewton(1.0, routes["gn"]), "gn-refined": GaussNewton(1.0, routes["gn-refined"]),
            "sgd": SGD(0.01), "adam": Adam(1e-4)}
    times = time_optimizers(model, x, y, CrossEntropy(), opts, repeats, device)
    row = {"shape": str(shape), "data": data, **{f"{m}_s": statistics.median(t) for m, t in times.items()}}
    for m in ("gn", "gn-refined"):
        for other in ("sgd", "adam"):
            row[f"{m}/{other}"] = row[f"{m}_s"] / row[f"{other}_s"]
        step, inner = pinv_seconds(model, x, y, GaussNewton(1.0, routes[m]), max(1, repeats // 2))
        row[f"{m}_pinv_share"] = inner / step
        row[f"{m}_residual_f32"] = gn_residual(model, x, y, routes[m])
    model64, x64, y64 = make(shape, device, dtype=torch.float64)  # the same seed, initialised in float64
    for m in ("gn", "gn-refined"):
        row[f"{m}_residual_f64"] = gn_residual(model64, x64, y64, routes[m])
    return row


def jacobian_bytes(shape: Shape, dtype=torch.float32) -> int:
    """Memory of the explicit (n C) x p Jacobian."""
    return shape.n * shape.classes * shape.params * torch.finfo(dtype).bits // 8


def compare(shape: Shape, methods: list[str], repeats: int = 5, device="cpu", memory: tuple[str, ...] = (),
            cg_iterations: int = 10) -> dict:
    """One row of a benchmark table: median seconds per method, GN/other ratios, peak memory (bytes)."""
    times = time_steps(shape, methods, repeats, device, cg_iterations)
    row = {"shape": str(shape), "params": shape.params, **{f"{m}_s": statistics.median(t) for m, t in times.items()}}
    for m in methods:
        if m != "gn" and "gn" in methods:
            row[f"gn/{m}"] = row["gn_s"] / row[f"{m}_s"]
    for m in memory:
        row[f"{m}_peak_bytes"] = step_peak_bytes(shape, m, device)
    if "gn" in memory and "sgd" in memory:
        row["gn/sgd_memory"] = row["gn_peak_bytes"] / row["sgd_peak_bytes"]
    return row


if __name__ == "__main__":  # the memory probe run in a fresh process by `step_peak_bytes`
    parser = argparse.ArgumentParser()
    parser.add_argument("--memory-probe", required=True)
    parser.add_argument("--shape", required=True)
    args = parser.parse_args()
    print(_step_peak_bytes_here(Shape(**json.loads(args.shape)), args.memory_probe))
