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

import torch

from revgn.experiments import right_inverse as ri
from revgn.utils import atomic_write_json, run_metadata


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
                c = ri.step_costs(setting, args.repeats, labels, after_epochs=epochs)
                cg, pcg = c[labels[1]], c[labels[2]]
                print(f"| {setting} | {when} | {cg['median_s']:.3g} | {cg['cg_iterations']:.0f} | "
                      f"{pcg['median_s']:.3g} | {pcg['cg_iterations']:.0f} | {cg['median_s'] / pcg['median_s']:.1f}x |")
                out["settings"].setdefault(setting, {})[when] = c
        if args.json:
            atomic_write_json(args.json, out)
            print(f"\nwrote {args.json}")
        return
    for setting in args.settings:
        costs = ri.step_costs(setting, args.repeats)
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
