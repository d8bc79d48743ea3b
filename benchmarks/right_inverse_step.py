"""Cost of one step of each method compared in chapter 08 (the right-inverse question), side by side.

    python benchmarks/right_inverse_step.py --json results/benchmarks/right_inverse_step-cpu.json
    python benchmarks/right_inverse_step.py --settings mnist cifar10-subset

At each setting of `revgn.experiments.right_inverse` (float64, the seed-0 network, one real batch), every
method steps on its own copy of the model in interleaved rounds (`revgn.bench.time_optimizers`); the table
gives median seconds per step, the ratio to the layer-wise GN step measured in the same run, and the mean
CG iterations of a Moore-Penrose step (solved to the setting's cg_rtol). Chapter 08 reads the JSON.
"""
from __future__ import annotations

import argparse
import os
import statistics
from dataclasses import replace

import numpy as np
import torch

from revgn.bench import time_optimizers
from revgn.experiments import right_inverse as ri
from revgn.losses import get_loss
from revgn.runs import splits_of
from revgn.spec import OptimSpec
from revgn.train import train
from revgn.utils import atomic_write_json, run_metadata

#: steps timed next to METHODS but not swept: the logits' Moore-Penrose step by CG, to show what the direct solve saves
TIMED_ONLY = {"Moore-Penrose GN (logits), by CG": replace(ri.METHODS["Moore-Penrose GN (logits)"], solver="cg"),
              "Moore-Penrose GN (x_L), by PCG": replace(ri.METHODS["Moore-Penrose GN (x_L)"], solver="pcg")}


def step_costs(setting: str, repeats: int = 5, labels=None, after_epochs: int = 0) -> dict[str, dict[str, float]]:
    """Seconds per step of every method (and of TIMED_ONLY; or of `labels`) on one batch of the setting, side
    by side (`revgn.bench.time_optimizers`: interleaved rounds, from the seed-0 initial network, or from it
    trained `after_epochs` epochs by the layer-wise step at rate 1, where CG needs more iterations): {label:
    {"median_s", "cg_iterations"}} (the mean CG iterations of the timed steps, for the steps solved by CG; 0
    otherwise)."""
    spec = ri.SETTINGS[setting]
    sets = splits_of(spec.data)
    x, y = sets["train"].x[:spec.batch_size], sets["train"].y[:spec.batch_size]
    model = spec.model.build(x.shape[1], sets["train"].num_classes, getattr(torch, spec.data.dtype))
    if after_epochs:
        train(model, OptimSpec("gn", 1.0).build(spec.seed), sets["train"], loss=spec.loss, epochs=after_epochs,
              batch_size=spec.batch_size, seed=spec.seed, progress=False)
    everything = {**ri.METHODS, **TIMED_ONLY}
    opts = {label: everything[label].build(spec.seed) for label in (labels or everything)}
    iterations = {label: [] for label in opts}

    class Counting:  # keeps each step's CG iterations (a list append: nothing next to a step's cost)
        def __init__(self, label, opt):
            self.label, self.opt = label, opt

        def setup(self, model, batch_size):
            self.opt.setup(model, batch_size)

        def step(self, *args):
            value = self.opt.step(*args)
            if "cg_iterations" in self.opt.step_info:
                iterations[self.label].append(self.opt.step_info["cg_iterations"])
            return value

    times = time_optimizers(model, x, y, get_loss(spec.loss), {k: Counting(k, o) for k, o in opts.items()}, repeats)
    return {label: {"median_s": statistics.median(t), "cg_iterations": float(np.mean(iterations[label][1:]))
                    if iterations[label] else 0.0} for label, t in times.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--settings", nargs="+", default=["mnist"], choices=sorted(ri.SETTINGS))
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--json", help="also write the results (with date, device, commit) to this file")
    ap.add_argument("--pcg", action="store_true", help="only x_L's Moore-Penrose step by CG and by preconditioned "
                    "CG (and the layer-wise step), at init and after --after-epochs of training")
    ap.add_argument("--after-epochs", type=int, default=2)
    args = ap.parse_args()
    meta = {**run_metadata("cpu"), "load_average_1min": os.getloadavg()[0]}  # other processes share the cores?
    print(f"# Right-inverse step costs: {meta['date']}, {meta['device']}, commit {meta['commit']}, "
          f"{meta['threads']} threads, float64, load average {meta['load_average_1min']:.1f}\n")
    out = {"meta": meta, "args": vars(args), "settings": {}}
    if args.pcg:
        labels = ["layer-wise GN", "Moore-Penrose GN (x_L)", "Moore-Penrose GN (x_L), by PCG"]
        print("| setting | network | x_L by CG: s per step | iterations | by PCG: s per step | iterations | "
              "CG / PCG time |\n|---|---|---|---|---|---|---|")
        for setting in args.settings:
            for when, epochs in (("at init", 0), (f"after {args.after_epochs} epochs", args.after_epochs)):
                c = step_costs(setting, args.repeats, labels, after_epochs=epochs)
                cg, pcg = c[labels[1]], c[labels[2]]
                print(f"| {setting} | {when} | {cg['median_s']:.3g} | {cg['cg_iterations']:.0f} | "
                      f"{pcg['median_s']:.3g} | {pcg['cg_iterations']:.0f} | {cg['median_s'] / pcg['median_s']:.1f}x |")
                out["settings"].setdefault(setting, {})[when] = c
        if args.json:
            atomic_write_json(args.json, out)
            print(f"\nwrote {args.json}")
        return
    for setting in args.settings:
        costs = step_costs(setting, args.repeats)
        base = costs["layer-wise GN"]["median_s"]
        print(f"## {setting}\n\n| method | s per step | / layer-wise GN | CG iterations |\n|---|---|---|---|")
        for label, c in costs.items():
            print(f"| {label} | {c['median_s']:.3g} | {c['median_s'] / base:.1f}x | "
                  f"{c['cg_iterations']:.0f} |" if c["cg_iterations"] else
                  f"| {label} | {c['median_s']:.3g} | {c['median_s'] / base:.1f}x | - |")
        print()
        out["settings"][setting] = costs
    if args.json:
        atomic_write_json(args.json, out)
        print(f"wrote {args.json}")


if __name__ == "__main__":
    torch.manual_seed(0)
    main()
