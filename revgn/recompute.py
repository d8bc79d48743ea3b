"""Recompute records with the running code: the evidence that two code fingerprints give the same numbers.

A record made by other code (`revgn.fingerprint`) is stale until shown otherwise: `verify` recomputes the
cheapest few records of each other fingerprint, on their recorded thread count, and compares their histories
number for number (and a failed run's reason word for word); where every one is bit-identical, the
fingerprints join one class in `results/fingerprints.json` (with the recomputed keys as evidence) and their
records are fresh again. Where one differs, the registry keeps that as well (its "differs": how far, from which
step, each final metric's largest change), and `summary` says it beside a chapter's staleness line. A
measurement (`revgn.records.Measurement`) is recomputed by the function it names (`measured_by`) from its
setting, and its result compared the same way.

    python -m revgn.recompute results/regime_map [--sample 2] [--max-cost 10] [--only FINGERPRINT ...] [--again]
"""
from __future__ import annotations

import argparse
import importlib
import json
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch

from . import fingerprint
from .fingerprint import current, equivalence_classes, known_differences, known_to_differ, module_of, same_numbers
from .records import FromCode, Measurement, Record, staleness
from .runs import run
from .utils import atomic_write_json, cpu_model, run_metadata


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


_LENGTH = "#"  # a list's length, compared like a number: a recomputation with fewer or more entries differs
_MISSING = object()


def _leaves(value, at: tuple = ()):
    """Every scalar of a JSON value with its path (keys and indices), and each list's length at (*path, "#")."""
    if isinstance(value, dict):
        for k, v in value.items():
            yield from _leaves(v, (*at, k))
    elif isinstance(value, list):
        yield (*at, _LENGTH), len(value)
        for i, v in enumerate(value):
            yield from _leaves(v, (*at, i))
    else:
        yield at, value


def _differences(recorded: dict, fresh: dict) -> dict[tuple, float]:
    """{path: relative difference |a - b| / max(|a|, |b|)} of each recorded value the recomputation does not
    hold bit for bit (inf where it holds none, or not a number). The recomputation may hold more: a quantity
    the code has learnt to record since, such as a step's norm, is not a change of the numbers."""
    fresh = dict(_leaves(json.loads(json.dumps(fresh))))
    out = {}
    for at, a in _leaves(recorded):
        b = fresh.get(at, _MISSING)
        if b == a:
            continue
        numbers = all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in (a, b))
        out[at] = abs(a - b) / max(abs(a), abs(b)) if numbers and at[-1] != _LENGTH else math.inf
    return out


@dataclass(frozen=True)
class Comparison:
    """A record against its recomputation by the running code. `same`: every recorded number (and a failed
    run's reason) reproduced bit for bit. Else `largest`: the largest relative difference |a - b| / max(|a|,
    |b|) of a recorded number (inf where the recomputation lacks one, or a run fails otherwise); `first_step`:
    the first training step whose recorded numbers differ (a run's; None if its steps agree); `final`:
    |recorded - recomputed| of each final metric of a run that finished both times."""

    same: bool
    largest: float = 0.0
    first_step: int | None = None
    final: dict[str, float] = field(default_factory=dict)


def _recompute(rec: FromCode) -> Comparison:
    """Recompute a record with the running code: a run from its spec (its history compared, and a failed run's
    reason: the same refusal at the same step, in the same words), a measurement by its `measured_by` function
    from its setting (its result compared)."""
    if isinstance(rec, Record):
        again = run(rec.spec)
        diff = {("steps", *at): d for at, d in _differences(rec.history.steps, again.history.steps).items()}
        diff |= {("epochs", *at): d for at, d in _differences(rec.history.epochs, again.history.epochs).items()}
        if again.failure != rec.failure:
            diff[("failure",)] = math.inf
        steps = [at[2] for at in diff if at[0] == "steps" and isinstance(at[2], int)]
        final = {k: abs(v - again.metrics[k]) for k, v in rec.metrics.items() if k in again.metrics}
        return Comparison(not diff, max(diff.values(), default=0.0), min(steps, default=None),
                          final if diff else {})
    module, _, function = rec.provenance["measured_by"].partition(":")
    diff = _differences(rec.result, getattr(importlib.import_module(module), function)(rec.setting))
    return Comparison(not diff, max(diff.values(), default=0.0))


def _kind(rec: FromCode) -> str:
    """Which code a record exercises, for sampling: a run's optimiser (GN and Adam share little), or a
    measurement's kind."""
    return rec.spec.optimizer.name if isinstance(rec, Record) else f"{rec.kind} measurement"


def _here() -> str:
    """This machine as a record names it ("cpu (AMD EPYC)"). Float32's last digits depend on the CPU even with
    the kernels pinned, so only a record computed on this CPU model can be recomputed bit for bit here."""
    return f"cpu ({cpu_model()})"


def _sample(recs: list[FromCode], sample: int) -> tuple[list[FromCode], list[str]]:
    """The records of one fingerprint to recompute, among those computed on this CPU (`_here`): the cheapest
    of each kind (`_kind`; a finished run rather than a failed one, which exercises less), so that no
    optimiser's records join a class on another's evidence, then the cheapest others up to `sample` in all.
    Also the kinds none of whose records was computed here (such a fingerprint cannot be verified here)."""
    here = [r for r in recs if r.provenance.get("device") == _here()]
    first: dict[str, FromCode] = {}
    for rec in sorted(here, key=lambda r: (isinstance(r, Record) and not r.ok, _cost(r))):
        first.setdefault(_kind(rec), rec)
    chosen = sorted(first.values(), key=_cost)
    rest = [r for r in sorted(here, key=_cost) if all(r is not c for c in chosen)]
    return chosen + rest[:max(0, sample - len(chosen))], sorted({_kind(r) for r in recs} - set(first))


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
           only: set[str] | None = None, again: bool = False) -> dict[str, str]:
    """Recompute, with the running code, records of each other fingerprint found in `folders` that were computed on
    this CPU model (another's last digits differ): the cheapest of each optimiser (`_sample`; a fingerprint with an
    optimiser none of whose records was computed here is left unverified), then the cheapest others up to `sample`
    (a failed run's too: where and why it stopped is what it records), on their recorded thread count so reductions
    run in the same order (a fingerprint whose choice holds a record costing more than `max_cost`, `_cost`, is left
    unverified), and compare their numbers (a run's history and failure, a measurement's result) bit for bit. Where
    every one agrees, that fingerprint joins the running code's class in `fingerprint.EQUIVALENCES` (with the keys
    as evidence): its records are no longer stale. Where one differs, the registry records that too
    (`fingerprint.known_differences`: by how much, from which step, the final metrics' largest change), and a later
    `verify` does not recompute it again unless `again`. Returns {fingerprint: "same numbers (k records)" or what
    differed}. `only`: verify just these fingerprints."""
    path = fingerprint.EQUIVALENCES if path is None else path
    classes, differs = equivalence_classes(path), known_differences(path)
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
        if not again and (known := known_to_differ(fp, now, classes, differs)):
            out[fp] = f"differs (known: {len(known['recomputed'])} records recomputed on {known['date'][:10]})"
            continue
        chosen, elsewhere = _sample(recs, sample)
        if elsewhere:
            devices = sorted({r.provenance.get("device", "?") for r in recs if _kind(r) in elsewhere})
            out[fp] = (f"not verified: its {', '.join(elsewhere)} records were computed on {', '.join(devices)}, "
                       f"not on this {_here()} (recompute some here with their own commit first)")
            continue
        if too_costly := [r for r in chosen if _cost(r) > max_cost]:
            out[fp] = "not verified: " + "; ".join(f"its cheapest {_kind(r)} record costs {_cost(r):.0f}"
                                                   for r in too_costly) + f" > {max_cost:g}"
            continue
        found = []
        for rec in chosen:
            torch.set_num_threads(int(rec.provenance.get("threads", threads)))
            try:
                found.append(_recompute(rec))
            finally:
                torch.set_num_threads(threads)
            c = found[-1]
            log(f"{fp} {_key(rec)[:12]}: " + ("bit-identical" if c.same else f"DIFFERS (largest relative "
                f"difference {c.largest:.1e}" + (f", from step {c.first_step}" if c.first_step is not None else "")
                + ")"))
        agree, keys = all(c.same for c in found), [_key(r) for r in chosen]
        if fp == "unknown code":  # from trees with uncommitted changes: a sample is evidence, not a fingerprint
            out[fp] = (f"{len(chosen)} of {len(recs)} records from dirty trees recomputed: "
                       + ("the same numbers" if agree else "they differ") + " (they stay of unknown code)")
            continue
        if not agree:
            differs = [e for e in differs if not (e["old"] == fp and same_numbers(e["new"], now, classes))]
            differs.append(_difference(fp, now, keys, found))
            atomic_write_json(path, {"classes": classes, "differs": differs})
            out[fp] = f"differs: its records are stale ({len(recs)} records)"
            continue
        merged = [c for c in classes if fp in c["members"] or now in c["members"]]
        members = sorted({fp, now, *(m for c in merged for m in c["members"])})
        evidence = [e for c in merged for e in c.get("evidence", [])] + [{"recomputed": keys, "old": fp, "new": now}]
        classes = [c for c in classes if c not in merged] + [{"members": members, "evidence": evidence}]
        differs = [e for e in differs if e["old"] != fp]  # shown the same now (say, after a fix of the code)
        atomic_write_json(path, {"classes": classes, "differs": differs})
        out[fp] = f"same numbers ({len(chosen)} of {len(recs)} records recomputed)"
    return out


def _difference(old: str, new: str, keys: list[str], found: list[Comparison]) -> dict:
    """The registry's entry for a fingerprint whose records `new` recomputed otherwise: the largest relative
    difference (None where a recomputation lacks a recorded number or fails otherwise), the first step that
    differs, each final metric's largest change, and where and when."""
    largest = max(c.largest for c in found)
    steps = [c.first_step for c in found if c.first_step is not None]
    final: dict[str, float] = {}
    for c in found:
        for k, v in c.final.items():
            final[k] = max(final.get(k, 0.0), v)
    meta = run_metadata()
    return {"old": old, "new": new, "recomputed": keys, "largest_relative": None if math.isinf(largest) else largest,
            "from_step": min(steps, default=None), "final": final,
            **{k: meta[k] for k in ("date", "device", "commit", "kernels")}}


def summary(recs: list[FromCode]) -> str:
    """`revgn.records.staleness` of `recs`, and what recomputation has shown of the stale ones of known code:
    how many are of code whose sampled records this code recomputes otherwise (`known_to_differ`), from which
    training step, by how much at most (relative, over every recorded number; the final test accuracy in
    points), and how many are of code not recomputed yet."""
    line = staleness(recs)
    classes, differs = equivalence_classes(), known_differences()
    stale = [r for r in recs if r.fingerprint and not same_numbers(r.fingerprint["fingerprint"], _now(r), classes)]
    if not stale:
        return line
    known = [e for r in stale if (e := known_to_differ(r.fingerprint["fingerprint"], _now(r), classes, differs))]
    if not known:
        return line + f" The code of {_these(len(stale))} has not been recomputed here."
    entries = list({id(e): e for e in known}.values())
    sampled = sum(len(e["recomputed"]) for e in entries)
    largest = [e["largest_relative"] for e in entries]
    steps = [e["from_step"] for e in entries if e.get("from_step") is not None]
    accuracy = [e["final"]["test_acc"] for e in entries if "test_acc" in e.get("final", {})]
    if None in largest:
        detail = "they record other quantities or fail otherwise"
    else:
        detail = ("their numbers differ" + (f" from training step {min(steps) + 1} on" if steps else "")
                  + f", by at most {max(largest):.0e} relatively"
                  + (f"; the final test accuracy by at most {100 * max(accuracy):.2f} points" if accuracy else ""))
    out = (f" {len(known)} of the {len(stale)} stale records are of code whose records this code recomputes"
           f" otherwise ({sampled} recomputed, the cheapest of each optimiser: {detail}).")
    rest = len(stale) - len(known)
    return line + out + (f" The code of {_these(rest, 'the other')} has not been recomputed here." if rest else "")


def _these(n: int, which: str = "these") -> str:
    return "that one" if n == 1 and which == "these" else f"{which} one" if n == 1 else f"{which} {n}"


def _key(rec: FromCode) -> str:
    return rec.spec.key if isinstance(rec, Record) else rec.key


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m revgn.recompute", description=__doc__.split("\n\n")[0])
    p.add_argument("folders", nargs="+", help="folders of records (searched recursively)")
    p.add_argument("--sample", type=int, default=2,
                   help="records recomputed per fingerprint: the cheapest of each optimiser, then others up to this")
    p.add_argument("--max-cost", type=float, default=10.0, help="skip fingerprints whose cheapest record costs more")
    p.add_argument("--only", nargs="+", help="verify just these fingerprints")
    p.add_argument("--again", action="store_true", help="recompute fingerprints already known to differ as well")
    a = p.parse_args(argv)
    only = set(a.only) if a.only else None
    for fp, verdict in verify(a.folders, a.sample, a.max_cost, only=only, again=a.again).items():
        print(f"{fp}: {verdict}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
