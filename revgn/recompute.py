"""Recompute records with the running code: the evidence that two code fingerprints give the same numbers.

A record made by other code (`revgn.fingerprint`) is stale until shown otherwise: `verify` recomputes the
cheapest few records of each other fingerprint, on their recorded thread count, and compares their histories
number for number (and a failed run's reason word for word); where every one is bit-identical, the
fingerprints join one class in `results/fingerprints.json` (with the recomputed keys as evidence) and their
records are fresh again. A measurement (`revgn.records.Measurement`) is recomputed by the function it names (`measured_by`) from its
setting, and its result compared the same way.

    python -m revgn.recompute results/regime_map [--sample 2] [--max-cost 10] [--only FINGERPRINT ...]
"""
from __future__ import annotations

import argparse
import importlib
import json
import sys
from pathlib import Path

import torch

from . import fingerprint
from .fingerprint import current, equivalence_classes, module_of, same_numbers
from .records import FromCode, Measurement, Record
from .runs import run
from .utils import atomic_write_json


def _cost(rec: FromCode) -> float:
    """A rough relative cost of recomputing a record: examples x epochs run x width x depth (x 100 for x_L's
    Moore-Penrose step, some 700 CG iterations a step); a 2,000-image, h = 512, 6-epoch run is 1. A failed
    run counts the epochs it began (it stopped in the one after its last evaluation). A measurement's cost
    is not modelled: 0, so it is never skipped by `max_cost` (sampled in key order)."""
    if isinstance(rec, Measurement):
        return 0.0
    s = rec.spec
    n = s.data.n_train or 60000
    width = s.model.hidden if s.model.arch == "revmlp" else sum(s.model.mlp_hidden)
    slow = 100 if s.optimizer.name == "gn-mp" and s.optimizer.output == "body" else 1
    epochs = s.epochs if rec.ok else min(s.epochs, (rec.history.epochs.get("epoch") or [-1])[-1] + 1)
    return epochs * n * width * s.model.depth * slow / (2000 * 6 * 512 * 2)


def _same(recorded: dict, fresh: dict) -> bool:
    """Does a recomputed table hold every recorded number, bit for bit? (It may hold more: a quantity the
    code has learnt to record since, such as a step's norm, is not a change of the numbers.)"""
    fresh = json.loads(json.dumps(fresh))
    return all(fresh.get(k) == v for k, v in recorded.items())


def _reproduces(rec: FromCode) -> bool:
    """Recompute a record with the running code: a run from its spec (its history compared, and a failed run's
    reason: the same refusal at the same step, in the same words), a measurement by its `measured_by` function
    from its setting (its result compared)."""
    if isinstance(rec, Record):
        again = run(rec.spec)
        return (again.failure == rec.failure and _same(rec.history.steps, again.history.steps)
                and _same(rec.history.epochs, again.history.epochs))
    module, _, function = rec.provenance["measured_by"].partition(":")
    return _same(rec.result, getattr(importlib.import_module(module), function)(rec.setting))


def _load(path: Path) -> FromCode | None:
    """The run record or measurement at `path`; None for any other file (a benchmark, the registry)."""
    for kind in (Record, Measurement):
        try:
            return kind.load(path)
        except ValueError:
            pass
    return None


def _now(rec: FromCode) -> str:
    """The running code's fingerprint for this kind of record (a measurement's digests its measurer too)."""
    measured_by = rec.provenance.get("measured_by") if isinstance(rec, Measurement) else None
    return current((module_of(measured_by),) if measured_by else ())["fingerprint"]


def verify(folders, sample: int = 2, max_cost: float = 10.0, path: Path | None = None, log=print,
           only: set[str] | None = None) -> dict[str, str]:
    """Recompute, with the running code, the `sample` cheapest records of each other fingerprint found in
    `folders` (a failed run's too: where and why it stopped is what it records), on their recorded thread
    count so reductions run in the same order (a fingerprint whose cheapest record costs more than `max_cost`,
    `_cost`, is left unverified), and compare their numbers (a run's history and failure, a measurement's
    result) bit for bit. Where every one agrees, that fingerprint
    joins the running code's class in `fingerprint.EQUIVALENCES` (with the keys as evidence): its records are no
    longer stale. Returns {fingerprint: "same numbers (k records)" or what differed}. `only`: verify just these
    fingerprints (say, the class the previous code belonged to, skipping fingerprints already known to
    differ)."""
    path = fingerprint.EQUIVALENCES if path is None else path
    classes = equivalence_classes(path)
    groups: dict[tuple[str, str], list] = {}  # (its fingerprint, the running code's for its kind) -> records
    for folder in folders:
        for p in sorted(Path(folder).rglob("*.json")):
            rec = _load(p)
            if rec is None:
                continue
            fp = (rec.fingerprint or {}).get("fingerprint", "unknown code")
            if isinstance(rec, Measurement) and "measured_by" not in rec.provenance:
                continue  # its measurer is unknown (`revgn.fingerprint backfill --measured-by` names it)
            now = _now(rec)
            if not same_numbers(fp, now, classes) and (only is None or fp in only):
                groups.setdefault((fp, now), []).append(rec)
    out = {}
    threads = torch.get_num_threads()
    for (fp, now), recs in groups.items():
        chosen, agree = [r for r in sorted(recs, key=_cost)[:sample] if _cost(r) <= max_cost], True
        if not chosen:
            out[fp] = f"not verified: its cheapest record costs {_cost(min(recs, key=_cost)):.0f} > {max_cost:g}"
            continue
        for rec in chosen:
            torch.set_num_threads(int(rec.provenance.get("threads", threads)))
            try:
                same = _reproduces(rec)
            finally:
                torch.set_num_threads(threads)
            log(f"{fp} {_key(rec)[:12]}: {'bit-identical' if same else 'DIFFERS'}")
            agree &= same
        if fp == "unknown code":  # from trees with uncommitted changes: a sample is evidence, not a fingerprint
            out[fp] = (f"{len(chosen)} of {len(recs)} records from dirty trees recomputed: "
                       + ("the same numbers" if agree else "they differ") + " (they stay of unknown code)")
            continue
        if not agree:
            out[fp] = f"differs: its records are stale ({len(recs)} records)"
            continue
        merged = [c for c in classes if fp in c["members"] or now in c["members"]]
        members = sorted({fp, now, *(m for c in merged for m in c["members"])})
        evidence = [e for c in merged for e in c.get("evidence", [])] + \
                   [{"recomputed": [_key(r) for r in chosen], "old": fp, "new": now}]
        classes = [c for c in classes if c not in merged] + [{"members": members, "evidence": evidence}]
        atomic_write_json(path, {"classes": classes})
        out[fp] = f"same numbers ({len(chosen)} of {len(recs)} records recomputed)"
    return out


def _key(rec: FromCode) -> str:
    return rec.spec.key if isinstance(rec, Record) else rec.key


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m revgn.recompute", description=__doc__.split("\n\n")[0])
    p.add_argument("folders", nargs="+", help="folders of records (searched recursively)")
    p.add_argument("--sample", type=int, default=2, help="records recomputed per fingerprint, the cheapest first")
    p.add_argument("--max-cost", type=float, default=10.0, help="skip fingerprints whose cheapest record costs more")
    p.add_argument("--only", nargs="+", help="verify just these fingerprints")
    a = p.parse_args(argv)
    for fp, verdict in verify(a.folders, a.sample, a.max_cost, only=set(a.only) if a.only else None).items():
        print(f"{fp}: {verdict}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
