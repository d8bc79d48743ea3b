"""Cost of one exact GN step against SGD, Adam, matrix-free GN and explicit-Jacobian GN on a RevMLP.

    python benchmarks/gn_step.py                  # the full benchmark, CPU or GPU
    python benchmarks/gn_step.py --json results/benchmarks/gn_step-cpu.json

Prints tables of median step times (seconds), the ratios measured side by side in the same run, and peak
memory of a GN step and an SGD step. See benchmarks/README.md for recorded results.
"""
from __future__ import annotations

import argparse

import torch

from revgn.bench import Shape, compare, jacobian_bytes, route_row
from revgn.utils import atomic_write_json, resolve_device, run_metadata

MAIN = [Shape(784, 2048, 2, 256), Shape(784, 4096, 2, 512), Shape(3072, 2048, 2, 256)]
#: exact GN's Gram routes, on random inputs at MAIN's shapes and the paper's MNIST shape, and on MNIST images
PAPER = Shape(784, 8000, 2, 1024)
ROUTES = [(s, "random") for s in MAIN + [PAPER]] + [(Shape(784, 2048, 2, 256), "mnist"), (PAPER, "mnist")]
# Shapes for the explicit-Jacobian comparison, largest first; the first whose Jacobian fits the budget is used.
EXPLICIT = [Shape(784, 1024, 2, 128), Shape(784, 512, 2, 64), Shape(784, 256, 2, 32)]
BASE = Shape(784, 2048, 2, 256)
SCALING = {"depth": [Shape(784, 2048, L, 256) for L in (1, 2, 4, 8)],
           "h": [Shape(784, h, 2, 256) for h in (1024, 2048, 4096, 8192)],
           "n": [Shape(784, 2048, 2, n) for n in (64, 128, 256, 512, 1024)]}


def table(rows: list[dict], cols: list[str]) -> str:
    head = "| " + " | ".join(cols) + " |\n|" + "---|" * len(cols) + "\n"
    return head + "\n".join("| " + " | ".join(fmt(r.get(c), c) for c in cols) + " |" for r in rows)


def fmt(v, col: str) -> str:
    if v is None:
        return "-"
    if "/" in col:
        return f"{v:.2f}x"
    if col.endswith("_share"):
        return f"{v:.0%}"
    if "residual" in col:
        return f"{v:.1e}"
    if col.endswith("_bytes"):
        return f"{v / 2**20:.0f} MiB"
    if col.endswith("_s"):
        return f"{v * 1e3:.1f} ms" if v < 10 else f"{v:.1f} s"
    return f"{v:,}" if isinstance(v, int) else str(v)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--repeats", type=int, default=11)
    ap.add_argument("--cg-iterations", type=int, default=10, help="CG iterations per matrix-free GN step")
    ap.add_argument("--explicit-budget-gb", type=float, default=2.0, help="largest explicit Jacobian to form")
    ap.add_argument("--no-scaling", action="store_true")
    ap.add_argument("--routes-only", action="store_true", help="only the table of exact GN's Gram routes")
    ap.add_argument("--json", help="also write the results (with date, device, commit) to this file")
    args = ap.parse_args()
    device = resolve_device(args.device)
    meta = run_metadata(device)
    print(f"# GN step benchmark: {meta['date']}, {meta['device']}, commit {meta['commit']}, "
          f"torch {meta['torch']}, {meta['threads']} threads, float32, cross-entropy, C=10\n")
    out = {"meta": meta, "args": vars(args)}

    rows = [route_row(s, args.repeats, device, data) for s, data in ROUTES]
    print("## Exact GN's Gram routes: float64 (the default) and refined (float32 Gram, refined against the "
          "features)\n")
    print(table(rows, ["shape", "data", "gn_s", "gn-refined_s", "sgd_s", "adam_s", "gn/sgd", "gn-refined/sgd",
                       "gn/adam", "gn-refined/adam", "gn_pinv_share", "gn-refined_pinv_share"]))
    print("\n_pinv_share: the part of the step spent in the pseudo-inverses (Gram, factorisation, solve, "
          "refinement).\n\nJ Delta = eps, relative residual of each route (float32: the benchmarked model; "
          "float64: the same weights and batch in float64)\n")
    print(table(rows, ["shape", "data", "gn_residual_f32", "gn-refined_residual_f32", "gn_residual_f64",
                       "gn-refined_residual_f64"]))
    out["routes"] = rows
    if args.routes_only:
        if args.json:
            atomic_write_json(args.json, out)
            print(f"\nwrote {args.json}")
        return

    main_rows = [compare(s, ["gn", "gn-f32gram", "sgd", "adam", "gn-cg"], args.repeats, device, ("gn", "sgd"), args.cg_iterations)
                 for s in MAIN]
    for r, s in zip(main_rows, MAIN):
        r["explicit"] = f"J needs {jacobian_bytes(s) / 2**30:.0f} GiB: does not fit"
    print(f"## Step time and peak memory (matrix-free GN: {args.cg_iterations} CG iterations per step)\n")
    print(table(main_rows, ["shape", "params", "gn_s", "gn-f32gram_s", "sgd_s", "adam_s", "gn-cg_s", "gn/sgd",
                            "gn/adam", "gn_peak_bytes", "sgd_peak_bytes", "gn/sgd_memory", "explicit"]))
    print("\ngn-f32gram: the same step with the Gram matrix formed in float32 (eigen/Cholesky still float64); it "
          "can certify exactness only for well-conditioned features (cond(A) below ~50 at n=256).")
    out["main"] = main_rows

    budget = args.explicit_budget_gb * 2**30
    fits = [s for s in EXPLICIT if jacobian_bytes(s) <= budget]
    if fits:
        s = fits[0]
        row = compare(s, ["gn", "gn-explicit", "sgd"], max(3, args.repeats // 4), device)
        row["speedup"] = row["gn-explicit_s"] / row["gn_s"]
        print(f"\n## Against explicit-Jacobian GN (largest shape whose J fits in {args.explicit_budget_gb:g} GB: "
              f"{jacobian_bytes(s) / 2**30:.2f} GiB)\n")
        print(table([row], ["shape", "params", "gn_s", "gn-explicit_s", "sgd_s", "gn/sgd"]))
        print(f"\nTractable GN is {row['speedup']:.0f}x faster than explicit-Jacobian GN at {s}.")
        out["explicit"] = row

    if not args.no_scaling:
        out["scaling"] = {}
        for factor, shapes in SCALING.items():
            rows = [compare(s, ["gn", "sgd"], max(3, args.repeats // 2), device) for s in shapes]
            print(f"\n## Scaling with {factor} (others as in {BASE})\n")
            print(table(rows, ["shape", "params", "gn_s", "sgd_s", "gn/sgd"]))
            out["scaling"][factor] = rows
    if args.json:
        atomic_write_json(args.json, out)
        print(f"\nwrote {args.json}")


if __name__ == "__main__":
    torch.manual_seed(0)
    main()
