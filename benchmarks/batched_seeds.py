"""Does training a point's seeds as one batched model beat training them one after another? (Adam, RevMLP)

    python benchmarks/batched_seeds.py                       # book-scale shapes, 5 seeds
    python benchmarks/batched_seeds.py --json results/benchmarks/batched_seeds-cpu.json

The seeds of a point differ in their initial weights, fixed projections and batch order. Batched, their
parameters and buffers are stacked (`torch.func.stack_module_state`), the forward pass is `vmap`ped over the
seed axis (`functional_call`), and one Adam steps the stacked tensors: Adam is elementwise and the summed loss
has per-seed gradients, so each seed takes exactly its own step. Both routes are timed in alternation in one
run (median over repeats) and checked to take the same steps. The ratio decides whether batched seeds are
worth adopting in `revgn.train` (they are kept only if they win).

Exact GN's own linear algebra is measured the same way: per half-layer, the float64 Gram matrix G = A A^T of
the n x m features, its Cholesky factor, G^{-1} T and the weight step (G^{-1} T)^T A (`revgn.pinv.features_pinv`,
eq-gram), for five seeds one after another against one batched call on the stacked (S, n, m) features.
"""
from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch
from torch.func import functional_call, stack_module_state, vmap

from revgn.losses import CrossEntropy
from revgn.models import RevMLP
from revgn.utils import atomic_write_json, run_metadata

SHAPES = [(784, 256, 2, 64), (784, 512, 2, 128), (784, 2048, 2, 256)]  # (d, h, L, n)


def models(d, h, L, seeds, dtype=torch.float32):
    return [RevMLP(d, 10, depth=L, hidden=h, init_std=1e-3, seed=s, dtype=dtype) for s in seeds]


def batches(d, n, seeds, steps, dtype=torch.float32):
    g = torch.Generator().manual_seed(0)
    return [(torch.randn(len(seeds), n, d, generator=g, dtype=dtype), torch.randint(0, 10, (len(seeds), n), generator=g))
            for _ in range(steps)]


def sequential(nets, data, lr=1e-3):
    loss = CrossEntropy()
    opts = [torch.optim.Adam([p for p in m.parameters() if p.requires_grad], lr=lr) for m in nets]

    def step(x, y):
        for i, (m, o) in enumerate(zip(nets, opts)):
            o.zero_grad(set_to_none=True)
            loss(m(x[i]), y[i]).backward()
            o.step()

    return step


def batched(nets, data, lr=1e-3):
    params, buffers = stack_module_state(nets)  # trainable leaves (S, ...) and fixed buffers (S, ...)
    trained = {k: v for k, v in params.items() if v.requires_grad}
    frozen = {k: v.detach() for k, v in params.items() if not v.requires_grad}
    base = copy.deepcopy(nets[0]).to("meta")
    loss = CrossEntropy()
    per_seed = lambda p, b, x, y: loss(functional_call(base, {**p, **b}, (x,)), y)
    opt = torch.optim.Adam(list(trained.values()), lr=lr)

    def step(x, y):
        opt.zero_grad(set_to_none=True)
        vmap(per_seed)(trained, {**frozen, **buffers}, x, y).sum().backward()  # the sum: per-seed gradients
        opt.step()

    return step, trained


def same_steps(shape=(784, 64, 2, 16), seeds=3, steps=3) -> float:
    """The largest relative difference between the two routes' parameters after the same steps, in float64
    (in float32, Adam's first steps amplify rounding in near-zero gradients to differences of order lr)."""
    d, h, L, n = shape
    data = batches(d, n, range(seeds), steps, torch.float64)
    seq_nets = models(d, h, L, range(seeds), torch.float64)
    seq, (bat, stacked) = sequential(seq_nets, data), batched(models(d, h, L, range(seeds), torch.float64), data)
    for x, y in data:
        seq(x, y)
        bat(x, y)
    with torch.no_grad():
        return max(float((stacked[k][i] - p).abs().max() / p.abs().max()) for i, m in enumerate(seq_nets)
                   for k, p in m.named_parameters() if k in stacked)


def measure(shape, seeds=5, steps=6, repeats=5):
    d, h, L, n = shape
    S = range(seeds)
    data = batches(d, n, S, steps)
    seq_nets, bat_nets = models(d, h, L, S), models(d, h, L, S)
    seq, (bat, stacked) = sequential(seq_nets, data), batched(bat_nets, data)
    times = {"sequential": [], "batched": []}
    for r in range(repeats):  # alternate, so a busy machine slows both alike
        for name, step in (("sequential", seq), ("batched", bat)):
            t = time.perf_counter()
            for x, y in data:
                step(x, y)
            times[name].append((time.perf_counter() - t) / steps)
    med = {k: statistics.median(v) for k, v in times.items()}
    return {"shape": f"d={d} h={h} L={L} n={n}", "seeds": seeds, "sequential_s": med["sequential"],
            "batched_s": med["batched"], "batched/sequential": med["batched"] / med["sequential"]}


GRAM_SHAPES = [(64, 256, 392), (256, 2048, 392), (1024, 2048, 392), (1024, 4096, 392)]  # (n, m, k): batch, features, targets


def gram_step(A, T):
    """The exact step's linear algebra of one half-layer (eq-gram), for (n, m) or stacked (S, n, m) features."""
    Ag, Tg = A.double(), T.double()
    chol, info = torch.linalg.cholesky_ex(Ag @ Ag.mT)
    if info.any():
        raise RuntimeError("the benchmark's random features gave a singular Gram matrix")
    return torch.cholesky_solve(Tg, chol).to(A.dtype).mT @ A


def measure_gram(shape, seeds=5, repeats=5):
    n, m, k = shape
    g = torch.Generator().manual_seed(0)
    A, T = torch.randn(seeds, n, m, generator=g), torch.randn(seeds, n, k, generator=g)
    routes = {"sequential": lambda: torch.stack([gram_step(A[i], T[i]) for i in range(seeds)]),
              "batched": lambda: gram_step(A, T)}
    out = {name: route() for name, route in routes.items()}
    diff = float((out["batched"] - out["sequential"]).abs().max() / out["sequential"].abs().max())
    times = {name: [] for name in routes}
    for _ in range(repeats):  # alternate, so a busy machine slows both alike
        for name, route in routes.items():
            t = time.perf_counter()
            route()
            times[name].append(time.perf_counter() - t)
    med = {k_: statistics.median(v) for k_, v in times.items()}
    return {"shape": f"n={n} m={m} k={k}", "seeds": seeds, "sequential_s": med["sequential"],
            "batched_s": med["batched"], "batched/sequential": med["batched"] / med["sequential"],
            "max_relative_difference": diff}


def print_rows(title, rows):
    print(f"| {title} | seeds | sequential | batched | batched / sequential |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['shape']} | {r['seeds']} | {r['sequential_s'] * 1e3:.1f} ms | {r['batched_s'] * 1e3:.1f} ms | "
              f"{r['batched/sequential']:.2f}x |")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--json", help="record the results here (with date, device, commit)")
    a = p.parse_args(argv)
    torch.manual_seed(0)
    diff = same_steps()
    print(f"the same steps: largest relative difference of the parameters after 3 float64 steps: {diff:.1e}")
    rows = [measure(s, a.seeds, repeats=a.repeats) for s in SHAPES]
    print_rows("Adam step, shape (per step)", rows)
    gram = [measure_gram(s, a.seeds, repeats=a.repeats) for s in GRAM_SHAPES]
    print(f"exact GN's half-layer linear algebra: batched and sequential agree to "
          f"{max(r['max_relative_difference'] for r in gram):.1e} (relative, float32 features)")
    print_rows("GN Gram step, shape (per call)", gram)
    if a.json:
        atomic_write_json(a.json, {"rows": rows, "gram_rows": gram, "float64_max_relative_difference": diff,
                                   "provenance": run_metadata("cpu"), "threads": torch.get_num_threads()})


if __name__ == "__main__":
    main()
